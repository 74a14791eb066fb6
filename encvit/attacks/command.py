"""`encvit attack ...`: the key-recovery attacks and their scores from the command line.

Image arguments are files or folders (searched recursively for PNG and JPEG). Every image is read and checked
before an attack starts; the recovered key is written atomically, and an existing file is kept unless --force.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.atomic import output_lock
from ..common.errors import (
    AttackError,
    ConfigError,
    ImageError,
    check_options,
    check_output_path,
    integer,
    one_of,
    option,
    optional,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class AttackOptions:
    """The numeric options of `encvit attack ...`, checked when made."""

    block_size: int | None = option(None, optional(integer(1, 256)))
    channels: int = option(3, one_of(1, 3))
    restarts: int | None = option(None, optional(integer(1, 100)))
    seed: int = option(0, integer(0, 2**32 - 1))

    def __post_init__(self):
        check_options(self)


def image_files(arguments: list[str], flag: str) -> list[Path]:
    """The image files named by `arguments` (files, or folders searched recursively), in a stable order."""
    files = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ImageError(f"{flag} folder {path} holds no PNG or JPEG images")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ImageError(f"{flag} {path}: no such file or folder")
    if not files:
        raise ImageError(f"{flag} names no images")
    return files


def read_images(files: list[Path], channels: int, block_size: int | None, flag: str) -> list[np.ndarray]:
    """Every file as H x W x `channels` uint8 (grey expanded as `encvit encrypt` does), sizes checked."""
    from ..cipher.images import is_grey, open_image, to_array

    arrays, grey = [], 0
    for file in files:
        image = open_image(file)
        grey += channels == 3 and is_grey(image)
        array = to_array(image, channels)
        h, w = array.shape[:2]
        if block_size and (h % block_size or w % block_size):
            raise ImageError(
                f"{flag} {file}: image size {w}x{h} (WxH) is not a multiple of the block size "
                f"{block_size}: resize to e.g. {max(block_size, w // block_size * block_size)}x"
                f"{max(block_size, h // block_size * block_size)}"
            )
        arrays.append(array)
    if grey:
        print(
            f"note: {grey} {flag} image(s) are greyscale; their grey channel is repeated to 3 channels", file=sys.stderr
        )
    return arrays


def _channels_of(files: list[Path]) -> int:
    """3 if any image has colour, else 1 (an encrypted grey image stays grey)."""
    from ..cipher.images import is_grey, open_image

    return 3 if any(not is_grey(open_image(f)) for f in files) else 1


def _pairs(plain_args, encrypted_args) -> tuple[list[Path], list[Path]]:
    """Plain and encrypted files matched by file stem (as `encvit encrypt` names its output)."""
    plain = {p.stem: p for p in image_files(plain_args, "--plain")}
    encrypted = {p.stem: p for p in image_files(encrypted_args, "--encrypted")}
    common = sorted(plain.keys() & encrypted.keys())
    if not common:
        raise AttackError(
            "no plain and encrypted images share a file stem: pairs are matched by name (photo.jpg with photo.png)"
        )
    return [plain[s] for s in common], [encrypted[s] for s in common]


def _save(key, args, what: str, started: float) -> int:
    key.save(args.output)
    print(f"wrote {args.output}: recovered {key.describe()} by the {what} attack in {time.time() - started:.1f} s")
    return 0


def _check_output(args) -> None:
    check_output_path(args.output, "--output", folder=False)
    if Path(args.output).exists() and not args.force:
        raise ConfigError(f"{args.output} exists; pass --force to replace it")


def _one_writer(command):
    """`command` holding the lock of its -o file for its whole run: a second attack writing it is refused."""

    def run(args) -> int:
        if not getattr(args, "output", None):
            return command(args)
        check_output_path(args.output, "--output", folder=False)
        with output_lock(args.output, "-o"):
            return command(args)

    return run


def cmd_ciphertext_only(args) -> int:
    from .ciphertext import ciphertext_only

    options = AttackOptions(args.block_size, args.channels, args.restarts, args.seed)
    _check_output(args)
    encrypted = read_images(image_files(args.encrypted, "ENCRYPTED"), options.channels, options.block_size, "ENCRYPTED")
    reference = read_images(
        image_files(args.reference, "--reference"), options.channels, options.block_size, "--reference"
    )
    sizes = sorted({a.shape[:2] for a in encrypted})
    if len(sizes) > 1:
        raise ImageError(f"the encrypted images have {len(sizes)} sizes {sizes}; the attack takes images of one size")
    started = time.time()
    key = ciphertext_only(
        encrypted,
        reference,
        options.block_size,
        neg_pos=args.neg_pos,
        scramble=args.scramble,
        restarts=options.restarts,
        seed=options.seed,
        progress=True,
    )
    print(f"used {len(encrypted)} encrypted and {len(reference)} reference image(s)")
    return _save(key, args, "ciphertext-only", started)


def cmd_known_plaintext(args) -> int:
    from .plaintext import known_plaintext

    options = AttackOptions(args.block_size)
    _check_output(args)
    plain_files, encrypted_files = _pairs(args.plain, args.encrypted)
    channels = _channels_of(encrypted_files)
    encrypted = read_images(encrypted_files, channels, options.block_size, "--encrypted")
    plain = read_images(plain_files, channels, options.block_size, "--plain")
    started = time.time()
    report = {}
    key = known_plaintext(plain, encrypted, options.block_size, report)
    print(f"used {len(plain)} pair(s); {report.get('tied_positions', 0)} position(s) tie in every given block")
    return _save(key, args, "known-plaintext", started)


def cmd_chosen_plaintext(args) -> int:
    from ..cipher.images import parse_size, save_png
    from .plaintext import chosen_plaintext, make_probes

    if bool(args.make_probes) == bool(args.probes_encrypted):
        raise ConfigError("give either --make-probes DIR (step 1) or --probes-encrypted IMAGE... with -o (step 2)")
    if args.make_probes:
        options = AttackOptions(args.block_size, args.channels)
        if options.block_size is None:
            raise ConfigError("--make-probes needs --block-size M")
        folder = check_output_path(args.make_probes, "--make-probes", folder=True)
        size = parse_size(args.size) if args.size else None
        probes = make_probes(options.block_size, options.channels, size)
        with output_lock(folder, "--make-probes"):  # one command at a time writes the folder
            for index, probe in enumerate(probes):
                save_png(probe, folder / f"probe-{index}.png")
        print(
            f"wrote {folder}/probe-0.png and probe-1.png ({probes[0].shape[1]}x{probes[0].shape[0]}): encrypt "
            f"both with the key under attack, then run --probes-encrypted"
        )
        return 0
    if not args.output:
        raise ConfigError("--probes-encrypted needs -o RECOVERED.json")
    _check_output(args)
    files = image_files(args.probes_encrypted, "--probes-encrypted")
    started = time.time()
    key = chosen_plaintext(read_images(files, _channels_of(files), None, "--probes-encrypted"))
    return _save(key, args, "chosen-plaintext", started)


def cmd_score(args) -> int:
    from ..cipher.key import Key
    from .scores import decryption_quality, key_agreement

    true_key, recovered = Key.load(args.true_key), Key.load(args.recovered)
    if bool(args.plain) != bool(args.encrypted):
        raise ConfigError("--plain and --encrypted go together (pairs matched by file stem)")
    grid, quality = None, None
    if args.plain:
        plain_files, encrypted_files = _pairs(args.plain, args.encrypted)
        plain = read_images(plain_files, true_key.channels, true_key.block_size, "--plain")
        encrypted = read_images(encrypted_files, true_key.channels, true_key.block_size, "--encrypted")
        grids = {(a.shape[0] // true_key.block_size, a.shape[1] // true_key.block_size) for a in encrypted}
        grid = grids.pop() if len(grids) == 1 and (true_key.scramble_secret or recovered.block_orders) else None
        decrypted = [recovered.decrypt(e) for e in encrypted]
        if len({a.shape for a in plain}) > 1:
            raise ImageError("--plain images of several sizes: score one size at a time")
        quality = decryption_quality(plain, decrypted)
    scores = {**key_agreement(true_key, recovered, grid), **(quality or {})}
    if args.json:
        print(json.dumps(scores))
    else:
        for name, value in scores.items():
            print(f"{name:22s} {value:.4f}" if name != "psnr_db" else f"{name:22s} {value:.2f}")
    return 0


# ---- adapter: the key read off a shared adapter's patch embedding ------------------------------------------
def cmd_adapter(args) -> int:
    from ..models.adapters import read_adapter
    from .adapter_leak import key_from_adapter

    _check_output(args)
    path = Path(args.adapter)
    path = path / "adapter.safetensors" if path.is_dir() else path
    info, _ = read_adapter(path)  # a missing, corrupt or foreign file is refused before any work
    reference = None
    if args.reference:
        reference = read_images(
            image_files(args.reference, "--reference"), info.channels, info.patch_size, "--reference"
        )
    started = time.time()
    report = {}
    key = key_from_adapter(path, neg_pos=args.neg_pos, scramble=args.scramble, reference=reference, report=report)
    reading = "a permuted copy" if report["reading"] == "copy" else "an update"
    print(
        f"read the {info.method} adapter's patch embedding as {reading} of the pretrained one "
        f"(mean matched correlation {report['matched_correlation']:.2f})"
    )
    return _save(key, args, "adapter", started)


def register(sub) -> None:
    """Add `encvit attack ...` to the command line's subparsers."""
    attack = sub.add_parser("attack", help="recover a key: ciphertext-only, known- or chosen-plaintext; score it")
    kinds = attack.add_subparsers(dest="attack", required=True, metavar="ATTACK")

    def output(p):
        p.add_argument("-o", "--output", required=True, metavar="RECOVERED.json", help="the recovered key file")
        p.add_argument("--force", action="store_true", help="replace an existing key file")

    p = kinds.add_parser("ciphertext-only", help="from encrypted images and unrelated plain reference images")
    p.add_argument("encrypted", nargs="+", metavar="ENCRYPTED", help="encrypted images (files or folders)")
    p.add_argument(
        "--reference",
        nargs="+",
        required=True,
        metavar="PLAIN",
        help="plain images of the same kind from any public source (not the encrypted ones)",
    )
    p.add_argument("--block-size", type=int, required=True, help="block size M of the key under attack")
    p.add_argument("--channels", type=int, default=3, help="channels C of the key (default 3)")
    p.add_argument("--neg-pos", action="store_true", help="assume negative-positive flips")
    p.add_argument("--scramble", action="store_true", help="assume block scrambling")
    p.add_argument(
        "--restarts",
        type=int,
        help="starts of the graph matching (default: 8 for blocks of at most 256 values, else 2)",
    )
    p.add_argument("--seed", type=int, default=0)
    output(p)
    p.set_defaults(func=_one_writer(cmd_ciphertext_only))

    p = kinds.add_parser("known-plaintext", help="from plain/encrypted pairs (matched by file stem)")
    p.add_argument("--plain", nargs="+", required=True, metavar="PLAIN")
    p.add_argument("--encrypted", nargs="+", required=True, metavar="ENCRYPTED")
    p.add_argument("--block-size", type=int, help="block size M (default: found from the pairs)")
    output(p)
    p.set_defaults(func=_one_writer(cmd_known_plaintext))

    p = kinds.add_parser("chosen-plaintext", help="make two probe images; recover the key from their encryptions")
    p.add_argument("--make-probes", metavar="DIR", help="step 1: write probe-0.png and probe-1.png into DIR")
    p.add_argument("--block-size", type=int, help="block size M (step 1)")
    p.add_argument("--channels", type=int, default=3, help="channels C (step 1, default 3)")
    p.add_argument("--size", metavar="WxH", help="probe size (step 1; with block scrambling, the attacked size)")
    p.add_argument("--probes-encrypted", nargs="+", metavar="ENCRYPTED", help="step 2: the two encrypted probes")
    p.add_argument("-o", "--output", metavar="RECOVERED.json", help="the recovered key file (step 2)")
    p.add_argument("--force", action="store_true", help="replace an existing key file")
    p.set_defaults(func=_one_writer(cmd_chosen_plaintext))

    p = kinds.add_parser("score", help="how much of the key was recovered, and how good its decryptions are")
    p.add_argument("--true-key", required=True, metavar="KEY.json")
    p.add_argument("--recovered", required=True, metavar="RECOVERED.json")
    p.add_argument("--plain", nargs="+", metavar="PLAIN", help="plain images, to score decryptions")
    p.add_argument("--encrypted", nargs="+", metavar="ENCRYPTED", help="their encryptions (matched by file stem)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_score)

    p = kinds.add_parser("adapter", help="read the key off a trained adapter's patch embedding (public backbone)")
    p.add_argument("adapter", metavar="ADAPTER", help="an adapter file (adapter.safetensors) or a run folder")
    p.add_argument("--neg-pos", action="store_true", help="assume negative-positive flips")
    p.add_argument(
        "--scramble",
        action="store_true",
        help="also read the block order from a trained position embedding (full fine-tuning)",
    )
    p.add_argument(
        "--reference",
        nargs="+",
        metavar="PLAIN",
        help="public plain images for the block statistics (default: a generic prior)",
    )
    output(p)
    p.set_defaults(func=_one_writer(cmd_adapter))
