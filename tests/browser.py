"""A real browser for tests: Debian's headless ``chromium`` (``make test`` installs it), driven by Playwright.

On a failure inside the block the page is saved as ``failure.png`` in the folder given, and the error's
traceback names the file.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Headless, as root in a container, and with nothing that reaches for the network (this machine has none).
ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    """The system Chromium's path.

    Raises:
        AssertionError: it is not installed.
    """
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is not installed: `make test` installs Debian's package (apt-get install chromium)"
    return found


@contextlib.contextmanager
def open_page(shots: Path, width: int = 1600, height: int = 1000) -> Iterator[Any]:
    """A Playwright page in a fresh headless Chromium; a screenshot in ``shots`` if the block fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=list(ARGS))
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            try:
                yield page
            except BaseException as error:
                shots.mkdir(parents=True, exist_ok=True)
                shot = shots / "failure.png"
                page.screenshot(path=str(shot), full_page=True)
                error.add_note(f"screenshot of the page at {page.url}: {shot}")
                raise
        finally:
            browser.close()
