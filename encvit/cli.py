"""The ``encvit`` command line: thin subcommands over the package's modules.

A user error (bad file, wrong key, unknown name, an option value that cannot work) prints one line to stderr and
exits with status 2, before any data is loaded or anything is written: each subcommand first builds the config
dataclass that holds its options (which checks them, see ``encvit.common.errors.option``) and checks its files.
A failure after work has started (an error, Ctrl-C) removes what was half-written and says so in one line; only a bug
shows a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .common.errors import (
    ConfigError,
    EncvitError,
    ImageError,
    check_options,
    check_output_path,
    integer,
    number,
    option,
    split_list,
    text,
)
from .common.extras import missing_extra


def one_line(message: str) -> str:
    """`message` with line breaks and other unprintable characters (e.g. from a file name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (usage is one `--help` away); every subcommand's parser is one."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        # argparse turns "--opt=--" into an empty list; refuse it rather than hand a list on as a value
        for action in self._actions:
            if action.nargs is None and action.option_strings and getattr(namespace, action.dest, None) == []:
                self.error(f"argument {'/'.join(action.option_strings)}: expected one value")
        return namespace, extras


def _key_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--key", metavar="KEY.json", help="a key file made by `encvit keygen`")
    group.add_argument("--passphrase", help="make the key from this passphrase (with the backbone's patch size)")


# ---- cipher ------------------------------------------------------------------------------------------
def cmd_keygen(args) -> int:
    from .cipher.key import Key

    check_output_path(args.output, "--output", folder=False)
    if Path(args.output).exists() and not args.force:
        raise EncvitError(f"{args.output} exists; pass --force to replace it")
    key = Key.generate(
        args.block_size, args.channels, passphrase=args.passphrase, scramble=args.scramble, neg_pos=args.neg_pos
    )
    key.save(args.output)
    print(f"wrote {args.output}: {key.describe()}")
    return 0


def cmd_key_info(args) -> int:
    from .cipher.key import Key

    key = Key.load(args.key_file)
    print(key.describe())
    print(f"file: {args.key_file}")
    return 0


def _convert_images(args, decrypt: bool) -> int:
    from .cipher.images import MAX_PIXELS, is_grey, open_image, parse_size, png_set, to_array
    from .cipher.key import Key

    out_dir = check_output_path(args.output, "--output", folder=True)
    key = Key.load(args.key)
    resize = parse_size(args.resize) if args.resize is not None else None
    if resize and resize[0] * resize[1] > MAX_PIXELS:
        raise ImageError(f"--resize {args.resize} makes {resize[0] * resize[1]:,} pixels; at most {MAX_PIXELS:,}")
    sources: dict[str, str] = {}
    # One image in memory at a time; the outputs appear together at the end, or none of them on any failure.
    with png_set(out_dir) as write:
        for name in args.images:
            image = open_image(name)
            if key.channels == 3 and is_grey(image):
                print(
                    f"note: {name} is greyscale; its grey channel is repeated to {key.channels} channels",
                    file=sys.stderr,
                )
            elif key.channels == 1 and not is_grey(image):
                print(f"note: {name} has colour; it is converted to grey for a 1-channel key", file=sys.stderr)
            array = to_array(image, key.channels, resize)
            del image
            try:
                key.check_fits(array.shape[0], array.shape[1], array.shape[2])
            except EncvitError as exc:
                raise EncvitError(f"{name}: {exc}" + ("" if resize else " (or pass --resize WxH)")) from None
            target = Path(name).stem + ".png"
            if target in sources:
                raise EncvitError(f"{name} and {sources[target]} would both be written to {out_dir / target}")
            sources[target] = name
            write(key.decrypt(array) if decrypt else key.encrypt(array), target)
    verb = "decrypted" if decrypt else "encrypted"
    print(f"{verb} {len(sources)} image(s) into {out_dir} with key {key.fingerprint}")
    return 0


def cmd_encrypt(args) -> int:
    return _convert_images(args, decrypt=False)


def cmd_decrypt(args) -> int:
    return _convert_images(args, decrypt=True)


# ---- models ------------------------------------------------------------------------------------------
@dataclass
class ParamsConfig:
    """The options of `encvit params`, checked when made."""

    backbone: str = option("vit_base_patch16_224", text())
    num_classes: int = option(10, integer(1, 1_000_000))
    rank: int = option(4, integer(1, 4096))
    alpha: float = option(8.0, number(0, low_open=True))

    def __post_init__(self):
        check_options(self)


def cmd_params(args) -> int:
    from .models.methods import parameter_table

    ParamsConfig(args.backbone, args.num_classes, args.rank, args.alpha)
    table = parameter_table(args.backbone, args.num_classes, args.rank, args.alpha)
    if args.json:
        print(
            json.dumps(
                {
                    **{m: row["trainable"] for m, row in table.items()},
                    "details": table,
                    "backbone": args.backbone,
                    "num_classes": args.num_classes,
                    "rank": args.rank,
                    "alpha": args.alpha,
                }
            )
        )
        return 0
    print(
        f"trainable parameters, {args.backbone}, {args.num_classes} classes, LoRA rank {args.rank}, alpha {args.alpha}"
    )
    print(f"{'method':<10}{'exact':>14}{'10^6':>10}{'2^20 (paper)':>14}{'% of full':>11}")
    for method, row in table.items():
        print(
            f"{method:<10}{row['trainable']:>14,}{row['millions']:>10.3f}{row['paper_m']:>14.3f}"
            f"{row['percent_of_full']:>10.2f}%"
        )
    return 0


def cmd_pretrain(args) -> int:
    from .training.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(
        name=args.name,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        limit=args.limit,
        seed=args.seed,
        out=args.out,
    )
    result = pretrain(config)
    print(f"test accuracy {result['test_acc']:.2f}% after {args.epochs} epochs, {result['seconds'] / 60:.1f} min")
    return 0


def _config_from(args, **overrides):
    from .training.run import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return TrainConfig(**{**values, **overrides})


def _note_colour_backbone(config, datasets=None) -> None:
    """Suggest the colour backbone on stderr when colour data meets the grey-pretrained default."""
    from .training.run import colour_backbone_note

    note = colour_backbone_note(datasets or config.dataset, config.backbone, config.pretrained, config.weights)
    if note:
        print(note, file=sys.stderr)


def cmd_train(args) -> int:
    from .training.run import train

    config = _config_from(args)
    _note_colour_backbone(config)
    result = train(config)
    print(
        f"{result['method']} on {result['dataset']} ({result['setting']}, key {result['key_fingerprint']}): "
        f"test accuracy {result['test_acc']:.2f}%, validation {result['val_acc']:.2f}%, "
        f"{result['trainable']:,} trainable parameters, {result['seconds']:.0f} s"
        + (f"; run written to {args.out}" if args.out else "")
    )
    return 0


def cmd_evaluate(args) -> int:
    from .training.run import evaluate_run

    r = evaluate_run(
        args.run, args.dataset, args.key, args.passphrase, args.allow_key_mismatch, args.limit, args.weights, args.split
    )
    warning = (
        ""
        if r["given_key"] == r["trained_key"]
        else f"  (WRONG KEY: trained with {r['trained_key']}, evaluated with {r['given_key']})"
    )
    print(
        f"{r['method']} on {r['dataset']} {r['split']} ({r['images']} images): accuracy {r['accuracy']:.2f}%{warning}"
    )
    return 0


def _wall(start: float, args) -> str:
    where = f"on the Ray cluster at {_address(args)}" if _address(args) else f"{args.jobs} run(s) at a time"
    return f"{time.perf_counter() - start:.0f} s wall time, {where}"


def _address(args) -> str | None:
    """--address, else RAY_ADDRESS (as Ray's own commands read it), else None: the runs stay on this machine."""
    return args.address or os.environ.get("RAY_ADDRESS") or None


def cmd_compare(args) -> int:
    from .experiments.compare import compare

    base = _config_from(args, out=None)
    methods = split_list(args.methods, str, "--methods")
    settings = split_list(args.settings, str, "--settings")
    _note_colour_backbone(base)
    start = time.perf_counter()
    compare(
        base,
        methods,
        settings,
        args.seeds,
        args.out,
        args.overwrite,
        jobs=args.jobs,
        address=_address(args),
        threads=args.threads,
    )
    print(f"results in {args.out}: results.md, results.csv, results.png ({_wall(start, args)})")
    return 0


def _from_env_or(option_value: str, env: str, convert, flag: str) -> list:
    """A list option's values from the environment variable `env` when set (sizes of slow studies), else its own."""
    return split_list(os.environ.get(env) or option_value, convert, f"{flag} (or {env})")


def _one_from_env_or(option_value: str, env: str, flag: str) -> int:
    """An integer option that may come from the environment variable `env`, refused unless it is one value."""
    values = _from_env_or(option_value, env, int, flag)
    if len(values) != 1:
        raise ConfigError(f"{flag} (or {env}) must be one integer, got {values}")
    return values[0]


def cmd_study(args) -> int:
    from .experiments.data_size import data_size_study, merge_studies

    base = _config_from(args, out=None)
    if args.kind == "security":
        return _security_study(args, base)
    if args.kind == "merge":
        if len(args.folders) < 2:
            raise ConfigError("study merge needs at least two study folders")
        merge_studies(args.folders, args.out)
        print(f"merged {len(args.folders)} studies into {args.out}: study.csv, gaps.csv, study.png")
        return 0
    if args.folders:
        raise ConfigError("study data-size takes no folders (they are for study merge)")
    sizes = _from_env_or(args.sizes, "ENCVIT_STUDY_SIZES", int, "--sizes")
    seeds = _one_from_env_or(args.seeds, "ENCVIT_STUDY_SEEDS", "--seeds")
    patch_lrs = split_list(args.patch_lrs, float, "--patch-lrs")
    datasets = split_list(args.datasets, str, "--datasets")
    _note_colour_backbone(base, datasets)
    start = time.perf_counter()
    data_size_study(
        base, datasets, sizes, seeds, patch_lrs, args.out, jobs=args.jobs, address=_address(args), threads=args.threads
    )
    print(f"study written to {args.out}: study.csv, gaps.csv, study.png ({_wall(start, args)})")
    return 0


def _security_study(args, base) -> int:
    from .experiments.security import SETTINGS, security_study

    if args.folders:
        raise ConfigError("study security takes no folders: pieces share one --out")
    counts = _from_env_or(args.counts, "ENCVIT_SECURITY_COUNTS", int, "--counts")
    seeds = _one_from_env_or(args.seeds, "ENCVIT_STUDY_SEEDS", "--seeds")
    draws = _one_from_env_or(args.draws, "ENCVIT_SECURITY_DRAWS", "--draws")
    settings = split_list(args.settings_security or ",".join(SETTINGS), str, "--cipher-settings")
    methods = split_list(args.methods, str, "--methods")
    out = args.out if args.out != "runs/study" else "runs/security"
    start = time.perf_counter()
    security_study(
        base, settings, methods, counts, seeds, draws, out, jobs=args.jobs, address=_address(args), threads=args.threads
    )
    print(
        f"study written to {out}: accuracy.csv, attacks.csv, adapter_leaks.csv, security.md, security.png "
        f"({_wall(start, args)})"
    )
    return 0


def _training_args(p: argparse.ArgumentParser, with_method: bool = True) -> None:
    from .data.names import DATASET_HELP

    p.add_argument(
        "--backbone",
        default="encvit-tiny",
        help="encvit-tiny (shipped, pretrained on grey images), "
        "encvit-tiny-colour (pretrained on colour ones, for colour datasets) or a timm ViT name",
    )
    p.add_argument("--weights", help="local backbone weights (safetensors or torch state dict)")
    p.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="random backbone weights (for tests and offline paper-scale dry runs)",
    )
    p.add_argument("--image-size", type=int, help="input size for timm backbones (default: the model's)")
    p.add_argument("--dataset", default="fashion5k", help=DATASET_HELP)
    if with_method:
        p.add_argument("--method", required=True, choices=["full", "melo", "proposed"])
    _key_args(p)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, help="learning rate (default per method: full 2e-3, melo/proposed 1e-2)")
    p.add_argument(
        "--patch-lr",
        type=float,
        help="separate learning rate for the patch embedding (train: full or proposed; compare: proposed)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="at most this many images per split (quick runs)")
    p.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "off", "bf16"],
        help="mixed precision: auto = bf16/fp16 on CUDA, off on CPU",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")


def _jobs_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each in its own process with the CPU cores "
        "split between them (default 1: one run after another, all cores each)",
    )
    p.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="run every run as a task on the Ray cluster at this "
        "address (default: RAY_ADDRESS when set); needs the cluster extra, see docs/cluster.md",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="with --address: torch threads of each run, and the CPUs it asks of the cluster (default 1)",
    )


def cmd_export(args) -> int:
    """`encvit export ADAPTER --format peft --out DIR`."""
    from .models.peft_format import CONFIG_FILE, WEIGHTS_FILE, export_peft

    out = export_peft(args.adapter, args.out, args.overwrite)
    print(f"wrote {out}: {CONFIG_FILE}, {WEIGHTS_FILE}, README.md (load with peft.PeftModel.from_pretrained)")
    return 0


def cmd_import(args) -> int:
    """`encvit import DIR --out ADAPTER.safetensors`."""
    from .models.peft_format import import_peft

    out = import_peft(args.folder, args.out, args.force)
    print(f"wrote {out} from the PEFT folder {args.folder}")
    return 0


def _peft_commands(subparsers) -> None:
    """The `export` and `import` subcommands: an adapter to and from Hugging Face PEFT's format."""
    p = subparsers.add_parser("export", help="write a MeLo or proposed adapter in Hugging Face PEFT's format")
    p.add_argument("adapter", metavar="ADAPTER", help="a run directory or an adapter file")
    p.add_argument(
        "--format",
        default="peft",
        choices=["peft"],
        help="peft: adapter_config.json + adapter_model.safetensors (default)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(func=cmd_export)
    p = subparsers.add_parser("import", help="turn a PEFT folder written by `encvit export` back into an adapter")
    p.add_argument("folder", metavar="DIR", help="a folder with adapter_config.json and adapter_model.safetensors")
    p.add_argument("--out", required=True, metavar="ADAPTER.safetensors", help="adapter file to write")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_import)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from .data.names import DATASET_HELP

    parser = Parser(
        prog="encvit",
        description="Privacy-preserving fine-tuning of ViTs: "
        "block-wise image encryption, LoRA methods and encrypted head training.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", help="make a secret key file")
    p.add_argument("-o", "--output", required=True, metavar="KEY.json")
    p.add_argument("--passphrase", help="derive the key from a passphrase (default: the OS's randomness)")
    p.add_argument("--block-size", type=int, default=16, help="block size M (the ViT's patch size; default 16)")
    p.add_argument("--channels", type=int, default=3, help="colour channels C (default 3)")
    p.add_argument("--scramble", action="store_true", help="also permute block positions")
    p.add_argument("--neg-pos", action="store_true", help="also apply x -> 255 - x at key-chosen positions")
    p.add_argument("--force", action="store_true", help="replace an existing key file")
    p.set_defaults(func=cmd_keygen)

    for name, func, verb in (("encrypt", cmd_encrypt, "encrypt"), ("decrypt", cmd_decrypt, "decrypt")):
        p = sub.add_parser(name, help=f"{verb} images with a key (lossless PNG out)")
        p.add_argument("--key", required=True, metavar="KEY.json")
        p.add_argument("images", nargs="+", metavar="IMAGE")
        p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
        p.add_argument(
            "--resize",
            metavar="WxH",
            help="resize before encrypting (default: refuse sizes that are not multiples of the block size)",
        )
        p.set_defaults(func=func)

    p = sub.add_parser("key-info", help="describe a key file (never prints the key itself)")
    p.add_argument("key_file", metavar="KEY.json")
    p.set_defaults(func=cmd_key_info)

    p = sub.add_parser("params", help="trainable parameters of full / melo / proposed")
    p.add_argument("--backbone", default="vit_base_patch16_224")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--json", action="store_true", help='one JSON object: {"full": n, "melo": n, "proposed": n, ...}')
    p.set_defaults(func=cmd_params)

    p = sub.add_parser(
        "pretrain", help="pretrain a shipped backbone (encvit-tiny, encvit-tiny-colour) on Fashion-MNIST"
    )
    p.add_argument(
        "--name", default="encvit-tiny", help="encvit-tiny (grey images) or encvit-tiny-colour (colour-tinted ones)"
    )
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="at most this many images per split (quick trials)")
    p.add_argument("--out", help="weights file (default: the shipped encvit/weights/NAME.safetensors)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("train", help="fine-tune a backbone with one method, on plain or encrypted images")
    _training_args(p)
    p.add_argument(
        "--per-image-keys",
        action="store_true",
        help="encrypt every image with a fresh key of its own (no shared key: the security study's reference point)",
    )
    p.add_argument("--out", metavar="RUN", help="run directory to write")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy of a run's adapter (refuses a key other than the run's)")
    p.add_argument("run", metavar="RUN", help="a run directory or an adapter file")
    p.add_argument("--dataset", help="default: the dataset the run was trained on")
    _key_args(p)
    p.add_argument("--allow-key-mismatch", action="store_true", help="evaluate with a different key anyway")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--limit", type=int)
    p.add_argument("--weights", help="local backbone weights for a timm backbone")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="all methods x plain/encrypted: results.csv, results.md, results.png")
    _training_args(p, with_method=False)
    p.add_argument("--methods", default="full,melo,proposed")
    p.add_argument("--settings", default="plain,encrypted")
    p.add_argument("--seeds", type=int, default=1, help="repeat every cell with this many seeds")
    _jobs_arg(p)
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("study", help="gaps between methods on encrypted images vs training-set size and domain")
    p.add_argument(
        "kind",
        choices=["data-size", "merge", "security"],
        help="data-size: run the study (resumes in --out); merge: join study folders into --out; "
        "security: attacks and accuracy per cipher setting (resumes in --out, default runs/security)",
    )
    p.add_argument("folders", nargs="*", help="study folders to merge")
    _training_args(p, with_method=False)
    p.add_argument("--datasets", default="fashion5k,mnist5k", help=f"comma-separated, each one of {DATASET_HELP}")
    p.add_argument("--sizes", default="500,1000,2000,3600", help="training-set sizes (env ENCVIT_STUDY_SIZES)")
    p.add_argument("--seeds", default="3", help="seeds per cell (env ENCVIT_STUDY_SEEDS)")
    _jobs_arg(p)
    p.add_argument("--patch-lrs", default="", help="extra proposed arms with these patch-embedding learning rates")
    p.add_argument(
        "--cipher-settings",
        dest="settings_security",
        default="",
        help="security: shuffle, neg-pos, scramble, both, per-image (default: all)",
    )
    p.add_argument("--methods", default="melo,proposed,full", help="security: methods trained per setting")
    p.add_argument(
        "--counts",
        default="10,50,200,1000",
        help="security: encrypted images the attacker holds (env ENCVIT_SECURITY_COUNTS)",
    )
    p.add_argument("--draws", default="3", help="security: attacks per count (env ENCVIT_SECURITY_DRAWS)")
    p.add_argument("--out", default="runs/study", help="output folder (security: default runs/security)")
    p.set_defaults(func=cmd_study)
    from .fhe.command import register as register_fhe

    register_fhe(sub)
    from .attacks.command import register as register_attacks

    register_attacks(sub)
    _peft_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2: the input was refused, nothing was done)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"encvit {args.command}"
    previous = _stop_on_sigterm()
    try:
        try:
            return args.func(args)
        except ImportError as exc:  # an optional package that is not installed: name its extra
            missing = missing_extra(exc, args.command)
            if missing is None:
                raise
            raise missing from None
    except EncvitError as exc:
        print(f"{name}: error: {type(exc).__name__}: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; what was half-written has been removed", file=sys.stderr)
        return 130
    except (OSError, MemoryError) as exc:  # the machine's limits (disk full, permissions, memory), not a bug
        print(
            f"{name}: failed: {type(exc).__name__}: {one_line(str(exc))}; what was half-written has been removed",
            file=sys.stderr,
        )
        return 1
    except Exception:
        traceback.print_exc()
        print(
            f"{name}: failed with an unexpected error (a bug: the traceback above shows where); what was "
            f"half-written has been removed",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm():
    """Make `kill` (SIGTERM) stop a command as Ctrl-C does, cleaning up; returns the handler it replaced."""
    try:
        return signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: leave signals alone
        return None


if __name__ == "__main__":
    sys.exit(main())
