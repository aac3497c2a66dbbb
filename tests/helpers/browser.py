"""Headless Chromium (Debian's, driven by Playwright) for the tests and ``scripts/screenshots.py``:
load a page, say what failed to load, take screenshots of MLflow's UI.

Playwright cannot download its own browsers without internet, and needs none: it drives the
``chromium`` Debian package (``.ci/run`` installs it). The binary is called directly, not through
``/usr/bin/chromium``, whose wrapper script complains on some machines.

Standard library and Playwright only: no crackdet import.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/lib/chromium-browser/chromium-browser")
ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    # Nothing leaves the machine: no component updates, sync or background requests.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}
# MLflow 3.17.2's UI keeps its "GenAI | Model training" toggle and its side panels in
# localStorage (key + "_v1", JSON values). Preset, a fresh profile sees what a person sees after
# choosing "Model training" once and closing the Assistant panel.
MLFLOW_STORAGE = {
    "mlflow.workflowType_v1": '"machine_learning"',
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.detectIssues.guidanceShown_v1": "true",
}


def chromium() -> str | None:
    """The Chromium binary to drive (``CRACKDET_CHROMIUM`` overrides), or None."""
    candidates = [os.environ.get("CRACKDET_CHROMIUM", ""), *CHROMIUM_PATHS]
    candidates.append(shutil.which("chromium") or "")
    return next((c for c in candidates if c and Path(c).is_file()), None)


def missing_browser() -> list[str]:
    missing = []
    if chromium() is None:
        missing.append("Chromium (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright (pip install '.[team]')")
    return missing


@contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium; closed afterwards."""
    from playwright.sync_api import sync_playwright  # only where a browser is wanted

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium(), headless=True, args=ARGS)
        try:
            yield instance
        finally:
            instance.close()


@dataclass
class PageCheck:
    """What a loaded page reported: console errors, uncaught exceptions, failed requests and
    images that did not load, plus every request it made."""

    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    images: int = 0

    @property
    def problems(self) -> list[str]:
        return self.console_errors + self.failed_requests + self.broken_images


def check_page(instance: Any, url: str) -> PageCheck:
    """Load ``url`` and wait for it to finish loading; report what went wrong."""
    check = PageCheck()
    page = instance.new_page(viewport=VIEWPORT)
    page.on("console", lambda m: check.console_errors.append(m.text) if m.type == "error" else 0)
    page.on("pageerror", lambda error: check.console_errors.append(str(error)))
    page.on("requestfailed", lambda r: check.failed_requests.append(f"{r.url}: {r.failure}"))
    page.on("request", lambda request: check.requests.append(request.url))
    page.goto(url, wait_until="load")
    sources = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => [i.currentSrc, i.complete && i.naturalWidth > 0])"
    )
    check.images = len(sources)
    check.broken_images = [f"image did not load: {src}" for src, ok in sources if not ok]
    page.close()
    return check


def screenshot(
    instance: Any,
    url: str,
    path: Path,
    wait_for: str,
    storage: dict[str, str] | None = None,
    full_page: bool = False,
    settle_ms: int = 1500,
) -> str:
    """Open ``url`` in a fresh profile (``storage`` preset in its localStorage), wait until the
    text ``wait_for`` is visible, let the page settle, save a PNG; return the final URL.
    MLflow's UI polls, so "network idle" never comes: a visible text is the signal."""
    context = instance.new_context(viewport=VIEWPORT)
    if storage:
        script = "".join(f"localStorage.setItem({k!r}, {v!r});" for k, v in storage.items())
        context.add_init_script(script)
    try:
        page = context.new_page()
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_text(wait_for).first.wait_for(state="visible", timeout=60_000)
        page.wait_for_timeout(settle_ms)
        page.screenshot(path=str(path), full_page=full_page)
        return page.url
    finally:
        context.close()
