"""The service's model: uploads -> predictions, and a bounded store of recent results.

Uploads are sniffed by content, never by name: ``DICM`` at offset 128 (DICOM), the PNG or JPEG
signature, or a preamble-less DICOM that pydicom parses (one with a File Meta group or image
IOD tags). They are decoded by the same readers as ``pneumoseg predict`` (``read_dicom``,
``read_image``), so the service and the CLI see identical pixels. The forward pass runs under a
lock (one at a time: the model is shared and torch already uses every core); decoding and
encoding run outside it, so concurrent requests overlap everything but the network.
"""

from __future__ import annotations

import io
import re
import tempfile
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from pneumoseg.errors import DataError, PneumosegError
from pneumoseg.predict import InputImage, Predictor, load_input
from pneumoseg.rle import rle_encode

__all__ = [
    "PNG_SIGNATURE",
    "ResultStore",
    "ServiceModel",
    "StoredResult",
    "UnsupportedMediaError",
    "encode_gray_png",
    "sniff",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
Kind = Literal["dicom", "dicom-no-preamble", "png", "jpeg"]
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class UnsupportedMediaError(PneumosegError):
    """An upload that is neither DICOM nor PNG/JPEG (HTTP 415)."""


def _looks_like_bare_dicom(data: bytes) -> bool:
    """A DICOM stream without the 128-byte preamble and ``DICM``, as pydicom reads it with force."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    except Exception:
        return False
    file_meta = getattr(ds, "file_meta", None)
    has_meta = file_meta is not None and "TransferSyntaxUID" in file_meta
    return has_meta or any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "Modality"))


def sniff(data: bytes) -> Kind:
    """The upload's kind from its first bytes; UnsupportedMediaError when none fits."""
    if data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if len(data) > 8 and _looks_like_bare_dicom(data):
        return "dicom-no-preamble"
    head = data[:16]
    raise UnsupportedMediaError(
        f"unsupported file type (first bytes {head!r}): upload a DICOM file (.dcm) or a PNG/JPEG image")


@dataclass(frozen=True)
class StoredResult:
    """One prediction kept for the PNG routes: ``image`` uint8 (H, W), ``prob`` uint8 (H, W)
    (probability x 255, rounded), ``mask`` bool (H, W), and the JSON answer sent."""

    image: np.ndarray
    prob: np.ndarray
    mask: np.ndarray
    summary: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + self.prob.nbytes + self.mask.nbytes


class ResultStore:
    """Thread-safe LRU of StoredResult by id, holding at most ``capacity`` entries."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"ResultStore capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value: StoredResult) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, key: str) -> StoredResult | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _decode_upload(data: bytes, filename: str) -> tuple[InputImage, Kind]:
    """Bytes -> InputImage through ``load_input`` (a temporary file named after the upload).

    Errors name the uploaded file, not the temporary path.
    """
    kind = sniff(data)
    stem = _SAFE_NAME.sub("_", Path(filename or "upload").stem).strip("._") or "upload"
    suffix = {"png": ".png", "jpeg": ".jpg"}.get(kind, ".dcm")
    if kind == "dicom-no-preamble":
        data = b"\0" * 128 + b"DICM" + data
    with tempfile.TemporaryDirectory(prefix="pneumoseg-upload-") as tmp:
        path = Path(tmp) / f"{stem}{suffix}"
        path.write_bytes(data)
        try:
            image = load_input(path)
        except PneumosegError as exc:
            message = str(exc).replace(str(path), filename or "upload")
            raise type(exc)(message) from None
    return InputImage(image.image_id, image.pixels, Path(filename or path.name), image.meta), kind


def _prob_to_uint8(prob: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)


class ServiceModel:
    """A loaded Predictor (ensemble of runs), a lock around its forward pass, and the result store."""

    def __init__(self, predictor: Predictor, runs: Sequence[str | Path], cache_size: int = 64) -> None:
        self.predictor = predictor
        self.runs = [str(r) for r in runs]
        self.store = ResultStore(cache_size)
        self._forward_lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.predictor.model_name

    def describe(self) -> dict[str, Any]:
        """What /health reports about the model."""
        p = self.predictor
        return {"model": p.model_name, "runs": self.runs, "size": p.size, "device": str(p.device), "tta": p.tta,
                "postprocess": p.postprocess.to_dict(), "results_cached": len(self.store),
                "cache_size": self.store.capacity}

    def predict_upload(self, data: bytes, filename: str) -> dict[str, Any]:
        """Decode, predict, store; return the JSON answer (see the /predict route).

        Raises UnsupportedMediaError (not DICOM/PNG/JPEG), DicomError or DataError (unreadable).
        """
        start = time.perf_counter()
        image, kind = _decode_upload(data, filename)
        with self._forward_lock:
            pred = self.predictor.predict_batch([image])[0]
        h, w = pred.mask.shape
        if (h, w) != image.pixels.shape:  # pragma: no cover - predict_batch guarantees it
            raise DataError(f"{filename}: prediction has shape {pred.mask.shape}, image {image.pixels.shape}")
        key = uuid.uuid4().hex
        post = self.predictor.postprocess
        summary: dict[str, Any] = {
            "id": key,
            "image_id": pred.image_id,
            "filename": filename,
            "format": "dicom" if kind.startswith("dicom") else kind,
            "has_pneumothorax": pred.area_px > 0,
            "probability": round(pred.probability, 6),
            "area_px": pred.area_px,
            "area_percent": round(100.0 * pred.area_px / (h * w), 4),
            "rle": rle_encode(pred.mask),
            "threshold": post.mask_threshold,
            "postprocess": post.to_dict(),
            "width": w,
            "height": h,
            "model": self.predictor.model_name,
            "meta": image.meta.as_dict() if image.meta is not None else None,
            "urls": {name: f"/predict/{key}/{name}.png" for name in ("image", "overlay", "prob", "mask")},
        }
        self.store.put(key, StoredResult(image.pixels, _prob_to_uint8(pred.prob), pred.mask, summary))
        summary["elapsed_ms"] = round(1000 * (time.perf_counter() - start), 1)
        return summary


def encode_gray_png(arr: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) array (fast zlib level)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - only on invalid arrays
        raise ValueError(f"PNG encoding failed for an array of shape {arr.shape}")
    return buf.tobytes()

