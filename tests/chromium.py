"""Debian's Chromium as the browser tests launch it (Playwright's own browser download is not
used): its path, its flags, and the failure that says how to install it."""

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Fails the calling test, saying how to install Chromium, where it is missing."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium with "
            "`apt-get update && apt-get install -y chromium` (the test drives it with Python "
            "Playwright; do not run `playwright install`)"
        )
