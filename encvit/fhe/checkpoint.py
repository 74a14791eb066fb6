"""The client's progress on a job of a remote server, kept beside its run folder so that a rerun goes on.

    RUN.client/secret-context.tenseal  the client's whole TenSEAL context with its secret key (mode 600)
    RUN.client/job.json                the server's URL, the job id and what the job was made from
    RUN.client/progress.npz            the iteration, the early-stopping judge and the weights it kept (one file)

Killed and run again with the same command, the client reloads its keys, takes up its job on the server and goes on
from the last step both sides agree on. The secret key never leaves this folder; at the end it moves into the run
folder with the results (mode 600), and RUN.client is removed.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np

from ..common.atomic import write_bytes, write_text
from ..common.errors import ConfigError

SECRET_FILE = "secret-context.tenseal"


def state_folder(run_dir: Path) -> Path:
    """Where the client keeps a remote run's progress: RUN.client beside RUN."""
    return run_dir.with_name(run_dir.name + ".client")


def fingerprint(features, config: dict) -> str:
    """A hash of the features' arrays and the run's settings: a rerun must match it to take up the job."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for split in ("train", "val", "test"):
        x, y = getattr(features, split)
        digest.update(np.ascontiguousarray(x).tobytes())
        digest.update(np.ascontiguousarray(y).tobytes())
    return digest.hexdigest()[:32]


class Checkpoint:
    """One remote run's state folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def exists(self) -> bool:
        return (self.folder / "job.json").exists()

    def job(self) -> dict | None:
        """The saved job (server, job id, fingerprint), or None before one was made."""
        path = self.folder / "job.json"
        return json.loads(path.read_text()) if path.exists() else None

    def check_same_run(self, server: str, print_: str) -> dict | None:
        """The saved job when it is this run's (same features and settings), else a ConfigError; None if none."""
        saved = self.job()
        if saved is None:
            return None
        if saved["fingerprint"] != print_:
            raise ConfigError(
                f"{self.folder} holds a job made from other features or settings; pass --overwrite to start again"
            )
        if saved["server"] != server:
            raise ConfigError(f"{self.folder} holds a job on {saved['server']}, not on --server {server}")
        return saved

    def save_keys(self, private: bytes) -> None:
        """The secret context, readable by its owner only."""
        write_bytes(self.folder / SECRET_FILE, private, mode=0o600)

    def private_bytes(self) -> bytes:
        return (self.folder / SECRET_FILE).read_bytes()

    def save_job(self, server: str, job: str, print_: str) -> None:
        write_text(self.folder / "job.json", json.dumps({"server": server, "job": job, "fingerprint": print_}))

    def save_progress(self, state: dict, arrays: dict[str, np.ndarray]) -> None:
        """The protocol's state after an exchange or a step, numbers (as JSON) and weights in one file."""
        buffer = io.BytesIO()
        np.savez(buffer, state=np.array(json.dumps(state, default=float)), **arrays)
        write_bytes(self.folder / "progress.npz", buffer.getvalue())

    def progress(self) -> tuple[dict, dict[str, np.ndarray]] | None:
        """The last saved state, or None before the first step."""
        path = self.folder / "progress.npz"
        if not path.exists():
            return None
        with np.load(path) as saved:
            return json.loads(str(saved["state"])), {k: saved[k] for k in saved.files if k != "state"}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
