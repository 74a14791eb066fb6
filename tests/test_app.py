"""The Streamlit demo driven by AppTest: every control of both pages, and the functions in encvit.demo behind them.

The shipped adapters are retrained from time to time, so these tests check structure (a top-3 for every run,
a warning present or absent, errors naming files), never particular predictions.
"""

import base64
import io
import json
import os
import re
import shutil
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import lxml.html
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from encvit.cipher.images import colour_images, png_bytes
from encvit.cipher.key import Key
from encvit.common.errors import AttackError, ConfigError, KeyFileError
from encvit.common.shipped import DEMO_PASSPHRASE, SAMPLES_DIR, list_samples
from encvit.demo import attackers_view as attack_demo
from encvit.demo import home as demo
from encvit.demo import serving
from encvit.demo.access import NotAllowedError, app_access
from encvit.demo.card import image_card
from encvit.models.adapters import read_adapter, read_adapter_info
from encvit.models.predict import find_runs, load_runs, shipped_comparison

APP = str(Path(__file__).resolve().parents[1] / "app" / "Home.py")
TIMEOUT = 180  # the first run loads the backbone and adapters; later runs take them from st.cache_resource


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """The app sets torch's threads and freezes the heap once its models are loaded (`serving.freeze_heap`); AppTest
    runs it in this process, so give later tests their threads and a collector that sees every object back."""
    import gc

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    gc.unfreeze()


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


def seen(alerts) -> list[str]:
    """What a user reads in alerts (errors, warnings): their Markdown with its backslash escapes rendered."""
    return [re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", alert.value) for alert in alerts]


@dataclass
class Card:
    """An image's card on the main page as a user sees it: images with captions, notes and the predictions."""

    captions: list[str]
    images: list[np.ndarray]
    text: str
    notes: list[str]
    table: pd.DataFrame | None


def shown_png(source: str) -> np.ndarray:
    """The pixels of an image the page holds as a data URI, which must be a PNG (lossless: every pixel as drawn)."""
    assert source.startswith("data:image/png;base64,"), source[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))))


def image_cards(at: AppTest) -> list[Card]:
    """The main page's image cards (st.html elements), in order, read as a browser reads their HTML."""
    cards = []
    for element in at.main.html:
        card = lxml.html.fromstring(element.value)
        if "encvit-card" not in card.get("class", ""):
            continue
        tables = card.xpath(".//table")
        cards.append(
            Card(
                captions=[c.text_content() for c in card.xpath(".//figcaption")],
                images=[shown_png(img.get("src")) for img in card.xpath(".//img")],
                text=card.text_content(),
                notes=[p.text_content() for p in card.xpath(".//p[@class='encvit-note']")],
                table=pd.read_html(io.StringIO(lxml.html.tostring(tables[0], encoding="unicode")))[0].set_index("run")
                if tables
                else None,
            )
        )
    return cards


def prediction_tables(at: AppTest) -> list[pd.DataFrame]:
    return [card.table for card in image_cards(at) if card.table is not None]


def assert_top3_for_each_method(at: AppTest, count: int) -> None:
    tables = prediction_tables(at)
    assert len(tables) == count
    for table in tables:
        assert {"top-1", "top-2", "top-3"} <= set(table.columns)
        assert {"full-encrypted", "melo-encrypted", "proposed-encrypted"} <= set(table.index)
        assert set(table.sees) == {"encrypted", "plain"}  # the plain model on the plain image, for reference
        assert table[["top-1", "top-2", "top-3"]].map(lambda cell: cell.endswith("%")).all().all()


# ---- the main page ----------------------------------------------------------------------------------
def test_an_image_card_shows_names_labels_and_runs_as_text_never_as_html():
    name, label, run = "<img src=x onerror=alert(1)>.png", "<i>Coat</i>", "a <b>run</b> & co"
    plain, encrypted = (np.full((8, 8, 3), value, np.uint8) for value in (10, 200))
    table = pd.DataFrame({"run": [run], "sees": ["plain"], "top-1": ["Coat 90%"]}).set_index("run")
    shown = image_card(name, png_bytes(plain), png_bytes(encrypted), "f1ng", label=label, note="1*4*4", table=table)
    card = lxml.html.fromstring(shown)
    assert not card.xpath(".//b | .//i | .//script") and len(card.xpath(".//img")) == 2  # only the card's own tags
    assert [c.text_content() for c in card.xpath(".//figcaption")] == [name, "encrypted with f1ng"]
    assert [shown_png(img.get("src")).tolist() for img in card.xpath(".//img")] == [plain.tolist(), encrypted.tolist()]
    assert f"True label: {label}" in card.text_content() and card.xpath(".//p[@class='encvit-note']")[0].text == "1*4*4"
    read = pd.read_html(io.StringIO(shown))[0]
    assert list(read.columns) == ["run", "sees", "top-1"] and read.iloc[0].tolist() == [run, "plain", "Coat 90%"]
    bare = lxml.html.fromstring(image_card("a.png", png_bytes(plain), png_bytes(plain), "f1ng"))
    assert not bare.xpath(".//table | .//p") and len(bare.xpath(".//figure")) == 2  # no label, note or runs: none shown


def test_home_shows_original_encrypted_and_top3_per_method(demo_key):
    at = home()
    assert not at.error and not at.warning
    assert_top3_for_each_method(at, count=3)
    assert all("correct" in t.columns for t in prediction_tables(at))  # shipped samples carry true labels
    cards = image_cards(at)
    assert [card.text.count("True label: ") for card in cards] == [1, 1, 1]
    assert [len(card.images) for card in cards] == [2, 2, 2]  # original and encrypted, side by side
    assert all(card.captions[1] == f"encrypted with {demo_key.fingerprint}" for card in cards)
    assert any(demo_key.fingerprint in m.value for m in at.main.markdown)  # beside the passphrase
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download encrypted images (zip of 3)", "Download key file"]


def test_wrong_passphrase_warns_with_both_fingerprints_and_still_predicts(demo_key):
    at = home()
    at.text_input(key="passphrase").input("not the demo passphrase").run()
    wrong = Key.generate(demo_key.block_size, demo_key.channels, passphrase="not the demo passphrase")
    assert len(at.warning) == 1
    assert wrong.fingerprint in seen(at.warning)[0] and demo_key.fingerprint in seen(at.warning)[0]
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
    assert at.session_state.random_key.fingerprint in seen(at.warning)[0]


def test_key_file_upload(demo_key):
    at = home()
    at.radio(key="key_source").set_value("Key file").run()
    assert not prediction_tables(at) and at.info  # asks for a key file
    uploader = at.file_uploader(key="key_file")
    uploader.set_value(("demo.json", demo.key_download(demo_key)[1], "application/json")).run()
    assert not at.warning and not at.error
    assert_top3_for_each_method(at, count=3)
    other = Key.generate(demo_key.block_size, demo_key.channels)
    at.file_uploader(key="key_file").set_value(
        ("other.json", json.dumps(other.to_dict()).encode(), "application/json")
    ).run()
    assert len(at.warning) == 1 and other.fingerprint in seen(at.warning)[0]
    assert_top3_for_each_method(at, count=3)
    for name, data in (
        ("broken.json", b'{"format": "encvit-key", "vers'),
        ("photo.json", png()),
        ("edited.json", json.dumps({**demo_key.to_dict(), "fingerprint": "0" * 12}).encode()),
        ("nested.json", b"[" * 100_000 + b"]" * 100_000),
    ):
        at.file_uploader(key="key_file").set_value((name, data, "application/json")).run()
        assert not at.exception
        assert len(at.error) == 1 and name in seen(at.error)[0]
    assert "nested too deeply" in seen(at.error)[0]
    at.file_uploader(key="key_file").set_value(("demo.json", demo.key_download(demo_key)[1], "application/json")).run()
    assert not at.error and not at.exception  # the app goes on
    assert_top3_for_each_method(at, count=3)


def test_messages_show_formulas_and_file_names_as_written(demo_key):
    at = home()
    at.radio(key="key_source").set_value("Key file").run()
    identity_swapped = {**demo_key.to_dict(), "pixel_permutation": list(range(47)) + [0]}
    at.file_uploader(key="key_file").set_value(
        ("my_key_1.json", json.dumps(identity_swapped).encode(), "application/json")
    ).run()
    assert len(at.error) == 1
    # Markdown would show "C*M*M = 3*4*4" as "CMM = 344" and "my_key_1.json" as "mykey1.json" in italics
    assert "my_key_1.json" in seen(at.error)[0] and "(C*M*M = 3*4*4)" in seen(at.error)[0]
    assert r"C\*M\*M \= 3\*4\*4" in at.error[0].value and r"my\_key\_1" in at.error[0].value


def test_uploaded_images_are_classified():
    at = home()
    at.multiselect(key="samples").set_value([]).run()
    assert at.info and not prediction_tables(at)
    at.file_uploader(key="uploads").set_value(
        [("photo.png", png((50, 40)), "image/png"), ("scan.jpg", png((64, 64), mode="L", fmt="JPEG"), "image/jpeg")]
    ).run()
    assert not at.error
    assert_top3_for_each_method(at, count=2)
    assert not any("correct" in t.columns for t in prediction_tables(at))  # no true label for uploads
    assert at.get("download_button")[0].label == "Download encrypted images (zip of 2)"
    at.file_uploader(key="uploads").set_value(("photo.png", png(), "image/png")).run()
    assert at.get("download_button")[0].label == "Download encrypted image"


def test_bad_uploads_show_an_error_naming_the_file_and_the_app_goes_on():
    at = home()
    good = png()
    at.file_uploader(key="uploads").set_value(
        [
            ("notes.png", b"these are notes, not an image", "image/png"),
            ("truncated.png", good[: len(good) // 2], "image/png"),
            ("huge.png", huge_png(), "image/png"),
            ("fine.png", good, "image/png"),
        ]
    ).run()
    assert not at.exception
    errors = seen(at.error)
    assert len(errors) == 3 and not any("BytesIO" in e for e in errors)  # named by the upload's file name
    for name, word in (
        ("notes.png", "not a readable image"),
        ("truncated.png", "not a readable image"),
        ("huge.png", "pixels"),
    ):
        assert any(name in e and word in e for e in errors), errors
    assert_top3_for_each_method(at, count=4)  # three samples and the good upload


def test_block_grid_and_run_choice():
    at = home()
    at.checkbox(key="grid").check().run()
    assert not at.exception and [len(card.images) for card in image_cards(at)] == [2, 2, 2]
    at.multiselect(key="runs").set_value(["melo-encrypted", "full-plain"]).run()
    tables = prediction_tables(at)
    assert len(tables) == 3 and all(list(t.index) == ["melo-encrypted", "full-plain"] for t in tables)
    at.multiselect(key="runs").set_value([]).run()
    assert not prediction_tables(at) and len(image_cards(at)) == 3  # the images are still shown
    assert [i.value for i in at.info] == ["Choose runs to compare above."]  # once, not once per image


def test_a_colour_sample_is_encrypted_across_its_three_channels(demo_key, infos):
    at = home()
    at.multiselect(key="samples").set_value(["fashion-5.png (Sandal)", "cfashion-5.png (Sandal)"]).run()
    assert not at.exception and not at.error and len(image_cards(at)) == 2
    assert_top3_for_each_method(at, count=2)
    shape, factor = demo.geometry(infos), demo.display_factor(demo.geometry(infos).image_size)
    grey, colour = (
        demo.read_image((SAMPLES_DIR / name).read_bytes(), name, shape) for name in ("fashion-5.png", "cfashion-5.png")
    )
    plain, encrypted = image_cards(at)[1].images
    assert (plain[..., 0] != plain[..., 1]).any() and (plain[..., 1] != plain[..., 2]).any()  # kept in colour
    assert np.array_equal(plain, demo.enlarge(colour.array, factor))
    assert np.array_equal(encrypted, demo.enlarge(demo_key.encrypt(colour.array), factor))
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert (encrypted[..., a] != encrypted[..., b]).mean() > 0.5
    assert not np.array_equal(encrypted, demo.enlarge(demo_key.encrypt(grey.array), factor))
    notes = [card.notes for card in image_cards(at)]
    assert notes[0] == [] and len(notes[1]) == 1  # for cfashion-5.png only
    assert notes[1][0].startswith("A colour image") and "trained on grey images (fashion5k)" in notes[1][0]
    at.checkbox(key="grid").check().run()  # the block grid drawn over the colour blocks
    assert np.array_equal(
        image_cards(at)[1].images[1], demo.enlarge(demo_key.encrypt(colour.array), factor, demo_key.block_size)
    )


def test_runs_from_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCVIT_APP_RUNS", str(tmp_path))
    at = home()
    at.radio(key="runs_source").set_value("Run directories in a folder").run()
    assert at.info and not prediction_tables(at)  # asks for a folder
    at.text_input(key="runs_folder").input(str(tmp_path / "missing")).run()
    assert len(at.error) == 1 and "missing" in seen(at.error)[0]
    at.text_input(key="runs_folder").input(str(tmp_path)).run()
    assert len(at.error) == 1 and "no run directories" in seen(at.error)[0]
    for run in ("melo-encrypted", "melo-plain"):
        shutil.copytree(shipped_comparison() / run, tmp_path / "exp" / run)
    at.text_input(key="runs_folder").input(str(tmp_path)).run()
    assert not at.error and at.multiselect(key="runs").value == ["exp/melo-encrypted", "exp/melo-plain"]
    tables = prediction_tables(at)
    assert len(tables) == 3 and all(list(t.sees) == ["encrypted", "plain"] for t in tables)
    at.radio(key="runs_source").set_value("Shipped comparison (fashion5k)").run()
    assert_top3_for_each_method(at, count=3)  # back to the shipped runs and their default choice


def test_folders_outside_the_allowed_ones_are_refused_before_they_are_read(tmp_path, monkeypatch):
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    for folder in (allowed, other):
        shutil.copytree(shipped_comparison() / "melo-plain", folder / "exp" / "melo-plain")
    (allowed / "root").symlink_to("/")
    (allowed / "sideways").symlink_to(other)
    monkeypatch.setenv("ENCVIT_APP_RUNS", str(allowed))
    searched = []
    monkeypatch.setattr("encvit.demo.access.find_runs", lambda folder: searched.append(folder) or find_runs(folder))
    at = home()
    at.radio(key="runs_source").set_value("Run directories in a folder").run()
    searched.clear()  # the shipped comparison, read before the folder box was chosen
    for typed in (
        "/",
        str(other),
        str(allowed / ".."),
        str(allowed / "exp" / ".." / ".." / "other"),
        str(allowed / "root"),
        str(allowed / "root" / "etc"),
        str(allowed / "sideways"),
        "runs-elsewhere",
    ):
        at.text_input(key="runs_folder").input(typed).run()
        assert not at.exception and len(at.error) == 1
        assert seen(at.error)[0].startswith(f"{typed} is outside the allowed folders ({allowed}, the shipped results)")
        assert not prediction_tables(at)
    assert searched == []  # refused before anything below them was listed
    at.text_input(key="runs_folder").input(str(allowed / "exp")).run()
    assert not at.error and at.multiselect(key="runs").value == ["melo-plain"]
    # `streamlit run app/Home.py -- --runs DIR` names the folders instead of the environment
    monkeypatch.setattr("sys.argv", ["app/Home.py", "--runs", str(other)])
    at.text_input(key="runs_folder").input(str(allowed / "exp")).run()
    assert "is outside the allowed folders" in seen(at.error)[0]
    at.text_input(key="runs_folder").input(str(other)).run()
    assert not at.error and at.multiselect(key="runs").value == ["exp/melo-plain"]


def adapter_naming(path: Path, backbone: str) -> Path:
    """A copy of a shipped adapter file whose metadata names `backbone`."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source = shipped_comparison() / "melo-plain" / "adapter.safetensors"
    with safe_open(source, "pt") as handle:
        meta = handle.metadata()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(source), path, metadata={**meta, "backbone": json.dumps(backbone)})
    return path


def test_a_backbone_outside_the_allowlist_is_refused_before_it_is_built(tmp_path, monkeypatch):
    shutil.copytree(shipped_comparison() / "melo-encrypted", tmp_path / "melo-encrypted")
    adapter_naming(tmp_path / "giant" / "adapter.safetensors", "vit_giant_patch14_224")
    monkeypatch.setenv("ENCVIT_APP_RUNS", str(tmp_path))
    built = []
    monkeypatch.setattr("encvit.models.predict.create_backbone", lambda name, **kw: built.append(name))
    at = home()
    at.radio(key="runs_source").set_value("Run directories in a folder").run()
    at.text_input(key="runs_folder").input(str(tmp_path)).run()
    assert not at.exception and len(at.error) == 1 and built == []
    message = seen(at.error)[0]
    assert f"{tmp_path / 'giant' / 'adapter.safetensors'} needs the backbone vit_giant_patch14_224" in message
    assert "this app does not build (it builds encvit-tiny, encvit-tiny-colour" in message
    assert "ENCVIT_APP_BACKBONES" in message and not prediction_tables(at)


def test_app_access_settings(tmp_path):
    env = {"ENCVIT_APP_RUNS": f"a{os.pathsep}b", "ENCVIT_APP_BACKBONES": "vit_small_patch16_224, vit_tiny"}
    assert app_access([], {}).folders == ("runs",)
    assert app_access(["--server.port", "1"], env).folders == ("a", "b")
    assert app_access(["--runs", "x", "--runs", f"y{os.pathsep}z"], env).folders == ("x", "y", "z")
    access = app_access([], env)
    assert access.backbones == {"encvit-tiny", "encvit-tiny-colour", "vit_small_patch16_224", "vit_tiny"}
    assert not app_access([], {}).allows(tmp_path)
    assert app_access(["--runs", str(tmp_path)], {}).allows(tmp_path / "x" / ".." / "y")
    assert not app_access(["--runs", str(tmp_path / "x")], {}).allows(tmp_path / "x" / ".." / "y")
    with pytest.raises(ConfigError, match="--runs needs a folder"):
        app_access(["--runs"], {})
    info = read_adapter_info(adapter_naming(tmp_path / "a" / "adapter.safetensors", "vit_small_patch16_224"))
    access.check_backbone(info, "run a")
    with pytest.raises(NotAllowedError, match="run a needs the backbone vit_small_patch16_224"):
        app_access([], {}).check_backbone(info, "run a")


# ---- work once: what the page keeps, and the queue every visitor's heavy work goes through ------------------
@pytest.fixture
def classified(monkeypatch):
    """A fresh shared Serving, and a record of every batch the models classify: (run, image names) per call."""
    serving.shared.cache_clear()
    calls = []
    original = demo.classify

    def recording(models, images, key, top_k=3):
        calls.extend((name, tuple(i.name for i in images)) for name in models)
        return original(models, images, key, top_k)

    monkeypatch.setattr("encvit.demo.home.classify", recording)
    yield calls
    serving.shared.cache_clear()


def test_a_page_run_classifies_only_what_it_has_not_seen(classified):
    at = home()
    samples = ("fashion-0.png", "fashion-1.png", "fashion-2.png")
    runs = ["full-encrypted", "melo-encrypted", "proposed-encrypted", "proposed-plain"]
    assert sorted(classified) == sorted((run, samples) for run in runs)  # one batch per model
    classified.clear()
    at.checkbox(key="grid").check().run()
    at.multiselect(key="runs").set_value(runs[1:]).run()
    assert classified == [] and len(prediction_tables(at)) == 3
    at.file_uploader(key="uploads").set_value(("photo.png", png(), "image/png")).run()
    assert sorted(classified) == [(run, ("photo.png",)) for run in runs[1:]]  # the new image alone
    classified.clear()
    at.text_input(key="passphrase").input("another passphrase").run()
    assert sorted(classified) == [(run, (*samples, "photo.png")) for run in runs[1:3]]  # the plain run knew them
    classified.clear()
    AppTest.from_file(APP, default_timeout=TIMEOUT).run()  # another visitor, the same defaults
    at.text_input(key="passphrase").input(DEMO_PASSPHRASE).run()
    assert classified == [] and not at.exception
    assert [list(t.index) for t in prediction_tables(at)] == [runs[1:]] * 4


def test_kept_predictions_are_those_the_models_give(infos, demo_key):
    models = load_runs(shipped_comparison())
    adapters = {name: f"hash-of-{name}" for name in models}
    shape = demo.geometry(infos)
    images = demo.sample_images([s for s in list_samples() if s.label in shape.class_names][:4], shape)
    kept = serving.Serving()
    first = kept.classify(models, adapters, images[:2], demo_key)
    again = kept.classify(models, adapters, images, demo_key)  # two kept, two new
    assert again == demo.classify(models, images, demo_key) and {n: p[:2] for n, p in again.items()} == first
    other = Key.generate(demo_key.block_size, demo_key.channels, passphrase="other")
    assert kept.classify(models, adapters, images, other) == demo.classify(models, images, other)
    retrained = {**adapters, "melo-encrypted": "another hash"}  # a new adapter file is never answered from the old
    assert kept.predictions.get(("another hash", demo_key.fingerprint, images[0].digest, 3)) is None
    kept.classify(models, retrained, images[:1], demo_key)
    assert kept.predictions.get(("another hash", demo_key.fingerprint, images[0].digest, 3)) is not None


def test_a_key_is_derived_once_and_kept_under_a_hash(monkeypatch):
    derived = []
    generate = Key.generate.__func__
    monkeypatch.setattr(
        Key, "generate", classmethod(lambda cls, *a, **kw: derived.append(kw) or generate(cls, *a, **kw))
    )
    kept = serving.Serving()
    first = kept.key("a passphrase", 4, 3)
    assert kept.key("a passphrase", 4, 3) is first and len(derived) == 1
    assert kept.key("a passphrase", 8, 3).block_size == 8 and len(derived) == 2
    assert not any("a passphrase" in str(name) for name in kept.kept._items)  # filed under a hash


def test_kept_drops_the_least_recently_used():
    kept = serving.Kept(2)
    kept.put("a", 1)
    kept.put("b", 2)
    assert kept.get("a") == 1  # now the most recently used
    kept.put("c", 3)
    assert (kept.get("a"), kept.get("b"), kept.get("c"), len(kept)) == (1, None, 3, 2)


def test_turns_serve_in_order_and_say_how_many_are_ahead():
    import threading
    import time

    turns = serving.Turns(slots=1, poll=0.01)
    served, told, entered = [], {}, threading.Event()
    release = threading.Event()

    def holder():
        with turns.turn():
            entered.set()
            release.wait(5)
            served.append("holder")

    def visitor(name):
        with turns.turn(lambda ahead: told.setdefault(name, []).append(ahead)):
            served.append(name)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    assert entered.wait(5)
    for name in ("first", "second", "third"):
        threads.append(threading.Thread(target=visitor, args=(name,)))
        threads[-1].start()
        while turns.ahead() < len(threads):  # each one queued before the next comes
            time.sleep(0.001)
    assert turns.ahead() == 4  # one served, three waiting
    release.set()
    for thread in threads:
        thread.join(5)
    assert served == ["holder", "first", "second", "third"]
    assert told["first"][0] == 1 and told["second"][0] == 2 and told["third"][0] == 3
    assert all(counts == sorted(counts, reverse=True) for counts in told.values())  # the count only goes down
    assert turns.ahead() == 0


def test_a_visitor_who_leaves_the_queue_gives_the_place_up():
    class Rerun(Exception):
        pass

    turns = serving.Turns(slots=1, poll=0.01)

    def leave(ahead):
        raise Rerun  # Streamlit stops a run this way when the visitor changes something

    with turns.turn():
        with pytest.raises(Rerun):
            with turns.turn(leave):
                pass
        assert turns.ahead() == 1  # the one being served, nobody waiting
    with turns.turn():  # the queue still works
        assert turns.ahead() == 1
    with pytest.raises(ValueError, match="at least one slot"):
        serving.Turns(slots=0)


def test_machine_settings_for_the_queue():
    import gc

    assert [serving.inference_threads(c) for c in (1, 2, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 4]
    try:
        serving.freeze_heap()
        assert gc.get_freeze_count() > 0  # the loaded objects are out of the collection's way
    finally:
        gc.unfreeze()


# ---- the comparison page ----------------------------------------------------------------------------
def test_comparison_page_shows_results_chart_and_parameter_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCVIT_APP_RUNS", str(tmp_path))
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
    assert len(at.error) == 1 and "results.csv" in seen(at.error)[0]
    assert len(at.table) == 1  # the parameter counts are still shown
    for outside in ("/", str(tmp_path / ".."), str(shipped_comparison().parents[2])):
        at.text_input(key="comparison_folder").input(outside).run()
        assert len(at.error) == 1 and f"{outside} is outside the allowed folders" in seen(at.error)[0]
        assert not at.image and len(at.table) == 1


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


# ---- the attacker's view ------------------------------------------------------------------------------
ATTACKERS_VIEW = "pages/3_Attacker's_view.py"


def attackers_view(at: AppTest | None = None) -> AppTest:
    """The Attacker's view, opened first (a new AppTest) or after what `at` did on the main page."""
    at = (at or AppTest.from_file(APP, default_timeout=TIMEOUT)).switch_page(ATTACKERS_VIEW).run()
    assert not at.exception, at.exception
    return at


def image_captions(at: AppTest) -> list[str]:
    return [image.proto.imgs[0].caption for image in at.main.image]


def shown_metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def used_line(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("The attack used"))


def upload_key(at: AppTest, key: Key) -> AppTest:
    at.radio(key="key_source").set_value("Key file").run()
    at.file_uploader(key="key_file").set_value(("key.json", demo.key_download(key)[1], "application/json")).run()
    assert not at.exception and not at.error
    return at


def test_attackers_view_reconstructs_the_default_samples_and_scores_them(demo_key):
    at = attackers_view()  # opened before the main page: it attacks the main page's defaults
    assert not at.error and "Nothing was chosen on the main page" in at.info[0].value
    key, images = attack_demo.default_target()
    assert key == demo_key and len(images) == 3
    captions = image_captions(at)
    assert captions[:6] == [c for i in images for c in (f"{i.name}, encrypted", "its block means")]
    assert captions[6::2] == [f"{i.name} (the attacker never sees it)" for i in images]
    # The page's numbers are those of the attack run here on the same ciphertexts (it is seeded).
    owner_images, reference = attack_demo.attack_sets()
    outcome = attack_demo.run_attack(key, np.stack([i.array for i in images]), owner_images[:50], reference)
    assert captions[7::2] == [f"reconstructed: {attack_demo.psnr_caption(p)}" for p in outcome.psnr_db]
    assert shown_metrics(at) == {
        "Key recovered (right pixel)": f"{100 * outcome.agreement['positions_same_pixel']:.0f}%",
        "Key recovered (exact)": f"{100 * outcome.agreement['positions_exact']:.0f}%",
        "PSNR of your images": f"{outcome.quality['psnr_db']:.1f} dB",
        "Your images decrypted exactly": f"{round(3 * outcome.quality['images_exact'])} of 3",
    }
    assert at.table[0].value.equals(attack_demo.key_rows(outcome))
    assert at.table[1].value.equals(attack_demo.quality_rows(outcome))
    assert "(3 from the main page and 50 collected)" in used_line(at)
    # Grey Fashion-MNIST at M = 4: 53 ciphertexts give the attacker every pixel of the key and the images.
    assert outcome.agreement["positions_same_pixel"] == 1.0 and outcome.quality["images_exact"] == 1.0
    assert (outcome.reconstructions == np.stack([i.array for i in images])).all()


def test_attackers_view_attacks_the_key_and_images_of_the_main_page():
    at = home()
    at.text_input(key="passphrase").input("not the demo passphrase").run()
    at.multiselect(key="samples").set_value(["fashion-3.png (Dress)", "digit-7.png (7)"]).run()
    key = at.session_state.main_page_choice[0]
    at = attackers_view(at)
    assert not at.error and not at.info
    assert any(f"key `{key.fingerprint}`, 2 images" in m.value for m in at.markdown)
    assert [c for c in image_captions(at) if c.endswith(", encrypted")] == [
        "fashion-3.png, encrypted",
        "digit-7.png, encrypted",
    ]
    at.slider(key="collected").set_value(0).run()
    assert "**2 encrypted images** (2 from the main page and 0 collected)" in used_line(at)
    at.slider(key="collected").set_value(attack_demo.COLLECTED_MAX).run()
    assert "**202 encrypted images** (2 from the main page and 200 collected)" in used_line(at)
    assert not at.exception and set(shown_metrics(at)) >= {"Key recovered (exact)", "PSNR of your images"}


@pytest.mark.parametrize(
    "option, score, part",
    [("neg_pos", "neg_pos_mask", "negative-positive mask"), ("scramble", "block_order", "block order")],
)
def test_attackers_view_assumes_the_keys_options_and_shows_what_it_recovered(demo_key, option, score, part):
    key = Key.generate(demo_key.block_size, demo_key.channels, passphrase="options", **{option: True})
    at = attackers_view(upload_key(home(), key))
    assert not at.error
    assumed = "negative-positive" if option == "neg_pos" else "block scrambling"
    assert any(m.value.startswith(f"The key uses {assumed}:") for m in at.markdown)
    _, images = attack_demo.default_target()
    owner_images, reference = attack_demo.attack_sets()
    outcome = attack_demo.run_attack(key, np.stack([i.array for i in images]), owner_images[:50], reference)
    assert score in outcome.agreement and at.table[0].value.equals(attack_demo.key_rows(outcome))
    shown = at.table[0].value.loc[part, "recovered"]
    assert any(
        m.value.endswith(f"{shown} of the flip mask recovered.") or f"put {shown} of the blocks" in m.value
        for m in at.markdown
    )
    assert at.table[1].value.equals(attack_demo.quality_rows(outcome))
    if option == "scramble":  # the demo's garments come back whole, in another pose (tests/test_attacks.py)
        assert outcome.pose_quality["images_exact_any_pose"] == 1.0
        assert any(
            m.value.startswith("Yet turned, mirrored or shifted round as a whole") and "3 of your 3" in m.value
            for m in at.markdown
        )
    else:
        assert outcome.pose_quality is None


def test_attackers_view_on_colour_images_runs_and_says_quality_is_lower():
    at = home()
    at.multiselect(key="samples").set_value(["chelsea.png", "fashion-0.png (T-shirt/top)"]).run()
    at = attackers_view(at)
    assert not at.error and len(at.warning) == 1 and "1 of your images is in colour" in seen(at.warning)[0]
    assert "quality is lower" in seen(at.warning)[0]
    assert len(image_captions(at)) == 8 and "PSNR of your images" in shown_metrics(at)


def test_attackers_view_errors_get_one_message_and_the_page_goes_on(demo_key):
    big = Key.generate(16, demo_key.channels, passphrase="big blocks")  # fits 32x32 images, too costly to attack
    at = attackers_view(upload_key(home(), big))
    assert len(at.error) == 1 and "768 values per block" in seen(at.error)[0] and "encvit attack" in seen(at.error)[0]
    assert len(at.main.image) == 6 and not at.metric  # the ciphertexts and thumbnails are still shown
    at = home()
    at.multiselect(key="samples").set_value([]).run()
    at = attackers_view(at)
    assert not at.error and "No images are chosen on the main page" in at.info[0].value and not at.main.image


def test_block_mean_thumbnails_are_the_plain_images_at_a_lower_resolution(demo_key):
    _, images = attack_demo.default_target()
    plain = np.stack([i.array for i in images])
    encrypted, thumbnails = attack_demo.holdings(demo_key, plain)
    m = demo_key.block_size
    means = plain.reshape(3, 32 // m, m, 32 // m, m, 3).mean(axis=(2, 4, 5))
    assert (encrypted != plain).any() and (thumbnails[..., 0] == np.rint(means)).all()
    scrambled = Key.generate(m, 3, passphrase="x", scramble=True)
    _, shuffled = attack_demo.holdings(scrambled, plain)
    assert (np.sort(shuffled.reshape(3, -1), axis=1) == np.sort(thumbnails.reshape(3, -1), axis=1)).all()
    assert colour_images(plain) == 0 and colour_images(plain[..., ::-1] * [1, 0, 1]) == 3
    with pytest.raises(AttackError, match="768 values per block"):
        attack_demo.check_attackable(Key.generate(16, 3))


# ---- who can reach the app --------------------------------------------------------------------------------
def test_make_demo_serves_this_machine_only_unless_told_otherwise():
    def demo_command(*settings: str) -> str:
        return make_command("demo", *settings)

    assert "--server.address 127.0.0.1 " in demo_command() and demo_command().endswith("-- --runs runs")
    assert "--server.address 0.0.0.0 " in demo_command("ADDRESS=0.0.0.0")
    assert demo_command("RUNS=/data/runs").endswith("-- --runs /data/runs")


def make_command(target: str, *settings: str) -> str:
    """The command `make TARGET SETTINGS` runs (the set-up step it may run first left out)."""
    import subprocess

    shown = subprocess.run(
        ["make", "-n", target, *settings], cwd=Path(APP).parents[1], capture_output=True, text=True, check=True
    )
    word = {"demo": "streamlit run", "lab": "jupyter lab"}[target]
    return next(line for line in shown.stdout.replace("\\\n", " ").splitlines() if word in line)


def test_make_lab_serves_the_four_notebooks_with_the_projects_kernel():
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from browser.server import free_port

    assert "--ip 127.0.0.1 " in make_command("lab") and "--ip 0.0.0.0 " in make_command("lab", "ADDRESS=0.0.0.0")
    port, token = free_port(), "a-token-for-this-test"
    command = make_command("lab", f"LAB_PORT={port}")
    assert command.startswith(".venv/bin/jupyter lab ") and "--ServerApp.root_dir=notebooks" in command
    local = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://127.0.0.1:{port}/api"

    def get(path: str, with_token: bool = True):
        with local.open(f"{url}/{path}" + (f"?token={token}" if with_token else ""), timeout=5) as answer:
            return json.loads(answer.read())

    lab = subprocess.Popen(
        command,
        shell=True,
        cwd=Path(APP).parents[1],
        env={**os.environ, "JUPYTER_TOKEN": token},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert lab.poll() is None, f"make lab exited with status {lab.returncode}"
            try:
                get("status")
                break
            except OSError:
                assert time.monotonic() < deadline, "JupyterLab did not answer within 120 s"
                time.sleep(0.5)
        notebooks = {item["name"] for item in get("contents")["content"]}
        assert {p.name for p in (Path(APP).parents[1] / "notebooks").glob("*.ipynb")} <= notebooks
        assert len([n for n in notebooks if n.endswith(".ipynb")]) == 4
        assert get("kernelspecs")["default"] == "python3"  # started from the venv: its python runs the kernel
        from jupyter_client.manager import KernelManager

        assert KernelManager(kernel_name="python3").format_kernel_cmd()[0] == sys.executable
        with pytest.raises(urllib.error.HTTPError, match="403"):
            get("contents", with_token=False)  # a visitor without the token reads nothing
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        lab.wait(30)
