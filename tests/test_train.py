"""Training runs: the loss falls, evaluate reproduces the recorded accuracy, frozen parts stay frozen,
run directories are self-describing, DDP runs, and bad input is refused with a clear message."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from encvit.cipher.key import Key
from encvit.common.errors import ConfigError, KeyMismatchError
from encvit.data.datasets import load_dataset
from encvit.experiments.compare import compare, load_results
from encvit.models.backbones import create_backbone
from encvit.training.run import TrainConfig, evaluate_run, train

LIMIT = int(os.environ.get("ENCVIT_TEST_LIMIT", "96"))


def quick(**kw) -> TrainConfig:
    base = dict(dataset="fashion5k", limit=LIMIT, epochs=2, batch_size=32, progress=False)
    return TrainConfig(**{**base, **kw})


def cli(*args):
    return subprocess.run([sys.executable, "-m", "encvit.cli", *map(str, args)], capture_output=True, text=True)


def test_a_tiny_run_lowers_the_loss(tmp_path):
    result = train(quick(method="full", epochs=4, lr=1e-3, out=tmp_path / "run"))
    losses = [row["train_loss"] for row in result["metrics"]]
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("method", ["melo", "proposed"])
def test_frozen_parts_are_bit_identical_after_training(method):
    backbone = create_backbone("encvit-tiny")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    result = train(quick(method=method, passphrase="frozen"), backbone=backbone)
    after = result["model"].state_dict()
    after = {k.replace(".parametrizations.weight.original", ".weight"): v for k, v in after.items()}
    for name, tensor in before.items():
        if name.startswith("head."):
            continue
        changed = not torch.equal(after[name], tensor)
        assert changed is (method == "proposed" and name.startswith("patch_embed.proj.")), name


def test_train_then_evaluate_gives_the_recorded_accuracy(tmp_path):
    run = tmp_path / "run"
    result = train(quick(method="proposed", passphrase="secret", out=run))
    files = {p.name for p in run.iterdir()}
    assert files == {"config.json", "metrics.csv", "adapter.safetensors", "result.json", "versions.json"}
    config = json.loads((run / "config.json").read_text())
    assert "secret" not in (run / "config.json").read_text()
    assert config["derived"]["key_fingerprint"] == Key.generate(4, passphrase="secret").fingerprint
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns)[:5] == ["epoch", "train_loss", "val_acc", "test_acc", "seconds"]
    assert len(metrics) == 2
    evaluated = evaluate_run(run, passphrase="secret", limit=LIMIT)
    assert evaluated["accuracy"] == pytest.approx(result["test_acc"])
    assert evaluated["accuracy"] == pytest.approx(metrics.test_acc.iloc[-1])
    # The wrong key is refused unless asked for; then it runs and reports which keys were used.
    with pytest.raises(KeyMismatchError, match="trained with key"):
        evaluate_run(run, passphrase="another", limit=LIMIT)
    with pytest.raises(KeyMismatchError, match="plain"):
        evaluate_run(run, limit=LIMIT)
    wrong = evaluate_run(run, passphrase="another", allow_key_mismatch=True, limit=LIMIT)
    assert wrong["given_key"] != wrong["trained_key"]


def test_existing_run_directory_is_refused_unless_overwrite(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--overwrite"):
        train(quick(method="melo", out=run))
    assert [p.name for p in run.iterdir()] == ["keep.txt"]
    train(quick(method="melo", epochs=1, out=run, overwrite=True))
    assert (run / "adapter.safetensors").exists() and not (run / "keep.txt").exists()
    assert not (tmp_path / "run.partial").exists()


def test_the_patch_embedding_learns_at_its_own_rate():
    def patch_embedding_change(**kw):
        backbone = create_backbone("encvit-tiny")
        before = backbone.patch_embed.proj.weight.detach().clone()
        model = train(quick(method="proposed", passphrase="own rate", **kw), backbone=backbone)["model"]
        return (model.patch_embed.proj.weight.detach() - before).abs().max().item()

    assert patch_embedding_change(patch_lr=1e-9) < 1e-6
    assert patch_embedding_change() > 1e-4  # at the LoRA learning rate, 1e-2


@pytest.mark.parametrize(
    "method, patch_lr, message",
    [
        ("melo", 1e-3, "needs a method that trains the patch"),
        ("head", 1e-3, "needs a method that trains the patch"),
        ("proposed", 0.0, "must be a number > 0, got 0.0"),
        ("proposed", -1e-3, "must be a number > 0, got -0.001"),
    ],
)
def test_a_patch_lr_without_a_trained_patch_embedding_or_not_positive_is_refused(tmp_path, method, patch_lr, message):
    with pytest.raises(ConfigError, match="--patch-lr " + message):
        train(quick(method=method, patch_lr=patch_lr, out=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_unknown_names_are_refused():
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ConfigError, match="unknown backbone"):
        create_backbone("resnet_of_my_dreams")
    with pytest.raises(ConfigError, match="not a timm VisionTransformer"):
        create_backbone("resnet18", pretrained=False)
    with pytest.raises(ConfigError, match="--method must be one of full, melo, proposed, head, got 'lora'"):
        train(quick(method="lora"))


def test_a_key_for_another_block_size_is_refused(tmp_path):
    key_file = Key.generate(16, 3).save(tmp_path / "k16.json")
    with pytest.raises(KeyMismatchError, match=r"16x16 blocks .* 4x4"):
        train(quick(method="melo", key=str(key_file)))


def test_an_image_size_the_backbone_cannot_take_is_refused():
    with pytest.raises(ConfigError, match="takes 32x32"):
        train(quick(method="melo", image_size=30))


def write_folder(root, classes=("cat", "dog"), per_class=6, size=(20, 24)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_folder_dataset_with_a_corrupt_image_skips_it_with_a_warning(tmp_path):
    root = write_folder(tmp_path / "data")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.warns(UserWarning, match="broken.png"):
        splits = load_dataset(f"folder:{root}", image_size=32)
    assert splits.classes == ["cat", "dog"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 12
    assert tuple(splits.train.images.shape[1:]) == (3, 32, 32)


def test_folder_with_train_and_test_subfolders(tmp_path):
    write_folder(tmp_path / "d" / "train", per_class=10)
    write_folder(tmp_path / "d" / "test", per_class=3)
    splits = load_dataset(f"folder:{tmp_path / 'd'}", image_size=32)
    assert len(splits.test) == 6 and len(splits.train) + len(splits.val) == 20


def test_empty_or_missing_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class folders"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nothing'}")


def test_fashion5k_is_the_documented_holdout():
    splits = load_dataset("fashion5k")
    assert len(splits.train) + len(splits.val) == 5000 and len(splits.test) == 10000
    assert np.bincount(splits.train.labels.numpy(), minlength=10).tolist() == [450] * 10
    pretraining = load_dataset("fashion55k")
    assert len(pretraining.train) + len(pretraining.val) == 55000


def test_cli_train_and_evaluate_with_clear_errors(tmp_path):
    run = tmp_path / "run"
    result = cli("train", "--method", "melo", "--limit", LIMIT, "--epochs", 1, "--passphrase", "p", "--out", run)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    result = cli("evaluate", run, "--passphrase", "q", "--limit", LIMIT)
    assert result.returncode == 2 and "--allow-key-mismatch" in result.stderr and "Traceback" not in result.stderr
    result = cli("evaluate", run, "--passphrase", "q", "--limit", LIMIT, "--allow-key-mismatch")
    assert result.returncode == 0 and "WRONG KEY" in result.stdout
    result = cli("train", "--method", "melo", "--dataset", "nowhere", "--limit", LIMIT)
    assert result.returncode == 2 and "--dataset must be one of fashion5k" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_compare_writes_the_grid(tmp_path):
    table = compare(quick(epochs=1), out=tmp_path / "cmp", log=lambda *_: None)
    assert len(table) == 6
    runs, summary, meta = load_results(tmp_path / "cmp")
    assert set(zip(runs.method, runs.setting, strict=False)) == {
        (m, s) for m in ("full", "melo", "proposed") for s in ("plain", "encrypted")
    }
    assert (tmp_path / "cmp" / "results.png").stat().st_size > 1000
    md = (tmp_path / "cmp" / "results.md").read_text()
    assert "| melo |" in md and "plain" in md and "encrypted" in md
    full = summary[summary.method == "full"].trainable.iloc[0]
    assert summary[summary.method == "proposed"].percent_of_full.iloc[0] == pytest.approx(
        100 * summary[summary.method == "proposed"].trainable.iloc[0] / full
    )
    with pytest.raises(ConfigError, match="--overwrite"):
        compare(quick(epochs=1), out=tmp_path / "cmp")


def test_compare_patch_lr_is_the_proposed_methods(tmp_path):
    """--patch-lr in a comparison sets the proposed method's patch embedding apart; full and MeLo runs are the ones
    a comparison without it makes, so the two share their runs."""
    out = tmp_path / "recipe"
    compare(quick(epochs=1, patch_lr=3e-3), settings=("plain",), out=out, log=lambda *_: None)
    patch_lrs = {
        m: json.loads((out / f"{m}-plain" / "config.json").read_text())["patch_lr"]
        for m in ("full", "melo", "proposed")
    }
    assert patch_lrs == {"full": None, "melo": None, "proposed": 3e-3}
    assert "proposed's patch embedding at learning rate 0.003" in (out / "results.md").read_text()
    with pytest.raises(ConfigError, match="--methods melo,full has no proposed"):
        compare(quick(epochs=1, patch_lr=3e-3), methods=("melo", "full"), out=tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_training_under_torchrun_with_two_processes(tmp_path):
    run = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            "-m",
            "encvit.cli",
            "train",
            "--method",
            "melo",
            "--limit",
            "64",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--out",
            str(run),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "adapter.safetensors").exists()
    assert json.loads((run / "result.json").read_text())["train_images"] > 0
