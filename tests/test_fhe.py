"""BlindTuner on CKKS: roles, packed products, encrypted = plaintext training with the same early-stopping
decisions, refreshes, whitening, the full-precision reference, the CLI and its refusals.

Small sizes (a few dozen samples, a few features): the whole file takes well under two minutes.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from tenseal import sealapi

from encvit.cli import main
from encvit.common.errors import ConfigError
from encvit.data.datasets import load_dataset
from encvit.fhe import ckks, packing, products
from encvit.fhe.client import Client
from encvit.fhe.config import FHEConfig
from encvit.fhe.head import EarlyStopping, FeatureScaler, FeatureSplits, learning_rate, momentum_ratio
from encvit.fhe.ops import Engine, LevelError
from encvit.fhe.params import LEVELS_PER_ITERATION
from encvit.fhe.plain import TrainingDiverged
from encvit.fhe.reference import logistic_reference
from encvit.fhe.softmax import PolySoftmax
from encvit.fhe.train import train_encrypted, train_reference
from encvit.models.adapters import load_classifier

# Encrypted weights must equal the numpy trainer's to this absolute tolerance (CKKS noise is ~1e-6 here).
WEIGHT_TOLERANCE = 1e-4


def synthetic(num_classes=3, dim=6, n=80, seed=0) -> FeatureSplits:
    """Gaussian blobs: linearly separable enough that both trainers learn, small enough to be quick."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim)) * 2

    def split(m):
        y = rng.integers(0, num_classes, m)
        return (centres[y] + rng.normal(size=(m, dim))).astype(np.float32), y

    return FeatureSplits(
        split(n), split(30), split(30), [f"c{i}" for i in range(num_classes)], "synthetic", "0", "synthetic"
    )


@pytest.fixture(scope="module")
def small_client():
    """A client at ring degree 8192 (two levels: enough for one packed product)."""
    params = ckks.get_params("n8192-l2")
    return Client(params, packing.choose_layout(params.slots, 13, 10, 64))


@pytest.fixture(scope="module")
def dense():
    """A client and a server engine for a layout with every part in play: 200 features (padded to 256, 8 offsets:
    4 baby steps x 2 giant steps), 5 classes (the last pair has no imaginary class), a partly filled block."""
    params = ckks.get_params(ckks.DEFAULT_PRESET)
    layout = packing.choose_layout(params.slots, 200, 5, 256)
    client = Client(params, layout)
    context, keys = ckks.load_public(client.public_bytes())
    return client, Engine(context, keys), context


@pytest.fixture(scope="module")
def runs():
    """The encrypted and the numpy trainer on the same synthetic problem, hyperparameters and stopping rule.

    With patience 1 the client stops at the first epoch whose validation loss does not improve (epoch 3 here).
    """
    features = synthetic()
    config = FHEConfig(
        epochs=6, patience=1, batch_size=16, lr=2.0, momentum=0.9, lr_schedule="cosine", components="all"
    )
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


def test_the_layout_packs_every_feature_of_every_sample_once():
    layout = packing.choose_layout(8192, 200, 5, 256)
    assert (layout.block, layout.phases, layout.width, layout.offsets, layout.baby, layout.giant) == (
        256,
        32,
        256,
        8,
        4,
        2,
    )
    x = np.arange(1, 1 + 256 * 200, dtype=float).reshape(256, 200)  # every entry distinct and non-zero
    for vectors in (packing.forward_data(layout, x) / packing.FORWARD_SCALE, packing.gradient_data(layout, x)):
        values = np.sort(vectors[vectors != 0])
        np.testing.assert_array_equal(values, x.ravel())  # dense: each entry exactly once, nothing replicated
    w = np.arange(1, 1 + 5 * 200, dtype=float).reshape(5, 200)
    np.testing.assert_array_equal(packing.read_weights(layout, packing.update_weights(layout, w)), w)
    assert packing.update_weights(layout, w).shape == (layout.pairs, 8192) and layout.pairs == 3


def test_packed_products_equal_numpy_products(dense):
    client, engine, context = dense
    layout = client.layout
    rng = np.random.default_rng(1)
    n = layout.block - 56  # a partly filled block
    x = rng.normal(size=(n, layout.num_features)) / 10
    w = rng.normal(size=(layout.num_classes, layout.num_features)) / 2
    y = np.eye(layout.num_classes)[rng.integers(0, layout.num_classes, n)]

    def load(data):
        return [ckks.ciphertext_from_bytes(context, d) for d in data]

    block = client.encrypt_block(x, y)
    logits = products.forward(engine, layout, [load(block["forward"])], load(client.encrypt_weights(w)["forward"]))[0]
    got = client.decrypt_logits([[ckks.saved_bytes(z) for z in logits]], n)
    np.testing.assert_allclose(got, x @ w.T, atol=1e-5)
    poly, factor = PolySoftmax.fit(layout.num_classes, 4.0), 1e-3
    errors = products.errors(engine, layout, logits, load(block["labels"]), poly, factor, client.params.scale)
    want = factor * (poly(x @ w.T) - y)
    slots = np.stack([client.decrypt(ckks.saved_bytes(e)) for e in errors])
    np.testing.assert_allclose(packing.read_logits(layout, slots, n) * packing.FORWARD_SCALE, want, atol=1e-6)
    assert np.abs(slots.imag[-1]).max() < 1e-6  # the padding class of the last pair stays zero
    grads = products.gradient(engine, layout, [load(block["gradient"])], [errors])
    got = client.decrypt_weights([ckks.saved_bytes(g) for g in grads])
    np.testing.assert_allclose(got, want.T @ x, atol=1e-6)
    assert engine.level(grads[0]) == 0  # five levels, as LEVELS_PER_ITERATION says
    assert LEVELS_PER_ITERATION == client.params.levels == 5
    # Rotations do not grow with the samples: per pair, the forward's U1 - 1 baby and U2 - 1 giant steps and
    # log2 A phases; the spread and the gradient's steps; the gradient's log2(S / m) feature sums.
    a, u1, u2 = layout.phases, layout.baby, layout.giant
    per_pair = (u1 - 1 + u2 - 1 + np.log2(a)) + np.log2(a) + (u1 - 1 + u2 - 1 + np.log2(8192 // layout.width))
    assert engine.counts["rotate"] == layout.pairs * per_pair and engine.counts["conjugate"] == layout.pairs


def test_encrypted_training_matches_plaintext_training_and_its_decisions(runs):
    encrypted, reference = runs
    assert np.abs(encrypted.weights - reference.weights).max() < WEIGHT_TOLERANCE
    assert np.abs(reference.weights).max() > 0.1  # the trainers did learn something to compare
    assert len(encrypted.rows) == len(reference.rows) == 3  # both stopped after the same epoch
    for enc, ref in zip(encrypted.rows, reference.rows, strict=False):
        assert enc["val_acc"] == ref["val_acc"] and enc["test_acc"] == ref["test_acc"] and enc["best"] == ref["best"]
        assert abs(enc["val_loss"] - ref["val_loss"]) < 1e-4 and abs(enc["train_loss"] - ref["train_loss"]) < 1e-4
    assert encrypted.best_epoch == reference.best_epoch == 2 and reference.best["val_acc"] > 80


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    rule = EarlyStopping(patience=2)
    decisions = [
        rule.update(epoch, {"val_loss": loss, "val_acc": 0.0})
        for epoch, loss in enumerate([0.9, 0.5, 0.5, 0.7, 0.4, 0.6, 0.8], start=1)
    ]
    # A tie is no improvement; two epochs without one stop the run.
    assert decisions == [
        (True, False),
        (True, False),
        (False, False),
        (False, True),
        (True, False),
        (False, False),
        (False, True),
    ]
    assert rule.best_epoch == 5 and rule.best_value == 0.4
    by_accuracy = EarlyStopping(patience=1, metric="val_acc")
    assert by_accuracy.update(1, {"val_acc": 50.0}) == (True, False)
    assert by_accuracy.update(2, {"val_acc": 40.0}) == (False, True)


def test_the_client_decides_on_encrypted_validation_logits_one_iteration_late(runs):
    encrypted, _ = runs
    stats = encrypted.stats
    assert stats["stopped_early"] and stats["epochs_run"] == 3 and stats["best_epoch"] == 2
    # The verdict on epoch 3 rides on the refresh before epoch 4's second step: one iteration ran in vain.
    per_epoch = 80 // 16
    assert stats["iterations"] == 3 * per_epoch + 1 and stats["iterations_after_last_validated_epoch"] == 1
    sent = stats["bytes"]
    assert sent["server_to_client"]["validation_logits"] > 0 and sent["client_to_server"]["validation_features"] > 0
    assert sent["client_to_server"]["decision"] == stats["refreshes"] + 1  # one byte per exchange, the last: stop
    assert stats["timings"]["server_validation_seconds"] > 0


def test_refresh_is_triggered_and_counted(runs):
    stats = runs[0].stats
    # Five levels per iteration and five in the parameters: every iteration after the first needs a refresh.
    assert ckks.get_params(stats["preset"]).levels == LEVELS_PER_ITERATION
    assert stats["refreshes"] == stats["iterations"] - 1
    assert stats["timings"]["refresh_seconds"] > 0
    assert stats["bytes"]["server_to_client"]["refresh"] > 0 and stats["bytes"]["client_to_server"]["refresh"] > 0


def test_learning_rate_schedules():
    assert learning_rate(4.0, "constant", 7, 10) == 4.0
    assert [learning_rate(4.0, "cosine", i, 4) for i in range(5)] == pytest.approx(
        [4.0, 3.414, 2.0, 0.586, 0.0], abs=1e-3
    )
    with pytest.raises(ConfigError, match="schedule"):
        learning_rate(4.0, "step", 0, 4)


def test_whitened_features_are_uncorrelated_and_fold_back_onto_raw_features():
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(500, 5)) @ rng.normal(size=(5, 5)) * 3 + 7  # correlated, shifted, scaled
    scaler = FeatureScaler.fit(raw, whiten_ridge=1e-9)
    scaled = scaler.transform(raw)[:, :-1] / scaler.factor
    np.testing.assert_allclose(np.cov(scaled, rowvar=False, bias=True), np.eye(5), atol=1e-6)
    weights = rng.normal(size=(3, 6))
    w, b = scaler.fold(weights)
    np.testing.assert_allclose(raw @ w.T + b, scaler.transform(raw) @ weights.T, atol=1e-9)


def test_the_reference_chooses_c_on_validation_and_reports_its_test_accuracy():
    from sklearn.linear_model import LogisticRegression

    features = synthetic(num_classes=4, dim=5, n=120, seed=4)
    result = logistic_reference(features, grid=(1e-3, 1.0))
    # C=1e-3 barely fits these blobs; C=1 separates them, and validation says so.
    assert result["val_acc_per_C"][1.0] > result["val_acc_per_C"][1e-3] and result["C"] == 1.0
    scaled = [
        (x - features.train[0].mean(0)) / features.train[0].std(0) / np.sqrt(5)
        for x in (features.train[0], features.test[0])
    ]
    direct = LogisticRegression(C=1.0, max_iter=10000, tol=1e-6).fit(scaled[0], features.train[1])
    assert result["test_acc"] == pytest.approx(100 * direct.score(scaled[1], features.test[1]))
    assert result["converged"] and result["test_acc"] > 80


def test_diverging_weights_stop_with_a_clear_error():
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        train_reference(synthetic(), FHEConfig(epochs=3, batch_size=16, lr=900.0, components="all"))


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
    args = [
        "fhe-train",
        "--dataset",
        "mnist5k",
        "--limit",
        "40",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "metrics.csv",
        "adapter.safetensors",
        "fhe.json",
        "result.json",
    }
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns[:7]) == ["epoch", "val_acc", "val_loss", "best", "seconds", "train_loss", "test_acc"]
    fhe = json.loads((out / "fhe.json").read_text())
    assert fhe["ckks"]["security_bits"] == 128 and fhe["bytes"]["client_to_server"]["total"] > 0
    result = json.loads((out / "result.json").read_text())
    assert result["difference"] == pytest.approx(result["encrypted_test_acc"] - result["reference_test_acc"])
    assert result["refreshes"] >= 1 and result["wall_seconds"] > 0 and result["megabytes_to_server"] > 0
    # The last line says the three numbers that matter.
    assert f"test accuracy {result['encrypted_test_acc']:.2f}%" in last
    assert f"reference {result['reference_test_acc']:.2f}%" in last and f"{result['difference']:+.2f} points" in last
    model, info = load_classifier(out / "adapter.safetensors")
    assert info.method == "head" and set(dict(model.named_parameters())) >= {"head.weight", "head.bias"}
    # The saved head, on raw backbone features, reproduces the decrypted head's test accuracy.
    from encvit.models.preprocess import BatchPreprocess

    test = load_dataset("mnist5k", limit=40).test
    with torch.no_grad():
        predicted = model(BatchPreprocess(info.image_size, info.channels)(test.images)).argmax(1)
    assert 100.0 * (predicted == test.labels).float().mean().item() == pytest.approx(result["encrypted_test_acc"])
    assert main(args) == 2  # an existing run directory is refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "no-such-set"], "--dataset must be one of"),
        (["--batch-size", "100000"], "slots"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--momentum", "0.123"], "momentum"),
        (["--momentum", "nan"], "--momentum must be a number in [0, 1)"),
        (["--lr", "0"], "--lr must be a number in (0, 1000]"),
        (["--lr", "inf"], "--lr must be a number in (0, 1000]"),
        (["--epochs", str(2**63)], "--epochs must be an integer from 1 to 1000"),
        (["--patience", "0"], "--patience must be an integer from 1 to 1000"),
        (["--seed", "-1"], "--seed must be an integer from 0"),
        (["--seed", "-1", "--limit", "100", "--epochs", "1"], "--seed must be an integer from 0"),
        (["--softmax-radius", "1e999"], "--softmax-radius must be a number in [0.5, 64]"),
        (["--softmax-radius", "0"], "--softmax-radius must be a number in [0.5, 64]"),
        (["--softmax-radius", "-4"], "--softmax-radius must be a number in [0.5, 64]"),
        (["--softmax-radius", "nan"], "--softmax-radius must be a number in [0.5, 64]"),
        (["--whiten-ridge", "-1"], "--whiten-ridge must be a number in (0, 1e+06]"),
        (["--limit", "0"], "--limit must be an integer >= 1"),
        (["--limit", "3"], "--limit must be at least the 10 classes of fashion5k"),
        (["--dataset", "mnist5k", "--limit", "9"], "--limit must be at least the 10 classes of mnist5k"),
        (["--out", "file.txt"], "--out file.txt is a file, not a folder"),
    ],
)
def test_bad_input_is_refused_in_one_line_before_any_work(extra, message, tmp_path, capsys, monkeypatch):
    import encvit.fhe.pipeline as pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("not a folder")
    monkeypatch.setattr(pipeline, "create_backbone", lambda *a, **k: pytest.fail("work started"))
    out = [] if "--out" in extra else ["--out", "r"]
    assert main(["fhe-train", "--limit", "40", "--no-progress", *out, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_the_python_api_refuses_what_the_command_line_refuses(tmp_path):
    for bad in (
        {"seed": -1},
        {"softmax_radius": 0.0},
        {"softmax_radius": float("nan")},
        {"lr": float("inf")},
        {"limit": 9},
    ):
        with pytest.raises(ConfigError, match="--" + next(iter(bad)).replace("_", "-")):
            FHEConfig(**bad)
    for name in "abc":
        (tmp_path / name).mkdir()
    with pytest.raises(ConfigError, match="at least the 3 classes"):
        FHEConfig(dataset=f"folder:{tmp_path}", limit=2)
    assert FHEConfig(dataset=f"folder:{tmp_path}", limit=3).limit == 3


def test_splits_that_cannot_train_or_score_a_head_are_refused():
    from encvit.fhe.features import check_splits

    features = synthetic()
    check_splits(features)
    features.val = (features.val[0][:0], features.val[1][:0])
    with pytest.raises(ConfigError, match="no val images with --limit 5"):
        check_splits(features, limit=5)
    one_class = synthetic()
    one_class.train = (one_class.train[0], np.zeros_like(one_class.train[1]))
    with pytest.raises(ConfigError, match="fewer than two classes"):
        check_splits(one_class)


def test_bad_values_raise_config_errors():
    with pytest.raises(ConfigError, match="slots"):
        packing.choose_layout(8192, 97, 10, 10000)
    with pytest.raises(ConfigError, match="--components"):
        packing.choose_layout(8192, 9000, 10, 1024)
    with pytest.raises(ConfigError, match="denominator"):
        momentum_ratio(0.123)
    with pytest.raises(ConfigError, match="unknown CKKS preset"):
        ckks.get_params("n2-l1")
    with pytest.raises(ConfigError, match="ciphertext"):
        ckks.ciphertext_from_bytes(ckks.new_context(ckks.get_params("n8192-l2")), b"not a ciphertext")
