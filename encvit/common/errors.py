"""Errors a user can cause and fix (the CLI prints their message on one line and exits with 2), and the option
checks that raise them before any work starts.

Every config dataclass (TrainConfig, PretrainConfig, CompareConfig, StudyConfig, ...) declares what each option
accepts beside its default, and checks them all when it is made:

    @dataclass
    class MyConfig:
        epochs: int = option(6, integer(1))
        lr: float | None = option(None, optional(number(0, low_open=True)))

        def __post_init__(self):
            check_options(self)          # ConfigError: "--epochs must be an integer >= 1, got 0"

so the command line and the Python API refuse the same values with the same one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class EncvitError(Exception):
    """Base class of every error caused by bad input (a file, an option, a key)."""


class KeyFileError(EncvitError):
    """A key file is missing, truncated, edited or of another version."""


class KeyMismatchError(EncvitError):
    """A key does not fit the data or model it is used with."""


class ImageError(EncvitError):
    """An image cannot be read or does not fit the block size."""


class AdapterError(EncvitError):
    """An adapter file is corrupt or does not fit the model it is loaded into."""


class ConfigError(EncvitError):
    """An unknown name or an option value that cannot work."""


class OutputError(EncvitError):
    """An output file cannot be written (a full disk, a file size limit); nothing of it is left behind."""


class OutputInUseError(EncvitError):
    """Another command is writing the same output folder or file."""


class IncompleteResultsError(EncvitError):
    """A results folder is unfinished (no manifest, meta.json, yet) or one of its files is damaged."""


# ---- option checks ---------------------------------------------------------------------------------------
# pydantic could validate dataclasses too, but it coerces types ("6" -> 6) and writes multi-line messages;
# these few lines give the one-line "--option must be ..., got ..." that the command line prints.


@dataclass(frozen=True)
class Allowed:
    """What an option accepts: a predicate, and the words that say it ("an integer >= 1")."""

    text: str
    accepts: Callable[[Any], bool]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(low: int | None = None, high: int | None = None) -> Allowed:
    """An integer in [low, high] (either end may be open-ended)."""
    if high is None:
        text = f"an integer >= {low}" if low is not None else "an integer"
    else:
        text = f"an integer from {low} to {high}" if low is not None else f"an integer <= {high}"
    return Allowed(text, lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high))


def number(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Allowed:
    """A finite number between `low` and `high`, each end included unless `..._open`."""
    if low is not None and high is not None:
        text = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        text = f"a number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        text = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        text = "a finite number"

    def accepts(v) -> bool:
        return (
            _is_number(v)
            and (low is None or (v > low if low_open else v >= low))
            and (high is None or (v < high if high_open else v <= high))
        )

    return Allowed(text, accepts)


def one_of(*choices) -> Allowed:
    """One of `choices`."""
    return Allowed("one of " + ", ".join(map(str, choices)), lambda v: v in choices)


def text() -> Allowed:
    """A non-empty string."""
    return Allowed("a non-empty text", lambda v: isinstance(v, str) and v != "")


def path() -> Allowed:
    """A non-empty path (a string or a path object)."""
    return Allowed("a path", lambda v: isinstance(v, (str, os.PathLike)) and os.fspath(v) != "")


def optional(rule: Allowed) -> Allowed:
    """`rule`, or None (not given)."""
    return Allowed(rule.text, lambda v: v is None or rule.accepts(v))


def each(rule: Allowed, empty: bool = False) -> Allowed:
    """A list (or tuple) without repeats, every item accepted by `rule`; non-empty unless `empty`."""

    def accepts(v) -> bool:
        if not isinstance(v, (list, tuple)):
            return False
        items = list(v)
        return (empty or bool(items)) and len(set(map(repr, items))) == len(items) and all(map(rule.accepts, items))

    return Allowed(f"a{'' if empty else ' non-empty'} comma-separated list without repeats, each {rule.text}", accepts)


def option(default, allowed: Allowed, flag: str | None = None, **kwargs) -> dataclasses.Field:
    """A dataclass field whose value `check_options` checks against `allowed` (`flag`: the option's name)."""
    return dataclasses.field(default=default, metadata={"allowed": allowed, "flag": flag}, **kwargs)


def flag_of(config, name: str) -> str:
    """The command-line option of the field `name` of a config dataclass (`batch_size` -> `--batch-size`)."""
    meta = {f.name: f.metadata for f in dataclasses.fields(config)}.get(name, {})
    return meta.get("flag") or "--" + name.replace("_", "-")


def check_options(config) -> None:
    """Raise ConfigError naming the first option of a config dataclass whose value its `option(...)` refuses."""
    for f in dataclasses.fields(config):
        allowed = f.metadata.get("allowed")
        value = getattr(config, f.name)
        if allowed is not None and not allowed.accepts(value):
            shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            raise ConfigError(f"{flag_of(config, f.name)} must be {allowed.text}, got {shown!r}")


def split_list(value: str, convert: Callable[[str], Any], flag: str) -> list:
    """`"500,1000"` -> `[500, 1000]` with `convert`; ConfigError naming `flag` for an item it cannot read."""
    items = [item.strip() for item in str(value).split(",")] if str(value).strip() else []
    try:
        return [convert(item) for item in items]
    except (TypeError, ValueError):
        kind = {int: "integers", float: "numbers"}.get(convert, "values")
        raise ConfigError(f"{flag} must be {kind} separated by commas, got {value!r}") from None


def check_output_path(path, flag: str, folder: bool) -> Path:
    """Refuse an output path that cannot be written, before any work: a name like "." that cannot be replaced,
    a file where a folder is wanted (or the reverse), a file on the way, or a folder without write permission."""
    kind, other = ("folder", "file") if folder else ("file", "folder")
    path = Path(path)
    if "\0" in str(path) or path.name in ("", ".", ".."):
        raise ConfigError(f"{flag} must name a {kind}, got {str(path)!r}")
    try:
        if path.exists() and path.is_dir() != folder:
            raise ConfigError(f"{flag} {path} is a {other}, not a {kind}")
        here = Path.cwd().resolve()
        if folder and (path.resolve() == here or path.resolve() in here.parents):
            raise ConfigError(f"{flag} {path} is the current folder or one of its parents; name a folder of its own")
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
    except OSError as exc:  # e.g. a name too long for the file system
        raise ConfigError(f"{flag} {str(path)!r} cannot be used: {exc.strerror or exc}") from None
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path} cannot be made: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path} cannot be made: {parent} is not writable")
    return path


class AttackError(EncvitError):
    """An attack cannot run on the given images (too few, inconsistent pairs, not the expected probes)."""


# ---- reading back what a command wrote ----------------------------------------------------------------------
def read_json(path: str | os.PathLike, error: type[EncvitError] = ConfigError, fix: str = "remove it") -> dict:
    """The JSON object in `path`; `error` in one line, ending with `fix`, when it is missing, damaged or not an
    object."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path} is missing; {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(f"{path} is damaged ({type(exc).__name__}: {one_line_of(exc)}); {fix}") from None
    if not isinstance(value, dict):
        raise error(f"{path} is damaged (a JSON {type(value).__name__}, not an object); {fix}")
    return value


def read_table(path: str | os.PathLike, error: type[EncvitError] = ConfigError):
    """The CSV table in `path` as a DataFrame; `error` in one line when it is missing, empty or damaged."""
    import pandas as pd

    path = Path(path)
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise error(f"{path} is missing") from None
    except pd.errors.EmptyDataError:
        raise error(f"{path} is empty") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        raise error(f"{path} is not readable ({type(exc).__name__}: {one_line_of(exc)})") from None


def one_line_of(exc: BaseException) -> str:
    """An exception's message on one line, cut at 200 characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def refuse_other_settings(saved: dict, now: dict, where: str, names: dict | None = None) -> None:
    """ConfigError naming every setting of `now` whose value differs from `saved` (what `where` was made with),
    with both values; `names` labels a setting (default: its option, `batch_size` -> `--batch-size`)."""
    names = names or {}
    # Compared as JSON gives them back: a tuple is saved as a list, a path as text.
    now = json.loads(json.dumps(now, default=str))
    differ = [
        f"{names.get(k) or '--' + k.replace('_', '-')} "
        f"{repr(saved[k]) + ' there' if k in saved else 'not recorded there'}, {v!r} now"
        for k, v in now.items()
        if k not in saved or saved[k] != v
    ]
    if differ:
        raise ConfigError(
            f"{where} was made with other settings ({'; '.join(differ)}): use the same settings to "
            "resume, pass --overwrite to start afresh, or choose another --out"
        )
