"""Which optional extra brings a package that an import found missing, so that the error can name it in one line."""

from __future__ import annotations

from .errors import EncvitError

# top-level module -> the extra of pyproject.toml that installs it
EXTRA_OF = {
    "tenseal": "fhe",
    "fastapi": "fhe",
    "uvicorn": "fhe",
    "httpx": "fhe",
    "skimage": "attacks",
    "sklearn": "attacks",  # and fhe: see extra_for
    "streamlit": "app",
    "cachetools": "app",
    "ray": "cluster",
    "peft": "peft",
    "jupytext": "notebooks",
    "nbval": "notebooks",
}
FHE_COMMANDS = ("fhe-train", "fhe-serve", "features")


class MissingExtraError(EncvitError):
    """An optional package is not installed: the message names the extra that brings it."""


def extra_for(module: str, command: str | None = None) -> str | None:
    """The extra that installs top-level `module` (scikit-learn: fhe for the encrypted head's commands)."""
    if module == "sklearn" and command in FHE_COMMANDS:
        return "fhe"
    return EXTRA_OF.get(module)


def missing_extra(error: ImportError, command: str | None = None) -> MissingExtraError | None:
    """A MissingExtraError naming the extra when `error` is a missing optional package, else None (a real bug)."""
    module = (getattr(error, "name", None) or "").split(".")[0]
    extra = extra_for(module, command)
    if not isinstance(error, ModuleNotFoundError) or extra is None:
        return None
    return MissingExtraError(
        f"{module} is not installed; it comes with encvit's {extra} extra: pip install 'encvit[{extra}]'"
    )
