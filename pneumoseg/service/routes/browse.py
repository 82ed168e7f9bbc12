"""``serve RUN --browse DIR``: list the folder's images, predict one on demand (cached in the result store).

``GET /browse?offset=0&limit=100``   the listed files (relative paths, sorted), paginated
``GET /browse/item?name=REL``        the JSON answer of ``POST /predict`` for that file (or ``?index=N``),
                                     plus ``browse``: its index, the total and its neighbours' names

404 when the server was not started with ``--browse`` or the name is not a listed file. Like
``/predict``, every route needs the bearer token when one is configured.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from pneumoseg.service.browse import BrowseFolder
from pneumoseg.service.deps import ModelDep, SettingsDep
from pneumoseg.service.inference import ImageTooLargeError
from pneumoseg.service.security import require_token

__all__ = ["MAX_PAGE", "router"]

MAX_PAGE = 500
"""Most names one ``GET /browse`` returns."""

router = APIRouter(prefix="/browse", tags=["browse"], dependencies=[Depends(require_token)],
                   responses={401: {"description": "Token required and missing or wrong"},
                              404: {"description": "Not started with --browse, or not a listed file"}})


def get_folder(request: Request) -> BrowseFolder:
    folder = getattr(request.app.state, "browse", None)
    if folder is None:
        raise HTTPException(status_code=404, detail="this server was not started with --browse DIR")
    return folder


FolderDep = Annotated[BrowseFolder, Depends(get_folder)]


@router.get("")
def listing(folder: FolderDep, offset: Annotated[int, Query(ge=0)] = 0,
            limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> dict[str, Any]:
    """One page of the listed files (relative POSIX paths, sorted)."""
    names = folder.names[offset:offset + limit]
    return {"root": folder.root.name, "total": len(folder), "truncated": folder.truncated,
            "max_files": folder.max_files, "offset": offset, "limit": limit,
            "truth": {"csv": folder.truth_csv.name if folder.truth_csv else None,
                      "png_masks": folder.has_png_masks},
            "items": [{"index": offset + i, "name": n, "has_truth": folder.has_truth_file(n)}
                      for i, n in enumerate(names)]}


def _with_position(summary: dict[str, Any], folder: BrowseFolder, name: str) -> dict[str, Any]:
    i = folder.index(name)
    out = copy.copy(summary)
    out["browse"] = {"name": name, "index": i, "total": len(folder),
                     "prev": folder.names[i - 1] if i > 0 else None,
                     "next": folder.names[i + 1] if i + 1 < len(folder) else None}
    return out


@router.get("/item")
async def item(folder: FolderDep, model: ModelDep, settings: SettingsDep,
               name: Annotated[str | None, Query(max_length=4096)] = None,
               index: Annotated[int | None, Query(ge=0)] = None) -> dict[str, Any]:
    """The prediction for one listed file (computed on first request, then served from the result store)."""
    if (name is None) == (index is None):
        raise HTTPException(status_code=422, detail="give exactly one of ?name=<relative path> or ?index=<n>")
    if index is not None:
        if index >= len(folder):
            raise HTTPException(status_code=404, detail=f"index {index} is past the last file ({len(folder)} listed)")
        name = folder.names[index]
    assert name is not None
    path = folder.path(name)
    cached = folder.result_id(name)
    stored = model.store.get(cached) if cached else None
    if stored is not None:
        return _with_position(stored.summary, folder, name)
    size = path.stat().st_size
    if size > settings.max_upload_bytes:
        raise ImageTooLargeError(f"{name}: file of {size:,} bytes is over the limit of "
                                 f"{settings.max_upload_bytes:,} bytes (--max-upload-mb)")
    data = path.read_bytes()
    summary = await model.predict_bytes_async(data, path.name, lambda image: folder.truth(name, image))
    if summary.get("stored"):
        folder.remember(name, summary["id"])
    return _with_position(summary, folder, name)
