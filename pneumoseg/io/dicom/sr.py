"""The prediction for one radiograph as a DICOM Structured Report (TID 1500 measurement report, highdicom).

A report made here is a Comprehensive 3D SR (highdicom's TID 1500 writer) in the source's study,
in a new series, observed by the device ``pneumoseg`` (DCM 121007 *Device*), procedure reported
SCT 399208008 *Plain chest X-ray*. Its Imaging Measurements hold:

* one image-level group (TID 1501) for the source image (Source Image For Measurement Group):
  - qualitative evaluation SCT 36118008 *Pneumothorax* = SCT 52101004 *Present* or
    SCT 272519000 *Absent* (the decision after post-processing: the mask is not empty);
  - ``SCORE`` = the image-level score, UCUM ``1`` (no units): what the caller gives; pneumoseg's
    outputs give the score of ``predictions.csv`` (mean of the top 0.1 % pixel probabilities,
    ``pneumoseg.inference.outputs.reported_score``), not the saturating largest probability. No
    standard concept names an uncalibrated model score, so it is a private code (scheme
    ``99PNEUMOSEG``, PS3.16 8.2: coding scheme designators beginning "99" are local);
* when a SEG is given, one planar ROI group (TID 1410) referencing the SEG's segment 1 frame 1
  (and, through it, the source image) with SCT 42798000 *Area*: in ``mm2`` (UCUM) when the
  source has a pixel spacing (``pneumoseg.io.dicom.read.area_mm2``), else in ``{pixels}``.

The evidence (Current Requested Procedure Evidence) lists the source image and the SEG.
"""

from __future__ import annotations

import warnings

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import pneumoseg
from pneumoseg.io.dicom.read import write_dicom
from pneumoseg.io.dicom.seg import PNEUMOTHORAX, check_source_uids, header_copy
from pneumoseg.errors import DicomError

__all__ = ["AREA_PIXELS_UNIT", "PLAIN_CHEST_XRAY", "SCORE", "SERIES_DESCRIPTION", "make_sr", "write_sr"]

SERIES_DESCRIPTION = "pneumoseg pneumothorax measurement report"
#: Procedure reported: SNOMED CT 399208008 "Plain chest X-ray".
PLAIN_CHEST_XRAY = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
#: The image-level score (predictions.csv's ``score``); a local code, see the module docstring.
SCORE = hd.sr.CodedConcept("SCORE", "99PNEUMOSEG", "Pneumothorax image-level score")
#: UCUM annotation unit for areas counted in pixels (no pixel spacing in the source).
AREA_PIXELS_UNIT = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")


def _algorithm(model_name: str) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name="pneumoseg", version=pneumoseg.__version__,
                                         parameters=[f"model={model_name}"])


def _segment_reference(source: Dataset, seg: Dataset) -> hd.sr.ReferencedSegmentationFrame:
    """TID 1410 row 7 for segment 1 of a one-frame, one-segment SEG: no Referenced Frame Number.

    TID 1410 leaves the frame number out when all frames of the SEG are selected and it has a
    single segment, and the Image SOP Instance Reference Macro forbids Referenced Segment Number
    next to Referenced Frame Number (dciodvfy reports the pair as an error).
    """
    if int(seg.get("NumberOfFrames", 1)) != 1 or len(seg.get("SegmentSequence", [])) != 1:
        where = seg.get("SOPInstanceUID", "<SEG>")
        raise DicomError(f"{where}: an SR references a SEG with one frame and one segment, not "
                         f"{seg.get('NumberOfFrames', 1)} frame(s) / {len(seg.get('SegmentSequence', []))} segment(s)")
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, frame_number=1, segment_number=1,
        source_image=hd.sr.SourceImageForSegmentation.from_source_image(source))
    for item in reference:
        for ref in item.get("ReferencedSOPSequence", []):
            if "ReferencedSegmentNumber" in ref and "ReferencedFrameNumber" in ref:
                del ref.ReferencedFrameNumber
    return reference


def make_sr(
    source: Dataset,
    seg: Dataset | None,
    *,
    has_pneumothorax: bool,
    score: float,
    area_px: int,
    area_mm2: float | None,
    model_name: str,
    series_number: int = 100,
    instance_number: int = 1,
    series_description: str = SERIES_DESCRIPTION,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 measurement report of one prediction (module docstring for its content).

    ``source``: the source image's header (``stop_before_pixels`` is enough); ``seg``: the SEG made
    from it (``pneumoseg.io.dicom.seg.make_segmentation``, or one read back) or None when none was
    written. ``score`` in [0, 1]; ``area_px`` >= 0 pixels; ``area_mm2`` None without a spacing;
    ``series_description``: SeriesDescription (LO: at most 64 characters).
    Raises DicomError on values out of range or a source / SEG highdicom cannot reference.
    """
    where = getattr(source, "filename", None) or source.get("SOPInstanceUID", "<dataset>")
    check_source_uids(source, "DICOM SR")
    source = header_copy(source)  # missing Type 2 patient/study attributes present and empty
    if not 0.0 <= float(score) <= 1.0:
        raise DicomError(f"{where}: image-level score {score!r} is not in [0, 1]")
    if area_px < 0 or (area_mm2 is not None and not area_mm2 >= 0):
        raise DicomError(f"{where}: area {area_px!r} px / {area_mm2!r} mm2 must be >= 0")
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="pneumoseg", manufacturer_name="pneumoseg", model_name=model_name[:64]))
    try:
        image_group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Image-level result"),
            finding_type=PNEUMOTHORAX, algorithm_id=_algorithm(model_name),
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=PNEUMOTHORAX, value=codes.SCT.Present if has_pneumothorax else codes.SCT.Absent)],
            measurements=[hd.sr.Measurement(name=SCORE, value=float(score), unit=codes.UCUM.NoUnits,
                                            algorithm_id=_algorithm(model_name))])
        groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]
        groups = [image_group]
        evidence = [source]
        if seg is not None:
            area = (hd.sr.Measurement(name=codes.SCT.Area, value=float(area_mm2), unit=codes.UCUM.SquareMillimeter,
                                      algorithm_id=_algorithm(model_name))
                    if area_mm2 is not None else
                    hd.sr.Measurement(name=codes.SCT.Area, value=float(area_px), unit=AREA_PIXELS_UNIT,
                                      algorithm_id=_algorithm(model_name)))
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Pneumothorax segment"),
                referenced_segment=_segment_reference(source, seg),
                finding_type=PNEUMOTHORAX, algorithm_id=_algorithm(model_name), measurements=[area]))
            evidence.append(seg)
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=device),
            procedure_reported=PLAIN_CHEST_XRAY, imaging_measurements=groups)
        with warnings.catch_warnings():
            # Challenge files hold a UUID as PatientName; highdicom warns about single-component names.
            warnings.filterwarnings("ignore", message=".*intended person name.*", category=UserWarning)
            sr = hd.sr.Comprehensive3DSR(
                evidence=evidence, content=report, series_instance_uid=series_instance_uid or hd.UID(),
                series_number=series_number, sop_instance_uid=sop_instance_uid or hd.UID(),
                instance_number=instance_number, manufacturer="pneumoseg", is_complete=True)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomError(f"{where}: cannot build a DICOM SR ({type(exc).__name__}: {exc})") from None
    sr.SeriesDescription = series_description[:64]
    # SOP Common, Type 1C: a coding scheme not in PS3.16 is identified in the instance.
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCORE.scheme_designator
    scheme.CodingSchemeName = "pneumoseg local codes"
    scheme.CodingSchemeResponsibleOrganization = "pneumoseg"
    sr.CodingSchemeIdentificationSequence = [*sr.get("CodingSchemeIdentificationSequence", []), scheme]
    return sr


write_sr = write_dicom  #: atomic save in the DICOM file format