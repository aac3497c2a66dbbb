"""Write the real-data sample the default pipeline trains on into ``data/sources/``.

Run once by a maintainer with the public archives at hand (paths below are the team's shared
copies); the result is versioned by DVC (``dvc add data && dvc push``), so users never need this
script. Seeded and byte-stable: original JPEG bytes, stored (not deflated), fixed zip dates.

    python scripts/embed_data_sample.py ../shared/data/ozgenel-4k.zip \
        ../shared/data/sdnet-decks/sdnet-decks-400.zip
"""

from __future__ import annotations

import argparse
import random
import shutil
import zipfile
from pathlib import Path

PER_CLASS = 500  # 1,000 Özgenel patches: ~6 MB, with SDNET's 2.8 MB well under the 15 MB budget
SEED = 42
OUT = Path("data/sources")


def sample_ozgenel(archive: Path, out: Path, per_class: int, seed: int) -> int:
    """Copy ``per_class`` seeded picks of Positive/ and Negative/ into a stored zip."""
    with zipfile.ZipFile(archive) as source:
        names = sorted(n for n in source.namelist() if n.lower().endswith(".jpg"))
        rng = random.Random(seed)
        picks: list[str] = []
        for label in ("Positive/", "Negative/"):
            picks += rng.sample([n for n in names if n.startswith(label)], per_class)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as sample:
            for name in sorted(picks):
                info = zipfile.ZipInfo(name, date_time=(2019, 7, 23, 0, 0, 0))
                info.external_attr = 0o644 << 16
                sample.writestr(info, source.read(name))
    return len(picks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ozgenel", type=Path, help="ozgenel-4k.zip (or the full public archive)")
    parser.add_argument("sdnet", type=Path, help="sdnet-decks-400.zip")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    n = sample_ozgenel(args.ozgenel, OUT / "ozgenel-sample.zip", PER_CLASS, SEED)
    shutil.copyfile(args.sdnet, OUT / "sdnet-decks.zip")
    print(f"wrote {n} Özgenel patches and the SDNET decks archive to {OUT}/")


if __name__ == "__main__":
    main()
