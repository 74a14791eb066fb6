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

from ..errors import ConfigError, EncvitError


@dataclass(frozen=True)
class CKKSParams:
    """Ring degree, coefficient-modulus prime sizes (bits) and the scale 2^scale_bits."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        """Values per ciphertext: half the ring degree."""
        return self.poly_modulus_degree // 2

    @property
    def levels(self) -> int:
        """Rescalings a fresh ciphertext survives: the primes between the first and the special one."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def total_bits(self) -> int:
        """Bits of the whole coefficient modulus, special prime included (what the HE standard bounds)."""
        return sum(self.coeff_mod_bit_sizes)

    @property
    def scale(self) -> float:
        """The encoding scale of fresh ciphertexts."""
        return float(2 ** self.scale_bits)

    def describe(self) -> dict:
        """The parameters and the security level they give, as JSON-ready values."""
        return {"poly_modulus_degree": self.poly_modulus_degree, "slots": self.slots,
                "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes), "total_modulus_bits": self.total_bits,
                "scale_bits": self.scale_bits, "levels": self.levels,
                "security_bits": security_level(self.poly_modulus_degree, self.total_bits),
                "max_bits_for_128": max_modulus_bits(self.poly_modulus_degree, 128),
                "standard": "HomomorphicEncryption.org security standard, as tabulated by SEAL"}


# Names say ring degree and levels. The first prime is the scale plus headroom for the integer part of results
# (10 bits: |values| < 512); keeping it 10 bits below the special prime keeps rotation noise near 1e-8.
PRESETS = {
    # The packed trainer's default: one iteration (5 levels) per refresh; 310 of the 438 bits allowed.
    "n16384-l5": CKKSParams(16384, (50, 40, 40, 40, 40, 40, 60), 40),
    # Two levels, for the packed products alone (tests, demonstrations): 200 of 218 bits.
    "n8192-l2": CKKSParams(8192, (60, 40, 40, 60), 40),
    # The naive baseline: TenSEAL rescales after every product, so one iteration needs 7 levels: 390 bits.
    "n16384-l7": CKKSParams(16384, (50, 40, 40, 40, 40, 40, 40, 40, 60), 40),
}
DEFAULT_PRESET = "n16384-l5"
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


class SecretKeyError(EncvitError):
    """Decryption was attempted with a context that holds no secret key (the server's)."""


def secret_key(context: ts.Context):
    """The context's SEAL secret key; a public context raises SecretKeyError with TenSEAL's own refusal."""
    try:
        return context.secret_key().data
    except ValueError as exc:
        raise SecretKeyError(f"this context cannot decrypt: {exc}") from exc


# ---- bytes on the wire ----------------------------------------------------------------------------------
_TMP = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def saved_bytes(obj) -> bytes:
    """Bytes of a SEAL object or Serializable (SEAL's compressed format; sealapi only saves to a path)."""
    fd, path = tempfile.mkstemp(dir=_TMP, prefix="encvit-ckks-")  # RAM-backed where possible
    os.close(fd)
    try:
        obj.save(path)
        return Path(path).read_bytes()
    finally:
        os.unlink(path)


def _load(data: bytes, load) -> None:
    fd, path = tempfile.mkstemp(dir=_TMP, prefix="encvit-ckks-")
    try:
        os.write(fd, data)
        os.close(fd)
        load(path)
    finally:
        os.unlink(path)


def ciphertext_from_bytes(context: ts.Context, data: bytes) -> sealapi.Ciphertext:
    """The ciphertext `data` holds, checked against `context`'s parameters."""
    ct = sealapi.Ciphertext()
    try:
        _load(data, lambda path: ct.load(context.seal_context().data, path))
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"bytes are not a ciphertext for these CKKS parameters ({exc})") from exc
    return ct


def public_bytes(context: ts.Context, rotation_steps, conjugation: bool = False) -> bytes:
    """What the server receives: parameters, relinearisation and rotation keys (only `rotation_steps`, and the
    complex conjugation's key if asked).

    No secret key. Rotation keys are made seeded (half their size on the wire); each is as large as a
    ciphertext times its levels, so only the steps the layout uses are made.
    """
    seal = context.seal_context().data
    elements = seal.key_context_data().galois_tool().get_elts_from_steps(sorted({int(s) for s in rotation_steps}))
    if conjugation:  # the Galois element 2N - 1 maps every slot to its complex conjugate
        elements = list(elements) + [2 * seal.key_context_data().parms().poly_modulus_degree() - 1]
    # This overload of create_galois_keys takes Galois elements, not steps: hence the conversion above.
    rotations = saved_bytes(sealapi.KeyGenerator(seal, secret_key(context)).create_galois_keys(elements))
    public = context.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False,
                               save_relin_keys=True)
    return struct.pack("<Q", len(public)) + public + rotations


def load_public(data: bytes) -> tuple[ts.Context, sealapi.GaloisKeys]:
    """The server's side of `public_bytes`: a public TenSEAL context and the rotation keys."""
    (size,) = struct.unpack_from("<Q", data)
    context = ts.context_from(data[8:8 + size])
    keys = sealapi.GaloisKeys()
    _load(data[8 + size:], lambda path: keys.load(context.seal_context().data, path))
    return context, keys
