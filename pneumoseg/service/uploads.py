"""Uploads are parsed into memory, never written to disk; stale upload folders of older versions are removed.

Starlette's form parser spools file parts over 1 MB to a temporary file; ``read_upload`` runs the
same parser with the spool as large as the upload cap (the body is already capped by
``BodySizeLimit``), so a killed server leaves no patient image behind. Versions before this one
wrote uploads to ``$TMPDIR/pneumoseg-upload-*``; ``remove_stale_uploads`` deletes those at start.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from fastapi import HTTPException, Request
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from pneumoseg.service.limits import MULTIPART_MARGIN, too_large_detail

__all__ = ["STALE_UPLOAD_PREFIX", "read_upload", "remove_stale_uploads"]

STALE_UPLOAD_PREFIX = "pneumoseg-upload-"
"""Prefix of the temporary folders older versions wrote uploads to."""


async def read_upload(request: Request, field: str, limit_bytes: int) -> tuple[str | None, bytes]:
    """(file name as sent, bytes) of the multipart file field ``field``, parsed in memory.

    HTTPException 422 when the body is not multipart or has no such file field, 400 when it is
    malformed, 413 when the file exceeds ``limit_bytes``.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(status_code=422, detail=f"expected a multipart/form-data upload with a file field "
                                                    f"{field!r} (got content type {content_type[:80]!r})")
    parser = MultiPartParser(request.headers, request.stream(), max_files=1, max_fields=16,
                             max_part_size=64 * 1024)
    parser.spool_max_size = limit_bytes + MULTIPART_MARGIN  # larger than any body BodySizeLimit lets in
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(status_code=400, detail=f"malformed multipart upload: {exc.message}") from None
    except ClientDisconnect:
        raise HTTPException(status_code=400, detail="the client disconnected during the upload") from None
    try:
        upload = form.get(field)
        if upload is None or isinstance(upload, str):
            raise HTTPException(status_code=422, detail=f"no file in the multipart field {field!r}")
        data = await upload.read(limit_bytes + 1)
    finally:
        await form.close()
    if len(data) > limit_bytes:
        raise HTTPException(status_code=413, detail=too_large_detail(limit_bytes))
    return upload.filename, data


def remove_stale_uploads(tmp_dir: str | os.PathLike[str] | None = None) -> int:
    """Delete ``pneumoseg-upload-*`` folders (left by killed servers of older versions) in ``tmp_dir``.

    ``tmp_dir`` defaults to ``tempfile.gettempdir()``. Only real folders owned by this user are
    removed (symbolic links and other users' entries are left alone). Returns how many were removed.
    """
    root = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
    removed = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(STALE_UPLOAD_PREFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += not os.path.lexists(entry.path)
    return removed
