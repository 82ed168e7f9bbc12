"""``POST /predict`` (multipart field ``file``: DICOM, PNG or JPEG) and the result's PNGs.

``GET /predict/{id}``              the JSON answer again
``GET /predict/{id}/image.png``    the radiograph (uint8 grayscale, input resolution)
``GET /predict/{id}/overlay.png``  the radiograph with the predicted mask tinted red and outlined
``GET /predict/{id}/prob.png``     probability x 255 (8-bit grayscale) for client-side thresholds
``GET /predict/{id}/mask.png``     the post-processed mask (0/255)
``GET /predict/{id}/truth.png``    the ground-truth mask (0/255), when known (browse mode; else 404)
``GET /predict/{id}/values.bin``   the intensities the viewer windows on: zlib stream of uint16 codes,
                                   row-major; ``value = offset + scale * code`` (``intensity`` in the JSON)
``GET /predict/{id}/rle.txt``      ``ImageId,EncodedPixels`` with the mask's challenge RLE
``GET /predict/{id}/seg.dcm``      DICOM SEG of the mask (DICOM inputs only; else 404)
``GET /predict/{id}/sr.dcm``       DICOM SR (TID 1500) of the verdict, referencing that SEG (DICOM only)

Every route here needs the bearer token when one is configured (checked before the body is read).
Uploads are parsed in memory. Results live in an LRU bounded by bytes (``settings.result_store_mb``)
and count (``settings.cache_size``); ids are random (32 hex digits); an evicted or unknown id gives 404.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import Response

from pneumoseg.io.overlay import encode_rgb_png, overlay
from pneumoseg.service.deps import ModelDep, SettingsDep
from pneumoseg.service.exports import rle_text, seg_bytes, sr_bytes
from pneumoseg.service.inference import RESULT_ID_PATTERN, StoredResult, decode_png_gray
from pneumoseg.service.security import require_token
from pneumoseg.service.uploads import read_upload

__all__ = ["router"]

router = APIRouter(prefix="/predict", tags=["predict"], dependencies=[Depends(require_token)],
                   responses={401: {"description": "Token required (pneumoseg serve --token) and missing or wrong"}})

ImageName = Literal["image", "overlay", "prob", "mask", "truth"]
DicomName = Literal["seg", "sr"]
ResultId = Annotated[str, Path(pattern=RESULT_ID_PATTERN, description="Result id (32 hex digits)")]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed multipart body"},
    413: {"description": "Upload larger than settings.max_upload_mb, or image over settings.max_pixels"},
    415: {"description": "Not a DICOM, PNG or JPEG file"},
    422: {"description": "No file field, or a DICOM or image file that cannot be read (the message says why)"},
}
UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "DICOM (.dcm), PNG or JPEG"}}}}}}}


@router.post("", responses=ERRORS, openapi_extra=UPLOAD_BODY)
async def predict(request: Request, model: ModelDep, settings: SettingsDep) -> dict[str, Any]:
    """Predict one radiograph; the answer holds the numbers, RLE, thresholds, metadata and result URLs.

    ``stored`` says whether the result was kept for the image routes (``urls`` is null when not).
    """
    filename, data = await read_upload(request, "file", settings.max_upload_bytes)
    if not data:
        raise HTTPException(status_code=422, detail="the uploaded file is empty")
    return await model.predict_upload_async(data, filename)


def _result(model: ModelDep, result_id: str) -> StoredResult:
    stored = model.store.get(result_id)
    if stored is None:
        raise HTTPException(status_code=404, detail=f"result {result_id} not found (unknown, or evicted from the "
                                                    f"result store of {model.settings.result_store_mb:g} MB / "
                                                    f"{model.settings.cache_size} results)")
    return stored


def _png(content: bytes) -> Response:
    return Response(content, media_type="image/png")


@router.get("/{result_id}", responses={404: {"description": "Unknown or evicted id"}})
def result(model: ModelDep, result_id: ResultId) -> dict[str, Any]:
    """The JSON answer of an earlier ``POST /predict``."""
    return _result(model, result_id).summary


@router.get("/{result_id}/{name}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {"description": "Unknown or evicted id"}})
def result_png(model: ModelDep, result_id: ResultId, name: ImageName) -> Response:
    """One of the result's images as PNG, at the input's resolution (the overlay is drawn on request)."""
    stored = _result(model, result_id)
    if name == "overlay":
        image = decode_png_gray(stored.image_png)
        mask = decode_png_gray(stored.mask_png) > 127
        return _png(encode_rgb_png(overlay(image, mask)))
    if name == "truth" and not stored.truth_png:
        raise HTTPException(status_code=404, detail=f"result {result_id} has no ground truth (only images opened "
                                                    "with serve --browse and a --truth file or DIR/masks have one)")
    return _png({"image": stored.image_png, "prob": stored.prob_png, "mask": stored.mask_png,
                 "truth": stored.truth_png}[name])


def _download(content: bytes, media_type: str, filename: str) -> Response:
    return Response(content, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _stem(stored: StoredResult) -> str:
    """A safe download name stem: the ImageId (a DICOM UID or a sanitised file stem)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in str(stored.summary["image_id"]))[:120]


@router.get("/{result_id}/values.bin", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}, 404: {"description": "Unknown id"}})
def result_values(model: ModelDep, result_id: ResultId) -> Response:
    """The intensities the viewer windows on: zlib-compressed little-endian uint16, row-major (H x W).

    ``value = intensity.offset + intensity.scale * code`` (see ``intensity`` in the JSON answer).
    """
    return Response(_result(model, result_id).values_z, media_type="application/octet-stream")


@router.get("/{result_id}/rle.txt", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}, 404: {"description": "Unknown id"}})
def result_rle(model: ModelDep, result_id: ResultId) -> Response:
    """``ImageId,EncodedPixels`` and the mask's row (challenge RLE: relative starts, column-major, -1 empty)."""
    stored = _result(model, result_id)
    return _download(rle_text(stored).encode(), "text/plain; charset=utf-8", f"{_stem(stored)}.rle.txt")


@router.get("/{result_id}/{name}.dcm", response_class=Response,
            responses={200: {"content": {"application/dicom": {}}},
                       404: {"description": "Unknown id, or the input was not DICOM"}})
def result_dicom(model: ModelDep, result_id: ResultId, name: DicomName) -> Response:
    """DICOM SEG of the mask or SR of the verdict (built on request; DICOM inputs only)."""
    stored = _result(model, result_id)
    if not stored.header_dcm:
        raise HTTPException(status_code=404, detail=f"result {result_id} came from a {stored.summary['format']} "
                                                    "image: DICOM SEG and SR need a DICOM input")
    build = seg_bytes if name == "seg" else sr_bytes
    return _download(build(stored, model.predictor), "application/dicom", f"{_stem(stored)}.{name}.dcm")
