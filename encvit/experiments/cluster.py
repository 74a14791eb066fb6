"""Grids on a Ray cluster (`--address HOST:PORT` of compare and study): every run is a Ray task.

The datasets and the backbone go to the object store once. A task trains with `--threads` torch threads (and asks
the cluster for as many CPUs, and one GPU on a GPU cluster) in a scratch folder of its node, then returns its
result and its run directory's files as bytes, which this process writes with the atomic writes and locks of a
local run: no shared filesystem is needed. A task whose worker or node dies is run again (MAX_RETRIES times at
most); an error inside training is not, and is reported as a local run reports it. Ray is the `cluster` extra.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import torch

from ..common.atomic import output_lock, replace_folder, staging_of, write_bytes
from ..common.errors import Allowed, ConfigError, OutputInUseError, one_line_of
from ..common.shipped import PACKAGE_DIR
from ..training.run import TrainConfig, train, versions

EXTRA = "cluster"
MAX_RETRIES = 3  # a run whose worker or node died is run again at most this often
# Seconds a cancelled run gets to stop by itself (and remove its scratch folder) before it is killed; a run stops
# within a second or two on an idle machine, but 5 s were too few at a load average of 6.
CANCEL_GRACE = 20.0
SCRATCH = "encvit-ray"  # a task's run folder, in its node's temporary folder, until its files are sent back
HOST_PORT = re.compile(r"[A-Za-z0-9._-]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}")


class ClusterError(ConnectionError):
    """The cluster lost a run: its worker or machine died more often than the retries allow."""


def cluster_address() -> Allowed:
    """What --address accepts: HOST:PORT of a running Ray head, or auto (the cluster started on this machine)."""
    return Allowed(
        "HOST:PORT of a Ray head (or auto)",
        lambda v: isinstance(v, str) and (v == "auto" or HOST_PORT.fullmatch(v) is not None),
    )


def check_engine(jobs: int, address: str | None, threads: int | None) -> None:
    """Refuse --jobs with --address (the cluster decides how many runs go at once), --threads without it, and
    --address without Ray installed; each in one line, before any work."""
    if address is None:
        if threads is not None:
            raise ConfigError(
                "--threads is for runs on a cluster (--address); here --jobs splits this machine's "
                "cores between the runs"
            )
        return
    if jobs != 1:
        raise ConfigError(
            f"--jobs splits this machine's cores; on the cluster at {address} (--address or "
            "RAY_ADDRESS) as many runs go at once as its CPUs allow: give each run's threads with "
            "--threads"
        )
    ray_module()


def ray_module():
    """The `ray` package; ConfigError naming the extra to install when it is missing."""
    if "ray" not in sys.modules:
        join_with_token_when_held()
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"--address needs Ray, which is not installed: pip install -e '.[{EXTRA}]' (the {EXTRA} extra)"
        ) from None
    return ray


def join_with_token_when_held() -> None:
    """Join clusters in token mode when RAY_AUTH_MODE is unset and this machine holds a token (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), as `ray start` does; a cluster without authentication accepts it too.
    Ray reads the mode when it is imported: this must run before."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    files = [Path(os.environ["RAY_AUTH_TOKEN_PATH"])] if os.environ.get("RAY_AUTH_TOKEN_PATH") else []
    files.append(Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN", "").strip() or any(f.is_file() and f.stat().st_size > 0 for f in files):
        os.environ["RAY_AUTH_MODE"] = "token"


@contextlib.contextmanager
def connected(address: str | None, threads: int | None) -> Iterator[Cluster | None]:
    """Join the Ray cluster at `address` for the block (None: no cluster, runs stay local); refused in one line
    when it cannot be reached or joined, or when no machine of it has `threads` CPUs."""
    if address is None:
        yield None
        return
    ray = ray_module()
    if address != "auto":
        _check_reachable(address)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
        raise ConfigError(
            f"cannot join the Ray cluster at {address} ({one_line_of(exc)}); a cluster with token "
            "authentication needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or "
            "~/.ray/auth_token) here too"
        ) from None
    finally:
        if previous is not None:  # ray.init makes SIGTERM exit at once; the command's handler stops as Ctrl-C does
            signal.signal(signal.SIGTERM, previous)
    try:
        cluster = Cluster(ray, threads or 1, address)
        yield cluster
    finally:
        ray.shutdown()


def _check_reachable(address: str, seconds: float = 10.0) -> None:
    # Hand-written: ray.init retries an address where nothing listens for minutes, printing a warning every 5 s.
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
    except OSError as exc:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}): start one with `ray start "
            "--head` and give the address it prints"
        ) from None


class Cluster:
    """A joined Ray cluster that trains runs as tasks of `threads` CPUs (and one GPU each on a GPU cluster)."""

    def __init__(self, ray, threads: int, address: str):
        self.ray, self.threads, self.address = ray, threads, address
        self.gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        largest = max((n.get("CPU", 0) for n in nodes if n.get("GPU", 0) >= self.gpus), default=0)
        if threads > largest:
            raise ConfigError(
                f"--threads {threads} is more than any machine of the cluster at {address} has "
                f"({largest:g} CPUs): give at most --threads {int(largest)}"
            )

    def train_runs(
        self, runs: Iterable[tuple[TrainConfig, object, torch.nn.Module]], on_result: Callable[[int, dict], None]
    ) -> None:
        """Train every (config, splits, backbone) as a task; each finished run's directory is written here and
        `on_result(index, result)` called as it arrives. An error stops the others; Ctrl-C cancels them."""
        from tqdm.auto import tqdm

        ray = self.ray
        task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(run_task)
        stored: dict[int, tuple[object, object]] = {}  # id -> (object, its ObjectRef): each goes there once

        def put(value):
            if id(value) not in stored:
                stored[id(value)] = (value, ray.put(value))  # the value is held so that its id stays its own
            return stored[id(value)][1]

        configs, pending = [], {}
        try:
            for index, (config, splits, backbone) in enumerate(runs):
                configs.append(config)
                key = Path(config.key).read_bytes() if config.key else None  # no shared filesystem: sent along
                ref = task.options(num_cpus=self.threads, num_gpus=self.gpus, name=f"encvit {label(config)}").remote(
                    config, put(splits), put(backbone), key, self.threads, software(), scratch_name(config)
                )
                pending[ref] = index
            with tqdm(total=len(pending), desc="runs", unit="run", disable=None) as bar:
                while pending:
                    [ref], _ = ray.wait(list(pending), num_returns=1)
                    index = pending.pop(ref)
                    result = self._result(ref, configs[index])
                    files = result.pop("files")
                    if configs[index].out:
                        write_run(Path(configs[index].out), files)
                    with tqdm.external_write_mode():
                        on_result(index, result)
                    bar.update()
        except BaseException:
            self._cancel(list(pending), [scratch_name(configs[i]) for i in pending.values()])
            raise

    def _result(self, ref, config: TrainConfig) -> dict:
        """What a task returned; its training error raised as a local run raises it (the task's traceback as
        its cause), a lost run as ClusterError."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None)
            if str(cause).startswith("The remote function failed to import"):  # Ray's only sign of it
                raise ConfigError(
                    "a machine of the cluster cannot import encvit.experiments.cluster: install this encvit with "
                    f"its {EXTRA} extra on every machine (pip install -e '.[{EXTRA}]')"
                ) from error
            if isinstance(cause, BaseException):
                raise cause from error
            raise
        except ray.exceptions.RayError as error:
            raise ClusterError(
                f"the cluster lost run {label(config)}: its worker or machine died and the retries ran "
                f"out ({type(error).__name__}: {one_line_of(error)}); the runs already finished are "
                "kept: run the same command again to go on"
            ) from None

    def _cancel(self, refs: list, scratches: list[str]) -> None:
        """Stop the runs of `refs`: those waiting are dropped; a running one gets KeyboardInterrupt (it removes its
        scratch folder) and is killed if it has not stopped after CANCEL_GRACE seconds. Then every machine removes
        the scratch folders `scratches` that no attempt holds any more: a killed task cannot clean up after itself."""
        ray = self.ray
        if not refs:
            return
        for ref in reversed(refs):  # the waiting ones first, so that none starts on a core a cancelled run frees
            ray.cancel(ref)
        _, running = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE)
        for ref in running:
            ray.cancel(ref, force=True)
        if running:
            ray.wait(running, num_returns=len(running), timeout=CANCEL_GRACE)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        sweep = ray.remote(num_cpus=0, max_retries=0)(sweep_scratch)
        sweeps = [
            sweep.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                scratches
            )
            for node in ray.nodes()
            if node["Alive"]
        ]
        ray.wait(sweeps, num_returns=len(sweeps), timeout=CANCEL_GRACE)


def label(config: TrainConfig) -> str:
    """A run's name in the cluster's task list: its folder (and the one above), else method, dataset and seed."""
    if config.out:
        return "/".join(Path(config.out).parts[-2:])
    return f"{config.dataset} {config.method} seed {config.seed}"


def scratch_name(config: TrainConfig) -> str:
    """The name of a run's scratch folder on the node that trains it: the same for every attempt of the run (and
    for the same run of a later command), so that an attempt removes what a killed one left."""
    where = f"{socket.gethostname()}:{Path(config.out).resolve()}" if config.out else uuid.uuid4().hex
    return hashlib.sha256(where.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def software() -> dict:
    """What a run's numbers depend on beside its settings: the torch and timm versions and encvit's code (a digest
    of its Python files, which a version number would not tell apart)."""
    digest = hashlib.sha256()
    package = PACKAGE_DIR
    for source in sorted(package.rglob("*.py")):
        digest.update(str(source.relative_to(package)).encode() + b"\0" + source.read_bytes())
    found = versions()
    return {"torch": found["torch"], "timm": found["timm"], "encvit code": digest.hexdigest()[:12]}


def sweep_scratch(names: list[str]) -> int:
    """On one machine: remove the scratch folders `names` whose run lock nobody holds (the lock dies with the
    process that held it, so a killed attempt's folder goes and a running attempt's stays); how many went."""
    removed = 0
    for name in names:
        folder = Path(tempfile.gettempdir()) / SCRATCH / name
        if not folder.is_dir():
            continue
        try:
            with output_lock(folder / "run"):
                pass
        except OutputInUseError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed


def run_task(
    config: TrainConfig,
    splits,
    backbone: torch.nn.Module,
    key: bytes | None,
    threads: int,
    driver_software: dict,
    scratch: str,
) -> dict:
    """One run, inside a Ray task: train with `threads` torch threads in a scratch folder of this node; returns
    the result (without the model) with the run directory's files as bytes under "files"."""
    here = software()
    differ = [
        f"{name} {here[name]} there, {driver_software.get(name)} here"
        for name in here
        if here[name] != driver_software.get(name)
    ]
    if differ:
        raise ConfigError(
            f"the machine {socket.gethostname()} of the cluster has other software ({'; '.join(differ)})"
            ": install the same on every machine, which the same numbers need"
        )
    torch.set_num_threads(threads)
    folder = Path(tempfile.gettempdir()) / SCRATCH / scratch
    shutil.rmtree(folder, ignore_errors=True)  # what a killed attempt of this run left on this node
    local = replace(
        config,
        progress=False,
        overwrite=True,
        out=str(folder / "run") if config.out else None,
        key=str(folder / "key.json") if key else None,
    )
    try:
        if key is not None:
            write_bytes(folder / "key.json", key, mode=0o600)
        result = train(local, splits=splits, backbone=backbone)
        files = {p.name: p.read_bytes() for p in sorted(Path(local.out).iterdir()) if p.is_file()} if config.out else {}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if "config.json" in files:  # it names the scratch folder and key file: say what the command asked instead
        saved = json.loads(files["config.json"])
        saved.update(out=config.out, key=config.key, overwrite=config.overwrite)
        files["config.json"] = json.dumps(saved, indent=1, default=str).encode()
    return {**{k: v for k, v in result.items() if k != "model"}, "files": files}


def write_run(run: Path, files: dict[str, bytes]) -> None:
    """Write a run directory a task sent as bytes as a local run writes it: under its lock, into RUN.partial,
    swapped in by renames; an error or Ctrl-C removes RUN.partial."""
    with output_lock(run):  # also removes a RUN.partial that a killed command left
        staging = staging_of(run)
        try:
            staging.mkdir(parents=True)
            for name, data in files.items():
                write_bytes(staging / name, data)
            replace_folder(staging, run)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
