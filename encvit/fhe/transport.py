"""The message layer between the client and the server: one protocol, carried in memory or over HTTP.

The client (``encvit.fhe.train.Protocol``) talks to the server only through a ``Transport``: every message is bytes
(ciphertexts) or a few numbers, and every byte is counted by direction and kind. ``InMemory`` hands the messages to
a ``Server`` object in this process (the embedded default); ``encvit.fhe.remote.Http`` sends them to `encvit
fhe-serve` in another process. Messages that change the server's state name the iteration they belong to, so that a
repeated message (a retry after a lost answer) is recognised and never applied twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from .packing import Layout, choose_layout
from .params import PRESETS
from .softmax import PolySoftmax


@dataclass(frozen=True)
class JobSettings:
    """What the server needs besides the public keys to train one head: it derives the layout and the polynomial."""

    preset: str
    features: int
    classes: int
    batch_size: int
    softmax_radius: float
    momentum: float

    def layout(self) -> Layout:
        """The packed layout the client chose (the same function of the same numbers)."""
        return choose_layout(PRESETS[self.preset].slots, self.features, self.classes, self.batch_size)

    def poly(self) -> PolySoftmax:
        """The polynomial softmax the client fitted."""
        return PolySoftmax.fit(self.classes, self.softmax_radius)

    def as_dict(self) -> dict:
        return asdict(self)


def payload_size(payload) -> int:
    """Bytes in `payload`: bytes, or lists, tuples and dicts of them."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return len(payload)
    if isinstance(payload, dict):
        return sum(payload_size(v) for v in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(payload_size(v) for v in payload)
    return 0


class Transport:
    """The client's end of the wire: the server's messages, with the bytes of each counted by direction and kind."""

    def __init__(self):
        self.bytes: Counter = Counter()

    def count(self, direction: str, kind: str, payload):
        """Count `payload` as sent in `direction` ("client_to_server" or "server_to_client"); return it unchanged."""
        self.bytes[(direction, kind)] += payload_size(payload)
        return payload

    def summary(self) -> dict:
        """Bytes per direction, per kind and in total."""
        out = {}
        for (direction, kind), size in sorted(self.bytes.items()):
            out.setdefault(direction, {})[kind] = size
        for direction in list(out):
            out[direction]["total"] = sum(out[direction].values())
        return out

    # ---- the messages (each transport carries them its way) -------------------------------------------------
    def open_job(self, public: bytes, settings: JobSettings) -> None:
        """Start a job on the server with the client's public keys (never its secret key)."""
        raise NotImplementedError

    def uploaded(self) -> tuple[int, int]:
        """How many training and validation chunks the server holds (an interrupted upload resumes after them)."""
        raise NotImplementedError

    def put_block(self, index: int, block: dict) -> None:
        """Training chunk `index`: both packings of its rows, its labels and its sample count."""
        raise NotImplementedError

    def put_validation(self, index: int, block: dict) -> None:
        """Validation chunk `index`: its rows packed for the forward pass."""
        raise NotImplementedError

    def put_weights(self, iteration: int, state: dict[str, dict[str, list[bytes]]], initial: bool = False) -> None:
        """Fresh encrypted weights for `iteration` (the `initial` zeros at 0, then every refresh)."""
        raise NotImplementedError

    def get_weights(self, iteration: int, names=("u", "w")) -> dict[str, list[bytes]]:
        """The server's exhausted weights at `iteration`, in the update form, for a refresh."""
        raise NotImplementedError

    def needs_refresh(self) -> bool:
        """Whether the weights lack the levels for the next step."""
        raise NotImplementedError

    def step(self, iteration: int, block_ids: list[int], lr: float) -> None:
        """Nesterov step number `iteration` on the given chunks; a repeated step is not taken twice."""
        raise NotImplementedError

    def validation_logits(self, iteration: int) -> list[list[bytes]]:
        """The encrypted validation logits under the weights refreshed at `iteration`."""
        raise NotImplementedError

    def server_stats(self) -> dict:
        """What the server counted: operations, bytes on its disk, seconds spent on validation."""
        raise NotImplementedError

    def finish(self, keep: bool = False) -> None:
        """The job is over: the server deletes its ciphertexts unless `keep`."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what this end holds (connections; the in-memory server's files)."""


class InMemory(Transport):
    """Client and server in one process: each message is a call on a ``Server`` object, bytes counted as sent."""

    def __init__(self, threads: int = 1):
        super().__init__()
        self.threads = threads
        self.server = None  # made by open_job: the notebooks and benchmarks look inside it

    def open_job(self, public: bytes, settings: JobSettings) -> None:
        from .server import Server

        self.count("client_to_server", "public_keys", public)
        self.server = Server(public, settings.layout(), settings.poly(), settings.momentum, self.threads)

    def uploaded(self) -> tuple[int, int]:
        return len(self.server.counts), self.server.validation_blocks

    def put_block(self, index: int, block: dict) -> None:
        self.server.receive_block(index, self.count("client_to_server", "features_and_labels", block))

    def put_validation(self, index: int, block: dict) -> None:
        self.server.receive_validation(index, self.count("client_to_server", "validation_features", block))

    def put_weights(self, iteration: int, state, initial: bool = False) -> None:
        self.server.receive_weights(self.count("client_to_server", "initial_weights" if initial else "refresh", state))

    def get_weights(self, iteration: int, names=("u", "w")):
        return self.count("server_to_client", "refresh", self.server.send_weights(names))

    def needs_refresh(self) -> bool:
        return self.server.needs_refresh()

    def step(self, iteration: int, block_ids: list[int], lr: float) -> None:
        self.server.step(block_ids, lr)

    def validation_logits(self, iteration: int):
        return self.count("server_to_client", "validation_logits", self.server.validation_logits())

    def server_stats(self) -> dict:
        return {
            "operations": dict(self.server.engine.counts),
            "server_disk_bytes": self.server.store.bytes_on_disk,
            "server_validation_seconds": self.server.validation_seconds,
        }

    def finish(self, keep: bool = False) -> None:
        """Nothing to tell: the server lives and ends with this process."""

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
