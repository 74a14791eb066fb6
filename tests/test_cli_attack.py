"""`encvit attack ...` as a user runs it: keys recovered from files and folders, used by `encvit decrypt`;
every bad input refused with one line, exit status 2 and nothing written."""

import json

import numpy as np
import pytest
from PIL import Image

from encvit.cipher.key import Key
from encvit.cli import main
from encvit.common.shipped import SAMPLES_DIR
from encvit.data.datasets import _fashion_arrays


def write_fashion(folder, classes, count):
    """`count` Fashion-MNIST test images of `classes` as 28 x 28 grey PNGs (what a user would have on disk)."""
    images, labels = _fashion_arrays("test")
    folder.mkdir(parents=True)
    for i in np.flatnonzero(np.isin(labels, classes))[:count]:
        Image.fromarray(images[i]).save(folder / f"item-{i}.png")
    return folder


def read(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


@pytest.fixture()
def encrypted_fashion(tmp_path, capsys):
    plain = write_fashion(tmp_path / "plain", [0, 1, 2, 3, 4], 40)
    reference = write_fashion(tmp_path / "public", [5, 6, 7, 8, 9], 150)
    assert main(["keygen", "-o", str(tmp_path / "key.json"), "--block-size", "4", "--neg-pos"]) == 0
    files = [str(p) for p in sorted(plain.glob("*.png"))]
    assert main(["encrypt", "--key", str(tmp_path / "key.json"), *files, "-o", str(tmp_path / "enc")]) == 0
    capsys.readouterr()
    return tmp_path, plain, reference


def test_ciphertext_only_from_folders_gives_a_key_that_decrypt_uses(encrypted_fashion, capsys):
    tmp, plain, reference = encrypted_fashion
    recovered = tmp / "recovered.json"
    assert (
        main(
            [
                "attack",
                "ciphertext-only",
                str(tmp / "enc"),
                "--reference",
                str(reference),
                "--block-size",
                "4",
                "--neg-pos",
                "-o",
                str(recovered),
            ]
        )
        == 0
    )
    assert "used 40 encrypted and 150 reference image(s)" in capsys.readouterr().out
    assert (
        main(
            ["decrypt", "--key", str(recovered), *map(str, sorted((tmp / "enc").glob("*.png"))), "-o", str(tmp / "dec")]
        )
        == 0
    )
    decrypted, original = read(tmp / "dec"), read(plain)
    assert decrypted.keys() == original.keys()
    # Grey images come back as 3 identical channels; every one is the plain image exactly.
    assert all((decrypted[name][:, :, 0] == original[name]).all() for name in original)
    assert (
        main(
            [
                "attack",
                "score",
                "--true-key",
                str(tmp / "key.json"),
                "--recovered",
                str(recovered),
                "--plain",
                str(plain),
                "--encrypted",
                str(tmp / "enc"),
                "--json",
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert scores["images_exact"] == 1.0 and scores["positions_same_pixel"] == 1.0 and scores["neg_pos_mask"] == 1.0


def test_known_and_chosen_plaintext_through_the_cli(tmp_path, capsys):
    key_file = tmp_path / "key.json"
    assert main(["keygen", "-o", str(key_file), "--block-size", "16", "--scramble", "--neg-pos"]) == 0
    coffee, chelsea = SAMPLES_DIR / "coffee.png", SAMPLES_DIR / "chelsea.png"
    assert main(["encrypt", "--key", str(key_file), str(coffee), str(chelsea), "-o", str(tmp_path / "enc")]) == 0
    assert (
        main(
            [
                "attack",
                "known-plaintext",
                "--plain",
                str(coffee),
                "--encrypted",
                str(tmp_path / "enc"),
                "-o",
                str(tmp_path / "kp.json"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "decrypt",
                "--key",
                str(tmp_path / "kp.json"),
                str(tmp_path / "enc" / "chelsea.png"),
                "-o",
                str(tmp_path / "dec"),
            ]
        )
        == 0
    )
    assert (read(tmp_path / "dec")["chelsea.png"] == np.asarray(Image.open(chelsea).convert("RGB"))).all()
    assert (
        main(
            [
                "attack",
                "chosen-plaintext",
                "--make-probes",
                str(tmp_path / "probes"),
                "--block-size",
                "16",
                "--size",
                "224x224",
            ]
        )
        == 0
    )
    probes = [str(p) for p in sorted((tmp_path / "probes").glob("*.png"))]
    assert main(["encrypt", "--key", str(key_file), *probes, "-o", str(tmp_path / "probes-enc")]) == 0
    assert (
        main(
            [
                "attack",
                "chosen-plaintext",
                "--probes-encrypted",
                str(tmp_path / "probes-enc"),
                "-o",
                str(tmp_path / "cp.json"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "attack",
                "score",
                "--true-key",
                str(key_file),
                "--recovered",
                str(tmp_path / "cp.json"),
                "--plain",
                str(chelsea),
                "--encrypted",
                str(tmp_path / "enc"),
                "--json",
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert scores["positions_exact"] == 1.0 and scores["block_order"] == 1.0 and scores["images_exact"] == 1.0
    assert Key.load(tmp_path / "cp.json").block_orders is not None


def _refused(argv, capsys, message, tmp_path, before=None):
    before = sorted(tmp_path.rglob("*")) if before is None else before
    assert main(argv) == 2
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if not line.startswith("note: "))
    assert len(err.splitlines()) == 1 and message in err, err
    assert "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before, "a refused command wrote something"


def test_bad_inputs_are_refused_with_one_line_and_nothing_written(encrypted_fashion, capsys):
    tmp, plain, reference = encrypted_fashion
    enc, out = str(tmp / "enc"), str(tmp / "out.json")
    corrupt = tmp / "corrupt" / "broken.png"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    empty = tmp / "empty"
    empty.mkdir()
    truncated = tmp / "truncated.json"
    truncated.write_text((tmp / "key.json").read_text()[:50])
    odd = tmp / "odd"
    odd.mkdir()
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(odd / "odd.png")
    cases = [
        (
            ["attack", "ciphertext-only", enc, "--reference", str(reference), "--block-size", "0", "-o", out],
            "--block-size must be an integer from 1 to 256, got 0",
        ),
        (
            [
                "attack",
                "ciphertext-only",
                enc,
                "--reference",
                str(reference),
                "--block-size",
                "4",
                "--channels",
                "2",
                "-o",
                out,
            ],
            "--channels must be one of 1, 3",
        ),
        (
            [
                "attack",
                "ciphertext-only",
                enc,
                "--reference",
                str(reference),
                "--block-size",
                "4",
                "--restarts",
                "0",
                "-o",
                out,
            ],
            "--restarts must be",
        ),
        (
            ["attack", "ciphertext-only", enc, "--reference", str(tmp / "nothere"), "--block-size", "4", "-o", out],
            "no such file or folder",
        ),
        (
            ["attack", "ciphertext-only", enc, "--reference", str(empty), "--block-size", "4", "-o", out],
            "holds no PNG or JPEG images",
        ),
        (
            ["attack", "ciphertext-only", enc, "--reference", str(corrupt), "--block-size", "4", "-o", out],
            "is not a readable image",
        ),
        (
            ["attack", "ciphertext-only", str(odd), "--reference", str(reference), "--block-size", "4", "-o", out],
            "30x30 (WxH) is not a multiple of the block size 4",
        ),
        (
            [
                "attack",
                "ciphertext-only",
                enc,
                "--reference",
                str(reference),
                "--block-size",
                "4",
                "-o",
                str(tmp / "key.json"),
            ],
            "exists; pass --force",
        ),
        (["attack", "known-plaintext", "--plain", str(reference), "--encrypted", enc, "-o", out], "share a file stem"),
        (
            ["attack", "known-plaintext", "--plain", str(odd), "--encrypted", str(odd), "-o", out],
            "no block-wise key explains these pairs",
        ),
        (["attack", "chosen-plaintext", "--make-probes", str(tmp / "probes")], "needs --block-size"),
        (
            ["attack", "chosen-plaintext", "--make-probes", str(tmp / "probes"), "--block-size", "4", "--size", "3x3"],
            "probe size 3x3",
        ),
        (["attack", "chosen-plaintext", "--probes-encrypted", enc, "-o", out], "needs the 2 encrypted probe images"),
        (["attack", "chosen-plaintext", "--probes-encrypted", enc], "needs -o"),
        (["attack", "chosen-plaintext"], "either --make-probes"),
        (
            ["attack", "score", "--true-key", str(truncated), "--recovered", str(tmp / "key.json")],
            "not valid JSON (truncated or corrupt?)",
        ),
        (
            [
                "attack",
                "score",
                "--true-key",
                str(tmp / "key.json"),
                "--recovered",
                str(tmp / "key.json"),
                "--plain",
                str(plain),
            ],
            "--plain and --encrypted go together",
        ),
    ]
    for argv, message in cases:
        _refused(argv, capsys, message, tmp)


def test_a_recovered_key_for_one_grid_refuses_another(tmp_path):
    key = Key.generate(4, 1, scramble=True)
    grid_key = Key(4, 1, key.pixel_permutation, None, None, {(2, 2): key.block_permutation(2, 2)})
    image = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
    assert (grid_key.decrypt(key.encrypt(image)) == image).all()
    grid_key.save(tmp_path / "k.json")
    assert Key.load(tmp_path / "k.json") == grid_key and "grid(s) 2x2" in grid_key.describe()
    with pytest.raises(Exception, match="knows the block order only for grid"):
        grid_key.encrypt(np.zeros((12, 8, 1), np.uint8))
