"""Browser tooling for the demo app: Debian's Chromium driven by Playwright, the Streamlit server, a user's steps.

Used by tests/test_app_browser.py (through pytest-playwright's fixtures) and by scripts/app_screenshots.py.
"""

from .chromium import VIEWPORT, ChromiumNotFound, find_chromium, launch_options
from .server import AppServer, serve_app
from .user import (
    ATTACK_MS,
    caption,
    go_to_page,
    open_app,
    pick_sample,
    prediction_tables,
    read_table,
    reconstructions,
    shown_fingerprint,
    type_passphrase,
    upload_images,
    wait_until_idle,
)

__all__ = [
    "ATTACK_MS",
    "VIEWPORT",
    "AppServer",
    "ChromiumNotFound",
    "caption",
    "find_chromium",
    "go_to_page",
    "launch_options",
    "open_app",
    "pick_sample",
    "prediction_tables",
    "read_table",
    "reconstructions",
    "serve_app",
    "shown_fingerprint",
    "type_passphrase",
    "upload_images",
    "wait_until_idle",
]
