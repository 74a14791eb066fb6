"""Undoing block scrambling: put the blocks back where their edges agree, over many images at once.

Block scrambling moves the blocks of every image the same way, so how well block b continues block a to the
right (or below), summed over all images, tells the order much better than any one image does. Placing the
blocks is a quadratic assignment with two terms (horizontal and vertical neighbours) plus a polish by swaps.
scipy's `quadratic_assignment` takes one matrix pair, so the Frank-Wolfe iteration it uses (FAQ, Vogelstein
et al. 2015) is written here for a sum of two; the linear steps are scipy's `linear_sum_assignment`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

# Swaps of single blocks and moves of whole lines are tried for grids of at most this many blocks: both take
# O(G^2) cost evaluations and more on larger grids.
POLISH_BLOCKS = 256


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a_i - b_j||^2 for rows a (G x F) and b (G x F)."""
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def edge_dissimilarities(
    plain_blocks: np.ndarray, grid: tuple[int, int], block_size: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """G x G costs of block b right of block a, and of b below a, summed over images (N x G x C*M*M blocks).

    Each side predicts the other's first row or column by linear extrapolation (Pomeranz et al. 2011), which
    tells smooth gradients from edges better than comparing the two boundary rows alone.
    """
    count, blocks = plain_blocks.shape[:2]
    m = block_size
    x = plain_blocks.reshape(count, blocks, channels, m, m).astype(np.float64).transpose(1, 0, 2, 3, 4)

    def costs(last, before_last, first, after_first):
        ahead = (2 * last - before_last if m > 1 else last).reshape(blocks, -1)
        behind = (2 * first - after_first if m > 1 else first).reshape(blocks, -1)
        return _squared_distances(ahead, first.reshape(blocks, -1)) + _squared_distances(
            last.reshape(blocks, -1), behind
        )

    second = min(1, m - 1)
    right = costs(x[..., -1], x[..., -1 - second], x[..., 0], x[..., second])
    below = costs(x[..., -1, :], x[..., -1 - second, :], x[..., 0, :], x[..., second, :])
    scale = max(right.mean(), below.mean(), 1e-12)
    right, below = right / scale, below / scale
    # A block is never its own neighbour: a cost above any real one, finite so that the iteration stays stable.
    np.fill_diagonal(right, 10 * right.max())
    np.fill_diagonal(below, 10 * below.max())
    return right, below


def _neighbours(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """0/1 matrices of grid positions: A_right[u, v] = 1 when v is right of u; A_below likewise."""
    gh, gw = grid
    positions = np.arange(gh * gw).reshape(gh, gw)
    right = np.zeros((gh * gw, gh * gw))
    below = np.zeros_like(right)
    right[positions[:, :-1].reshape(-1), positions[:, 1:].reshape(-1)] = 1
    below[positions[:-1].reshape(-1), positions[1:].reshape(-1)] = 1
    return right, below


def placement_cost(
    placement: np.ndarray, right: np.ndarray, below: np.ndarray, grid: tuple[int, int], prior: np.ndarray | None = None
) -> float:
    """Total cost of a placement (placement[u] = the block at grid position u): edges, plus the prior's term."""
    gh, gw = grid
    at = placement.reshape(gh, gw)
    cost = right[at[:, :-1], at[:, 1:]].sum() + below[at[:-1], at[1:]].sum()
    if prior is not None:
        cost += prior[np.arange(len(placement)), placement].sum()
    return float(cost)


def position_prior(plain_blocks: np.ndarray, reference_blocks: np.ndarray) -> np.ndarray:
    """G x G cost of putting block a (N x G x n, decrypted within blocks) at grid position u, from how far its
    mean over the images lies from the reference images' mean block at u (same image size and domain)."""
    mean_blocks = plain_blocks.astype(np.float64).mean(axis=0)
    reference_means = reference_blocks.astype(np.float64).mean(axis=0)
    prior = _squared_distances(reference_means, mean_blocks)
    return prior / max(prior.mean(), 1e-12)


def _objective(p, terms, prior):
    return sum((a * (p @ d @ p.T)).sum() for a, d in terms) + (prior * p).sum()


def _frank_wolfe(terms, prior: np.ndarray, start: np.ndarray, iterations: int) -> np.ndarray:
    p = start
    for _ in range(iterations):
        gradient = sum(a @ p @ d.T + a.T @ p @ d for a, d in terms) + prior
        rows, cols = linear_sum_assignment(gradient)
        q = np.zeros_like(p)
        q[rows, cols] = 1
        r = q - p
        quadratic = sum((a * (r @ d @ r.T)).sum() for a, d in terms)
        linear = sum((a * (p @ d @ r.T + r @ d @ p.T)).sum() for a, d in terms) + (prior * r).sum()
        if quadratic > 0:
            step = float(np.clip(-linear / (2 * quadratic), 0, 1))
        else:
            step = 1.0 if quadratic + linear < 0 else 0.0
        if step == 0:
            break
        p = p + step * r
    return linear_sum_assignment(-p)[1]


def _polish(placement: np.ndarray, right, below, grid, prior, passes: int = 4) -> np.ndarray:
    """Swap pairs of blocks while a swap lowers the total cost (a few passes over all pairs)."""
    placement = placement.copy()
    cost = placement_cost(placement, right, below, grid, prior)
    size = len(placement)
    for _ in range(passes):
        improved = False
        for u in range(size - 1):
            for v in range(u + 1, size):
                placement[[u, v]] = placement[[v, u]]
                new = placement_cost(placement, right, below, grid, prior)
                if new < cost - 1e-12:
                    cost, improved = new, True
                else:
                    placement[[u, v]] = placement[[v, u]]
        if not improved:
            break
    return placement


def _confidence(cost: np.ndarray) -> np.ndarray:
    """Each pairing's cost relative to the best alternative of either block (Gallagher 2012): a pairing that
    is clearly better than every other choice scores far below 1; a flat block's many equal options near 1."""
    off = cost + np.diag(np.full(len(cost), np.inf))
    second_after = np.partition(off, 1, axis=1)[:, 1]  # the second-best right neighbour of a
    second_before = np.partition(off, 1, axis=0)[1, :]  # the second-best left neighbour of b
    floor = 1e-3 * np.median(cost)  # two flat blocks (cost 0, alternatives 0) are not a confident pair
    return (cost + floor) / (np.minimum(second_after[:, None], second_before[None, :]) + floor)


def _assemble(right: np.ndarray, below: np.ndarray, grid: tuple[int, int]) -> list[dict]:
    """Kruskal-style assembly: join pieces by their most confident pairings while the joined piece fits the
    grid without overlap. Returns the clusters as {block: (row, col)}, largest first."""
    gh, gw = grid
    size = gh * gw
    scores = np.concatenate([_confidence(right).reshape(-1), _confidence(below).reshape(-1)])
    cluster_of = list(range(size))
    members = {b: {b: (0, 0)} for b in range(size)}
    cells = {b: {(0, 0)} for b in range(size)}
    boxes = {b: (0, 0, 0, 0) for b in range(size)}  # min row, max row, min col, max col
    for index in np.argsort(scores, kind="stable"):
        direction, pair = divmod(int(index), size * size)
        a, b = divmod(pair, size)
        keep, move = cluster_of[a], cluster_of[b]
        if keep == move:
            continue
        if len(members[move]) > len(members[keep]):  # move the smaller piece, in the opposite direction
            keep, move, a, b, sign = move, keep, b, a, -1
        else:
            sign = 1
        ra, ca = members[keep][a]
        rb, cb = members[move][b]
        dr, dc = (ra - rb, ca + sign - cb) if direction == 0 else (ra + sign - rb, ca - cb)
        r0, r1, c0, c1 = boxes[keep]
        m0, m1, n0, n1 = boxes[move]
        box = (min(r0, m0 + dr), max(r1, m1 + dr), min(c0, n0 + dc), max(c1, n1 + dc))
        if box[1] - box[0] >= gh or box[3] - box[2] >= gw:
            continue
        moved = {block: (r + dr, c + dc) for block, (r, c) in members[move].items()}
        if any(cell in cells[keep] for cell in moved.values()):
            continue
        members[keep].update(moved)
        cells[keep].update(moved.values())
        boxes[keep] = box
        for block in moved:
            cluster_of[block] = keep
        del members[move], cells[move], boxes[move]
        if len(members) == 1:
            break
    return sorted(members.values(), key=len, reverse=True)


def _place_clusters(clusters: list[dict], right, below, grid, prior) -> np.ndarray:
    """A full placement from the assembled clusters: the largest where the prior fits it best, the other
    blocks into the free cells by a linear assignment on the prior and the edges to blocks already placed."""
    gh, gw = grid
    size = gh * gw
    largest = clusters[0]
    rows = [r for r, _ in largest.values()]
    cols = [c for _, c in largest.values()]
    best, best_cost = None, np.inf
    for top in range(gh - (max(rows) - min(rows))):
        for left in range(gw - (max(cols) - min(cols))):
            cells = {b: ((r - min(rows) + top), (c - min(cols) + left)) for b, (r, c) in largest.items()}
            cost = sum(prior[r * gw + c, b] for b, (r, c) in cells.items())
            if cost < best_cost:
                best, best_cost = cells, cost
    placement = np.full(size, -1)
    for block, (r, c) in best.items():
        placement[r * gw + c] = block
    free_cells = np.flatnonzero(placement < 0)
    if len(free_cells):
        free_blocks = np.setdiff1d(np.arange(size), placement[placement >= 0])
        cost = prior[np.ix_(free_cells, free_blocks)].copy()
        for i, cell in enumerate(free_cells):
            r, c = divmod(int(cell), gw)
            for (nr, nc), table, after in (
                ((r, c - 1), right, True),
                ((r, c + 1), right, False),
                ((r - 1, c), below, True),
                ((r + 1, c), below, False),
            ):
                if 0 <= nr < gh and 0 <= nc < gw and placement[nr * gw + nc] >= 0:
                    neighbour = placement[nr * gw + nc]
                    cost[i] += table[neighbour, free_blocks] if after else table[free_blocks, neighbour]
        rows_, cols_ = linear_sum_assignment(cost)
        placement[free_cells[rows_]] = free_blocks[cols_]
    return placement


def _move_lines(placement: np.ndarray, right, below, grid, prior, passes: int = 4) -> np.ndarray:
    """Move runs of whole columns, then of whole rows, to other places while that lowers the cost: pieces
    assembled right within columns but in the wrong column order are out of reach of single swaps."""
    gh, gw = grid
    at = placement.reshape(gh, gw)
    cost = placement_cost(placement, right, below, grid, prior)
    for axis in (1, 0):
        for _ in range(passes):
            improved = False
            lines = at.shape[axis]
            for length in range(1, lines):
                for first in range(lines - length + 1):
                    rest = [i for i in range(lines) if not first <= i < first + length]
                    for insert in range(len(rest) + 1):
                        order = rest[:insert] + list(range(first, first + length)) + rest[insert:]
                        candidate = np.take(at, order, axis=axis)
                        new = placement_cost(candidate.reshape(-1), right, below, grid, prior)
                        if new < cost - 1e-12:
                            at, cost, improved = candidate, new, True
                            break
                    if improved:
                        break
                if improved:
                    break
            if not improved:
                break
    return at.reshape(-1)


def solve_jigsaw(
    right: np.ndarray, below: np.ndarray, grid: tuple[int, int], prior: np.ndarray | None = None, polish: bool = True
) -> tuple[np.ndarray, float]:
    """The block order that minimises the edge costs (plus an optional G x G `prior` of block a at position u):
    (order, cost) with order[j] = the grid position of encrypted block j."""
    size = grid[0] * grid[1]
    prior = np.zeros((size, size)) if prior is None else prior
    candidates = [_place_clusters(_assemble(right, below, grid), right, below, grid, prior)]
    if size <= POLISH_BLOCKS:
        # A second candidate from the Frank-Wolfe relaxation, started from the prior's assignment.
        a_right, a_below = _neighbours(grid)
        start = np.zeros((size, size))
        start[linear_sum_assignment(prior)] = 1
        candidates.append(_frank_wolfe(((a_right, right), (a_below, below)), prior, start, 40))
        if polish:
            candidates = [
                _polish(
                    _move_lines(_polish(c, right, below, grid, prior), right, below, grid, prior),
                    right,
                    below,
                    grid,
                    prior,
                )
                for c in candidates
            ]
    costs = [placement_cost(c, right, below, grid, prior) for c in candidates]
    best = candidates[int(np.argmin(costs))]
    return np.argsort(best), float(min(costs))
