"""The settings of one encrypted-head run (`encvit fhe-train`'s options), readable without TenSEAL or torch."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..common.errors import Allowed, ConfigError, check_options, integer, number, one_of, option, optional, path, text
from ..data.names import dataset_name
from .params import DEFAULT_PRESET, PRESETS, TRAINABLE_PRESETS


def default_threads() -> int:
    """The CPU cores this process may use: SEAL releases Python's lock, so threads run ciphertexts in parallel."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _components() -> Allowed:
    return Allowed(
        '"auto", "all" or a positive integer',
        lambda v: v in ("auto", "all") or (isinstance(v, str) and v.isdigit() and int(v) > 0),
    )


@dataclass
class FHEConfig:
    """One encrypted head training run: the defaults of `encvit fhe-train`, saved as config.json.

    The defaults were chosen on validation data only (never on test) and are the same for every dataset.
    """

    backbone: str = option("encvit-tiny", text())
    dataset: str = option("fashion5k", dataset_name())
    features: str | None = option(None, optional(path()))  # a features file (.npz) instead of backbone + dataset
    # Principal components the client keeps ("all": every feature; "auto": chosen per run on validation, see
    # encvit.fhe.components)
    components: str = option("auto", _components())
    # Chosen on validation only: 10 splits of each training set into 80% train and a 20% stand-in test, candidates
    # scored by their gap to the logistic-regression reference there (notes in docs/fhe.md).
    epochs: int = option(60, integer(1, 1000))  # at most: the cosine schedule's length; early stopping may end sooner
    patience: int = option(10, integer(1, 1000))  # epochs without a better validation score before the client stops
    stop_on: str = option("val_loss", one_of("val_loss", "val_acc"))  # the score: cross-entropy or accuracy
    batch_size: int = option(1024, integer(1))  # HETAL's batch for MNIST
    lr: float = option(8.0, number(0, 1000, low_open=True))
    lr_schedule: str = option("cosine", one_of("constant", "cosine"))
    momentum: float = option(0.9, number(0, 1, high_open=True))
    softmax_radius: float = option(4.0, number(0.5, 64))
    whiten_ridge: float | None = option(0.01, optional(number(0, 1e6, low_open=True)))
    preset: str = option(DEFAULT_PRESET, one_of(*TRAINABLE_PRESETS))
    limit: int | None = option(None, optional(integer(1)))
    seed: int = option(0, integer(0, 2**32 - 1))
    threads: int = option(default_threads(), integer(1, 256))  # blocks and feature groups run in parallel
    pretrained: bool = True

    def __post_init__(self):
        self.check()

    def check(self) -> FHEConfig:
        """Raise ConfigError on values that cannot work (one line naming the option)."""
        from .features import class_count
        from .head import momentum_ratio

        check_options(self)
        if (
            self.features is None
            and self.dataset.startswith("folder:")
            and not Path(self.dataset[len("folder:") :]).is_dir()
        ):
            raise ConfigError(f"--dataset {self.dataset}: {self.dataset[len('folder:') :]} is not a folder")
        momentum_ratio(self.momentum)
        classes = class_count(self.dataset) if self.features is None else None
        if self.limit is not None and classes is not None and self.limit < classes:
            raise ConfigError(
                f"--limit must be at least the {classes} classes of {self.dataset} (every split needs "
                f"an image of each class), got {self.limit}"
            )
        params = PRESETS[self.preset]
        if not 1 <= self.batch_size <= params.slots:
            raise ConfigError(
                f"--batch-size must be between 1 and the {params.slots} slots of a ciphertext at ring "
                f"degree {params.poly_modulus_degree} (a batch's samples share one ciphertext per "
                f"feature group), got {self.batch_size}"
            )
        return self


TOKEN_ENV = "ENCVIT_FHE_TOKEN"


@dataclass
class RemoteOptions:
    """`fhe-train --server`: where the encrypted head trains, with which token, how long to wait for the server."""

    server: str = option(None, text())
    token_file: str | None = option(None, optional(path()))
    server_wait: float = option(600.0, number(0, 86400))
    keep_on_server: bool = False

    def __post_init__(self):
        check_options(self)
        if not self.server.startswith(("http://", "https://")):
            raise ConfigError(f"--server {self.server}: give the URL the server printed, e.g. http://127.0.0.1:8765")

    def token(self) -> str:
        """The token from --token-file, else from ENCVIT_FHE_TOKEN; ConfigError when neither gives one."""
        if self.token_file is not None:
            try:
                token = Path(self.token_file).read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"--token-file {self.token_file} cannot be read: {exc}") from None
            if not token or len(token.split()) != 1:
                raise ConfigError(f"--token-file {self.token_file} must hold one token on one line")
            return token
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise ConfigError(
                f"--server needs a token: set {TOKEN_ENV} or pass --token-file (the server's operator "
                "makes one with `encvit fhe-serve --data DIR --new-token NAME`)"
            )
        return token


@dataclass
class ServeConfig:
    """`encvit fhe-serve`: where the server listens and what it accepts."""

    data: str = option(None, path())
    host: str = option("127.0.0.1", text())
    port: int = option(8765, integer(0, 65535))
    ssl_certfile: str | None = option(None, optional(path()))
    ssl_keyfile: str | None = option(None, optional(path()))
    insecure: bool = False
    max_upload_mb: float = option(256.0, number(0, 1 << 20, low_open=True))
    max_jobs: int = option(4, integer(1, 1000))
    threads: int = option(default_threads(), integer(1, 256))

    def __post_init__(self):
        check_options(self)
