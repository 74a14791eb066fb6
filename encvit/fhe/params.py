"""CKKS parameter sets by name: pure data, readable without TenSEAL (the command line's choices come from here).

TenSEAL has no bootstrapping, so the parameters fix how many multiplications a ciphertext survives: one level per
middle prime of the coefficient modulus (see ``encvit.fhe.ckks``).
"""

from __future__ import annotations

from dataclasses import dataclass


def max_modulus_bits(poly_modulus_degree: int, security: int = 128) -> int:
    """The largest total modulus (bits) the HE standard allows at this ring degree and security level."""
    from tenseal import sealapi  # SEAL's own table; loaded only when a security level is asked for

    level = {128: sealapi.SEC_LEVEL_TYPE.TC128, 192: sealapi.SEC_LEVEL_TYPE.TC192, 256: sealapi.SEC_LEVEL_TYPE.TC256}
    return int(sealapi.CoeffModulus.MaxBitCount(poly_modulus_degree, level[security]))


def security_level(poly_modulus_degree: int, total_bits: int) -> int:
    """Classical security in bits (256, 192 or 128) of a ring degree and total modulus size; 0 if below 128."""
    for bits in (256, 192, 128):
        if total_bits <= max_modulus_bits(poly_modulus_degree, bits):
            return bits
    return 0


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
        return float(2**self.scale_bits)

    def describe(self) -> dict:
        """The parameters and the security level they give, as JSON-ready values."""
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "slots": self.slots,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "total_modulus_bits": self.total_bits,
            "scale_bits": self.scale_bits,
            "levels": self.levels,
            "security_bits": security_level(self.poly_modulus_degree, self.total_bits),
            "max_bits_for_128": max_modulus_bits(self.poly_modulus_degree, 128),
            "standard": "HomomorphicEncryption.org security standard, as tabulated by SEAL",
        }


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
LEVELS_PER_ITERATION = 5  # one iteration of the packed trainer: the levels between two refreshes
TRAINABLE_PRESETS = tuple(sorted(n for n, p in PRESETS.items() if p.levels >= LEVELS_PER_ITERATION))
