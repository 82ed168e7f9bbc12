"""Trained runs as MONAI bundles that ``python -m monai.bundle run`` executes without pneumoseg.

``export_monai_bundle(RUN, DIR)`` writes a bundle in MONAI's layout (the MONAI Bundle
Specification; monai is only needed where the bundle runs, not here)::

    DIR/configs/metadata.json   version, task, software versions, network_data_format (input
                                float32 (C, S, S) normalised as below; output: 1 channel of
                                probabilities at the source resolution), plus a "pneumoseg" entry
                                (model, checkpoint, preprocessing, post-processing rule)
    DIR/configs/inference.json  bundle_root, device, dataset_dir, datalist, network_def,
                                preprocessing, dataset, inferer, postprocessing, run
    DIR/models/model.ts         the network as TorchScript (traced; mask logits (N, 1, S, S) only),
                                metadata.json and inference.json inside as extra files
    DIR/models/model.pt         the network's state dict (the spec requires it; rebuilding the
                                network from it needs pneumoseg's model registry)
    DIR/docs/README.md          how to run it, and what it does differently from pneumoseg

The inference config reproduces ``Predictor`` for one run without TTA, step by step:

* reading: MONAI's ``LoadImage`` with the reader chosen by suffix (never a fallback reader);
* PNG / JPEG: MONAI's ``PILReader`` (row-major, ``reverse_indexing=False``), colour converted to
  8-bit gray by Pillow (pneumoseg uses OpenCV's BGR->gray: the same luma weights, values may
  differ by 1 grey level); 16-bit and other modes are refused;
* DICOM: MONAI's ``PydicomReader`` (``swap_ij=False``) gives the stored values with no VOI LUT,
  window or MONOCHROME1 inversion, so only files whose stored values *are* pneumoseg's display
  pixels are accepted: single-frame 8-bit unsigned MONOCHROME2 without VOI LUT, window or rescale
  (the challenge's files). Others are refused with one line naming the file;
* resize to S x S with OpenCV's ``INTER_AREA`` on the uint8 image (``pneumoseg.io.images.resize_image``;
  MONAI's ``Resize(mode="area")`` is torch's adaptive average pooling, equal to it only for integer
  factors: on a real 1024 px radiograph resized to 384 px they differ by up to 7 grey levels);
* the gray image repeated to C channels, ``x / 255`` (``ScaleIntensityRanged``), then
  ``(x - mean_c) / std_c`` (``NormalizeIntensityd``): ``Preprocessing``'s rule;
* ``sigmoid`` of the logits, then bilinear (half-pixel, ``align_corners=False``) upsampling to
  the source's (H, W), as ``Predictor.native_prob``; saved as ``OUTPUT/<file stem>_prob.npy``
  (float32 (H, W) in [0, 1]). Thresholding and ``min_area`` are not applied: the rule is in the
  metadata's ``pneumoseg.postprocess``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pneumoseg
from pneumoseg.errors import DataError
from pneumoseg.inference.onnx import ExportError, _MaskLogits, exported_postprocess
from pneumoseg.models.preprocessing import Preprocessing
from pneumoseg.training.run_folder import load_run

__all__ = ["MONAI_TESTED", "bundle_metadata", "export_monai_bundle", "inference_config"]

#: The MONAI version the round trip (tests/inference/test_monai_bundle.py) was checked with; the
#: metadata's ``monai_version`` when monai is not installed where the bundle is exported.
MONAI_TESTED = "1.6.1"
_VERIFY_ATOL = 1e-4  #: largest |p_torchscript - p_torch| accepted on a random input
_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"

# A refusal inside a config expression (a lambda cannot ``raise``): one ValueError line.
_REFUSE = "$lambda message: (_ for _ in ()).throw(ValueError(message))"
# Pillow modes that are 8-bit gray after ``convert('L')`` as pneumoseg reads them (alpha dropped).
_PIL_GRAY = ("$lambda im: im if im.mode == 'L' else im.convert('L') if im.mode in ('1', 'P', 'LA', 'RGB', 'RGBA') "
             "else @refuse(f'{getattr(im, \"filename\", \"image\")}: Pillow mode {im.mode} is not an 8-bit gray "
             "or colour image; this bundle reproduces pneumoseg for 8-bit PNG/JPEG only "
             "(convert it, or use `pneumoseg predict`)')")
_DICOM_TAG = "$lambda x, tag: (x.meta.get(tag) or {}).get('Value', [None])[0]"
# Stored values are pneumoseg's display pixels only for these files (see the module docstring).
_DICOM_CHECK = (
    "$lambda x: x if '00280004' not in x.meta or ("
    "x.ndim == 2 and @dicom_tag(x, '00280004') == 'MONOCHROME2' and int(@dicom_tag(x, '00280101') or 8) <= 8 "
    "and int(@dicom_tag(x, '00280103') or 0) == 0 and '00281050' not in x.meta and '00283010' not in x.meta "
    "and float(@dicom_tag(x, '00281053') or 1) == 1 and float(@dicom_tag(x, '00281052') or 0) == 0) "
    "else @refuse(f\"{x.meta.get('filename_or_obj')}: only single-frame 8-bit MONOCHROME2 DICOM without VOI LUT, "
    "window or rescale is read as pneumoseg reads it (MONAI's PydicomReader applies no windowing or "
    "MONOCHROME1 inversion); use `pneumoseg predict`\")"
)


def _resize_expression(size: int) -> str:
    """uint8-valued float (1, H, W) -> float32 (1, S, S) by OpenCV INTER_AREA on uint8, as pneumoseg."""
    return (f"$lambda x: x if tuple(x.shape[-2:]) == ({size}, {size}) else torch.from_numpy(cv2.resize("
            f"x[0].numpy().astype(numpy.uint8), ({size}, {size}), interpolation=cv2.INTER_AREA))[None].float()")


def inference_config(prep: Preprocessing) -> dict[str, Any]:
    """``configs/inference.json`` for a network fed as ``prep`` says (see the module docstring).

    Inputs: every .png/.jpg/.jpeg/.dcm/.dicom file directly in ``dataset_dir`` (override ``datalist``
    with a list of paths); outputs: ``output_dir/<stem>_prob.npy``.
    """
    image = "image"
    transforms: list[dict[str, Any]] = [
        {"_target_": "Lambdad", "keys": image, "func": "$lambda path: @load_image(path, reader=@dicom_reader "
         "if path.lower().endswith(('.dcm', '.dicom')) else @image_reader)"},
        {"_target_": "Lambdad", "keys": image, "func": "@dicom_check"},
        {"_target_": "EnsureChannelFirstd", "keys": image, "channel_dim": "no_channel"},
        {"_target_": "Lambda", "func": "$lambda d: dict(d, source_shape=tuple(d['image'].shape[-2:]))"},
        {"_target_": "Lambdad", "keys": image, "func": _resize_expression(prep.size)},
    ]
    if prep.in_channels > 1:
        transforms.append({"_target_": "RepeatChanneld", "keys": image, "repeats": prep.in_channels})
    transforms += [
        {"_target_": "ScaleIntensityRanged", "keys": image, "a_min": 0.0, "a_max": 255.0, "b_min": 0.0,
         "b_max": 1.0, "clip": False},
        {"_target_": "NormalizeIntensityd", "keys": image, "subtrahend": list(prep.mean), "divisor": list(prep.std),
         "channel_wise": True},
        {"_target_": "EnsureTyped", "keys": image, "dtype": "$torch.float32", "track_meta": False},
    ]
    return {
        "imports": ["$import glob", "$import os", "$import cv2", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/sample'",
        "datalist": "$sorted(f for f in glob.glob(os.path.join(@dataset_dir, '*')) "
                    "if f.lower().endswith(('.png', '.jpg', '.jpeg', '.dcm', '.dicom')))",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location=@device)",
        "network": "$@network_def.eval()",
        "refuse": _REFUSE,
        "dicom_tag": _DICOM_TAG,
        "dicom_check": _DICOM_CHECK,
        # The reader is given per file: LoadImage with a reader list would, when one refuses a
        # file, silently try MONAI's default readers (column-major PIL, unconverted modes).
        "load_image": {"_target_": "LoadImage", "image_only": True},
        "image_reader": {"_target_": "PILReader", "reverse_indexing": False, "converter": _PIL_GRAY},
        "dicom_reader": {"_target_": "PydicomReader", "swap_ij": False, "prune_metadata": False},
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': f, 'filename': f} for f in @datalist]",
                    "transform": "@preprocessing"},
        "inferer": {"_target_": "SimpleInferer"},
        "save_probabilities": "$lambda d: numpy.save(os.path.join(@output_dir, os.path.splitext("
                              "os.path.basename(d['filename']))[0] + '_prob.npy'), "
                              "d['pred'][0].cpu().numpy().astype(numpy.float32)) or d",
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "Lambda", "func": "$lambda d: dict(d, pred=torch.nn.functional.interpolate("
             "d['pred'][None].float(), size=d['source_shape'], mode='bilinear', align_corners=False)[0].clamp(0, 1))"},
            {"_target_": "Lambda", "func": "@save_probabilities"},
        ]},
        "initialize": ["$torch.set_grad_enabled(False)", "$os.makedirs(@output_dir, exist_ok=True)"],
        "run": ["$[@postprocessing(dict(d, pred=@inferer(d['image'][None].to(@device), @network)[0].cpu())) "
                "for d in @dataset]"],
    }


def _version(package: str, default: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return default


def bundle_metadata(model_name: str, checkpoint: str, prep: Preprocessing, postprocess: dict[str, Any],
                    normalize: str) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's mandatory keys, the tensor formats and a ``pneumoseg`` entry."""
    s, c = prep.size, prep.in_channels
    return {
        "schema": _SCHEMA,
        "version": pneumoseg.__version__,
        "changelog": {pneumoseg.__version__: f"exported by pneumoseg {pneumoseg.__version__}"},
        "monai_version": _version("monai", MONAI_TESTED),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"opencv-python-headless": _version("opencv-python-headless", "4.9"),
                                      "pillow": _version("pillow", "10"), "pydicom": _version("pydicom", "3.0")},
        "name": f"pneumoseg {model_name}",
        "task": "Pneumothorax segmentation of chest radiographs (2D)",
        "description": (f"pneumoseg {model_name} ({checkpoint} checkpoint): per-pixel pneumothorax probabilities "
                        "for a chest radiograph (PNG/JPEG, or 8-bit MONOCHROME2 DICOM), at the source resolution"),
        "authors": "pneumoseg",
        "copyright": "see the training run's data and licence",
        "data_source": "see the training run (pneumoseg train)",
        "data_type": "png, jpeg, dicom",
        "image_classes": f"{c} channel(s): the 8-bit gray radiograph at {s} x {s} (OpenCV INTER_AREA), "
                         f"(x / 255 - mean) / std with mean {list(prep.mean)}, std {list(prep.std)}",
        "pred_classes": "1 channel: pneumothorax probability (sigmoid of the logits), bilinear to the source size",
        "intended_use": "Research; not validated for diagnostic use",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "DX", "num_channels": c,
                "spatial_shape": [s, s], "dtype": "float32", "value_range": [], "is_patch_data": False,
                "channel_def": {str(i): "gray radiograph" for i in range(c)}}},
            "outputs": {"pred": {
                "type": "image", "format": "classes", "num_channels": 1, "spatial_shape": [s, s],
                "dtype": "float32", "value_range": [], "is_patch_data": False,
                "channel_def": {"0": "pneumothorax (logits; sigmoid gives the probability)"}}},
        },
        "pneumoseg": {"model": model_name, "checkpoint": checkpoint, "normalize": normalize,
                      "preprocessing": prep.to_dict(), "postprocess": postprocess, "output": "logits"},
    }


def _readme(meta: dict[str, Any]) -> str:
    p = meta["pneumoseg"]
    pp = p["postprocess"]
    return f"""# {meta['name']} (MONAI bundle exported by pneumoseg {meta['version']})

{meta['description']}.

## Run

    python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
        --bundle_root . --dataset_dir INPUT_FOLDER --output_dir OUTPUT_FOLDER

Every `.png`, `.jpg`, `.jpeg`, `.dcm` and `.dicom` file directly in `INPUT_FOLDER` gives
`OUTPUT_FOLDER/<file stem>_prob.npy`: float32 (H, W) probabilities in [0, 1] at the file's own
resolution. Needs MONAI, PyTorch, OpenCV, Pillow and pydicom (no pneumoseg).

## What it reproduces

`pneumoseg predict` with this run alone, checkpoint `{p['checkpoint']}`, no TTA: the 8-bit gray
image resized to {p['preprocessing']['size']} x {p['preprocessing']['size']} with OpenCV's INTER_AREA,
`(x / 255 - mean) / std` per channel (mean {p['preprocessing']['mean']}, std {p['preprocessing']['std']}),
`models/model.ts` (mask logits), sigmoid, bilinear upsampling to the source size.
pneumoseg then thresholds at {pp.get('threshold')} and drops components under {pp.get('min_area')}
source pixels; this bundle writes the probabilities only.

## What differs

- PNG/JPEG: Pillow decodes and converts colour to gray (pneumoseg: OpenCV); colour images may
  differ by 1 grey level. 16-bit PNGs are refused (pneumoseg scales them to 8 bits).
- DICOM: MONAI's PydicomReader applies no VOI LUT, window or MONOCHROME1 inversion, so only
  single-frame 8-bit unsigned MONOCHROME2 files without VOI LUT, window or rescale are accepted
  (others are refused with one line). JPEG-compressed files may decode 1 grey level apart
  (pydicom's decoder here, Pillow's in pneumoseg).
- Outputs are named by file stem (pneumoseg names DICOM outputs by SOPInstanceUID).
"""


def _trace(net: torch.nn.Module, in_channels: int, size: int, run_dir: object) -> torch.jit.ScriptModule:
    """TorchScript of the mask logits; ExportError when it cannot be traced or disagrees with torch."""
    wrapped = _MaskLogits(net).eval()
    example = torch.zeros(1, in_channels, size, size)
    x = torch.randn(2, in_channels, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings are noise for users
            traced = torch.jit.trace(wrapped, example)
            diff = float((torch.sigmoid(traced(x)) - torch.sigmoid(wrapped(x))).abs().max())
    except Exception as exc:  # the tracer raises many types
        raise ExportError(f"{run_dir}: the network could not be traced to TorchScript "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not diff <= _VERIFY_ATOL:
        raise ExportError(f"{run_dir}: TorchScript probabilities differ from PyTorch's by {diff:.2e} "
                          f"(allowed {_VERIFY_ATOL:g}) on a random batch")
    return traced  # type: ignore[no-any-return]


def export_monai_bundle(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                        checkpoint: str = "best") -> Path:
    """Write the MONAI bundle of a run's ``checkpoint`` to ``out_dir`` (see the module docstring).

    ``out_dir`` must not exist or be an empty folder (DataError otherwise); the bundle is built in
    a temporary folder beside it and renamed into place, so a failed export leaves nothing.
    The TorchScript is checked against PyTorch on a random batch (ExportError above 1e-4).
    Returns ``out_dir``.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty folder; choose a new bundle folder")
    net, cfg = load_run(run_dir, checkpoint)
    prep = Preprocessing.from_config(cfg)
    traced = _trace(net, prep.in_channels, prep.size, run_dir)
    postprocess = exported_postprocess(run_dir, checkpoint, cfg).to_dict()
    meta = bundle_metadata(cfg.model.name, checkpoint, prep, postprocess, cfg.data.normalize)
    meta_text = json.dumps(meta, indent=2) + "\n"
    config_text = json.dumps(inference_config(prep), indent=2) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for sub in ("configs", "models", "docs"):
            (tmp / sub).mkdir()
        (tmp / "configs" / "metadata.json").write_text(meta_text, encoding="utf-8")
        (tmp / "configs" / "inference.json").write_text(config_text, encoding="utf-8")
        (tmp / "docs" / "README.md").write_text(_readme(meta), encoding="utf-8")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+ deprecates TorchScript; MONAI reads it
            torch.jit.save(traced, os.fspath(tmp / "models" / "model.ts"),
                           _extra_files={"metadata.json": meta_text, "inference.json": config_text})
        torch.save(net.state_dict(), tmp / "models" / "model.pt")
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
