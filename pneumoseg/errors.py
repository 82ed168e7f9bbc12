"""Exceptions. Every message names the file, ImageId or row and what is wrong."""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "DicomError", "PneumosegError", "RLEError"]


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
