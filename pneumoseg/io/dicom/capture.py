"""Per-read capture of warnings and pydicom's log records: each read gets its own, with no lock.

Inside ``capturing()`` every warning raised in the read's own context (its thread, or its task),
by pydicom, numpy, Pillow or a decoder, is recorded in that read's list, whatever the process's
warning filters say (as ``simplefilter("always")`` would), and pydicom's log records raised there
are dropped (each one is already a warning in ``DicomMeta.warnings`` or part of the DicomError).
Numpy's floating-point errors warn (``np.errstate``, which numpy keeps per context) except underflow.
Two threads reading at once each get exactly their own warnings; warnings outside a read, in any
thread, go through the filters and the display as if this module did not exist.

How: a ``ContextVar`` holds the active read's list, and three hooks do nothing unless it is set
for the context they run in:

* a filter at the head of ``warnings.filters`` (action ``"always"``) whose message pattern matches
  only inside a read, so ``"error"`` / ``"ignore"`` / once-only filters set elsewhere do not apply there;
* ``warnings._showwarnmsg``, which the interpreter calls for every warning shown (and which
  ``warnings.catch_warnings`` leaves in place): inside a read it appends to the read's list, else
  it calls the hook it replaced;
* a ``logging.Filter`` on pydicom's loggers.

Importing this module installs nothing. ``capturing()`` installs the hooks on first use (again if
a ``catch_warnings`` elsewhere restored the filters without ours) and, on each entry, invalidates
the per-module "already warned" registries, as ``catch_warnings`` does, so a warning first met
outside a read is still recorded inside one.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import numpy as np

__all__ = ["capturing"]

_ACTIVE: ContextVar[list[warnings.WarningMessage] | None] = ContextVar("pneumoseg_dicom_read_warnings",
                                                                      default=None)
_LOGGERS = ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils")


def _inside_read() -> bool:
    return _ACTIVE.get() is not None


class _InsideRead:
    """The message pattern of the capture filter: matches every text, but only inside a read."""

    def match(self, text: str) -> bool:
        return _inside_read()

    def __repr__(self) -> str:
        return "<inside a pneumoseg DICOM read>"


_FILTER = ("always", _InsideRead(), Warning, None, 0)


class _ShowOrCapture:
    """Replaces ``warnings._showwarnmsg``: a read's warnings go to its list, others to ``shown``."""

    def __init__(self, shown: Callable[[warnings.WarningMessage], object]) -> None:
        self.shown = shown

    def __call__(self, msg: warnings.WarningMessage) -> None:
        caught = _ACTIVE.get()
        if caught is None:
            self.shown(msg)
        else:
            caught.append(msg)


class _DropInsideRead(logging.Filter):
    """Drops the log records raised inside a read; passes every other one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _inside_read()


_LOG_FILTER = _DropInsideRead()


def _install() -> None:
    """Put the three hooks in place (each idempotent; harmless if two threads race here)."""
    if not isinstance(warnings._showwarnmsg, _ShowOrCapture):  # type: ignore[attr-defined]
        warnings._showwarnmsg = _ShowOrCapture(warnings._showwarnmsg)  # type: ignore[attr-defined]
    filters = warnings.filters
    if not filters or filters[0] is not _FILTER:
        with contextlib.suppress(ValueError):
            while _FILTER in filters:
                filters.remove(_FILTER)
        filters.insert(0, _FILTER)
    for name in _LOGGERS:
        logging.getLogger(name).addFilter(_LOG_FILTER)  # no-op when already there
    invalidate = getattr(warnings, "_filters_mutated", None)  # what catch_warnings calls (CPython 3.11, 3.12)
    if invalidate is not None:
        invalidate()


@contextlib.contextmanager
def capturing() -> Iterator[list[warnings.WarningMessage]]:
    """Within the block, this context's warnings are recorded in the list yielded (see the module docstring)."""
    _install()
    caught: list[warnings.WarningMessage] = []
    token = _ACTIVE.set(caught)
    try:
        with np.errstate(divide="warn", over="warn", invalid="warn", under="ignore"):
            yield caught
    finally:
        _ACTIVE.reset(token)
