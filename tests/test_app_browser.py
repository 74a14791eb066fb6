"""The demo in Chromium, used as a person would: `streamlit run app/Home.py` on a free port, driven by Playwright.

Things are found by role, label and visible text (tests/browser/user.py); the checks are what a user sees. The
shipped adapters are retrained from time to time, so predictions are checked for their form, never their values.
A test of another page opens it with `go_to_page(app, "Its name in the sidebar")`.
"""

import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from browser import (
    ATTACK_MS,
    VIEWPORT,
    ChromiumNotFound,
    caption,
    find_chromium,
    go_to_page,
    launch_options,
    open_app,
    pick_sample,
    prediction_tables,
    read_table,
    reconstructions,
    serve_app,
    shown_fingerprint,
    type_passphrase,
    upload_images,
    wait_until_idle,
)
from browser.classroom import class_visit, lost_work
from browser.screenshots import OTHER_PASSPHRASE, looks_rendered, take_attackers_view_screenshot, take_screenshots
from PIL import Image
from playwright.sync_api import Page, expect

from encvit.cipher.key import Key
from encvit.common.shipped import DEMO_PASSPHRASE, SAMPLES_DIR
from encvit.demo import home as demo
from encvit.models.adapters import read_adapter
from encvit.models.predict import find_runs, shipped_comparison

# pytest-playwright's own base_url fixture (used when pytest-base-url is not installed) warns about itself.
pytestmark = pytest.mark.filterwarnings("ignore:Session-scoped fixtures defined as instance methods")
CLASS_VISITORS = int(os.environ.get("ENCVIT_CLASS_VISITORS", "4"))  # a whole class: ENCVIT_CLASS_VISITORS=20
PREDICTION = re.compile(r"^(?P<label>.+) (?P<percent>\d+)%$")
WRONG_KEY = "is not the key the encrypted adapters were trained with"


# ---- pytest-playwright's fixtures, pointed at Debian's Chromium and the served demo --------------------------
@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Launch the local Chromium (Playwright cannot download one here); a missing one fails every browser test."""
    try:
        return {**browser_type_launch_args, **launch_options()}
    except ChromiumNotFound as exc:
        missing = str(exc)
    pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """The demo served on a free port of 127.0.0.1 for this module's tests, stopped at the end."""
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    with serve_app(log) as server:
        yield server
    assert "Stopping..." in log.read_text(), "the server did not shut down cleanly"


@pytest.fixture
def browser_context_args(browser_context_args, app_server):
    """Every test's fresh browser context (so a new Streamlit session) opens paths relative to the server."""
    return {**browser_context_args, "base_url": app_server.url, "viewport": VIEWPORT}


@pytest.fixture
def app(page: Page, app_server):
    """The demo's main page as a new visitor sees it; afterwards, no exception in the page or the server's log."""
    logged_before = app_server.log_size()
    page_errors = []
    page.on("pageerror", lambda error: page_errors.append(error))
    open_app(page)
    yield page
    expect(page.get_by_test_id("stException")).to_have_count(0)
    problems = app_server.problems(since=logged_before) + [f"error in the page: {e}" for e in page_errors]
    assert not problems, "\n".join(problems)


# ---- what the checks compare against ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shape():
    """What the shipped adapters take: block size, channels and class names."""
    runs = find_runs(shipped_comparison())
    return demo.geometry({name: read_adapter(run / "adapter.safetensors")[0] for name, run in runs.items()})


def fingerprint(passphrase: str, shape) -> str:
    return Key.generate(shape.patch_size, shape.channels, passphrase=passphrase).fingerprint


def assert_three_predictions_per_run(table, class_names) -> list[dict[str, str]]:
    """Every row (a run) shows top-1..top-3 as "class NN%", classes of the model, most likely first."""
    rows = read_table(table)
    assert rows, "a prediction table without runs"
    for row in rows:
        shown = [PREDICTION.match(row.get(f"top-{k}", "")) for k in (1, 2, 3)]
        assert all(shown), f"not three predictions: {row}"
        assert {m["label"] for m in shown} <= set(class_names), row
        percents = [int(m["percent"]) for m in shown]
        assert percents == sorted(percents, reverse=True), f"predictions not in order: {row}"
    return rows


# ---- the user's flows -----------------------------------------------------------------------------------------
def test_picked_samples_get_three_predictions_from_every_run(app, shape):
    tables = prediction_tables(app)
    expect(tables).to_have_count(3)  # three samples are picked on arrival
    pick_sample(app, "fashion-5.png (Sandal)")
    expect(tables).to_have_count(4)
    wait_until_idle(app)
    expect(caption(app, "fashion-5.png")).to_be_visible()
    expect(app.get_by_text("True label: Sandal")).to_be_visible()
    runs = None
    for table in tables.all():
        rows = assert_three_predictions_per_run(table, shape.class_names)
        assert all(row["correct"] in ("✓", "✗") for row in rows)
        names = [row["run"] for row in rows]
        assert runs in (None, names), "every image is classified by the same runs"
        runs = names
    assert len(runs) == 4 and any("plain" in r for r in runs) and sum("encrypted" in r for r in runs) == 3, runs


def test_png_uploaded_through_the_file_chooser_is_encrypted_and_classified(app, shape, tmp_path):
    photo = tmp_path / "my-sneaker.png"
    photo.write_bytes((SAMPLES_DIR / "fashion-7.png").read_bytes())
    upload_images(app, [photo])
    tables = prediction_tables(app)
    expect(tables).to_have_count(4)
    wait_until_idle(app)
    expect(caption(app, "my-sneaker.png")).to_be_visible()
    expect(app.get_by_role("button", name="Download encrypted images (zip of 4)")).to_be_visible()
    rows = assert_three_predictions_per_run(tables.last, shape.class_names)
    assert "correct" not in rows[0], "an upload has no true label to compare with"


def test_corrupt_upload_gets_a_message_and_the_page_goes_on(app, shape):
    upload_images(app, [{"name": "broken.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\n not an image"}])
    expect(app.get_by_role("alert").filter(has_text="broken.png is not a readable image")).to_be_visible()
    wait_until_idle(app)
    tables = prediction_tables(app)
    expect(tables).to_have_count(3)  # the picked samples are still classified
    for table in tables.all():
        assert_three_predictions_per_run(table, shape.class_names)
    expect(app.get_by_role("button", name="Download key file")).to_be_enabled()


def test_another_passphrase_shows_the_wrong_key_warning(app, shape):
    trained = fingerprint(DEMO_PASSPHRASE, shape)
    assert shown_fingerprint(app) == trained
    expect(app.get_by_role("alert").filter(has_text=WRONG_KEY)).to_have_count(0)

    type_passphrase(app, OTHER_PASSPHRASE)
    other = fingerprint(OTHER_PASSPHRASE, shape)
    warning = app.get_by_role("alert").filter(has_text=WRONG_KEY)
    expect(warning).to_contain_text(other)
    expect(warning).to_contain_text(trained)
    expect(caption(app, f"encrypted with {other}")).to_have_count(3)  # the images, re-encrypted
    expect(prediction_tables(app)).to_have_count(3)  # predictions still shown, made with the wrong key
    assert shown_fingerprint(app) == other

    type_passphrase(app, DEMO_PASSPHRASE)
    expect(warning).to_have_count(0)


def test_comparison_page_shows_accuracy_and_parameter_counts(app):
    go_to_page(app, "Comparison")
    expect(app).to_have_url(re.compile(r"/Comparison$"))
    expect(app.get_by_role("heading", name="Full fine-tuning, MeLo and the proposed method")).to_be_visible()
    expect(app.get_by_role("heading", name="Test accuracy")).to_be_visible()
    wait_until_idle(app)
    expect(app.get_by_role("img").first).to_be_visible()  # the shipped results.png
    parameters = app.get_by_role("table").filter(has=app.get_by_role("columnheader", name="paper (ViT-B/16)"))
    expect(parameters.get_by_role("cell", name="encvit-tiny").first).to_be_visible()
    rows = read_table(parameters)
    assert {r["method"] for r in rows} >= {"full", "melo", "proposed"}, rows

    go_to_page(app, "Home")  # and back: the main page starts again from its defaults
    expect(prediction_tables(app)).to_have_count(3)


def test_no_page_draws_streamlits_running_widget(app):
    """The widget's animation cost every waiting visitor's browser a share of a core (QUIET_STATUS_CSS)."""
    import streamlit

    bundle = Path(streamlit.__file__).parent / "static"
    assert any("stStatusWidget" in f.read_text(errors="ignore") for f in bundle.rglob("*.js")), (
        "Streamlit's frontend no longer names its status widget stStatusWidget: the rule hides nothing"
    )
    probe = "text => document.body.insertAdjacentHTML('beforeend', `<div data-testid='stStatusWidget'>${text}</div>`)"
    for name in ("Comparison", "Attacker's view", "Home"):
        go_to_page(app, name)
        wait_until_idle(app, ATTACK_MS)
        app.evaluate(probe, f"Running on {name}")  # a widget as Streamlit draws it while the page runs
        expect(app.get_by_text(f"Running on {name}"), f"the running widget shows on {name}").to_be_hidden()


def test_downloaded_key_file_is_the_key_in_use(app, shape, tmp_path):
    with app.expect_download() as download:
        app.get_by_role("button", name="Download key file").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    key = Key.load(saved)
    assert key.fingerprint == shown_fingerprint(app) == fingerprint(DEMO_PASSPHRASE, shape)
    assert saved.name == f"key-{key.fingerprint}.json"


def test_downloaded_zip_holds_the_images_encrypted_with_the_key_in_use(app, shape, tmp_path):
    with app.expect_download() as download:  # the zip is made when the button is clicked, not on every page run
        app.get_by_role("button", name="Download encrypted images (zip of 3)").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    key = Key.generate(shape.patch_size, shape.channels, passphrase=DEMO_PASSPHRASE)
    assert saved.name == f"encrypted-{key.fingerprint}.zip"
    with zipfile.ZipFile(saved) as archive:
        names = archive.namelist()
        assert names == [f"fashion-{i}-encrypted.png" for i in range(3)]  # the three samples picked on arrival
        for name in names:
            encrypted = np.asarray(Image.open(io.BytesIO(archive.read(name))))
            plain = demo.read_image((SAMPLES_DIR / name.replace("-encrypted", "")).read_bytes(), name, shape)
            assert np.array_equal(key.decrypt(encrypted), plain.array)


def test_docs_screenshots_show_the_pages(page, app_server, tmp_path):
    shots = take_screenshots(page, tmp_path)
    assert [s.name for s in shots] == ["app.png", "app-wrong-key.png", "app-comparison.png"]
    for shot in shots:
        rendered, stats = looks_rendered(shot)
        assert rendered, f"{shot.name} looks blank: {stats}"
    assert not app_server.problems()


def test_a_class_at_once_loses_no_upload(app_server, tmp_path):
    """Visitors in browser contexts of their own open the page at once; each uploads an image and pastes a
    passphrase with no pause between, twice: every upload gets its predictions, made with the new key."""
    logged_before = app_server.log_size()
    visits = class_visit(app_server.url, CLASS_VISITORS, rounds=2, folder=tmp_path)
    lost = lost_work(visits)
    assert not lost, f"{len(lost)} of {2 * CLASS_VISITORS} uploads without predictions:\n" + "\n".join(lost)
    assert [v.answered for v in visits] == [2] * CLASS_VISITORS
    assert not app_server.problems(since=logged_before)


# ---- a missing browser is a broken set-up, reported as such ----------------------------------------------------
def test_chromium_is_found():
    try:
        chromium = find_chromium()
    except ChromiumNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    assert os.access(chromium, os.X_OK), chromium


def test_chromium_named_by_the_environment_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("ENCVIT_CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(ChromiumNotFound, match="ENCVIT_CHROMIUM=.*no-chromium is not an executable file"):
        find_chromium()


def test_missing_chromium_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.delenv("ENCVIT_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ChromiumNotFound, match="apt-get install chromium"):
        find_chromium()


def test_attackers_view_shows_the_reconstruction_and_its_score(app):
    pick_sample(app, "fashion-5.png (Sandal)")
    expect(prediction_tables(app)).to_have_count(4)
    wait_until_idle(app)
    go_to_page(app, "Attacker's view")  # attacks the key and the four images chosen on the main page
    expect(app.get_by_role("heading", name="Attacker's view")).to_be_visible()
    expect(caption(app, "fashion-5.png, encrypted")).to_be_visible()
    expect(caption(app, "its block means")).to_have_count(4)
    expect(reconstructions(app)).to_have_count(4, timeout=ATTACK_MS)
    expect(
        app.get_by_text("The attack used 54 encrypted images (4 from the main page and 50 collected)")
    ).to_be_visible(timeout=ATTACK_MS)
    wait_until_idle(app)
    for caption_text in reconstructions(app).all_inner_texts():
        assert re.fullmatch(r"reconstructed: (decrypted exactly|PSNR \d+\.\d dB)", caption_text), caption_text
    for label, value in (("Key recovered (right pixel)", r"\d+%"), ("PSNR of your images", r"\d+\.\d dB")):
        metric = app.get_by_role("main").get_by_test_id("stMetric").filter(has_text=label)
        expect(metric).to_have_text(re.compile(rf"^{re.escape(label)}\s*{value}$"))
    expect(app.get_by_role("alert")).to_have_count(0)

    slider = app.get_by_role("slider", name="Ciphertexts the eavesdropper has collected")
    slider.focus()
    slider.press("Home")  # no ciphertexts collected: only the main page's four
    expect(app.get_by_text("The attack used 4 encrypted images (4 from the main page and 0 collected)")).to_be_visible(
        timeout=ATTACK_MS
    )
    expect(reconstructions(app)).to_have_count(4)


def test_docs_screenshot_shows_the_attackers_view(page, app_server, tmp_path):
    shot = take_attackers_view_screenshot(page, tmp_path)
    rendered, stats = looks_rendered(shot)
    assert rendered, f"{shot.name} looks blank: {stats}"
    assert not app_server.problems()
