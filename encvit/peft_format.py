"""Moved to `encvit.models.peft_format`; this name keeps working for one release, with a warning.

Folders written by `encvit export` before the move name `encvit.peft_format` in their README.
"""

import warnings

from .models.peft_format import *  # noqa: F403 (old imports get the new place's public API)
from .models.peft_format import __all__  # noqa: F401

warnings.warn(
    "encvit.peft_format moved to encvit.models.peft_format (or `from encvit.models import peft_base`); "
    "the old name goes in the next release",
    FutureWarning,
    stacklevel=2,
)
