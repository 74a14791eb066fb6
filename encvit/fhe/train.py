"""The BlindTuner protocol top to bottom: keys, upload, encrypted epochs with refreshes, decryption.

Client and server run in one process but exchange only bytes, through a `Wire` that counts them. The
numpy reference (`train_reference`) runs the same schedule and arithmetic without encryption.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm.auto import tqdm

from . import ckks
from .client import Client
from .head import FeatureScaler, FeatureSplits, Schedule, accuracy, cross_entropy, momentum_ratio, one_hot
from .packing import Layout, choose_layout
from .plain import train_plain
from .server import LEVELS_PER_ITERATION, Server
from .softmax import DEFAULT_RADIUS, ExactSoftmax, PolySoftmax
from ..errors import ConfigError

# HETAL (Lee et al., ICML 2023), Table 3: seconds per iteration with bootstrapping at ring degree 2^16, on
# their hardware (a GPU); quoted for scale, not measured here.
HETAL_SECONDS_PER_ITERATION = (4.29, 15.72)


@dataclass
class FHEConfig:
    """One encrypted head training run: the defaults of `encvit fhe-train`, saved as config.json."""

    backbone: str = "encvit-tiny"
    dataset: str = "mnist5k"
    epochs: int = 5
    batch_size: int = 1024  # HETAL's batch for MNIST
    lr: float = 8.0  # best of 4, 6, 8 on mnist5k validation (5 epochs, 2 seeds); 16 diverges
    momentum: float = 0.9
    softmax_radius: float = DEFAULT_RADIUS
    preset: str = ckks.DEFAULT_PRESET
    limit: int | None = None
    seed: int = 0
    pretrained: bool = True

    def check(self) -> "FHEConfig":
        """Raise ConfigError on values that cannot work."""
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be at least 1, got {self.limit}")
        momentum_ratio(self.momentum)
        params = ckks.get_params(self.preset)
        if params.levels < LEVELS_PER_ITERATION:
            raise ConfigError(f"CKKS preset {self.preset} has {params.levels} levels; an iteration needs "
                              f"{LEVELS_PER_ITERATION}")
        if not 1 <= self.batch_size <= params.slots:
            raise ConfigError(f"batch size {self.batch_size} must be between 1 and the {params.slots} slots of a "
                              f"ciphertext at ring degree {params.poly_modulus_degree} (a batch's samples share "
                              f"one ciphertext per feature group)")
        return self


@dataclass
class HeadRun:
    """A trained head on scaled features, its scaler, one metrics row per epoch, and protocol figures."""

    weights: np.ndarray
    scaler: FeatureScaler
    rows: list[dict]
    stats: dict = field(default_factory=dict)

    def raw_head(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) for raw backbone features."""
        return self.scaler.fold(self.weights)


class Wire:
    """Bytes crossing between client and server, counted by direction and kind of message."""

    def __init__(self):
        self.bytes: Counter = Counter()

    def send(self, direction: str, kind: str, payload):
        """Count `payload` (bytes, or lists and dicts of them) and hand it over unchanged."""
        self.bytes[(direction, kind)] += _size(payload)
        return payload

    def summary(self) -> dict:
        """Bytes per direction, per kind and in total."""
        out = {}
        for (direction, kind), size in sorted(self.bytes.items()):
            out.setdefault(direction, {})[kind] = size
        for direction in list(out):
            out[direction]["total"] = sum(out[direction].values())
        return out


def _size(payload) -> int:
    if isinstance(payload, (bytes, bytearray)):
        return len(payload)
    if isinstance(payload, dict):
        return sum(_size(v) for v in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(_size(v) for v in payload)
    return 0


@dataclass
class Setup:
    """What every trainer shares: scaled data, layout, schedule, polynomial and CKKS parameters."""

    scaler: FeatureScaler
    x: np.ndarray
    y: np.ndarray
    layout: Layout
    schedule: Schedule
    poly: PolySoftmax
    params: ckks.CKKSParams

    def evaluate(self, features: FeatureSplits):
        """A function weights -> {train_loss, val_acc, test_acc} computed by the client in plaintext."""
        val = (self.scaler.transform(features.val[0]), features.val[1])
        test = (self.scaler.transform(features.test[0]), features.test[1])
        labels = self.y.argmax(1)
        return lambda w: {"train_loss": cross_entropy(w, self.x, labels), "val_acc": accuracy(w, *val),
                          "test_acc": accuracy(w, *test)}


def setup(features: FeatureSplits, config: FHEConfig) -> Setup:
    """Scale the training features, choose the packed layout and the block schedule, fit the polynomial."""
    config.check()
    params = ckks.get_params(config.preset)
    num_classes = len(features.classes)
    scaler = FeatureScaler.fit(features.train[0])
    x = scaler.transform(features.train[0])
    layout = choose_layout(params.slots, x.shape[1], num_classes, config.batch_size)
    schedule = Schedule.make(len(x), min(layout.block, config.batch_size), config.batch_size, config.seed)
    return Setup(scaler, x, one_hot(features.train[1], num_classes), layout, schedule,
                 PolySoftmax.fit(num_classes, config.softmax_radius), params)


def train_reference(features: FeatureSplits, config: FHEConfig, exact: bool = False, on_epoch=None) -> HeadRun:
    """The numpy trainer on the same schedule, polynomial and hyperparameters (`exact`: with the true softmax)."""
    s = setup(features, config)
    softmax = ExactSoftmax() if exact else s.poly
    weights, rows = train_plain(s.x, s.y, softmax, s.schedule, config.epochs, config.lr, config.momentum,
                                evaluate=s.evaluate(features), on_epoch=on_epoch)
    return HeadRun(weights, s.scaler, rows)


class Protocol:
    """Client, server and the wire between them, for one training set: keys, upload, then epochs."""

    def __init__(self, setup: Setup, config: FHEConfig):
        self.setup, self.config = setup, config
        self.wire, self.timings = Wire(), Counter()
        self.client: Client | None = None
        self.server: Server | None = None

    def exchange_keys(self) -> None:
        """The client makes every key; the server receives parameters and evaluation keys only."""
        start = time.perf_counter()
        self.client = Client(self.setup.params, self.setup.layout)
        public = self.wire.send("client_to_server", "public_keys", self.client.public_bytes())
        self.timings["keygen_seconds"] += time.perf_counter() - start
        start = time.perf_counter()
        s, c = self.setup, self.config
        self.server = Server(public, s.layout, s.poly, c.lr, c.momentum)
        self.timings["server_load_seconds"] += time.perf_counter() - start

    def upload(self) -> None:
        """The client packs and encrypts its training blocks once, and the initial (zero) weights."""
        s = self.setup
        start = time.perf_counter()
        blocks = self.wire.send("client_to_server", "features_and_labels",
                                self.client.encrypt_blocks(s.x, s.y, s.schedule))
        initial = self.client.encrypt_weights(np.zeros((s.y.shape[1], s.x.shape[1])))
        state = self.wire.send("client_to_server", "initial_weights", {"u": initial, "w": initial})
        self.timings["client_encrypt_seconds"] += time.perf_counter() - start
        start = time.perf_counter()
        self.server.receive_blocks(blocks)
        self.server.receive_weights(state)
        self.timings["server_load_seconds"] += time.perf_counter() - start

    def refresh(self, payload: dict) -> dict:
        """The round trip that replaces bootstrapping: the client decrypts and re-encrypts the weights."""
        fresh = self.client.refresh(self.wire.send("server_to_client", "refresh", payload))
        return self.wire.send("client_to_server", "refresh", fresh)

    def decrypted_weights(self) -> np.ndarray:
        """The server sends its current weights; the client decrypts them (K x (d + 1), scaled features)."""
        sent = self.wire.send("server_to_client", "evaluation", self.server.send_weights(("w",)))
        return self.client.decrypt_weights(sent["w"])

    def train(self, features: FeatureSplits, progress: bool = True, on_epoch=None) -> HeadRun:
        """The server's epochs of Nesterov steps on ciphertexts; the client evaluates after each epoch."""
        s, config, server = self.setup, self.config, self.server
        evaluate = s.evaluate(features)
        batches = [s.schedule.batches(epoch) for epoch in range(config.epochs)]
        bar = tqdm(total=sum(map(len, batches)), desc="encrypted head", disable=not progress)
        rows, iteration_seconds = [], []
        for epoch, epoch_batches in enumerate(batches):
            epoch_start, refreshes, refresh_seconds = time.perf_counter(), server.refreshes, server.refresh_seconds
            for block_ids in epoch_batches:
                step_start = time.perf_counter()
                server.step(block_ids, self.refresh)
                iteration_seconds.append(time.perf_counter() - step_start)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, refreshes=server.refreshes, s_per_iter=f"{iteration_seconds[-1]:.1f}")
            seconds = time.perf_counter() - epoch_start
            weights = self.decrypted_weights()
            row = {"epoch": epoch + 1, **evaluate(weights), "seconds": seconds,
                   "refreshes": server.refreshes - refreshes,
                   "refresh_seconds": server.refresh_seconds - refresh_seconds}
            rows.append(row)
            if on_epoch:
                on_epoch(row)
        bar.close()
        stats = {"ckks": s.params.describe(), "preset": config.preset, "layout": s.layout.describe(),
                 "softmax": s.poly.describe(), "levels_per_iteration": LEVELS_PER_ITERATION,
                 "iterations": len(iteration_seconds), "seconds_per_iteration": float(np.mean(iteration_seconds)),
                 "effective_batch_size": s.schedule.blocks_per_batch * len(s.schedule.blocks[0]),
                 "refreshes": server.refreshes, "refresh_seconds": round(server.refresh_seconds, 3),
                 "operations": dict(server.engine.counts), "bytes": self.wire.summary(),
                 "ciphertexts_uploaded": len(s.schedule.blocks) * (s.layout.groups + 1),
                 "timings": {k: round(v, 3) for k, v in self.timings.items()},
                 "hetal_seconds_per_iteration": HETAL_SECONDS_PER_ITERATION, "config": asdict(config)}
        return HeadRun(weights, s.scaler, rows, stats)


def train_encrypted(features: FeatureSplits, config: FHEConfig, progress: bool = True, on_epoch=None) -> HeadRun:
    """Run the protocol: the server trains on ciphertexts, the client refreshes, decrypts and evaluates."""
    protocol = Protocol(setup(features, config), config)
    protocol.exchange_keys()
    protocol.upload()
    return protocol.train(features, progress, on_epoch)
