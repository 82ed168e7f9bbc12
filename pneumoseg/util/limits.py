"""Input limits shared by the CLI, the web service and the DICOM node (one number each, no imports).

Kept free of heavy imports so that the CLI's option defaults can use them without loading pydicom.
"""

from __future__ import annotations

__all__ = ["MAX_INSTANCE_MB", "MAX_PIXELS"]

MAX_PIXELS = 64_000_000
"""Largest decoded image, Rows x Columns x frames (64 MP = 64,000,000 pixels): ``read_dicom``'s default,
``serve --max-pixels`` and ``listen --max-pixels``."""

MAX_INSTANCE_MB = 150.0
"""Largest DICOM instance the node receives (MB = 10**6 bytes; a 64 MP 16-bit uncompressed image is 128 MB):
``listen --max-instance-mb``."""
