"""The cipher's command line: keygen, encrypt, decrypt, key-info, and every bad input refused with exit 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from encvit.cipher.key import Key
from encvit.cli import main


def run(*args):
    """Run the real console entry point in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "encvit.cli", *map(str, args)], capture_output=True, text=True)


def write_image(path, size=(32, 32), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


@pytest.fixture
def key_file(tmp_path):
    assert main(["keygen", "-o", str(tmp_path / "key.json"), "--block-size", "4", "--passphrase", "test"]) == 0
    return tmp_path / "key.json"


def test_keygen_passphrase_is_deterministic(tmp_path, capsys):
    for name in ("a.json", "b.json"):
        assert (
            main(
                [
                    "keygen",
                    "-o",
                    str(tmp_path / name),
                    "--passphrase",
                    "pw",
                    "--block-size",
                    "8",
                    "--scramble",
                    "--neg-pos",
                ]
            )
            == 0
        )
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a == b and a["block_size"] == 8 and a["scramble_secret"] and a["neg_pos"]
    assert a["fingerprint"] in capsys.readouterr().out


def test_keygen_refuses_to_overwrite(key_file, capsys):
    before = key_file.read_text()
    assert main(["keygen", "-o", str(key_file)]) == 2
    assert "exists" in capsys.readouterr().err
    assert key_file.read_text() == before


def test_encrypt_decrypt_round_trip_through_files(tmp_path, key_file):
    src = write_image(tmp_path / "photo.jpg.png", (32, 16))
    result = run("encrypt", "--key", key_file, src, "-o", tmp_path / "enc")
    assert result.returncode == 0, result.stderr
    encrypted = tmp_path / "enc" / "photo.jpg.png"
    assert encrypted.exists()
    key = Key.load(key_file)
    original = np.asarray(Image.open(src))
    assert np.array_equal(np.asarray(Image.open(encrypted)), key.encrypt(original))
    result = run("decrypt", "--key", key_file, encrypted, "-o", tmp_path / "dec")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "dec" / "photo.jpg.png")), original)


def test_grey_input_is_expanded_with_a_note(tmp_path, key_file, capsys):
    src = write_image(tmp_path / "grey.png", mode="L")
    assert main(["encrypt", "--key", str(key_file), str(src), "-o", str(tmp_path / "out")]) == 0
    assert "greyscale" in capsys.readouterr().err
    assert np.asarray(Image.open(tmp_path / "out" / "grey.png")).shape == (32, 32, 3)


def test_resize_makes_any_size_fit(tmp_path, key_file):
    src = write_image(tmp_path / "odd.png", (30, 17))
    assert main(["encrypt", "--key", str(key_file), str(src), "-o", str(tmp_path / "out"), "--resize", "32x24"]) == 0
    assert Image.open(tmp_path / "out" / "odd.png").size == (32, 24)


def test_bad_size_is_refused_and_nothing_written(tmp_path, key_file):
    good = write_image(tmp_path / "good.png")
    bad = write_image(tmp_path / "bad.png", (30, 17))
    result = run("encrypt", "--key", key_file, good, bad, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert "30x17" in result.stderr and "block size 4" in result.stderr and "bad.png" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_corrupt_image_is_refused_by_name(tmp_path, key_file):
    good = write_image(tmp_path / "good.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:60])
    result = run("encrypt", "--key", key_file, good, corrupt, "-o", tmp_path / "out")
    assert result.returncode == 2 and "corrupt.png" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_image_and_key(tmp_path, key_file):
    result = run("encrypt", "--key", key_file, tmp_path / "nope.png", "-o", tmp_path / "out")
    assert result.returncode == 2 and "nope.png" in result.stderr
    result = run("encrypt", "--key", tmp_path / "nokey.json", write_image(tmp_path / "a.png"), "-o", tmp_path / "o")
    assert result.returncode == 2 and "nokey.json" in result.stderr


def test_truncated_key_file_is_refused(tmp_path, key_file):
    key_file.write_text(key_file.read_text()[:100])
    result = run("key-info", key_file)
    assert result.returncode == 2 and "truncated" in result.stderr and "Traceback" not in result.stderr


def test_two_inputs_with_the_same_stem_are_refused(tmp_path, key_file):
    (tmp_path / "x").mkdir()
    a = write_image(tmp_path / "img.png")
    b = write_image(tmp_path / "x" / "img.png")
    assert main(["encrypt", "--key", str(key_file), str(a), str(b), "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_key_info_shows_fingerprint_not_key(key_file):
    result = run("key-info", key_file)
    key = Key.load(key_file)
    assert result.returncode == 0 and key.fingerprint in result.stdout
    assert str(key.pixel_permutation.tolist()) not in result.stdout


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "encvit")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "keygen" in result.stdout
