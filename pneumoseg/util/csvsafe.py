"""CSV formula injection: neutralise text cells that a spreadsheet would run as a formula.

A DICOM's PatientID (or any other text from an input) such as ``=HYPERLINK(...)`` or
``@SUM(...)`` is a formula when ``metadata.csv`` / ``index.csv`` is opened in Excel or
LibreOffice. As OWASP recommends (CSV Injection), a text cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return gets a leading single quote, which spreadsheets show
as text. Numbers (``-3``, ``+1.5e3``: what ``float`` parses) are left alone, and so are
non-string values. pneumoseg reads such a cell back with the quote: use the value as an
identifier only (it is one: the same input always gives the same cell).
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["FORMULA_STARTS", "safe_cell", "safe_frame", "safe_row"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_Frame = TypeVar("_Frame")


def safe_cell(value: Any) -> Any:
    """``value`` with a ``'`` prefixed when it is text starting like a formula (module docstring)."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def safe_row(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of a CSV row (column -> value) with every cell through ``safe_cell``."""
    return {key: safe_cell(value) for key, value in row.items()}


def safe_frame(df: _Frame) -> _Frame:
    """A copy of a pandas DataFrame with its text (object / string) columns through ``safe_cell``."""
    out = df.copy()  # type: ignore[attr-defined]
    for column in out.select_dtypes(include=["object", "string"]).columns:
        out[column] = out[column].map(safe_cell)
    return out
