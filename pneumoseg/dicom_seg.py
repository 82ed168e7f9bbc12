"""Predicted masks as DICOM Segmentation objects (highdicom), one per source radiograph.

A SEG made here is a BINARY segmentation with one segment, "Pneumothorax" (segmented property
category SCT 49755003 *Morphologically abnormal structure*, type SCT 36118008 *Pneumothorax*,
anatomic region SCT 816094009 *Chest*), algorithm type AUTOMATIC, identified as algorithm
``pneumoseg`` (version ``pneumoseg.__version__``, family DCM 123110 *Artificial Intelligence*, the
model name(s) in its parameters). It belongs to the source's study, in a new series, and
references the source SOP instance (ReferencedSeriesSequence, and per frame SourceImageSequence
with Spatial Locations Preserved = YES): its one frame is the mask pixel for pixel, same
Rows x Columns as the source image, as stored (no flip, no transpose).

Projection radiographs: the challenge's CR files (Secondary Capture) have no Frame of Reference,
no ImagePositionPatient / ImageOrientationPatient, and only PixelSpacing. highdicom encodes such
sources without a Frame of Reference (no plane position / orientation; the frame is tied to the
source image instead), which the standard allows. highdicom 0.28 would copy PixelSpacing into a
Pixel Measures item without SliceThickness that its own reader (``segread``) then rejects, so for
sources without a Frame of Reference the SEG carries no Pixel Measures (the spacing stays in the
referenced source image). Sources with a Frame of Reference keep highdicom's full geometry.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import pneumoseg
from pneumoseg.atomic import atomic_path
from pneumoseg.errors import DicomError

__all__ = [
    "PNEUMOTHORAX",
    "SEGMENT_CATEGORY",
    "SERIES_DESCRIPTION",
    "make_segmentation",
    "write_segmentation",
]

#: Segmented property type: SNOMED CT 36118008 "Pneumothorax".
PNEUMOTHORAX = codes.SCT.Pneumothorax
#: Segmented property category: SNOMED CT 49755003 "Morphologically Abnormal Structure".
SEGMENT_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
SERIES_DESCRIPTION = "pneumoseg pneumothorax segmentation"

# Type 2 attributes highdicom copies from the source; absent ones are written empty.
_TYPE2_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                 "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
# Geometry that only means something inside a Frame of Reference.
_GEOMETRY = ("FrameOfReferenceUID", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices",
             "ImagePositionPatient", "ImageOrientationPatient")


def _source_header(source: Dataset) -> Dataset:
    """A header-only copy of ``source`` that highdicom can encode (see the module docstring)."""
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                           "Rows", "Columns") if k not in source]
    where = getattr(source, "filename", None) or source.get("SOPInstanceUID", "<dataset>")
    if missing:
        raise DicomError(f"{where}: cannot reference the source in a DICOM SEG: missing {', '.join(missing)}")
    header = Dataset()
    for elem in source:
        if elem.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            header.add(elem)
    if getattr(source, "file_meta", None) is not None:
        header.file_meta = source.file_meta
    for keyword in _TYPE2_COPIED:
        if keyword not in header:
            setattr(header, keyword, "")
    full_geometry = all(k in header for k in ("FrameOfReferenceUID", "PixelSpacing", "SliceThickness",
                                              "ImagePositionPatient", "ImageOrientationPatient"))
    if not full_geometry:
        for keyword in _GEOMETRY:
            if keyword in header:
                delattr(header, keyword)
    return header


def make_segmentation(
    source: Dataset,
    mask: np.ndarray,
    *,
    model_name: str,
    series_number: int = 99,
    instance_number: int = 1,
    series_description: str = SERIES_DESCRIPTION,
    algorithm_parameters: Mapping[str, str] | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG of ``mask`` (bool (H, W), pixel for pixel the source image as stored).

    ``source``: the source image's pydicom Dataset (a header read with ``stop_before_pixels``
    is enough). ``model_name`` goes to ManufacturerModelName (cut to 64 characters) and, with
    ``algorithm_parameters``, to the segment's AlgorithmParameters. New series and SOP instance
    UIDs are generated unless given. An empty mask gives a SEG with one empty frame.
    Raises DicomError when the source lacks identifying UIDs or its size differs from the mask.
    """
    header = _source_header(source)
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape != (int(header.Rows), int(header.Columns)):
        raise DicomError(f"{header.SOPInstanceUID}: mask shape {mask.shape} differs from the source image "
                         f"({header.Rows} x {header.Columns})")
    parameters = {"model": model_name, **dict(algorithm_parameters or {})}
    algorithm = hd.AlgorithmIdentificationSequence(
        name="pneumoseg", version=pneumoseg.__version__, family=codes.cid7162.ArtificialIntelligence,
        parameters=parameters)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Pneumothorax", segmented_property_category=SEGMENT_CATEGORY,
        segmented_property_type=PNEUMOTHORAX, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, anatomic_regions=[codes.SCT.Chest])
    with warnings.catch_warnings():
        # Challenge files hold a UUID as PatientName; highdicom warns about single-component names.
        warnings.filterwarnings("ignore", message=".*intended person name.*", category=UserWarning)
        try:
            return hd.seg.Segmentation(
                source_images=[header], pixel_array=mask.astype(bool),
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
                series_instance_uid=series_instance_uid or hd.UID(), series_number=series_number,
                sop_instance_uid=sop_instance_uid or hd.UID(), instance_number=instance_number,
                manufacturer="pneumoseg", manufacturer_model_name=model_name[:64],
                software_versions=[f"pneumoseg {pneumoseg.__version__}", f"highdicom {hd.__version__}"],  # type: ignore[arg-type]
                device_serial_number="none", series_description=series_description,
                content_label="PNEUMOTHORAX", content_description="Automatic pneumothorax segmentation",
                omit_empty_frames=False,
            )
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise DicomError(f"{header.SOPInstanceUID}: cannot build a DICOM SEG ({type(exc).__name__}: {exc})") from None


def write_segmentation(path: str | os.PathLike[str], segmentation: hd.seg.Segmentation) -> Path:
    """Save ``segmentation`` to ``path`` atomically (DICOM file format); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        segmentation.save_as(tmp, enforce_file_format=True)
    return path
