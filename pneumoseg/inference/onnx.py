"""Trained runs as ONNX files, and an onnxruntime model that Predictor can hold instead of torch.

``export_onnx(RUN, FILE)`` writes one self-contained ``.onnx`` (weights inside, no ``.data``
file): input ``image`` float32 (N, C, S, S), output ``logits`` float32 (N, 1, S, S), the batch
axis dynamic and S = the run's ``data.size`` fixed (the seed UNets require sides divisible by
16 and every model was trained at S; Predictor resizes to S anyway). A model with an image-level
head exports only its mask logits. Everything needed to use the file travels in its
``metadata_props`` (all strings; :class:`OnnxMetadata`)::

    pneumoseg.version      pneumoseg version that exported it
    pneumoseg.model        model name (``unet-resnet34``)
    pneumoseg.size         S
    pneumoseg.in_channels  C (1 or 3; the grayscale image replicated)
    pneumoseg.normalize    gray | imagenet (``pneumoseg.models.preprocessing``)
    pneumoseg.mean         JSON list of C floats: input = (uint8 / 255 - mean_c) / std_c
    pneumoseg.std          JSON list of C floats
    pneumoseg.postprocess  JSON of ``PostProcess.to_dict()`` (areas in source pixels): the rule tuned for
                           this run and checkpoint without TTA (RUN/postprocess.json), else the config's
    pneumoseg.output       "logits": probabilities = sigmoid(logits), then the post-processing
    pneumoseg.checkpoint   the checkpoint exported (``best``, ``last``, ``snapshot-K`` or a path)
    pneumoseg.checkpoint_sha256  the SHA-256 of that ``.ckpt`` file: the fingerprint ``--backend auto``
                           compares with the checkpoint it would load (:func:`onnx_mismatch`)

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), the default since
torch 2.9; if it fails for a model, the TorchScript exporter (``dynamo=False``) is tried. After
writing, one random batch goes through both runtimes and the export fails if their
probabilities differ by more than ``1e-3`` (``verify=False`` skips that).

``ONNX_NAME`` (``RUN/model.onnx``) is where ``pneumoseg export RUN`` writes by default and where
``predict`` / ``evaluate`` / ``serve`` look: on CPU they use it instead of PyTorch when its
fingerprint equals the checkpoint's (``Predictor(backend="auto")``).
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import pneumoseg
from pneumoseg.util.atomic import atomic_path
from pneumoseg.config import ExperimentConfig, load_config
from pneumoseg.errors import ConfigError, DataError, PneumosegError
from pneumoseg.models.preprocessing import NORMALIZATIONS, Preprocessing, mean_std
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.scoring.tuned import find_tuned
from pneumoseg.training.run_folder import load_run, resolve_checkpoint
from pneumoseg.util.digest import file_sha256
from pneumoseg.util.paths import one_line

__all__ = [
    "INPUT_NAME",
    "ONNX_NAME",
    "OUTPUT_NAME",
    "ExportError",
    "OnnxMetadata",
    "OnnxModel",
    "export_onnx",
    "exported_postprocess",
    "onnx_mismatch",
    "onnx_providers",
    "read_onnx_metadata",
]

ONNX_NAME = "model.onnx"  #: the export in a run folder (``pneumoseg export RUN`` writes it; predict looks there)
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
_PREFIX = "pneumoseg."
_VERIFY_ATOL = 1e-3


class ExportError(PneumosegError):
    """A model that could not be exported, or whose ONNX output differs from PyTorch's."""


@dataclass(frozen=True)
class OnnxMetadata:
    """What a pneumoseg ONNX file says about its input, output and post-processing."""

    model_name: str
    size: int
    in_channels: int
    normalize: str
    mean: list[float]
    std: list[float]
    postprocess: dict[str, Any]
    version: str = pneumoseg.__version__
    checkpoint: str = "best"
    checkpoint_sha256: str = ""  #: SHA-256 of the exported .ckpt file ("" in files exported before it was recorded)
    output: str = "logits"
    extra: dict[str, str] = field(default_factory=dict)  #: any other metadata_props

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, postprocess: PostProcess, checkpoint: str,
                    checkpoint_sha256: str = "") -> OnnxMetadata:
        prep = Preprocessing.from_config(cfg)
        mean, std = list(prep.mean), list(prep.std)
        return cls(model_name=cfg.model.name, size=cfg.data.size, in_channels=cfg.data.in_channels,
                   normalize=cfg.data.normalize, mean=mean, std=std, postprocess=postprocess.to_dict(),
                   checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256)

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries (key -> string)."""
        props = {
            "version": self.version, "model": self.model_name, "size": str(self.size),
            "in_channels": str(self.in_channels), "normalize": self.normalize,
            "mean": json.dumps(self.mean), "std": json.dumps(self.std),
            "postprocess": json.dumps(self.postprocess), "output": self.output, "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
        }
        return {**self.extra, **{_PREFIX + k: v for k, v in props.items()}}

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str = "ONNX file") -> OnnxMetadata:
        """Parse ``metadata_props``; DataError naming ``where`` and the missing / bad key."""
        need = ("model", "size", "in_channels", "normalize", "postprocess")
        missing = [_PREFIX + k for k in need if _PREFIX + k not in props]
        if missing:
            raise DataError(f"{where}: not a pneumoseg ONNX export (metadata lacks {', '.join(missing)}); "
                            "export with `pneumoseg export RUN --onnx FILE`")
        get = lambda key: props[_PREFIX + key]  # noqa: E731
        try:
            size, channels = int(get("size")), int(get("in_channels"))
            postprocess = json.loads(get("postprocess"))
            normalize = get("normalize")
            if normalize not in NORMALIZATIONS:
                raise ValueError(f"normalize {normalize!r} (valid: {', '.join(NORMALIZATIONS)})")
            default_mean, default_std = (list(v) for v in mean_std(normalize, channels))
            mean = json.loads(props.get(_PREFIX + "mean", "null")) or default_mean
            std = json.loads(props.get(_PREFIX + "std", "null")) or default_std
        except (ValueError, TypeError) as exc:
            raise DataError(f"{where}: bad pneumoseg metadata ({exc})") from None
        extra = {k: v for k, v in props.items() if not k.startswith(_PREFIX)}
        return cls(model_name=get("model"), size=size, in_channels=channels, normalize=normalize, mean=mean,
                   std=std, postprocess=postprocess, version=props.get(_PREFIX + "version", "?"),
                   checkpoint=props.get(_PREFIX + "checkpoint", "?"),
                   checkpoint_sha256=props.get(_PREFIX + "checkpoint_sha256", ""),
                   output=props.get(_PREFIX + "output", "logits"), extra=extra)

    @property
    def preprocessing(self) -> Preprocessing:
        """The input rule recorded in the file (size, channels, mean, std)."""
        return Preprocessing(self.size, self.in_channels, tuple(self.mean), tuple(self.std))

    def config(self) -> ExperimentConfig:
        """An ExperimentConfig with this model's name, size, channels, normalisation and threshold."""
        pp = PostProcess.from_dict(self.postprocess)
        return load_config(None, [f"model.name={self.model_name}", f"data.size={self.size}",
                                  f"data.in_channels={self.in_channels}", f"data.normalize={self.normalize}",
                                  f"postprocess.threshold={pp.threshold}", f"postprocess.min_area={pp.min_area}"])


def read_onnx_metadata(path: str | os.PathLike[str]) -> OnnxMetadata:
    """The pneumoseg metadata of an ONNX file (the graph is parsed, weights are not needed)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ONNX file not found")
    stat = path.stat()
    return OnnxMetadata.from_props(dict(_metadata_props(os.fspath(path), stat.st_mtime_ns, stat.st_size)), str(path))


@functools.lru_cache(maxsize=8)
def _metadata_props(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, str], ...]:
    """The file's metadata_props, read once per (path, mtime, size) (``predict`` needs them twice: the
    fingerprint check, then the session). onnxruntime reads them, in a session with the graph
    optimisations off (~0.1 s for unet-resnet34): importing the ``onnx`` package alone takes longer."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise DataError(f"{path}: not a readable ONNX file ({_ort_reason(exc)})") from None
    return tuple(sorted(session.get_modelmeta().custom_metadata_map.items()))


def _ort_reason(exc: Exception) -> str:
    """onnxruntime's error as one short clause (its messages span lines and quote C++ signatures)."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return one_line(f"{type(exc).__name__}: {text}")[:240]


class _MaskLogits(nn.Module):
    """The network's mask logits (N, 1, S, S) only (drops an image-level head's output)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, tuple) else out


def _to_proto(net: nn.Module, example: torch.Tensor, opset: int | None) -> Any:
    """ModelProto of ``net``: the dynamo exporter, else the TorchScript one; ExportError if both fail."""
    import io

    import onnx

    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer / deprecation warnings are noise for users
        try:
            program = torch.onnx.export(
                net, (example,), None, dynamo=True, external_data=False, verbose=False, optimize=True,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
            if program is not None:
                return program.model_proto
        except Exception as exc:  # the exporter raises many types
            errors.append(f"dynamo exporter: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        try:
            buf = io.BytesIO()
            torch.onnx.export(net, (example,), buf, dynamo=False,  # type: ignore[arg-type]
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset or 17,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            return onnx.load_from_string(buf.getvalue())
        except Exception as exc:
            errors.append(f"TorchScript exporter: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise ExportError("; ".join(errors))


def exported_postprocess(run_dir: str | os.PathLike[str], checkpoint: str, cfg: ExperimentConfig) -> PostProcess:
    """The rule an export records: tuned for this run and checkpoint without TTA, else the config's."""
    tuned = find_tuned([run_dir], checkpoint, tta=False)
    return tuned.rule if tuned else PostProcess(cfg.postprocess.threshold, cfg.postprocess.min_area)


def export_onnx(run_dir: str | os.PathLike[str], path: str | os.PathLike[str], checkpoint: str = "best",
                opset: int | None = None, verify: bool = True) -> Path:
    """Export a run's network (``checkpoint`` in RUN/checkpoints, or a .ckpt path) to ``path``.

    The file is written atomically, weights inside. ``opset``: ONNX opset (None: the exporter's
    default). The post-processing recorded is the rule tuned for this run and checkpoint without
    TTA (RUN/postprocess.json) when there is one, else the config's threshold / min_area. Returns ``path``. ExportError when no exporter can handle the
    model or (``verify``) ONNX and PyTorch probabilities differ by more than 1e-3.
    """
    import onnx

    net, cfg = load_run(run_dir, checkpoint)
    wrapped = _MaskLogits(net).eval()
    s, c = cfg.data.size, cfg.data.in_channels
    example = torch.zeros(2, c, s, s)
    try:
        proto = _to_proto(wrapped, example, opset)
    except ExportError as exc:
        raise ExportError(f"{run_dir}: model {cfg.model.name!r} could not be exported to ONNX ({exc})") from None
    meta = OnnxMetadata.from_config(cfg, exported_postprocess(run_dir, checkpoint, cfg), checkpoint,
                                    file_sha256(resolve_checkpoint(run_dir, checkpoint)))
    del proto.metadata_props[:]
    for key, value in meta.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (f"pneumoseg {pneumoseg.__version__} {cfg.model.name}: float32 {INPUT_NAME} (N, {c}, {s}, {s}) "
                        f"-> {OUTPUT_NAME} (N, 1, {s}, {s}); see metadata_props pneumoseg.*")
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, os.fspath(tmp))
        if verify:
            _verify(wrapped, tmp, example.shape, run_dir)
    return path


def onnx_mismatch(onnx_path: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str]) -> str | None:
    """None when ``onnx_path`` was exported from ``checkpoint_path`` (same SHA-256), else why not (one clause).

    Reads the ONNX metadata only (not the weights) and hashes the checkpoint file.
    """
    try:
        meta = read_onnx_metadata(onnx_path)
    except DataError as exc:
        return str(exc)
    if not meta.checkpoint_sha256:
        return f"{onnx_path} records no checkpoint fingerprint (exported by pneumoseg {meta.version})"
    current = file_sha256(checkpoint_path)
    if meta.checkpoint_sha256 != current:
        return (f"{onnx_path} was exported from another checkpoint than {checkpoint_path} "
                f"(fingerprint sha256 {meta.checkpoint_sha256[:12]} there, {current[:12]} now)")
    return None


def _verify(net: nn.Module, onnx_path: Path, shape: torch.Size, run_dir: object) -> None:
    x = torch.randn(1, *shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = torch.sigmoid(net(x)).numpy()
    got = torch.sigmoid(OnnxModel(onnx_path, threads=None)(x)).numpy()
    diff = float(np.abs(expected - got).max())
    if not diff <= _VERIFY_ATOL:
        raise ExportError(f"{run_dir}: ONNX probabilities differ from PyTorch's by {diff:.2e} "
                          f"(allowed {_VERIFY_ATOL:g}) on a random input")


def onnx_providers(device: str | torch.device | None = None) -> list[str]:
    """onnxruntime providers: CUDA first when ``device`` is cuda (None: when available), then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    want_cuda = torch.device(device).type == "cuda" if device is not None else True
    if want_cuda and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An exported network run by onnxruntime, called like the torch one: logits (N, 1, S, S).

    ``model(x)``: ``x`` float32 (N, C, S, S), normalised as ``metadata`` says (torch tensor or
    numpy array); returns the logits as the same kind (a tensor on ``x``'s device). ``to`` and
    ``eval`` return the model itself, so Predictor can hold it in place of an ``nn.Module``.
    ``threads``: onnxruntime intra-op threads (None: its default, one per core).
    """

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device | None = None,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.providers = onnx_providers(device)
        try:
            self.session = ort.InferenceSession(os.fspath(self.path), options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise DataError(f"{self.path}: onnxruntime cannot load it ({_ort_reason(exc)})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        m = self.metadata
        self.expected_shape = (m.in_channels, m.size, m.size)

    @property
    def model_name(self) -> str:
        return self.metadata.model_name

    @property
    def postprocess(self) -> PostProcess:
        """The post-processing recorded at export."""
        try:
            return PostProcess.from_dict(self.metadata.postprocess)
        except ConfigError as exc:
            raise DataError(f"{self.path}: {exc}") from None

    def config(self) -> ExperimentConfig:
        """A config holding this model's name, size, channels, normalisation and threshold."""
        return self.metadata.config()

    def to(self, device: str | torch.device) -> OnnxModel:  # providers are chosen at load
        return self

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, x: torch.Tensor | np.ndarray) -> Any:
        arr = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
        if arr.ndim != 4 or tuple(arr.shape[1:]) != self.expected_shape:
            raise DataError(f"{self.path}: input shape {tuple(arr.shape)} does not fit (N, "
                            f"{', '.join(map(str, self.expected_shape))})")
        (logits,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(arr)})
        if isinstance(x, torch.Tensor):
            return torch.from_numpy(logits).to(x.device)
        return logits
