"""Inference: trained runs -> probability maps -> masks, overlays, CSVs and a Kaggle submission.

The one inference path (``predict``, ``evaluate``, ``tune``, ``serve`` and the ONNX backend all
use ``Predictor``): every model sees the image at its run's ``data.size``; probabilities of an
ensemble (several runs, flip TTA) are averaged at the first run's size; they are then upsampled
(bilinear) to the **source image's resolution before thresholding**, and the post-processing
(threshold, ``min_area`` in source pixels, triplet rule) is applied there. So masks, areas and
every metric are at the resolution the challenge scores (1024 x 1024 for its images).

The post-processing is the rule ``pneumoseg tune`` stored for exactly these weights (SHA-256 of
each checkpoint, wherever the run folders now lie) and TTA setting; without one, the first run's
config default (``Predictor.postprocess_source`` says which was used).

Every output says what the model was trained on (``RUN/provenance.json``,
``pneumoseg.training.provenance``) and that it is not for clinical use: ``predictions.csv``'s
``training_data`` column and the SeriesDescription of SEG, SR and SC.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pydicom
import torch
from torch import nn

from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.config import ExperimentConfig
from pneumoseg.io.dicom.read import DicomMeta, area_mm2, read_dicom, read_header, write_dicom
from pneumoseg.errors import ConfigError, DataError, PneumosegError
from pneumoseg.inference.onnx import ONNX_NAME, OnnxModel, onnx_mismatch
from pneumoseg.inference.outputs import TOP_FRACTION, OutputMeta, build_dicom_outputs, image_score, reported_score
from pneumoseg.io.images import IMAGE_SUFFIXES, read_image, resize_image, write_png
from pneumoseg.io.layouts import INPUT_SUFFIXES, iter_files
from pneumoseg.models.preprocessing import Preprocessing
from pneumoseg.io.overlay import annotate, overlay, write_rgb_png
from pneumoseg.util.paths import check_output_dir, check_output_file, is_valid_uid, safe_name
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.scoring.tuned import find_tuned, legacy_rule_present
from pneumoseg.util.progress import progress_bar
from pneumoseg.runs import read_run_config
from pneumoseg.io.rle import rle_encode, rle_encode_absolute
from pneumoseg.training.provenance import (
    Provenance,
    describe_training,
    read_provenance,
    series_description,
    short_notice,
)
from pneumoseg.training.run_folder import load_run, resolve_checkpoint
from pneumoseg.util.digest import file_sha256

__all__ = [
    "BACKENDS",
    "IMAGE_SUFFIXES",
    "ONNX_NAME",
    "PREDICTIONS_HEADER",
    "SUBMISSION_HEADER",
    "TOP_FRACTION",
    "ImageOutputs",
    "InputImage",
    "PredictResult",
    "Prediction",
    "Predictor",
    "choose_backend",
    "find_inputs",
    "image_score",
    "iter_inputs",
    "load_input",
    "predict_to_folder",
    "write_outputs",
    "write_tables",
]

BACKENDS = ("auto", "torch", "onnx")  #: auto: onnx on CPU where RUN/model.onnx matches the checkpoint (choose_backend)


@dataclass(frozen=True)
class InputImage:
    """One radiograph to predict: ``pixels`` uint8 (H, W); ``meta`` only for DICOM input."""

    image_id: str
    pixels: np.ndarray
    path: Path
    meta: DicomMeta | None = None


@dataclass(frozen=True)
class Prediction:
    """``prob`` float32 (H, W) in [0, 1] and ``mask`` bool (H, W) at the input's resolution."""

    image_id: str
    prob: np.ndarray
    mask: np.ndarray

    @property
    def probability(self) -> float:
        """The largest pixel probability (kept for compatibility; it saturates: prefer ``score``)."""
        return float(self.prob.max())

    @property
    def score(self) -> float:
        """Image-level score: mean of the top 0.1 % pixel probabilities (:func:`image_score`)."""
        return image_score(self.prob)

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())


def iter_inputs(path: str | os.PathLike[str]) -> Iterator[Path]:
    """DICOM / PNG / JPEG files (``pneumoseg.io.layouts.INPUT_SUFFIXES``) under ``path``, lazily, in
    ``sorted(path.rglob("*"))`` order (``layouts.iter_files``). A file ``path`` yields itself whatever
    its suffix.
    """
    root = Path(path)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder")
    yield from iter_files(root, INPUT_SUFFIXES)


def find_inputs(path: str | os.PathLike[str]) -> list[Path]:
    """Every input of :func:`iter_inputs` as a list; DataError when there is none."""
    files = list(iter_inputs(path))
    if not files:
        raise DataError(f"{path}: no .dcm, .png or .jpg files found")
    return files


def load_input(path: str | os.PathLike[str]) -> InputImage:
    """Read a DICOM (ImageId = SOPInstanceUID) or a PNG/JPEG (ImageId = file stem).

    The ImageId names output files, so it is checked (``pneumoseg.util.paths``): a DICOM's UID must be
    digits and dots (<= 64 characters), a stem a plain file name; DataError naming the file otherwise.
    """
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return InputImage(safe_name(path.stem, path, "file stem"), read_image(path), path)
    dcm = read_dicom(path)
    uid = dcm.meta.image_id
    if not is_valid_uid(uid):
        shown = repr(uid[:80])
        raise DataError(f"{path}: SOPInstanceUID {shown} is not a valid DICOM UID (digits and dots, "
                        "at most 64 characters); not predicted")
    return InputImage(uid, dcm.pixels, path, dcm.meta)


def _onnx_file(run: str | os.PathLike[str]) -> Path:
    """``run`` itself when it is a .onnx file, else ``run/model.onnx``; DataError when absent."""
    path = Path(run)
    if path.suffix.lower() == ".onnx":
        return path
    if path.is_dir() and (path / ONNX_NAME).is_file():
        return path / ONNX_NAME
    raise DataError(f"{path}: no {ONNX_NAME} for --backend onnx; write it with "
                    f"`pneumoseg export {path} --onnx {path / ONNX_NAME}` or pass --onnx FILE")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_backend(runs: Sequence[str | os.PathLike[str]], checkpoint: str,
                   device: str | torch.device) -> tuple[str, list[Path], str]:
    """``backend="auto"``: ``("onnx", files, why)`` or ``("torch", [], why)``; ``why`` is one line for users.

    ONNX (onnxruntime) is chosen on a CPU device when onnxruntime is installed and every run folder
    holds ``model.onnx`` (``pneumoseg export RUN``) exported from the very checkpoint file that
    ``checkpoint`` names (same SHA-256, :func:`pneumoseg.inference.onnx.onnx_mismatch`); its
    probabilities equal PyTorch's within the export's parity tolerance (1e-3). Otherwise PyTorch.
    """
    import importlib.util

    if torch.device(device).type != "cpu":
        return "torch", [], f"torch (device {device}; onnxruntime is the default on CPU only)"
    if importlib.util.find_spec("onnxruntime") is None:
        return "torch", [], "torch (onnxruntime is not installed: `pip install onnxruntime` to run exported models)"
    files: list[Path] = []
    for run in map(Path, runs):
        path = run / ONNX_NAME
        if not path.is_file():
            return "torch", [], f"torch (no {path}; `pneumoseg export {run}` writes it)"
        mismatch = onnx_mismatch(path, resolve_checkpoint(run, checkpoint))
        if mismatch is not None:
            return "torch", [], f"torch ({mismatch}; re-export with `pneumoseg export {run} --checkpoint {checkpoint}`)"
        files.append(path)
    shown = ", ".join(map(str, files))
    return "onnx", files, f"onnx ({shown}: exported from checkpoint {checkpoint}, fingerprint matches)"


class Predictor:
    """Ensemble of trained runs: averaged sigmoid probabilities, optional horizontal-flip TTA.

    ``runs``: run folders (``pneumoseg train`` outputs); ``checkpoint``: ``best``, ``last`` or
    ``snapshot-K`` in each. ``postprocess`` defaults to the first run's tuned settings.

    ``backend="onnx"`` runs exported networks with onnxruntime instead of PyTorch: ``onnx`` names
    the ``.onnx`` files (one per model), else each entry of ``runs`` is a ``.onnx`` file or a run
    folder holding ``model.onnx``; ``checkpoint`` is then ignored (it was fixed at export). Size and
    normalisation come from each file's metadata; the post-processing from the first run folder's
    ``postprocess.json`` when there is one, else from the first file's metadata.

    ``backend="auto"``: onnx on CPU when every run holds a ``model.onnx`` exported from this
    checkpoint (:func:`choose_backend`), with each run's own config (post-processing as torch), else torch;
    ``backend`` is then the one chosen and ``backend_reason`` says why (one line).

    ``weight_files``: the checkpoint (or ONNX) file of each model, in order; ``weight_digests``
    their SHA-256 (archive manifests; with PyTorch, also the key of tuned rules).
    ``provenance``: each run's training data (``RUN/provenance.json``; unknown without one),
    ``training_data`` the line that says it, ``notice`` the short form with "not for clinical use".
    """

    def __init__(self, runs: Sequence[str | os.PathLike[str]], checkpoint: str = "best", tta: bool = False,
                 postprocess: PostProcess | None = None, device: str | torch.device | None = None,
                 batch_size: int = 4, backend: str = "torch",
                 onnx: Sequence[str | os.PathLike[str]] | None = None) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"backend {backend!r} unknown (valid: {', '.join(BACKENDS)})")
        if not runs and not (backend == "onnx" and onnx):
            raise DataError("no run folder given")
        self.device = torch.device(device) if device is not None else _default_device()
        self.backend_reason = f"{backend} (asked for)"
        matched: list[Path] = []  # model.onnx files standing in for these runs' checkpoints (auto)
        if backend == "auto":
            if onnx:
                raise ConfigError("ONNX files are given with backend 'onnx', not 'auto'")
            backend, matched, self.backend_reason = choose_backend(runs, checkpoint, self.device)
        self.backend = backend
        self.checkpoint = checkpoint
        if backend == "torch":
            loaded = [load_run(r, checkpoint) for r in runs]
            self.models: list[tuple[nn.Module | OnnxModel, ExperimentConfig, Preprocessing]] = [
                (m.to(self.device), c, Preprocessing.from_config(c)) for m, c in loaded]
            self.weight_files = [resolve_checkpoint(r, checkpoint) for r in runs]
        else:
            files = matched or ([Path(f) for f in onnx] if onnx else [_onnx_file(r) for r in runs])
            nets = [OnnxModel(f, device=self.device) for f in files]
            self.weight_files = files
            configs = ([read_run_config(r) for r in runs] if matched
                       else [net.config() for net in nets])
            self.models = [(net, c, net.metadata.preprocessing) for net, c in zip(nets, configs, strict=True)]
        self._matched_onnx = bool(matched)
        self.cfg = self.models[0][1]
        self.size = self.models[0][2].size
        self.tta = tta
        self.batch_size = batch_size
        self.runs = [Path(r) for r in runs]
        self.postprocess, self.postprocess_source = self._choose_postprocess(postprocess)
        self.model_name = "+".join(c.model.name for _, c, _ in self.models)
        self.provenance: list[Provenance] = [read_provenance(r) for r in self.runs]
        self.training_data = describe_training(self.provenance)
        self.notice = short_notice(self.provenance)

    @functools.cached_property
    def weight_digests(self) -> list[str]:
        """SHA-256 of each weight file, hashed on first use only (a checkpoint is ~100 MB): tuned-rule keys
        with PyTorch, archive manifests."""
        return [file_sha256(f) for f in self.weight_files]

    def series_description(self, what: str) -> str:
        """SeriesDescription of an output (``SEG``, ``SR``, ``SC``): the training data's kind,
        "not for clinical use"; at most 64 characters."""
        return series_description(what, self.provenance)

    def seg_parameters(self) -> dict[str, str]:
        """The SEG's AlgorithmParameters: backend, TTA, rule, checkpoint (PyTorch) and training data."""
        params = {"backend": self.backend, "tta": str(self.tta).lower(),
                  "postprocess": json.dumps(self.postprocess.to_dict())}
        if self.backend == "torch":
            params["checkpoint"] = self.checkpoint
        params["training_data"] = self.training_data
        return params

    def output_meta(self) -> OutputMeta:
        """What the DICOM outputs say about this predictor (``pneumoseg.inference.outputs``): model name,
        the SEG's AlgorithmParameters (``seg_parameters``), each kind's SeriesDescription."""
        return OutputMeta(self.model_name, self.seg_parameters(),
                          {kind: self.series_description(kind.upper()) for kind in ("seg", "sr", "sc")})

    def _choose_postprocess(self, given: PostProcess | None) -> tuple[PostProcess, str]:
        """The rule and where it came from: given > tuned for these runs/flags > ONNX metadata > config."""
        if given is not None:
            return given, "given"
        dirs = [r for r in self.runs if r.is_dir()]
        if dirs and len(dirs) == len(self.runs):
            # PyTorch: the digests of the files loaded; ONNX: of the checkpoints the files came from.
            weights = self.weight_digests if self.backend == "torch" else None
            tuned = find_tuned(dirs, self.checkpoint, self.tta, weights)
            if tuned is not None:
                return tuned.rule, (f"tuned on {tuned.split} ({tuned.n_images} images, dice_kaggle "
                                    f"{tuned.dice_kaggle:.4f} vs {tuned.default_dice_kaggle:.4f} untuned)")
        first = self.models[0][0]
        if isinstance(first, OnnxModel) and len(self.models) == 1 and not self._matched_onnx:
            return first.postprocess, "stored in the ONNX file"
        cfg = self.cfg.postprocess
        hint = ("an older pneumoseg tuned it at the model's size: re-run tune" if any(
            legacy_rule_present(r) for r in dirs) else "none tuned for these weights and flags")
        flags = " --tta" if self.tta else ""
        return (PostProcess(threshold=cfg.threshold, min_area=cfg.min_area),
                f"config default ({hint}; `pneumoseg tune {','.join(map(str, self.runs))}{flags}`)")

    @property
    def n_params(self) -> int | None:
        """Parameters of the ensemble's networks (None for ONNX files)."""
        nets = [net for net, _, _ in self.models if isinstance(net, nn.Module)]
        if len(nets) != len(self.models):
            return None
        return sum(p.numel() for n in nets for p in n.parameters())

    @torch.inference_mode()
    def _forward(self, net: nn.Module | OnnxModel, x: torch.Tensor) -> torch.Tensor:
        out = net(x)
        logits = out[0] if isinstance(out, tuple) else out
        return torch.sigmoid(logits.float())

    def probs_at_model_size(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """float32 (N, S, S) probabilities, S = the first run's size, for uint8 (H, W) images."""
        out = np.zeros((len(images), self.size, self.size), dtype=np.float32)
        for net, _, prep in self.models:
            s = prep.size
            batch = np.stack([img if img.shape == (s, s) else resize_image(img, s) for img in images])
            x = prep(torch.from_numpy(batch).to(self.device))
            prob = self._forward(net, x)
            if self.tta:
                prob = (prob + self._forward(net, x.flip(-1)).flip(-1)) / 2
            p = prob[:, 0].cpu().numpy()
            if s != self.size:
                p = np.stack([cv2.resize(q, (self.size, self.size), interpolation=cv2.INTER_LINEAR) for q in p])
            out += p
        return out / len(self.models)

    @staticmethod
    def native_prob(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """float32 (H, W) in [0, 1]: a model-size probability map upsampled (bilinear) to ``shape``."""
        h, w = shape
        p: np.ndarray = np.asarray(prob, dtype=np.float32)
        if p.shape != (h, w):
            p = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(p, 0.0, 1.0).astype(np.float32, copy=False)

    def at_native(self, image_id: str, prob: np.ndarray, shape: tuple[int, int]) -> Prediction:
        """Upsample to the source's ``shape`` (H, W), then post-process there."""
        native = self.native_prob(prob, shape)
        return Prediction(image_id, native, self.postprocess(native))

    def finish(self, image: InputImage, prob: np.ndarray) -> Prediction:
        """The prediction at ``image``'s own resolution from its model-size probabilities (CPU only)."""
        return self.at_native(image.image_id, prob, image.pixels.shape)

    def predict_batch(self, images: Sequence[InputImage]) -> list[Prediction]:
        """Predictions at each input's own resolution."""
        probs = self.probs_at_model_size([im.pixels for im in images])
        return [self.finish(im, prob) for im, prob in zip(images, probs, strict=True)]


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
