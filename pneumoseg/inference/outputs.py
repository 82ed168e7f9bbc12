"""One prediction -> its DICOM outputs (SEG, SR, SC) and its image-level score: the one builder.

``pneumoseg predict`` (``predictor.write_outputs``), the PACS node (``pneumoseg.pacs.outputs.make_outputs``,
for ``listen`` and ``dicomweb``) and the web service's downloads (``pneumoseg.service.exports``) all
call :func:`build_dicom_outputs`, so the same prediction gives the same SEG pixels, segment
attributes, SR verdict, score and area whichever of them made it; only UIDs and numbering differ
(each caller's :class:`Placement`).

Conventions:

* ``source``: the source image's pydicom header (``stop_before_pixels`` is enough), Rows x Columns.
* ``mask``: bool (H, W) on the source's pixel grid (as stored), **after** post-processing (the
  predictor's rule, at the source resolution); ``pixels`` uint8 (H, W), the radiograph as read for
  display (only for the SC overlay).
* ``prob``: float (H, W) pixel probabilities in [0, 1] at the source resolution; the SR's score is
  :func:`reported_score` of it: the mean of the top 0.1 % pixel probabilities (:func:`image_score`),
  rounded to ``SCORE_DECIMALS``, exactly the ``score`` column of ``predictions.csv``. Not the
  largest pixel probability, which saturates near 1.0 on almost every radiograph.
* The decision ``has_pneumothorax`` is "the mask is not empty"; areas are counted on the mask
  (pixels; mm² when the source has a pixel spacing, ``pneumoseg.io.dicom.read.area_mm2``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from pneumoseg.io.dicom.read import area_mm2

__all__ = [
    "KINDS",
    "SCORE_DECIMALS",
    "SERIES_NUMBERS",
    "TOP_FRACTION",
    "DicomOutputs",
    "OutputMeta",
    "Placement",
    "build_dicom_outputs",
    "image_score",
    "reported_score",
]

KINDS = ("seg", "sr", "sc")  #: the output kinds, in the order they are made, written and sent
SERIES_NUMBERS = {"seg": 99, "sr": 100, "sc": 101}  #: default SeriesNumber of each kind
TOP_FRACTION = 0.001  #: share of an image's pixels averaged by :func:`image_score` (0.1 %)
SCORE_DECIMALS = 6  #: decimals of the score in predictions.csv, the SR and the service's answer


def image_score(prob: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Image-level pneumothorax score in [0, 1]: the mean of the top ``fraction`` pixel probabilities.

    ``prob``: float (H, W) probabilities at the source resolution; k = max(1, round(fraction * H * W)).
    The largest pixel probability (``Prediction.probability``) saturates near 1.0 on almost every
    radiograph, so it ranks images poorly; this score is what ``image_auc`` is computed from.
    """
    flat = np.asarray(prob, dtype=np.float32).ravel()
    if flat.size == 0:
        return 0.0
    k = min(flat.size, max(1, round(fraction * flat.size)))
    return float(np.partition(flat, flat.size - k)[flat.size - k:].mean())


def reported_score(prob: np.ndarray) -> float:
    """The score every output reports for an image: :func:`image_score` rounded to ``SCORE_DECIMALS``
    (``predictions.csv``'s ``score``, the SR's score measurement, the service's ``score``)."""
    return round(image_score(prob), SCORE_DECIMALS)


@dataclass(frozen=True)
class OutputMeta:
    """What every output says about the model that made it (``Predictor.output_meta()``).

    ``model_name``: ManufacturerModelName (cut to 64 characters); ``algorithm_parameters``: the SEG
    segment's AlgorithmParameters (backend, TTA, rule, training data); ``series_descriptions``:
    SeriesDescription per kind (``seg`` / ``sr`` / ``sc``, LO: at most 64 characters; a kind
    missing takes its writer's default).
    """

    model_name: str
    algorithm_parameters: Mapping[str, str] = field(default_factory=dict)
    series_descriptions: Mapping[str, str] = field(default_factory=dict)

    def describe(self, kind: str) -> dict[str, str]:
        """``series_description`` keyword for ``kind``'s writer (empty: its default)."""
        text = self.series_descriptions.get(kind)
        return {} if text is None else {"series_description": text}


@dataclass(frozen=True)
class Placement:
    """Where one output instance goes: UIDs (None: a new one) and numbers (None: ``SERIES_NUMBERS``)."""

    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    series_number: int | None = None
    instance_number: int = 1

    def keywords(self, kind: str) -> dict[str, object]:
        return {"series_instance_uid": self.series_instance_uid, "sop_instance_uid": self.sop_instance_uid,
                "series_number": SERIES_NUMBERS[kind] if self.series_number is None else self.series_number,
                "instance_number": self.instance_number}


@dataclass(frozen=True)
class DicomOutputs:
    """The outputs made for one image (None: not asked, or a SEG of an empty mask not wanted) and what
    they report: ``score`` (:func:`reported_score`), ``area_px``, ``area_mm2`` (None without a spacing)."""

    score: float
    area_px: int
    area_mm2: float | None
    seg: Dataset | None = None
    sr: Dataset | None = None
    sc: Dataset | None = None

    @property
    def has_pneumothorax(self) -> bool:
        return self.area_px > 0

    def datasets(self) -> dict[str, Dataset]:
        """``{kind: dataset}`` of the outputs made, in ``KINDS`` order (SEG before the SR that references it)."""
        made = {"seg": self.seg, "sr": self.sr, "sc": self.sc}
        return {kind: made[kind] for kind in KINDS if made[kind] is not None}


def build_dicom_outputs(source: Dataset, mask: np.ndarray, meta: OutputMeta, *, prob: np.ndarray | None = None,
                        score: float | None = None, pixels: np.ndarray | None = None, seg: bool = True,
                        seg_empty: bool = True, sr: bool = False, sc: bool = False,
                        placements: Mapping[str, Placement] | None = None) -> DicomOutputs:
    """The SEG, SR and SC of one prediction (module docstring for shapes and conventions).

    Give the score's source as ``prob`` (float (H, W), the score is :func:`reported_score` of it) or,
    where the map is gone, as ``score`` (a value :func:`reported_score` gave): exactly one.
    ``seg``: a SEG of ``mask``, also when it is empty unless ``seg_empty`` is off; ``sr``: a TID 1500
    report (presence, score, area) referencing that SEG when one was made; ``sc``: an RGB overlay
    of ``pixels`` (uint8 (H, W), required then). ``placements``: UIDs and numbers per kind.
    Everything is built before anything is returned, so a caller writes all or nothing.
    Raises DicomError (from the writers) when an output cannot be made, ValueError on a missing
    ``prob`` / ``score`` / ``pixels`` or a ``prob`` not shaped like ``mask``.
    """
    from pneumoseg.io.dicom.sc import make_overlay_sc  # highdicom: imported when outputs are built
    from pneumoseg.io.dicom.seg import make_segmentation
    from pneumoseg.io.dicom.sr import make_sr

    mask = np.asarray(mask, dtype=bool)
    if (prob is None) == (score is None):
        raise ValueError("give the probability map (prob) or the reported score (score), exactly one")
    if prob is not None:
        if np.shape(prob) != mask.shape:
            raise ValueError(f"probability map {np.shape(prob)} and mask {mask.shape} differ in shape")
        score = reported_score(prob)
    assert score is not None
    if sc and pixels is None:
        raise ValueError("an SC overlay needs the image's pixels")
    placed = dict(placements or {})

    def common(kind: str) -> dict[str, object]:
        return {**placed.get(kind, Placement()).keywords(kind), **meta.describe(kind), "model_name": meta.model_name}

    area_px = int(np.count_nonzero(mask))
    mm2 = area_mm2(mask, source)
    seg_ds = None
    if seg and (area_px > 0 or seg_empty):
        seg_ds = make_segmentation(source, mask, algorithm_parameters=meta.algorithm_parameters,
                                   **common("seg"))  # type: ignore[arg-type]
    sr_ds = None
    if sr:
        sr_ds = make_sr(source, seg_ds, has_pneumothorax=area_px > 0, score=score, area_px=area_px, area_mm2=mm2,
                        **common("sr"))  # type: ignore[arg-type]
    sc_ds = None
    if sc:
        sc_ds = make_overlay_sc(source, np.asarray(pixels), mask, **common("sc"))  # type: ignore[arg-type]
    return DicomOutputs(score=float(score), area_px=area_px, area_mm2=mm2, seg=seg_ds, sr=sr_ds, sc=sc_ds)
