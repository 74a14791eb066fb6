"""Grids on a Ray cluster (`--address`): a run is a Ray task that survives its worker's death and gives the numbers
the same run gives locally with the same threads; Ctrl-C cancels the runs and leaves nothing half-written; a rerun
skips the complete runs; without Ray, --address is refused naming the extra.

One Ray head (2 CPUs) is started for the module in a process of its own and stopped at the end, even on failure.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
from cli_runner import run_in_process as quiet_run
from safetensors.torch import load_file

from encvit.common.errors import ConfigError
from encvit.experiments.compare import compare
from encvit.experiments.data_size import data_size_study
from encvit.experiments.parallel import threads_per_job
from encvit.training.run import TrainConfig

ROOT = Path(__file__).parent.parent
THREADS = threads_per_job(2)  # what each of 2 local workers gets: the runs on the cluster use as many
TINY = ["--limit", "40", "--epochs", "1", "--methods", "melo,proposed", "--settings", "plain,encrypted"]
# Runs of 2 to 3 s each here: long enough to be caught training (the tiny ones take about 1 s with the worker's start)
SMALL = ["--limit", "100", "--epochs", "2", "--methods", "melo,proposed", "--settings", "plain,encrypted"]
RUNS = ["melo-plain", "proposed-plain", "melo-encrypted", "proposed-encrypted"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hear_ctrl_c() -> None:
    """In the child before exec: a runner in the background of a script ignores SIGINT, and children inherit it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def head():
    """A Ray head with 2 * THREADS CPUs, this worktree's encvit on its workers' path: (address, its process,
    its workers' temporary folder)."""
    short = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay below 108 bytes
    (short / "tmp").mkdir()
    # Authentication off even when this machine holds a Ray token, which would turn it on (the commands under test
    # then join in token mode, which such a head accepts).
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(short / "tmp"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
    }
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    log = open(short / "head.log", "w")
    process = subprocess.Popen(
        [
            shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray",
            "start",
            "--head",
            "--num-cpus",
            str(2 * THREADS),
            "--port",
            str(port),
            "--include-dashboard=false",
            "--ray-client-server-port",
            str(free_port()),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--temp-dir",
            str(short / "ray"),
            "--disable-usage-stats",
            "--block",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while "Ray runtime started" not in (short / "head.log").read_text() and time.monotonic() < deadline:
            assert process.poll() is None, (short / "head.log").read_text()
            time.sleep(0.5)
        assert "Ray runtime started" in (short / "head.log").read_text(), (short / "head.log").read_text()
        yield f"127.0.0.1:{port}", process, short / "tmp"
    finally:
        started = psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
        process.terminate()  # `ray start --block` stops every process it started...
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for child in started:  # ...and what it did not stop goes now
            with contextlib.suppress(psutil.Error):
                child.kill()
        log.close()
        shutil.rmtree(short, ignore_errors=True)


def encvit(*argv, **kwargs) -> subprocess.Popen:
    """`encvit ARGV` in a process of its own, with this worktree's encvit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "encvit.cli", *map(str, argv)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def busy_workers(head_process: subprocess.Popen) -> dict[int, str]:
    """{pid: run} of the head's worker processes that are training a run (Ray names a worker after its task while
    it runs one: "ray::encvit RUN")."""
    busy = {}
    for child in psutil.Process(head_process.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error, IndexError):
            title = child.cmdline()[0]
            if title.startswith("ray::encvit "):
                busy[child.pid] = title.removeprefix("ray::encvit ")
    return busy


def test_a_grid_on_the_cluster_survives_a_killed_worker_and_gives_the_local_numbers(head, tmp_path):
    address, head_process, _ = head
    out = tmp_path / "ray"
    grid = encvit("compare", *SMALL, "--address", address, "--threads", THREADS, "--out", out)
    killed, trained_by = None, {}  # the (pid, run) killed; run -> the worker processes seen training it
    try:
        deadline = time.monotonic() + 900  # watch until the grid ends: its retry must be seen (slow under load)
        while grid.poll() is None and time.monotonic() < deadline:
            for pid, run in busy_workers(head_process).items():
                trained_by.setdefault(run, set()).add(pid)
                if killed is None:  # kill -9 the first worker seen in the middle of a run
                    os.kill(pid, signal.SIGKILL)
                    killed = pid, run
            time.sleep(0.05)
        stdout, stderr = grid.communicate(timeout=300)
    finally:
        grid.kill()
    assert killed is not None, "no worker was seen training a run"
    assert grid.returncode == 0, stderr
    assert "results in" in stdout, stdout
    pid, run = killed
    assert trained_by[run] - {pid}, f"the run {run} killed with its worker was not run again"
    local = compare(
        TrainConfig(limit=100, epochs=2, progress=False),
        methods=("melo", "proposed"),
        out=tmp_path / "local",
        log=lambda *_: None,
        jobs=2,
    )
    on_ray = pd.read_csv(out / "results.csv")
    columns = ["run", "method", "setting", "val_acc", "test_acc", "trainable", "threads"]
    pd.testing.assert_frame_equal(on_ray[columns], local[columns])  # the same rows, in the same order, same numbers
    for run in RUNS:
        ran_on = json.loads((out / run / "result.json").read_text())["ran_on"]
        assert ran_on["engine"] == "ray" and ran_on["threads"] == THREADS and ran_on["node"], (run, ran_on)
        assert json.loads((out / run / "config.json").read_text())["out"] == str(out / run)
        a, b = (load_file(folder / run / "adapter.safetensors") for folder in (out, tmp_path / "local"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run
    assert (on_ray.engine == "ray").all() and (local.engine == "local").all()
    assert not list(tmp_path.rglob("*.partial"))


def test_a_rerun_on_the_cluster_trains_only_the_missing_runs_and_says_so(head, tmp_path):
    address, _, _ = head
    out = tmp_path / "cmp"

    def grid(log=lambda *_: None):
        return compare(
            TrainConfig(limit=40, epochs=1, progress=False),
            methods=("melo", "proposed"),
            out=out,
            log=log,
            address=address,
            threads=THREADS,
        )

    grid()
    (out / "meta.json").unlink()  # as if the command had been stopped before its last run
    shutil.rmtree(out / "proposed-encrypted")
    kept = {run: (out / run / "adapter.safetensors").stat().st_mtime_ns for run in RUNS[:3]}
    logged = []
    table = grid(logged.append)
    assert logged[0] == f"resuming: 3 of 4 runs already complete in {out}", logged
    assert [line.split(":")[0] for line in logged[1:]] == ["proposed-encrypted"], logged
    assert {run: (out / run / "adapter.safetensors").stat().st_mtime_ns for run in RUNS[:3]} == kept
    assert list(table.run) == RUNS and (table.engine == "ray").all() and (out / "meta.json").exists()


def test_the_data_size_study_runs_on_the_cluster_and_records_where(head, tmp_path):
    address, _, _ = head
    runs = data_size_study(
        TrainConfig(limit=40, epochs=1, batch_size=16, progress=False),
        datasets=("mnist5k",),
        sizes=(30,),
        seeds=1,
        out=tmp_path / "s",
        log=lambda *_: None,
        address=address,
    )
    written = pd.read_csv(tmp_path / "s" / "study.csv")
    assert list(written.arm) == list(runs.arm) == ["melo", "proposed", "full"], written
    assert (written.engine == "ray").all() and written.node.notna().all(), written
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["address"] == address


def test_ctrl_c_cancels_the_runs_on_the_cluster_and_leaves_nothing_half_written(head, tmp_path):
    address, head_process, scratch = head
    out = tmp_path / "cmp"
    grid = encvit(
        "compare",
        "--limit",
        160,
        "--epochs",
        40,
        "--batch-size",
        16,
        "--address",
        address,
        "--threads",
        THREADS,
        "--out",
        out,
        start_new_session=True,
        preexec_fn=hear_ctrl_c,
    )
    try:
        deadline = time.monotonic() + 240

        def training():
            return list((scratch / "encvit-ray").glob("*/run.partial/metrics.csv"))  # an epoch done

        while not training() and grid.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert grid.poll() is None and training() and busy_workers(head_process), grid.communicate()
        os.killpg(grid.pid, signal.SIGINT)  # as a terminal sends Ctrl-C
        _, stderr = grid.communicate(timeout=120)
    finally:
        grid.kill()
    assert grid.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].endswith("half-written has been removed")
    assert not list(tmp_path.rglob("*.partial")) and not (out / "results.csv").exists()
    deadline = time.monotonic() + 60
    while busy_workers(head_process) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not busy_workers(head_process), "a cancelled run still trains"
    assert not [p for p in (scratch / "encvit-ray").glob("*/*")], "a cancelled run left its scratch folder"


def test_an_error_inside_a_run_is_reported_as_a_local_one_in_one_line(head, tmp_path):
    address, _, _ = head
    argv = ["compare", *TINY, "--rank", 1000]  # above the backbone's width: refused by the run itself
    ray_status, ray_err = quiet_run(*argv, "--address", address, "--out", tmp_path / "ray")
    local_status, local_err = quiet_run(*argv, "--out", tmp_path / "local")
    assert local_status == ray_status == 2, (local_err, ray_err)
    message = "ConfigError: --rank must be at most the backbone's width (96), got 1000"
    assert ray_err.strip() == local_err.strip() == f"encvit compare: error: {message}"
    assert not list((tmp_path / "ray").glob("*/result.json"))


def test_threads_beyond_every_machine_of_the_cluster_are_refused_before_work(head, tmp_path):
    address, _, _ = head
    status, err = quiet_run("compare", *TINY, "--address", address, "--threads", 64, "--out", tmp_path / "c")
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--threads 64 is more than any machine of the cluster at {address} has ({2 * THREADS} CPUs)" in err
    assert list(tmp_path.iterdir()) == []


def test_without_ray_address_is_refused_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the cluster extra were not installed: `import ray` fails
    for argv in (
        ["compare", "--address", "127.0.0.1:6379"],
        ["study", "data-size", "--address", "127.0.0.1:6379"],
        ["study", "security", "--address", "127.0.0.1:6379"],
    ):
        status, err = quiet_run(*argv, "--out", tmp_path / "out")
        assert status == 2 and len(err.strip().splitlines()) == 1, err
        assert "--address needs Ray, which is not installed: pip install -e '.[cluster]'" in err, err
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # read as --address is
    status, err = quiet_run("compare", "--out", tmp_path / "out")
    assert status == 2 and "pip install -e '.[cluster]'" in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_token_held_here_makes_the_command_join_in_token_mode_as_ray_start_does(tmp_path, monkeypatch):
    from encvit.experiments.cluster import join_with_token_when_held

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(name, "")  # recorded, so that the end of the test puts back what was there
        monkeypatch.delenv(name)
    join_with_token_when_held()
    assert "RAY_AUTH_MODE" not in os.environ  # no token here: Ray's default
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("0123abcd")
    join_with_token_when_held()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # set by the user: kept
    join_with_token_when_held()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


def test_a_machine_with_other_software_refuses_the_run_before_training(tmp_path):
    from encvit.experiments.cluster import run_task, software

    other = {**software(), "encvit code": "0123456789ab"}  # the driver's encvit differs from this machine's
    config = TrainConfig(limit=40, epochs=1, progress=False, out=str(tmp_path / "run"))
    with pytest.raises(
        ConfigError,
        match=f"has other software .encvit code {software()['encvit code']} there, "
        "0123456789ab here.: install the same on every machine",
    ):
        run_task(config, None, None, None, 1, other, "scratch")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--address", "head"], "--address must be HOST:PORT of a Ray head (or auto), got 'head'"),
        (["--address", "127.0.0.1:6379", "--jobs", "2"], "--jobs splits this machine's cores; on the cluster at"),
        (["--threads", "2"], "--threads is for runs on a cluster (--address)"),
        (["--address", "127.0.0.1:PORT"], "no Ray cluster answers at 127.0.0.1:"),
    ],
)
def test_cluster_options_that_cannot_work_are_refused_in_one_line(argv, message, tmp_path):
    argv = [a.replace("PORT", str(free_port())) for a in argv]  # a port where nothing listens
    status, err = quiet_run("compare", *argv, "--out", tmp_path / "out")
    assert status == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_sweep_after_a_cancel_removes_the_scratch_of_killed_runs_only(tmp_path, monkeypatch):
    from encvit.common.atomic import lock_file_of, output_lock
    from encvit.experiments.cluster import SCRATCH, sweep_scratch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed, running = tmp_path / SCRATCH / "killed", tmp_path / SCRATCH / "running"

    def half_written(folder):
        (folder / "run.partial").mkdir(parents=True)
        (folder / "run.partial" / "metrics.csv").write_text("epoch\n1\n")

    half_written(killed)
    lock_file_of(killed / "run").write_text("4242\n")  # the lock file a SIGKILLed attempt leaves: nobody holds it
    running.mkdir()
    with output_lock(running / "run"):  # an attempt still training there
        half_written(running)
        assert sweep_scratch(["killed", "running", "never-made"]) == 1
    assert not killed.exists() and (running / "run.partial" / "metrics.csv").exists()
