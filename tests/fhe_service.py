"""Helpers of the encrypted head service's tests: a features file, a server and clients in processes of their own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ENCVIT = [sys.executable, "-m", "encvit.cli"]
# A tiny job: 8 features, 3 classes, 300 training samples in chunks of 64 -> 5 steps an epoch, about 0.5 s each.
TRAIN_ARGS = ["--components", "all", "--batch-size", "64", "--no-progress", "--server-wait", "120"]


def write_features(path: Path, seed: int = 0, dim: int = 8, classes: int = 3) -> Path:
    """A features file of Gaussian blobs (learnable in a few epochs)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2
    arrays = {}
    for split, size in (("train", 300), ("val", 60), ("test", 60)):
        y = np.arange(size) % classes
        arrays[f"{split}_x"] = (centres[y] + rng.normal(size=(size, dim))).astype(np.float32)
        arrays[f"{split}_y"] = y.astype(np.int64)
    np.savez(path, **arrays)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_token(data: Path, name: str) -> str:
    done = subprocess.run(
        [*ENCVIT, "fhe-serve", "--data", str(data), "--new-token", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.strip()


class Server:
    """`encvit fhe-serve` in its own process on 127.0.0.1; `stop()` kills it by its process id."""

    def __init__(self, data: Path, port: int, *extra: str):
        self.data, self.port = data, port
        self.log = data.parent / f"server-{port}-{time.monotonic_ns()}.log"
        self.process = subprocess.Popen(
            [
                *ENCVIT,
                "fhe-serve",
                "--data",
                str(data),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--threads",
                "1",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
        )
        line = self.process.stdout.readline().strip()
        if not line.startswith("serving on http://127.0.0.1:"):
            self.stop()
            raise AssertionError(f"the server did not start: {line!r} {self.log.read_text()[-2000:]}")
        self.url = line.split()[-1]

    def stop(self, kill: bool = True) -> None:
        if self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
        self.process.wait(timeout=30)


def client(features: Path, url: str, token: str, out: Path, epochs: int = 4, *extra: str) -> subprocess.Popen:
    """`encvit fhe-train --server URL` in its own process (the token in ENCVIT_FHE_TOKEN)."""
    env = {**os.environ, "ENCVIT_FHE_TOKEN": token}
    return subprocess.Popen(
        [
            *ENCVIT,
            "fhe-train",
            "--features",
            str(features),
            "--server",
            url,
            "--out",
            str(out),
            "--epochs",
            str(epochs),
            *TRAIN_ARGS,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    """Wait for a client; its stdout, or an AssertionError with its stderr when it failed."""
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


def job_states(data: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((data / "jobs").glob("*/job.json"))]


def wait_for(condition, timeout: float = 300, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())
