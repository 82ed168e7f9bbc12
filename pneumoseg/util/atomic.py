"""Atomic file writes: write to a temporary name in the same folder, then rename.

A killed job therefore never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]

# mkstemp creates 0600 files; final files get the usual 0666 & ~umask like open() would give.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
# Temporary names: ".<stem[:16]>.<8 random>.tmp<suffix>" (suffixes longer than 16 are dropped).
_STEM_CHARS = 16
_MAX_SUFFIX = 16


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary name is short, whatever the final name's length (``.<first 16 characters of
    the stem>.<random>.tmp<suffix>``, at most ~50 characters), so any name that fits the file
    system also fits while being written; it keeps the suffix so that writers choosing a format
    by extension (PIL, cv2, matplotlib) still work. On error the temporary is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = final.suffix if len(final.suffix) <= _MAX_SUFFIX else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem[:_STEM_CHARS]}.", suffix=f".tmp{suffix}",
                               dir=final.parent)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
