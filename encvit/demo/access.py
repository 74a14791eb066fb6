"""What the demo app may read and build: its allowed folders and backbones, checked before anything is read.

The app serves visitors who type folder names; it reads only the shipped results and the folders its operator
named (``streamlit run app/Home.py -- --runs DIR``, or ``ENCVIT_APP_RUNS``, paths separated by ``os.pathsep``;
default ``./runs``), and builds only the shipped backbones plus those named in ``ENCVIT_APP_BACKBONES``
(comma-separated), so a discovered adapter cannot make it build a multi-gigabyte model.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..common.errors import ConfigError
from ..models.adapters import AdapterInfo, read_adapter_info
from ..models.backbones import EMBEDDED
from ..models.predict import SHIPPED_RESULTS, find_runs, load_runs

RUNS_ENV = "ENCVIT_APP_RUNS"
BACKBONES_ENV = "ENCVIT_APP_BACKBONES"
DEFAULT_RUNS = "runs"


class NotAllowedError(ConfigError):
    """A folder outside the app's allowed folders, or a backbone the app does not build."""


@dataclass(frozen=True)
class Access:
    """The folders the app reads (as named, and resolved) and the backbones it builds."""

    folders: tuple[str, ...]
    backbones: frozenset[str]

    @property
    def roots(self) -> tuple[Path, ...]:
        """The allowed folders with symlinks and `..` resolved, the shipped results first."""
        return (SHIPPED_RESULTS.resolve(), *(Path(f).resolve() for f in self.folders))

    def describe(self) -> str:
        """The allowed folders as the operator named them, for a message."""
        return ", ".join([*self.folders, "the shipped results"])

    def allows(self, path: str | os.PathLike) -> bool:
        """Whether `path`, with symlinks and `..` resolved, is one of the allowed folders or inside one."""
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
            return False
        return any(resolved == root or root in resolved.parents for root in self.roots)

    def folder(self, path: str | os.PathLike) -> Path:
        """`path` as typed, if allowed; NotAllowedError (naming the allowed folders) otherwise."""
        if not self.allows(path):
            raise NotAllowedError(
                f"{path} is outside the allowed folders ({self.describe()}); the app's operator "
                f"can allow more with `-- --runs DIR` or {RUNS_ENV}"
            )
        return Path(path)

    def check_backbone(self, info: AdapterInfo, source: str) -> None:
        """NotAllowedError naming the backbone unless the app may build it."""
        if info.backbone not in self.backbones:
            raise NotAllowedError(
                f"{source} needs the backbone {info.backbone}, which this app does not build "
                f"(it builds {', '.join(sorted(self.backbones))}; the app's operator can add "
                f"names in {BACKBONES_ENV})"
            )

    def runs(self, folder: str | os.PathLike) -> dict[str, Path]:
        """The run directories below an allowed `folder` whose adapter files (symlinks resolved) are allowed too."""
        found = find_runs(self.folder(folder))
        for run in found.values():
            if not self.allows(run / "adapter.safetensors"):
                raise NotAllowedError(
                    f"{run / 'adapter.safetensors'} leads outside the allowed folders ({self.describe()})"
                )
        return found

    def check_backbones(self, runs: Mapping[str, Path]) -> None:
        """NotAllowedError naming the first run whose adapter (read from its header alone) needs a backbone the
        app does not build."""
        for run in runs.values():
            path = run / "adapter.safetensors"
            self.check_backbone(read_adapter_info(path), f"adapter file {path}")

    def load_runs(self, folder: str | os.PathLike) -> dict[str, tuple[nn.Module, AdapterInfo]]:
        """Every run below an allowed `folder` as (model, info); nothing is built unless every backbone is allowed."""
        self.check_backbones(self.runs(folder))
        return load_runs(folder)


def adapter_stamp(runs: Mapping[str, Path]) -> tuple[tuple[str, str, int, int], ...]:
    """(name, run directory, modification time in ns, size) of every run's adapter file: changes when one is
    rewritten, so that what is kept of the files (headers, hashes, loaded models) is read again."""
    stamps = []
    for name, run in runs.items():
        stat = (Path(run) / "adapter.safetensors").stat()
        stamps.append((name, str(run), stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


def app_access(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Access:
    """The app's access from its command line (`--runs DIR`, repeatable; it replaces the environment's folders),
    else ENCVIT_APP_RUNS, else ./runs (folders separated by os.pathsep); backbones: the shipped ones plus
    ENCVIT_APP_BACKBONES."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--runs", action="append", default=[])
    try:
        given, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    except SystemExit:  # argparse exits on `--runs` without a folder
        raise ConfigError("the app's --runs needs a folder: streamlit run app/Home.py -- --runs DIR") from None
    named = given.runs or [environ.get(RUNS_ENV, "")]
    folders = [f for value in named for f in value.split(os.pathsep) if f] or [DEFAULT_RUNS]
    extra = {name.strip() for name in environ.get(BACKBONES_ENV, "").split(",") if name.strip()}
    return Access(tuple(folders), frozenset(EMBEDDED) | extra)
