"""Writing outputs safely: a crash leaves the old file or folder or the new one, never half of one, and never
neither; one command at a time writes an output.

    with output_lock(out):              # a second command into `out` is refused (OutputInUseError)
        ...write out.partial...
        replace_folder(out.partial, out)  # old -> out.old-PID, new -> out, then the old one is deleted

Whoever holds an output's lock also owns its `.partial` and `.old-PID` siblings: on taking the lock, what a killed
writer left there is cleaned up, and an old folder whose replacement never arrived is put back (`recover_folder`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputInUseError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it gets `mode` and replaces `path` in one step."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path, mode) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)


def begin_result_set(folder: str | os.PathLike, settings: dict | None = None) -> None:
    """Mark a results folder (a comparison, a study) incomplete until its meta.json is written again, last: remove
    meta.json, then write `settings`, if given, as its config.json (what a resume is compared with)."""
    folder = Path(folder)
    with contextlib.suppress(FileNotFoundError):
        (folder / "meta.json").unlink()
    if settings is not None:
        write_text(folder / "config.json", json.dumps(settings, indent=1, default=str))


def save_figure(fig, path: str | os.PathLike, dpi: int = 90) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


# ---- whole folders -----------------------------------------------------------------------------------------
def staging_of(target: str | os.PathLike) -> Path:
    """The folder a new `target` is written into before `replace_folder` swaps it in: TARGET.partial."""
    target = Path(target)
    return target.with_name(target.name + ".partial")


def _old_copies(target: Path) -> list[Path]:
    """TARGET.old-PID folders that `replace_folder` left behind, newest first."""
    pattern = re.compile(re.escape(target.name) + r"\.old-\d+")
    found = [p for p in target.parent.glob(f"{target.name}.old-*") if pattern.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished folder `staging` in the place of `target` (which may not exist) by renames: the old one
    becomes TARGET.old-PID, `staging` becomes `target`, then the old one is deleted. A kill between the two renames
    leaves TARGET.old-PID whole, and the next holder of the lock puts it back (`recover_folder`)."""
    staging, target = Path(staging), Path(target)
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    moved = target.exists()
    if moved:
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        if moved and not target.exists():  # an error (or Ctrl-C) between the renames: the old one goes back
            os.rename(old, target)
        raise
    if moved:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def fresh_folder(target: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """The folder to write `target` into: `target` itself, or, to overwrite an existing one, TARGET.partial, which
    replaces it (`replace_folder`) when the block ends and is removed when the block fails."""
    target = Path(target)
    if not (overwrite and target.exists()):
        yield target
        return
    staging = staging_of(target)
    try:
        yield staging
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def recover_folder(target: str | os.PathLike) -> None:
    """Clean up after a writer of `target` that was killed (call it holding the lock): an old folder whose
    replacement never arrived goes back in place; other old copies and an unfinished TARGET.partial go."""
    target = Path(target)
    old = _old_copies(target)
    if old and not target.exists():
        os.rename(old.pop(0), target)
    for leftover in old:
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.rmtree(staging_of(target), ignore_errors=True)


# ---- one writer per output ---------------------------------------------------------------------------------
def lock_file_of(target: str | os.PathLike) -> Path:
    """The lock file of an output: .NAME.lock beside it, holding the pid of the command that writes it."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, flag: str = "--out") -> Iterator[Path]:
    """Hold the lock of the output `target` (a folder or file) for the block, then recover what a killed writer
    left (`recover_folder`). Another command holding it is refused at once with OutputInUseError naming its pid.

    The kernel releases the lock when its holder dies, so a lock file left by a killed command blocks nothing.
    Folders made for the lock file are removed again if nothing else was written into them.
    """
    target = Path(target)
    made = _make_folders(target.parent)
    try:
        fd = _take_lock(lock_file_of(target), target, flag)
        try:
            recover_folder(target)
            yield target
        finally:
            _release_lock(fd, lock_file_of(target))
    finally:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()


def _make_folders(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; returns the folders made, deepest first."""
    made = []
    while not folder.exists():
        made.append(folder)
        folder = folder.parent
    for missing in reversed(made):
        missing.mkdir(exist_ok=True)
    return made


# Hand-written: filelock (the usual library) neither records the holder's pid nor removes its lock file safely.
def _take_lock(lock: Path, target: Path, flag: str) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "not yet known"
            os.close(fd)
            raise OutputInUseError(
                f"{target} is being written by another command (pid {holder}); wait for it to "
                f"end or choose another {flag}"
            ) from None
        # A holder that just finished removed the file we opened: lock the one now at that path instead.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _release_lock(fd: int, lock: Path) -> None:
    # Removed while still locked, so that a command waiting on this file sees it is gone and takes a new one.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock)
    os.close(fd)
