"""BlindTuner on CKKS: roles, packed products, encrypted = plaintext training, refreshes, CLI, errors.

Small sizes (a few dozen samples, a few features): the whole file takes well under two minutes.
"""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from tenseal import sealapi

from encvit.adapters import load_classifier
from encvit.cli import main
from encvit.data import load_dataset
from encvit.errors import ConfigError
from encvit.fhe import ckks, packing
from encvit.fhe.client import Client
from encvit.fhe.head import FeatureSplits, momentum_ratio
from encvit.fhe.ops import Engine, LevelError
from encvit.fhe.server import LEVELS_PER_ITERATION
from encvit.fhe.softmax import PolySoftmax
from encvit.fhe.train import FHEConfig, train_encrypted, train_reference

# Encrypted weights must equal the numpy trainer's to this absolute tolerance (CKKS noise is ~1e-6 here).
WEIGHT_TOLERANCE = 1e-4


def synthetic(num_classes=3, dim=6, n=80, seed=0) -> FeatureSplits:
    """Gaussian blobs: linearly separable enough that both trainers learn, small enough to be quick."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim)) * 2

    def split(m):
        y = rng.integers(0, num_classes, m)
        return (centres[y] + rng.normal(size=(m, dim))).astype(np.float32), y

    return FeatureSplits(split(n), split(30), split(30), [f"c{i}" for i in range(num_classes)], "synthetic", "0",
                         "synthetic")


@pytest.fixture(scope="module")
def small_client():
    """A client at ring degree 8192 (two levels: enough for one packed product)."""
    params = ckks.get_params("n8192-l2")
    return Client(params, packing.choose_layout(params.slots, 13, 10, 64))


@pytest.fixture(scope="module")
def runs():
    """The encrypted and the numpy trainer on the same synthetic problem and hyperparameters."""
    features = synthetic()
    config = FHEConfig(epochs=2, batch_size=16, lr=2.0, momentum=0.9)
    return train_encrypted(features, config, progress=False), train_reference(features, config)


def test_server_context_has_no_secret_key_and_cannot_decrypt(small_client):
    values = np.linspace(-1, 1, small_client.params.slots)
    data = small_client.encrypt(values)
    context, _ = ckks.load_public(small_client.public_bytes())
    assert small_client.context.has_secret_key() and not context.has_secret_key()
    ct = ckks.ciphertext_from_bytes(context, data)  # the server can read the ciphertext...
    with pytest.raises(ckks.SecretKeyError, match="(?i)secret key"):  # ...but not decrypt it
        sealapi.Decryptor(context.seal_context().data, ckks.secret_key(context))
    assert ct.parms_id() == Engine(context).seal.first_parms_id()
    np.testing.assert_allclose(small_client.decrypt(data), values, atol=1e-6)  # the client can


def test_packed_products_equal_numpy_products(small_client):
    rng = np.random.default_rng(1)
    layout, client = small_client.layout, small_client
    context, keys = ckks.load_public(client.public_bytes())
    engine = Engine(context, keys)
    m = layout.block - 3  # a partly filled block
    x = rng.normal(size=(m, layout.num_features))
    w = rng.normal(size=(layout.num_classes, layout.num_features))
    e = rng.normal(size=(m, layout.num_classes))
    weights = [ckks.ciphertext_from_bytes(context, d) for d in client.encrypt_weights(w)]
    features = [ckks.ciphertext_from_bytes(context, client.encrypt(v)) for v in packing.pack_features(layout, x)]
    logits = packing.packed_logits(engine, layout, features, weights)
    got = packing.unpack_logits(layout, client.decrypt(ckks.saved_bytes(logits)), m)
    np.testing.assert_allclose(got, x @ w.T, atol=1e-5)
    errors = ckks.ciphertext_from_bytes(context, client.encrypt(packing.pack_labels(layout, e)))
    grads = packing.packed_gradient(engine, layout, [errors], [features])
    got = client.decrypt_weights([ckks.saved_bytes(g) for g in grads])
    np.testing.assert_allclose(got, e.T @ x, atol=1e-5)
    # log2 F rotations for the logits, log2 n per feature group for the gradient: nothing per sample.
    assert engine.counts["rotate"] == np.log2(layout.group) + layout.groups * np.log2(layout.block)


def test_encrypted_training_matches_plaintext_training(runs):
    encrypted, reference = runs
    assert np.abs(encrypted.weights - reference.weights).max() < WEIGHT_TOLERANCE
    assert np.abs(reference.weights).max() > 0.1  # the trainers did learn something to compare
    for enc, ref in zip(encrypted.rows, reference.rows):
        assert enc["val_acc"] == ref["val_acc"] and enc["test_acc"] == ref["test_acc"]
        assert abs(enc["train_loss"] - ref["train_loss"]) < 1e-4
    assert reference.rows[-1]["val_acc"] > 80


def test_refresh_is_triggered_and_counted(runs):
    stats = runs[0].stats
    # Six levels per iteration and six in the parameters: every iteration after the first needs a refresh.
    assert ckks.get_params(stats["preset"]).levels == LEVELS_PER_ITERATION
    assert stats["refreshes"] == stats["iterations"] - 1 == sum(r["refreshes"] for r in runs[0].rows)
    assert stats["refresh_seconds"] > 0
    assert stats["bytes"]["server_to_client"]["refresh"] > 0 and stats["bytes"]["client_to_server"]["refresh"] > 0


def test_an_exhausted_ciphertext_cannot_be_multiplied(small_client):
    context, keys = ckks.load_public(small_client.public_bytes())
    engine = Engine(context, keys)
    ct = ckks.ciphertext_from_bytes(context, small_client.encrypt(np.ones(small_client.params.slots)))
    for _ in range(small_client.params.levels):
        ct = engine.multiply_plain(ct, 1.0)
    with pytest.raises(LevelError, match="refresh"):
        engine.multiply_plain(ct, 1.0)


def test_polynomial_softmax_sums_to_one_and_is_convex():
    poly = PolySoftmax.fit(10)
    z = np.random.default_rng(2).uniform(-2, 2, size=(100, 10))
    z -= z.mean(1, keepdims=True)
    np.testing.assert_allclose(poly(z).sum(1), 1.0)
    assert poly.convex and poly.max_error() < 0.2
    assert PolySoftmax.fit(10, 6.0).convex  # the constrained fit stays convex on a wide range


def test_cli_writes_a_run_whose_adapter_loads(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["fhe-train", "--dataset", "mnist5k", "--limit", "40", "--epochs", "1", "--batch-size", "16", "--lr", "2",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "128-bit security" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.csv", "adapter.safetensors", "fhe.json"}
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns[:7]) == ["epoch", "train_loss", "val_acc", "test_acc", "seconds", "refreshes",
                                         "refresh_seconds"]
    fhe = json.loads((out / "fhe.json").read_text())
    assert fhe["ckks"]["security_bits"] == 128 and fhe["bytes"]["client_to_server"]["total"] > 0
    model, info = load_classifier(out / "adapter.safetensors")
    assert info.method == "head" and set(dict(model.named_parameters())) >= {"head.weight", "head.bias"}
    # The saved head, on raw backbone features, reproduces the decrypted head's test accuracy.
    from encvit.preprocess import BatchPreprocess

    test = load_dataset("mnist5k", limit=40).test
    with torch.no_grad():
        predicted = model(BatchPreprocess(info.image_size, info.channels)(test.images)).argmax(1)
    assert 100.0 * (predicted == test.labels).float().mean().item() == pytest.approx(metrics["test_acc"].iloc[-1])
    assert main(args) == 2  # an existing run directory is refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "no-such-set"], "unknown dataset"),
    (["--batch-size", "100000"], "slots"),
    (["--momentum", "0.123"], "momentum"),
    (["--lr", "0"], "lr must be positive"),
])
def test_bad_input_gets_a_clear_error(extra, message, tmp_path, capsys):
    assert main(["fhe-train", "--limit", "8", "--out", str(tmp_path / "r"), "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err


def test_bad_values_raise_config_errors():
    with pytest.raises(ConfigError, match="slots"):
        packing.choose_layout(8192, 97, 10, 10000)
    with pytest.raises(ConfigError, match="denominator"):
        momentum_ratio(0.123)
    with pytest.raises(ConfigError, match="unknown CKKS preset"):
        ckks.get_params("n2-l1")
    with pytest.raises(ConfigError, match="ciphertext"):
        ckks.ciphertext_from_bytes(ckks.new_context(ckks.get_params("n8192-l2")), b"not a ciphertext")
