"""What a PACS node predicts, and the DICOM instances it returns for one prediction.

Accepted inputs: Computed Radiography and Digital X-Ray images (for presentation or processing),
and Secondary Capture images whose Modality is CR, DX or DR (the challenge's files are such
Secondary Captures). pneumoseg's own outputs (Manufacturer ``pneumoseg``) are never predicted,
so a destination that routes everything back cannot start a loop.

Outputs per source image (``make_outputs``), in the order they are sent: ``seg`` (DICOM SEG of
the mask; also for an empty mask unless ``seg_empty=False``), ``sr`` (TID 1500 report) and ``sc``
(RGB overlay) when asked. Each kind goes to one series per source series and predictor
(``output_series_uid``: a UID derived from the source SeriesInstanceUID, the kind and the
predictor's fingerprint), so every image of a source series lands in the same result series, a
restarted node included; SOP instance UIDs are new for each prediction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import pneumoseg
from pneumoseg.io.dicom.read import DEFAULT_MAX_PIXELS, RADIOGRAPH_MODALITIES
from pneumoseg.util.paths import is_valid_uid
from pneumoseg.inference.outputs import KINDS, Placement, build_dicom_outputs
from pneumoseg.inference.inputs import InputImage
from pneumoseg.inference.predictor import Prediction, Predictor

__all__ = [
    "INPUT_SOP_CLASSES",
    "MANUFACTURER",
    "OUTPUT_KINDS",
    "OUTPUT_SOP_CLASSES",
    "OutputOptions",
    "make_outputs",
    "output_series_uid",
    "predictor_fingerprint",
    "refusal",
]

#: SOP classes a node accepts: CR, DX for presentation, DX for processing, Secondary Capture.
INPUT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: SOP classes of the outputs: SEG, Comprehensive 3D SR (highdicom's TID 1500), Secondary Capture.
OUTPUT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", _SECONDARY_CAPTURE)
OUTPUT_KINDS = KINDS
#: Manufacturer of every instance pneumoseg writes (SEG, SR and SC alike).
MANUFACTURER = "pneumoseg"


@dataclass(frozen=True)
class OutputOptions:
    """Which instances to return per image: the SEG always (empty too unless ``seg_empty`` is off)."""

    sr: bool = False
    sc: bool = False
    seg_empty: bool = True

    def describe(self) -> str:
        kinds = ["SEG" + ("" if self.seg_empty else " (non-empty masks)")]
        return " + ".join(kinds + (["SR"] if self.sr else []) + (["SC overlay"] if self.sc else []))


def refusal(ds: Dataset, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why the node does not predict ``ds`` (a header is enough), or None when it does.

    Reasons: a SOP class not in ``INPUT_SOP_CLASSES``; a Secondary Capture whose Modality is not
    CR / DX / DR; pneumoseg's own output; a SOPInstanceUID that is not a valid UID (it names files);
    Rows x Columns x frames over ``max_pixels`` (it could never be read, so it is not stored).
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in INPUT_SOP_CLASSES:
        name = pydicom.uid.UID(sop_class).name if sop_class else "none"
        return f"SOP Class {name} ({sop_class}) is not a radiograph (valid: {', '.join(INPUT_SOP_CLASSES.values())})"
    modality = str(ds.get("Modality", ""))
    if sop_class == _SECONDARY_CAPTURE and modality not in RADIOGRAPH_MODALITIES:
        return (f"Secondary Capture with Modality {modality!r} is not a radiograph "
                f"(valid: {', '.join(RADIOGRAPH_MODALITIES)})")
    if str(ds.get("Manufacturer", "")) == MANUFACTURER:
        return "an output of pneumoseg itself (Manufacturer pneumoseg); not predicted again"
    uid = str(ds.get("SOPInstanceUID", ""))
    if not is_valid_uid(uid):
        return f"SOPInstanceUID {uid[:80]!r} is not a valid DICOM UID (digits and dots, at most 64 characters)"
    try:
        pixels = int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0) * max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return "Rows / Columns / NumberOfFrames are not numbers"
    if pixels > max_pixels:
        return f"{pixels} pixels (rows x cols x frames) over the limit {max_pixels}"
    return None


def predictor_fingerprint(predictor: Predictor) -> str:
    """What identifies a predictor's results: model(s), checkpoint, TTA, rule, pneumoseg version."""
    return json.dumps({"model": predictor.model_name, "runs": [str(r) for r in predictor.runs],
                       "checkpoint": predictor.checkpoint, "tta": predictor.tta, "backend": predictor.backend,
                       "postprocess": predictor.postprocess.to_dict(), "version": pneumoseg.__version__},
                      sort_keys=True)


def output_series_uid(source_series_uid: str, kind: str, fingerprint: str) -> str:
    """The result series of ``kind`` (seg | sr | sc) for a source series: the same for the same inputs."""
    return str(generate_uid(entropy_srcs=[source_series_uid, kind, fingerprint]))


def make_outputs(predictor: Predictor, image: InputImage, pred: Prediction, source: Dataset,
                 options: OutputOptions, fingerprint: str | None = None) -> dict[str, Dataset]:
    """``{kind: dataset}`` for one prediction (module docstring), in sending order.

    ``source``: the source image's header (``stop_before_pixels`` is enough); ``image`` / ``pred``
    at its resolution. Built by ``pneumoseg.inference.outputs.build_dicom_outputs`` (the SR's score is
    the image-level score of ``predictions.csv``), with this node's series UIDs and the source's
    InstanceNumber. Raises DicomError (from the writers) when an output cannot be made.
    """
    fingerprint = fingerprint or predictor_fingerprint(predictor)
    series = str(source.get("SeriesInstanceUID", ""))
    number = source.get("InstanceNumber")
    instance_number = int(number) if isinstance(number, int | pydicom.valuerep.IS) and int(number) > 0 else 1
    placements = {kind: Placement(series_instance_uid=output_series_uid(series, kind, fingerprint),
                                  instance_number=instance_number) for kind in OUTPUT_KINDS}
    return build_dicom_outputs(source, pred.mask, predictor.output_meta(), prob=pred.prob, pixels=image.pixels,
                               seg_empty=options.seg_empty, sr=options.sr, sc=options.sc,
                               placements=placements).datasets()
