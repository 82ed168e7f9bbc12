"""Names that become paths, and output locations that must not clobber inputs.

Inputs are hostile (see docs/security.md): a SOPInstanceUID, a file stem, a CSV ImageId or an
upload's file name may be ``../../x``, absolute, contain ``/`` or a NUL byte. Every such name is
checked here before it is joined to an output folder, and every output folder is checked
against the input folders before any work starts.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from pneumoseg.errors import DataError

__all__ = [
    "MAX_NAME_LEN",
    "check_output_dir",
    "check_output_file",
    "is_valid_uid",
    "one_line",
    "os_error_line",
    "safe_name",
    "short_id",
]

#: Longest output stem accepted: file systems allow 255 bytes per name; leave room for the
#: atomic writer's temporary prefix/suffix and an extension.
MAX_NAME_LEN = 200
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def is_valid_uid(value: str) -> bool:
    """True for a DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters."""
    return len(value) <= 64 and _UID.fullmatch(value) is not None


def safe_name(name: str, source: str | os.PathLike[str] | None = None, what: str = "ImageId") -> str:
    """``name`` if it is safe as one file-name component, else DataError naming ``source``.

    Safe: 1..200 characters from ``[A-Za-z0-9._-]``, not starting with ``.`` or ``-`` (so no
    ``..``, no hidden files, no separators, no NUL, nothing a shell or a file system reads
    specially). DICOM UIDs (digits and dots) always pass.
    """
    where = f"{source}: " if source is not None else ""
    if not name or len(name) > MAX_NAME_LEN or _NAME.fullmatch(name) is None:
        shown = repr(name[:80] + ("..." if len(name) > 80 else ""))
        raise DataError(f"{where}{what} {shown} cannot name an output file (allowed: 1-{MAX_NAME_LEN} "
                        "characters of letters, digits, '.', '_', '-', not starting with '.' or '-')")
    return name


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def one_line(text: str) -> str:
    """``text`` with control characters (newline, NUL, ESC...) escaped as ``\\n``, ``\\x00``: one safe line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def os_error_line(exc: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """One line for a failed write: ``PATH: reason``."""
    where = exc.filename if exc.filename is not None else path
    reason = exc.strerror or str(exc) or exc.__class__.__name__
    return f"{where}: cannot write ({reason})" if where is not None else f"cannot write ({reason})"


def _check_writable_dir(folder: Path, what: str) -> None:
    """Create ``folder`` (and parents) and prove a file can be made in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".pneumoseg-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(f"{what} {folder}: cannot write there ({exc.strerror or exc})") from None


def check_output_dir(out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = (),
                     what: str = "--out", create: bool = True) -> Path:
    """The output folder, refused when it would clobber an input; created and probed for writing.

    Refused (DataError, one line): ``out`` equals an input folder, lies inside one (e.g.
    ``--out data`` for inputs ``data/images`` would overwrite ``data/masks``: the input's parent
    counts when the input is a file or a folder inside ``out``), or contains one. An existing
    non-folder at ``out`` is refused. ``create=False`` only checks the overlap.
    """
    target = _resolved(out)
    for item in inputs:
        src = _resolved(item)
        if _inside(target, src) or _inside(src, target):
            raise DataError(f"{what} {out} overlaps the input {item}: outputs could overwrite the inputs; "
                            "choose an output folder outside the input folders")
    if target.exists() and not target.is_dir():
        raise DataError(f"{what} {out}: exists and is not a folder")
    if create:
        _check_writable_dir(target, what)
    return target


def check_output_file(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = (),
                      what: str = "output file") -> Path:
    """An output file's path, checked before any work: not an input, not a folder, writable parent."""
    target = _resolved(path)
    for item in inputs:
        src = _resolved(item)
        if target == src or (src.is_dir() and _inside(target, src)):
            raise DataError(f"{what} {path} lies in or is the input {item}; choose another path")
    if target.is_dir():
        raise DataError(f"{what} {path}: is a folder")
    _check_writable_dir(target.parent, what)
    return target


ID_SEPARATORS = "._-"  #: where an id may be cut for a caption (short_id)


def short_id(image_id: str, keep: int = 18) -> str:
    """``image_id`` for a caption of about ``keep`` characters: whole when it fits, else ``…`` and its
    end cut at a token boundary (after a '.', '_' or '-': ``…5797.1517875162.895`` of a SOPInstanceUID),
    never mid-token (a last token longer than ``keep`` is kept whole). Show the full id in a tooltip."""
    if len(image_id) <= keep:
        return image_id
    cuts = [k + 1 for k, ch in enumerate(image_id) if ch in ID_SEPARATORS and k + 1 < len(image_id)]
    fitting = [k for k in cuts if len(image_id) - k <= keep - 1]
    start = fitting[0] if fitting else (cuts[-1] if cuts else 0)
    return image_id if start == 0 else "…" + image_id[start:]
