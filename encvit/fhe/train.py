"""The BlindTuner protocol top to bottom: keys, upload, encrypted epochs with refreshes and encrypted
validation, early stopping, decryption.

Client and server run in one process but exchange only bytes, through a `Wire` that counts them. The numpy
twin (`train_reference`) runs the same schedule, arithmetic and stopping rule without encryption.

Early stopping as in HETAL: the client uploads its validation features encrypted, once. At the end of every
epoch the weights are refreshed (TenSEAL cannot bootstrap, and with the default parameters every iteration
needs a refresh anyway), the server computes the validation logits with the fresh weights (one level) and
sends them with its next message, the next refresh: no extra round trip. The client decrypts them, scores the
epoch and answers with its decision (stop, or go on), which thus takes effect one iteration late; the weights
of the best epoch are the ones it decrypted at that epoch's refresh. After the last epoch one final refresh and
one message of logits settle the last epoch.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..common.errors import ConfigError
from . import ckks
from .client import Client
from .config import FHEConfig
from .head import (
    EarlyStopping,
    FeatureScaler,
    FeatureSplits,
    Schedule,
    accuracy,
    cross_entropy,
    learning_rate,
    one_hot,
    validation_metrics,
)
from .packing import Layout, choose_layout
from .params import LEVELS_PER_ITERATION
from .plain import train_plain
from .server import Server
from .softmax import ExactSoftmax, PolySoftmax

# HETAL (Lee et al., ICML 2023), Table 3: seconds per iteration with bootstrapping at ring degree 2^16, on
# their hardware (a GPU); and the total training time per dataset. Quoted for scale, not measured here.
HETAL_SECONDS_PER_ITERATION = (4.29, 15.72)
HETAL_SECONDS_PER_RUN = (567, 3442)


@dataclass
class HeadRun:
    """The head of the best epoch on scaled features, its scaler, one metrics row per epoch, protocol figures."""

    weights: np.ndarray
    scaler: FeatureScaler
    rows: list[dict]
    stats: dict = field(default_factory=dict)

    def raw_head(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) for raw backbone features."""
        return self.scaler.fold(self.weights)

    @property
    def best(self) -> dict:
        """The row of the epoch whose weights were kept."""
        return next(r for r in self.rows if r["epoch"] == self.best_epoch)

    @property
    def best_epoch(self) -> int:
        """The epoch with the best validation score (the weights returned)."""
        return max((r for r in self.rows if r["best"]), key=lambda r: r["epoch"])["epoch"]


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
    """What every trainer shares: scaled data, layout, schedule, polynomial, learning rates and CKKS parameters."""

    scaler: FeatureScaler
    x: np.ndarray
    y: np.ndarray
    val_x: np.ndarray
    val_labels: np.ndarray
    layout: Layout
    schedule: Schedule
    poly: PolySoftmax
    params: ckks.CKKSParams
    config: FHEConfig

    @property
    def iterations_per_epoch(self) -> int:
        """Nesterov steps per epoch."""
        return len(self.schedule.batches(0))

    def learning_rate(self, iteration: int) -> float:
        """The step size of `iteration` (0-based) under the config's schedule over the most epochs allowed."""
        c = self.config
        return learning_rate(c.lr, c.lr_schedule, iteration, c.epochs * self.iterations_per_epoch)

    def evaluate(self, features: FeatureSplits):
        """A function weights -> {train_loss, test_acc}: what the client reports per epoch (never decides on)."""
        test = (self.scaler.transform(features.test[0]), features.test[1])
        labels = self.y.argmax(1)
        return lambda w: {"train_loss": cross_entropy(w, self.x, labels), "test_acc": accuracy(w, *test)}

    def stopping(self) -> EarlyStopping:
        """A fresh early-stopping rule with the config's patience and score."""
        return EarlyStopping(self.config.patience, self.config.stop_on)


def setup(features: FeatureSplits, config: FHEConfig) -> Setup:
    """Scale the features, choose the packed layout and the block schedule, fit the polynomial."""
    config.check()
    params = ckks.get_params(config.preset)
    num_classes = len(features.classes)
    if config.components == "auto":
        raise ConfigError("components must be resolved before setup (encvit.fhe.components.choose)")
    k = None if config.components == "all" or int(config.components) >= features.dim else int(config.components)
    scaler = FeatureScaler.fit(features.train[0], config.whiten_ridge, k)
    x = scaler.transform(features.train[0])
    layout = choose_layout(params.slots, x.shape[1], num_classes, config.batch_size)
    schedule = Schedule.make(len(x), min(layout.block, config.batch_size), config.batch_size, config.seed)
    return Setup(
        scaler,
        x,
        one_hot(features.train[1], num_classes),
        scaler.transform(features.val[0]),
        np.asarray(features.val[1]),
        layout,
        schedule,
        PolySoftmax.fit(num_classes, config.softmax_radius),
        params,
        config,
    )


def train_reference(features: FeatureSplits, config: FHEConfig, exact: bool = False, on_epoch=None) -> HeadRun:
    """The numpy twin on the same schedule, polynomial, hyperparameters and stopping (`exact`: true softmax)."""
    s = setup(features, config)
    softmax = ExactSoftmax() if exact else s.poly
    weights, rows = train_plain(
        s.x,
        s.y,
        softmax,
        s.schedule,
        config.epochs,
        s.learning_rate,
        config.momentum,
        (s.val_x, s.val_labels),
        s.stopping(),
        evaluate=s.evaluate(features),
        on_epoch=on_epoch,
    )
    return HeadRun(weights, s.scaler, rows)


class Protocol:
    """Client, server and the wire between them, for one training set: keys, upload, then epochs."""

    def __init__(self, setup: Setup, config: FHEConfig):
        self.setup, self.config = setup, config
        self.wire, self.timings = Wire(), Counter()
        self.client: Client | None = None
        self.server: Server | None = None
        self.refreshes = 0

    def exchange_keys(self) -> None:
        """The client makes every key; the server receives parameters and evaluation keys only."""
        start = time.perf_counter()
        self.client = Client(self.setup.params, self.setup.layout, self.config.threads)
        public = self.wire.send("client_to_server", "public_keys", self.client.public_bytes())
        self.timings["keygen_seconds"] += time.perf_counter() - start
        start = time.perf_counter()
        self.server = Server(public, self.setup.layout, self.setup.poly, self.config.momentum, self.config.threads)
        self.timings["server_load_seconds"] += time.perf_counter() - start

    def upload(self) -> None:
        """The client packs and encrypts its training blocks, its validation features and the zero weights, once.

        One block at a time: the server stores each on its disk as it arrives, so neither side holds the whole set.
        """
        s = self.setup
        for index, block in enumerate(s.schedule.blocks):
            start = time.perf_counter()
            data = self.wire.send(
                "client_to_server", "features_and_labels", self.client.encrypt_block(s.x[block], s.y[block])
            )
            self.timings["client_encrypt_seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            self.server.receive_block(index, data)
            self.timings["server_load_seconds"] += time.perf_counter() - start
        size = self.setup.layout.block
        for index, first in enumerate(range(0, len(s.val_x), size)):
            start = time.perf_counter()
            data = self.wire.send(
                "client_to_server", "validation_features", self.client.encrypt_features(s.val_x[first : first + size])
            )
            self.timings["client_encrypt_seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            self.server.receive_validation(index, data)
            self.timings["server_load_seconds"] += time.perf_counter() - start
        start = time.perf_counter()
        zero = np.zeros((s.y.shape[1], s.x.shape[1]))
        state = self.wire.send(
            "client_to_server",
            "initial_weights",
            {"u": self.client.encrypt_weights(zero), "w": self.client.encrypt_weights(zero, ("update",))},
        )
        self.timings["client_encrypt_seconds"] += time.perf_counter() - start
        self.server.receive_weights(state)

    def train(self, features: FeatureSplits, progress: bool = True, on_epoch=None) -> HeadRun:
        """Epochs of encrypted Nesterov steps with refreshes and encrypted validation, until the client says stop."""
        s, config, server = self.setup, self.config, self.server
        self._judge = _Judge(s, s.evaluate(features), on_epoch)
        bar = tqdm(total=config.epochs * s.iterations_per_epoch, desc="encrypted head", disable=not progress)
        iteration, step_seconds, stopped = 0, [], False
        pending = None  # (epoch, encrypted validation logits) not yet sent to the client
        run_start = time.perf_counter()
        for epoch in range(config.epochs):
            for index, block_ids in enumerate(s.schedule.batches(epoch)):
                lr = s.learning_rate(iteration)
                if index == 0 and epoch > 0:  # an epoch ended: refresh, then validate with the fresh weights
                    self._judge.epoch_ended(epoch)
                    stopped = self.exchange(pending, iteration, lr, finished_epoch=epoch)
                    pending = None if stopped else (epoch, server.validation_logits())
                elif server.needs_refresh():
                    stopped = self.exchange(pending, iteration, lr)
                    pending = None
                if stopped:
                    break
                start = time.perf_counter()
                server.step(block_ids, lr)
                step_seconds.append(time.perf_counter() - start)
                iteration += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, refreshes=self.refreshes, s_per_iter=f"{step_seconds[-1]:.1f}")
            if stopped:
                break
        if not stopped:
            self._judge.epoch_ended(config.epochs)
        # Settle the last epoch: fresh weights, their validation logits, the client's verdict.
        if not stopped and not self.exchange(pending, iteration, 0.0, finished_epoch=config.epochs, names=("w",)):
            logits = self.wire.send("server_to_client", "validation_logits", server.validation_logits())
            self._judge.decide(config.epochs, self.client, logits)
        bar.close()
        judge = self._judge
        wasted = iteration - judge.rows[-1]["epoch"] * s.iterations_per_epoch if stopped else 0
        stats = {
            "ckks": s.params.describe(),
            "preset": config.preset,
            "layout": s.layout.describe(),
            "softmax": s.poly.describe(),
            "levels_per_iteration": LEVELS_PER_ITERATION,
            "iterations": iteration,
            "iterations_after_last_validated_epoch": wasted,
            "seconds_per_iteration": float(np.mean(step_seconds)),
            "epochs_run": len(judge.rows),
            "best_epoch": judge.stopping.best_epoch,
            "stopped_early": stopped,
            "effective_batch_size": s.schedule.blocks_per_batch * len(s.schedule.blocks[0]),
            "refreshes": self.refreshes,
            "operations": dict(server.engine.counts),
            "bytes": self.wire.summary(),
            "server_disk_bytes": server.store.bytes_on_disk,
            "timings": {
                **{k: round(v, 3) for k, v in self.timings.items()},
                "server_validation_seconds": round(server.validation_seconds, 3),
                "client_validation_seconds": round(judge.seconds, 3),
                "training_seconds": round(time.perf_counter() - run_start, 3),
            },
            "hetal_seconds_per_iteration": HETAL_SECONDS_PER_ITERATION,
            "hetal_seconds_per_run": HETAL_SECONDS_PER_RUN,
            "config": asdict(config),
        }
        return HeadRun(judge.best_weights, s.scaler, judge.rows, stats)

    def exchange(self, pending, iteration: int, lr: float, finished_epoch: int | None = None, names=("u", "w")) -> bool:
        """One round trip: the server sends its weights (and any pending validation logits); the client judges
        the logits, re-encrypts the weights and answers with fresh weights and its decision. True: stop."""
        start = time.perf_counter()
        weights = self.wire.send("server_to_client", "refresh", self.server.send_weights(names))
        stop = False
        if pending is not None:
            epoch, logits = pending
            stop = self._judge.decide(
                epoch, self.client, self.wire.send("server_to_client", "validation_logits", logits)
            )
        self.wire.send("client_to_server", "decision", b"\x01" if stop else b"\x00")
        if not stop:
            fresh = self.wire.send(
                "client_to_server",
                "refresh",
                self.client.refresh(weights, iteration, lr, validate=finished_epoch is not None),
            )
            if finished_epoch is not None:
                self._judge.candidates[finished_epoch] = self.client.last_refreshed["w"]
            self.server.receive_weights(fresh)
            self.refreshes += 1
        self.timings["refresh_seconds"] += time.perf_counter() - start
        return stop


class _Judge:
    """The client's side of early stopping: decrypts validation logits, scores the epoch, keeps the best weights."""

    def __init__(self, setup: Setup, evaluate, on_epoch):
        self.setup, self.evaluate, self.on_epoch = setup, evaluate, on_epoch
        self.stopping = setup.stopping()
        self.candidates: dict[int, np.ndarray] = {}  # epoch -> weights the client decrypted at its last refresh
        self.best_weights = np.zeros((setup.y.shape[1], setup.x.shape[1]))
        self.rows: list[dict] = []
        self.seconds = 0.0
        self.epoch_seconds: dict[int, float] = {}
        self._epoch_start = time.perf_counter()

    def epoch_ended(self, epoch: int) -> None:
        """Note the wall time of `epoch` (its steps and refreshes)."""
        now = time.perf_counter()
        self.epoch_seconds[epoch], self._epoch_start = now - self._epoch_start, now

    def decide(self, epoch: int, client: Client, logits: list[bytes]) -> bool:
        """Score `epoch` from its encrypted validation logits; True when training should stop."""
        start = time.perf_counter()
        metrics = validation_metrics(client.decrypt_logits(logits, len(self.setup.val_labels)), self.setup.val_labels)
        is_best, stop = self.stopping.update(epoch, metrics)
        weights = self.candidates.pop(epoch)
        if is_best:
            self.best_weights = weights
        self.seconds += time.perf_counter() - start
        row = {
            "epoch": epoch,
            **metrics,
            "best": is_best,
            "seconds": self.epoch_seconds[epoch],
            **self.evaluate(weights),
        }
        self.rows.append(row)
        if self.on_epoch:
            self.on_epoch(row)
        return stop


def train_encrypted(features: FeatureSplits, config: FHEConfig, progress: bool = True, on_epoch=None) -> HeadRun:
    """Run the protocol: the server trains on ciphertexts, the client refreshes, validates and decides."""
    protocol = Protocol(setup(features, config), config)
    try:
        protocol.exchange_keys()
        protocol.upload()
        return protocol.train(features, progress, on_epoch)
    finally:
        if protocol.server is not None:
            protocol.server.close()
