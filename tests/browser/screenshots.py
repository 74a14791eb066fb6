"""The demo's pictures in docs/, taken in Chromium by a user's steps (`python scripts/app_screenshots.py`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Page, expect

from encvit.common.atomic import atomic_path

from .user import ATTACK_MS, go_to_page, open_app, prediction_tables, reconstructions, type_passphrase, wait_until_idle

OTHER_PASSPHRASE = "not the demo passphrase"
# Streamlit scrolls inside the page, so Playwright's full_page shot stops at the window: the window grows instead.
_CONTENT_HEIGHT = "() => Math.max(...[...document.querySelectorAll('*')].map(element => element.scrollHeight))"


def take_screenshots(page: Page, out_dir: Path) -> list[Path]:
    """app.png (main page), app-wrong-key.png (another passphrase typed: the warning and the predictions it
    concerns) and app-comparison.png, in `out_dir`."""
    out_dir = Path(out_dir)
    open_app(page)
    expect(prediction_tables(page)).to_have_count(3)
    shots = [save_png(whole_page(page), out_dir / "app.png")]

    type_passphrase(page, OTHER_PASSPHRASE)
    expect(page.get_by_role("alert").filter(has_text="is not the key")).to_be_visible()
    wait_until_idle(page)
    shots.append(save_png(whole_page(page), out_dir / "app-wrong-key.png"))

    go_to_page(page, "Comparison")
    expect(page.get_by_role("heading", name="Trainable parameters")).to_be_visible()
    wait_until_idle(page)
    shots.append(save_png(whole_page(page), out_dir / "app-comparison.png"))
    return shots


def take_attackers_view_screenshot(page: Page, out_dir: Path) -> Path:
    """app-attackers-view.png in `out_dir`: the Attacker's view of the main page's default key and samples."""
    open_app(page)
    expect(prediction_tables(page)).to_have_count(3)
    go_to_page(page, "Attacker's view")
    expect(reconstructions(page)).to_have_count(3, timeout=ATTACK_MS)
    wait_until_idle(page)
    return save_png(whole_page(page), Path(out_dir) / "app-attackers-view.png")


def window(page: Page) -> bytes:
    """A PNG of what the window shows, with the mouse resting in an empty corner (hover effects off)."""
    size = page.viewport_size
    page.mouse.move(size["width"] - 10, size["height"] - 10)
    return page.screenshot(animations="disabled")


def whole_page(page: Page, max_height: int = 4000) -> bytes:
    """A PNG of the whole page: the window is made as tall as the content (at most `max_height`), then restored."""
    size = page.viewport_size
    height = min(max_height, max(size["height"], page.evaluate(_CONTENT_HEIGHT)))
    page.set_viewport_size({"width": size["width"], "height": height})
    try:
        wait_until_idle(page)
        return window(page)
    finally:
        page.set_viewport_size(size)


def save_png(png: bytes, path: Path) -> Path:
    """Write a screenshot as a 256-colour PNG (small enough for the repository), atomically."""
    with Image.open(io.BytesIO(png)) as image, atomic_path(path) as tmp:
        image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(tmp, format="PNG", optimize=True)
    return Path(path)


def looks_rendered(path: Path, min_ink: float = 0.05) -> tuple[bool, str]:
    """Whether a screenshot shows a page rather than a blank one: many colours and `min_ink` non-white pixels."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    colours = len(np.unique(pixels.reshape(-1, 3).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)))
    inked = float((pixels.min(axis=-1) < 230).mean())
    return colours > 50 and inked > min_ink, f"{colours} distinct colours, {100 * inked:.1f}% non-white pixels"
