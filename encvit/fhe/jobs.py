"""The server's jobs on its disk, written so that a killed server starts again where it was.

    DATA/jobs/ID/job.json        owner (a token's hash), settings, parameters' hash, chunks received, the iteration,
                                 which weights folder is current and whether it is fresh; replaced atomically
    DATA/jobs/ID/public.bin      the client's public keys (parameters, relinearisation and rotation keys)
    DATA/jobs/ID/store/          the encrypted training and validation chunks, one file per ciphertext
    DATA/jobs/ID/weights-N[-fresh]/  the encrypted weights after step N (or refreshed for step N)
    DATA/jobs/ID/logits-N/       the encrypted validation logits under the weights refreshed for step N

Every state change writes its files first and job.json last, so a kill at any instant leaves the state before the
change or after it: a restart loses at most the step that was being taken. Messages name their iteration, and a
repeated one (a retry after a lost answer) gets the same answer without changing anything twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from tenseal import sealapi

from ..common.atomic import write_bytes, write_text
from ..common.errors import EncvitError
from . import ckks, packing
from .params import PRESETS
from .server import Server
from .transport import JobSettings
from .wire import params_hash

JOB_FILE = "job.json"
PUBLIC_FILE = "public.bin"
LOADED_JOBS = 4  # jobs whose keys stay loaded in memory; others are read from disk when asked for


class RequestError(EncvitError):
    """A request the server refuses; `status` is its HTTP status."""

    status = 400


class NotFound(RequestError):
    status = 404


class Conflict(RequestError):
    status = 409


class TooMany(RequestError):
    status = 429


def _check_settings(settings: dict) -> JobSettings:
    """JobSettings from untrusted numbers, each checked."""
    try:
        job = JobSettings(
            preset=str(settings["preset"]),
            features=int(settings["features"]),
            classes=int(settings["classes"]),
            batch_size=int(settings["batch_size"]),
            softmax_radius=float(settings["softmax_radius"]),
            momentum=float(settings["momentum"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RequestError(f"job settings are incomplete or not numbers: {exc}") from None
    if job.preset not in PRESETS:
        raise RequestError(f"preset {job.preset!r} is not one of {', '.join(PRESETS)}")
    slots = PRESETS[job.preset].slots
    checks = [
        (1 <= job.features <= 65536, "features must be from 1 to 65536"),
        (2 <= job.classes <= 1000, "classes must be from 2 to 1000"),
        (1 <= job.batch_size <= slots, f"batch_size must be from 1 to the {slots} slots"),
        (math.isfinite(job.softmax_radius) and 0.5 <= job.softmax_radius <= 64, "softmax_radius must be in [0.5, 64]"),
        (math.isfinite(job.momentum) and 0 <= job.momentum < 1, "momentum must be in [0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise RequestError(message)
    try:
        job.layout()
    except EncvitError as exc:
        raise RequestError(f"no packed layout fits these settings: {exc}") from None
    return job


def public_context_checked(public: bytes, preset: str):
    """The public context and rotation keys of an upload; refused when it holds a secret key or other parameters."""
    try:
        context, rotations = ckks.load_public(public)
    except ckks.SecretKeyError as exc:
        raise RequestError(f"{exc}; nothing was stored") from None
    except Exception as exc:  # TenSEAL and SEAL raise several types on malformed bytes
        raise RequestError(f"the body is not a public CKKS context with rotation keys ({type(exc).__name__})") from None
    params = PRESETS[preset]
    seal = context.seal_context().data.key_context_data().parms()
    got = (seal.poly_modulus_degree(), [q.bit_count() for q in seal.coeff_modulus()])
    want = (params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
    if got != want:
        raise RequestError(f"the context's parameters {got} are not preset {preset}'s {want}")
    return context, rotations


class Job:
    """One job's state on disk and, while loaded, its server (keys, engine, weights)."""

    def __init__(self, folder: Path, threads: int):
        self.folder, self.threads = folder, threads
        self.lock = threading.Lock()  # one request of a job at a time; other jobs go on
        self.state = json.loads((folder / JOB_FILE).read_text())
        self.settings = JobSettings(**self.state["settings"])
        self.layout = self.settings.layout()
        self._server: Server | None = None

    # ---- state on disk ------------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.state["id"]

    def save(self, **changes) -> None:
        """Apply `changes` to job.json, atomically (the last write of every state change)."""
        self.state = {**self.state, **changes, "updated": time.time()}
        write_text(self.folder / JOB_FILE, json.dumps(self.state, indent=1))

    @property
    def server(self) -> Server:
        """The job's server: keys loaded, chunks and current weights found on disk."""
        if self._server is None:
            if self.state["status"] != "open":
                raise Conflict(f"job {self.id} is {self.state['status']}: its ciphertexts are gone")
            server = Server(
                (self.folder / PUBLIC_FILE).read_bytes(),
                self.layout,
                self.settings.poly(),
                self.settings.momentum,
                self.threads,
                store_folder=self.folder / "store",
            )
            server.store.restore(self.state["store"])
            server.counts = list(self.state["counts"])
            server.validation_blocks = self.state["chunks"]["validation"]
            server.validation_seconds = self.state["validation_seconds"]
            if self.state["weights"]:
                server.weights = self._load_weights(server, self.folder / self.state["weights"])
            self._server = server
        return self._server

    def unload(self) -> None:
        """Free the keys and weights in memory (the disk holds everything)."""
        self._server = None

    def _save_weights(self, server: Server, name: str) -> str:
        folder = self.folder / name
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for weights, forms in server.weights.items():
            for form, cts in forms.items():
                for k, ct in enumerate(cts):
                    ct.save(str(partial / f"{weights}-{form}-{k}.ct"))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        return name

    def _load_weights(self, server: Server, folder: Path) -> dict:
        weights: dict[str, dict[str, list]] = {}
        for path in sorted(folder.glob("*.ct"), key=lambda p: int(p.stem.rsplit("-", 1)[1])):
            name, form, _ = path.stem.split("-")
            ct = sealapi.Ciphertext()
            ct.load(server.engine.seal, str(path))
            weights.setdefault(name, {}).setdefault(form, []).append(ct)
        return weights

    def _replace_weights(self, name: str, **changes) -> None:
        previous = self.state["weights"]
        self.save(weights=name, **changes)
        if previous and previous != name:
            shutil.rmtree(self.folder / previous, ignore_errors=True)

    # ---- the messages ---------------------------------------------------------------------------------------
    def status(self) -> dict:
        """What the client may ask about: chunks held, iteration, whether the weights are fresh, the job's counts."""
        s = self.state
        out = {
            "job": s["id"],
            "status": s["status"],
            "created": s["created"],
            "settings": s["settings"],
            "params": s["params"],
            "chunks": s["chunks"],
            "iteration": s["iteration"],
            "fresh": s["fresh"],
            "keep": s["keep"],
            "operations": s["operations"],
            "server_disk_bytes": s["disk_bytes"],
            "server_validation_seconds": s["validation_seconds"],
        }
        if s["status"] == "open" and s["weights"]:
            out["needs_refresh"] = self.server.needs_refresh()
        return out

    def _open_for_uploads(self) -> None:
        if self.state["status"] != "open":
            raise Conflict(f"job {self.id} is {self.state['status']}")
        if self.state["weights"]:
            raise Conflict(f"job {self.id} has started training: its data can no longer change")

    def _expected_counts(self) -> dict[str, int]:
        """Ciphertexts per part of a training chunk for this layout."""
        one = np.zeros((1, self.layout.num_features))
        labels = np.zeros((1, self.layout.num_classes))
        return {
            "forward": len(packing.forward_data(self.layout, one)),
            "gradient": len(packing.gradient_data(self.layout, one)),
            "labels": len(packing.labels(self.layout, labels)),
        }

    def _check_parts(self, parts: dict, wanted: dict[str, int], what: str) -> None:
        got = {name: len(items) for name, items in parts.items()}
        if got != wanted:
            raise RequestError(f"{what} must hold {wanted} ciphertexts, got {got}")

    def _store(self, name: str, items: list[bytes], what: str) -> None:
        try:
            self.server.store.put(name, items)
        except EncvitError as exc:  # bytes that are no ciphertext of this job's parameters
            raise RequestError(f"{what}: {exc}") from None

    def put_chunk(self, kind: str, index: int, parts: dict, count: int | None) -> dict:
        """Training or validation chunk `index`, in order; a chunk already held is answered as before."""
        self._open_for_uploads()
        held = self.state["chunks"][kind]
        if index < held:
            return {"chunks": self.state["chunks"]}
        if index > held:
            raise Conflict(f"{kind} chunk {index} is out of order: the server holds chunks 0-{held - 1}, send {held}")
        wanted = self._expected_counts() if kind == "train" else {"forward": self._expected_counts()["forward"]}
        self._check_parts(parts, wanted, f"{kind} chunk {index}")
        counts = list(self.state["counts"])
        if kind == "train":
            if count is None or not 1 <= count <= self.layout.block:
                raise RequestError(f"a training chunk holds 1 to {self.layout.block} samples, got {count}")
            counts.append(count)
        store = dict(self.state["store"])
        prefix = {"train": "train", "validation": "val"}[kind]  # the names Server reads back
        for part, items in parts.items():
            name = f"{prefix}{index}-{part}"
            self._store(name, items, f"{kind} chunk {index}, {part}")
            store[name] = len(items)
        chunks = {**self.state["chunks"], kind: held + 1}
        self.save(chunks=chunks, counts=counts, store=store, disk_bytes=self.server.store.folder_bytes())
        self.server.counts = counts
        self.server.validation_blocks = chunks["validation"]
        return {"chunks": chunks}

    def put_weights(self, iteration: int, state: dict) -> dict:
        """Fresh weights for `iteration`; weights for an iteration already past are ignored (a late retry)."""
        if self.state["status"] != "open":
            raise Conflict(f"job {self.id} is {self.state['status']}")
        now = self.state["iteration"]
        if iteration < now:
            return {"iteration": now, "applied": False}
        if iteration > now:
            raise Conflict(f"weights for iteration {iteration} arrived at iteration {now}")
        if not self.state["chunks"]["train"]:
            raise Conflict("no training chunk has arrived: upload the data before the weights")
        pairs = self.layout.pairs
        needed = {"u": {"forward", "update"}, "w": {"update"}}
        names = set(state) if self.state["weights"] else {"u", "w"}  # a refresh may send w alone; the first, both
        if not state or not names <= set(state) or any(not needed[n] <= set(state[n]) for n in state):
            raise RequestError(
                "weights must hold u (forward and update forms) and w (update form); a refresh may send w alone"
            )
        wanted = {f"{n}.{f}": pairs for n, forms in state.items() for f in forms}
        self._check_parts({f"{n}.{f}": v for n, forms in state.items() for f, v in forms.items()}, wanted, "weights")
        server = self.server
        try:
            server.receive_weights(state)
        except EncvitError as exc:
            raise RequestError(f"weights: {exc}") from None
        self._replace_weights(self._save_weights(server, f"weights-{iteration}-fresh"), fresh=True)
        return {"iteration": iteration, "applied": True, "needs_refresh": server.needs_refresh()}

    def get_weights(self, iteration: int, names: list[str]) -> dict[str, list[bytes]]:
        """The weights in the update form at `iteration` (exhausted after a step, or fresh if the client asks again)."""
        self._at(iteration)
        if not set(names) <= {"u", "w"} or not names:
            raise RequestError(f"names must be u, w or both, got {names}")
        return self.server.send_weights(tuple(names))

    def _at(self, iteration: int) -> None:
        if self.state["status"] != "open":
            raise Conflict(f"job {self.id} is {self.state['status']}")
        if not self.state["weights"]:
            raise Conflict(f"job {self.id} has no weights yet")
        if iteration != self.state["iteration"]:
            raise Conflict(f"iteration {iteration} asked for, the job is at iteration {self.state['iteration']}")

    def step(self, iteration: int, blocks: list[int], lr: float) -> dict:
        """Step `iteration`; the same step asked again after it was taken gets the same answer."""
        done = self.state.get("last_step")
        if self.state["iteration"] == iteration + 1 and done == {"iteration": iteration, "blocks": blocks, "lr": lr}:
            return {"iteration": iteration + 1, "needs_refresh": self.server.needs_refresh(), "repeated": True}
        self._at(iteration)
        held = self.state["chunks"]["train"]
        if not blocks or len(set(blocks)) != len(blocks) or not all(0 <= b < held for b in blocks):
            raise RequestError(f"blocks must be distinct chunk numbers below {held}, got {blocks[:8]}")
        if not math.isfinite(lr) or lr <= 0:
            raise RequestError(f"lr must be a positive number, got {lr}")
        server = self.server
        if server.needs_refresh():
            raise Conflict(f"the weights of iteration {iteration} have no levels left: refresh them first")
        server.step(blocks, lr)
        name = self._save_weights(server, f"weights-{iteration + 1}")
        self._replace_weights(
            name,
            iteration=iteration + 1,
            fresh=False,
            last_step={"iteration": iteration, "blocks": blocks, "lr": lr},
            operations=dict(server.engine.counts),
        )
        return {"iteration": iteration + 1, "needs_refresh": server.needs_refresh(), "repeated": False}

    def validation_logits(self, iteration: int) -> list[list[bytes]]:
        """The validation logits under the weights refreshed for `iteration`, computed once and kept."""
        name = f"logits-{iteration}"
        folder = self.folder / name
        if self.state.get("logits") == name:
            return [
                [p.read_bytes() for p in sorted(block.iterdir(), key=lambda p: int(p.stem))]
                for block in sorted(folder.iterdir(), key=lambda p: int(p.name))
            ]
        self._at(iteration)
        server = self.server
        if "forward" not in server.weights.get("w", {}):
            raise Conflict(f"the weights of iteration {iteration} were not refreshed for validation")
        logits = server.validation_logits()
        partial = folder.with_name(name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for b, block in enumerate(logits):
            for k, data in enumerate(block):
                write_bytes(partial / str(b) / f"{k}.ct", data)
        partial.mkdir(exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        previous = self.state.get("logits")
        self.save(logits=name, validation_seconds=server.validation_seconds)
        if previous and previous != name:
            shutil.rmtree(self.folder / previous, ignore_errors=True)
        return logits

    def finish(self, keep: bool) -> dict:
        """The client is done: delete the ciphertexts unless `keep` (or the job asked to keep them)."""
        keep = keep or self.state["keep"]
        if self.state["status"] == "open" and not keep:
            self.unload()
            for part in self.folder.iterdir():
                if part.name != JOB_FILE:
                    shutil.rmtree(part) if part.is_dir() else part.unlink()
            self.save(status="finished", weights=None, logits=None, store={}, disk_bytes=0)
        elif self.state["status"] == "open":
            self.save(status="kept")
        return self.status()


class JobStore:
    """Every job under DATA/jobs, each owned by the token that made it; a few stay loaded in memory."""

    def __init__(self, data: Path, threads: int = 1, max_jobs: int = 4):
        self.root = data / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.threads, self.max_jobs = threads, max_jobs
        self._jobs: dict[str, Job] = {}
        self._loaded: OrderedDict[str, Job] = OrderedDict()  # most recently asked for last
        self._lock = threading.Lock()
        for left in [*self.root.glob("*.partial"), *self.root.glob("*.deleted")]:  # what a kill cut short
            shutil.rmtree(left, ignore_errors=True)

    def _job_folders(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_dir() and (p / JOB_FILE).exists()]

    def owned(self, owner: str) -> list[dict]:
        """The states of `owner`'s jobs."""
        states = [json.loads((p / JOB_FILE).read_text()) for p in self._job_folders()]
        return [s for s in states if secrets.compare_digest(s["owner"], owner)]

    def get(self, job_id: str, owner: str) -> Job:
        """`owner`'s job `job_id`; another owner's job is NotFound, as if it did not exist."""
        if not (len(job_id) == 16 and all(c in "0123456789abcdef" for c in job_id)):
            raise NotFound(f"no job {job_id[:40]!r}")
        with self._lock:
            job = self._jobs.get(job_id)  # one Job object per job, so that its lock is the only one
            if job is None:
                folder = self.root / job_id
                if not (folder / JOB_FILE).exists():
                    raise NotFound(f"no job {job_id}")
                job = self._jobs[job_id] = Job(folder, self.threads)
            self._loaded.pop(job_id, None)
            self._loaded[job_id] = job
            for other_id, other in list(self._loaded.items())[:-LOADED_JOBS]:  # keys stay loaded for a few only
                if other.lock.acquire(blocking=False):  # never under a request that is using them
                    try:
                        other.unload()
                        del self._loaded[other_id]
                    finally:
                        other.lock.release()
        if not secrets.compare_digest(job.state["owner"], owner):
            raise NotFound(f"no job {job_id}")
        return job

    def create(self, owner: str, settings: dict, public: bytes, keep: bool) -> Job:
        """A new job of `owner`'s from its settings and public keys (checked; nothing is stored if refused)."""
        checked = _check_settings(settings)
        open_jobs = [s for s in self.owned(owner) if s["status"] == "open"]
        if len(open_jobs) >= self.max_jobs:
            raise TooMany(f"this token holds {len(open_jobs)} open jobs, the server's --max-jobs {self.max_jobs}")
        public_context_checked(public, checked.preset)
        job_id = secrets.token_hex(8)
        partial = self.root / f"{job_id}.partial"
        partial.mkdir()
        try:
            write_bytes(partial / PUBLIC_FILE, public, mode=0o600)
            state = {
                "id": job_id,
                "owner": owner,
                "created": time.time(),
                "settings": checked.as_dict(),
                "params": params_hash(PRESETS[checked.preset]),
                "keep": bool(keep),
                "status": "open",
                "chunks": {"train": 0, "validation": 0},
                "counts": [],
                "store": {},
                "iteration": 0,
                "weights": None,
                "fresh": False,
                "logits": None,
                "operations": {},
                "disk_bytes": len(public),
                "validation_seconds": 0.0,
            }
            write_text(partial / JOB_FILE, json.dumps(state, indent=1))
            partial.rename(self.root / job_id)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return self.get(job_id, owner)

    def delete(self, job_id: str, owner: str) -> None:
        """Remove `owner`'s job and everything it stored."""
        job = self.get(job_id, owner)
        with job.lock:
            with self._lock:
                self._jobs.pop(job_id, None)
                self._loaded.pop(job_id, None)
            job.unload()
            job.state = {**job.state, "status": "deleted"}  # a request that found it before now gets 409
            trash = job.folder.with_name(job.folder.name + ".deleted")
            with contextlib.suppress(FileNotFoundError):
                job.folder.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
