"""Exceptions. Every message names the file, ImageId or row and what is wrong."""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "DicomError", "PneumosegError", "RLEError", "TrainingInterrupted"]


class PneumosegError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class RLEError(PneumosegError, ValueError):
    """A run-length string that cannot be decoded or encoded."""


class DicomError(PneumosegError):
    """A file that is not a readable DICOM image."""


class DataError(PneumosegError):
    """Inconsistent data: sizes that disagree, missing caches or splits, unreadable images."""


class ConfigError(PneumosegError, ValueError):
    """A bad experiment config, model name, loss name or option value."""


class TrainingInterrupted(PneumosegError):
    """Training stopped by a signal (SIGTERM from ``timeout`` / SLURM / systemd, or Ctrl-C).

    The message says where the run stopped and how to resume it; ``exit_code`` is the shell's
    convention for the signal (128 + signal number: 143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
