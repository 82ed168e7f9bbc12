"""Atomic file writes: write to a temporary name in the same folder, then rename.

A killed job therefore never leaves a half-written file under the final name. That survives
``kill -9`` but not a power loss: the rename may reach the disk before the file's data, or not at
all. ``durable=True`` (used where a promise is made: the DICOM node's queue, manifests, part
files) also ``fsync``s the file before the rename and its folder after it, so once the call
returns the file is on disk under its final name, whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir", "fsync_file"]

# mkstemp creates 0600 files; final files get the usual 0666 & ~umask like open() would give.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
# Temporary names: ".<stem[:16]>.<8 random>.tmp<suffix>" (suffixes longer than 16 are dropped).
_STEM_CHARS = 16
_MAX_SUFFIX = 16


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush ``path``'s data to the disk (``fsync``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush the folder ``path`` (its entries: a rename or a new file in it) to the disk.

    File systems that cannot sync a folder (EINVAL, EBADF) are ignored: nothing more can be done there.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    ``durable``: fsync the file before the rename and the folder after it (module docstring).

    The temporary name is short, whatever the final name's length (``.<first 16 characters of
    the stem>.<random>.tmp<suffix>``, at most ~50 characters), so any name that fits the file
    system also fits while being written; it keeps the suffix so that writers choosing a format
    by extension (PIL, cv2, matplotlib) still work. On error the temporary is removed; an
    OSError naming no file (``write`` on a full disk) is raised again naming ``path``.
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
        if durable:
            fsync_file(tmp_path)
        os.replace(tmp_path, final)
        if durable:
            fsync_dir(final.parent)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.filename is None and exc.errno is not None:  # write() on a full disk names no file: name ours
            raise OSError(exc.errno, exc.strerror or type(exc).__name__, str(final)) from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (``durable``: and fsync it, see ``atomic_path``)."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, durable: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (``durable``: and fsync it)."""
    atomic_write_bytes(path, text.encode("utf-8"), durable)
