"""Make docs/app.png: the demo's main page, with predictions, as headless Chromium shows it.

    python app/screenshot.py [-o docs/app.png]

Starts the app on a free port of 127.0.0.1 (the same helper the browser test uses), runs the page once so the
models are loaded, photographs it and saves it as a 256-colour PNG to keep the repository small.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser  # noqa: E402  (the sibling module, found through the line above)

from encvit.atomic import atomic_path  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "app.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=DOCS, help=f"where to write the PNG (default {DOCS})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="encvit-screenshot-") as tmp:
        log = Path(tmp) / "server.log"
        with browser.serve(log) as url:
            browser.run_page(url)
            shot = browser.screenshot(url, Path(tmp) / "home.png")
        rendered, stats = browser.looks_rendered(shot, min_ink=0.05)
        problems = browser.log_problems(log)
        if not rendered or problems:
            print(f"the page did not render cleanly ({stats}):\n" + "\n".join(problems), file=sys.stderr)
            return 1
        with Image.open(shot) as image, atomic_path(args.out) as out:
            image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB; {stats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
