"""User-facing errors: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations


class LocLocError(Exception):
    """An error caused by user input (a path, a file, a checkpoint, a config).

    The message must say what is wrong and, where it helps, what to do.
    """


class DataError(LocLocError):
    """A data set, annotation file or image is missing or malformed."""


class CheckpointError(LocLocError):
    """A checkpoint or model directory cannot be loaded."""


class ConfigError(LocLocError):
    """A configuration file or option is invalid."""

