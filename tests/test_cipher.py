"""The block-wise key: exact round trips, the same permutation in every block, key files and bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from encvit.cipher.key import Key
from encvit.common.errors import ConfigError, ImageError, KeyFileError


def blocks_of(x: torch.Tensor, m: int) -> torch.Tensor:
    """(C, H, W) -> (number of blocks, C*M*M), blocks in row-major order, each flattened in (C, H, W) order."""
    c, h, w = x.shape
    return x.reshape(c, h // m, m, w // m, m).permute(1, 3, 0, 2, 4).reshape(-1, c * m * m)


@pytest.mark.parametrize("m,c,h,w", [(16, 3, 224, 224), (4, 3, 32, 32), (4, 3, 8, 12), (2, 1, 6, 4), (1, 3, 5, 7)])
@pytest.mark.parametrize("options", [{}, {"scramble": True}, {"neg_pos": True}, {"scramble": True, "neg_pos": True}])
def test_round_trip_uint8_is_exact_over_sizes_and_batches(m, c, h, w, options):
    key = Key.generate(m, c, **options)
    x = torch.randint(0, 256, (3, c, h, w), dtype=torch.uint8)
    y = key.encrypt(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(y, x)
    assert torch.equal(key.decrypt(y), x)
    assert torch.equal(key.encrypt(x[1]), y[1])  # single image == its row in the batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64])
def test_round_trip_other_dtypes(dtype):
    key = Key.generate(4, 3, scramble=True)
    x = (torch.rand(2, 3, 16, 16) * 255).to(dtype)
    assert torch.equal(key.decrypt(key.encrypt(x)), x)


def test_neg_pos_on_floats_flips_against_max_value():
    key = Key.generate(4, 3, neg_pos=True)
    x = torch.rand(2, 3, 8, 8)
    plain_key = Key(4, 3, key.pixel_permutation)
    flipped = key.encrypt(x) != plain_key.encrypt(x)
    assert torch.allclose(key.encrypt(x)[flipped], 1.0 - plain_key.encrypt(x)[flipped])
    assert torch.allclose(key.decrypt(key.encrypt(x)), x, atol=1e-7)
    integer_valued = torch.randint(0, 256, (2, 3, 8, 8)).float()
    assert torch.equal(key.decrypt(key.encrypt(integer_valued, max_value=255), max_value=255), integer_valued)


def test_same_permutation_in_every_block_and_values_cross_channels():
    key = Key.generate(4, 3)
    x = torch.arange(3 * 16 * 16, dtype=torch.int64).reshape(3, 16, 16)
    plain, enc = blocks_of(x, 4), blocks_of(key.encrypt(x), 4)
    perm = torch.from_numpy(key.pixel_permutation)
    assert torch.equal(enc, plain[:, perm])  # block k of the output is block k of the input, permuted
    channel_of = torch.arange(48) // 16
    assert (channel_of[perm] != channel_of).any(), "some values must move to another colour channel"


def test_each_block_keeps_its_multiset_of_values():
    key = Key.generate(4, 3)
    x = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    plain, enc = blocks_of(x, 4), blocks_of(key.encrypt(x), 4)
    assert torch.equal(plain.sort(1).values, enc.sort(1).values)


def test_block_scrambling_moves_whole_blocks():
    key = Key.generate(4, 3, scramble=True)
    x = torch.randint(0, 256, (3, 16, 32), dtype=torch.uint8)
    order = torch.from_numpy(key.block_permutation(4, 8))
    assert not torch.equal(order, torch.arange(32))
    expected = blocks_of(x, 4)[order][:, torch.from_numpy(key.pixel_permutation)]
    assert torch.equal(blocks_of(key.encrypt(x), 4), expected)


def test_neg_pos_flips_key_chosen_positions():
    key = Key.generate(4, 3, neg_pos=True)
    plain_key = Key(4, 3, key.pixel_permutation)
    x = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    enc, shuffled = blocks_of(key.encrypt(x), 4), blocks_of(plain_key.encrypt(x), 4)
    mask = torch.from_numpy(key.neg_pos)
    assert 0 < mask.sum() < 48
    assert torch.equal(enc[:, mask], 255 - shuffled[:, mask])
    assert torch.equal(enc[:, ~mask], shuffled[:, ~mask])


def test_numpy_pil_and_torch_agree():
    key = Key.generate(4, 3, scramble=True, neg_pos=True)
    array = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    from_torch = key.encrypt(torch.from_numpy(array).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.array_equal(key.encrypt(array), from_torch)
    assert np.array_equal(np.asarray(key.encrypt(Image.fromarray(array))), from_torch)
    assert np.array_equal(key.decrypt(key.encrypt(array)), array)
    batch = np.stack([array, array[::-1].copy()])
    assert np.array_equal(key.decrypt(key.encrypt(batch)), batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_round_trip_on_cuda():
    key = Key.generate(16, 3, scramble=True, neg_pos=True)
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    y = key.encrypt(x.cuda())
    assert y.is_cuda and torch.equal(y.cpu(), key.encrypt(x))


def test_passphrase_keys_are_deterministic_and_distinct():
    a1, a2 = Key.generate(16, passphrase="correct horse"), Key.generate(16, passphrase="correct horse")
    assert np.array_equal(a1.pixel_permutation, a2.pixel_permutation) and a1.fingerprint == a2.fingerprint
    assert Key.generate(16, passphrase="battery staple").fingerprint != a1.fingerprint
    assert Key.generate(16, passphrase="correct horse", scramble=True).fingerprint != a1.fingerprint
    assert Key.generate(8, passphrase="correct horse").block_size == 8


def test_random_keys_differ():
    assert Key.generate(4).fingerprint != Key.generate(4).fingerprint


def test_identity_and_degenerate_keys_are_refused():
    with pytest.raises(KeyFileError, match="identity"):
        Key(2, 1, np.arange(4))
    with pytest.raises(ConfigError, match="one value"):
        Key.generate(1, 1)
    with pytest.raises(ConfigError, match="block-size"):
        Key.generate(0)
    with pytest.raises(ConfigError, match="passphrase is empty"):
        Key.generate(4, passphrase="")
    small = Key.generate(1, 2)  # two values: the only non-identity permutation
    assert small.pixel_permutation.tolist() == [1, 0]


def test_key_file_round_trip(tmp_path):
    key = Key.generate(4, 3, scramble=True, neg_pos=True)
    path = key.save(tmp_path / "k.json")
    loaded = Key.load(path)
    assert loaded == key and loaded.fingerprint == key.fingerprint
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(loaded.encrypt(x), key.encrypt(x))
    assert (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]  # no temporary file left


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: text.replace('"version": 1', '"version": 2'), "version 2"),
        (lambda text: text.replace('"format": "encvit-key"', '"format": "other"'), "not an encvit key file"),
        (lambda text: json.dumps({**json.loads(text), "pixel_permutation": list(range(48))}), "identity"),
        (lambda text: json.dumps({**json.loads(text), "pixel_permutation": [0] * 48}), "permutation of 0..47"),
        (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "channels"}), "channels"),
        (
            lambda text: json.dumps(
                {**json.loads(text), "pixel_permutation": json.loads(text)["pixel_permutation"][::-1]}
            ),
            "edited",
        ),
        (lambda text: "", "not valid JSON"),
    ],
)
def test_damaged_key_files_are_refused(tmp_path, damage, message):
    path = Key.generate(4, 3).save(tmp_path / "k.json")
    path.write_text(damage(path.read_text()))
    with pytest.raises(KeyFileError, match=message):
        Key.load(path)


def test_missing_key_file(tmp_path):
    with pytest.raises(KeyFileError, match="not found"):
        Key.load(tmp_path / "none.json")


def test_image_that_does_not_fit_is_refused_and_unchanged():
    key = Key.generate(16, 3)
    x = torch.randint(0, 256, (3, 30, 32), dtype=torch.uint8)
    before = x.clone()
    with pytest.raises(ImageError, match=r"32x30 .* block size 16"):
        key.encrypt(x)
    assert torch.equal(x, before)
    with pytest.raises(ImageError, match="1 channel"):
        key.encrypt(torch.zeros(1, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="list"):
        key.encrypt([1, 2, 3])


def test_fingerprint_is_short_and_shown():
    key = Key.generate(4, passphrase="x")
    assert len(key.fingerprint) == 12 and key.fingerprint in key.describe()
    assert str(key.pixel_permutation[:5].tolist())[1:-1] not in key.describe()
