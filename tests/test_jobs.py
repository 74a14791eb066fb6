"""`--jobs N`: compare and the study run in N worker processes with the cores split between them, and give the
numbers that running the same runs one after another gives (with the same threads per run)."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from encvit.common.errors import ConfigError
from encvit.experiments.compare import compare
from encvit.experiments.data_size import data_size_study
from encvit.experiments.parallel import cpu_cores, threads_per_job
from encvit.training.run import TrainConfig


def hear_ctrl_c() -> None:
    """In the child before exec: a runner started in the background of a script ignores SIGINT, and children
    inherit that; the command under test must get Ctrl-C as a terminal delivers it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


LIMIT = int(os.environ.get("ENCVIT_TEST_LIMIT", "96"))
RESULTS = ["run", "method", "setting", "seed", "val_acc", "test_acc", "trainable", "train_images"]


def toy(**kw) -> TrainConfig:
    return TrainConfig(**{"limit": LIMIT, "epochs": 1, "batch_size": 32, "progress": False, **kw})


@pytest.fixture
def threads_of_a_worker():
    """This process set to the threads each of 2 workers gets: the sequential reference computes as they do."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads_per_job(2))
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(cpu_cores() < 2, reason="--jobs 2 needs 2 CPU cores")
def test_compare_with_two_jobs_gives_the_sequential_results(tmp_path, threads_of_a_worker):
    parallel = compare(toy(), out=tmp_path / "jobs2", log=lambda *_: None, jobs=2)
    sequential = compare(toy(), out=tmp_path / "jobs1", log=lambda *_: None, jobs=1)
    assert len(parallel) == 6 and (parallel.threads == threads_per_job(2)).all()
    assert (parallel.engine == "local").all() and (sequential.engine == "local").all()  # where each ran (result.json)
    pd.testing.assert_frame_equal(parallel[RESULTS], sequential[RESULTS])  # same rows, same order, same numbers
    for run in parallel.run:
        a, b = (load_file(tmp_path / out / run / "adapter.safetensors") for out in ("jobs2", "jobs1"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.skipif(cpu_cores() < 2, reason="--jobs 2 needs 2 CPU cores")
def test_the_study_with_two_jobs_gives_the_sequential_results(tmp_path, threads_of_a_worker):
    def study(jobs):
        return data_size_study(
            toy(limit=40, batch_size=16),
            datasets=("mnist5k",),
            sizes=(30,),
            seeds=2,
            out=tmp_path / f"jobs{jobs}",
            log=lambda *_: None,
            jobs=jobs,
        )

    parallel, sequential = study(2), study(1)
    assert len(parallel) == 2 * 3
    columns = ["dataset", "size", "seed", "arm", "val_acc", "test_acc"]
    pd.testing.assert_frame_equal(parallel[columns], sequential[columns])
    written = pd.read_csv(tmp_path / "jobs2" / "study.csv")
    assert list(written.arm) == list(sequential.arm) and list(written.seed) == [0, 0, 0, 1, 1, 1]


def test_jobs_beyond_the_cores_or_below_one_are_refused_before_work(tmp_path):
    for jobs in (0, cpu_cores() + 1):
        with pytest.raises(ConfigError, match=f"--jobs must be an integer from 1 to {cpu_cores()}"):
            compare(toy(), out=tmp_path / "c", jobs=jobs)
        with pytest.raises(ConfigError, match="--jobs"):
            data_size_study(toy(), datasets=("mnist5k",), sizes=(30,), seeds=1, out=tmp_path / "s", jobs=jobs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(cpu_cores() < 2, reason="--jobs 2 needs 2 CPU cores")
def test_ctrl_c_stops_the_workers_and_leaves_no_half_written_run(tmp_path):
    out = tmp_path / "cmp"
    command = [
        sys.executable,
        "-m",
        "encvit.cli",
        "compare",
        "--limit",
        "400",
        "--epochs",
        "40",
        "--batch-size",
        "16",
        "--jobs",
        "2",
        "--out",
        str(out),
    ]
    # A terminal sends Ctrl-C to the whole process group: the workers get it too.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=hear_ctrl_c,
    )
    deadline = time.monotonic() + 600
    while not list(out.glob("*.partial/metrics.csv")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
    assert process.poll() is None, process.communicate()
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("half-written has been removed"), err
    assert not list(out.glob("*.partial")) and not (out / "results.csv").exists()


def test_a_worker_whose_parent_died_before_it_started_ends_at_once():
    # The pid it was started by is not its parent any more: no parent-death signal would come.
    code = (
        "import os, time; from encvit.experiments.parallel import end_with_parent; "
        "end_with_parent(os.getppid() + 10**7); "
        "time.sleep(60)"
    )
    ended = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ended.returncode == -signal.SIGTERM, ended.stderr
