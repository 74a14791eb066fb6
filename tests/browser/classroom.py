"""A class trying the demo at once: N visitors, each in a browser context of their own, open the main page, then
upload an image and paste a passphrase with no pause between, and wait for the predictions; twice.

Used by the class test in tests/test_app_browser.py and by benchmarks/bench_app.py. Things are found as a user
finds them (role, label, visible text); each visitor records how long the page took to open, how long each
Enter took to bring the upload's predictions, and what it saw when they did not come.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.async_api import Browser, Page, async_playwright

from encvit.cipher.key import Key
from encvit.common.shipped import SAMPLES_DIR

from .chromium import VIEWPORT, launch_options
from .user import caption, prediction_tables

SAMPLES_ON_ARRIVAL = 3  # the main page picks three shipped samples for a new visitor
UPLOADER = "Or upload PNG / JPEG images"
POLL_MS = 100
# Waiting costs: a pending Playwright wait on a role locator re-reads the accessibility tree many times a second
# (3% of a core per waiting page, measured: 30% of this machine for twenty visitors). So a visitor first waits for
# the page's text to hold what they expect, read every POLL_MS, and only then finds it by role, once.
_TEXT_HOLDS = """([texts, counts]) => {
    const text = document.body ? document.body.textContent : "";
    return texts.every((wanted, i) => text.split(wanted).length - 1 >= counts[i]);
}"""


@dataclass
class Round:
    """One upload and passphrase: how long from Enter to its predictions, or what the visitor saw instead."""

    upload: str
    passphrase: str
    seconds: float | None = None  # Enter to the upload's predictions, made with the new key
    outcome: str = "waiting"  # then "answered", "upload lost" (no trace of the file on the page) or "no answer"
    detail: str = ""


@dataclass
class Visit:
    """One visitor: seconds to open the page (None if it never showed predictions) and their rounds."""

    visitor: int
    open_seconds: float | None = None
    rounds: list[Round] = field(default_factory=list)
    problem: str = ""

    @property
    def answered(self) -> int:
        return sum(r.outcome == "answered" for r in self.rounds)


def upload_file(folder: Path, visitor: int, round_: int) -> Path:
    """A PNG of its own for each visitor and round (a shipped garment with one pixel changed): no two are alike,
    so no visitor's predictions can come from another's."""
    with Image.open(SAMPLES_DIR / f"fashion-{(visitor + round_) % 10}.png") as image:
        array = np.array(image.convert("RGB"))
    array[0, 0] = (visitor % 256, round_ % 256, (visitor // 256) % 256)
    path = Path(folder) / f"visitor{visitor}-upload{round_}.png"
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def fingerprint(passphrase: str, block_size: int = 4, channels: int = 3) -> str:
    """The fingerprint the page shows for a passphrase's key (the shipped adapters' blocks and channels)."""
    return Key.generate(block_size, channels, passphrase=passphrase).fingerprint


def passphrase(visitor: int, round_: int) -> str:
    """The passphrase a visitor pastes in a round: no two alike, so every round needs a key of its own."""
    return f"visitor {visitor} round {round_}"


async def _until_text(page: Page, wanted: dict[str, int]) -> None:
    """Wait until the page's text holds each of `wanted`'s strings at least as many times as given."""
    await page.wait_for_function(_TEXT_HOLDS, arg=[list(wanted), list(wanted.values())], polling=POLL_MS)


async def _visit(browser: Browser, url: str, visitor: int, uploads: list[tuple[Path, str]], timeout: float) -> Visit:
    """What one visitor does and sees, given (file, the fingerprint of its round's passphrase) per round; never
    raises for what the page does (it is recorded instead)."""
    seen = Visit(visitor)
    context = await browser.new_context(base_url=url, viewport=VIEWPORT)
    try:
        page = await context.new_page()
        page.set_default_timeout(timeout * 1000)
        start = time.perf_counter()
        await page.goto("/")
        tables = prediction_tables(page)
        try:
            await _until_text(page, {"top-1": SAMPLES_ON_ARRIVAL})
            await tables.nth(SAMPLES_ON_ARRIVAL - 1).wait_for()
        except Exception as exc:  # noqa: BLE001 - a page that never opens is what this records
            seen.problem = f"the page showed no predictions within {timeout:.0f} s: {type(exc).__name__}"
            return seen
        seen.open_seconds = time.perf_counter() - start
        for number, (path, key) in enumerate(uploads, 1):
            step = Round(path.name, passphrase(visitor, number))
            seen.rounds.append(step)
            uploader = page.get_by_role("region", name=UPLOADER)
            async with page.expect_file_chooser() as chooser:
                await uploader.get_by_role("button", name=re.compile(r"^(Upload|Add files)$")).click()
            await (await chooser.value).set_files(path)
            box = page.get_by_role("textbox", name="Passphrase")  # pasted at once, no pause after the upload
            await box.fill(step.passphrase)
            await box.press("Enter")
            entered = time.perf_counter()
            shown = SAMPLES_ON_ARRIVAL + seen.answered + 1  # a lost upload leaves one image fewer
            try:
                await _until_text(page, {f"encrypted with {key}": shown, "top-1": shown})
                await caption(page, path.name).wait_for()
                await caption(page, f"encrypted with {key}").nth(shown - 1).wait_for()
                await tables.nth(shown - 1).wait_for()
                step.seconds, step.outcome = time.perf_counter() - entered, "answered"
            except Exception:  # noqa: BLE001 - what the visitor sees instead is recorded below
                step.outcome, step.detail = await _what_went_wrong(page, path.name, timeout)
                step.detail += (
                    f"; {await caption(page, f'encrypted with {key}').count()} images encrypted "
                    f"with the new key, {await tables.count()} prediction tables"
                )
    except Exception as exc:  # noqa: BLE001 - a crashed page is a finding, not a crash of the whole class
        seen.problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        await context.close()
    return seen


async def _what_went_wrong(page: Page, name: str, timeout: float) -> tuple[str, str]:
    """'upload lost' when the file is nowhere on the page (not in the uploader, no caption), else 'no answer'."""
    # The uploader shortens a long name on screen ("visitor...pload1.png"); its remove button names the whole file.
    in_uploader = await page.get_by_role("region", name=UPLOADER).get_by_role("button", name=f"Remove {name}").count()
    captions = await caption(page, name).count()
    alerts = [text.strip() for text in await page.get_by_role("alert").all_inner_texts()]
    where = f"uploader lists it: {'yes' if in_uploader else 'no'}; alerts: {alerts or 'none'}"
    if not in_uploader and not captions:
        return "upload lost", where
    return "no answer", f"no predictions within {timeout:.0f} s; {where}"


async def _class(url: str, visitors: int, rounds: int, folder: Path, timeout: float) -> list[Visit]:
    # Files and fingerprints (scrypt: 40 ms each) are made before anyone arrives, not in the visitors' timed waits.
    uploads = {
        v: [(upload_file(folder, v, r), fingerprint(passphrase(v, r))) for r in range(1, rounds + 1)]
        for v in range(1, visitors + 1)
    }
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(**launch_options())
        try:
            return list(await asyncio.gather(*(_visit(browser, url, v, uploads[v], timeout) for v in uploads)))
        finally:
            await browser.close()


def class_visit(url: str, visitors: int, rounds: int, folder: Path, timeout: float = 120.0) -> list[Visit]:
    """`visitors` visitors at once on the demo at `url`, each uploading and pasting a passphrase `rounds` times.

    Runs in a thread of its own, so that it works beside pytest-playwright's synchronous browser."""
    done: dict = {}

    def run() -> None:
        try:
            done["visits"] = asyncio.run(_class(url, visitors, rounds, Path(folder), timeout))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            done["error"] = exc

    worker = threading.Thread(target=run, name="class-visit")
    worker.start()
    worker.join()
    if "error" in done:
        raise done["error"]
    return done["visits"]


def lost_work(visits: list[Visit]) -> list[str]:
    """One line per visitor whose page did not open or whose upload got no predictions."""
    lines = []
    for visit in visits:
        if visit.problem:
            lines.append(f"visitor {visit.visitor}: {visit.problem}")
        for number, step in enumerate(visit.rounds, 1):
            if step.outcome != "answered":
                lines.append(f"visitor {visit.visitor}, upload {number} ({step.upload}): {step.outcome}; {step.detail}")
    return lines


def as_dicts(visits: list[Visit]) -> list[dict]:
    """The visits as JSON-ready dicts."""
    return [asdict(visit) for visit in visits]


__all__ = ["Round", "Visit", "as_dicts", "class_visit", "fingerprint", "lost_work", "upload_file"]
