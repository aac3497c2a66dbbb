"""Nothing from the author's machine in what is logged: no absolute paths, no credentials."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

_URL_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
_SECRET_QUERY = re.compile(
    r"([?&](?:token|access_token|key|api_key|apikey|secret|password|sig|signature|"
    r"x-amz-signature|x-amz-credential)=)[^&#\s]*",
    re.IGNORECASE,
)


def redact(value: Any, root: Path) -> Any:
    """A value safe to log: paths under the repo become relative, under the home ``~/…``, and
    credentials in URLs (``user:token@``, ``?token=``) are masked. Non-strings pass through.

    Relative and ``~`` paths still resolve the same way for crackdet (``fetch.archive`` is read
    relative to the repo root, with ``~`` expanded), so a replayed run finds the same input.
    """
    if not isinstance(value, str) or not value:
        return value
    text = _SECRET_QUERY.sub(r"\1***", _URL_USERINFO.sub(r"\1***@", value))
    if text.startswith("/"):
        path = Path(text)
        home = Path.home()
        for base, shown in ((root.resolve(), None), (home, "~")):
            try:
                rel = path.relative_to(base)
            except ValueError:
                continue
            return rel.as_posix() if shown is None else f"{shown}/{rel.as_posix()}"
    return text


def source_name(root: Path) -> str:
    """The entry script for the ``mlflow.source.name`` tag, without the machine's folders.

    MLflow tags the absolute path; ``src/crackdet/stages/train.py`` (or a repo-relative path)
    names the same code, which ``git.commit`` pins.
    """
    path = Path(sys.argv[0]).resolve()
    parts = path.parts
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] == "crackdet" and parts[i - 1] == "src":
            return Path(*parts[i - 1 :]).as_posix()
    shown = redact(str(path), root)
    return shown if not shown.startswith("/") else path.name


def safe_params(flat: dict[str, Any], root: Path) -> dict[str, Any]:
    """:func:`redact` applied to every value of a flattened params dict."""
    return {key: redact(value, root) for key, value in flat.items()}
