"""A user's mistake is refused in one line with exit status 2 and nothing written; the Python API refuses the same
values with the same message; a failure after work has started removes the half-written run and says so."""

import os
import signal
import subprocess
import sys
import time

import pytest
from cli_runner import run_in_process as run

import encvit.training.run
from encvit.common.errors import ConfigError
from encvit.experiments.compare import CompareConfig
from encvit.experiments.data_size import StudyConfig
from encvit.training.pretrain import PretrainConfig
from encvit.training.run import TrainConfig


def hear_ctrl_c() -> None:
    """In the child before exec: a runner started in the background of a script ignores SIGINT, and children
    inherit that; the command under test must get Ctrl-C as a terminal delivers it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


LIMIT = int(os.environ.get("ENCVIT_TEST_LIMIT", "96"))


@pytest.mark.parametrize(
    "option, value, api",
    [
        ("--epochs", "0", dict(epochs=0)),
        ("--lr", "-1", dict(lr=-1.0)),
        ("--alpha", "-1", dict(alpha=-1.0)),
        ("--warmup-epochs", "-3", dict(warmup_epochs=-3.0)),
        ("--batch-size", "0", dict(batch_size=0)),
        ("--weight-decay", "-1", dict(weight_decay=-1.0)),
        ("--label-smoothing", "2", dict(label_smoothing=2.0)),
        ("--rank", "0", dict(rank=0)),
        ("--seed", "-1", dict(seed=-1)),
        ("--limit", "0", dict(limit=0)),
        ("--image-size", "0", dict(image_size=0)),
        ("--dataset", "imagenet", dict(dataset="imagenet")),
        ("--patch-lr", "inf", dict(patch_lr=float("inf"))),
    ],
)
def test_the_command_line_and_train_config_refuse_the_same_values_with_the_same_message(tmp_path, option, value, api):
    status, err = run("train", "--method", "proposed", option, value, "--out", tmp_path / "run")
    with pytest.raises(ConfigError) as refused:
        TrainConfig(method="proposed", **api)
    assert status == 2 and err.strip() == f"encvit train: error: ConfigError: {refused.value}"
    assert str(refused.value).startswith(f"{option} must be ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: CompareConfig(seeds=0), "--seeds must be an integer >= 1, got 0"),
        (lambda: CompareConfig(methods=("melo", "melo")), "--methods must be a non-empty comma-separated list without"),
        (lambda: CompareConfig(settings=()), "--settings must be a non-empty"),
        (
            lambda: StudyConfig(sizes=(500, 0)),
            "--sizes must be a non-empty comma-separated list without repeats, each an integer >= 1, got '500,0'",
        ),
        (lambda: StudyConfig(patch_lrs=(-1e-3,)), "--patch-lrs must be a comma-separated list"),
        (lambda: StudyConfig(datasets=("fashion5k", "nowhere")), "--datasets must be"),
        (lambda: PretrainConfig(lr=0.0), "--lr must be a number > 0, got 0.0"),
        (lambda: PretrainConfig(epochs=2, warmup_epochs=5.0), "--warmup-epochs must be at most --epochs (2)"),
    ],
)
def test_every_config_dataclass_checks_its_options_when_made(make, message):
    with pytest.raises(ConfigError) as refused:
        make()
    assert str(refused.value).startswith(message), refused.value


def test_a_limit_below_one_image_per_class_is_refused_before_training(tmp_path):
    status, err = run("train", "--method", "melo", "--limit", "3", "--out", tmp_path / "run")
    assert status == 2 and "--limit 3 is below one image per class: use at least 10" in err
    assert list(tmp_path.iterdir()) == []


def test_outputs_that_cannot_be_written_are_refused_before_work(tmp_path):
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "a-folder").mkdir()
    cases = [
        ("train", "--method", "melo", "--out", tmp_path / "a-file"),
        ("train", "--method", "melo", "--out", tmp_path / "a-file" / "run"),
        ("train", "--method", "melo", "--out", tmp_path / "."),
        ("compare", "--out", tmp_path / "a-file"),
        ("keygen", "-o", tmp_path / "a-folder", "--force"),
        ("encrypt", "--key", tmp_path / "k.json", tmp_path / "x.png", "-o", tmp_path / "a-file"),
        ("pretrain", "--out", tmp_path / "a-folder"),
    ]
    for argv in cases:
        status, err = run(*argv)
        assert status == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder"]
    assert (tmp_path / "a-file").read_text() == "mine" and not any((tmp_path / "a-folder").iterdir())


@pytest.mark.parametrize(
    "failure, status, says",
    [
        (
            OSError(28, "No space left on device"),
            1,
            "encvit train: failed: OSError: [Errno 28] No space left on device",
        ),
        (RuntimeError("a bug"), 1, "encvit train: failed with an unexpected error (a bug"),
    ],
)
def test_a_failure_after_training_started_removes_the_staging_folder(tmp_path, monkeypatch, failure, status, says):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(encvit.training.run, "save_adapter", fail)  # training is done, the run half-written
    code, err = run("train", "--method", "melo", "--limit", LIMIT, "--epochs", "1", "--out", tmp_path / "run")
    assert code == status and err.strip().splitlines()[-1].startswith(says), err
    assert ("Traceback" in err) == isinstance(failure, RuntimeError)  # only a bug shows one
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    code, err = run("train", "--method", "melo", "--limit", LIMIT, "--epochs", "1", "--out", tmp_path / "run")
    assert code == 0, err  # the same command again, without --overwrite


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_or_kill_during_training_removes_the_staging_folder_and_says_so(tmp_path, stop):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "encvit.cli",
            "train",
            "--method",
            "melo",
            "--limit",
            "400",
            "--epochs",
            "50",
            "--batch-size",
            "16",
            "--out",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=hear_ctrl_c,
    )
    deadline = time.monotonic() + 600
    staged = tmp_path / "run.partial" / "metrics.csv"
    while not staged.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
    assert process.poll() is None, process.communicate()
    os.killpg(process.pid, stop)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "encvit train: interrupted; what was half-written has been removed"
    assert list(tmp_path.iterdir()) == []


def test_colour_data_on_the_grey_backbone_gets_a_one_line_note_and_the_default_stays(monkeypatch):
    import encvit.experiments.compare
    import encvit.experiments.data_size

    trained = []
    result = dict(
        method="melo",
        dataset="cfashion5k",
        setting="plain",
        key_fingerprint=None,
        test_acc=0.0,
        val_acc=0.0,
        trainable=0,
        seconds=0.0,
    )
    monkeypatch.setattr(encvit.training.run, "train", lambda config: trained.append(config) or result)
    monkeypatch.setattr(encvit.experiments.compare, "compare", lambda base, *args, **kwargs: trained.append(base))
    monkeypatch.setattr(
        encvit.experiments.data_size, "data_size_study", lambda base, *args, **kwargs: trained.append(base)
    )
    for argv, noted in [
        (("train", "--method", "melo", "--dataset", "cfashion5k"), "cfashion5k is a colour dataset"),
        (("compare", "--dataset", "cmnist5k"), "cmnist5k is a colour dataset"),
        (
            ("study", "data-size", "--datasets", "fashion5k,cfashion5k,cmnist5k"),
            "cfashion5k, cmnist5k are colour datasets",
        ),
        (("train", "--method", "melo", "--dataset", "fashion5k"), None),
        (("train", "--method", "melo", "--dataset", "cfashion5k", "--backbone", "encvit-tiny-colour"), None),
        (("train", "--method", "melo", "--dataset", "cfashion5k", "--no-pretrained"), None),
    ]:
        status, err = run(*argv)
        assert status == 0, err
        if noted is None:
            assert err == "", (argv, err)
        else:
            assert len(err.splitlines()) == 1 and err.startswith(
                f"note: {noted} and encvit-tiny was pretrained on grey images; --backbone encvit-tiny-colour"
            ), err
    assert [c.backbone for c in trained] == ["encvit-tiny"] * 4 + ["encvit-tiny-colour", "encvit-tiny"]
