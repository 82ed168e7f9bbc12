"""Text taken from untrusted DICOM data: one printable line for messages, header values that never raise.

Used by every reader module (``read``, ``parse``, ``frames``, ``decode``, ``display``) so that a
DicomError or a warning is always one printable line, whatever bytes the file holds.
"""

from __future__ import annotations

import re

from pydicom.dataset import Dataset

_ADVICE = re.compile(r"[^.;:]*\bforce\s*=\s*True\b[^.;]*[.;]?|\s*Please see <[^>]*>[^.;]*[.;]?", re.IGNORECASE)
_MAX_MESSAGE = 300


def _printable(text: str) -> str:
    """``text`` with every non-printable character written as its escape (``\\n``, ``\\x00``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _one_line(text: str) -> str:
    """A message on one line: lines joined, advice a CLI user cannot follow (force=True) dropped."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    out = ""
    for line in lines:
        out += line if not out else (" " if out.endswith(":") else "; ") + line
    out = re.sub(r"\s+", " ", _printable(_ADVICE.sub("", out))).strip(" ;")
    return out if len(out) <= _MAX_MESSAGE else out[: _MAX_MESSAGE - 3] + "..."


def _error(exc: BaseException) -> str:
    """``"Type: message"`` of an exception on one line (just the type when the message is empty)."""
    return f"{type(exc).__name__}: {_one_line(str(exc))}" if str(exc).strip() else type(exc).__name__


def _text(ds: Dataset, keyword: str) -> str:
    """The value of ``keyword`` as printable, stripped text; ``""`` when missing or unreadable."""
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    return "" if value is None else _printable(str(value)).strip()


def _int(ds: Dataset, keyword: str) -> int:
    """The value of ``keyword`` as an int; 0 when missing or not a number."""
    try:
        value = ds.get(keyword)
        return int(value) if value is not None else 0
    except Exception:
        return 0
