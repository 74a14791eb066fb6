"""Training runs in N worker processes with the CPU cores split between them (`--jobs N` of compare and study), or
as tasks on a Ray cluster (`--address`, see encvit.experiments.cluster).

Each worker uses cores // N torch threads. A run gives the same numbers in a worker as in this process with
the same number of threads: CPU training is deterministic, but a different thread count sums in another order
and changes the last bits. A worker ends when the process that started it dies, even by kill -9.
"""

from __future__ import annotations

import copy
import ctypes
import multiprocessing
import os
import pickle
import queue
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ..common.errors import Allowed, integer
from ..training.run import TrainConfig, train


def cpu_cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def jobs_allowed() -> Allowed:
    """What --jobs accepts: 1 up to the CPU cores (more workers than cores only wait for each other)."""
    cores = cpu_cores()
    return Allowed(f"an integer from 1 to {cores} (the CPU cores here)", integer(1, cores).accepts)


def threads_per_job(jobs: int) -> int:
    """Torch threads of each of `jobs` workers: the cores split evenly, at least one."""
    return max(1, cpu_cores() // jobs)


def _start_worker(threads: int, parent: int) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the workers and cleans up after them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Stopped by the parent (SIGTERM), a worker exits through Python, so that its semaphores are released.
    signal.signal(signal.SIGTERM, _exit)
    torch.set_num_threads(threads)
    end_with_parent(parent)


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def end_with_parent(parent: int | None = None, interval: float = 1.0) -> None:
    """Make this process get SIGTERM (and so end, removing its half-written run) when its parent dies; `parent`:
    the pid that started it, to notice a parent that died before this call.

    Linux sends the signal the moment the parent dies (prctl PR_SET_PDEATHSIG, whatever the start method); a
    watchdog thread covers other systems and the cases prctl misses.
    """
    if sys.platform.startswith("linux"):
        # Strictly, when the parent's thread that started this process ends: Pool's threads live as long as it.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if parent is not None and os.getppid() != parent:  # died before prctl was set: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch_parent, args=(os.getppid(), interval), daemon=True, name="end-with-parent").start()


def _watch_parent(parent: int, interval: float) -> None:
    # Needed beside prctl, which exists on Linux only. An orphan is adopted by another process: its parent pid
    # changes (fork, spawn, and forkserver, whose server ends with the parent). The signal is repeated until the
    # process ends: code that ignores exceptions (a __del__, a C extension's callback) can swallow the first exit.
    while os.getppid() == parent:
        time.sleep(interval)
    while True:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(interval)


EXIT_GRACE = 10.0  # seconds a worker's clean-up may take before a repeated SIGTERM interrupts it
_exit_started: float | None = None


def _exit(*_) -> None:
    """SIGTERM: exit through Python, so that the run's clean-up (removing RUN.partial) runs. Both prctl and the
    watchdog signal a worker whose parent died: a second SIGTERM during the clean-up must not cut it short, so
    repeats are ignored for EXIT_GRACE seconds; after that the first exit was evidently lost, and it is raised again."""
    global _exit_started
    now = time.monotonic()
    if _exit_started is not None and now - _exit_started < EXIT_GRACE:
        return
    _exit_started = now
    raise SystemExit(1)


def _train_payload(payload: bytes) -> dict:
    config, splits, backbone = pickle.loads(payload)
    result = train(config, splits=splits, backbone=backbone)
    return {k: v for k, v in result.items() if k != "model"}


def train_runs(
    runs: Iterable[tuple[TrainConfig, object, torch.nn.Module]],
    jobs: int = 1,
    on_result: Callable[[int, dict], None] = lambda i, r: None,
    cluster=None,
) -> None:
    """Train every (config, splits, backbone) of `runs`, `jobs` at a time, or on `cluster` (a joined
    `encvit.experiments.cluster.Cluster`); `on_result(index, result)` is called in this process as each run finishes
    (in order when `jobs` is 1). Each run trains a copy of its backbone."""
    if cluster is not None:
        return cluster.train_runs(runs, on_result)
    if jobs == 1:
        for index, (config, splits, backbone) in enumerate(runs):
            on_result(index, train(config, splits=splits, backbone=copy.deepcopy(backbone)))
        return
    finished: queue.Queue = queue.Queue()
    started: dict[int, TrainConfig] = {}
    context = multiprocessing.get_context("spawn")  # a forked torch process can deadlock in its thread pool
    try:
        with context.Pool(jobs, initializer=_start_worker, initargs=(threads_per_job(jobs), os.getpid())) as pool:
            for index, (config, splits, backbone) in enumerate(runs):
                while len(started) >= jobs + 1:  # keep the workers busy without pickling every run up front
                    _take(finished, started, on_result)
                # Pickled by value here: multiprocessing would share the tensors' memory with the worker.
                payload = pickle.dumps((config, splits, backbone))
                started[index] = config
                pool.apply_async(
                    _train_payload,
                    (payload,),
                    callback=lambda result, i=index: finished.put((i, result, None)),
                    error_callback=lambda error, i=index: finished.put((i, None, error)),
                )
            while started:
                _take(finished, started, on_result)
            # Let the idle workers exit on their own: leaving `with` terminates them, and a worker stopped while
            # its last result is still in the pipe can hold the parent in the pool's join for ever.
            pool.close()
            pool.join()
    except BaseException:
        # An error or Ctrl-C: the pool is terminated on leaving `with`; remove what its runs left half-written.
        for config in started.values():
            if config.out:
                shutil.rmtree(Path(config.out).with_name(Path(config.out).name + ".partial"), ignore_errors=True)
        raise


def _take(finished: queue.Queue, started: dict, on_result) -> None:
    index, result, error = finished.get()
    del started[index]
    if error is not None:
        raise error
    on_result(index, result)
