"""Errors a user can cause and fix: the CLI prints their message on one line and exits with 2."""


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
