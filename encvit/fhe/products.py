"""The server's encrypted passes on the dense layout (``encvit.fhe.packing``): logits, errors, gradient.

One iteration spends five levels: logits (1), the polynomial softmax (square 1, cube 1, and one plaintext product
that scales, masks and sums its terms), gradient (1). Products that are summed share one relinearisation; the
baby-step giant-step rotations are the only key switches that grow with the width.
"""

from __future__ import annotations

from .ops import Engine
from .packing import Layout, first_phase_mask, log2
from .softmax import PolySoftmax


def _baby_steps(engine: Engine, layout: Layout, vectors: list) -> list[list]:
    """Each vector rotated by A u1 for u1 < U1 (the unrotated one first), in parallel."""
    tasks = [(v, u1) for v in range(len(vectors)) for u1 in range(layout.baby)]
    rotated = engine.map(
        lambda t: vectors[t[0]] if t[1] == 0 else engine.rotate(vectors[t[0]], layout.phases * t[1]), tasks
    )
    return [rotated[v * layout.baby : (v + 1) * layout.baby] for v in range(len(vectors))]


def _giant_steps(engine: Engine, layout: Layout, data: list[list], baby: list[list[list]], pairs: int) -> list:
    """Per pair, sum_u2 rot(sum_{blocks, u1} data[block][u] * baby[block][pair][u1], A U1 u2), u = u1 + U1 u2."""
    u1n, u2n = layout.baby, layout.giant

    def partial(task):
        pair, u2 = task
        acc = None
        for block, block_data in enumerate(data):
            for u1 in range(u1n):
                product = engine.multiply(block_data[u2 * u1n + u1], baby[block][pair][u1])
                acc = product if acc is None else engine.add_(acc, product)
        engine.relin_rescale_(acc)  # one key switch for the U1 products of every block
        return acc if u2 == 0 else engine.rotate(acc, layout.phases * u1n * u2)

    parts = engine.map(partial, [(pair, u2) for pair in range(pairs) for u2 in range(u2n)])
    sums = []
    for pair in range(pairs):
        acc = parts[pair * u2n]
        for part in parts[pair * u2n + 1 : (pair + 1) * u2n]:
            engine.add_(acc, part)
        sums.append(acc)
    return sums


def forward(engine: Engine, layout: Layout, blocks: list[list], weights: list) -> list[list]:
    """Logits per block and class pair, (z_k + i z_k') / 2 at slot A b of sample b (other slots hold partial sums):
    `blocks` hold each block's U forward ciphertexts, `weights` one forward-form ciphertext per pair. One level.
    The weights' rotations are shared by every block."""
    baby = _baby_steps(engine, layout, weights)
    sums = [_giant_steps(engine, layout, [data], [baby], len(weights)) for data in blocks]
    steps = [1 << t for t in range(log2(layout.phases))]
    flat = engine.map(lambda acc: engine.rotate_sum_(acc, steps), [acc for block in sums for acc in block])
    return [flat[i * len(weights) : (i + 1) * len(weights)] for i in range(len(blocks))]


def errors(
    engine: Engine, layout: Layout, logits: list, labels: list, poly: PolySoftmax, factor: float, scale: float
) -> list:
    """factor * (p(z) - y) per class pair at slot A b, zero elsewhere, spread over the phases of each block.

    With u = z_k (from Z + conj Z) and v = i z_k' (Z - conj Z), the cubic parts are u^2 (u + b/c) and
    v^2 (v + i b/c) = -i z'^2 (z' + b/c): one square and one product each. Every term then meets one plaintext that
    scales it, masks the other phases and lands it at the same level and scale.
    """
    k, real_pairs = poly.num_classes, layout.num_classes // 2
    shift = poly.b / poly.c

    def cubics(z):
        conj = engine.conjugate(z)
        u = engine.add_(engine.copy(z), conj)
        v = engine.sub_(engine.copy(z), conj)
        out = []
        for part, constant in ((u, shift), (v, 1j * shift)):
            square = engine.relin_rescale_(engine.square(part))
            shifted = engine.add_plain_(engine.switch(part, engine.level(square)), constant, key=("shift", constant))
            out.append(engine.relin_rescale_(engine.multiply(square, shifted)))
        return out

    cubes = engine.map(cubics, logits)
    total_u, total_v = engine.copy(cubes[0][0]), engine.copy(cubes[0][1])
    for cube_u, cube_v in cubes[1:]:
        engine.add_(total_u, cube_u)
        engine.add_(total_v, cube_v)
    level = engine.level(total_u) - 1
    c, mask = poly.c, (lambda value: first_phase_mask(layout, value))

    def term(ct, value):
        return engine.multiply_plain(ct, mask(value), scale=scale, level=level, key=("term", value))

    # -factor * c * mean_j z_j^2 (z_j + b/c), for the real and for the imaginary part of a pair
    means = {
        both: engine.add_(term(total_u, -factor * c / k * both), term(total_v, -factor * c / k * both * 1j))
        for both in {1 + 1j if pair < real_pairs else 1.0 + 0j for pair in range(layout.pairs)}
    }

    def error(pair: int):
        both = 1 + 1j if pair < real_pairs else 1.0 + 0j
        cube_u, cube_v = cubes[pair]
        e = term(cube_u, factor * c)
        engine.add_(e, term(cube_v, -factor * c))
        engine.add_(e, term(logits[pair], 2 * poly.a * factor))
        engine.add_(e, term(labels[pair], -factor))
        engine.add_(e, means[both])
        engine.add_plain_(e, mask(factor / k * both))
        for t in range(log2(layout.phases)):  # sample b's error in every phase of its block
            engine.add_(e, engine.rotate(e, -(1 << t)))
        return e

    return engine.map(error, range(layout.pairs))


def gradient(engine: Engine, layout: Layout, data: list[list], errors_per_block: list[list]) -> list:
    """X^T E of a batch per class pair, at slot A f of feature f (the update form): `data` are each block's U
    gradient ciphertexts, `errors_per_block` each block's spread errors (one per pair). One level."""
    baby = [_baby_steps(engine, layout, block_errors) for block_errors in errors_per_block]
    sums = _giant_steps(engine, layout, data, baby, layout.pairs)
    a, u, m = layout.phases, layout.offsets, layout.width
    steps = [(a * u + 1) << t for t in range(log2(a))] + [(a * m) << t for t in range(log2(layout.block // m))]
    return engine.map(lambda acc: engine.rotate_sum_(acc, steps), sums)
