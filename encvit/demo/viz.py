"""Figures for the notebooks: block grids, blocks before and after, per-block histograms, token similarity.

Every function returns a matplotlib Figure with a title and labelled axes; the cipher itself is always
`Key.encrypt`/`Key.decrypt`: nothing here re-implements the permutation.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from ..cipher.key import Key

NOTEBOOK_DPI = 70  # keeps the stored notebooks small


def notebook_style(dpi: int = NOTEBOOK_DPI) -> None:
    """Modest figure resolution and font size for figures stored in notebooks."""
    plt.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "font.size": 9, "axes.titlesize": 9})


def image_blocks(image: np.ndarray, block_size: int) -> np.ndarray:
    """The M x M blocks of an H x W x C image, one row each in row-major block order, flattened as (C, M, M)."""
    if image.ndim == 2:
        image = image[:, :, None]
    h, w, c = image.shape
    m = block_size
    if h % m or w % m:
        raise ValueError(f"image size {w}x{h} (WxH) is not a multiple of the block size {m}")
    return image.reshape(h // m, m, w // m, m, c).transpose(0, 2, 4, 1, 3).reshape((h // m) * (w // m), c * m * m)


def block_image(values: np.ndarray, channels: int, block_size: int) -> np.ndarray:
    """One flattened (C, M, M) block back as an M x M x C image (for display)."""
    return np.asarray(values).reshape(channels, block_size, block_size).transpose(1, 2, 0)


def _show(ax, image: np.ndarray, title: str | None = None) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[:, :, 0]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)


def draw_block_grid(
    ax,
    shape: tuple[int, int],
    block_size: int,
    color: str = "white",
    linewidth: float = 0.6,
    highlight: list[int] | None = None,
) -> None:
    """Draw the lines between M x M blocks on an image axis; `highlight` outlines blocks by row-major index."""
    h, w = shape
    for x in range(block_size, w, block_size):
        ax.axvline(x - 0.5, color=color, linewidth=linewidth)
    for y in range(block_size, h, block_size):
        ax.axhline(y - 0.5, color=color, linewidth=linewidth)
    grid_w = w // block_size
    for i, index in enumerate(highlight or []):
        row, col = divmod(index, grid_w)
        ax.add_patch(
            plt.Rectangle(
                (col * block_size - 0.5, row * block_size - 0.5),
                block_size,
                block_size,
                fill=False,
                edgecolor=f"C{i % 10}",
                linewidth=2.0,
            )
        )


def plot_block_grid(
    images: list[np.ndarray],
    titles: list[str],
    block_size: int,
    suptitle: str,
    highlight: list[int] | None = None,
    size: float = 3.6,
) -> Figure:
    """Images side by side with their M x M block grid drawn over them (and some blocks outlined)."""
    h, w = images[0].shape[:2]
    fig, axes = plt.subplots(1, len(images), figsize=(size * len(images), size * h / w + 0.9), squeeze=False)
    for ax, image, title in zip(axes[0], images, titles, strict=False):
        _show(ax, image, title)
        draw_block_grid(ax, image.shape[:2], block_size, highlight=highlight)
        h, w = image.shape[:2]
        ax.set_xlabel(f"{w // block_size} blocks across")
        ax.set_ylabel(f"{h // block_size} blocks down")
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_images(
    images: list[np.ndarray],
    titles: list[str],
    suptitle: str,
    ncols: int | None = None,
    row_labels: list[str] | None = None,
    size: float = 2.4,
) -> Figure:
    """A gallery of uint8 images (H x W x C or H x W) with a title each; `row_labels` label the rows' left side."""
    ncols = ncols or len(images)
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.axis("on")
        _show(ax, image, title)
    for row, label in enumerate(row_labels or []):
        axes[row, 0].set_ylabel(label)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_permutation(key: Key, title: str | None = None) -> Figure:
    """A key's pixel permutation: the matrix P (x' = P x) and, per encrypted position, the source channel."""
    perm = key.pixel_permutation
    n, c, m = key.block_length, key.channels, key.block_size
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.6), gridspec_kw={"width_ratios": [1, 1.4]})
    matrix = np.zeros((n, n))
    matrix[np.arange(n), perm] = 1
    left.imshow(matrix, cmap="Greys", interpolation="nearest")
    left.set_xlabel("position in the plain block (C, M, M order)")
    left.set_ylabel("position in the encrypted block")
    left.set_title(f"P: a {n} x {n} permutation matrix")
    # The encrypted block laid out as C panels of M x M; each cell names the plain position it holds.
    source_channel = (perm // (m * m)).reshape(c, m, m)
    layout = np.concatenate(
        [np.pad(source_channel[ch], ((0, 0), (0, 1)), constant_values=-1) for ch in range(c)], axis=1
    )[:, :-1]
    colours = plt.get_cmap("Set1" if c <= 9 else "tab20")
    shown = np.ma.masked_less(layout, 0)
    right.imshow(shown, cmap=colours, vmin=0, vmax=colours.N - 1, interpolation="nearest")
    if n <= 108:  # annotate only small blocks legibly
        for ch in range(c):
            for i in range(m):
                for j in range(m):
                    right.text(
                        ch * (m + 1) + j, i, str(perm[(ch * m + i) * m + j]), ha="center", va="center", fontsize=7
                    )
    right.set_xticks([ch * (m + 1) + (m - 1) / 2 for ch in range(c)], [f"encrypted channel {ch}" for ch in range(c)])
    right.set_yticks(range(m))
    right.set_ylabel("row in block")
    right.set_title("source of each encrypted value (colour: source channel)")
    fig.suptitle(title or f"pixel permutation of key {key.fingerprint} ({c}x{m}x{m} = {n} values)")
    fig.tight_layout()
    return fig


def plot_blocks_side_by_side(
    plain: np.ndarray, encrypted: np.ndarray, block_size: int, blocks: list[int], suptitle: str
) -> Figure:
    """Chosen blocks (row-major indices) enlarged: plain block above, the encrypted block at the same place below."""
    plain_blocks = image_blocks(plain, block_size)
    encrypted_blocks = image_blocks(encrypted, block_size)
    channels = plain.shape[-1] if plain.ndim == 3 else 1
    fig, axes = plt.subplots(2, len(blocks), figsize=(1.9 * len(blocks), 4.2), squeeze=False)
    for col, index in enumerate(blocks):
        for row, (source, label) in enumerate(((plain_blocks, "plain"), (encrypted_blocks, "encrypted"))):
            ax = axes[row, col]
            _show(ax, block_image(source[index], channels, block_size), f"block {index}, {label}")
            for side in ax.spines.values():
                side.set_edgecolor(f"C{col % 10}")
                side.set_linewidth(2.5)
        axes[1, col].set_xlabel(f"{block_size} x {block_size} pixels")
    axes[0, 0].set_ylabel("plain")
    axes[1, 0].set_ylabel("encrypted")
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_block_histogram(
    plain: np.ndarray, encrypted: np.ndarray, block_size: int, block: int, channel: int = 0, suptitle: str | None = None
) -> Figure:
    """One block's values, plain vs encrypted: all C*M*M values (the same) and one channel's (not the same)."""
    a = image_blocks(plain, block_size)[block]
    b = image_blocks(encrypted, block_size)[block]
    per_channel = block_size * block_size
    bins = np.arange(0, 257, 8)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.0), sharey=False)
    panels = (
        (axes[0], a, b, f"all {a.size} values of block {block}"),
        (
            axes[1],
            a[channel * per_channel : (channel + 1) * per_channel],
            b[channel * per_channel : (channel + 1) * per_channel],
            f"channel {channel} only",
        ),
    )
    for ax, x, y, title in panels:
        ax.hist(x, bins=bins, histtype="stepfilled", alpha=0.35, label="plain", color="C0")
        ax.hist(y, bins=bins, histtype="step", linewidth=1.8, label="encrypted", color="C3")
        ax.set_title(title)
        ax.set_xlabel("pixel value (0-255)")
        ax.set_ylabel("count")
        ax.legend()
    fig.suptitle(suptitle or f"block {block}: values kept, moved across channels")
    fig.tight_layout()
    return fig


def uniform_blocks(images: torch.Tensor, block_size: int) -> torch.Tensor:
    """N x L mask of the blocks of N x C x H x W images (any dtype) holding one value: no permutation changes them."""
    n, c, h, w = images.shape
    m = block_size
    blocks = images.reshape(n, c, h // m, m, w // m, m).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // m) * (w // m), -1)
    return blocks.amax(-1) == blocks.amin(-1)


@torch.inference_mode()
def patch_token_similarity(
    model: nn.Module, plain: torch.Tensor, encrypted: torch.Tensor, other: nn.Module | None = None
) -> torch.Tensor:
    """Cosine similarity (N x L) of the patch tokens `model.patch_embed` makes of `plain` and of `encrypted`.

    With `other`, the encrypted images go through `other.patch_embed` instead (e.g. the model adapted to the key).
    """
    plain_tokens = model.patch_embed(plain)
    encrypted_tokens = (other or model).patch_embed(encrypted)
    return torch.nn.functional.cosine_similarity(plain_tokens, encrypted_tokens, dim=-1)


def plot_token_similarity(
    similarities: dict[str, torch.Tensor],
    grid: tuple[int, int],
    suptitle: str,
    map_image: int = 0,
    include: torch.Tensor | None = None,
) -> Figure:
    """Per label, a histogram of token cosine similarities and, for one image, the map over the patch grid.

    `include` (an N x L boolean mask) limits the histogram to some tokens, e.g. ``~uniform_blocks(...)``.
    """
    labels = list(similarities)
    fig, axes = plt.subplots(
        1,
        1 + len(labels),
        figsize=(3.4 * (1 + len(labels)), 3.0),
        layout="constrained",
        gridspec_kw={"width_ratios": [1.6] + [1] * len(labels)},
    )
    bins = np.linspace(-1, 1, 41)
    for i, label in enumerate(labels):
        values = similarities[label].float()
        values = (values[include] if include is not None else values).flatten().numpy()
        axes[0].hist(
            np.clip(values, -1, 1), bins=bins, alpha=0.6, color=f"C{i}", label=f"{label} (mean {values.mean():.2f})"
        )
        image = axes[1 + i].imshow(
            similarities[label][map_image].float().reshape(grid).numpy(), vmin=-1, vmax=1, cmap="RdBu"
        )
        axes[1 + i].set_title(f"{label}: image {map_image}")
        axes[1 + i].set_xlabel("patch column")
        axes[1 + i].set_ylabel("patch row")
    fig.colorbar(image, ax=axes[1:].tolist(), shrink=0.8, label="cosine similarity")
    axes[0].set_xlabel("cosine similarity of a patch token, plain vs encrypted")
    axes[0].set_yscale("log")  # tokens that match exactly would otherwise dwarf the rest
    axes[0].set_ylabel("number of tokens (log scale)")
    axes[0].set_title("all tokens" if include is None else f"{int(include.sum())} of {include.numel()} tokens")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(suptitle)
    return fig


def plot_training_curves(folder: str | Path, runs: pd.DataFrame, suptitle: str | None = None) -> Figure:
    """Per method, validation accuracy after each epoch on plain and encrypted images (each run's metrics.csv).

    `runs` is the run table of `encvit.experiments.compare.load_results(folder)`; every seed whose run directory is in
    `folder` is a line (grids evaluate the test set after the last epoch only, so curves use validation).
    """
    methods = list(dict.fromkeys(runs.method))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.0 * len(methods), 2.8), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods, strict=False):
        last_epoch = 0
        for _, run in runs[runs.method == method].iterrows():
            path = Path(folder) / run["run"] / "metrics.csv"
            if not path.exists():  # e.g. a shipped comparison keeps the run directories of its first seed only
                continue
            metrics = pd.read_csv(path)
            last_epoch = max(last_epoch, int(metrics.epoch.max()))
            colour = "C0" if run.setting == "plain" else "C1"
            ax.plot(
                metrics.epoch,
                metrics.val_acc,
                marker="o",
                color=colour,
                alpha=0.8,
                label=run.setting if run.seed == runs.seed.min() else None,
            )
        ax.set_title(method)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, max(last_epoch, 1) + 0.5)
        ax.set_xticks(np.unique(np.linspace(1, max(last_epoch, 1), min(max(last_epoch, 1), 8)).round().astype(int)))
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("validation accuracy (%)")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=2)
    fig.suptitle(suptitle or "Validation accuracy after each epoch")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
