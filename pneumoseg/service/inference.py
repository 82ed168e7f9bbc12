"""The service's model: upload bytes -> prediction -> JSON answer, and the store of recent results.

Only the forward pass runs under the model lock (one at a time: the model is shared and torch
already uses every core). Decoding, the resize to the model's size, upsampling and
post-processing at the input's resolution (``Predictor.finish``), RLE and PNG encoding all run
outside it, so one huge image never stalls the others' forward passes. ``predict_upload_async``
lets at most ``settings.max_concurrent`` uploads into that work at once (a 64,000,000-pixel image peaks
near 2 GB); the others wait in the event loop, holding no worker thread.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import cv2
import numpy as np
from starlette.concurrency import run_in_threadpool

from pneumoseg.io.images import encode_png, resize_image
from pneumoseg.scoring.metrics import dice_from_counts
from pneumoseg.inference.outputs import reported_score
from pneumoseg.inference.inputs import InputImage
from pneumoseg.inference.predictor import Prediction, Predictor
from pneumoseg.io.rle import rle_encode
from pneumoseg.service.decode import (
    ImageTooLargeError,
    UnsupportedMediaError,
    decode_upload,
    pillow_pixel_limit,
    sniff,
)
from pneumoseg.service.intensity import Intensities, dicom_header_bytes, dicom_intensities, display_intensities
from pneumoseg.service.settings import ServiceSettings
from pneumoseg.service.store import ResultStore, StoredResult
from pneumoseg.training.provenance import NOT_FOR_CLINICAL_USE, training_kind

__all__ = [
    "RESULT_ID_PATTERN",
    "ImageTooLargeError",
    "ResultStore",
    "ServiceModel",
    "StoredResult",
    "TruthLookup",
    "UnsupportedMediaError",
    "decode_png_gray",
    "encode_gray_png",
    "read_header",
    "sniff",
]

RESULT_ID_PATTERN = r"^[0-9a-f]{32}$"
"""Result ids: 128 random bits as 32 lowercase hex digits (never derived from the upload)."""
TruthLookup = Callable[[InputImage], "tuple[np.ndarray, str] | None"]
"""Ground truth of a decoded image: (bool (H, W) mask, where it came from), or None when unknown."""


def encode_gray_png(arr: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) array or a bool mask (True -> 255), fast zlib level."""
    return encode_png(arr)


def _prob_to_uint8(prob: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)


def _model_input(predictor: Predictor, pixels: np.ndarray) -> np.ndarray:
    """The image as the forward pass needs it: resized to the model's size when every model shares it.

    An ensemble of runs at different sizes gets the full image (each model resizes it from the
    source, as ``pneumoseg predict`` does), so results never depend on a double resize.
    """
    sizes = set()
    for entry in predictor.models:  # (net, config[, preprocessing]): the input size is in the last one
        last: Any = entry[-1]
        sizes.add(int(last.size) if hasattr(last, "size") else int(last.data.size))
    return resize_image(pixels, predictor.size) if sizes == {predictor.size} else pixels


class ServiceModel:
    """A loaded Predictor (ensemble of runs), the lock around its forward pass, and the result store."""

    def __init__(self, predictor: Predictor, runs: Sequence[str | Path],
                 settings: ServiceSettings | None = None) -> None:
        self.predictor = predictor
        self.runs = [str(r) for r in runs]
        self.settings = settings or ServiceSettings()
        self.store = ResultStore(self.settings.result_store_bytes, self.settings.cache_size)
        self._forward_lock = threading.Lock()
        self._slots = anyio.Semaphore(self.settings.max_concurrent)

    @property
    def model_name(self) -> str:
        return self.predictor.model_name

    def describe(self, detailed: bool = True) -> dict[str, Any]:
        """What /health reports: the model, the kind of its training data (``synthetic``, ``not
        synthetic`` or ``unknown``) and the notice "... not for clinical use"; with ``detailed``, also
        run folders, each run's training data record, post-processing, store use."""
        p = self.predictor
        out: dict[str, Any] = {"model": p.model_name, "size": p.size, "device": str(p.device), "tta": p.tta,
                               "backend": p.backend, "training_data": training_kind(p.provenance), "notice": p.notice,
                               "clinical_use": NOT_FOR_CLINICAL_USE}
        if detailed:
            out |= {"runs": self.runs, "training_data_detail": p.training_data,
                    "provenance": [r.to_dict() for r in p.provenance],
                    "postprocess": p.postprocess.to_dict(), "results_cached": len(self.store),
                    "cache_size": self.settings.cache_size, "result_store_bytes": self.store.nbytes,
                    "result_store_mb": self.settings.result_store_mb, "max_pixels": self.settings.max_pixels,
                    "max_upload_mb": self.settings.max_upload_mb}
        return out

    def _forward(self, small: np.ndarray) -> np.ndarray:
        with self._forward_lock:
            return self.predictor.probs_at_model_size([small])[0]

    async def predict_upload_async(self, data: bytes, filename: str | None) -> dict[str, Any]:
        """``predict_upload`` on a worker thread once one of ``settings.max_concurrent`` slots is free."""
        async with self._slots:
            return await run_in_threadpool(self.predict_upload, data, filename)

    async def predict_bytes_async(self, data: bytes, filename: str | None,
                                  truth_for: TruthLookup | None = None) -> dict[str, Any]:
        """``predict_bytes`` on a worker thread once a slot is free (browse mode)."""
        async with self._slots:
            return await run_in_threadpool(self.predict_bytes, data, filename, truth_for)

    def predict_upload(self, data: bytes, filename: str | None) -> dict[str, Any]:
        """Decode, predict, store; return the JSON answer (see the /predict route). Blocking.

        Raises UnsupportedMediaError (not DICOM/PNG/JPEG), ImageTooLargeError (over
        ``settings.max_pixels``), DicomError or DataError (unreadable).
        """
        return self.predict_bytes(data, filename)

    def predict_bytes(self, data: bytes, filename: str | None,
                      truth_for: TruthLookup | None = None) -> dict[str, Any]:
        """``predict_upload`` with an optional ground truth: ``truth_for(image)`` -> (bool (H, W), source) or None."""
        start = time.perf_counter()
        image, kind = decode_upload(data, filename, self.settings.max_pixels)
        prob = self._forward(_model_input(self.predictor, image.pixels))
        pred = self.predictor.finish(image, prob)
        del prob
        is_dicom = kind.startswith("dicom")
        if is_dicom:
            raw = data if kind == "dicom" else b"\0" * 128 + b"DICM" + data
            with pillow_pixel_limit(self.settings.max_pixels):
                intensities = dicom_intensities(raw, image.pixels)
            header = dicom_header_bytes(raw)
            del raw
        else:
            intensities, header = display_intensities(image.pixels), b""
        truth = truth_for(image) if truth_for is not None else None
        summary = self._summary(image, kind, pred, intensities, header, truth)
        stored = StoredResult(encode_gray_png(image.pixels), encode_gray_png(_prob_to_uint8(pred.prob)),
                              encode_gray_png(pred.mask), summary, values_z=intensities.compressed(),
                              header_dcm=header, truth_png=encode_gray_png(truth[0]) if truth is not None else b"")
        del pred, image, intensities
        if self.store.put(summary["id"], stored):
            summary["stored"] = True
        else:
            summary["stored"] = False
            summary["urls"] = None
            summary["note"] = (f"result of {stored.nbytes / 1e6:.1f} MB not kept for the image routes: larger "
                               f"than the whole result store ({self.settings.result_store_mb:g} MB, "
                               "--result-store-mb)")
        summary["elapsed_ms"] = round(1000 * (time.perf_counter() - start), 1)
        return summary

    def _summary(self, image: InputImage, kind: str, pred: Prediction, intensities: Intensities, header: bytes,
                 truth: tuple[np.ndarray, str] | None) -> dict[str, Any]:
        h, w = pred.mask.shape
        key = secrets.token_hex(16)
        post = self.predictor.postprocess
        spacing, mm2 = _spacing_and_area(header, pred.mask)
        urls = {name: f"/predict/{key}/{name}.png" for name in ("image", "overlay", "prob", "mask")}
        urls |= {"values": f"/predict/{key}/values.bin", "rle": f"/predict/{key}/rle.txt"}
        if header:
            urls |= {"seg": f"/predict/{key}/seg.dcm", "sr": f"/predict/{key}/sr.dcm"}
        truth_info = None
        if truth is not None:
            urls["truth"] = f"/predict/{key}/truth.png"
            truth_info = _truth_summary(truth[0], pred.mask, truth[1], spacing)
        return {
            "id": key,
            "image_id": pred.image_id,
            "filename": image.path.name,
            "format": "dicom" if kind.startswith("dicom") else kind,
            "has_pneumothorax": pred.area_px > 0,
            "probability": round(pred.probability, 6),
            "score": reported_score(pred.prob),
            "area_px": pred.area_px,
            "area_percent": round(100.0 * pred.area_px / (h * w), 4),
            "area_mm2": None if mm2 is None else round(mm2, 2),
            "pixel_spacing_mm": None if spacing is None else [spacing[0][0], spacing[0][1]],
            "pixel_spacing_source": None if spacing is None else spacing[1],
            "rle": rle_encode(pred.mask),
            "threshold": post.mask_threshold,
            "postprocess": post.to_dict(),
            "rule": post.describe(),
            "rule_source": self.predictor.postprocess_source,
            "width": w,
            "height": h,
            "model": self.predictor.model_name,
            "notice": self.predictor.notice,
            "meta": image.meta.as_dict() if image.meta is not None else None,
            "intensity": intensities.describe(),
            "truth": truth_info,
            "dicom_outputs": {"seg_series_uid": _new_uid(), "seg_sop_uid": _new_uid(), "sr_series_uid": _new_uid(),
                              "sr_sop_uid": _new_uid()} if header else None,
            "urls": urls,
        }


def _new_uid() -> str:
    """A new DICOM UID (pydicom's generator, 2.25 root)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=None))


def _spacing_and_area(header: bytes, mask: np.ndarray) -> tuple[tuple[tuple[float, float], str] | None,
                                                                float | None]:
    """(pixel spacing in mm and its source attribute, mask area in mm²) from a stored DICOM header."""
    if not header:
        return None, None
    from pneumoseg.io.dicom.read import area_mm2, pixel_spacing_mm

    ds = read_header(header)
    spacing = pixel_spacing_mm(ds)
    return spacing, (area_mm2(mask, ds) if spacing is not None else None)


def _truth_summary(truth: np.ndarray, mask: np.ndarray, source: str,
                   spacing: tuple[tuple[float, float], str] | None) -> dict[str, Any]:
    """Ground-truth area and the Dice of the post-processed mask against it (empty/empty = 1)."""
    inter = int(np.count_nonzero(truth & mask))
    area_true, area_pred = int(np.count_nonzero(truth)), int(np.count_nonzero(mask))
    dice = float(dice_from_counts(np.array([inter]), np.array([area_pred]), np.array([area_true]))[0])
    mm2 = None if spacing is None else round(area_true * spacing[0][0] * spacing[0][1], 2)
    return {"source": source, "area_px": area_true, "area_mm2": mm2, "has_pneumothorax": area_true > 0,
            "dice": round(dice, 6)}


def read_header(header: bytes) -> Any:
    """The pydicom Dataset of a header stored by ``dicom_header_bytes`` (``pneumoseg.io.dicom.read.read_header``)."""
    from pneumoseg.io.dicom.read import read_header as read_dicom_header

    return read_dicom_header(header, pixels=True, force=True, name="<stored header>")


def decode_png_gray(data: bytes) -> np.ndarray:
    """uint8 (H, W) of a PNG this module wrote."""
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 2:  # pragma: no cover - only our own PNGs are decoded
        raise ValueError("stored PNG cannot be decoded")
    return arr
