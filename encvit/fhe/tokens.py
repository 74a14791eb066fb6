"""Who may use the encrypted head's server: bearer tokens, of which the server stores only a hash.

`encvit fhe-serve --data DIR --new-token NAME` prints a new token once; DIR/tokens.json keeps its SHA-256 (mode 600),
so a copy of the data folder gives no token away. A job belongs to the hash of the token that made it.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from pathlib import Path

from ..common.atomic import write_text
from ..common.errors import ConfigError

TOKENS_FILE = "tokens.json"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def token_hash(token: str) -> str:
    """The SHA-256 of a token, hex: what the server stores and what owns a job."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The tokens of one data folder, re-read whenever the file changes (so a new token works without a restart)."""

    def __init__(self, data: Path):
        self.path = Path(data) / TOKENS_FILE
        self._seen: tuple[float, int] | None = None
        self._tokens: dict[str, dict] = {}

    def _read(self) -> dict[str, dict]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        if self._seen != (stat.st_mtime, stat.st_size):
            self._tokens = json.loads(self.path.read_text())
            self._seen = (stat.st_mtime, stat.st_size)
        return self._tokens

    def names(self) -> list[str]:
        """The names of the tokens that work."""
        return sorted(self._read())

    def new(self, name: str) -> str:
        """Make, store (as a hash) and return a new token called `name`."""
        if not NAME.fullmatch(name):
            raise ConfigError(f"--new-token {name!r}: a name is 1-64 letters, digits, '_', '.' or '-'")
        tokens = dict(self._read())
        if name in tokens:
            raise ConfigError(f"a token called {name} exists; revoke it first (--revoke-token {name})")
        token = secrets.token_urlsafe(32)
        tokens[name] = {"sha256": token_hash(token), "created": time.time()}
        write_text(self.path, json.dumps(tokens, indent=1), mode=0o600)
        return token

    def revoke(self, name: str) -> None:
        """Remove the token called `name`: requests with it get 401 from now on."""
        tokens = dict(self._read())
        if name not in tokens:
            raise ConfigError(f"--revoke-token {name}: no such token (known: {', '.join(sorted(tokens)) or 'none'})")
        del tokens[name]
        write_text(self.path, json.dumps(tokens, indent=1), mode=0o600)

    def owner(self, token: str) -> str | None:
        """The hash that owns `token`'s jobs, or None when no stored token matches."""
        wanted = token_hash(token)
        found = None
        for entry in self._read().values():
            if secrets.compare_digest(entry["sha256"], wanted):  # compare every entry: no early exit to time
                found = wanted
        return found
