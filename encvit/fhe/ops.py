"""CKKS arithmetic on SEAL ciphertexts (``tenseal.sealapi``) with exact scales, levels and operation counts.

TenSEAL's vectors relinearise and rescale after every product and round scales back to 2^bits. The packed
trainer needs finer control: it sums many products before one relinearisation (the costly key switch), and
it keeps the scales of ciphertexts that are added exactly equal by choosing the scale at which each plaintext
multiplier is encoded. (Rounding scales instead would bias every result by q_i / 2^bits - 1, about 1e-4.)

A ciphertext's *level* here is SEAL's chain index: how many rescalings it has left (0 = exhausted).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import tenseal as ts
from tenseal import sealapi

from ..common.errors import EncvitError


class LevelError(EncvitError):
    """A ciphertext has no level left for the next multiplication (the weights need a refresh)."""


class Engine:
    """Evaluator, encoder and keys of one context; counts rotations, products and key switches, and times them.

    `counts[kind]` and `seconds[kind]` per kind of operation ("rotate", "conjugate", "multiply" (tensor product),
    "relinearize", "rescale", "multiply_plain", "multiply_int", "add", "encode", "switch", "copy", "load");
    `by_level[kind]`
    counts them per level, since a key switch at level l costs roughly in proportion to l + 2 primes.
    """

    def __init__(self, context: ts.Context, rotation_keys: sealapi.GaloisKeys | None = None, threads: int = 1):
        self.context = context
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None
        self._lock = threading.Lock()
        self.seal = context.seal_context().data
        self.evaluator = sealapi.Evaluator(self.seal)
        self.encoder = sealapi.CKKSEncoder(self.seal)
        self.relin_keys = context.relin_keys().data
        self.rotation_keys = rotation_keys
        self.slots = self.encoder.slot_count()
        self.counts: Counter = Counter()
        self.seconds: Counter = Counter()
        self.by_level: dict[str, Counter] = {}
        self._chain: dict[int, tuple] = {}  # level -> (parms_id, the prime a rescale from it drops)
        data = self.seal.first_context_data()
        while data is not None:
            self._chain[data.chain_index()] = (data.parms_id(), data.parms().coeff_modulus()[-1].value())
            data = data.next_context_data()
        self.top = max(self._chain)
        self._plain_cache: dict = {}

    # ---- bookkeeping ------------------------------------------------------------------------------------
    def map(self, fn, items) -> list:
        """[fn(item) for item in items], on the engine's threads (independent ciphertexts: blocks, groups)."""
        items = list(items)
        if self._pool is None or len(items) < 2:
            return [fn(item) for item in items]
        futures = [self._pool.submit(fn, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:  # an error or Ctrl-C: drop the work not started, or exit would wait for all of it
            for future in futures:
                future.cancel()
            raise

    @contextmanager
    def _op(self, kind: str, level: int | None = None):
        # With several threads `seconds` adds up each thread's time: their sum can exceed the wall time.
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        with self._lock:
            self.seconds[kind] += elapsed
            self.counts[kind] += 1
            if level is not None:
                self.by_level.setdefault(kind, Counter())[level] += 1

    def level(self, ct: sealapi.Ciphertext) -> int:
        """Rescalings left in `ct`."""
        return self.seal.get_context_data(ct.parms_id()).chain_index()

    def encode(self, values, level: int, scale: float) -> sealapi.Plaintext:
        """A plaintext of `values` (a number or one value per slot) at `level` and `scale`."""
        plain = sealapi.Plaintext()
        with self._op("encode"):
            if np.ndim(values) == 0:
                value = complex(values) if np.iscomplexobj(values) else float(values)
                self.encoder.encode(value, self._chain[level][0], scale, plain)
            else:
                kind = np.complex128 if np.iscomplexobj(values) else np.float64
                self.encoder.encode(np.asarray(values, dtype=kind).tolist(), self._chain[level][0], scale, plain)
        return plain

    def _cached(self, key, values, level: int, scale: float) -> sealapi.Plaintext:
        # Masks recur every block at the same level and scale: encode each once.
        full = (key, level, scale) if key is not None else None
        cached = self._plain_cache.get(full) if full is not None else None
        if cached is not None:
            return cached
        plain = self.encode(values, level, scale)
        if full is not None:
            with self._lock:
                if len(self._plain_cache) > 64:
                    self._plain_cache.clear()
                self._plain_cache[full] = plain
        return plain

    def switch(self, ct: sealapi.Ciphertext, level: int) -> sealapi.Ciphertext:
        """`ct` moved down to `level` (dropping primes, no rescale: the scale is unchanged)."""
        have = self.level(ct)
        if have == level:
            return ct
        if have < level:
            raise LevelError(f"cannot raise a ciphertext from level {have} to {level}")
        out = sealapi.Ciphertext()
        with self._op("switch"):
            self.evaluator.mod_switch_to(ct, self._chain[level][0], out)
        return out

    # ---- arithmetic -------------------------------------------------------------------------------------
    def copy(self, ct: sealapi.Ciphertext) -> sealapi.Ciphertext:
        """An independent copy of `ct`."""
        out = sealapi.Ciphertext()
        with self._op("copy"):
            self.evaluator.mod_switch_to(ct, ct.parms_id(), out)  # to its own level: SEAL copies
        return out

    def multiply(self, a: sealapi.Ciphertext, b: sealapi.Ciphertext) -> sealapi.Ciphertext:
        """The tensor product a*b, not relinearised or rescaled (sum several, then `relin_rescale_` once)."""
        level = min(self.level(a), self.level(b))
        a, b = self.switch(a, level), self.switch(b, level)
        out = sealapi.Ciphertext()
        with self._op("multiply", level):
            self.evaluator.multiply(a, b, out)
        return out

    def relin_rescale_(self, ct: sealapi.Ciphertext) -> sealapi.Ciphertext:
        """Relinearise (one key switch) and rescale `ct` in place: it loses one level."""
        if self.level(ct) < 1:
            raise LevelError("no level left to rescale a product: the weights need a refresh")
        level = self.level(ct)
        if ct.size() > 2:
            with self._op("relinearize", level):
                self.evaluator.relinearize_inplace(ct, self.relin_keys)
        with self._op("rescale", level):
            self.evaluator.rescale_to_next_inplace(ct)
        return ct

    def add_(self, acc: sealapi.Ciphertext, other: sealapi.Ciphertext) -> sealapi.Ciphertext:
        """acc += other (same level after a switch; scales must already agree)."""
        other = self.switch(other, self.level(acc))
        self._check_scales(acc, other)
        with self._op("add"):
            self.evaluator.add_inplace(acc, other)
        return acc

    def sub_(self, acc: sealapi.Ciphertext, other: sealapi.Ciphertext) -> sealapi.Ciphertext:
        """acc -= other (as `add_`)."""
        other = self.switch(other, self.level(acc))
        self._check_scales(acc, other)
        with self._op("add"):
            self.evaluator.sub_inplace(acc, other)
        return acc

    @staticmethod
    def _check_scales(a, b) -> None:
        if not math.isclose(a.scale, b.scale, rel_tol=1e-12):
            raise ValueError(f"adding ciphertexts of scales {a.scale:.6g} and {b.scale:.6g}: align them first")
        b.scale = a.scale

    def rotate(self, ct: sealapi.Ciphertext, step: int) -> sealapi.Ciphertext:
        """`ct` with slot j holding slot j + step (a key switch; steps need a rotation key)."""
        out = sealapi.Ciphertext()
        with self._op("rotate", self.level(ct)):
            self.evaluator.rotate_vector(ct, int(step), self.rotation_keys, out)
        return out

    def conjugate(self, ct: sealapi.Ciphertext) -> sealapi.Ciphertext:
        """The complex conjugate of every slot of `ct` (a key switch, with the conjugation key)."""
        out = sealapi.Ciphertext()
        with self._op("conjugate", self.level(ct)):
            self.evaluator.complex_conjugate(ct, self.rotation_keys, out)
        return out

    def square(self, ct: sealapi.Ciphertext) -> sealapi.Ciphertext:
        """The tensor square ct*ct, not relinearised or rescaled (cheaper than `multiply` of two copies)."""
        out = sealapi.Ciphertext()
        with self._op("multiply", self.level(ct)):
            self.evaluator.square(ct, out)
        return out

    def rotate_sum_(self, ct: sealapi.Ciphertext, steps) -> sealapi.Ciphertext:
        """ct += rotate(ct, s) for each step in turn: with steps s, 2s, 4s, ... a sum over 2^k slots."""
        for step in steps:
            rotated = self.rotate(ct, step)
            with self._op("add"):
                self.evaluator.add_inplace(ct, rotated)
        return ct

    def multiply_plain(
        self, ct: sealapi.Ciphertext, values, *, scale: float | None = None, level: int | None = None, key=None
    ) -> sealapi.Ciphertext:
        """ct * values, rescaled, landing exactly on `level` (default: one below ct) and `scale` (default ct's).

        The multiplier is encoded at scale * q / ct.scale, where q is the prime the rescale drops, so that
        the result's scale is exactly `scale`: this is how terms computed along different paths are aligned.
        """
        scale = ct.scale if scale is None else scale
        level = self.level(ct) - 1 if level is None else level
        if level < 0:
            raise LevelError("no level left for a plaintext product: the weights need a refresh")
        ct = self.switch(ct, level + 1)
        plain_scale = scale * self._chain[level + 1][1] / ct.scale
        if plain_scale < 2.0**20:
            raise ValueError(f"plaintext scale {plain_scale:.3g} too small for an accurate product")
        out = sealapi.Ciphertext()
        plain = self._cached(key, values, level + 1, plain_scale)
        with self._op("multiply_plain", level + 1):
            self.evaluator.multiply_plain(ct, plain, out)
        with self._op("rescale", level + 1):
            self.evaluator.rescale_to_next_inplace(out)
        out.scale = scale
        return out

    def align(self, ct: sealapi.Ciphertext, factor, like: sealapi.Ciphertext, key=None) -> sealapi.Ciphertext:
        """factor * ct at the level and scale of `like`, ready to be added to it (costs ct one level)."""
        return self.multiply_plain(ct, factor, scale=like.scale, level=self.level(like), key=key)

    def multiply_int(self, ct: sealapi.Ciphertext, factor: int) -> sealapi.Ciphertext:
        """ct * an integer, without using a level: the integer is encoded at scale 1."""
        out = sealapi.Ciphertext()
        plain = self.encode(float(factor), self.level(ct), 1.0)
        with self._op("multiply_int", self.level(ct)):
            self.evaluator.multiply_plain(ct, plain, out)
        return out

    def add_plain_(self, ct: sealapi.Ciphertext, values, key=None) -> sealapi.Ciphertext:
        """ct += values (encoded at ct's level and scale)."""
        plain = self._cached(key, values, self.level(ct), ct.scale)
        with self._op("add"):
            self.evaluator.add_plain_inplace(ct, plain)
        return ct
