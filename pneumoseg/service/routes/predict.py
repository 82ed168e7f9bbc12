"""``POST /predict`` (multipart field ``file``: DICOM, PNG or JPEG) and the result's PNGs.

``GET /predict/{id}/image.png``    the radiograph (uint8 grayscale, input resolution)
``GET /predict/{id}/overlay.png``  the radiograph with the predicted mask tinted red and outlined
``GET /predict/{id}/prob.png``     probability x 255 (8-bit grayscale) for client-side thresholds
``GET /predict/{id}/mask.png``     the post-processed mask (0/255)

Results live in a bounded LRU (``settings.cache_size``); an evicted or unknown id gives 404.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from pneumoseg.overlay import encode_rgb_png, overlay
from pneumoseg.service.deps import ModelDep, SettingsDep
from pneumoseg.service.inference import StoredResult, encode_gray_png
from pneumoseg.service.limits import too_large_detail

__all__ = ["router"]

router = APIRouter(prefix="/predict", tags=["predict"])

ImageName = Literal["image", "overlay", "prob", "mask"]
ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"description": "Upload larger than settings.max_upload_mb"},
    415: {"description": "Not a DICOM, PNG or JPEG file"},
    422: {"description": "A DICOM or image file that cannot be read (the message names the problem)"},
}


@router.post("", responses=ERRORS)
async def predict(model: ModelDep, settings: SettingsDep,
                  file: Annotated[UploadFile, File(description="DICOM (.dcm), PNG or JPEG")]) -> dict[str, Any]:
    """Predict one radiograph; the answer holds the numbers, RLE, thresholds, metadata and result URLs."""
    limit = settings.max_upload_bytes
    data = await file.read(limit + 1)
    await file.close()
    if len(data) > limit:
        raise HTTPException(status_code=413, detail=too_large_detail(limit))
    if not data:
        raise HTTPException(status_code=422, detail=f"{file.filename or 'upload'}: empty file")
    return await run_in_threadpool(model.predict_upload, data, file.filename or "upload")


def _result(model: ModelDep, result_id: str) -> StoredResult:
    stored = model.store.get(result_id)
    if stored is None:
        raise HTTPException(status_code=404, detail=f"result {result_id!r} not found (only the last "
                                                    f"{model.store.capacity} results are kept)")
    return stored


def _png(content: bytes) -> Response:
    return Response(content, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/{result_id}", responses={404: {"description": "Unknown or evicted id"}})
def result(model: ModelDep, result_id: str) -> dict[str, Any]:
    """The JSON answer of an earlier ``POST /predict``."""
    return _result(model, result_id).summary


@router.get("/{result_id}/{name}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {"description": "Unknown or evicted id"}})
def result_png(model: ModelDep, result_id: str, name: ImageName) -> Response:
    """One of the result's images as PNG, at the input's resolution."""
    stored = _result(model, result_id)
    if name == "overlay":
        return _png(encode_rgb_png(overlay(stored.image, stored.mask)))
    arr = {"image": stored.image, "prob": stored.prob, "mask": stored.mask.view("uint8") * 255}[name]
    return _png(encode_gray_png(arr))
