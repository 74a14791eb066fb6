"""CKKS parameters, keys and bytes: what the client makes and what crosses the wire.

TenSEAL has no bootstrapping, so the parameters fix how many multiplications a ciphertext survives: one
level per middle prime of the coefficient modulus (the first prime holds the result, the last one is SEAL's
special key-switching prime). Security follows the HE standard (homomorphicencryption.org): for ring degree
N the total modulus bits must stay below a bound that SEAL tabulates (``CoeffModulus.MaxBitCount``); SEAL
itself refuses parameters above the 128-bit bound.
"""
from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tenseal as ts
from tenseal import sealapi

from ..errors import ConfigError


@dataclass(frozen=True)
class CKKSParams:
    """Ring degree, coefficient-modulus prime sizes (bits) and the scale 2^scale_bits."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def levels(self) -> int:
        """Rescalings a fresh ciphertext survives: the primes between the first and the special one."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def scale(self) -> float:
        return float(2 ** self.scale_bits)

    def describe(self) -> dict:
        """The parameters and the security level they give, as JSON-ready values."""
        return {"poly_modulus_degree": self.poly_modulus_degree, "slots": self.slots,
                "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes), "total_modulus_bits": self.total_bits,
                "scale_bits": self.scale_bits, "levels": self.levels,
                "security_bits": security_level(self.poly_modulus_degree, self.total_bits),
                "max_bits_for_128": max_modulus_bits(self.poly_modulus_degree, 128),
                "standard": "HomomorphicEncryption.org security standard, as tabulated by SEAL"}


# Names say ring degree and levels. The first prime is scale + headroom for the integer part of results.
PRESETS = {
    # The packed trainer's default: one iteration (6 levels) per refresh; 380 of the 438 bits allowed.
    "n16384-l6": CKKSParams(16384, (60, 40, 40, 40, 40, 40, 40, 60), 40),
    # Two levels, for the packed products alone (tests, demonstrations): 200 of 218 bits.
    "n8192-l2": CKKSParams(8192, (60, 40, 40, 60), 40),
    # The naive baseline: TenSEAL rescales after every product, so one iteration needs 8 levels.
    "n16384-l8": CKKSParams(16384, (60, 40, 40, 40, 40, 40, 40, 40, 40, 60), 40),
}
DEFAULT_PRESET = "n16384-l6"
_SEC = {128: sealapi.SEC_LEVEL_TYPE.TC128, 192: sealapi.SEC_LEVEL_TYPE.TC192, 256: sealapi.SEC_LEVEL_TYPE.TC256}


def get_params(name: str) -> CKKSParams:
    """The preset called `name`, or a ConfigError naming the presets."""
    if name not in PRESETS:
        raise ConfigError(f"unknown CKKS preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def max_modulus_bits(poly_modulus_degree: int, security: int = 128) -> int:
    """The largest total modulus (bits) the HE standard allows at this ring degree and security level."""
    return int(sealapi.CoeffModulus.MaxBitCount(poly_modulus_degree, _SEC[security]))


def security_level(poly_modulus_degree: int, total_bits: int) -> int:
    """Classical security in bits (256, 192 or 128) of a ring degree and total modulus size; 0 if below 128."""
    for bits in (256, 192, 128):
        if total_bits <= max_modulus_bits(poly_modulus_degree, bits):
            return bits
    return 0


def new_context(params: CKKSParams) -> ts.Context:
    """A private TenSEAL CKKS context (secret, public and relinearisation keys) for `params`."""
    if security_level(params.poly_modulus_degree, params.total_bits) < 128:
        raise ConfigError(f"{params.total_bits} modulus bits at ring degree {params.poly_modulus_degree} are below "
                          f"128-bit security (at most {max_modulus_bits(params.poly_modulus_degree)} bits)")
    context = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree,
                         coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    context.global_scale = params.scale
    return context


def galois_keys(context: ts.Context, steps) -> sealapi.GaloisKeys:
    """Rotation keys for exactly these steps (each key is as large as a ciphertext times the levels)."""
    if not context.has_secret_key():
        raise ConfigError("rotation keys can only be made with the secret key (on the client)")
    seal = context.seal_context().data
    elements = seal.key_context_data().galois_tool().get_elts_from_steps(sorted(set(int(s) for s in steps)))
    keys = sealapi.GaloisKeys()
    # This overload of create_galois_keys takes Galois elements, not steps: hence the conversion above.
    sealapi.KeyGenerator(seal, context.secret_key().data).create_galois_keys(elements, keys)
    return keys


# ---- bytes on the wire ----------------------------------------------------------------------------------
_TMP = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def _via_file(save) -> bytes:
    # sealapi objects serialise only to a path; a RAM-backed temporary file keeps that cheap.
    fd, path = tempfile.mkstemp(dir=_TMP, prefix="encvit-ckks-")
    os.close(fd)
    try:
        save(path)
        return Path(path).read_bytes()
    finally:
        os.unlink(path)


def _from_file(data: bytes, load) -> None:
    fd, path = tempfile.mkstemp(dir=_TMP, prefix="encvit-ckks-")
    try:
        os.write(fd, data)
        os.close(fd)
        load(path)
    finally:
        os.unlink(path)


def ciphertext_bytes(ct: sealapi.Ciphertext) -> bytes:
    """A ciphertext as bytes (SEAL's format, compressed)."""
    return _via_file(ct.save)


def ciphertext_from_bytes(context: ts.Context, data: bytes) -> sealapi.Ciphertext:
    """The ciphertext `data` holds, checked against `context`'s parameters."""
    ct = sealapi.Ciphertext()
    try:
        _from_file(data, lambda path: ct.load(context.seal_context().data, path))
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"bytes are not a ciphertext for these CKKS parameters ({exc})") from exc
    return ct


def public_bytes(context: ts.Context, rotations: sealapi.GaloisKeys) -> bytes:
    """What the server receives: parameters, public and relinearisation keys, rotation keys; no secret key."""
    public = context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                               save_relin_keys=True)
    galois = _via_file(rotations.save)
    return struct.pack("<Q", len(public)) + public + galois


def load_public(data: bytes) -> tuple[ts.Context, sealapi.GaloisKeys]:
    """The server's side of `public_bytes`: a public TenSEAL context and the rotation keys."""
    (size,) = struct.unpack_from("<Q", data)
    context = ts.context_from(data[8:8 + size])
    keys = sealapi.GaloisKeys()
    _from_file(data[8 + size:], lambda path: keys.load(context.seal_context().data, path))
    return context, keys
