"""`encvit fhe-train` and `encvit features` from the command line; the work is `encvit.fhe.pipeline`'s.

The options are read without TenSEAL or torch, so `encvit --help` loads neither.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from types import SimpleNamespace

from ..common.errors import ConfigError, check_output_path
from ..data.names import DATASET_HELP
from .config import TOKEN_ENV, TRAINABLE_PRESETS, FHEConfig, RemoteOptions, ServeConfig


def cmd_fhe_train(args) -> int:
    """Run `encvit fhe-train` and print the figures that matter; the last line is the result."""
    from .pipeline import fhe_train
    from .train import HETAL_SECONDS_PER_RUN

    names = {f.name for f in fields(FHEConfig)}
    config = FHEConfig(**{k: v for k, v in vars(args).items() if k in names})
    remote = None
    if args.server is not None:
        remote = RemoteOptions(args.server, args.token_file, args.server_wait, args.keep_on_server)
    elif args.token_file is not None or args.keep_on_server:
        raise ConfigError("--token-file and --keep-on-server go with --server URL")
    r = fhe_train(config, args.out, args.overwrite, progress=not args.no_progress, remote=remote)
    ckks = r["stats"]["ckks"]
    print(
        f"CKKS: ring degree {ckks['poly_modulus_degree']}, moduli {ckks['coeff_mod_bit_sizes']} "
        f"({ckks['total_modulus_bits']} bits), scale 2^{ckks['scale_bits']}: {ckks['security_bits']}-bit security"
    )
    print(
        f"{r['epochs_run']} epochs ({'stopped early' if r['stopped_early'] else 'all'}; best epoch "
        f"{r['best_epoch']}), {r['iterations']} iterations at {r['seconds_per_iteration']:.2f} s, {r['refreshes']} "
        f"refreshes; {r['wall_seconds']:.0f} s in all (HETAL: {HETAL_SECONDS_PER_RUN[0]}-{HETAL_SECONDS_PER_RUN[1]} "
        f"s per run); {r['megabytes_to_server']:.0f} MB to the server, {r['megabytes_to_client']:.0f} MB back"
    )
    print(
        f"numpy twin with the same polynomial: test {r['plain_test_acc']:.2f}% (max weight difference "
        f"{r['max_abs_weight_diff']:.1e}); exact softmax, same schedule: {r['exact_softmax_test_acc']:.2f}%"
        + (f"; run written to {r['out']}" if r["out"] else "")
    )
    if r["selection"]:
        print(
            "components (numpy twin, validation accuracy): "
            + ", ".join(f"{row['components']}: {row['val_acc']:.2f}%" for row in r["selection"])
            + f"; kept {r['components']}"
        )
    source = f"features file {config.features}" if config.features else f"{config.dataset} ({config.backbone})"
    print(
        f"encrypted head on {source}, {r['feature_dim']} features, components {r['components']}: "
        f"test accuracy {r['encrypted_test_acc']:.2f}%, "
        f"full-precision reference {r['reference_test_acc']:.2f}% (logistic regression, C={r['reference_C']:g} "
        f"chosen on validation), difference {r['difference']:+.2f} points"
    )
    return 0


def register(subparsers) -> None:
    """Add the `fhe-train` subcommand to the `encvit` parser."""
    d = SimpleNamespace(**{f.name: f.default for f in fields(FHEConfig)})  # defaults, without checking a dataset
    p = subparsers.add_parser("fhe-train", help="train a softmax head on CKKS-encrypted features (BlindTuner)")
    p.add_argument(
        "--backbone", default=d.backbone, help=f"encvit-tiny (shipped) or a timm ViT name (default {d.backbone})"
    )
    p.add_argument("--dataset", default=d.dataset, help=f"{DATASET_HELP} (default {d.dataset})")
    p.add_argument(
        "--features",
        metavar="F.npz",
        help="train on a features file (train_x, train_y, val_x, ...; from "
        "`encvit features` or any extractor) instead of --backbone and --dataset",
    )
    p.add_argument(
        "--components",
        default=d.components,
        help="principal components the client keeps: a number, all, or auto (default: chosen per run on "
        "validation by the numpy twin)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"most epochs (default {d.epochs})")
    p.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help=f"stop after this many epochs without a better validation score (default {d.patience})",
    )
    p.add_argument(
        "--stop-on",
        default=d.stop_on,
        choices=["val_loss", "val_acc"],
        help=f"the validation score: cross-entropy or accuracy (default {d.stop_on})",
    )
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"samples per Nesterov step (default {d.batch_size})"
    )
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr:g})")
    p.add_argument(
        "--lr-schedule",
        default=d.lr_schedule,
        choices=["constant", "cosine"],
        help=f"learning rate over the most epochs (default {d.lr_schedule})",
    )
    p.add_argument(
        "--momentum",
        type=float,
        default=d.momentum,
        help=f"Nesterov momentum, at most 2 decimals (default {d.momentum})",
    )
    p.add_argument(
        "--softmax-radius",
        type=float,
        default=d.softmax_radius,
        help=f"logit range the polynomial softmax is fitted on (default {d.softmax_radius:g})",
    )
    p.add_argument(
        "--whiten-ridge",
        type=float,
        default=d.whiten_ridge,
        help=f"ridge added to the eigenvalues when whitening the features (default {d.whiten_ridge:g})",
    )
    p.add_argument(
        "--no-whiten", dest="whiten_ridge", action="store_const", const=None, help="standardise the features only"
    )
    p.add_argument(
        "--preset", default=d.preset, choices=TRAINABLE_PRESETS, help=f"CKKS parameters (default {d.preset})"
    )
    p.add_argument("--limit", type=int, help="at most this many images per split (quick runs)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help=f"threads for independent ciphertexts (default {d.threads}: the cores this process may use)",
    )
    p.add_argument(
        "--no-pretrained", dest="pretrained", action="store_false", help="random backbone weights (tests, dry runs)"
    )
    p.add_argument("--out", metavar="RUN", help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--server",
        metavar="URL",
        help="train on `encvit fhe-serve` at URL (default: a server in this "
        "process); needs --out, and the same command run again goes on with the job",
    )
    p.add_argument("--token-file", metavar="PATH", help=f"the server's token (default: the variable {TOKEN_ENV})")
    p.add_argument(
        "--server-wait",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to keep asking a server that does not answer (default 600)",
    )
    p.add_argument(
        "--keep-on-server",
        action="store_true",
        help="leave the job's ciphertexts on the server at the end (default: the server deletes them)",
    )
    p.set_defaults(func=cmd_fhe_train)

    s = SimpleNamespace(**{f.name: f.default for f in fields(ServeConfig)})
    p = subparsers.add_parser(
        "fhe-serve",
        help="serve encrypted head training to clients over HTTP (BlindTuner's "
        "server: public keys and ciphertexts only)",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="the server's folder: tokens, jobs and ciphertexts")
    p.add_argument("--host", default=s.host, help=f"address to listen on (default {s.host}: this machine only)")
    p.add_argument("--port", type=int, default=s.port, help=f"port (default {s.port}; 0: any free port)")
    p.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS with this certificate (with --ssl-keyfile)")
    p.add_argument("--ssl-keyfile", metavar="PEM", help="the certificate's private key")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow another address than loopback without TLS (tokens and ciphertexts in the clear)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=s.max_upload_mb,
        help=f"largest request body, MB (default {s.max_upload_mb:g})",
    )
    p.add_argument("--max-jobs", type=int, default=s.max_jobs, help=f"open jobs per token (default {s.max_jobs})")
    p.add_argument(
        "--threads",
        type=int,
        default=s.threads,
        help=f"threads for independent ciphertexts (default {s.threads}: this machine's cores)",
    )
    p.add_argument(
        "--new-token", metavar="NAME", help="print a new token called NAME and exit (only its hash is stored in DIR)"
    )
    p.add_argument("--revoke-token", metavar="NAME", help="remove the token called NAME and exit")
    p.set_defaults(func=cmd_fhe_serve)

    p = subparsers.add_parser(
        "features",
        help="the client's plaintext step: a backbone's features of a dataset, "
        "as a features file for `fhe-train --features`",
    )
    p.add_argument(
        "--backbone", default=d.backbone, help=f"encvit-tiny (shipped) or a timm ViT name (default {d.backbone})"
    )
    p.add_argument("--dataset", default=d.dataset, help=f"{DATASET_HELP} (default {d.dataset})")
    p.add_argument("--limit", type=int, help="at most this many images per split (quick runs)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random backbone weights")
    p.add_argument("--out", required=True, metavar="F.npz", help="the features file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing features file")
    p.set_defaults(func=cmd_features)


def cmd_fhe_serve(args) -> int:
    """Run `encvit fhe-serve`: manage tokens, or serve until stopped (Ctrl-C or SIGTERM)."""
    from pathlib import Path

    config = ServeConfig(
        args.data,
        args.host,
        args.port,
        args.ssl_certfile,
        args.ssl_keyfile,
        args.insecure,
        args.max_upload_mb,
        args.max_jobs,
        args.threads,
    )
    data = check_output_path(config.data, "--data", folder=True)
    if args.new_token is not None and args.revoke_token is not None:
        raise ConfigError("--new-token and --revoke-token: one at a time")
    if args.new_token is not None or args.revoke_token is not None:
        from .tokens import TokenStore

        data.mkdir(parents=True, exist_ok=True)
        store = TokenStore(data)
        if args.new_token is not None:
            print(store.new(args.new_token))
        else:
            store.revoke(args.revoke_token)
            print(f"revoked {args.revoke_token}; its requests get 401 from now on")
        return 0
    from .service import check_exposure, serve

    check_exposure(config.host, config.ssl_certfile, config.ssl_keyfile, config.insecure)
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "tokens.json").exists():
        print(
            f"note: {data} holds no token yet: make one with `encvit fhe-serve --data {data} --new-token NAME`",
            file=sys.stderr,
        )
    serve(
        Path(data),
        config.host,
        config.port,
        config.ssl_certfile,
        config.ssl_keyfile,
        config.max_upload_mb,
        config.max_jobs,
        config.threads,
    )
    return 0


def cmd_features(args) -> int:
    """Run `encvit features`: extract (or read from the cache) and write a features file."""
    from .features import check_splits, write_features_file
    from .pipeline import load_features

    out = check_output_path(args.out, "--out", folder=False)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    config = FHEConfig(backbone=args.backbone, dataset=args.dataset, limit=args.limit, pretrained=args.pretrained)
    features, _, _ = load_features(config, progress=True)
    check_splits(features, config.limit)
    write_features_file(out, features)
    sizes = ", ".join(f"{len(getattr(features, s)[1])} {s}" for s in ("train", "val", "test"))
    print(
        f"wrote {out}: {features.dim} features of {sizes} images of {features.dataset} ({args.backbone}), "
        f"{len(features.classes)} classes"
    )
    return 0
