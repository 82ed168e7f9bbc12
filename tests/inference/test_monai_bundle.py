"""MONAI bundle export: MONAI's own runner reproduces Predictor's probabilities at the source resolution.

The round trip exports an untrained seeded U-Net (64 px, 3 channels, ImageNet normalisation: the
path with RepeatChannel and per-channel mean/std), runs the bundle with MONAI's runner in a fresh
process (offline, no pneumoseg import there) on PNG, colour PNG and DICOM inputs, and compares each
``<stem>_prob.npy`` with ``Predictor.predict_batch``'s ``prob``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pneumoseg.cli.main import app
from pneumoseg.config import load_config
from pneumoseg.data.synth import generate_dataset
from pneumoseg.errors import DataError
from pneumoseg.inference.monai_bundle import export_monai_bundle
from pneumoseg.inference.inputs import InputImage, load_input
from pneumoseg.inference.predictor import Predictor
from pneumoseg.io.images import write_png
from pneumoseg.training.run_folder import init_run
from tests.shared_data import SIIM

pytest.importorskip("monai")

#: Inputs read to the same uint8 pixels as pneumoseg (uncompressed DICOM, 8-bit gray PNG): float
#: rounding only (measured ~1e-8).
EXACT_TOL = 1e-5
#: Inputs decoded by other libraries (Pillow's colour->gray, pydicom's JPEG decoder): some pixels
#: may be 1 grey level apart. Measured: colour PNG 1.2e-7, the challenge's JPEG DICOM 1.9e-3.
DECODER_TOL = 1e-2

runner = CliRunner()


def _monai_run(bundle: Path, inputs: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """``python -m monai.bundle run`` (needs ``fire``; else the same ``monai.bundle.run`` it calls)."""
    args = {"config_file": str(bundle / "configs/inference.json"), "meta_file": str(bundle / "configs/metadata.json"),
            "bundle_root": str(bundle), "dataset_dir": str(inputs), "output_dir": str(out)}
    if importlib.util.find_spec("fire") is not None:
        cmd = [sys.executable, "-m", "monai.bundle", "run", *[f"--{k}={v}" for k, v in args.items()]]
    else:
        cmd = [sys.executable, "-c", f"import sys, monai.bundle; monai.bundle.run(**{args!r}); "
               "assert not [m for m in sys.modules if m.startswith('pneumoseg')], 'pneumoseg was imported'"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)


def _inputs(folder: Path, synth: Path) -> dict[str, float]:
    """Write the round trip's inputs; file name -> tolerance."""
    folder.mkdir()
    dicom = sorted((synth / "dicom").glob("*.dcm"))[0]
    (folder / "synth.dcm").write_bytes(dicom.read_bytes())  # 8-bit MONOCHROME2, uncompressed: 256 px
    gray = load_input(dicom).pixels
    # Non-square, non-integer factors (256 -> 64 from 300 x 250): OpenCV INTER_AREA in both.
    write_png(folder / "odd.png", cv2.resize(gray, (300, 250), interpolation=cv2.INTER_LINEAR))
    tinted = np.stack([gray, (gray * 0.8).astype(np.uint8), (gray * 0.6 + 40).astype(np.uint8)], axis=-1)
    cv2.imwrite(str(folder / "colour.png"), tinted)
    tolerances = {"synth.dcm": EXACT_TOL, "odd.png": EXACT_TOL, "colour.png": DECODER_TOL}
    if (SIIM / "dicom").is_dir():  # real challenge files: 1024 px; the DICOM is JPEG Baseline
        (folder / "real_png.png").write_bytes(sorted((SIIM / "png/images").glob("*.png"))[0].read_bytes())
        (folder / "real_dicom.dcm").write_bytes(sorted((SIIM / "dicom").glob("*.dcm"))[0].read_bytes())
        tolerances |= {"real_png.png": EXACT_TOL, "real_dicom.dcm": DECODER_TOL}
    return tolerances


def _spread_head(run: Path, image: np.ndarray, width: float = 2.0) -> None:
    """Scale the untrained head around its median logit on ``image`` so that the 5-95 % logits span ``width``.

    PyTorch's init gives nearly flat maps (probabilities 0.47-0.49 on a radiograph), which would
    hide a mismatch; scaled, they spread over about 0.27-0.73, whatever the random init.
    """
    prob = Predictor([run], device="cpu").predict_batch([InputImage("ref", image, run)])[0].prob.astype(np.float64)
    logit = np.log(prob / (1 - prob))
    low, high = np.percentile(logit, [5, 95])
    factor = width / max(float(high - low), 1e-6)
    ckpt = run / "checkpoints" / "best.ckpt"
    state = torch.load(ckpt, weights_only=False)
    sd = state["state_dict"]
    median_wx = float(np.median(logit)) - float(sd["net.head.bias"][0])
    sd["net.head.weight"] = sd["net.head.weight"] * factor
    sd["net.head.bias"] = torch.tensor([-median_wx * factor])
    torch.save(state, ckpt)


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, dict[str, float]]:
    tmp = tmp_path_factory.mktemp("monai")
    cfg = load_config(None, ["model.name=unet", "data.size=64", "data.in_channels=3", "data.normalize=imagenet",
                             "model.output_prior=null"])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        run = init_run(cfg, tmp / "run")
    synth = tmp / "synth"
    generate_dataset(synth, n=1, size=256, seed=3, progress=False)
    _spread_head(run, load_input(next((synth / "dicom").glob("*.dcm"))).pixels)
    bundle = export_monai_bundle(run, tmp / "bundle")
    tolerances = _inputs(tmp / "inputs", synth)
    out = tmp / "out"
    proc = _monai_run(bundle, tmp / "inputs", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, bundle, out, tolerances


def test_bundle_layout_and_metadata(round_trip: tuple[Path, Path, Path, dict[str, float]]) -> None:
    _, bundle, _, _ = round_trip
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "task", "description", "authors",
                "copyright", "network_data_format"):
        assert meta[key], key
    image = meta["network_data_format"]["inputs"]["image"]
    assert (image["num_channels"], image["spatial_shape"], image["dtype"]) == (3, [64, 64], "float32")
    assert meta["pneumoseg"]["preprocessing"] == {"size": 64, "in_channels": 3, "mean": [0.485, 0.456, 0.406],
                                                  "std": [0.229, 0.224, 0.225]}
    config = json.loads((bundle / "configs/inference.json").read_text())
    assert {"bundle_root", "device", "dataset_dir", "network_def", "preprocessing", "dataset", "inferer",
            "postprocessing", "run"} <= config.keys()
    extra = {"metadata.json": "", "inference.json": ""}
    net = torch.jit.load(str(bundle / "models/model.ts"), _extra_files=extra)
    assert json.loads(extra["metadata.json"]) == meta and json.loads(extra["inference.json"]) == config
    assert tuple(net(torch.zeros(2, 3, 64, 64)).shape) == (2, 1, 64, 64)
    assert (bundle / "models/model.pt").is_file() and (bundle / "docs/README.md").is_file()


def test_monai_runner_matches_predictor(round_trip: tuple[Path, Path, Path, dict[str, float]]) -> None:
    run, bundle, out, tolerances = round_trip
    predictor = Predictor([run], device="cpu")
    assert sorted(p.name for p in out.glob("*_prob.npy")) == sorted(f"{Path(n).stem}_prob.npy" for n in tolerances)
    for name, tol in tolerances.items():
        expected = predictor.predict_batch([load_input(bundle.parent / "inputs" / name)])[0].prob
        got = np.load(out / f"{Path(name).stem}_prob.npy")
        assert got.dtype == np.float32 and got.shape == expected.shape, name
        assert expected.max() - expected.min() > 0.2, name  # the maps are not flat
        assert np.abs(got - expected).max() <= tol, (name, float(np.abs(got - expected).max()))


@pytest.mark.parametrize("kind", ["png16", "dicom_window"])
def test_bundle_refuses_inputs_it_cannot_read_as_pneumoseg(round_trip: tuple[Path, Path, Path, dict[str, float]],
                                                           tmp_path: Path, kind: str) -> None:
    from monai.bundle import ConfigParser
    import pydicom

    _, bundle, _, _ = round_trip
    if kind == "png16":
        path = tmp_path / "deep.png"
        cv2.imwrite(str(path), np.full((32, 32), 4000, np.uint16))
        expected = "Pillow mode I"
    else:
        path = tmp_path / "windowed.dcm"
        ds = pydicom.dcmread(sorted((bundle.parent / "synth" / "dicom").glob("*.dcm"))[0])
        ds.WindowCenter, ds.WindowWidth = 100, 200
        ds.save_as(path)
        expected = "only single-frame 8-bit MONOCHROME2 DICOM"
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs/inference.json"))
    parser["bundle_root"] = str(bundle)
    preprocessing = parser.get_parsed_content("preprocessing")
    with pytest.raises(Exception) as info:
        preprocessing({"image": str(path), "filename": str(path)})
    chain, exc = [], info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any(expected in text and str(path) in text for text in chain), chain


def test_cli_writes_only_the_bundle_and_refuses_a_used_folder(round_trip: tuple[Path, Path, Path, dict[str, float]],
                                                             tmp_path: Path) -> None:
    run, _, _, _ = round_trip
    result = runner.invoke(app, ["export", str(run), "--monai-bundle", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b/models/model.ts").is_file() and not (run / "model.onnx").exists()
    again = runner.invoke(app, ["export", str(run), "--monai-bundle", str(tmp_path / "b")])
    assert again.exit_code == 2 and "not an empty folder" in again.output
    with pytest.raises(DataError, match="not an empty folder"):
        export_monai_bundle(run, tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary folder left behind
