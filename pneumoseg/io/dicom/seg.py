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
no ImagePositionPatient / ImageOrientationPatient, and only PixelSpacing. Such a SEG is encoded
without a Frame of Reference (no plane position / orientation; its one frame is tied pixel for
pixel to the source image), as PS3.3 A.51 allows, and carries:

* the source's PixelSpacing in a shared Pixel Measures item (PS3.3 C.7.6.16.2.1). Slice Thickness
  is Type 1C there, required for a SEG only when a Frame of Reference is present, so none is
  invented for a projection image. highdicom's reader insists on Slice Thickness in every Pixel
  Measures item; ``read_segmentation`` reads such files with highdicom all the same.
* Patient Orientation (General Image module, Type 2C: required when the image has no Image
  Orientation (Patient)), copied from the source or empty, as the source's own value may be.
* the segmented area (``area_mm2``, or in pixels without a spacing) in its ContentDescription.
* a shared Plane Orientation (Patient) item (conditional in the Segmentation IOD, required with a Frame
  of Reference; dciodvfy reports nothing about it without one) holding ``STACK_ORIENTATION`` (1, 0, 0, 0, 1, 0), the orientation cornerstone3D assumes for
  an image without Image Orientation (Patient). OHIF 3.13's SEG loader (@cornerstonejs/adapters,
  ``createLabelmapsFromSegImageIds`` -> ``checkOrientation``) reads the SEG's orientation from this
  item and fails ("Cannot read properties of undefined (reading 'ImageOrientationPatient')") without
  it; it then matches the frame to the source image through SourceImageSequence, not by position.
  No Frame of Reference, position or Slice Thickness is invented, and the orientation says nothing
  about the patient (Patient Orientation, copied from the source, does).

Sources with a full Frame of Reference geometry keep highdicom's geometry.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes

import pneumoseg
from pneumoseg.io.dicom.read import area_mm2, read_header, spacing_pair, write_dicom
from pneumoseg.io.overlay import PRED_RGB
from pneumoseg.errors import DicomError
from pneumoseg.util.paths import is_valid_uid, one_line

__all__ = [
    "PNEUMOTHORAX",
    "SEGMENT_CATEGORY",
    "SERIES_DESCRIPTION",
    "SOURCE_UIDS",
    "STACK_ORIENTATION",
    "area_description",
    "check_source_uids",
    "header_copy",
    "make_segmentation",
    "read_segmentation",
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
_FULL_GEOMETRY = ("FrameOfReferenceUID", "PixelSpacing", "SliceThickness", "ImagePositionPatient",
                  "ImageOrientationPatient")


#: Image Orientation (Patient) of a SEG over a projection image without one (module docstring): rows along +x,
#: columns along +y, as cornerstone3D (OHIF) lays out an image that has no orientation.
STACK_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

#: UIDs of the source that its SEG / SR / SC carry (to the PACS, with the node).
SOURCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")


def _where(source: Dataset) -> str:
    return one_line(str(getattr(source, "filename", None) or source.get("SOPInstanceUID", "<dataset>")))


def check_source_uids(source: Dataset, what: str) -> None:
    """Refuse (DicomError naming the file and attribute) a source whose ``SOURCE_UIDS`` present are not
    valid DICOM UIDs (digits and dots, at most 64 characters): an output would copy them, and
    with them reference a study / series / frame of reference that no PACS can match. They are
    refused, not replaced, since a replaced StudyInstanceUID would file the result in a new study.
    """
    for keyword in SOURCE_UIDS:
        if keyword in source:
            value = str(source.get(keyword) or "")
            if not is_valid_uid(value):
                raise DicomError(f"{_where(source)}: {keyword} {one_line(value[:80])!r} is not a valid DICOM UID "
                                 f"(digits and dots, at most 64 characters); no {what} made from it")


def area_description(area_px: int, area_mm2: float | None) -> str:
    """The SEG's ContentDescription (at most 64 characters): what was segmented and how large."""
    size = f"{area_mm2:.1f} mm2" if area_mm2 is not None else f"{area_px} px (no pixel spacing)"
    return f"Automatic pneumothorax segmentation, area {size}"[:64]


def header_copy(source: Dataset) -> Dataset:
    """``source`` without pixel data, its missing Type 2 patient/study attributes present and empty
    (what highdicom copies into a derived object: SEG, SR)."""
    header = Dataset()
    for elem in source:
        if elem.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            header.add(elem)
    if getattr(source, "file_meta", None) is not None:
        header.file_meta = source.file_meta
    for keyword in _TYPE2_COPIED:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _source_header(source: Dataset) -> tuple[Dataset, bool]:
    """A header-only copy of ``source`` that highdicom can encode, and whether it has a full geometry."""
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                           "Rows", "Columns") if k not in source]
    if missing:
        raise DicomError(f"{_where(source)}: cannot reference the source in a DICOM SEG: missing {', '.join(missing)}")
    check_source_uids(source, "DICOM SEG")
    header = header_copy(source)
    full_geometry = all(k in header for k in _FULL_GEOMETRY)
    if not full_geometry:
        for keyword in _GEOMETRY:
            if keyword in header:
                delattr(header, keyword)
    return header, full_geometry


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
    ``algorithm_parameters``, to the segment's AlgorithmParameters; ``series_description`` (LO: at
    most 64 characters) to SeriesDescription. New series and SOP instance
    UIDs are generated unless given. An empty mask gives a SEG with one empty frame. Without a
    Frame of Reference the source's PixelSpacing goes to a Pixel Measures item (module docstring);
    the area goes to ContentDescription (``area_description``).
    Raises DicomError when the source lacks identifying UIDs or its size differs from the mask.
    """
    header, full_geometry = _source_header(source)
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape != (int(header.Rows), int(header.Columns)):
        raise DicomError(f"{header.SOPInstanceUID}: mask shape {mask.shape} differs from the source image "
                         f"({header.Rows} x {header.Columns})")
    spacing = None if full_geometry else spacing_pair(source, "PixelSpacing")
    pixel_measures = None if spacing is None else hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=None)
    description = area_description(int(np.count_nonzero(mask)), area_mm2(mask, source))
    parameters = {"model": model_name, **dict(algorithm_parameters or {})}
    algorithm = hd.AlgorithmIdentificationSequence(
        name="pneumoseg", version=pneumoseg.__version__, family=codes.cid7162.ArtificialIntelligence,
        parameters=parameters)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Pneumothorax", segmented_property_category=SEGMENT_CATEGORY,
        segmented_property_type=PNEUMOTHORAX, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, anatomic_regions=[codes.SCT.Chest],
        # RecommendedDisplayCIELabValue: viewers draw the segment in pneumoseg's overlay red (OHIF otherwise warns
        # "RecommendedDisplayCIELabValue not found" and picks its own colour)
        display_color=hd.color.CIELabColor.from_rgb(*PRED_RGB))
    with warnings.catch_warnings():
        # Challenge files hold a UUID as PatientName; highdicom warns about single-component names.
        warnings.filterwarnings("ignore", message=".*intended person name.*", category=UserWarning)
        try:
            seg = hd.seg.Segmentation(
                source_images=[header], pixel_array=mask.astype(bool),
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
                series_instance_uid=series_instance_uid or hd.UID(), series_number=series_number,
                sop_instance_uid=sop_instance_uid or hd.UID(), instance_number=instance_number,
                manufacturer="pneumoseg", manufacturer_model_name=model_name[:64],
                software_versions=[f"pneumoseg {pneumoseg.__version__}", f"highdicom {hd.__version__}"],  # type: ignore[arg-type]
                device_serial_number="none", series_description=series_description[:64],
                content_label="PNEUMOTHORAX", content_description=description,
                omit_empty_frames=False, pixel_measures=pixel_measures,
            )
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise DicomError(f"{header.SOPInstanceUID}: cannot build a DICOM SEG ({type(exc).__name__}: {exc})") from None
    if not full_geometry:
        # General Image module, Type 2C: required without Image Orientation (Patient); may be empty.
        seg.PatientOrientation = source.get("PatientOrientation", "")
        # What viewers built on cornerstone3D (OHIF 3.x) need to place the frame (module docstring).
        orientation = Dataset()
        orientation.ImageOrientationPatient = list(STACK_ORIENTATION)
        seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence = [orientation]
    return seg


def read_segmentation(path: str | os.PathLike[str]) -> hd.seg.Segmentation:
    """Read a DICOM SEG with highdicom, including one whose Pixel Measures lack Slice Thickness.

    highdicom's ``segread`` rejects a Pixel Measures item without Slice Thickness, and a Plane
    Orientation item without a Frame of Reference, both of which the standard allows in a SEG
    without a Frame of Reference (module docstring). Such items are set aside while highdicom
    parses the file and put back unchanged afterwards.
    Raises DicomError when the file is not a SEG highdicom can read.
    """
    ds = read_header(path, pixels=True)
    set_aside: list[tuple[Dataset, str, Sequence]] = []
    if "FrameOfReferenceUID" not in ds:
        groups = [*ds.get("SharedFunctionalGroupsSequence", []), *ds.get("PerFrameFunctionalGroupsSequence", [])]
        for group in groups:
            measures = group.get("PixelMeasuresSequence")
            if measures is not None and len(measures) == 1 and "SliceThickness" not in measures[0]:
                set_aside.append((group, "PixelMeasuresSequence", measures))
            if "PlaneOrientationSequence" in group:  # highdicom wants a Frame of Reference with it
                set_aside.append((group, "PlaneOrientationSequence", group.PlaneOrientationSequence))
        for group, keyword, _ in set_aside:
            delattr(group, keyword)
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomError(f"{path}: not a DICOM SEG highdicom can read ({type(exc).__name__}: {exc})") from None
    for group, keyword, value in set_aside:
        setattr(group, keyword, value)
    return seg


write_segmentation = write_dicom  #: atomic save in the DICOM file format