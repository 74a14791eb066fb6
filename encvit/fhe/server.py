"""The server: holds only public evaluation keys and trains the head on ciphertexts.

One iteration (mini-batch Nesterov step) uses six levels: logits (1), softmax polynomial (4: mask, square,
cube, class mean), gradient (1). The NAG combination costs none, because the step's two multiples of the
gradient (1 and 1 + momentum, as integers N/D) are integer products, which CKKS does without rescaling.
When the weights have fewer than six levels left the server asks the client to refresh them.
"""
from __future__ import annotations

import time

from . import ckks
from .head import momentum_ratio
from .ops import Engine
from .packing import Layout, packed_error, packed_gradient, packed_logits
from .softmax import PolySoftmax

LEVELS_PER_ITERATION = 6


class Server:
    """Encrypted training state (features, labels, weights) and the Nesterov step."""

    def __init__(self, public: bytes, layout: Layout, poly: PolySoftmax, lr: float, momentum: float):
        self.context, rotation_keys = ckks.load_public(public)
        self.engine = Engine(self.context, rotation_keys)
        self.layout, self.poly, self.lr, self.momentum = layout, poly, lr, momentum
        self.denominator, self.numerator = momentum_ratio(momentum)
        self.blocks: list[dict] = []
        self._lowered: dict = {}  # (block, level) -> features switched down for the gradient
        self.u: list = []  # the look-ahead point, where gradients are taken
        self.w: list = []  # the last weights (what is returned)
        self.refreshes = 0
        self.refresh_seconds = 0.0

    def _load(self, data: bytes):
        return ckks.ciphertext_from_bytes(self.context, data)

    def receive_blocks(self, blocks: list[dict]) -> None:
        """Store the encrypted, packed training blocks (features per group, labels, sample count)."""
        self.blocks = [{"features": [self._load(d) for d in b["features"]], "labels": self._load(b["labels"]),
                        "count": int(b["count"])} for b in blocks]

    def receive_weights(self, state: dict[str, list[bytes]]) -> None:
        """Set the encrypted weights: {"u": look-ahead, "w": last weights} (the initial ones or a refresh)."""
        self.u = [self._load(d) for d in state["u"]]
        self.w = [self._load(d) for d in state["w"]]

    def send_weights(self, names=("u", "w")) -> dict[str, list[bytes]]:
        """The encrypted weights as bytes (for a refresh, an evaluation or the final result)."""
        return {name: [ckks.saved_bytes(ct) for ct in getattr(self, name)] for name in names}

    def _features_at(self, block: int, level: int) -> list:
        # The gradient meets the features at a low level every epoch: switch them down once, keep them.
        key = (block, level)
        if key not in self._lowered:
            self._lowered[key] = [self.engine.switch(ct, level) for ct in self.blocks[block]["features"]]
        return self._lowered[key]

    @property
    def levels_left(self) -> int:
        """Rescalings the encrypted weights have left."""
        return self.engine.level(self.u[0])

    def step(self, block_ids: list[int], refresh) -> None:
        """One Nesterov step on the given blocks; `refresh(state_bytes) -> state_bytes` is the client's round trip."""
        if self.levels_left < LEVELS_PER_ITERATION:
            start = time.perf_counter()
            self.receive_weights(refresh(self.send_weights()))
            self.refreshes += 1
            self.refresh_seconds += time.perf_counter() - start
        engine, layout = self.engine, self.layout
        blocks = [self.blocks[b] for b in block_ids]
        # lr / (batch * D): the mean gradient, divided by D so that D and N = D (1 + momentum) are integers.
        factor = self.lr / (sum(b["count"] for b in blocks) * self.denominator)
        errors = [packed_error(engine, layout, packed_logits(engine, layout, b["features"], self.u), b["labels"],
                               self.poly, factor) for b in blocks]
        level = engine.level(errors[0])
        grads = packed_gradient(engine, layout, errors, [self._features_at(b, level) for b in block_ids])
        u_next, w_next = [], []
        for u, w_prev, grad in zip(self.u, self.w, grads):
            w = engine.sub_(engine.align(u, 1.0, grad), engine.multiply_int(grad, self.denominator))
            # u' = w + momentum (w - w_prev) = (1 + momentum) u - momentum w_prev - (1 + momentum) lr g
            look = engine.align(u, 1.0 + self.momentum, grad)
            if self.momentum:
                engine.sub_(look, engine.align(w_prev, self.momentum, grad))
            u_next.append(engine.sub_(look, engine.multiply_int(grad, self.numerator)))
            w_next.append(w)
        self.u, self.w = u_next, w_next

    def counts(self) -> dict:
        """Operations done so far (rotations, products, key switches) and refreshes."""
        return {**dict(self.engine.counts), "refreshes": self.refreshes,
                "refresh_seconds": round(self.refresh_seconds, 3)}

