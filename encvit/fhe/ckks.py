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
from pathlib import Path

import tenseal as ts
from tenseal import sealapi

from ..common.errors import ConfigError, EncvitError
from .params import DEFAULT_PRESET, PRESETS, CKKSParams, max_modulus_bits, security_level  # noqa: F401 (ckks.PRESETS, ckks.DEFAULT_PRESET)


def get_params(name: str) -> CKKSParams:
    """The preset called `name`, or a ConfigError naming the presets."""
    if name not in PRESETS:
        raise ConfigError(f"unknown CKKS preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def new_context(params: CKKSParams) -> ts.Context:
    """A private TenSEAL CKKS context (secret, public and relinearisation keys) for `params`."""
    if security_level(params.poly_modulus_degree, params.total_bits) < 128:
        raise ConfigError(
            f"{params.total_bits} modulus bits at ring degree {params.poly_modulus_degree} are below "
            f"128-bit security (at most {max_modulus_bits(params.poly_modulus_degree)} bits)"
        )
    context = ts.context(
        ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree, coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes)
    )
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
    public = context.serialize(
        save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=True
    )
    return struct.pack("<Q", len(public)) + public + rotations


def load_public(data: bytes) -> tuple[ts.Context, sealapi.GaloisKeys]:
    """The server's side of `public_bytes`: a public TenSEAL context and the rotation keys."""
    (size,) = struct.unpack_from("<Q", data)
    context = ts.context_from(data[8 : 8 + size])
    if context.has_secret_key() or context.is_private():  # a server never holds the client's secret key
        raise SecretKeyError("the uploaded context holds a secret key: the server never takes one")
    keys = sealapi.GaloisKeys()
    _load(data[8 + size :], lambda path: keys.load(context.seal_context().data, path))
    return context, keys
