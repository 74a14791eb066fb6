"""The client: the data owner. Holds the secret key; scales, packs and encrypts; decrypts and refreshes.

Everything the client sends is bytes: the public evaluation keys once, the packed features and labels once,
the packed validation features once, the initial weights, a fresh encryption of the weights whenever the server
runs out of levels, and its early-stopping decision. Ciphertexts are encrypted with the secret key (symmetric,
seeded), which halves their size on the wire.
"""
from __future__ import annotations

import numpy as np
from tenseal import sealapi

from . import ckks
from .head import Schedule
from .ops import Engine
from .packing import Layout, pack_features, pack_labels, pack_weights, unpack_logits, unpack_weights
from .plain import check_weights


class Client:
    """Secret key, encryption and decryption for one packed layout."""

    def __init__(self, params: ckks.CKKSParams, layout: Layout, threads: int = 1):
        self.params = params
        self.layout = layout
        self.context = ckks.new_context(params)
        self._engine = Engine(self.context, threads=threads)  # encoding, and threads for many ciphertexts
        self._encryptor = sealapi.Encryptor(self._engine.seal, ckks.secret_key(self.context))
        self._decryptor = sealapi.Decryptor(self._engine.seal, ckks.secret_key(self.context))
        self.last_refreshed: dict[str, np.ndarray] = {}

    def public_bytes(self) -> bytes:
        """Parameters and evaluation keys for the server (no secret key)."""
        return ckks.public_bytes(self.context, self.layout.rotation_steps())

    def encrypt(self, values: np.ndarray) -> bytes:
        """One slot vector, encrypted at the top level and scale 2^scale_bits, as bytes."""
        plain = self._engine.encode(values, self._engine.top, self.params.scale)
        return ckks.saved_bytes(self._encryptor.encrypt_symmetric(plain))

    def decrypt(self, data: bytes) -> np.ndarray:
        """The slot values of a ciphertext sent as bytes."""
        plain = sealapi.Plaintext()
        self._decryptor.decrypt(ckks.ciphertext_from_bytes(self.context, data), plain)
        return np.asarray(self._engine.encoder.decode_double(plain))

    def encrypt_blocks(self, x: np.ndarray, y: np.ndarray, schedule: Schedule) -> list[dict]:
        """Each block of the schedule as {"features": [bytes per group], "labels": bytes, "count": m}."""
        return [{"features": self._engine.map(self.encrypt, pack_features(self.layout, x[index])),
                 "labels": self.encrypt(pack_labels(self.layout, y[index])), "count": len(index)}
                for index in schedule.blocks]

    def encrypt_features(self, x: np.ndarray) -> list[list[bytes]]:
        """Samples in consecutive blocks (no labels: the client keeps them), one ciphertext per feature group."""
        return [self._engine.map(self.encrypt, pack_features(self.layout, x[start:start + self.layout.block]))
                for start in range(0, len(x), self.layout.block)]

    def decrypt_logits(self, data: list[bytes], count: int) -> np.ndarray:
        """The first `count` samples' logits (count x K) from the server's per-block logit ciphertexts."""
        n = self.layout.block
        return np.concatenate([unpack_logits(self.layout, values, min(n, count - i * n))
                               for i, values in enumerate(self._engine.map(self.decrypt, data))])

    def encrypt_weights(self, weights: np.ndarray) -> list[bytes]:
        """Weights (K x d) packed and encrypted, one ciphertext per feature group."""
        return self._engine.map(self.encrypt, pack_weights(self.layout, weights))

    def decrypt_weights(self, data: list[bytes]) -> np.ndarray:
        """The weights (K x d) in a list of packed ciphertexts."""
        return unpack_weights(self.layout, np.stack(self._engine.map(self.decrypt, data)))

    def refresh(self, state: dict[str, list[bytes]], iteration: int = 0, lr: float = 0.0) -> dict[str, list[bytes]]:
        """Decrypt the server's exhausted weights and send them back freshly encrypted (TenSEAL cannot bootstrap).

        The values are re-encrypted unchanged; the decrypted ones stay in `last_refreshed` (the client keeps the
        weights of the best validated epoch from these). Diverged weights raise TrainingDiverged.
        """
        self.last_refreshed = {name: self.decrypt_weights(data) for name, data in state.items()}
        for weights in self.last_refreshed.values():
            check_weights(weights, iteration, lr)
        return {name: self.encrypt_weights(weights) for name, weights in self.last_refreshed.items()}

