"""Downloads of a stored result: the mask's RLE text, and DICOM SEG / SR for DICOM inputs.

SEG and SR are built on request from the stored source header (``StoredResult.header_dcm``) and
mask, with the UIDs fixed in the result's ``summary["dicom_outputs"]``: downloading ``seg.dcm``
twice gives the same SOP instance, and ``sr.dcm`` references exactly that SEG.
"""

from __future__ import annotations

import io
from typing import Any

from pneumoseg.inference.predictor import Predictor
from pneumoseg.service.inference import StoredResult, decode_png_gray, read_header

__all__ = ["rle_text", "seg_bytes", "sr_bytes"]


def rle_text(stored: StoredResult) -> str:
    """``ImageId,EncodedPixels`` header and one row (challenge RLE, relative, column-major; ``-1`` empty)."""
    summary = stored.summary
    return f"ImageId,EncodedPixels\n{summary['image_id']},{summary['rle']}\n"


def _dataset_bytes(ds: Any) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _segmentation(stored: StoredResult, predictor: Predictor) -> Any:
    from pneumoseg.io.dicom.seg import make_segmentation

    uids = stored.summary["dicom_outputs"]
    mask = decode_png_gray(stored.mask_png) > 127
    return make_segmentation(read_header(stored.header_dcm), mask, model_name=predictor.model_name,
                             algorithm_parameters=predictor.seg_parameters(),
                             series_description=predictor.series_description("SEG"),
                             series_instance_uid=uids["seg_series_uid"],
                             sop_instance_uid=uids["seg_sop_uid"])


def seg_bytes(stored: StoredResult, predictor: Predictor) -> bytes:
    """A DICOM SEG (Part 10 bytes) of the stored mask; requires ``stored.header_dcm`` (DICOM input)."""
    return _dataset_bytes(_segmentation(stored, predictor))


def sr_bytes(stored: StoredResult, predictor: Predictor) -> bytes:
    """A DICOM SR (TID 1500, Part 10 bytes) of the stored verdict, referencing the SEG of ``seg_bytes``."""
    from pneumoseg.io.dicom.seg import area_mm2
    from pneumoseg.io.dicom.sr import make_sr

    source = read_header(stored.header_dcm)
    summary = stored.summary
    uids = summary["dicom_outputs"]
    mask = decode_png_gray(stored.mask_png) > 127
    seg = _segmentation(stored, predictor)
    report = make_sr(source, seg, has_pneumothorax=bool(summary["has_pneumothorax"]),
                     score=float(summary["probability"]), area_px=int(summary["area_px"]),
                     area_mm2=area_mm2(mask, source), model_name=predictor.model_name,
                     series_description=predictor.series_description("SR"),
                     series_instance_uid=uids["sr_series_uid"], sop_instance_uid=uids["sr_sop_uid"])
    return _dataset_bytes(report)
