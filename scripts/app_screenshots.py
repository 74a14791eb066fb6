"""Photograph the demo for docs/: app.png, app-wrong-key.png, app-comparison.png and app-attackers-view.png.

    python scripts/app_screenshots.py [--out-dir docs]

Serves app/Home.py on a free port of 127.0.0.1 and takes the pictures with the code the browser tests use
(tests/browser/), in Debian's Chromium (or the one ENCVIT_CHROMIUM names). Pictures are 256-colour PNGs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser tooling lives with the tests that use it
from browser import VIEWPORT, ChromiumNotFound, launch_options, serve_app  # noqa: E402
from browser.screenshots import looks_rendered, take_attackers_view_screenshot, take_screenshots  # noqa: E402

from encvit.common.atomic import atomic_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs", help="where to write the PNGs (default docs/)")
    args = parser.parse_args(argv)
    try:
        launch = launch_options()
    except ChromiumNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="encvit-screenshots-") as tmp:
        log = Path(tmp) / "server.log"
        with serve_app(log) as server, sync_playwright() as playwright:
            browser = playwright.chromium.launch(**launch)
            try:
                page = browser.new_context(base_url=server.url, viewport=VIEWPORT).new_page()
                shots = take_screenshots(page, Path(tmp))
                shots.append(take_attackers_view_screenshot(page, Path(tmp)))  # opening the app starts a new session
            finally:
                browser.close()
            problems = server.problems()
        checks = {shot: looks_rendered(shot) for shot in shots}
        problems += [f"{shot.name} looks blank: {stats}" for shot, (rendered, stats) in checks.items() if not rendered]
        if problems:  # docs/ keeps its pictures
            print("the pictures were not taken cleanly:\n" + "\n".join(problems), file=sys.stderr)
            return 1
        for shot, (_, stats) in checks.items():
            with atomic_path(args.out_dir / shot.name) as out:
                shutil.copyfile(shot, out)
            print(f"wrote {args.out_dir / shot.name} ({shot.stat().st_size // 1024} KiB; {stats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
