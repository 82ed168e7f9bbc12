"""Inference: trained runs -> probability maps -> masks (``Predictor``; its inputs come from
``inference/inputs.py``, the files it leads to are written by ``inference/folder.py``).

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

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from pneumoseg.config import ExperimentConfig
from pneumoseg.errors import ConfigError, DataError
from pneumoseg.inference.inputs import InputImage
from pneumoseg.inference.onnx import ONNX_NAME, OnnxModel, onnx_mismatch
from pneumoseg.inference.outputs import OutputMeta, image_score
from pneumoseg.io.images import resize_image
from pneumoseg.models.preprocessing import Preprocessing
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.scoring.tuned import find_tuned, legacy_rule_present
from pneumoseg.runs import read_run_config
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
    "Prediction",
    "Predictor",
    "choose_backend",
]

BACKENDS = ("auto", "torch", "onnx")  #: auto: onnx on CPU where RUN/model.onnx matches the checkpoint (choose_backend)


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
