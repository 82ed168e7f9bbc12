"""ONNX export: parity with PyTorch (real and synthetic images), metadata round trip, predict --backend onnx."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

import pneumoseg
from pneumoseg.cli.main import app
from pneumoseg.errors import DataError
from pneumoseg.inference.onnx import OnnxModel, export_onnx, read_onnx_metadata
from pneumoseg.io.images import read_mask
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.inference.inputs import load_input
from pneumoseg.inference.predictor import Predictor, choose_backend
from pneumoseg.training.run_folder import load_run
from tests.shared_data import SIIM

runner = CliRunner()


@pytest.fixture(scope="module")
def unet_onnx(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(trained_run, tmp_path_factory.mktemp("onnx") / "unet.onnx")


def _images(synth_data: Path, n_real: int) -> list[np.ndarray]:
    """3 synthetic images and, when the real sample is there, ``n_real`` challenge radiographs."""
    paths = sorted((synth_data / "dicom").glob("*.dcm"))[:3] + sorted((SIIM / "dicom").glob("*.dcm"))[:n_real]
    return [load_input(p).pixels for p in paths]


def _assert_parity(run: Path, onnx_file: Path, images: list[np.ndarray]) -> None:
    torch_probs = Predictor([run], device="cpu", batch_size=2).probs_at_model_size(images)
    onnx_probs = Predictor([run], device="cpu", batch_size=2, backend="onnx", onnx=[onnx_file]).probs_at_model_size(images)
    assert onnx_probs.shape == torch_probs.shape == (len(images), *torch_probs.shape[1:])
    assert np.abs(onnx_probs - torch_probs).max() < 1e-3


def test_unet_parity_on_real_and_synthetic_images(trained_run: Path, unet_onnx: Path, synth_data: Path) -> None:
    _assert_parity(trained_run, unet_onnx, _images(synth_data, n_real=12))


def test_untrained_unet_resnet34_at_256_parity(synth_data: Path, tmp_path: Path) -> None:
    from pneumoseg.config import load_config
    from pneumoseg.training.run_folder import init_run

    run = init_run(load_config(None, ["model.name=unet-resnet34", "data.size=256"]), tmp_path / "run")
    path = export_onnx(run, tmp_path / "r34.onnx", verify=False)  # parity is checked below
    assert [d.dim_value or d.dim_param for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim][1:] == [
        1, 256, 256]
    _assert_parity(run, path, _images(synth_data, n_real=3))


def test_metadata_round_trip(trained_run: Path, unet_onnx: Path) -> None:
    _, cfg = load_run(trained_run)
    meta = read_onnx_metadata(unet_onnx)
    assert (meta.model_name, meta.size, meta.in_channels, meta.normalize) == ("unet", 64, 1, "gray")
    assert (meta.mean, meta.std) == ([0.5], [0.25])
    assert meta.version == pneumoseg.__version__ and meta.output == "logits" and meta.checkpoint == "best"
    # No rule tuned for this run: the config's default, with its unit.
    assert meta.postprocess == PostProcess(cfg.postprocess.threshold, cfg.postprocess.min_area).to_dict()
    assert meta.postprocess["area_unit"] == "source_px"
    props = {p.key: p.value for p in onnx.load(unet_onnx).metadata_props}
    assert json.loads(props["pneumoseg.postprocess"]) == meta.postprocess and props["pneumoseg.size"] == "64"
    model = OnnxModel(unet_onnx, threads=1)  # dynamic batch: 1 and 3 images
    for n in (1, 3):
        assert model(np.zeros((n, 1, 64, 64), np.float32)).shape == (n, 1, 64, 64)
    with pytest.raises(DataError, match="does not fit"):
        model(np.zeros((1, 1, 32, 32), np.float32))
    rebuilt = meta.config()
    assert (rebuilt.model.name, rebuilt.data.size, rebuilt.data.normalize) == ("unet", 64, "gray")


def test_cli_export_then_predict_onnx_backend_matches_torch(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = runner.invoke(app, ["export", str(run), "--checkpoint", "best"])  # default: RUN/model.onnx
    assert result.exit_code == 0, result.output
    assert (run / "model.onnx").is_file() and not list(run.glob("*.data"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in sorted((synth_data / "dicom").glob("*.dcm"))[:4]:
        shutil.copy(p, inputs / p.name)
    common = ["predict", str(run), str(inputs), "--no-progress", "--device", "cpu", "--no-overlays"]
    outs = {}
    for name, extra in {"torch": ["--backend", "torch"], "onnx": ["--backend", "onnx"],
                        "onnx_file": ["--backend", "onnx", "--onnx", str(run / "model.onnx")]}.items():
        result = runner.invoke(app, [*common, "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        outs[name] = tmp_path / name
    for mask_file in sorted((outs["torch"] / "masks").glob("*.png")):
        ref = read_mask(mask_file)
        for name in ("onnx", "onnx_file"):
            assert np.count_nonzero(read_mask(outs[name] / "masks" / mask_file.name) != ref) <= 5


def test_default_backend_uses_a_matching_run_onnx_on_cpu_else_torch_with_the_reason(
        trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    from pneumoseg.util.digest import file_sha256

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in sorted((synth_data / "dicom").glob("*.dcm"))[:3]:
        shutil.copy(p, inputs / p.name)
    common = ["predict", str(run), str(inputs), "--no-progress", "--device", "cpu", "--no-overlays"]

    def predict(name: str, *extra: str) -> str:
        result = runner.invoke(app, [*common, "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        return result.output

    assert f"backend: torch (no {run / 'model.onnx'}; `pneumoseg export {run}` writes it)" in predict("none")
    export_onnx(run, run / "model.onnx")
    assert read_onnx_metadata(run / "model.onnx").checkpoint_sha256 == file_sha256(run / "checkpoints" / "best.ckpt")
    out = predict("auto")
    assert "backend: onnx (" in out and "fingerprint matches" in out and "onnxruntime" in out
    predict("torch", "--backend", "torch")
    for mask_file in sorted((tmp_path / "torch" / "masks").glob("*.png")):  # within the export's parity
        assert np.count_nonzero(read_mask(tmp_path / "auto" / "masks" / mask_file.name) != read_mask(mask_file)) <= 5
    # Same post-processing as torch (the run's config, not the copy in the ONNX metadata).
    assert (Predictor([run], device="cpu", backend="auto").postprocess
            == Predictor([run], device="cpu").postprocess)
    # The checkpoint changes after the export (training resumed): torch, and the reason printed.
    best = run / "checkpoints" / "best.ckpt"
    state = torch.load(best, map_location="cpu", weights_only=True)
    torch.save({**state, "resumed": True}, best)
    out = predict("stale")
    assert "backend: torch (" in out and "was exported from another checkpoint" in out and "fingerprint" in out
    assert "re-export with `pneumoseg export" in out
    # Not on CPU: torch, said so (the choice only; no GPU needed).
    backend, files, why = choose_backend([run], "best", "cuda")
    assert (backend, files) == ("torch", []) and "CPU only" in why
    # Without onnxruntime: torch, and why.
    with pytest.MonkeyPatch.context() as mp:
        import importlib.util

        real = importlib.util.find_spec
        mp.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
        assert "onnxruntime is not installed" in choose_backend([run], "best", "cpu")[2]


#: what a one-image predict on the ONNX backend does not need (issue 18: the plain script's imports only)
NOT_FOR_ONE_IMAGE = ("pandas", "sklearn", "highdicom", "segmentation_models_pytorch", "timm", "onnx",
                     "albumentations", "lightning", "torchmetrics")


def test_one_image_onnx_predict_imports_only_what_it_needs(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    export_onnx(run, run / "model.onnx")
    image = sorted((synth_data / "dicom").glob("*.dcm"))[0]
    argv = ["pneumoseg", "predict", str(run), str(image), "--out", str(tmp_path / "out"), "--no-progress"]
    code = (f"import sys; sys.argv={argv!r}\nfrom pneumoseg.cli.main import app\ntry:\n    app()\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('MODS', ' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"COLUMNS": "200", "NO_COLOR": "1", "PATH": "", "HF_HUB_OFFLINE": "1",
                               "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "backend: onnx" in done.stdout
    assert (tmp_path / "out" / "masks" / f"{image.stem}.png").is_file()
    loaded = set(next(r for r in done.stdout.splitlines() if r.startswith("MODS ")).split()[1:])
    assert "onnxruntime" in loaded and not loaded & set(NOT_FOR_ONE_IMAGE)


def test_bad_onnx_inputs_fail_cleanly(trained_run: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a readable ONNX") as caught:
        read_onnx_metadata(junk)
    assert "\n" not in str(caught.value)
    bare = tmp_path / "bare.onnx"
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])  # a valid model, no pneumoseg metadata
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [value],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), bare)
    with pytest.raises(DataError, match="not a pneumoseg ONNX export"):
        read_onnx_metadata(bare)
    inputs = tmp_path / "in"
    inputs.mkdir()
    result = runner.invoke(app, ["predict", str(trained_run), str(inputs), "--out", str(tmp_path / "o"),
                                 "--backend", "onnx"])
    assert result.exit_code == 2 and "model.onnx" in result.output
    result = runner.invoke(app, ["predict", str(trained_run), str(inputs), "--out", str(tmp_path / "o"),
                                 "--onnx", str(bare)])
    assert result.exit_code == 2 and "--backend onnx" in result.output
