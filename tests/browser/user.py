"""What a user does and sees on the demo's pages, found by role, label and visible text.

Only `wait_until_idle` looks at Streamlit's internals (data-testid attributes): a user sees that a page is
finished, a test has to ask.
"""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import FilePayload, Locator, Page, expect

FIRST_RUN_MS = 180_000  # the first visit loads the backbone and adapters (about 25 s on a busy 2-core machine)
STEP_MS = 30_000  # a rerun after a click takes about a second, several when the machine is busy
ATTACK_MS = 60_000  # the Attacker's view attacks within 30 s; twice that leaves room for a very busy machine
expect.set_options(timeout=STEP_MS)

_IMAGES_LOADED = "() => [...document.images].every(image => image.complete && image.naturalWidth > 0)"


def wait_until_idle(page: Page, timeout: float = STEP_MS) -> None:
    """Return once Streamlit is connected, its script has finished and every element and image is drawn."""
    app = page.get_by_test_id("stApp")
    expect(app).to_have_attribute("data-test-connection-state", "CONNECTED", timeout=timeout)
    expect(app).to_have_attribute("data-test-script-state", "notRunning", timeout=timeout)
    expect(page.get_by_test_id("stSkeleton")).to_have_count(0, timeout=timeout)
    page.wait_for_function(_IMAGES_LOADED, timeout=timeout)


def open_app(page: Page, path: str = "/") -> Page:
    """Visit `path` of the served demo (relative to the context's base URL) and wait until the page is drawn."""
    page.set_default_timeout(STEP_MS)
    page.goto(path)
    wait_until_idle(page, FIRST_RUN_MS)
    return page


def go_to_page(page: Page, name: str) -> None:
    """Click `name` (e.g. "Comparison") in the sidebar's page navigation."""
    page.get_by_role("navigation").get_by_role("link", name=name, exact=True).click()


def pick_sample(page: Page, name: str) -> None:
    """Add the shipped sample `name` (as listed, e.g. "fashion-5.png (Sandal)") to the images."""
    page.get_by_role("combobox", name="Shipped samples").click()
    page.get_by_role("option", name=name, exact=True).click()
    page.keyboard.press("Escape")  # close the list, as a user clicks away


def upload_images(page: Page, files: list[Path] | list[FilePayload]) -> None:
    """Upload files through the file chooser that the images uploader's button opens."""
    uploader = page.get_by_role("region", name="Or upload PNG / JPEG images")
    with page.expect_file_chooser() as chooser:
        uploader.get_by_role("button", name=re.compile(r"^(Upload|Add files)$")).click()
    chooser.value.set_files(files)


def type_passphrase(page: Page, passphrase: str) -> None:
    """Replace the passphrase and press Enter."""
    box = page.get_by_role("textbox", name="Passphrase")  # get_by_label also finds the radio option "Passphrase"
    box.fill(passphrase)
    box.press("Enter")


def shown_fingerprint(page: Page) -> str:
    """The key fingerprint the page shows beside the key."""
    line = page.get_by_role("main").get_by_text(re.compile(r"^Fingerprint:"))
    return line.locator("code").inner_text()


# The locators below only build queries (nothing waits), so tests/browser/classroom.py uses them on the async API's
# pages too.
def caption(page: Page, text: str) -> Locator:
    """The caption `text` under an image of the main area (e.g. an uploaded file's name): a figure's caption in the
    main page's image cards, a paragraph under Streamlit's own images elsewhere (and on the main page before the cards,
    which the benchmark can still time)."""
    main = page.get_by_role("main")
    captions = main.locator("figcaption").or_(main.get_by_role("paragraph"))
    return captions.filter(has_text=re.compile(f"^{re.escape(text)}$"))


def prediction_tables(page: Page) -> Locator:
    """The tables of predictions, one per image, in the order the images are shown."""
    return page.get_by_role("main").get_by_role("table").filter(has=page.get_by_role("columnheader", name="top-1"))


def reconstructions(page: Page) -> Locator:
    """The captions under the Attacker's view's reconstructions ("reconstructed: PSNR 23.1 dB"), one per image."""
    return page.get_by_role("main").get_by_role("paragraph").filter(has_text=re.compile(r"^reconstructed: "))


def read_table(table: Locator) -> list[dict[str, str]]:
    """A table as the user reads it: one {column header: text} per row."""
    header = [h.strip() for h in table.get_by_role("columnheader").all_inner_texts()]
    rows = []
    for row in table.get_by_role("row").all()[1:]:
        cells = row.get_by_role("rowheader").all_inner_texts() + row.get_by_role("cell").all_inner_texts()
        rows.append(dict(zip(header, (c.strip() for c in cells), strict=False)))
    return rows
