"""The HTTP wire format of the encrypted head's service: headers every message carries, and framed binary bodies.

A body is raw bytes, never base64 in JSON: named lists of SEAL-serialised ciphertexts, each preceded by its length
(8 bytes, little-endian). The header ``X-Encvit-Parts`` names the lists and their lengths in order, for example
``forward=12;gradient=12;labels=3``. Every request and answer also carries the protocol version, encvit's version,
a hash of the CKKS parameters, the job and the iteration; a server or client refuses a message whose values differ
from its own, naming both.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct

from .. import __version__
from ..common.errors import EncvitError
from .params import CKKSParams

PROTOCOL = 1
MEDIA_TYPE = "application/octet-stream"
PROTOCOL_HEADER = "X-Encvit-Protocol"
VERSION_HEADER = "X-Encvit-Version"
PARAMS_HEADER = "X-Encvit-Params"
JOB_HEADER = "X-Encvit-Job"
ITERATION_HEADER = "X-Encvit-Iteration"
PARTS_HEADER = "X-Encvit-Parts"
PART_NAME = re.compile(r"[a-z][a-z0-9_.]{0,31}")
MAX_PARTS = 64  # names in one body
MAX_ITEMS = 100_000  # ciphertexts in one body


class WireError(EncvitError):
    """A message that does not follow the wire format (answered with 400)."""


class MismatchError(EncvitError):
    """A message from another protocol, encvit version, CKKS parameters, job or iteration (answered with 409)."""


def params_hash(params: CKKSParams) -> str:
    """A short hash of the CKKS parameters: ring degree, modulus primes and scale."""
    described = {"n": params.poly_modulus_degree, "q": list(params.coeff_mod_bit_sizes), "scale": params.scale_bits}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def protocol_headers(params: str | None = None, job: str | None = None, iteration: int | None = None) -> dict:
    """The headers that identify a message: protocol, encvit version and, where known, parameters, job, iteration."""
    headers = {PROTOCOL_HEADER: str(PROTOCOL), VERSION_HEADER: __version__}
    if params is not None:
        headers[PARAMS_HEADER] = params
    if job is not None:
        headers[JOB_HEADER] = job
    if iteration is not None:
        headers[ITERATION_HEADER] = str(iteration)
    return headers


def check_versions(headers) -> None:
    """Refuse a message of another protocol or encvit version, naming both values."""
    for name, ours in ((PROTOCOL_HEADER, str(PROTOCOL)), (VERSION_HEADER, __version__)):
        theirs = headers.get(name)
        if theirs is None:
            raise WireError(f"the message has no {name} header (this end speaks {name} {ours})")
        if theirs != ours:
            raise MismatchError(f"{name} {theirs!r} of the message is not this end's {ours!r}")


def check_value(headers, name: str, ours) -> None:
    """Refuse a message whose header `name` differs from `ours`, naming both."""
    theirs = headers.get(name)
    if theirs is None:
        raise WireError(f"the message has no {name} header (expected {ours})")
    if theirs != str(ours):
        raise MismatchError(f"{name} {theirs!r} of the message is not this end's {str(ours)!r}")


def iteration_of(headers) -> int:
    """The message's iteration (a whole number)."""
    value = headers.get(ITERATION_HEADER)
    if value is None or not value.isdigit() or len(value) > 9:
        raise WireError(f"{ITERATION_HEADER} must be a whole number, got {value!r}")
    return int(value)


def pack(parts: dict[str, list[bytes]]) -> tuple[dict, bytes]:
    """(headers, body) of named lists of byte strings."""
    names = ";".join(f"{name}={len(items)}" for name, items in parts.items())
    chunks = []
    for items in parts.values():
        for item in items:
            chunks += [struct.pack("<Q", len(item)), bytes(item)]
    return {PARTS_HEADER: names, "Content-Type": MEDIA_TYPE}, b"".join(chunks)


def parse_parts(value: str | None) -> list[tuple[str, int]]:
    """The (name, count) list of an ``X-Encvit-Parts`` header."""
    if not value:
        raise WireError(f"the body has no {PARTS_HEADER} header naming its parts")
    parts = []
    for entry in value.split(";"):
        name, _, count = entry.partition("=")
        if not PART_NAME.fullmatch(name) or not count.isdigit() or len(count) > 6:
            raise WireError(f"{PARTS_HEADER} entry {entry[:40]!r} is not name=count")
        parts.append((name, int(count)))
    if len(parts) > MAX_PARTS or len({n for n, _ in parts}) != len(parts):
        raise WireError(f"{PARTS_HEADER} names {len(parts)} parts (at most {MAX_PARTS}, each once)")
    if sum(c for _, c in parts) > MAX_ITEMS:
        raise WireError(f"{PARTS_HEADER} announces more than {MAX_ITEMS} items")
    return parts


def unpack(headers, body: bytes) -> dict[str, list[bytes]]:
    """Named lists of byte strings from a framed body; WireError when the body does not match its header."""
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
    if content_type != MEDIA_TYPE:
        raise WireError(f"the body must be {MEDIA_TYPE}, got {content_type or 'no content type'}")
    view, offset, out = memoryview(body), 0, {}
    for name, count in parse_parts(headers.get(PARTS_HEADER)):
        items = []
        for index in range(count):
            if offset + 8 > len(view):
                raise WireError(f"the body ends inside {name}[{index}]'s length")
            (size,) = struct.unpack_from("<Q", view, offset)
            offset += 8
            if size > len(view) - offset:
                raise WireError(f"{name}[{index}] claims {size} bytes; the body has {len(view) - offset} left")
            items.append(bytes(view[offset : offset + size]))
            offset += size
        out[name] = items
    if offset != len(view):
        raise WireError(f"{len(view) - offset} bytes follow the last part the header names")
    return out


def weights_parts(state: dict[str, dict[str, list[bytes]]]) -> dict[str, list[bytes]]:
    """{"u": {"forward": [...]}} as parts {"u.forward": [...]}."""
    return {f"{name}.{form}": items for name, forms in state.items() for form, items in forms.items()}


def weights_state(parts: dict[str, list[bytes]]) -> dict[str, dict[str, list[bytes]]]:
    """The inverse of `weights_parts`; WireError on a part that names no weights and form."""
    state: dict[str, dict[str, list[bytes]]] = {}
    for part, items in parts.items():
        name, _, form = part.partition(".")
        if name not in ("u", "w") or form not in ("forward", "update"):
            raise WireError(f"part {part!r} is not u or w in the forward or update form")
        state.setdefault(name, {})[form] = items
    return state
