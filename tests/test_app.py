"""The Streamlit demo driven by AppTest: every control of both pages, and the functions in encvit.demo behind them.

The shipped adapters are retrained from time to time, so these tests check structure (a top-3 for every run,
a warning present or absent, errors naming files), never particular predictions.
"""
import io
import json
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from encvit import demo
from encvit.adapters import read_adapter
from encvit.cipher import Key
from encvit.errors import KeyFileError
from encvit.predict import find_runs, shipped_comparison
from encvit.samples import DEMO_PASSPHRASE

APP = str(Path(__file__).resolve().parents[1] / "app" / "Home.py")
TIMEOUT = 180  # the first run loads the backbone and adapters; later runs take them from st.cache_resource


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """The app sets torch to one thread; AppTest runs it in this process, so give later tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def infos():
    return {name: read_adapter(run / "adapter.safetensors")[0] for name, run in find_runs(shipped_comparison()).items()}


@pytest.fixture(scope="module")
def demo_key(infos):
    shape = demo.geometry(infos)
    return Key.generate(shape.patch_size, shape.channels, passphrase=DEMO_PASSPHRASE)


def home() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def png(size=(40, 30), mode="RGB", seed=0, fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buffer, format=fmt)
    return buffer.getvalue()


def huge_png(width=8000, height=8000) -> bytes:
    """A PNG whose header claims width x height pixels (above MAX_PIXELS) without the data to match."""
    data = bytearray(png((1, 1)))
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def prediction_tables(at: AppTest) -> list:
    return [t.value for t in at.main.table if any(c.startswith("top-") for c in t.value.columns)]


def assert_top3_for_each_method(at: AppTest, count: int) -> None:
    tables = prediction_tables(at)
    assert len(tables) == count
    for table in tables:
        assert {"top-1", "top-2", "top-3"} <= set(table.columns)
        assert {"full-encrypted", "melo-encrypted", "proposed-encrypted"} <= set(table.index)
        assert set(table.sees) == {"encrypted", "plain"}  # the plain model on the plain image, for reference
        assert table[["top-1", "top-2", "top-3"]].map(lambda cell: cell.endswith("%")).all().all()


# ---- the main page ----------------------------------------------------------------------------------
def test_home_shows_original_encrypted_and_top3_per_method(demo_key):
    at = home()
    assert not at.error and not at.warning
    assert_top3_for_each_method(at, count=3)
    assert all("correct" in t.columns for t in prediction_tables(at))  # shipped samples carry true labels
    assert sum("True label" in m.value for m in at.main.markdown) == 3
    assert len(at.main.image) == 6  # original and encrypted, side by side, for each image
    assert any(demo_key.fingerprint in m.value for m in at.sidebar.markdown)
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download encrypted images (zip of 3)", "Download key file"]


def test_wrong_passphrase_warns_with_both_fingerprints_and_still_predicts(demo_key):
    at = home()
    at.text_input(key="passphrase").input("not the demo passphrase").run()
    wrong = Key.generate(demo_key.block_size, demo_key.channels, passphrase="not the demo passphrase")
    assert len(at.warning) == 1
    assert wrong.fingerprint in at.warning[0].value and demo_key.fingerprint in at.warning[0].value
    assert_top3_for_each_method(at, count=3)
    at.text_input(key="passphrase").input(DEMO_PASSPHRASE).run()
    assert not at.warning


def test_random_key_warns_and_can_be_regenerated():
    at = home()
    at.radio(key="key_source").set_value("New random key").run()
    assert len(at.warning) == 1
    assert_top3_for_each_method(at, count=3)
    first = at.session_state.random_key.fingerprint
    at.button(key="new_random_key").click().run()
    assert at.session_state.random_key.fingerprint != first
    assert at.session_state.random_key.fingerprint in at.warning[0].value


def test_key_file_upload(demo_key):
    at = home()
    at.radio(key="key_source").set_value("Key file").run()
    assert not prediction_tables(at) and at.info  # asks for a key file
    uploader = at.file_uploader(key="key_file")
    uploader.set_value(("demo.json", demo.key_download(demo_key)[1], "application/json")).run()
    assert not at.warning and not at.error
    assert_top3_for_each_method(at, count=3)
    other = Key.generate(demo_key.block_size, demo_key.channels)
    at.file_uploader(key="key_file").set_value(("other.json", json.dumps(other.to_dict()).encode(),
                                                "application/json")).run()
    assert len(at.warning) == 1 and other.fingerprint in at.warning[0].value
    assert_top3_for_each_method(at, count=3)
    for name, data in (("broken.json", b'{"format": "encvit-key", "vers'), ("photo.json", png()),
                       ("edited.json", json.dumps({**demo_key.to_dict(), "fingerprint": "0" * 12}).encode())):
        at.file_uploader(key="key_file").set_value((name, data, "application/json")).run()
        assert not at.exception
        assert len(at.error) == 1 and name in at.error[0].value


def test_uploaded_images_are_classified():
    at = home()
    at.multiselect(key="samples").set_value([]).run()
    assert at.info and not prediction_tables(at)
    at.file_uploader(key="uploads").set_value([("photo.png", png((50, 40)), "image/png"),
                                               ("scan.jpg", png((64, 64), mode="L", fmt="JPEG"), "image/jpeg")]).run()
    assert not at.error
    assert_top3_for_each_method(at, count=2)
    assert not any("correct" in t.columns for t in prediction_tables(at))  # no true label for uploads
    assert at.get("download_button")[0].label == "Download encrypted images (zip of 2)"
    at.file_uploader(key="uploads").set_value(("photo.png", png(), "image/png")).run()
    assert at.get("download_button")[0].label == "Download encrypted image"


def test_bad_uploads_show_an_error_naming_the_file_and_the_app_goes_on():
    at = home()
    good = png()
    at.file_uploader(key="uploads").set_value([
        ("notes.png", b"these are notes, not an image", "image/png"),
        ("truncated.png", good[: len(good) // 2], "image/png"),
        ("huge.png", huge_png(), "image/png"),
        ("fine.png", good, "image/png")]).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 3
    for name, word in (("notes.png", "not a readable image"), ("truncated.png", "not a readable image"),
                       ("huge.png", "pixels")):
        assert any(name in e and word in e for e in errors), errors
    assert_top3_for_each_method(at, count=4)  # three samples and the good upload


def test_block_grid_and_run_choice():
    at = home()
    at.checkbox(key="grid").check().run()
    assert not at.exception and len(at.main.image) == 6
    at.multiselect(key="runs").set_value(["melo-encrypted", "full-plain"]).run()
    tables = prediction_tables(at)
    assert len(tables) == 3 and all(list(t.index) == ["melo-encrypted", "full-plain"] for t in tables)
    at.multiselect(key="runs").set_value([]).run()
    assert not prediction_tables(at) and any("Choose runs" in i.value for i in at.info)


def test_runs_from_a_folder(tmp_path):
    at = home()
    at.radio(key="runs_source").set_value("Run directories in a folder").run()
    assert at.info and not prediction_tables(at)  # asks for a folder
    at.text_input(key="runs_folder").input(str(tmp_path / "missing")).run()
    assert len(at.error) == 1 and "missing" in at.error[0].value
    at.text_input(key="runs_folder").input(str(tmp_path)).run()
    assert len(at.error) == 1 and "no run directories" in at.error[0].value
    for run in ("melo-encrypted", "melo-plain"):
        shutil.copytree(shipped_comparison() / run, tmp_path / "exp" / run)
    at.text_input(key="runs_folder").input(str(tmp_path)).run()
    assert not at.error and at.multiselect(key="runs").value == ["exp/melo-encrypted", "exp/melo-plain"]
    tables = prediction_tables(at)
    assert len(tables) == 3 and all(list(t.sees) == ["encrypted", "plain"] for t in tables)
    at.radio(key="runs_source").set_value("Shipped comparison (fashion5k)").run()
    assert_top3_for_each_method(at, count=3)  # back to the shipped runs and their default choice


# ---- the comparison page ----------------------------------------------------------------------------
def test_comparison_page_shows_results_chart_and_parameter_counts(tmp_path):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).switch_page("pages/2_Comparison.py").run()
    assert not at.exception and not at.error
    assert any("| method |" in m.value and "| proposed |" in m.value for m in at.markdown)  # results.md
    assert at.image  # results.png
    counts = at.table[0].value
    assert set(counts.backbone) == {"vit_base_patch16_224", "encvit-tiny"}
    assert {"millions (10^6)", "paper M (2^20)", "paper (ViT-B/16)"} <= set(counts.columns)
    assert sorted(counts["paper (ViT-B/16)"].dropna().unique()) == [0.15, 0.71, 82.56]
    paper = counts[(counts.backbone == "vit_base_patch16_224") & (counts.method != "full")]
    assert (paper["paper M (2^20)"].round(2) == paper["paper (ViT-B/16)"]).all()  # the paper's counts, reproduced
    at.text_input(key="comparison_folder").input(str(tmp_path)).run()
    assert len(at.error) == 1 and "results.csv" in at.error[0].value
    assert len(at.table) == 1  # the parameter counts are still shown


# ---- encvit.demo, the logic behind the page -----------------------------------------------------------
def test_default_runs_and_key_mismatch(infos, demo_key):
    assert demo.default_runs(infos) == ["full-encrypted", "melo-encrypted", "proposed-encrypted", "proposed-plain"]
    assert demo.key_mismatch(infos, demo_key) is None
    other = Key.generate(demo_key.block_size, demo_key.channels, passphrase="x")
    assert other.fingerprint in demo.key_mismatch(infos, other)


def test_downloads_round_trip(infos, demo_key):
    shape = demo.geometry(infos)
    images, errors = demo.read_uploads([("a.png", png()), ("b.png", png(seed=1)), ("bad.png", b"x")], shape)
    assert [i.name for i in images] == ["a.png", "b.png"] and len(errors) == 1 and "bad.png" in errors[0]
    assert images[0].array.shape == (shape.image_size, shape.image_size, shape.channels)
    name, data, mime = demo.encrypted_download(images[:1], demo_key)
    assert (name, mime) == ("a-encrypted.png", "image/png")
    assert (demo_key.decrypt(np.asarray(Image.open(io.BytesIO(data)))) == images[0].array).all()
    name, data, mime = demo.encrypted_download(images + images[:1], demo_key)
    assert mime == "application/zip"
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["a-encrypted.png", "b-encrypted.png", "a-encrypted-2.png"]
    assert demo.key_from_bytes(demo.key_download(demo_key)[1]) == demo_key
    with pytest.raises(KeyFileError, match="k.json"):
        demo.key_from_bytes(b"\xff\x00", "k.json")


def test_enlarge_draws_the_block_grid():
    array = np.zeros((8, 8, 1), dtype=np.uint8)
    big = demo.enlarge(array, 3, grid=4)
    assert big.shape == (24, 24, 3)
    assert (big[0, :] == (255, 64, 64)).all() and (big[12, :] == (255, 64, 64)).all()
    assert (big[1:12, 1:12] == 0).all()
    assert (demo.enlarge(array, 3) == 0).all()
