"""User-facing errors: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations

from pathlib import Path


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


def where(path: str | Path, line: int | None = None) -> str:
    """Format ``path`` (and a 1-based ``line``) for an error message."""
    return f"{path}:{line}" if line is not None else str(path)
