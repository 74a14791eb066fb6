"""The BlindTuner protocol top to bottom: keys, upload, encrypted epochs with refreshes and encrypted
validation, early stopping, decryption.

Client and server exchange only bytes, through a transport that counts them (``encvit.fhe.transport``): in
memory to a server in this process by default, or over HTTP to `encvit fhe-serve`. The numpy twin
(`train_reference`) runs the same schedule, arithmetic and stopping rule without encryption.

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
from .softmax import ExactSoftmax, PolySoftmax
from .transport import InMemory, JobSettings, Transport

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
    """The client's side of one training run: keys, upload, then epochs, with the server behind a transport.

    The transport (``encvit.fhe.transport``) carries every message: in memory to a server in this process (the
    default), or over HTTP to `encvit fhe-serve`. The protocol is the same either way. With a `checkpoint`
    (``encvit.fhe.checkpoint``; remote runs) the client saves its keys before the server sees the job and its
    progress after every exchange and step, and a rerun takes up the job where both sides agree.
    """

    def __init__(
        self,
        setup: Setup,
        config: FHEConfig,
        transport: Transport | None = None,
        checkpoint=None,
        fingerprint: str = "",
    ):
        self.setup, self.config = setup, config
        self.wire = transport if transport is not None else InMemory(config.threads)
        self.checkpoint, self.fingerprint = checkpoint, fingerprint
        self.timings = Counter()
        self.client: Client | None = None
        self.refreshes = 0
        self.step_seconds: list[float] = []

    @property
    def server(self):
        """The server object when it runs in this process (None behind HTTP)."""
        return getattr(self.wire, "server", None)

    def settings(self) -> JobSettings:
        """What the server is told besides the keys."""
        s, c = self.setup, self.config
        return JobSettings(c.preset, s.x.shape[1], s.y.shape[1], c.batch_size, c.softmax_radius, c.momentum)

    def exchange_keys(self) -> None:
        """The client makes every key; the server receives parameters and evaluation keys only.

        A checkpointed run that already has a job takes up that job with the keys it saved."""
        saved = self.checkpoint.job() if self.checkpoint is not None else None
        start = time.perf_counter()
        if saved is not None:
            import tenseal

            context = tenseal.context_from(self.checkpoint.private_bytes())
            self.client = Client(self.setup.params, self.setup.layout, self.config.threads, context=context)
            self.timings["keygen_seconds"] += time.perf_counter() - start
            self.wire.resume(saved["job"], self.settings())
            return
        self.client = Client(self.setup.params, self.setup.layout, self.config.threads)
        public = self.client.public_bytes()
        if self.checkpoint is not None:  # the keys first: a job on the server is never left without them
            self.checkpoint.save_keys(self.client.private_bytes())
        self.timings["keygen_seconds"] += time.perf_counter() - start
        start = time.perf_counter()
        self.wire.open_job(public, self.settings())
        if self.checkpoint is not None:
            self.checkpoint.save_job(self.wire.url, self.wire.job, self.fingerprint)
        self.timings["server_load_seconds"] += time.perf_counter() - start

    def upload(self) -> None:
        """The client packs and encrypts its training blocks, its validation features and the zero weights, once.

        One block at a time: the server stores each on its disk as it arrives, so neither side holds the whole set.
        Chunks the server already holds (an upload cut off before) are not sent again.
        """
        s = self.setup
        if self.checkpoint is not None and self.checkpoint.progress() is not None:
            return  # training had started: the server holds everything
        have_train, have_validation = self.wire.uploaded()
        for index, block in enumerate(s.schedule.blocks):
            if index < have_train:
                continue
            start = time.perf_counter()
            data = self.client.encrypt_block(s.x[block], s.y[block])
            self.timings["client_encrypt_seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            self.wire.put_block(index, data)
            self.timings["server_load_seconds"] += time.perf_counter() - start
        size = self.setup.layout.block
        for index, first in enumerate(range(0, len(s.val_x), size)):
            if index < have_validation:
                continue
            start = time.perf_counter()
            data = self.client.encrypt_features(s.val_x[first : first + size])
            self.timings["client_encrypt_seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            self.wire.put_validation(index, data)
            self.timings["server_load_seconds"] += time.perf_counter() - start
        start = time.perf_counter()
        zero = np.zeros((s.y.shape[1], s.x.shape[1]))
        state = {"u": self.client.encrypt_weights(zero), "w": self.client.encrypt_weights(zero, ("update",))}
        self.timings["client_encrypt_seconds"] += time.perf_counter() - start
        self.wire.put_weights(0, state, initial=True)

    # ---- progress that survives the client ----------------------------------------------------------------------
    def _save(self, iteration: int, exchanged: bool, pending, stopped: bool) -> None:
        if self.checkpoint is None:
            return
        judge_state, arrays = self._judge.state()
        state = {
            "iteration": iteration,
            "exchanged": exchanged,
            "pending": None if pending is None else pending[0],
            "pending_iteration": None if pending is None else pending[2],
            "stopped": stopped,
            "refreshes": self.refreshes,
            "timings": dict(self.timings),
            "step_seconds": self.step_seconds,
            "bytes": [[d, k, n] for (d, k), n in self.wire.bytes.items()],
            "judge": judge_state,
        }
        self.checkpoint.save_progress(state, arrays)

    def _restore(self):
        """(iteration, exchanged, pending, stopped) from the checkpoint, reconciled with the server's iteration."""
        saved = self.checkpoint.progress() if self.checkpoint is not None else None
        if saved is None:
            return 0, False, None, False
        state, arrays = saved
        self._judge.restore(state["judge"], arrays)
        self.refreshes = state["refreshes"]
        self.timings.update(state["timings"])
        self.step_seconds = list(state["step_seconds"])
        self.wire.bytes.update({(d, k): n for d, k, n in state["bytes"]})
        iteration, exchanged = state["iteration"], state["exchanged"]
        server_at = self.wire.status()["iteration"]
        if exchanged and server_at == iteration + 1:  # the step was taken; its answer was lost with the client
            iteration, exchanged = server_at, False
        elif server_at != iteration:
            raise ConfigError(
                f"the job on the server is at iteration {server_at}, the client's saved progress at "
                f"{iteration}: they cannot be joined; pass --overwrite to start again"
            )
        pending = None
        if state["pending"] is not None:
            at = state["pending_iteration"]
            pending = (state["pending"], self.wire.validation_logits(at), at)
        return iteration, exchanged, pending, state["stopped"]

    def train(self, features: FeatureSplits, progress: bool = True, on_epoch=None) -> HeadRun:
        """Epochs of encrypted Nesterov steps with refreshes and encrypted validation, until the client says stop."""
        s, config, wire = self.setup, self.config, self.wire
        self._judge = _Judge(s, s.evaluate(features), on_epoch)
        iteration, exchanged, pending, stopped = self._restore()
        per_epoch = s.iterations_per_epoch
        bar = tqdm(total=config.epochs * per_epoch, initial=iteration, desc="encrypted head", disable=not progress)
        run_start = time.perf_counter()
        for epoch in range(config.epochs):
            if stopped:
                break
            for index, block_ids in enumerate(s.schedule.batches(epoch)):
                if epoch * per_epoch + index < iteration:
                    continue  # taken before the client was restarted
                lr = s.learning_rate(iteration)
                if not exchanged:
                    if index == 0 and epoch > 0:  # an epoch ended: refresh, then validate with the fresh weights
                        self._judge.epoch_ended(epoch)
                        stopped = self.exchange(pending, iteration, lr, finished_epoch=epoch)
                        pending = None if stopped else (epoch, wire.validation_logits(iteration), iteration)
                    elif wire.needs_refresh():
                        stopped = self.exchange(pending, iteration, lr)
                        pending = None
                    self._save(iteration, True, pending, stopped)
                exchanged = False
                if stopped:
                    break
                start = time.perf_counter()
                wire.step(iteration, block_ids, lr)
                self.step_seconds.append(time.perf_counter() - start)
                iteration += 1
                self._save(iteration, False, pending, stopped)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, refreshes=self.refreshes, s_per_iter=f"{self.step_seconds[-1]:.1f}")
        if not stopped:
            self._judge.epoch_ended(config.epochs)
        # Settle the last epoch: fresh weights, their validation logits, the client's verdict.
        if not stopped and not self.exchange(pending, iteration, 0.0, finished_epoch=config.epochs, names=("w",)):
            self._judge.decide(config.epochs, self.client, wire.validation_logits(iteration))
        bar.close()
        judge = self._judge
        wasted = iteration - judge.rows[-1]["epoch"] * per_epoch if stopped else 0
        server = wire.server_stats()
        stats = {
            "ckks": s.params.describe(),
            "preset": config.preset,
            "layout": s.layout.describe(),
            "softmax": s.poly.describe(),
            "levels_per_iteration": LEVELS_PER_ITERATION,
            "iterations": iteration,
            "iterations_after_last_validated_epoch": wasted,
            "seconds_per_iteration": float(np.mean(self.step_seconds)) if self.step_seconds else float("nan"),
            "epochs_run": len(judge.rows),
            "best_epoch": judge.stopping.best_epoch,
            "stopped_early": stopped,
            "effective_batch_size": s.schedule.blocks_per_batch * len(s.schedule.blocks[0]),
            "refreshes": self.refreshes,
            "operations": server["operations"],
            "bytes": wire.summary(),
            "server_disk_bytes": server["server_disk_bytes"],
            "timings": {
                **{k: round(v, 3) for k, v in self.timings.items()},
                "server_validation_seconds": round(server["server_validation_seconds"], 3),
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
        weights = self.wire.get_weights(iteration, names)
        stop = False
        if pending is not None:
            epoch, logits, _ = pending
            stop = self._judge.decide(epoch, self.client, logits)
        self.wire.count("client_to_server", "decision", b"\x01" if stop else b"\x00")
        if not stop:
            fresh = self.client.refresh(weights, iteration, lr, validate=finished_epoch is not None)
            if finished_epoch is not None:
                self._judge.candidates[finished_epoch] = self.client.last_refreshed["w"]
            self.wire.put_weights(iteration, fresh)
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

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """What a restarted client needs to judge on: numbers, and the weights kept (best and candidates)."""
        stopping = self.stopping
        numbers = {
            "rows": self.rows,
            "seconds": self.seconds,
            "epoch_seconds": {str(k): v for k, v in self.epoch_seconds.items()},
            "stopping": [stopping.best_epoch, stopping.best_value, stopping.since_best],
            "candidates": sorted(self.candidates),
        }
        arrays = {"best_weights": self.best_weights, **{f"candidate{e}": w for e, w in self.candidates.items()}}
        return numbers, arrays

    def restore(self, numbers: dict, arrays: dict[str, np.ndarray]) -> None:
        """Take up a saved state (`state`)."""
        self.rows = list(numbers["rows"])
        self.seconds = numbers["seconds"]
        self.epoch_seconds = {int(k): v for k, v in numbers["epoch_seconds"].items()}
        self.stopping.best_epoch, self.stopping.best_value, self.stopping.since_best = numbers["stopping"]
        self.best_weights = arrays["best_weights"]
        self.candidates = {e: arrays[f"candidate{e}"] for e in numbers["candidates"]}

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


def train_encrypted(
    features: FeatureSplits,
    config: FHEConfig,
    progress: bool = True,
    on_epoch=None,
    transport: Transport | None = None,
    checkpoint=None,
    fingerprint: str = "",
    keep: bool = False,
) -> HeadRun:
    """Run the protocol: the server trains on ciphertexts, the client refreshes, validates and decides. At the end
    the server deletes the job's ciphertexts unless `keep`; a failure leaves a checkpointed job for a rerun."""
    protocol = Protocol(setup(features, config), config, transport, checkpoint, fingerprint)
    try:
        protocol.exchange_keys()
        protocol.upload()
        run = protocol.train(features, progress, on_epoch)
        protocol.wire.finish(keep)
        return run
    finally:
        protocol.wire.close()
