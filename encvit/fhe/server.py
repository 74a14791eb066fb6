"""The server: holds only public evaluation keys and trains the head on ciphertexts.

One iteration (mini-batch Nesterov step) uses five levels (``encvit.fhe.products``). The NAG combination costs
none, because the step's two multiples of the gradient (1 and 1 + momentum, as integers N/D) are integer products,
which CKKS does without rescaling. The weights then have no level left: the client refreshes them before the next
iteration, in the two forms it uses (forward, update).

The training blocks live on the server's disk (``CiphertextStore``) and are read one batch at a time; so are the
encrypted validation features, whose logits the server computes after a refresh at an epoch's end (one level) and
sends with its next message.
"""

from __future__ import annotations

import time

from . import ckks
from .head import momentum_ratio
from .ops import Engine
from .packing import Layout
from .params import LEVELS_PER_ITERATION
from .products import errors, forward, gradient
from .softmax import PolySoftmax
from .store import CiphertextStore


class Server:
    """Encrypted training state (blocks on disk, weights in memory) and the Nesterov step."""

    def __init__(
        self, public: bytes, layout: Layout, poly: PolySoftmax, momentum: float, threads: int = 1, store_folder=None
    ):
        self.context, rotation_keys = ckks.load_public(public)
        self.engine = Engine(self.context, rotation_keys, threads)
        self.layout, self.poly, self.momentum = layout, poly, momentum
        self.denominator, self.numerator = momentum_ratio(momentum)
        self.store = CiphertextStore(self.engine, store_folder)
        self.counts: list[int] = []  # samples per training block
        self.validation_blocks = 0
        self.weights: dict[str, dict[str, list]] = {}  # "u" / "w" -> form -> ciphertexts per class pair
        self.validation_seconds = 0.0

    def receive_block(self, index: int, block: dict) -> None:
        """Store an encrypted training block (both packings, labels) on disk."""
        for part in ("forward", "gradient", "labels"):
            self.store.put(f"train{index}-{part}", block[part])
        self.counts.append(int(block["count"]))

    def receive_validation(self, index: int, block: dict) -> None:
        """Store an encrypted validation block (forward packing) on disk."""
        self.store.put(f"val{index}-forward", block["forward"])
        self.validation_blocks = max(self.validation_blocks, index + 1)

    def receive_weights(self, state: dict[str, dict[str, list[bytes]]]) -> None:
        """Set encrypted weights: "u" (look-ahead) and/or "w" (last weights), each in the forms sent."""
        for name, forms in state.items():
            self.weights[name] = {
                form: self.engine.map(lambda d: ckks.ciphertext_from_bytes(self.context, d), data)
                for form, data in forms.items()
            }

    def send_weights(self, names=("u", "w")) -> dict[str, list[bytes]]:
        """The encrypted weights in the update form, as bytes (for a refresh)."""
        return {name: self.engine.map(ckks.saved_bytes, self.weights[name]["update"]) for name in names}

    @property
    def levels_left(self) -> int:
        """Rescalings the encrypted look-ahead weights (forward form) have left."""
        forward_form = self.weights.get("u", {}).get("forward")
        return self.engine.level(forward_form[0]) if forward_form else 0

    def needs_refresh(self) -> bool:
        """Whether the next iteration needs fresh weights first."""
        return self.levels_left < LEVELS_PER_ITERATION

    def close(self) -> None:
        """Remove the stored blocks."""
        self.store.close()

    def validation_logits(self) -> list[list[bytes]]:
        """Logits of every validation block under the last weights w, moved to the lowest level (fewest bytes)."""
        start = time.perf_counter()
        out = []
        for index in range(self.validation_blocks):
            logits = forward(
                self.engine, self.layout, [self.store.get(f"val{index}-forward")], self.weights["w"]["forward"]
            )[0]
            out.append(self.engine.map(lambda ct: ckks.saved_bytes(self.engine.switch(ct, 0)), logits))
        self.validation_seconds += time.perf_counter() - start
        return out

    def step(self, block_ids: list[int], lr: float) -> None:
        """One Nesterov step with step size `lr` on the given blocks (the weights must have the levels for it)."""
        engine, layout = self.engine, self.layout
        # lr / (batch * D): the mean gradient, divided by D so that D and N = D (1 + momentum) are integers.
        factor = lr / (sum(self.counts[b] for b in block_ids) * self.denominator)
        u = self.weights["u"]
        logits = forward(engine, layout, [self.store.get(f"train{b}-forward") for b in block_ids], u["forward"])
        spread = [
            errors(engine, layout, z, self.store.get(f"train{b}-labels"), self.poly, factor, self.context.global_scale)
            for b, z in zip(block_ids, logits, strict=False)
        ]
        grads = gradient(engine, layout, [self.store.get(f"train{b}-gradient") for b in block_ids], spread)

        def update(pair: int):
            u_now, w_prev, grad = u["update"][pair], self.weights["w"]["update"][pair], grads[pair]
            w = engine.sub_(engine.align(u_now, 1.0, grad), engine.multiply_int(grad, self.denominator))
            # u' = w + momentum (w - w_prev) = (1 + momentum) u - momentum w_prev - (1 + momentum) lr g
            look = engine.align(u_now, 1.0 + self.momentum, grad)
            if self.momentum:
                engine.sub_(look, engine.align(w_prev, self.momentum, grad))
            return engine.sub_(look, engine.multiply_int(grad, self.numerator)), w

        looks, ws = zip(*engine.map(update, range(layout.pairs)), strict=False)
        self.weights = {"u": {"update": list(looks)}, "w": {"update": list(ws)}}
