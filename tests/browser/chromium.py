"""Debian's Chromium for Playwright: found on PATH or through ENCVIT_CHROMIUM, never downloaded."""

from __future__ import annotations

import os
import shutil

ENV_VARIABLE = "ENCVIT_CHROMIUM"
NAMES = ("chromium", "chromium-browser")
# Playwright adds most of these itself; they are listed so that the browser stays off the network whatever its
# defaults become. --headless and --no-sandbox (Chromium's sandbox cannot run as root) come from the options below.
ARGS = (
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1280, "height": 900}


class ChromiumNotFound(RuntimeError):
    """No Chromium to run the browser tests and the screenshots with."""


def find_chromium() -> str:
    """The Chromium to drive: $ENCVIT_CHROMIUM (a path or a name on PATH), else `chromium` on PATH."""
    configured = os.environ.get(ENV_VARIABLE)
    if configured:
        found = shutil.which(configured)
        if not found:
            raise ChromiumNotFound(
                f"{ENV_VARIABLE}={configured} is not an executable file: point it at a "
                f"Chromium binary (e.g. {ENV_VARIABLE}=/usr/bin/chromium) or unset it to use "
                "chromium on PATH"
            )
        return found
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ChromiumNotFound(
        f"Chromium is not installed (no {' or '.join(NAMES)} on PATH): install Debian's chromium "
        f"(`sudo apt-get install chromium`; `make setup` does it as root) or set {ENV_VARIABLE} "
        "to a Chromium binary. Playwright cannot download its own browser here."
    )


def launch_options() -> dict:
    """Keyword arguments for Playwright's `chromium.launch`: the local Chromium with flags that work as root."""
    return {"executable_path": find_chromium(), "chromium_sandbox": False, "args": list(ARGS)}
