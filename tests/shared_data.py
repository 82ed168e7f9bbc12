"""Where the shared real SIIM sample lives, and a marker that skips cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ``../shared/data/siim`` beside the repository (override with PNEUMOSEG_SIIM_DIR).
SIIM = Path(os.environ.get("PNEUMOSEG_SIIM_DIR", Path(__file__).resolve().parents[1].parent / "shared/data/siim"))

require_siim = pytest.mark.skipif(
    not (SIIM / "dicom").is_dir(),
    reason=f"real SIIM sample not found at {SIIM} (set PNEUMOSEG_SIIM_DIR); skipped",
)
