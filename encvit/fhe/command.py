"""`encvit fhe-train`: the encrypted head trainer from the command line, writing a self-describing run.

    RUN/config.json          FHEConfig, derived sizes and library versions
    RUN/metrics.csv          per epoch: train loss, val/test accuracy of the decrypted head, seconds, refreshes
    RUN/adapter.safetensors  head.weight and head.bias for RAW backbone features (`encvit evaluate RUN` uses it)
    RUN/fhe.json             CKKS parameters and security level, layout, refreshes, bytes each way, timings,
                             and the plaintext reference (same polynomial and schedule) with the weight gap
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..adapters import AdapterInfo, save_adapter
from ..atomic import write_text
from ..backbones import create_backbone, describe
from ..methods import prepare
from .ckks import PRESETS
from .features import dataset_features
from .head import FeatureSplits
from .server import LEVELS_PER_ITERATION
from .train import FHEConfig, HeadRun, train_encrypted, train_reference


def head_model(features: FeatureSplits, run: HeadRun, model: torch.nn.Module | None = None,
               pretrained: bool = True) -> torch.nn.Module:
    """The backbone prepared for method "head", its head set to the run's weights folded onto raw features."""
    model = model if model is not None else create_backbone(features.backbone, pretrained=pretrained)
    prepare(model, "head", len(features.classes))
    weight, bias = run.raw_head()
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weight).float())
        model.head.bias.copy_(torch.from_numpy(bias).float())
    return model


def compare(encrypted: HeadRun, reference: HeadRun, exact: HeadRun | None = None) -> dict:
    """Accuracy and weight gaps between the decrypted head and the plaintext reference (and exact softmax)."""
    gap = np.abs(encrypted.weights - reference.weights)
    extra = {"exact_softmax_val_acc": exact.rows[-1]["val_acc"],
             "exact_softmax_test_acc": exact.rows[-1]["test_acc"]} if exact is not None else {}
    return {**extra, "plain_val_acc": reference.rows[-1]["val_acc"], "plain_test_acc": reference.rows[-1]["test_acc"],
            "encrypted_val_acc": encrypted.rows[-1]["val_acc"], "encrypted_test_acc": encrypted.rows[-1]["test_acc"],
            "test_acc_gap": encrypted.rows[-1]["test_acc"] - reference.rows[-1]["test_acc"],
            "max_abs_weight_diff": float(gap.max()),
            "max_relative_weight_diff": float(gap.max() / max(np.abs(reference.weights).max(), 1e-12))}


def write_run(out: Path, config: FHEConfig, features: FeatureSplits, encrypted: HeadRun, reference: HeadRun,
              model: torch.nn.Module, exact: HeadRun | None = None) -> Path:
    """Write the run directory atomically: files into RUN.partial, then one rename."""
    from ..train import versions

    import tenseal

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    geometry = describe(model, config.backbone)
    info = AdapterInfo(method="head", backbone=config.backbone, backbone_hash=features.backbone_hash,
                       class_names=list(features.classes), image_size=geometry.image_size,
                       patch_size=geometry.patch_size, channels=geometry.channels, mean=list(geometry.mean),
                       std=list(geometry.std), dataset=features.dataset or config.dataset)
    save_adapter(staging / "adapter.safetensors", model, info)
    plain = {r["epoch"]: r for r in reference.rows}
    rows = [{**r, "plain_val_acc": plain[r["epoch"]]["val_acc"], "plain_test_acc": plain[r["epoch"]]["test_acc"]}
            for r in encrypted.rows]
    write_text(staging / "metrics.csv", pd.DataFrame(rows).to_csv(index=False))
    derived = {"classes": list(features.classes), "backbone_hash": features.backbone_hash,
               "feature_dim": features.dim, "train_samples": len(features.train[1]),
               "layout": encrypted.stats["layout"], "effective_batch_size": encrypted.stats["effective_batch_size"]}
    write_text(staging / "config.json", json.dumps({**asdict(config), "derived": derived,
                                                    "versions": {**versions(), "tenseal": tenseal.__version__}},
                                                   indent=1))
    summary = {**encrypted.stats, "plaintext_reference": compare(encrypted, reference, exact)}
    write_text(staging / "fhe.json", json.dumps(summary, indent=1, default=float))
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return out


def fhe_train(config: FHEConfig, out: str | os.PathLike | None = None, overwrite: bool = False,
              progress: bool = True) -> dict:
    """Extract features, train the head on ciphertexts and in plaintext, write the run; returns the summary."""
    from ..train import prepare_run_dir

    run_dir = prepare_run_dir(out, overwrite)
    config.check()
    model = create_backbone(config.backbone, pretrained=config.pretrained)
    features = dataset_features(config.backbone, config.dataset, config.limit, model=model, progress=progress)
    reference = train_reference(features, config)
    exact = train_reference(features, config, exact=True)
    encrypted = train_encrypted(features, config, progress=progress)
    head_model(features, encrypted, model)
    if run_dir is not None:
        write_run(run_dir, config, features, encrypted, reference, model, exact)
    return {**compare(encrypted, reference, exact), "stats": encrypted.stats, "rows": encrypted.rows, "out": run_dir}


def cmd_fhe_train(args) -> int:
    """Run `encvit fhe-train` and print the figures that matter."""
    names = {f.name for f in fields(FHEConfig)}
    config = FHEConfig(**{k: v for k, v in vars(args).items() if k in names})
    r = fhe_train(config, args.out, args.overwrite, progress=not args.no_progress)
    s = r["stats"]
    ckks = s["ckks"]
    print(f"encrypted head on {config.dataset} ({config.backbone}): test accuracy {r['encrypted_test_acc']:.2f}% "
          f"(plaintext, same polynomial and schedule: {r['plain_test_acc']:.2f}%; max weight difference "
          f"{r['max_abs_weight_diff']:.2e}, {100 * r['max_relative_weight_diff']:.4f}% of the largest weight; "
          f"exact softmax in plaintext: {r['exact_softmax_test_acc']:.2f}%)")
    print(f"CKKS: ring degree {ckks['poly_modulus_degree']}, moduli {ckks['coeff_mod_bit_sizes']} "
          f"({ckks['total_modulus_bits']} bits), scale 2^{ckks['scale_bits']}: {ckks['security_bits']}-bit security; "
          f"{s['iterations']} iterations, {s['seconds_per_iteration']:.2f} s each, {s['refreshes']} refreshes "
          f"({s['refresh_seconds']:.1f} s); sent {s['bytes']['client_to_server']['total'] / 1e6:.0f} MB to the "
          f"server, {s['bytes']['server_to_client']['total'] / 1e6:.0f} MB back"
          + (f"; run written to {r['out']}" if r["out"] else ""))
    return 0


def register(subparsers) -> None:
    """Add the `fhe-train` subcommand to the `encvit` parser."""
    d = FHEConfig()
    p = subparsers.add_parser("fhe-train", help="train a softmax head on CKKS-encrypted features (BlindTuner)")
    p.add_argument("--backbone", default=d.backbone,
                   help=f"encvit-tiny (shipped) or a timm ViT name (default {d.backbone})")
    p.add_argument("--dataset", default=d.dataset,
                   help=f"mnist5k, fashion5k, cifar10 or folder:PATH (default {d.dataset})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"samples per Nesterov step (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    p.add_argument("--momentum", type=float, default=d.momentum,
                   help=f"Nesterov momentum, at most 2 decimals (default {d.momentum})")
    p.add_argument("--softmax-radius", type=float, default=d.softmax_radius,
                   help=f"logit range the polynomial softmax is fitted on (default {d.softmax_radius})")
    trainable = sorted(name for name, params in PRESETS.items() if params.levels >= LEVELS_PER_ITERATION)
    p.add_argument("--preset", default=d.preset, choices=trainable, help=f"CKKS parameters (default {d.preset})")
    p.add_argument("--limit", type=int, help="at most this many images per split (quick runs)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="random backbone weights (tests, dry runs)")
    p.add_argument("--out", metavar="RUN", help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fhe_train)
