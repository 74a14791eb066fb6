"""`encvit fhe-train`: the encrypted head trainer from the command line, writing a self-describing run.

    RUN/config.json          FHEConfig, derived sizes and library versions
    RUN/metrics.csv          per epoch: validation accuracy and loss from the encrypted validation logits, whether
                             the epoch is the best so far, seconds; train loss and test accuracy as reported by the
                             client (never used to decide); the numpy twin's validation and test accuracy
    RUN/adapter.safetensors  head.weight and head.bias for RAW backbone features (`encvit evaluate RUN` uses it);
                             a run on a features file (--features) writes RUN/head.safetensors instead: the same two
                             tensors for the file's raw features, with no backbone adapter
    RUN/result.json          encrypted test accuracy, the full-precision reference and their difference; wall time,
                             refreshes and bytes each way
    RUN/fhe.json             CKKS parameters and security level, layout, operation counts, bytes by kind, timings,
                             and the numpy twins (same polynomial; exact softmax) with the weight gap
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..adapters import AdapterInfo, save_adapter
from ..atomic import output_lock, replace_folder, write_text
from ..backbones import create_backbone, describe
from ..data import DATASET_HELP
from ..errors import ConfigError, check_output_path
from ..methods import prepare
from ..timing import machine
from .components import choose
from .features import check_splits, dataset_features, read_features_file, sha256_of, write_features_file
from .head import FeatureSplits
from .reference import logistic_reference
from .train import HETAL_SECONDS_PER_RUN, TRAINABLE_PRESETS, FHEConfig, HeadRun, train_encrypted, train_reference


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


def compare(encrypted: HeadRun, twin: HeadRun, exact: HeadRun | None = None) -> dict:
    """Accuracy and weight gaps between the decrypted head and its numpy twin (and the exact-softmax twin)."""
    gap = np.abs(encrypted.weights - twin.weights)
    extra = {"exact_softmax_val_acc": exact.best["val_acc"], "exact_softmax_test_acc": exact.best["test_acc"],
             "exact_softmax_best_epoch": exact.best_epoch} if exact is not None else {}
    return {**extra, "plain_val_acc": twin.best["val_acc"], "plain_test_acc": twin.best["test_acc"],
            "plain_best_epoch": twin.best_epoch, "encrypted_val_acc": encrypted.best["val_acc"],
            "encrypted_test_acc": encrypted.best["test_acc"], "encrypted_best_epoch": encrypted.best_epoch,
            "test_acc_gap_to_twin": encrypted.best["test_acc"] - twin.best["test_acc"],
            "max_abs_weight_diff": float(gap.max()),
            "max_relative_weight_diff": float(gap.max() / max(np.abs(twin.weights).max(), 1e-12))}


def summary(encrypted: HeadRun, reference: dict, wall_seconds: float) -> dict:
    """result.json: the encrypted head's accuracy against the full-precision reference, and what the run cost."""
    st = encrypted.stats
    return {"encrypted_test_acc": encrypted.best["test_acc"], "encrypted_val_acc": encrypted.best["val_acc"],
            "reference_test_acc": reference["test_acc"], "reference_val_acc": reference["val_acc"],
            "reference_C": reference["C"], "difference": encrypted.best["test_acc"] - reference["test_acc"],
            "best_epoch": encrypted.best_epoch, "epochs_run": st["epochs_run"], "stopped_early": st["stopped_early"],
            "iterations": st["iterations"], "seconds_per_iteration": st["seconds_per_iteration"],
            "refreshes": st["refreshes"], "wall_seconds": wall_seconds,
            "training_seconds": st["timings"]["training_seconds"],
            "megabytes_to_server": st["bytes"]["client_to_server"]["total"] / 1e6,
            "megabytes_to_client": st["bytes"]["server_to_client"]["total"] / 1e6,
            "hetal_seconds_per_run": list(HETAL_SECONDS_PER_RUN), "reference": reference}


def write_run(out: Path, config: FHEConfig, features: FeatureSplits, encrypted: HeadRun, twin: HeadRun,
              model: torch.nn.Module | None, exact: HeadRun, result: dict, derived_extra: dict | None = None) -> Path:
    """Write the run directory atomically: files into RUN.partial, then swapped in by renames. Without a `model` (a
    run on a features file) the head for the raw features is written as head.safetensors."""
    from ..train import versions

    import tenseal

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if model is not None:
            geometry = describe(model, config.backbone)
            info = AdapterInfo(method="head", backbone=config.backbone, backbone_hash=features.backbone_hash,
                               class_names=list(features.classes), image_size=geometry.image_size,
                               patch_size=geometry.patch_size, channels=geometry.channels, mean=list(geometry.mean),
                               std=list(geometry.std), dataset=features.dataset or config.dataset)
            save_adapter(staging / "adapter.safetensors", model, info)
        else:
            save_head(staging / "head.safetensors", encrypted, features, derived_extra or {})
        plain = {r["epoch"]: r for r in twin.rows}
        rows = [{**r, "plain_val_acc": plain[r["epoch"]]["val_acc"], "plain_test_acc": plain[r["epoch"]]["test_acc"]}
                for r in encrypted.rows]
        write_text(staging / "metrics.csv", pd.DataFrame(rows).to_csv(index=False))
        derived = {"classes": list(features.classes), "backbone_hash": features.backbone_hash,
                   "feature_dim": features.dim, "train_samples": len(features.train[1]),
                   "val_samples": len(features.val[1]), "test_samples": len(features.test[1]),
                   "layout": encrypted.stats["layout"], "effective_batch_size": encrypted.stats["effective_batch_size"],
                   **(derived_extra or {})}
        write_text(staging / "config.json", json.dumps({**asdict(config), "derived": derived,
                                                        "versions": {**versions(), "tenseal": tenseal.__version__}},
                                                       indent=1))
        write_text(staging / "result.json", json.dumps(result, indent=1, default=float))
        details = {**encrypted.stats, "numpy_twins": compare(encrypted, twin, exact)}
        write_text(staging / "fhe.json", json.dumps(details, indent=1, default=float))
        replace_folder(staging, out)  # a kill at any instant leaves the old run or the new one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def save_head(path: Path, run: HeadRun, features: FeatureSplits, source: dict) -> Path:
    """head.weight (K x d) and head.bias (K) for the raw features of a features file, with its provenance."""
    from safetensors.numpy import save_file

    from ..atomic import atomic_path

    weight, bias = run.raw_head()
    metadata = {"format": "encvit-feature-head", "classes": json.dumps(list(features.classes)),
                "feature_dim": str(features.dim), **{k: str(v) for k, v in source.items()}}
    with atomic_path(path) as tmp:
        save_file({"head.weight": weight.astype(np.float32), "head.bias": bias.astype(np.float32)}, tmp,
                  metadata=metadata)
    return path


def load_features(config: FHEConfig, progress: bool = True) -> tuple[FeatureSplits, torch.nn.Module | None, dict]:
    """The client's features: from a features file (no backbone), or extracted from a dataset by the backbone."""
    if config.features is not None:
        if config.limit is not None:
            raise ConfigError("--limit cuts a dataset's images; with --features, pass a smaller features file")
        features = read_features_file(config.features)
        source = {"features_file": str(config.features), "features_sha256": sha256_of(config.features),
                  "backbone_adapter": None, "note": "trained on bare features: no backbone adapter exists for "
                  "this head; head.safetensors maps the file's raw features to logits"}
        return features, None, source
    model = create_backbone(config.backbone, pretrained=config.pretrained)
    features = dataset_features(config.backbone, config.dataset, config.limit, model=model, progress=progress)
    return features, model, {"backbone_adapter": "adapter.safetensors"}


def fhe_train(config: FHEConfig, out: str | os.PathLike | None = None, overwrite: bool = False,
              progress: bool = True) -> dict:
    """Get the features, choose the projection, compute the reference, train the head on ciphertexts and its numpy
    twins, write the run."""
    from ..train import prepare_run_dir

    start = time.perf_counter()
    config.check()
    locked = check_output_path(out, "--out", folder=True) if out is not None else None
    with output_lock(locked) if locked else contextlib.nullcontext():  # one command at a time writes the run
        run_dir = prepare_run_dir(locked, overwrite) if locked else None
        return _fhe_train(config, run_dir, progress, start)


def _fhe_train(config: FHEConfig, run_dir: Path | None, progress: bool, start: float) -> dict:
    features, model, source = load_features(config, progress)
    check_splits(features, config.limit)
    chosen, selection = choose(features, config) if config.components == "auto" else (config.components, [])
    resolved = replace(config, components=chosen)
    reference = logistic_reference(features)
    twin = train_reference(features, resolved)  # first: a learning rate that diverges fails here, in seconds
    exact = train_reference(features, resolved, exact=True)
    encrypted = train_encrypted(features, resolved, progress=progress)
    if model is not None:
        head_model(features, encrypted, model)
    result = {**summary(encrypted, reference, time.perf_counter() - start), "components": chosen,
              "feature_dim": features.dim, "backbone_adapter": source["backbone_adapter"],
              **{k: source[k] for k in ("features_file", "features_sha256") if k in source},
              "machine_at_end": machine()}  # the wall time is this machine's: cores, load average, clock
    derived = {**source, "components_requested": config.components, "components": chosen,
               "components_selection": selection}
    if run_dir is not None:
        write_run(run_dir, resolved, features, encrypted, twin, model, exact, result, derived)
    return {**result, **compare(encrypted, twin, exact), "stats": encrypted.stats, "rows": encrypted.rows,
            "out": run_dir, "selection": selection}


def cmd_fhe_train(args) -> int:
    """Run `encvit fhe-train` and print the figures that matter; the last line is the result."""
    names = {f.name for f in fields(FHEConfig)}
    config = FHEConfig(**{k: v for k, v in vars(args).items() if k in names})
    r = fhe_train(config, args.out, args.overwrite, progress=not args.no_progress)
    ckks = r["stats"]["ckks"]
    print(f"CKKS: ring degree {ckks['poly_modulus_degree']}, moduli {ckks['coeff_mod_bit_sizes']} "
          f"({ckks['total_modulus_bits']} bits), scale 2^{ckks['scale_bits']}: {ckks['security_bits']}-bit security")
    print(f"{r['epochs_run']} epochs ({'stopped early' if r['stopped_early'] else 'all'}; best epoch "
          f"{r['best_epoch']}), {r['iterations']} iterations at {r['seconds_per_iteration']:.2f} s, {r['refreshes']} "
          f"refreshes; {r['wall_seconds']:.0f} s in all (HETAL: {HETAL_SECONDS_PER_RUN[0]}-{HETAL_SECONDS_PER_RUN[1]} "
          f"s per run); {r['megabytes_to_server']:.0f} MB to the server, {r['megabytes_to_client']:.0f} MB back")
    print(f"numpy twin with the same polynomial: test {r['plain_test_acc']:.2f}% (max weight difference "
          f"{r['max_abs_weight_diff']:.1e}); exact softmax, same schedule: {r['exact_softmax_test_acc']:.2f}%"
          + (f"; run written to {r['out']}" if r["out"] else ""))
    if r["selection"]:
        print("components (numpy twin, validation accuracy): " + ", ".join(
            f"{row['components']}: {row['val_acc']:.2f}%" for row in r["selection"]) + f"; kept {r['components']}")
    source = f"features file {config.features}" if config.features else f"{config.dataset} ({config.backbone})"
    print(f"encrypted head on {source}, {r['feature_dim']} features, components {r['components']}: "
          f"test accuracy {r['encrypted_test_acc']:.2f}%, "
          f"full-precision reference {r['reference_test_acc']:.2f}% (logistic regression, C={r['reference_C']:g} "
          f"chosen on validation), difference {r['difference']:+.2f} points")
    return 0


def register(subparsers) -> None:
    """Add the `fhe-train` subcommand to the `encvit` parser."""
    d = FHEConfig()
    p = subparsers.add_parser("fhe-train", help="train a softmax head on CKKS-encrypted features (BlindTuner)")
    p.add_argument("--backbone", default=d.backbone,
                   help=f"encvit-tiny (shipped) or a timm ViT name (default {d.backbone})")
    p.add_argument("--dataset", default=d.dataset,
                   help=f"{DATASET_HELP} (default {d.dataset})")
    p.add_argument("--features", metavar="F.npz", help="train on a features file (train_x, train_y, val_x, ...; from "
                   "`encvit features` or any extractor) instead of --backbone and --dataset")
    p.add_argument("--components", default=d.components,
                   help="principal components the client keeps: a number, all, or auto (default: chosen per run on "
                        "validation by the numpy twin)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"most epochs (default {d.epochs})")
    p.add_argument("--patience", type=int, default=d.patience,
                   help=f"stop after this many epochs without a better validation score (default {d.patience})")
    p.add_argument("--stop-on", default=d.stop_on, choices=["val_loss", "val_acc"],
                   help=f"the validation score: cross-entropy or accuracy (default {d.stop_on})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"samples per Nesterov step (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr:g})")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=["constant", "cosine"],
                   help=f"learning rate over the most epochs (default {d.lr_schedule})")
    p.add_argument("--momentum", type=float, default=d.momentum,
                   help=f"Nesterov momentum, at most 2 decimals (default {d.momentum})")
    p.add_argument("--softmax-radius", type=float, default=d.softmax_radius,
                   help=f"logit range the polynomial softmax is fitted on (default {d.softmax_radius:g})")
    p.add_argument("--whiten-ridge", type=float, default=d.whiten_ridge,
                   help=f"ridge added to the eigenvalues when whitening the features (default {d.whiten_ridge:g})")
    p.add_argument("--no-whiten", dest="whiten_ridge", action="store_const", const=None,
                   help="standardise the features only")
    p.add_argument("--preset", default=d.preset, choices=TRAINABLE_PRESETS, help=f"CKKS parameters (default {d.preset})")
    p.add_argument("--limit", type=int, help="at most this many images per split (quick runs)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    p.add_argument("--threads", type=int, default=d.threads,
                   help=f"threads for independent ciphertexts (default {d.threads}: the cores this process may use)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="random backbone weights (tests, dry runs)")
    p.add_argument("--out", metavar="RUN", help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fhe_train)

    p = subparsers.add_parser("features", help="the client's plaintext step: a backbone's features of a dataset, "
                              "as a features file for `fhe-train --features`")
    p.add_argument("--backbone", default=d.backbone, help=f"encvit-tiny (shipped) or a timm ViT name (default {d.backbone})")
    p.add_argument("--dataset", default=d.dataset, help=f"{DATASET_HELP} (default {d.dataset})")
    p.add_argument("--limit", type=int, help="at most this many images per split (quick runs)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random backbone weights")
    p.add_argument("--out", required=True, metavar="F.npz", help="the features file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing features file")
    p.set_defaults(func=cmd_features)


def cmd_features(args) -> int:
    """Run `encvit features`: extract (or read from the cache) and write a features file."""
    out = check_output_path(args.out, "--out", folder=False)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    config = FHEConfig(backbone=args.backbone, dataset=args.dataset, limit=args.limit, pretrained=args.pretrained)
    features, _, _ = load_features(config, progress=True)
    check_splits(features, config.limit)
    write_features_file(out, features)
    sizes = ", ".join(f"{len(getattr(features, s)[1])} {s}" for s in ("train", "val", "test"))
    print(f"wrote {out}: {features.dim} features of {sizes} images of {features.dataset} ({args.backbone}), "
          f"{len(features.classes)} classes")
    return 0
