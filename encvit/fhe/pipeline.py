"""The client's whole encrypted-head run: features, the projection chosen on validation, the full-precision
reference, training on ciphertexts with its numpy twins, and the self-describing run folder.

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
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..common.atomic import output_lock, replace_folder, write_bytes, write_text
from ..common.errors import ConfigError, check_output_path
from ..common.timing import machine
from ..models.adapters import AdapterInfo, save_adapter
from ..models.backbones import create_backbone, describe
from ..models.methods import prepare
from .checkpoint import SECRET_FILE, Checkpoint, fingerprint, state_folder
from .components import choose
from .config import FHEConfig, RemoteOptions
from .features import check_splits, dataset_features, read_features_file, sha256_of
from .head import FeatureSplits
from .reference import logistic_reference
from .train import HETAL_SECONDS_PER_RUN, HeadRun, train_encrypted, train_reference


def head_model(
    features: FeatureSplits, run: HeadRun, model: torch.nn.Module | None = None, pretrained: bool = True
) -> torch.nn.Module:
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
    extra = (
        {
            "exact_softmax_val_acc": exact.best["val_acc"],
            "exact_softmax_test_acc": exact.best["test_acc"],
            "exact_softmax_best_epoch": exact.best_epoch,
        }
        if exact is not None
        else {}
    )
    return {
        **extra,
        "plain_val_acc": twin.best["val_acc"],
        "plain_test_acc": twin.best["test_acc"],
        "plain_best_epoch": twin.best_epoch,
        "encrypted_val_acc": encrypted.best["val_acc"],
        "encrypted_test_acc": encrypted.best["test_acc"],
        "encrypted_best_epoch": encrypted.best_epoch,
        "test_acc_gap_to_twin": encrypted.best["test_acc"] - twin.best["test_acc"],
        "max_abs_weight_diff": float(gap.max()),
        "max_relative_weight_diff": float(gap.max() / max(np.abs(twin.weights).max(), 1e-12)),
    }


def summary(encrypted: HeadRun, reference: dict, wall_seconds: float) -> dict:
    """result.json: the encrypted head's accuracy against the full-precision reference, and what the run cost."""
    st = encrypted.stats
    return {
        "encrypted_test_acc": encrypted.best["test_acc"],
        "encrypted_val_acc": encrypted.best["val_acc"],
        "reference_test_acc": reference["test_acc"],
        "reference_val_acc": reference["val_acc"],
        "reference_C": reference["C"],
        "difference": encrypted.best["test_acc"] - reference["test_acc"],
        "best_epoch": encrypted.best_epoch,
        "epochs_run": st["epochs_run"],
        "stopped_early": st["stopped_early"],
        "iterations": st["iterations"],
        "seconds_per_iteration": st["seconds_per_iteration"],
        "refreshes": st["refreshes"],
        "wall_seconds": wall_seconds,
        "training_seconds": st["timings"]["training_seconds"],
        "megabytes_to_server": st["bytes"]["client_to_server"]["total"] / 1e6,
        "megabytes_to_client": st["bytes"]["server_to_client"]["total"] / 1e6,
        "hetal_seconds_per_run": list(HETAL_SECONDS_PER_RUN),
        "reference": reference,
    }


def write_run(
    out: Path,
    config: FHEConfig,
    features: FeatureSplits,
    encrypted: HeadRun,
    twin: HeadRun,
    model: torch.nn.Module | None,
    exact: HeadRun,
    result: dict,
    derived_extra: dict | None = None,
    secret: bytes | None = None,
) -> Path:
    """Write the run directory atomically: files into RUN.partial, then swapped in by renames. Without a `model` (a
    run on a features file) the head for the raw features is written as head.safetensors. A remote run's `secret`
    context (the client's keys) is kept as RUN/secret-context.tenseal, readable by its owner only."""
    import tenseal

    from ..training.run import versions

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if model is not None:
            geometry = describe(model, config.backbone)
            info = AdapterInfo(
                method="head",
                backbone=config.backbone,
                backbone_hash=features.backbone_hash,
                class_names=list(features.classes),
                image_size=geometry.image_size,
                patch_size=geometry.patch_size,
                channels=geometry.channels,
                mean=list(geometry.mean),
                std=list(geometry.std),
                dataset=features.dataset or config.dataset,
            )
            save_adapter(staging / "adapter.safetensors", model, info)
        else:
            save_head(staging / "head.safetensors", encrypted, features, derived_extra or {})
        plain = {r["epoch"]: r for r in twin.rows}
        rows = [
            {**r, "plain_val_acc": plain[r["epoch"]]["val_acc"], "plain_test_acc": plain[r["epoch"]]["test_acc"]}
            for r in encrypted.rows
        ]
        write_text(staging / "metrics.csv", pd.DataFrame(rows).to_csv(index=False))
        derived = {
            "classes": list(features.classes),
            "backbone_hash": features.backbone_hash,
            "feature_dim": features.dim,
            "train_samples": len(features.train[1]),
            "val_samples": len(features.val[1]),
            "test_samples": len(features.test[1]),
            "layout": encrypted.stats["layout"],
            "effective_batch_size": encrypted.stats["effective_batch_size"],
            **(derived_extra or {}),
        }
        write_text(
            staging / "config.json",
            json.dumps(
                {**asdict(config), "derived": derived, "versions": {**versions(), "tenseal": tenseal.__version__}},
                indent=1,
            ),
        )
        write_text(staging / "result.json", json.dumps(result, indent=1, default=float))
        if secret is not None:
            write_bytes(staging / SECRET_FILE, secret, mode=0o600)
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

    from ..common.atomic import atomic_path

    weight, bias = run.raw_head()
    metadata = {
        "format": "encvit-feature-head",
        "classes": json.dumps(list(features.classes)),
        "feature_dim": str(features.dim),
        **{k: str(v) for k, v in source.items()},
    }
    with atomic_path(path) as tmp:
        save_file(
            {"head.weight": weight.astype(np.float32), "head.bias": bias.astype(np.float32)}, tmp, metadata=metadata
        )
    return path


def load_features(config: FHEConfig, progress: bool = True) -> tuple[FeatureSplits, torch.nn.Module | None, dict]:
    """The client's features: from a features file (no backbone), or extracted from a dataset by the backbone."""
    if config.features is not None:
        if config.limit is not None:
            raise ConfigError("--limit cuts a dataset's images; with --features, pass a smaller features file")
        features = read_features_file(config.features)
        source = {
            "features_file": str(config.features),
            "features_sha256": sha256_of(config.features),
            "backbone_adapter": None,
            "note": "trained on bare features: no backbone adapter exists for "
            "this head; head.safetensors maps the file's raw features to logits",
        }
        return features, None, source
    model = create_backbone(config.backbone, pretrained=config.pretrained)
    features = dataset_features(config.backbone, config.dataset, config.limit, model=model, progress=progress)
    return features, model, {"backbone_adapter": "adapter.safetensors"}


def fhe_train(
    config: FHEConfig,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    remote: RemoteOptions | None = None,
) -> dict:
    """Get the features, choose the projection, compute the reference, train the head on ciphertexts and its numpy
    twins, write the run. With `remote`, the server is `encvit fhe-serve` at its URL, and a rerun of a run that
    was cut off takes up its job."""
    from ..training.run import prepare_run_dir

    start = time.perf_counter()
    config.check()
    if remote is not None:
        if out is None:
            raise ConfigError("--server needs --out RUN: the client keeps its keys and progress beside the run")
        remote.token()  # a missing token is refused before any work
    locked = check_output_path(out, "--out", folder=True) if out is not None else None
    with output_lock(locked) if locked else contextlib.nullcontext():  # one command at a time writes the run
        run_dir = prepare_run_dir(locked, overwrite) if locked else None
        return _fhe_train(config, run_dir, progress, start, remote, overwrite)


def _remote(remote: RemoteOptions, run_dir: Path, features: FeatureSplits, config: FHEConfig, overwrite: bool):
    """The HTTP transport and the client's checkpoint beside the run; a checkpoint of another run is refused."""
    from .remote import Http

    checkpoint = Checkpoint(state_folder(run_dir))
    print_ = fingerprint(features, asdict(config))
    if overwrite and checkpoint.exists():
        checkpoint.remove()  # its job stays on the server until its owner deletes it (DELETE /jobs/ID)
    checkpoint.check_same_run(remote.server, print_)
    transport = Http(remote.server, remote.token(), remote.server_wait, remote.keep_on_server)
    return transport, checkpoint, print_


def _fhe_train(
    config: FHEConfig,
    run_dir: Path | None,
    progress: bool,
    start: float,
    remote: RemoteOptions | None = None,
    overwrite: bool = False,
) -> dict:
    features, model, source = load_features(config, progress)
    check_splits(features, config.limit)
    chosen, selection = choose(features, config) if config.components == "auto" else (config.components, [])
    resolved = replace(config, components=chosen)
    reference = logistic_reference(features)
    twin = train_reference(features, resolved)  # first: a learning rate that diverges fails here, in seconds
    exact = train_reference(features, resolved, exact=True)
    transport = checkpoint = None
    print_ = ""
    if remote is not None:
        transport, checkpoint, print_ = _remote(remote, run_dir, features, resolved, overwrite)
    encrypted = train_encrypted(
        features,
        resolved,
        progress=progress,
        transport=transport,
        checkpoint=checkpoint,
        fingerprint=print_,
        keep=remote.keep_on_server if remote else False,
    )
    if model is not None:
        head_model(features, encrypted, model)
    result = {
        **summary(encrypted, reference, time.perf_counter() - start),
        "components": chosen,
        "feature_dim": features.dim,
        "backbone_adapter": source["backbone_adapter"],
        **{k: source[k] for k in ("features_file", "features_sha256") if k in source},
        "machine_at_end": machine(),
    }  # the wall time is this machine's: cores, load average, clock
    derived = {
        **source,
        "components_requested": config.components,
        "components": chosen,
        "components_selection": selection,
    }
    if remote is not None:
        result["server"] = {"url": remote.server, "job": transport.job, "http": dict(transport.http)}
    if run_dir is not None:
        secret = checkpoint.private_bytes() if checkpoint is not None else None
        write_run(run_dir, resolved, features, encrypted, twin, model, exact, result, derived, secret)
        if checkpoint is not None:
            checkpoint.remove()
    return {
        **result,
        **compare(encrypted, twin, exact),
        "stats": encrypted.stats,
        "rows": encrypted.rows,
        "out": run_dir,
        "selection": selection,
    }
