"""The client: the data owner. Holds the secret key; scales, packs and encrypts; decrypts and refreshes.

Everything the client sends is bytes: the public evaluation keys once; each training block packed twice (for the
forward pass at the top level, for the gradient at the level where the errors meet it) with its labels, once; the
validation features once; the weights whenever the server runs out of levels (every iteration: TenSEAL cannot
bootstrap), repacked into the forms the next iteration uses; and its early-stopping decision. Ciphertexts are
encrypted with the secret key (symmetric, seeded), which halves their size on the wire, and each is encrypted at
the lowest level that serves it.
"""

from __future__ import annotations

import numpy as np
from tenseal import sealapi

from . import ckks, packing
from .ops import Engine
from .packing import Layout
from .params import LEVELS_PER_ITERATION
from .plain import check_weights


class Client:
    """Secret key, encryption and decryption for one packed layout."""

    def __init__(self, params: ckks.CKKSParams, layout: Layout, threads: int = 1, context=None):
        self.params = params
        self.layout = layout
        self.context = ckks.new_context(params) if context is None else context  # a saved one: a resumed run
        self._engine = Engine(self.context, threads=threads)  # encoding, and threads for many ciphertexts
        self._encryptor = sealapi.Encryptor(self._engine.seal, ckks.secret_key(self.context))
        self._decryptor = sealapi.Decryptor(self._engine.seal, ckks.secret_key(self.context))
        top = self._engine.top
        # Where each kind of ciphertext enters the iteration (see encvit.fhe.products): the rest is wasted bytes.
        self.levels = {
            "forward": top,
            "labels": top - 3,
            "gradient": top - (LEVELS_PER_ITERATION - 1),
            "update": top - (LEVELS_PER_ITERATION - 1),
        }
        self.last_refreshed: dict[str, np.ndarray] = {}

    def private_bytes(self) -> bytes:
        """The whole context with its secret key, for the client's own run folder (never for the server)."""
        return self.context.serialize(save_secret_key=True)

    def public_bytes(self) -> bytes:
        """Parameters and evaluation keys for the server (no secret key)."""
        return ckks.public_bytes(self.context, self.layout.rotation_steps(), conjugation=True)

    def encrypt(self, values: np.ndarray, level: int | None = None) -> bytes:
        """One slot vector (real or complex), encrypted at `level` (default: the top) and scale 2^scale_bits."""
        plain = self._engine.encode(values, self._engine.top if level is None else level, self.params.scale)
        return ckks.saved_bytes(self._encryptor.encrypt_symmetric(plain))

    def encrypt_all(self, vectors, kind: str) -> list[bytes]:
        """Slot vectors encrypted at the level of `kind` ("forward", "gradient", "labels", "update"), in parallel."""
        return self._engine.map(lambda v: self.encrypt(v, self.levels[kind]), list(vectors))

    def decrypt(self, data: bytes) -> np.ndarray:
        """The (complex) slot values of a ciphertext sent as bytes."""
        plain = sealapi.Plaintext()
        self._decryptor.decrypt(ckks.ciphertext_from_bytes(self.context, data), plain)
        return np.asarray(self._engine.encoder.decode_complex(plain))

    def encrypt_block(self, x: np.ndarray, y: np.ndarray) -> dict:
        """A training block: rows x packed for both passes, one-hot labels y, the sample count."""
        layout = self.layout
        return {
            "forward": self.encrypt_all(packing.forward_data(layout, x), "forward"),
            "gradient": self.encrypt_all(packing.gradient_data(layout, x), "gradient"),
            "labels": self.encrypt_all(packing.labels(layout, y), "labels"),
            "count": len(x),
        }

    def encrypt_features(self, x: np.ndarray) -> dict:
        """A validation block (no labels: the client keeps them): rows x packed for the forward pass."""
        return {"forward": self.encrypt_all(packing.forward_data(self.layout, x), "forward"), "count": len(x)}

    def decrypt_logits(self, blocks: list[list[bytes]], count: int) -> np.ndarray:
        """The first `count` samples' logits (count x K) from the server's per-block, per-pair logit ciphertexts."""
        n = self.layout.block
        return np.concatenate(
            [
                packing.read_logits(self.layout, np.stack(self._engine.map(self.decrypt, block)), min(n, count - i * n))
                for i, block in enumerate(blocks)
            ]
        )

    def encrypt_weights(self, weights: np.ndarray, forms=("forward", "update")) -> dict[str, list[bytes]]:
        """Weights (K x d) packed and encrypted in each form asked for, one ciphertext per class pair."""
        pack = {"forward": packing.forward_weights, "update": packing.update_weights}
        return {form: self.encrypt_all(pack[form](self.layout, weights), form) for form in forms}

    def decrypt_weights(self, data: list[bytes]) -> np.ndarray:
        """The weights (K x d) in a list of update-form ciphertexts."""
        return packing.read_weights(self.layout, np.stack(self._engine.map(self.decrypt, data)))

    def refresh(
        self, state: dict[str, list[bytes]], iteration: int = 0, lr: float = 0.0, validate: bool = False
    ) -> dict[str, dict[str, list[bytes]]]:
        """Decrypt the server's exhausted weights and send them back freshly encrypted (TenSEAL cannot bootstrap).

        The look-ahead u comes back in both forms (the forward pass, the update), the last weights w in the update
        form, and also in the forward form when `validate` (the server then scores them on validation data). The
        decrypted values stay in `last_refreshed`. Diverged weights raise TrainingDiverged.
        """
        self.last_refreshed = {name: self.decrypt_weights(data) for name, data in state.items()}
        for weights in self.last_refreshed.values():
            check_weights(weights, iteration, lr)
        forms = {"u": ("forward", "update"), "w": ("forward", "update") if validate else ("update",)}
        return {name: self.encrypt_weights(weights, forms[name]) for name, weights in self.last_refreshed.items()}
