"""Features from anywhere: `encvit features`, `encvit fhe-train --features F.npz` on any width, the checks a
features file gets before any key is made, and the client's projection (--components)."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from encvit.cli import main
from encvit.fhe.components import candidates, choose
from encvit.fhe.config import FHEConfig
from encvit.fhe.features import read_features_file, sha256_of
from encvit.fhe.head import FeatureScaler, FeatureSplits
from encvit.fhe.train import train_reference


def blobs(dim=12, classes=3, n=(60, 24, 24), seed=0) -> dict:
    """Arrays of a features file: Gaussian blobs, learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2
    arrays = {}
    for split, size in zip(("train", "val", "test"), n, strict=False):
        y = np.arange(size) % classes
        arrays[f"{split}_x"] = (centres[y] + rng.normal(size=(size, dim))).astype(np.float32)
        arrays[f"{split}_y"] = y.astype(np.int64)
    return arrays


def run(*argv) -> int:
    return main([str(a) for a in argv])


ARGS = ["--epochs", "2", "--batch-size", "16", "--lr", "2", "--no-progress"]


def test_fhe_train_on_a_features_file_writes_the_head_of_the_numpy_twin(tmp_path, capsys):
    path = tmp_path / "f.npz"
    np.savez(path, **blobs(), classes=np.array(["a", "b", "c"]))
    out = tmp_path / "run"
    assert run("fhe-train", "--features", path, "--components", "all", *ARGS, "--out", out) == 0
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "metrics.csv",
        "head.safetensors",
        "fhe.json",
        "result.json",
    }  # no backbone adapter: there is no backbone
    config, result = (json.loads((out / name).read_text()) for name in ("config.json", "result.json"))
    assert config["derived"]["backbone_adapter"] is None and result["backbone_adapter"] is None
    assert config["derived"]["features_sha256"] == sha256_of(path) and config["features"] == str(path)
    assert result["features_sha256"] == sha256_of(path) and result["features_file"] == str(path)
    assert result["machine_at_end"]["cores"] >= 1 and len(result["machine_at_end"]["load_avg"]) == 3
    assert result["feature_dim"] == 12 and config["derived"]["classes"] == ["a", "b", "c"]
    # The decrypted head, folded onto the file's raw features, is the numpy twin's up to CKKS noise.
    features = read_features_file(path)
    twin = train_reference(features, FHEConfig(features=str(path), epochs=2, batch_size=16, lr=2.0, components="all"))
    weight, bias = twin.raw_head()
    head = load_file(out / "head.safetensors")
    np.testing.assert_allclose(head["head.weight"], weight, atol=1e-3)
    np.testing.assert_allclose(head["head.bias"], bias, atol=1e-3)
    logits = features.test[0] @ head["head.weight"].T + head["head.bias"]
    assert 100 * np.mean(logits.argmax(1) == features.test[1]) == pytest.approx(result["encrypted_test_acc"])
    assert "features file" in capsys.readouterr().out.strip().splitlines()[-1]


def test_encvit_features_writes_a_file_that_fhe_train_reads(tmp_path):
    out = tmp_path / "mnist.npz"
    assert run("features", "--dataset", "mnist5k", "--limit", "30", "--out", out) == 0
    features = read_features_file(out)
    assert features.dim == 96 and features.backbone == "encvit-tiny" and len(features.classes) == 10
    assert len(features.train[1]) == len(features.val[1]) == len(features.test[1]) == 30
    assert run("features", "--dataset", "mnist5k", "--limit", "30", "--out", out) == 2  # exists: --overwrite


def _write(path, arrays):
    np.savez(path, **arrays)
    return path


def _bad(kind: str, tmp_path):
    a = blobs()
    if kind == "missing":
        del a["val_y"]
    elif kind == "width":
        a["test_x"] = a["test_x"][:, :5]
    elif kind == "nan":
        a["train_x"][3, 2] = np.nan
    elif kind == "inf":
        a["val_x"][0, 0] = np.inf
    elif kind == "outside":
        a["test_y"][0] = 7
        a["classes"] = np.array(["a", "b", "c"])
    elif kind == "negative":
        a["val_y"][1] = -1
    elif kind == "absent":
        a["train_y"][a["train_y"] == 1] = 0
        a["classes"] = np.array(["a", "b", "c"])
    elif kind == "empty":
        a["val_x"], a["val_y"] = a["val_x"][:0], a["val_y"][:0]
    elif kind == "object":
        np.save(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        import zipfile

        with zipfile.ZipFile(tmp_path / "f.npz", "w") as archive:
            for name, array in a.items():
                if name == "train_x":  # replaced by the object array below
                    continue
                with archive.open(f"{name}.npy", "w") as handle:
                    np.lib.format.write_array(handle, array)
            archive.write(tmp_path / "x.npy", "train_x.npy")
        return tmp_path / "f.npz"
    elif kind == "float_labels":
        a["train_y"] = a["train_y"].astype(float)
    elif kind == "int_features":
        a["train_x"] = a["train_x"].astype(np.int64)
    elif kind == "not_npz":
        (tmp_path / "f.npz").write_text("train_x,train_y\n1,2\n")
        return tmp_path / "f.npz"
    elif kind == "npy":
        np.save(tmp_path / "f.npy", a["train_x"])
        return tmp_path / "f.npy"
    return _write(tmp_path / "f.npz", a)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "has no val_y"),
        ("width", "test_x has 5 features but train_x has 12"),
        ("nan", "train_x holds 1 NaN or infinite"),
        ("inf", "val_x holds 1 NaN or infinite"),
        ("outside", "test_y holds labels outside 0..2"),
        ("negative", "val_y holds labels outside 0..2"),
        ("absent", "class(es) [1] never occur in train_y"),
        ("empty", "the val split is empty"),
        ("object", "pickled or object array"),
        ("float_labels", "train_y must be a 1-D integer array"),
        ("int_features", "train_x must be a 2-D float array"),
        ("not_npz", "is not an .npz archive"),
        ("npy", "is not an .npz archive"),
    ],
)
def test_a_bad_features_file_is_refused_in_one_line_before_any_key_is_made(
    kind, message, tmp_path, capsys, monkeypatch
):
    import encvit.fhe.train as trainer

    path = _bad(kind, tmp_path)
    monkeypatch.setattr(trainer, "Client", lambda *a, **k: pytest.fail("a key was made"))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run("fhe-train", "--features", path, "--out", tmp_path / "run", "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and str(path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_fhe_train_refuses_limit_with_a_features_file(tmp_path, capsys):
    path = _write(tmp_path / "f.npz", blobs())
    assert run("fhe-train", "--features", path, "--limit", "10", "--no-progress") == 2
    assert "--limit" in capsys.readouterr().err


def test_pca_components_keep_the_leading_directions_whitened_and_fold_back():
    rng = np.random.default_rng(5)
    raw = rng.normal(size=(400, 8)) @ np.diag([5, 4, 3, 2, 1, 0.5, 0.2, 0.1]) @ np.linalg.qr(rng.normal(size=(8, 8)))[0]
    scaler = FeatureScaler.fit(raw, whiten_ridge=1e-9, components=3)
    scaled = scaler.transform(raw)
    assert scaled.shape == (400, 4) and scaler.dim == 3
    np.testing.assert_allclose(np.cov(scaled[:, :3] / scaler.factor, rowvar=False, bias=True), np.eye(3), atol=1e-6)
    weights = rng.normal(size=(2, 4))
    w, b = scaler.fold(weights)
    np.testing.assert_allclose(raw @ w.T + b, scaled @ weights.T, atol=1e-9)


def test_auto_components_choose_on_validation_only_the_smallest_that_keeps_its_accuracy():
    # 40 features of which only the first 5 directions carry the classes: a few components suffice.
    rng = np.random.default_rng(0)
    signal = blobs(dim=5, classes=4, n=(400, 200, 200))
    mixing = np.linalg.qr(rng.normal(size=(40, 40)))[0][:5]
    splits = []
    for split in ("train", "val", "test"):
        x = signal[f"{split}_x"] @ mixing * 4 + 0.3 * rng.normal(size=(len(signal[f"{split}_y"]), 40))
        splits.append((x.astype(np.float32), signal[f"{split}_y"]))
    features = FeatureSplits(*splits, classes=list("abcd"), backbone="", backbone_hash="", dataset="blobs")
    config = FHEConfig(epochs=20, batch_size=64, components="auto")
    assert candidates(40) == ["16", "32", "all"]
    chosen, rows = choose(features, config)
    assert [r["components"] for r in rows] == ["16", "32", "all"]
    best = max(r["val_acc"] for r in rows)
    assert chosen == next(r["components"] for r in rows if r["val_acc"] >= best - 0.5)
    # the test split was never looked at: a different test split gives the same choice
    other = FeatureSplits(
        features.train,
        features.val,
        (features.test[0][::-1], features.test[1][::-1]),
        features.classes,
        "",
        "",
        "blobs",
    )
    assert choose(other, config)[0] == chosen
