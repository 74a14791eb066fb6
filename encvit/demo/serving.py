"""What every visitor of the demo app shares on one server: one queue for the heavy work, and its results kept.

In a class, twenty browsers ask at once. Deriving a passphrase's key (scrypt, 16 MiB of memory each) and running
the models go through one `Turns` queue, first come first served, one visitor at a time by default, so that twenty
sessions do not thrash two cores; a waiting visitor is told how many are ahead. Keys and predictions are kept
(bounded, least recently used out first), so an unchanged image is never classified twice with the same key and
adapter, whoever asks. Every page of the app (``app/``) uses the process's one `Serving`, `shared()`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import os
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import TypeVar

from cachetools import LRUCache
from torch import nn

from ..cipher.key import Key
from ..models.adapters import AdapterInfo
from . import home
from .home import DemoImage, is_encrypted

T = TypeVar("T")
Predictions = dict[str, list[list[tuple[str, float]]]]  # run -> per image, top-k (class, probability)


# Streamlit's "Running..." status widget redraws itself for as long as a page runs: 3.3% of a core per waiting page
# against 1.2% without it (benchmarks/bench_running_widget.py), in every browser of a class waiting in the queue.
# The queue's own note tells a waiting visitor where they are.
QUIET_STATUS_CSS = "<style>[data-testid='stStatusWidget']{display:none}</style>"


def inference_threads(cores: int | None = None) -> int:
    """Torch threads for one visitor's small batch: one per four cores, at most four.

    The queue runs one batch at a time while the rest of the machine draws pages (and, in a class, browsers); on a
    busy 2-core machine a second thread's synchronisation once made a page run 70x slower (5 s instead of 0.07 s).
    """
    return max(1, min(4, (cores or os.cpu_count() or 1) // 4))


def freeze_heap() -> None:
    """Hand every object alive now (the loaded models, torch, pandas) to the collector's permanent generation.

    Streamlit collects garbage after every page run (``runner.postScriptGC``); with the models loaded that scanned
    some 450,000 objects, 0.23 s of a page run's CPU, for objects that live as long as the server. Loading other
    models calls this again, after a collection that frees the ones no longer cached.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Kept:
    """A bounded mapping, least recently used out first (cachetools' LRUCache), shared safely between sessions'
    threads: the cache itself is not thread-safe, so every access holds a lock."""

    def __init__(self, size: int):
        self._items = LRUCache(maxsize=size)
        self._lock = threading.Lock()

    def get(self, key: Hashable):
        """The value kept for `key` (now the most recently used), or None."""
        with self._lock:
            return self._items.get(key)

    def put(self, key: Hashable, value) -> None:
        """Keep `value` for `key`, dropping the least recently used beyond `size`."""
        with self._lock:
            self._items[key] = value

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class Turns:
    """First come, first served: `slots` holders at a time; the others wait and are told how many are ahead.

    The waiting callback runs outside the lock, at least every `poll` seconds: what it raises (Streamlit stops a
    run that way when the visitor changes something) gives the place up.
    """

    def __init__(self, slots: int = 1, poll: float = 0.5):
        if slots < 1:
            raise ValueError(f"a queue needs at least one slot, got {slots}")
        self.slots, self.poll = slots, poll
        self._changed = threading.Condition()
        self._waiting: list[int] = []  # tickets in the order they came
        self._serving = 0
        self._tickets = 0

    def ahead(self) -> int:
        """How many a newcomer would find ahead: those being served and those waiting."""
        with self._changed:
            return self._serving + len(self._waiting)

    @contextlib.contextmanager
    def turn(self, waiting: Callable[[int], None] | None = None) -> Iterator[None]:
        """Wait for a slot (calling `waiting(ahead)` meanwhile), hold it for the block, then pass it on."""
        with self._changed:
            ticket, self._tickets = self._tickets, self._tickets + 1
            self._waiting.append(ticket)
        started = False
        try:
            while True:
                with self._changed:
                    position = self._waiting.index(ticket)
                    if position < self.slots - self._serving:
                        self._waiting.remove(ticket)
                        self._serving += 1
                        started = True
                        break
                    ahead = position + self._serving
                if waiting is not None:
                    waiting(ahead)
                with self._changed:
                    if self._waiting.index(ticket) + self._serving == ahead:
                        self._changed.wait(self.poll)
            yield
        finally:
            with self._changed:
                if started:
                    self._serving -= 1
                else:
                    self._waiting.remove(ticket)
                self._changed.notify_all()


def passphrase_digest(passphrase: str) -> str:
    """What the kept keys are filed under: a hash, so that no passphrase is held as typed."""
    return hashlib.sha256(passphrase.encode()).hexdigest()


class Serving:
    """One server's queue (`turns`) and what it keeps: results of named work (keys, attacks) and top-k predictions
    by (adapter, key, image)."""

    def __init__(self, slots: int = 1, kept: int = 256, predictions: int = 16384):
        self.turns = Turns(slots)
        self.kept = Kept(kept)
        self.predictions = Kept(predictions)

    def once(self, name: Hashable, work: Callable[[], T], waiting: Callable[[int], None] | None = None) -> T:
        """`work()`'s result, computed in the queue once per `name` and kept; what it raises is not kept."""
        value = self.kept.get(name)
        if value is None:
            with self.turns.turn(waiting):
                value = self.kept.get(name)  # another visitor may have asked for it while this one waited
                if value is None:
                    value = work()
                    self.kept.put(name, value)
        return value

    def key(self, passphrase: str, block_size: int, channels: int, waiting: Callable[[int], None] | None = None) -> Key:
        """The key of a passphrase, derived once (in the queue) and kept."""
        name = ("key", passphrase_digest(passphrase), block_size, channels)
        return self.once(name, lambda: Key.generate(block_size, channels, passphrase=passphrase), waiting)

    def classify(
        self,
        models: Mapping[str, tuple[nn.Module, AdapterInfo]],
        adapters: Mapping[str, str],
        images: list[DemoImage],
        key: Key,
        top_k: int = 3,
        waiting: Callable[[int], None] | None = None,
    ) -> Predictions:
        """Top-k per run and image as `home.classify`, from what is kept; the rest in the queue, one batch per model.

        `adapters` names each run's adapter file by a hash of its bytes (`adapter_digest`), so that a retrained
        adapter is never answered with another's predictions."""
        found = self._lookup(models, adapters, images, key, top_k)
        if any(None in per_image for per_image in found.values()):
            with self.turns.turn(waiting):
                found = self._lookup(models, adapters, images, key, top_k)  # others may have asked meanwhile
                for name, per_image in found.items():
                    missing = [i for i, top in enumerate(per_image) if top is None]
                    if not missing:
                        continue
                    batch = [images[i] for i in missing]  # one batch through the model
                    tops = home.classify({name: models[name]}, batch, key, top_k)[name]
                    for i, top in zip(missing, tops, strict=True):
                        per_image[i] = top
                        self.predictions.put(self._name(models[name][1], adapters[name], images[i], key, top_k), top)
        return found

    def _lookup(self, models, adapters, images, key, top_k) -> dict[str, list]:
        return {
            name: [self.predictions.get(self._name(info, adapters[name], image, key, top_k)) for image in images]
            for name, (_, info) in models.items()
        }

    @staticmethod
    def _name(info: AdapterInfo, adapter: str, image: DemoImage, key: Key, top_k: int) -> tuple:
        return adapter, key.fingerprint if is_encrypted(info) else "plain", image.digest, top_k


@functools.cache
def shared() -> Serving:
    """The one `Serving` of this process: every page and session of the app uses it."""
    return Serving()


def adapter_digest(path: str | os.PathLike) -> str:
    """A short SHA-256 of an adapter file's bytes: what names its predictions among those kept."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
