"""Every `encvit` subcommand, fuzzed with Hypothesis: a generated argument list (numbers out of range, empty and odd
strings, missing files, folders, corrupt files) ends with exit status 0 or 2 and never with a traceback, and a
refused command leaves no file or folder behind.

The subcommands and their options are read from `encvit.cli.build_parser()`, so a subcommand added later is
fuzzed too. Nothing trains: loading a dataset (or training, or extracting features) is where work starts, and
there the test stops the command and checks that nothing was written before it. A new kind of work that starts
elsewhere needs its entry point in WORK_STARTS.

ENCVIT_FUZZ_EXAMPLES (default 20) sets the examples per subcommand; ENCVIT_FUZZ_SEED, when set, draws other
examples than the fixed ones of the test suite.
"""

import argparse
import contextlib
import hashlib
import io
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from encvit.cipher.key import Key
from encvit.cli import build_parser, main

EXAMPLES = int(os.environ.get("ENCVIT_FUZZ_EXAMPLES", "20"))
SECONDS_PER_EXAMPLE = 30  # a command still running after this started work without being stopped

# Where work starts: (module, attribute). Reaching one of them means every check has passed.
WORK_STARTS = [
    ("encvit.data.datasets", "load_fashion"),
    ("encvit.data.datasets", "load_mnist5k"),
    ("encvit.data.datasets", "load_cifar10"),
    ("encvit.data.datasets", "load_folder"),
    ("encvit.training.loop", "fit"),
    ("encvit.fhe.features", "dataset_features"),
    ("timm.models._builder", "load_pretrained"),
]  # fetching pretrained weights of a timm backbone


class WorkStarted(BaseException):
    """Raised where work starts (a BaseException, so that no `except Exception` in the code swallows it)."""


class StillRunning(BaseException):
    """Raised by the alarm when a command outlives SECONDS_PER_EXAMPLE."""


def subcommands(parser: argparse.ArgumentParser, words: tuple = ()):
    """(words, parser) of every leaf subcommand, e.g. (("train",), ...) or (("attack", "NAME"), ...).

    argparse has no public way to list subparsers and options: `_actions` is the documented-by-use way.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, words + (name,))
            return
    yield words, parser


SUBCOMMANDS = dict(subcommands(build_parser()))

# ---- the files a generated argument can point at ---------------------------------------------------------
KEY_4 = Key.generate(4, 3, passphrase="fuzz")  # fits the shipped backbone (4x4 patches of 3 channels)
KEY_16 = Key.generate(16, 3, passphrase="fuzz")


def make_workspace(root: Path) -> None:
    """A folder with a key of each size, corrupt and empty files, images good and bad, folders and a fake run."""
    KEY_4.save(root / "key.json")
    KEY_16.save(root / "key16.json")
    (root / "corrupt.json").write_text('{"format": "encvit-key", "version": 1, "block_si')
    (root / "empty.bin").write_bytes(b"")
    (root / "garbage.safetensors").write_bytes(os.urandom(64))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "image.png")
    Image.fromarray(rng.integers(0, 256, (17, 30), dtype=np.uint8)).save(root / "odd.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "folder").mkdir()
    for label in ("cat", "dog"):
        (root / "data" / label).mkdir(parents=True)
        shutil.copy(root / "image.png", root / "data" / label / "0.png")
    (root / "run").mkdir()
    (root / "run" / "adapter.safetensors").write_bytes(os.urandom(128))
    (root / "study").mkdir()
    (root / "study" / "study.csv").write_text("dataset,size\nfashion5k,oops,extra\n")


PATHS = [
    "key.json",
    "key16.json",
    "corrupt.json",
    "empty.bin",
    "garbage.safetensors",
    "image.png",
    "odd.png",
    "corrupt.png",
    "folder",
    "data",
    "run",
    "run/adapter.safetensors",
    "study",
    "missing.json",
    "missing/",
    "image.png/inside",
    "new",
    "new/deeper",
    ".",
    "..",
    "/",
]
WORDS = [
    "encvit-tiny",
    "vit_base_patch16_224",
    "resnet18",
    "fashion5k",
    "mnist5k",
    "cifar10",
    "folder:data",
    "folder:folder",
    "folder:missing",
    "folder:",
    "full",
    "melo",
    "proposed",
    "head",
    "plain",
    "encrypted",
    "full,melo",
    "melo,melo",
    "plain,encrypted,plain",
    "30,40",
    "0",
    "-5",
    "1e-3,3e-2",
    "1e-3,-1",
    "32x32",
    "0x0",
    "7x",
    "fuzz",
    "data-size",
    "merge",
]
ODD = st.sampled_from(["", " ", "-", "--", "nan", "inf", "-inf", "1e999", "0x10", "٣", "1_000", "--epochs", ","])
# no "/": a random absolute path could name a real place outside the workspace
TEXT = st.text(st.characters(exclude_characters="\x00/\\", exclude_categories=("Cs",)), max_size=12)


def numbers(kind) -> st.SearchStrategy[str]:
    """Numbers as typed on a command line: small, zero, negative, huge, not finite, not numbers at all."""
    ints = st.one_of(st.integers(-3, 200), st.sampled_from([2**31, 2**32, 2**63, 10**30, -(10**30)]))
    if kind is int:
        return st.one_of(ints.map(str), ODD)
    floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-12, 1.0, 2.0]))
    return st.one_of(floats.map(repr), ints.map(str), ODD)


def values(action: argparse.Action) -> st.SearchStrategy[str]:
    """Strings for one option or positional: its choices and default, then everything a user might mistype."""
    if action.type in (int, float):
        base = numbers(action.type)
    else:
        base = st.one_of(st.sampled_from(PATHS), st.sampled_from(WORDS), ODD, TEXT)
    known = [str(c) for c in action.choices or []]
    if action.default not in (None, argparse.SUPPRESS, False, True, ""):
        known.append(str(action.default))
    return st.one_of(st.sampled_from(known), base) if known else base


@st.composite
def argument_lists(draw, words: tuple, parser: argparse.ArgumentParser) -> list[str]:
    """An argument list for one subcommand: each option present or not, positionals (nearly) always."""
    args = list(words)
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if not action.option_strings:  # a positional
            count = {"+": draw(st.integers(1, 3)), "*": draw(st.integers(0, 3)), "?": draw(st.integers(0, 1))}.get(
                action.nargs, 1
            )
            if draw(st.integers(0, 19)) == 0:
                count = 0  # now and then a required one is missing
            args += [draw(values(action)) for _ in range(count)]
            continue
        if not draw(st.booleans()) and not (action.required and draw(st.integers(0, 9)) > 0):
            continue
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            args.append(flag)
        else:
            value = draw(values(action))
            # "--opt=-5": a value starting with "-" would otherwise be read as an option
            args.append(f"{flag}={value}" if value.startswith("-") else flag)
            if not value.startswith("-"):
                args.append(value)
    return args


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder below `root` with a hash of its content (folders: "dir")."""
    found = {}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run(argv: list[str]) -> tuple[int | str, str]:
    """`encvit ARGV` in this process: (exit status or "work started", stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse's refusals
            status = exc.code
        except WorkStarted:
            status = "work started"
    return status, err.getvalue()


@pytest.fixture(scope="module")
def guarded():
    """Stop every command where work starts; an alarm stops one that never reaches such a point."""
    import importlib
    import pkgutil

    import encvit

    for module in pkgutil.walk_packages(encvit.__path__, "encvit."):
        importlib.import_module(module.name)
    patch = pytest.MonkeyPatch()

    def work_started(*args, **kwargs):
        raise WorkStarted

    # Patched where it is defined and in every encvit module that imported it by name.
    for module_name, name in WORK_STARTS:
        home = importlib.import_module(module_name)
        original = getattr(home, name)
        patch.setattr(home, name, work_started)
        for module in [m for n, m in list(sys.modules.items()) if n == "encvit" or n.startswith("encvit.")]:
            # vars(), not getattr(): getattr on a package's lazy face would load the name, patched, into its cache
            if vars(module).get(name) is original:
                patch.setattr(module, name, work_started)

    def alarm(*_):
        raise StillRunning(f"still running after {SECONDS_PER_EXAMPLE} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    for name in ("ENCVIT_STUDY_SIZES", "ENCVIT_STUDY_SEEDS"):
        patch.delenv(name, raising=False)
    yield
    signal.signal(signal.SIGALRM, previous)
    patch.undo()


def check_one(argv: list[str], root: Path) -> None:
    """Run `argv` in a fresh copy of the workspace and check the exit, the message and what was left behind."""
    shutil.rmtree(root / "ws", ignore_errors=True)
    (root / "ws").mkdir()
    make_workspace(root / "ws")
    before = snapshot(root / "ws")
    with contextlib.chdir(root / "ws"):
        signal.alarm(SECONDS_PER_EXAMPLE)
        try:
            status, err = run(argv)
        finally:
            signal.alarm(0)
    shown = f"encvit {' '.join(argv)}\n{err}"
    assert "Traceback" not in err, shown
    assert status in (0, 2, "work started"), shown
    after = snapshot(root / "ws")
    if status != 0:  # refused, or stopped where work starts: nothing may have been written
        assert after == before, f"{shown}\nchanged: {sorted(set(after.items()) ^ set(before.items()))}"
    else:
        assert not [p for p in after if p.endswith((".partial", ".tmp"))], shown
    if status == 2:
        last = err.strip().splitlines()[-1]
        assert last.startswith("encvit") and ": error: " in last, shown


@pytest.mark.parametrize("words", sorted(SUBCOMMANDS), ids=" ".join)
def test_generated_arguments_end_cleanly_and_refusals_leave_nothing(words, tmp_path_factory, guarded):
    root = tmp_path_factory.mktemp("fuzz")
    fuzz_seed = os.environ.get("ENCVIT_FUZZ_SEED")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=fuzz_seed is None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(argument_lists(words, SUBCOMMANDS[words]))
    def fuzz(argv):
        check_one(argv, root)

    if fuzz_seed is not None:
        fuzz = seed(int(fuzz_seed))(fuzz)
    fuzz()


def test_the_fuzzer_knows_every_subcommand_of_the_parser():
    names = {words[0] for words in SUBCOMMANDS}
    assert {
        "train",
        "evaluate",
        "compare",
        "study",
        "pretrain",
        "fhe-train",
        "params",
        "keygen",
        "encrypt",
        "decrypt",
        "key-info",
    } <= names
    options = {a.dest for a in SUBCOMMANDS[("train",)]._actions}
    assert {"epochs", "lr", "batch_size", "label_smoothing", "warmup_epochs", "rank", "alpha"} <= options


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--method", "melo", "--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
        (["train", "--method", "melo", "--lr", "-1"], "--lr must be a number > 0, got -1.0"),
        (["train", "--method", "melo", "--alpha", "-1"], "--alpha must be a number > 0, got -1.0"),
        (["train", "--method", "melo", "--warmup-epochs", "-3"], "--warmup-epochs must be a number >= 0"),
        (["train", "--method", "melo", "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["train", "--method", "melo", "--weight-decay", "-1"], "--weight-decay must be a number >= 0"),
        (["train", "--method", "melo", "--label-smoothing", "2"], "--label-smoothing must be a number in [0, 1)"),
        (["train", "--method", "melo", "--lr", "nan"], "--lr must be a number > 0, got nan"),
        (["train", "--method", "melo", "--epochs", "2", "--warmup-epochs", "3"], "--warmup-epochs must be at most"),
        (["train", "--method", "melo", "--rank", "500"], "--rank must be at most the backbone's width (96)"),
        (["train", "--method", "melo", "--out", "image.png"], "--out image.png is a file, not a folder"),
        (["compare", "--seeds", "0"], "--seeds must be an integer >= 1, got 0"),
        (["compare", "--methods", "full,lora"], "--methods must be a non-empty comma-separated list"),
        (["compare", "--jobs", "0"], "--jobs must be an integer from 1 to"),
        (["study", "data-size", "--sizes", "30,x"], "--sizes (or ENCVIT_STUDY_SIZES) must be integers"),
        (["study", "data-size", "--patch-lrs", "1e-3,-1"], "--patch-lrs must be a comma-separated list"),
        (["pretrain", "--epochs", "-1"], "--epochs must be an integer >= 1"),
        (["params", "--num-classes", "0"], "--num-classes must be an integer from 1 to"),
        (["keygen", "-o", "k.json", "--block-size", "0"], "ConfigError: --block-size must be an integer from 1 to 256"),
        (["encrypt", "--key", "key.json", "image.png", "-o", "out", "--resize", "99999x99999"], "at most"),
        (["evaluate", "run", "--limit", "0"], "--limit must be an integer >= 1, got 0"),
    ],
)
def test_the_issue_s_mistakes_are_refused_in_one_line_before_work(argv, message, tmp_path, guarded):
    make_workspace(tmp_path)
    before = snapshot(tmp_path)
    with contextlib.chdir(tmp_path):
        status, err = run(argv)
    assert status == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path) == before
