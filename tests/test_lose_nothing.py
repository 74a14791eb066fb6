"""Lose nothing: one command at a time writes an output (a second is refused naming the holder's pid, a lock left by
a killed command blocks nothing), a replaced run is swapped in by renames (a kill at any instant leaves the old run
or the new one), workers end with their parent, result folders count only with their meta.json, and a resume
with other settings is refused naming them."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli_runner import run_in_process as quiet_run

import encvit.common.atomic as atomic
import encvit.experiments.parallel as parallel
from encvit.common.atomic import lock_file_of, output_lock, replace_folder
from encvit.common.errors import ConfigError, IncompleteResultsError, OutputInUseError
from encvit.experiments.compare import compare, load_results
from encvit.experiments.data_size import data_size_study, load_study, merge_studies
from encvit.experiments.parallel import cpu_cores
from encvit.models.adapters import read_adapter
from encvit.training.run import TrainConfig, train

LIMIT = int(os.environ.get("ENCVIT_TEST_LIMIT", "96"))
ROOT = Path(__file__).parent.parent


def python(code: str, *args, **kwargs) -> subprocess.Popen:
    """A Python process running `code` with this worktree's encvit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


HOLD_LOCK = """
    import sys, time
    from encvit.common.atomic import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
"""


@pytest.fixture
def held(tmp_path):
    """A live process holding the lock of tmp_path/"out": (the path, the holder's pid)."""
    holder = python(HOLD_LOCK, tmp_path / "out")
    assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
    yield tmp_path / "out", holder.pid
    holder.kill()
    holder.wait()


# ---- one writer per output ---------------------------------------------------------------------------------
WAIT_THEN_RUN = """
    import sys
    from encvit.cli import main
    print("ready", flush=True)
    sys.stdin.readline()
    sys.exit(main(sys.argv[1:]))
"""


def test_two_trainings_into_one_folder_the_second_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "R"
    # Both processes import everything first, then start the command at the same moment.
    commands = {
        method: python(
            WAIT_THEN_RUN,
            "train",
            "--method",
            method,
            "--limit",
            48,
            "--epochs",
            1,
            "--out",
            run,
            stdin=subprocess.PIPE,
        )
        for method in ("melo", "proposed")
    }
    for process in commands.values():
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
    for process in commands.values():
        process.stdin.write("go\n")
        process.stdin.flush()
    ended = {method: (process, *process.communicate(timeout=600)) for method, process in commands.items()}
    assert sorted(process.returncode for process, _, _ in ended.values()) == [0, 2], ended
    [winner] = [method for method, (process, _, _) in ended.items() if process.returncode == 0]
    [refused] = [err for process, _, err in ended.values() if process.returncode == 2]
    assert refused.strip() == (
        f"encvit train: error: OutputInUseError: {run} is being written by another command "
        f"(pid {commands[winner].pid}); wait for it to end or choose another --out"
    )
    info, _ = read_adapter(run / "adapter.safetensors")  # the first one's run, whole
    assert info.method == winner and json.loads((run / "result.json").read_text())["method"] == winner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R"]  # no lock file, no staging folder


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--method", "melo", "--out", "{out}"],
        ["compare", "--out", "{out}"],
        ["study", "data-size", "--out", "{out}"],
        ["study", "merge", "{out}", "{out}", "--out", "{out}"],
        ["study", "security", "--out", "{out}"],
        ["fhe-train", "--out", "{out}"],
        ["attack", "chosen-plaintext", "--make-probes", "{out}", "--block-size", "4"],
    ],
    ids=lambda argv: " ".join(w for w in argv[:2] if not w.startswith("-")),
)
def test_every_command_that_writes_a_folder_is_refused_while_another_writes_it(held, argv):
    out, pid = held
    status, err = quiet_run(*[a.replace("{out}", str(out)) for a in argv])
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert f"OutputInUseError: {out} is being written by another command (pid {pid})" in err
    assert sorted(p.name for p in out.parent.iterdir()) == [lock_file_of(out).name]  # the holder's lock only


def test_files_written_by_pretrain_and_the_attacks_are_locked_too(tmp_path):
    for name, argv in (
        ("weights.safetensors", ["pretrain", "--out"]),
        ("key.json", ["attack", "known-plaintext", "--plain", "p", "--encrypted", "e", "-o"]),
    ):
        holder = python(HOLD_LOCK, tmp_path / name)
        try:
            assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
            status, err = quiet_run(*argv, tmp_path / name)
            assert status == 2 and f"{tmp_path / name} is being written by another command (pid {holder.pid})" in err
        finally:
            holder.kill()
            holder.wait()


def test_a_lock_left_by_a_killed_command_blocks_nothing(tmp_path):
    out = tmp_path / "out"
    holder = python(HOLD_LOCK, out)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(OutputInUseError, match=f"pid {holder.pid}"):
        with output_lock(out):
            pass
    holder.kill()  # kill -9: the lock file stays, with the dead holder's pid in it
    holder.wait()
    assert lock_file_of(out).read_text().strip() == str(holder.pid)
    with output_lock(out):
        assert lock_file_of(out).read_text().strip() == str(os.getpid())
    # The pid in the file decides nothing: a stale file naming a live process does not block either.
    lock_file_of(out).write_text(f"{os.getppid()}\n")
    with output_lock(out):
        pass
    assert list(tmp_path.iterdir()) == []  # the lock file goes with its holder


def test_the_folders_made_for_a_lock_file_go_with_it(tmp_path):
    deep = tmp_path / "a" / "b" / "out"
    with output_lock(deep):
        assert lock_file_of(deep).exists()
    assert list(tmp_path.iterdir()) == []


# ---- crash-safe replace ------------------------------------------------------------------------------------
def make_folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "file.txt").write_text(text)
    return path


KILL_AT = """
    import os, shutil, sys
    from encvit.common.atomic import replace_folder
    step, staging, target = sys.argv[1:]
    rename, rmtree = os.rename, shutil.rmtree
    def rename_then_die(source, destination):
        if step == "between-renames" and str(source) == staging:
            os._exit(9)  # killed after the old folder was moved aside, before the new one took its place
        rename(source, destination)
    def die(path, *args, **kwargs):
        os._exit(9)  # killed after the swap, before the old folder was deleted
    os.rename = rename_then_die
    if step == "before-delete":
        shutil.rmtree = die
    replace_folder(staging, target)
"""


@pytest.mark.parametrize("step, survivor", [("between-renames", "old"), ("before-delete", "new")])
def test_a_kill_during_a_replace_leaves_the_old_folder_or_the_new_one(tmp_path, step, survivor):
    target = make_folder(tmp_path / "run", "old")
    staging = make_folder(tmp_path / "run.partial", "new")
    killed = python(KILL_AT, step, staging, target)
    killed.communicate(timeout=60)
    assert killed.returncode == 9
    assert {p.name for p in tmp_path.iterdir()} >= {f"run.old-{killed.pid}"}
    with output_lock(target):  # the next command: what the killed one left is put right before anything else
        assert (target / "file.txt").read_text() == survivor
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_error_between_the_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = make_folder(tmp_path / "run", "old")
    staging = make_folder(tmp_path / "run.partial", "new")
    rename = os.rename

    def fail_on_staging(source, destination):
        if Path(source) == staging:
            raise KeyboardInterrupt
        rename(source, destination)

    monkeypatch.setattr(atomic.os, "rename", fail_on_staging)
    with pytest.raises(KeyboardInterrupt):
        replace_folder(staging, target)
    assert (target / "file.txt").read_text() == "old" and not list(tmp_path.glob("run.old-*"))


KILLED_OVERWRITE = """
    import os, sys
    from encvit.cli import main
    rename = os.rename
    def rename_then_die(source, destination):
        if str(source).endswith(".partial"):
            os._exit(9)
        rename(source, destination)
    os.rename = rename_then_die
    sys.exit(main(sys.argv[1:]))
"""


def test_a_train_killed_while_replacing_its_run_leaves_the_old_run_for_the_next_command(tmp_path):
    run = tmp_path / "R"
    train(TrainConfig(method="melo", limit=48, epochs=1, progress=False, out=str(run)))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    killed = python(
        KILLED_OVERWRITE, "train", "--method", "proposed", "--limit", 48, "--epochs", 1, "--out", run, "--overwrite"
    )
    _, err = killed.communicate(timeout=600)
    assert killed.returncode == 9, err
    assert not run.exists() and (tmp_path / f"R.old-{killed.pid}").is_dir()  # the instant of the kill
    status, err = quiet_run("train", "--method", "proposed", "--limit", 48, "--epochs", 1, "--out", run)
    assert status == 2 and f"run directory {run} exists; pass --overwrite" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R"]


# ---- workers end with their parent -------------------------------------------------------------------------
def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children(pid: int) -> set[int]:
    return {int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()}


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads the process tree from /proc (Linux)")
@pytest.mark.skipif(cpu_cores() < 2, reason="--jobs 2 needs 2 CPU cores")
def test_kill_9_of_compare_with_two_jobs_ends_its_workers(tmp_path):
    out = tmp_path / "cmp"
    process = subprocess.Popen(
        [
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
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers: set[int] = set()
    try:
        assert wait_until(lambda: list(out.glob("*.partial/metrics.csv")) or process.poll() is not None, 600)
        assert process.poll() is None, process.communicate()
        workers = children(process.pid)
        assert len(workers) >= 2
        process.kill()  # kill -9: no Python code of the parent runs
        process.wait()
        assert wait_until(lambda: not any(map(alive, workers)), 60), [w for w in workers if alive(w)]
    finally:
        process.kill()
        for worker in filter(alive, workers):  # only if the test failed: leave nothing running
            os.kill(worker, signal.SIGKILL)
    assert not list(out.glob("*.partial"))  # each worker removed its half-written run on the way out
    with output_lock(out):  # nothing holds the folder any more
        pass


WATCHED = """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import sys, time, threading; "
                              "from encvit.experiments.parallel import _watch_parent; import os; "
                              "threading.Thread(target=_watch_parent, args=(os.getppid(), 0.1), daemon=True).start(); "
                              "print('watching', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    print(child.pid, flush=True)
    time.sleep(120)
"""


def test_the_watchdog_ends_a_worker_whose_parent_died_without_prctl(tmp_path):
    parent = python(WATCHED)
    worker = int(parent.stdout.readline())
    assert alive(worker)
    parent.kill()
    parent.wait()
    assert wait_until(lambda: not alive(worker), 30)


SIGNALLED_TWICE = """
    import os, shutil, signal, sys, time
    from pathlib import Path
    from encvit.experiments.parallel import _exit
    signal.signal(signal.SIGTERM, _exit)
    run = Path(sys.argv[1])
    (run / "metrics.csv").write_text("epoch")
    try:
        print("training", flush=True)
        time.sleep(60)
    except BaseException:
        os.kill(os.getpid(), signal.SIGTERM)  # the watchdog's signal, after prctl's, while the clean-up runs
        time.sleep(0.5)
        shutil.rmtree(run)
        raise
"""


def test_a_second_sigterm_does_not_cut_a_workers_clean_up_short(tmp_path):
    # A worker whose parent dies is signalled twice (prctl and the watchdog); the second came, once in CI, while the
    # first one's clean-up removed RUN.partial, and left it half-removed.
    run = tmp_path / "melo-plain.partial"
    run.mkdir()
    worker = python(SIGNALLED_TWICE, run)
    assert worker.stdout.readline() == "training\n"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 1, worker.stderr.read()
    assert not run.exists()


def test_a_repeated_sigterm_ends_a_worker_whose_first_exit_was_lost(monkeypatch):
    monkeypatch.setattr(parallel, "_exit_started", None)
    with pytest.raises(SystemExit):
        parallel._exit()
    assert parallel._exit() is None  # within the grace: the clean-up goes on
    monkeypatch.setattr(parallel, "_exit_started", time.monotonic() - parallel.EXIT_GRACE - 1)
    with pytest.raises(SystemExit):  # after it: the first exit was swallowed somewhere, so it comes again
        parallel._exit()


SWALLOWS_FIRST = """
    import os, signal, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import os, signal, sys, time, threading; "
                              "from encvit.experiments.parallel import _watch_parent; "
                              "seen = []; signal.signal(signal.SIGTERM, lambda *_: seen.append(1) or "
                              "(len(seen) > 1 and sys.exit(3))); "
                              "threading.Thread(target=_watch_parent, args=(os.getppid(), 0.1), daemon=True).start(); "
                              "print('watching', flush=True); "
                              "[time.sleep(0.05) for _ in range(2400)]"], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    print(child.pid, flush=True)
    time.sleep(120)
"""


def test_the_watchdog_signals_again_until_the_worker_has_ended(tmp_path):
    parent = python(SWALLOWS_FIRST)
    worker = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    assert wait_until(lambda: not alive(worker), 30)  # the first SIGTERM was ignored, the second one ended it


# ---- a results folder counts only with its meta.json ------------------------------------------------------
def toy(**kw) -> TrainConfig:
    return TrainConfig(**{"limit": LIMIT, "epochs": 1, "batch_size": 32, "progress": False, **kw})


def test_compare_resumes_the_complete_runs_and_says_so(tmp_path):
    out = tmp_path / "cmp"
    compare(toy(), methods=("melo", "proposed"), settings=("plain",), out=out, log=lambda *_: None)
    kept = (out / "melo-plain" / "adapter.safetensors").stat().st_mtime_ns
    # As if the comparison had been killed after its first run: a run, stale tables, no meta.json.
    (out / "meta.json").unlink()
    (out / "summary.csv").write_text("")
    with pytest.raises(IncompleteResultsError, match=f"{out} holds an unfinished comparison .no meta.json"):
        load_results(out)
    for removed in (out / "proposed-plain").iterdir():
        removed.unlink()
    (out / "proposed-plain").rmdir()
    logged = []
    table = compare(toy(), methods=("melo", "proposed"), settings=("plain",), out=out, log=logged.append)
    assert logged[0] == f"resuming: 1 of 2 runs already complete in {out}"
    assert [line.split(":")[0] for line in logged[1:]] == ["proposed-plain"]  # only the missing run trained
    assert (out / "melo-plain" / "adapter.safetensors").stat().st_mtime_ns == kept
    runs, summary, meta = load_results(out)
    assert list(runs.run) == list(table.run) == ["melo-plain", "proposed-plain"] and len(summary) == 2
    assert meta["settings"]["epochs"] == 1 and meta["settings"]["methods"] == ["melo", "proposed"]


def test_compare_refuses_to_resume_with_other_settings_and_overwrite_starts_afresh(tmp_path):
    out = tmp_path / "cmp"
    compare(toy(), methods=("melo",), settings=("plain",), out=out, log=lambda *_: None)
    with pytest.raises(ConfigError, match="already holds a comparison; pass --overwrite"):
        compare(toy(), methods=("melo",), settings=("plain",), out=out)
    (out / "meta.json").unlink()  # unfinished
    with pytest.raises(ConfigError, match=r"--epochs 1 there, 2 now; --lr None there, 0.05 now"):
        compare(toy(epochs=2, lr=0.05), methods=("melo",), settings=("plain",), out=out)
    status, err = quiet_run(
        "compare",
        "--limit",
        LIMIT,
        "--epochs",
        1,
        "--batch-size",
        64,
        "--methods",
        "melo",
        "--settings",
        "plain",
        "--out",
        out,
    )
    assert status == 2 and "--batch-size 32 there, 64 now" in err and len(err.strip().splitlines()) == 1, err
    compare(toy(epochs=2), methods=("melo",), settings=("plain",), out=out, overwrite=True, log=lambda *_: None)
    runs, _, meta = load_results(out)
    assert meta["epochs"] == 2 and json.loads((out / "melo-plain" / "result.json").read_text())["epochs"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]


def test_the_readers_refuse_unfinished_or_damaged_comparisons_in_one_line(tmp_path):
    folder = tmp_path / "cmp"
    folder.mkdir()
    (folder / "results.csv").write_text("run,method\nmelo-plain,melo\n")
    with pytest.raises(IncompleteResultsError, match="no meta.json, which is written last"):
        load_results(folder)
    (folder / "meta.json").write_text('{"backbone": "encvit-tiny"')
    with pytest.raises(IncompleteResultsError, match="meta.json is damaged"):
        load_results(folder)
    (folder / "meta.json").write_text('{"backbone": "encvit-tiny"}')
    (folder / "summary.csv").write_text("")
    with pytest.raises(IncompleteResultsError, match="summary.csv is empty"):
        load_results(folder)
    (folder / "summary.csv").write_text("method,setting,test_acc,std,ci95,seeds,trainable\n")
    with pytest.raises(IncompleteResultsError, match="results.csv is damaged: it lacks setting"):
        load_results(folder)


# ---- the data-size study -------------------------------------------------------------------------------------
class FakeTrain:
    """Stands in for `train`: an accuracy from the method and seed, no training."""

    def __call__(self, config, splits, backbone):
        return {
            "val_acc": 50.0 + config.seed,
            "test_acc": 60.0 + config.seed + (config.method == "proposed"),
            "seconds": 1.0,
        }


@pytest.fixture
def fake_study(monkeypatch):
    monkeypatch.setattr(parallel, "train", FakeTrain())

    def run(out, **kw):
        return data_size_study(
            TrainConfig(progress=False, **kw), datasets=("mnist5k",), sizes=(20,), seeds=2, out=out, log=lambda *_: None
        )

    return run


def test_a_study_resumed_with_other_settings_is_refused_naming_them(fake_study, tmp_path, monkeypatch):
    out = tmp_path / "s"
    fake_study(out, epochs=1)
    (out / "meta.json").unlink()  # as if interrupted
    with pytest.raises(ConfigError, match=r"\(--epochs 1 there, 2 now; --lr None there, 0.05 now\)"):
        fake_study(out, epochs=2, lr=0.05)
    monkeypatch.setenv("ENCVIT_STUDY_SIZES", "20")
    monkeypatch.setenv("ENCVIT_STUDY_SEEDS", "2")
    status, err = quiet_run(
        "study", "data-size", "--datasets", "mnist5k", "--epochs", 1, "--batch-size", 4, "--out", out
    )
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "--batch-size 128 there, 4 now" in err and "pass --overwrite to start afresh" in err
    status, err = quiet_run("study", "data-size", "--datasets", "mnist5k", "--epochs", 1, "--out", out)
    assert status == 0, err  # the same settings: resumed and completed
    assert len(load_study(out)[0]) == 2 * 3
    status, err = quiet_run(
        "study", "data-size", "--datasets", "mnist5k", "--epochs", 1, "--batch-size", 4, "--overwrite", "--out", out
    )
    assert status == 0, err  # afresh, beside the old study, then swapped in
    assert json.loads((out / "config.json").read_text())["batch_size"] == 4 and len(load_study(out)[0]) == 2 * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_study_readers_refuse_unfinished_and_truncated_studies(fake_study, tmp_path):
    for name in ("a", "b"):
        fake_study(tmp_path / name, seed=0 if name == "a" else 2)
    (tmp_path / "a" / "meta.json").unlink()
    with pytest.raises(IncompleteResultsError, match="holds an unfinished study"):
        load_study(tmp_path / "a")
    with pytest.raises(IncompleteResultsError, match="unfinished study"):
        merge_studies([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    text = (tmp_path / "b" / "study.csv").read_text()
    (tmp_path / "b" / "study.csv").write_text(text[: text.rindex(",encvit-tiny") + 5])  # cut in its last row
    status, err = quiet_run("study", "merge", tmp_path / "b", tmp_path / "b", "--out", tmp_path / "m")
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "study.csv is truncated or damaged: its line 7 has no epochs" in err and "nan" not in err
    assert not (tmp_path / "m").exists()


# ---- the security study ------------------------------------------------------------------------------------
SECURITY = [
    "study",
    "security",
    "--limit",
    60,
    "--epochs",
    1,
    "--batch-size",
    32,
    "--seeds",
    1,
    "--counts",
    10,
    "--draws",
    1,
    "--methods",
    "melo",
    "--cipher-settings",
    "shuffle",
]


@pytest.mark.parametrize(
    "damaged, text",
    [
        ("runs/shuffle/melo-seed0/config.json", '{"method": "melo", "epo'),
        ("attacks/shuffle/n10-draw0.json", "[1, 2"),
        ("attacks/shuffle/n10-draw0.json", "[" * 100_000),
    ],
)
def test_a_damaged_file_in_a_security_study_is_refused_in_one_line_before_work(tmp_path, damaged, text):
    out = tmp_path / "security"
    (out / damaged).parent.mkdir(parents=True)
    (out / damaged).write_text(text)
    if damaged.startswith("runs/"):
        (out / damaged).with_name("result.json").write_text('{"test_acc": 50}')
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    status, err = quiet_run(*SECURITY, "--out", out)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{out / damaged} is damaged" in err and "Traceback" not in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_results_tables_without_meta_json_are_not_a_shipped_security_study(tmp_path):
    from encvit.experiments.security import collect

    (tmp_path / "accuracy.csv").write_text("setting,method\n")
    with pytest.raises(IncompleteResultsError, match="no meta.json"):
        collect(tmp_path)
