"""Downloads of a stored result: the mask's RLE text, and DICOM SEG / SR for DICOM inputs.

SEG and SR are built on request (``pneumoseg.inference.outputs.build_dicom_outputs``, as ``pneumoseg
predict`` and the PACS node build them) from the stored source header (``StoredResult.header_dcm``),
mask and image-level score (``summary["score"]``, the score of ``predictions.csv``), with the UIDs
fixed in the result's ``summary["dicom_outputs"]``: downloading ``seg.dcm`` twice gives the same SOP
instance, and ``sr.dcm`` references exactly that SEG.
"""

from __future__ import annotations

import io
from typing import Any

from pneumoseg.inference.outputs import DicomOutputs, Placement, build_dicom_outputs
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


def _outputs(stored: StoredResult, predictor: Predictor, sr: bool) -> DicomOutputs:
    """The stored result's SEG (also of an empty mask) and, with ``sr``, its SR, at the result's fixed UIDs."""
    summary = stored.summary
    uids = summary["dicom_outputs"]
    placements = {kind: Placement(series_instance_uid=uids[f"{kind}_series_uid"],
                                  sop_instance_uid=uids[f"{kind}_sop_uid"]) for kind in ("seg", "sr")}
    return build_dicom_outputs(read_header(stored.header_dcm), decode_png_gray(stored.mask_png) > 127,
                               predictor.output_meta(), score=float(summary["score"]), sr=sr, placements=placements)


def seg_bytes(stored: StoredResult, predictor: Predictor) -> bytes:
    """A DICOM SEG (Part 10 bytes) of the stored mask; requires ``stored.header_dcm`` (DICOM input)."""
    return _dataset_bytes(_outputs(stored, predictor, sr=False).seg)


def sr_bytes(stored: StoredResult, predictor: Predictor) -> bytes:
    """A DICOM SR (TID 1500, Part 10 bytes) of the stored verdict, referencing the SEG of ``seg_bytes``."""
    return _dataset_bytes(_outputs(stored, predictor, sr=True).sr)
