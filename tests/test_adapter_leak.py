"""Does a shared adapter leak the key? Exactly adapted models give all of it; the shipped fine-tuned adapters give
what was measured (docs/attacks.md); plain and MeLo adapters are refused, and so is every bad command line."""

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from encvit.attacks import key_agreement, key_from_adapter
from encvit.attacks.adapter_leak import block_moments, block_prior, key_from_weights
from encvit.cipher.key import Key
from encvit.cli import main
from encvit.common.errors import AdapterError, AttackError
from encvit.models.adapt import adapt_to_key
from encvit.models.backbones import create_backbone

SHIPPED = "encvit/results/fashion5k"
DEMO_KEY = Key.generate(4, 3, passphrase="encvit-demo")  # the key the shipped encrypted runs were trained with


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("encvit-tiny")


def weights(model):
    return model.patch_embed.proj.weight.detach().numpy(), model.pos_embed.detach().numpy()[0, 1:]


@pytest.mark.parametrize("neg_pos, scramble", [(False, False), (True, False), (False, True), (True, True)])
def test_an_exactly_adapted_model_gives_the_whole_key(backbone, neg_pos, scramble):
    pretrained, pretrained_positions = weights(backbone)
    for _ in range(2):
        key = Key.generate(4, 3, neg_pos=neg_pos, scramble=scramble)
        trained, trained_positions = weights(adapt_to_key(backbone, key))
        positions = (
            dict(trained_positions=trained_positions, pretrained_positions=pretrained_positions, grid=(8, 8))
            if scramble
            else {}
        )
        report = {}
        recovered = key_from_weights(trained, pretrained, 4, 3, neg_pos=neg_pos, report=report, **positions)
        assert report["reading"] == "copy"
        scores = key_agreement(key, recovered, (8, 8) if scramble else None)
        assert set(scores.values()) == {1.0}, scores
        # The convention end to end: the recovered key adapts the backbone to the same weights as the true key.
        again = adapt_to_key(backbone, recovered)
        assert np.array_equal(weights(again)[0], trained)
        image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        assert np.array_equal(recovered.decrypt(key.encrypt(image)), image)


def test_a_copy_with_negated_columns_asks_for_neg_pos(backbone):
    key = Key.generate(4, 3, neg_pos=True)
    with pytest.raises(AttackError, match="negated: the key has negative-positive flips"):
        key_from_weights(weights(adapt_to_key(backbone, key))[0], weights(backbone)[0], 4, 3)


def test_the_pretrained_weight_itself_shows_no_key(backbone):
    with pytest.raises(AttackError, match="identity permutation"):
        key_from_weights(weights(backbone)[0], weights(backbone)[0], 4, 3)
    with pytest.raises(AttackError, match="must both be D x 16 "):
        key_from_weights(weights(backbone)[0], weights(backbone)[0], 4, 1)


# Measured (docs/attacks.md): the shipped proposed adapter gives every pixel (same-pixel fraction 1.0; the channel
# within a grey pixel is unknowable and ~1/3 right); the shipped full fine-tuning adapter gives chance (~1/16).
@pytest.mark.parametrize("run, low, high", [("proposed-encrypted", 0.95, 1.0), ("full-encrypted", 0.0, 0.2)])
def test_the_shipped_adapters_give_what_was_measured(backbone, run, low, high):
    recovered = key_from_adapter(f"{SHIPPED}/{run}", backbone)
    assert low <= key_agreement(DEMO_KEY, recovered)["positions_same_pixel"] <= high


def test_the_key_read_off_the_proposed_adapter_decrypts_grey_images_exactly(backbone):
    from encvit.data.datasets import _fashion_arrays

    images = np.repeat(np.pad(_fashion_arrays("test")[0][:20], ((0, 0), (2, 2), (2, 2)))[..., None], 3, axis=3)
    recovered = key_from_adapter(f"{SHIPPED}/proposed-encrypted", backbone, reference=images)
    assert np.array_equal(recovered.decrypt(DEMO_KEY.encrypt(images)), images)


def test_block_statistics_by_hand():
    prior = block_prior(2, 1, correlation=0.5)
    assert np.array_equal(prior, [[1, 0.5, 0.5, 0.25], [0.5, 1, 0.25, 0.5], [0.5, 0.25, 1, 0.5], [0.25, 0.5, 0.5, 1]])
    images = [np.full((2, 2, 1), 255, np.uint8), np.zeros((4, 2, 1), np.uint8)]  # two sizes: 3 blocks
    assert np.allclose(block_moments(images, 2), np.ones((4, 4)))


def test_plain_melo_and_foreign_adapters_are_refused(backbone, tmp_path):
    with pytest.raises(AttackError, match="trained on plain images"):
        key_from_adapter(f"{SHIPPED}/proposed-plain", backbone)
    with pytest.raises(AttackError, match="holds no patch embedding"):
        key_from_adapter(f"{SHIPPED}/melo-encrypted", backbone)
    with pytest.raises(AttackError, match="holds no position embedding"):
        key_from_adapter(f"{SHIPPED}/proposed-encrypted", backbone, scramble=True)
    other = create_backbone("encvit-tiny", pretrained=False)
    with pytest.raises(AdapterError, match="needs the same pretrained weights"):
        key_from_adapter(f"{SHIPPED}/proposed-encrypted", other)


def test_the_cli_writes_a_key_that_scores(tmp_path, capsys):
    DEMO_KEY.save(tmp_path / "true.json")
    out = tmp_path / "recovered.json"
    assert main(["attack", "adapter", f"{SHIPPED}/proposed-encrypted", "-o", str(out)]) == 0
    assert "as an update of the pretrained one" in capsys.readouterr().out
    assert main(["attack", "score", "--true-key", str(tmp_path / "true.json"), "--recovered", str(out), "--json"]) == 0
    assert '"positions_same_pixel": 1.0' in capsys.readouterr().out


def test_bad_adapter_commands_exit_2_with_one_line_and_write_nothing(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 40)
    foreign = tmp_path / "foreign.safetensors"
    save_file(load_file(f"{SHIPPED}/proposed-encrypted/adapter.safetensors"), foreign)  # no metadata
    existing = tmp_path / "existing.json"
    existing.write_text("keep me")
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "out.json")
    proposed = f"{SHIPPED}/proposed-encrypted"
    cases = [
        ([str(tmp_path / "missing.safetensors"), "-o", out], "not found"),
        ([str(corrupt), "-o", out], "truncated or corrupt"),
        ([str(foreign), "-o", out], "is not an encvit adapter file"),
        ([str(tmp_path / "empty"), "-o", out], "not found"),
        ([f"{SHIPPED}/proposed-plain", "-o", out], "trained on plain images"),
        ([f"{SHIPPED}/melo-encrypted", "-o", out], "holds no patch embedding"),
        ([proposed, "--scramble", "-o", out], "holds no position embedding"),
        ([proposed, "--reference", str(tmp_path / "nothere"), "-o", out], "no such file or folder"),
        ([proposed, "--reference", str(tmp_path / "empty"), "-o", out], "holds no PNG or JPEG images"),
        ([proposed, "-o", str(existing)], "exists; pass --force"),
        ([proposed, "-o", str(tmp_path)], "is a folder, not a file"),
    ]
    before = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    for argv, message in cases:
        assert main(["attack", "adapter", *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and err[0].startswith("encvit attack: error:"), (argv, err)
        assert {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")} == before, argv
