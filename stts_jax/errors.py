"""The package's error classes, one owner for each: every message names the problem and the fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is impossible; the message names the field and the fix."""


class CheckpointError(ValueError):
    """A checkpoint does not match the model; the message names the file or tensor and the fix."""


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


class AOTError(RuntimeError):
    """The program cannot run as configured on the slice; the message says why and what to change."""


class DataError(ValueError):
    """An example cannot be used; the message names the file (and line) and the problem; `kind` is a
    short category for the skip counters."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind
