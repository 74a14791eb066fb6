"""A features file from another extractor: 768 features per image from the shipped backbone's patch tokens.

    python scripts/token_features.py [--dataset fashion5k] [--grid 2x4] [--out runs/tokens768-fashion5k.npz]

The pre-logits vector of `encvit-tiny` has 96 features; its last block also leaves 64 patch tokens of 96. Averaging
the tokens over a 2 x 4 grid of image regions gives 8 x 96 = 768 features per image: the width of ViT-B/16 and
DeiT-B, with the strong correlations between features that a real extractor has. It shows what any extractor needs
to write for `encvit fhe-train --features`: numpy.savez of train_x, train_y, val_x, val_y, test_x, test_y (and
optionally classes).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from encvit.common.atomic import atomic_path
from encvit.data.datasets import load_dataset
from encvit.models.backbones import create_backbone
from encvit.models.preprocess import BatchPreprocess


@torch.inference_mode()
def pooled_tokens(model, images: torch.Tensor, rows: int, cols: int, batch: int = 256) -> np.ndarray:
    """Patch tokens of the last block (after the final norm) averaged over a rows x cols grid of regions."""
    preprocess = BatchPreprocess(32, 3)
    side = model.patch_embed.grid_size[0]
    out = []
    for start in range(0, len(images), batch):
        tokens = model.forward_features(preprocess(images[start : start + batch]))[:, model.num_prefix_tokens :]
        grid = tokens.reshape(len(tokens), side, side, -1).permute(0, 3, 1, 2)  # N x C x H x W
        pooled = torch.nn.functional.adaptive_avg_pool2d(grid, (rows, cols))  # N x C x rows x cols
        out.append(pooled.flatten(1).float().numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion5k")
    parser.add_argument("--backbone", default="encvit-tiny")
    parser.add_argument("--grid", default="2x4", help="regions the tokens are averaged over, ROWSxCOLS")
    parser.add_argument("--out", default=None, help="default runs/tokens{features}-{dataset}.npz")
    args = parser.parse_args(argv)
    try:
        rows, cols = (int(v) for v in args.grid.lower().split("x"))
    except ValueError:
        parser.error(f"--grid must be ROWSxCOLS, got {args.grid!r}")
    model = create_backbone(args.backbone).eval()
    splits = load_dataset(args.dataset)
    arrays = {}
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        arrays[f"{name}_x"] = pooled_tokens(model, part.images, rows, cols)
        arrays[f"{name}_y"] = part.labels.numpy()
    width = arrays["train_x"].shape[1]
    out = args.out or f"runs/tokens{width}-{args.dataset}.npz"
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                **arrays,
                classes=np.array(splits.classes),
                backbone=np.array(args.backbone),
                dataset=np.array(splits.name),
            )
    print(
        f"wrote {out}: {width} features ({rows} x {cols} regions x {width // (rows * cols)} channels) of "
        + ", ".join(f"{len(arrays[f'{n}_y'])} {n}" for n in ("train", "val", "test"))
        + f" images of {splits.name}"
    )


if __name__ == "__main__":
    main()
