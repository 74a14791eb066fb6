"""The data-size study: arms, seed-paired gaps, the patch lr chosen on validation, resuming and merging."""

import functools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

import encvit.experiments.data_size as study
import encvit.experiments.parallel as parallel
from encvit.common.errors import ConfigError
from encvit.experiments.data_size import (
    CHOSEN_ON_VAL,
    data_size_study,
    gaps,
    load_study,
    merge_studies,
    patch_lr_choices,
    with_validation_choice,
)
from encvit.training.run import TrainConfig

# A made-up accuracy per arm: the gaps a study must report are then known exactly.
BASE_ACC = {("melo", None): 70.0, ("proposed", None): 74.0, ("proposed", 0.003): 72.0, ("full", None): 71.0}


class FakeTrain:
    """Stands in for `train`: records its calls, answers from BASE_ACC plus a per-seed shift, can fail on call k."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls, self.fail_on_call = [], fail_on_call

    def __call__(self, config, splits, backbone):
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("simulated crash")
        self.calls.append((config.dataset, len(splits.train), config.seed, config.method, config.patch_lr))
        acc = BASE_ACC[(config.method, config.patch_lr)] + 0.5 * config.seed**2 + len(splits.train) / 100
        # validation prefers the patch lr 0.003 arm, the test set the default: the choice must follow validation
        val = acc + (10 if config.patch_lr == 0.003 else 0)
        return {"val_acc": val, "test_acc": acc, "seconds": 1.5}


# the datasets are read once for the whole module; the study under test only subsets them
cached_load_dataset = functools.lru_cache(maxsize=None)(study.load_dataset)


def run_study(monkeypatch, fake, out=None, seeds=3, seed=0, sizes=(20, 40), datasets=("fashion5k", "mnist5k")):
    monkeypatch.setattr(parallel, "train", fake)
    monkeypatch.setattr(study, "load_dataset", cached_load_dataset)
    return data_size_study(
        TrainConfig(progress=False, seed=seed),
        datasets=datasets,
        sizes=sizes,
        seeds=seeds,
        patch_lrs=(0.003,),
        out=out,
        log=lambda *_: None,
    )


def test_every_arm_runs_once_per_dataset_size_and_seed(monkeypatch, tmp_path):
    fake = FakeTrain()
    table = run_study(monkeypatch, fake, out=tmp_path / "s")
    assert len(table) == len(fake.calls) == 2 * 2 * 3 * 4
    assert len(set(fake.calls)) == len(fake.calls)
    assert {c[1] for c in fake.calls} == {20, 40}
    runs, summary, meta = load_study(tmp_path / "s")
    assert len(runs) == 48 and meta["seeds"] == 3 and meta["training_seconds"] == pytest.approx(48 * 1.5)
    assert re.search(
        r"\| fashion5k \| 40 \| \+1\.00 ± 0\.00( \*)? \| \+4\.00 ± 0\.00", (tmp_path / "s" / "study.md").read_text()
    )
    for name in ("gaps.csv", "accuracy.csv", "patch_lr_choices.csv"):
        assert (tmp_path / "s" / name).stat().st_size > 0
    with Image.open(tmp_path / "s" / "study.png") as plot:
        assert plot.width > plot.height  # one panel per dataset, side by side


def test_gaps_are_the_known_differences(monkeypatch):
    summary = gaps(run_study(monkeypatch, FakeTrain()))
    expected = {
        "proposed - MeLo": 4.0,
        "proposed (patch lr 0.003) - MeLo": 2.0,
        "full - MeLo": 1.0,
        f"{CHOSEN_ON_VAL} - MeLo": 2.0,
    }
    assert set(summary.gap) == set(expected)
    for gap, value in expected.items():
        part = summary[summary.gap == gap]
        assert len(part) == 4  # 2 datasets x 2 sizes
        np.testing.assert_allclose(part["mean"], value)
    assert (summary.seeds == 3).all()


def test_gaps_to_full_fine_tuning_and_an_unknown_baseline(monkeypatch):
    table = run_study(monkeypatch, FakeTrain())
    summary = gaps(table, baseline="full")
    part = summary[summary.gap == f"{CHOSEN_ON_VAL} - full"]
    assert len(part) == 4
    np.testing.assert_allclose(part["mean"], 1.0)  # chosen (2 above MeLo) minus full (1 above MeLo)
    np.testing.assert_allclose(summary[summary.gap == "melo - full"]["mean"], -1.0)
    with pytest.raises(ConfigError, match="no arm 'head'"):
        gaps(table, baseline="head")


def test_gap_interval_and_p_value_match_a_paired_t_test():
    rng = np.random.default_rng(0)
    melo, proposed = rng.normal(70, 2, 5), rng.normal(72, 2, 5)
    rows = [
        {
            "dataset": "d",
            "size": 100,
            "seed": s,
            "arm": arm,
            "method": arm,
            "patch_lr": None,
            "val_acc": 0.0,
            "test_acc": acc,
        }
        for s in range(5)
        for arm, acc in (("melo", melo[s]), ("proposed", proposed[s]))
    ]
    row = gaps(pd.DataFrame(rows)).iloc[0]
    diff = proposed - melo
    assert row["mean"] == pytest.approx(diff.mean())
    assert row["p_value"] == pytest.approx(stats.ttest_rel(proposed, melo).pvalue)
    low, high = stats.t.interval(0.95, 4, loc=diff.mean(), scale=stats.sem(diff))
    assert row["ci95"] == pytest.approx(high - diff.mean())
    assert row["supported"] == (row["p_value"] < 0.05)


def test_the_patch_lr_is_chosen_on_validation_not_test(monkeypatch):
    table = run_study(monkeypatch, FakeTrain())
    chosen = with_validation_choice(table)
    chosen = chosen[chosen.arm == CHOSEN_ON_VAL]
    assert len(chosen) == 2 * 2 * 3
    assert (chosen.patch_lr == 0.003).all()  # best on validation, second best on test
    counts = patch_lr_choices(table)
    assert (counts["0.003"] == 3).all() and "same as lr" not in counts.columns


def test_no_choice_arm_without_a_second_proposed_arm(monkeypatch):
    monkeypatch.setattr(parallel, "train", FakeTrain())
    monkeypatch.setattr(study, "load_dataset", cached_load_dataset)
    table = data_size_study(
        TrainConfig(progress=False), datasets=("mnist5k",), sizes=(20,), seeds=2, log=lambda *_: None
    )
    assert set(with_validation_choice(table).arm) == {"melo", "proposed", "full"}


def test_an_interrupted_study_resumes_without_repeating_a_run(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_study(monkeypatch, FakeTrain(fail_on_call=5), out=tmp_path / "s")
    assert len(pd.read_csv(tmp_path / "s" / "study.csv")) == 5
    assert not (tmp_path / "s" / "gaps.csv").exists()
    rest = FakeTrain()
    table = run_study(monkeypatch, rest, out=tmp_path / "s")
    assert len(rest.calls) == 48 - 5 and len(table) == 48
    assert not table.duplicated(study.RUN_KEY).any()
    assert len(load_study(tmp_path / "s")[0]) == 48


def test_resuming_refuses_a_study_of_another_backbone(monkeypatch, tmp_path):
    run_study(monkeypatch, FakeTrain(), out=tmp_path / "s", seeds=1, datasets=("mnist5k",))
    runs = pd.read_csv(tmp_path / "s" / "study.csv").assign(backbone="vit_small_patch16_224")
    runs.to_csv(tmp_path / "s" / "study.csv", index=False)
    fake = FakeTrain()
    with pytest.raises(ConfigError, match="vit_small_patch16_224"):
        run_study(monkeypatch, fake, out=tmp_path / "s", seeds=1, datasets=("mnist5k",))
    assert fake.calls == []


def test_a_size_larger_than_a_dataset_is_refused_before_any_training(monkeypatch, tmp_path):
    fake = FakeTrain()
    with pytest.raises(ConfigError, match="mnist5k has 3600 training images, fewer than 4500"):
        run_study(monkeypatch, fake, out=tmp_path / "s", sizes=(20, 4500))
    assert fake.calls == [] and not (tmp_path / "s").exists()


def test_merging_seed_pieces_gives_the_study_run_in_one_go(monkeypatch, tmp_path):
    whole = gaps(run_study(monkeypatch, FakeTrain(), seeds=3))
    for seed in range(3):
        run_study(monkeypatch, FakeTrain(), out=tmp_path / f"seed{seed}", seeds=1, seed=seed)
    merged = merge_studies([tmp_path / f"seed{s}" for s in range(3)], tmp_path / "all")
    assert len(merged) == 48
    _, summary, meta = load_study(tmp_path / "all")
    assert meta["seeds"] == 3
    key = ["dataset", "size", "gap"]
    pd.testing.assert_frame_equal(
        summary.sort_values(key).reset_index(drop=True)[["mean", "ci95", "p_value"]],
        whole.sort_values(key).reset_index(drop=True)[["mean", "ci95", "p_value"]],
    )
    with pytest.raises(ConfigError, match="share a run"):
        merge_studies([tmp_path / "seed0", tmp_path / "seed0"], tmp_path / "twice")
    assert not (tmp_path / "twice").exists()


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "encvit.cli", *map(str, args)], capture_output=True, text=True, env=env
    )


def test_the_study_script_runs_the_study_two_runs_at_a_time(tmp_path):
    import os

    env = {
        **os.environ,
        "ENCVIT_STUDY_SIZES": "30",
        "ENCVIT_STUDY_SEEDS": "2",
        "PATCH_LRS": "3e-2",
        "JOBS": "2",
        "STUDY_ARGS": "--epochs 1 --limit 40 --batch-size 16",
        "ENCVIT": f"{sys.executable} -m encvit.cli",
    }
    script = Path(__file__).parent.parent / "scripts" / "run_study.sh"
    result = subprocess.run(["bash", str(script), str(tmp_path / "s")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    runs, summary, meta = load_study(tmp_path / "s")
    assert len(runs) == 2 * 2 * 4 and set(runs["size"]) == {30} and meta["seeds"] == 2 and meta["jobs"] == 2
    assert runs.test_acc.between(0, 100).all() and len(summary) == 2 * 4  # 4 gaps per dataset
    assert "s wall time, 2 run(s) at a time" in result.stdout
    # the rows are in the order of a sequential study, whichever run finished first
    assert list(runs.dataset) == ["fashion5k"] * 8 + ["mnist5k"] * 8 and list(runs.seed[:8]) == [0] * 4 + [1] * 4


def test_study_merge_refuses_fewer_than_two_or_missing_folders(monkeypatch, tmp_path):
    run_study(monkeypatch, FakeTrain(), out=tmp_path / "s", seeds=1, datasets=("mnist5k",), sizes=(20,))
    result = cli("study", "merge", tmp_path / "s", "--out", tmp_path / "m")
    assert result.returncode == 2 and "at least two" in result.stderr and "Traceback" not in result.stderr
    result = cli("study", "merge", tmp_path / "nowhere", tmp_path / "s", "--out", tmp_path / "m")
    assert result.returncode == 2 and "holds no study results" in result.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "study.csv").write_bytes(b"\x00\xff garbage")
    result = cli("study", "merge", tmp_path / "bad", tmp_path / "s", "--out", tmp_path / "m")
    assert result.returncode == 2 and "study.csv" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()
