"""The prediction burned into a copy of the radiograph: a DICOM Secondary Capture (RGB) for any viewer.

Why a Secondary Capture and not a Grayscale Softcopy Presentation State: a viewer that cannot show
a SEG usually cannot apply a presentation state either (GSPS graphic annotations are optional
for a display application), while every PACS viewer shows an RGB image. The price is that the
overlay is burned in (BurnedInAnnotation YES) and cannot be switched off; the SEG stays the
measurable, machine-readable result.

The image is ``pneumoseg.io.overlay.overlay``: the radiograph as read for display (uint8 (H, W),
stored orientation) with the predicted mask tinted and outlined in red, same Rows x Columns as the
source. It belongs to the source's study, in a new series, references the source in
SourceImageSequence (purpose of reference DCM 121322 *Source image for image processing
operation*), carries the source's PixelSpacing (the same pixel grid) and Patient Orientation
(Type 2C, empty when the source's is), ImageType DERIVED\\SECONDARY\\OTHER, ConversionType WSD
(made by a workstation application).
"""

from __future__ import annotations

import warnings

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import pneumoseg
from pneumoseg.io.dicom.read import write_dicom
from pneumoseg.io.dicom.read import area_mm2, pixel_spacing_mm
from pneumoseg.io.dicom.seg import area_description, check_source_uids
from pneumoseg.errors import DicomError
from pneumoseg.io.overlay import overlay

__all__ = ["SERIES_DESCRIPTION", "make_overlay_sc", "write_sc"]

SERIES_DESCRIPTION = "pneumoseg pneumothorax overlay"


def _spacing(source: Dataset) -> tuple[float, float] | None:
    """The source's own PixelSpacing (the SC has the same pixel grid); never derived from Imager Pixel Spacing."""
    found = pixel_spacing_mm(source)
    return found[0] if found is not None and found[1] == "PixelSpacing" else None


def make_overlay_sc(
    source: Dataset,
    pixels: np.ndarray,
    mask: np.ndarray,
    *,
    model_name: str,
    series_number: int = 101,
    instance_number: int = 1,
    series_description: str = SERIES_DESCRIPTION,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of ``pixels`` (uint8 (H, W)) with ``mask`` (bool (H, W)) drawn in red.

    ``source``: the source image's header (``stop_before_pixels`` is enough); ``pixels`` and
    ``mask`` are on its pixel grid (Rows x Columns). ``model_name`` goes to
    ManufacturerModelName, the area (``pneumoseg.io.dicom.seg.area_description``) to
    DerivationDescription; ``series_description`` (LO: at most 64 characters) to SeriesDescription.
    Raises DicomError when the shapes differ from the source.
    """
    where = getattr(source, "filename", None) or source.get("SOPInstanceUID", "<dataset>")
    missing = [k for k in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns") if k not in source]
    if missing:
        raise DicomError(f"{where}: cannot reference the source in a Secondary Capture: missing {', '.join(missing)}")
    check_source_uids(source, "Secondary Capture")
    shape = (int(source.Rows), int(source.Columns))
    pixels, mask = np.asarray(pixels), np.asarray(mask)
    if pixels.shape != shape or mask.shape != shape or pixels.dtype != np.uint8:
        raise DicomError(f"{where}: overlay needs uint8 pixels and a mask of the source's {shape[0]} x {shape[1]}, "
                         f"got pixels {pixels.dtype} {pixels.shape} and mask {mask.shape}")
    rgb = overlay(pixels, pred=mask.astype(bool))
    orientation = [str(v) for v in source.get("PatientOrientation") or []]
    with warnings.catch_warnings():
        # Challenge files hold a UUID as PatientName; highdicom warns about single-component names.
        warnings.filterwarnings("ignore", message=".*intended person name.*", category=UserWarning)
        try:
            sc = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
                # highdicom asks for an orientation in the PATIENT system; the source's (or none) is set below
                coordinate_system="PATIENT",
                patient_orientation=(orientation[0], orientation[1]) if len(orientation) == 2 else ("P", "F"),
                series_instance_uid=series_instance_uid or hd.UID(), series_number=series_number,
                sop_instance_uid=sop_instance_uid or hd.UID(), instance_number=instance_number,
                manufacturer="pneumoseg", pixel_spacing=_spacing(source),  # type: ignore[arg-type]
                transfer_syntax_uid="1.2.840.10008.1.2.1")
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise DicomError(f"{where}: cannot build a Secondary Capture ({type(exc).__name__}: {exc})") from None
    sc.PatientOrientation = orientation if len(orientation) == 2 else []  # Type 2: empty
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.Modality = source.get("Modality") or "OT"
    for keyword in ("BodyPartExamined", "Laterality", "ImageLaterality"):
        # General Series Laterality is Type 2C for paired body parts: the source's body part says which.
        if source.get(keyword):
            setattr(sc, keyword, source.get(keyword))
    sc.SeriesDescription = series_description[:64]
    sc.ManufacturerModelName = model_name[:64]
    sc.SoftwareVersions = [f"pneumoseg {pneumoseg.__version__}", f"highdicom {hd.__version__}"]  # type: ignore[assignment]
    sc.DerivationDescription = (f"pneumoseg prediction burned in (red tint and outline); "
                                f"{area_description(int(np.count_nonzero(mask)), area_mm2(mask, source))}")
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = (
        codes.DCM.SourceImageForImageProcessingOperation.value, "DCM",
        codes.DCM.SourceImageForImageProcessingOperation.meaning)
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    ref.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [ref]
    return sc


write_sc = write_dicom  #: atomic save in the DICOM file format