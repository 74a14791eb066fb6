"""The server: holds only public evaluation keys and trains the head on ciphertexts.

One iteration (mini-batch Nesterov step) uses six levels: logits (1), softmax polynomial (4: mask, square,
cube, class mean), gradient (1). The NAG combination costs none, because the step's two multiples of the
gradient (1 and 1 + momentum, as integers N/D) are integer products, which CKKS does without rescaling.
When the weights have fewer than six levels left the client must refresh them (``needs_refresh``).

For early stopping the server also holds the encrypted validation features: after a refresh at an epoch's end
it computes their logits with the fresh weights (one level) and sends them with its next message.
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
    """Encrypted training state (features, labels, weights, validation features) and the Nesterov step."""

    def __init__(self, public: bytes, layout: Layout, poly: PolySoftmax, momentum: float, threads: int = 1):
        self.context, rotation_keys = ckks.load_public(public)
        self.engine = Engine(self.context, rotation_keys, threads)
        self.layout, self.poly, self.momentum = layout, poly, momentum
        self.denominator, self.numerator = momentum_ratio(momentum)
        self.blocks: list[dict] = []
        self.validation: list[list] = []  # feature ciphertexts of each validation block
        self._lowered: dict = {}  # (block, level) -> features switched down for the gradient
        self.u: list = []  # the look-ahead point, where gradients are taken
        self.w: list = []  # the last weights (what is returned)
        self.validation_seconds = 0.0

    def _load(self, data: list[bytes]) -> list:
        return self.engine.map(lambda d: ckks.ciphertext_from_bytes(self.context, d), data)

    def receive_blocks(self, blocks: list[dict]) -> None:
        """Store the encrypted, packed training blocks (features per group, labels, sample count)."""
        self.blocks = [{"features": self._load(b["features"]), "labels": self._load([b["labels"]])[0],
                        "count": int(b["count"])} for b in blocks]

    def receive_validation(self, blocks: list[list[bytes]]) -> None:
        """Store the encrypted, packed validation features (one list of group ciphertexts per block)."""
        self.validation = [self._load(block) for block in blocks]

    def receive_weights(self, state: dict[str, list[bytes]]) -> None:
        """Set encrypted weights: "u" (look-ahead) and/or "w" (last weights), initial or refreshed."""
        for name, data in state.items():
            setattr(self, name, self._load(data))

    def send_weights(self, names=("u", "w")) -> dict[str, list[bytes]]:
        """The encrypted weights as bytes (for a refresh)."""
        return {name: self.engine.map(ckks.saved_bytes, getattr(self, name)) for name in names}

    @property
    def levels_left(self) -> int:
        """Rescalings the encrypted look-ahead weights have left."""
        return self.engine.level(self.u[0])

    def needs_refresh(self) -> bool:
        """Whether the next iteration needs fresh weights first."""
        return self.levels_left < LEVELS_PER_ITERATION

    def validation_logits(self) -> list[bytes]:
        """Logits of every validation block under the current weights w, moved to the lowest level (fewest bytes)."""
        start = time.perf_counter()
        out = self.engine.map(lambda features: ckks.saved_bytes(
            self.engine.switch(packed_logits(self.engine, self.layout, features, self.w), 0)), self.validation)
        self.validation_seconds += time.perf_counter() - start
        return out

    def _features_at(self, block: int, level: int) -> list:
        # The gradient meets the features at a low level every epoch: switch them down once, keep them.
        key = (block, level)
        if key not in self._lowered:
            self._lowered[key] = [self.engine.switch(ct, level) for ct in self.blocks[block]["features"]]
        return self._lowered[key]

    def step(self, block_ids: list[int], lr: float) -> None:
        """One Nesterov step with step size `lr` on the given blocks (the weights must have the levels for it)."""
        engine, layout = self.engine, self.layout
        blocks = [self.blocks[b] for b in block_ids]
        # lr / (batch * D): the mean gradient, divided by D so that D and N = D (1 + momentum) are integers.
        factor = lr / (sum(b["count"] for b in blocks) * self.denominator)
        # Blocks, then feature groups, are independent: the engine spreads them over its threads.
        errors = engine.map(lambda b: packed_error(engine, layout, packed_logits(engine, layout, b["features"], self.u),
                                                   b["labels"], self.poly, factor), blocks)
        level = engine.level(errors[0])
        features = engine.map(lambda b: self._features_at(b, level), block_ids)
        grads = packed_gradient(engine, layout, errors, features)

        def update(group: int):
            u, w_prev, grad = self.u[group], self.w[group], grads[group]
            w = engine.sub_(engine.align(u, 1.0, grad), engine.multiply_int(grad, self.denominator))
            # u' = w + momentum (w - w_prev) = (1 + momentum) u - momentum w_prev - (1 + momentum) lr g
            look = engine.align(u, 1.0 + self.momentum, grad)
            if self.momentum:
                engine.sub_(look, engine.align(w_prev, self.momentum, grad))
            return engine.sub_(look, engine.multiply_int(grad, self.numerator)), w

        self.u, self.w = (list(part) for part in zip(*engine.map(update, range(len(grads)))))
