"""The prediction folder: one ``Prediction`` -> files and CSV cells, and a folder of inputs -> all of them.

Layout (every file written atomically)::

    OUT/masks/<image_id>.png        the mask at the source resolution (0/255)
    OUT/overlays/<image_id>.png     the image with the mask and the score (``overlays=True``)
    OUT/seg|sr|sc/<image_id>.dcm    DICOM SEG, TID 1500 SR, RGB Secondary Capture (DICOM inputs, when asked;
                                    built by ``pneumoseg.inference.outputs.build_dicom_outputs``)
    OUT/predictions.csv             ``PREDICTIONS_HEADER``: one row per image
    OUT/submission.csv              ``ImageId,EncodedPixels`` in the challenge's relative RLE (``-1``: empty)

``write_outputs`` is the one place that writes one image's files (``predict_to_folder`` and the
archive engine, ``pneumoseg.inference.archive``, both call it); ``write_tables`` writes the two CSVs.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom

from pneumoseg.errors import PneumosegError
from pneumoseg.inference.inputs import InputImage, load_input
from pneumoseg.inference.outputs import build_dicom_outputs, reported_score
from pneumoseg.inference.predictor import Prediction, Predictor
from pneumoseg.io.dicom.read import area_mm2, read_header, write_dicom
from pneumoseg.io.images import write_png
from pneumoseg.io.overlay import annotate, overlay, write_rgb_png
from pneumoseg.io.rle import rle_encode, rle_encode_absolute
from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.util.paths import check_output_dir, check_output_file
from pneumoseg.util.progress import progress_bar

__all__ = [
    "PREDICTIONS_HEADER",
    "SUBMISSION_HEADER",
    "ImageOutputs",
    "PredictResult",
    "predict_to_folder",
    "write_outputs",
    "write_tables",
]


@dataclass(frozen=True)
class ImageOutputs:
    """What ``write_outputs`` wrote for one image (paths relative to the output folder).

    ``row``: its ``predictions.csv`` row (``PREDICTIONS_HEADER`` but ``training_data``); ``rle``: its submission cell;
    ``seg``: ``"written"``, ``"empty"`` (no SEG for an empty mask), ``"not_dicom"`` or ``""`` (not
    asked); ``failure``: one line when a DICOM output could not be made (the mask was written).
    """

    row: tuple[object, ...]
    rle: str
    files: tuple[str, ...]
    seg: str = ""
    sr: bool = False
    sc: bool = False
    failure: str | None = None


@dataclass
class PredictResult:
    """What ``predict_to_folder`` wrote, and the inputs it could not use (one line each)."""

    out_dir: Path
    n_images: int = 0
    n_positive: int = 0
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  #: ``FILE: warning: ...`` (e.g. a modality not CR/DX/DR)
    predictions_csv: Path | None = None
    submission_csv: Path | None = None
    n_seg: int = 0                 #: DICOM SEG files written (``dicom_seg=True``) to ``out_dir/seg``
    seg_skipped_empty: int = 0     #: DICOM inputs without SEG: empty prediction (no ``dicom_seg_empty``)
    seg_skipped_not_dicom: int = 0  #: PNG / JPEG inputs: no source DICOM to reference
    n_sr: int = 0                  #: DICOM Structured Reports (TID 1500) written to ``out_dir/sr``
    n_sc: int = 0                  #: Secondary Capture overlays written to ``out_dir/sc``
    n_resumed: int = 0             #: images whose complete outputs an earlier (killed) run had written

    def add(self, outputs: ImageOutputs) -> None:
        """Count one image's DICOM outputs and its failure line."""
        self.n_seg += outputs.seg == "written"
        self.seg_skipped_empty += outputs.seg == "empty"
        self.seg_skipped_not_dicom += outputs.seg == "not_dicom"
        self.n_sr += outputs.sr
        self.n_sc += outputs.sc
        if outputs.failure:
            self.failures.append(outputs.failure)


#: ``probability``: largest pixel probability (compatibility); ``score``: :func:`image_score`, the
#: image-level score that ranks images (evaluate's ``image_auc`` uses it); ``training_data``:
#: ``Predictor.notice`` (e.g. ``synthetic training data; not for clinical use``), the same on every row.
PREDICTIONS_HEADER = ("image_id", "source", "probability", "score", "has_pneumothorax", "area_px", "area_mm2",
                      "height", "width", "training_data")
SUBMISSION_HEADER = ("ImageId", "EncodedPixels")


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_tables(result: PredictResult, rows: Sequence[Sequence[object]], sub_rows: Sequence[tuple[str, str]],
                 submission: str | os.PathLike[str] | None = None, training_data: str = "") -> None:
    """``predictions.csv`` and the submission (default ``out_dir/submission.csv``), atomically; counts.

    ``rows``: ``ImageOutputs.row`` of each image; ``training_data`` (``Predictor.notice``) fills the
    last column. Nothing is written when ``rows`` is empty. Sets ``n_images``, ``n_positive`` and
    the two paths.
    """
    result.n_images = len(rows)
    result.n_positive = sum(1 for _, rle in sub_rows if rle != "-1")
    if rows:
        result.predictions_csv = result.out_dir / "predictions.csv"
        table = [(*r, training_data) for r in rows]
        atomic_write_text(result.predictions_csv, _csv_text(PREDICTIONS_HEADER, table))
        result.submission_csv = Path(submission) if submission else result.out_dir / "submission.csv"
        atomic_write_text(result.submission_csv, _csv_text(SUBMISSION_HEADER, sub_rows))


def _read_header(image: InputImage) -> pydicom.Dataset | None:
    """The source DICOM's header (for areas in mm² and DICOM outputs); None for PNG / JPEG."""
    if image.meta is None:
        return None
    return read_header(image.path)


def _write_dicom_outputs(predictor: Predictor, image: InputImage, pred: Prediction, source: pydicom.Dataset,
                         out: Path, score: float, seg: bool, seg_empty: bool, sr: bool, sc: bool,
                         files: list[str]) -> tuple[str, bool, bool]:
    """``out/seg``, ``out/sr``, ``out/sc`` ``/<image_id>.dcm`` for a DICOM input (see ``predict_to_folder``),
    built by ``pneumoseg.inference.outputs.build_dicom_outputs`` with ``score``, the CSV row's score.

    Returns ``(seg status, sr written, sc written)``; appends each written file to ``files``.
    """
    built = build_dicom_outputs(source, pred.mask, predictor.output_meta(), score=score, pixels=image.pixels,
                                seg=seg, seg_empty=seg_empty, sr=sr, sc=sc)
    for kind, ds in built.datasets().items():
        write_dicom(out / kind / f"{pred.image_id}.dcm", ds)
        files.append(f"{kind}/{pred.image_id}.dcm")
    status = "" if not seg else "written" if built.seg is not None else "empty"
    return status, sr, sc


def write_outputs(predictor: Predictor, image: InputImage, pred: Prediction, out_dir: str | os.PathLike[str],
                  overlays: bool = True, rle_format: Literal["relative", "absolute"] = "relative",
                  dicom_seg: bool = False, dicom_seg_empty: bool = False, dicom_sr: bool = False,
                  dicom_sc: bool = False) -> ImageOutputs:
    """Write one image's files (mask, overlay, DICOM outputs; see ``predict_to_folder``), each atomically.

    The one place that turns a ``Prediction`` into files and CSV cells: ``predict_to_folder`` and
    the archive engine (``pneumoseg.inference``) both call it.
    """
    out = Path(out_dir)
    encode = rle_encode if rle_format == "relative" else rle_encode_absolute
    write_png(out / "masks" / f"{pred.image_id}.png", pred.mask.astype(np.uint8) * 255)
    files = [f"masks/{pred.image_id}.png"]
    score = reported_score(pred.prob)  # the CSV's score, the SR's too
    if overlays:
        view = annotate(overlay(image.pixels, pred.mask), f"{pred.image_id}  score {score:.3f}")
        write_rgb_png(out / "overlays" / f"{pred.image_id}.png", view)
        files.append(f"overlays/{pred.image_id}.png")
    h, w = pred.mask.shape
    status, sr, sc, failure = "", False, False, None
    try:
        source = _read_header(image)
        mm2 = area_mm2(pred.mask, source) if source is not None else None
        if dicom_seg or dicom_sr or dicom_sc:
            if source is None:
                status = "not_dicom"
            else:
                status, sr, sc = _write_dicom_outputs(predictor, image, pred, source, out, score, dicom_seg,
                                                      dicom_seg_empty, dicom_sr, dicom_sc, files)
    except PneumosegError as exc:
        failure = f"{exc} (mask written; DICOM outputs not)"
        mm2 = None
    row = (pred.image_id, str(image.path), round(pred.probability, 6), score, int(pred.area_px > 0), pred.area_px,
           "" if mm2 is None else round(mm2, 2), h, w)
    return ImageOutputs(row, encode(pred.mask), tuple(files), status, sr, sc, failure)


def predict_to_folder(predictor: Predictor, inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str],
                      submission: str | os.PathLike[str] | None = None, overlays: bool = True,
                      rle_format: Literal["relative", "absolute"] = "relative", progress: bool = True,
                      on_prediction: object = None, dicom_seg: bool = False,
                      dicom_seg_empty: bool = False, dicom_sr: bool = False, dicom_sc: bool = False) -> PredictResult:
    """Predict every input and write ``masks/``, ``overlays/``, ``predictions.csv`` and the submission.

    An input that cannot be read is reported in ``failures`` (file and reason) and skipped; the
    rest is still predicted. The submission has one row per image (``ImageId,EncodedPixels``,
    ``-1`` when empty) in the challenge's relative RLE (``rle_format="absolute"``: 1-based
    absolute starts, standard Kaggle RLE for other tools). Every file is written atomically.
    ``on_prediction(input_image, prediction)`` is called for each prediction when given.

    ``dicom_seg``: also write ``seg/<image_id>.dcm``, a DICOM Segmentation of the mask referencing
    the source DICOM, for each DICOM input whose mask is not empty (``dicom_seg_empty``: for empty
    ones too); all three kinds are built by ``pneumoseg.inference.outputs.build_dicom_outputs``, as
    the PACS node and the service build them. ``dicom_sr``: ``sr/<image_id>.dcm``, a TID 1500
    measurement report (presence, the score of ``predictions.csv``, area in mm² when the source has
    a pixel spacing, referencing the SEG when one was written); ``dicom_sc``: ``sc/<image_id>.dcm``, an RGB Secondary
    Capture of the overlay for viewers without SEG support. PNG / JPEG inputs get none (counted in
    ``seg_skipped_not_dicom``). An output that cannot be made is reported in ``failures``.
    ``predictions.csv`` has ``area_mm2`` for DICOM inputs with a pixel spacing (else empty).

    In-process and in memory; ``pneumoseg.inference.predict_archive`` does the same for archives
    (streamed inputs, several processes, resumable) with the same ``write_outputs``.
    """
    out = Path(out_dir)
    check_output_dir(out)
    if submission is not None:
        check_output_file(submission, (), "submission")
    result = PredictResult(out)
    rows: list[tuple[object, ...]] = []
    sub_rows: list[tuple[str, str]] = []
    seen: dict[str, Path] = {}
    paths = [Path(p) for p in inputs]
    with progress_bar(progress) as bar:
        task = bar.add_task("predict", total=len(paths))
        for start in range(0, len(paths), predictor.batch_size):
            batch: list[InputImage] = []
            for path in paths[start:start + predictor.batch_size]:
                try:
                    image = load_input(path)
                except PneumosegError as exc:
                    result.failures.append(str(exc))
                    continue
                if image.meta is not None:
                    result.warnings += [f"{path}: warning: {w}" for w in image.meta.warnings]
                if image.image_id in seen:
                    result.failures.append(f"{path}: ImageId {image.image_id} already predicted from {seen[image.image_id]}")
                    continue
                seen[image.image_id] = path
                batch.append(image)
            for image, pred in zip(batch, predictor.predict_batch(batch) if batch else [], strict=True):
                outputs = write_outputs(predictor, image, pred, out, overlays=overlays, rle_format=rle_format,
                                        dicom_seg=dicom_seg, dicom_seg_empty=dicom_seg_empty, dicom_sr=dicom_sr,
                                        dicom_sc=dicom_sc)
                result.add(outputs)
                rows.append(outputs.row)
                sub_rows.append((pred.image_id, outputs.rle))
                if callable(on_prediction):
                    on_prediction(image, pred)
            bar.advance(task, len(paths[start:start + predictor.batch_size]))
    write_tables(result, rows, sub_rows, submission, predictor.notice)
    return result
