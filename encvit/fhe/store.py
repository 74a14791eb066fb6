"""The server's encrypted training set on its own disk, read back one block at a time.

The server keeps no block in memory between iterations: its memory is bounded by a batch, not by the training set.
Each ciphertext is one file in SEAL's own format (SEAL loads from a path); the server saves what it received in
full (not seeded), which it reads back faster than the client's seeded bytes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tenseal import sealapi

from . import ckks
from .ops import Engine


class CiphertextStore:
    """Named lists of ciphertexts in a folder of the server's (a temporary one by default, removed by `close`)."""

    def __init__(self, engine: Engine, folder: str | Path | None = None):
        self.engine = engine
        self._owned = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="encvit-fhe-server-")) if folder is None else Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sizes: dict[str, int] = {}
        self.bytes_on_disk = 0

    def _path(self, name: str, index: int) -> Path:
        return self.folder / f"{name}-{index}.ct"

    def put(self, name: str, data: list[bytes]) -> None:
        """Store the ciphertexts sent as `data` under `name` (checked against the server's parameters)."""

        def save(item):
            index, payload = item
            path = self._path(name, index)
            ckks.ciphertext_from_bytes(self.engine.context, payload).save(str(path))
            return path.stat().st_size

        self.bytes_on_disk += sum(self.engine.map(save, enumerate(data)))
        self.sizes[name] = len(data)

    def get(self, name: str) -> list[sealapi.Ciphertext]:
        """The ciphertexts stored under `name`, read from disk."""

        def load(index):
            ct = sealapi.Ciphertext()
            with self.engine._op("load"):
                ct.load(self.engine.seal, str(self._path(name, index)))
            return ct

        return self.engine.map(load, range(self.sizes[name]))

    def restore(self, sizes: dict[str, int]) -> None:
        """Take up the lists a previous store in this folder held (a server started again on its data)."""
        self.sizes = dict(sizes)
        self.bytes_on_disk = self.folder_bytes()

    def folder_bytes(self) -> int:
        """Bytes of every ciphertext file in the folder."""
        return sum(path.stat().st_size for path in self.folder.glob("*.ct"))

    def close(self) -> None:
        """Remove the folder if the store made it."""
        if self._owned:
            shutil.rmtree(self.folder, ignore_errors=True)
