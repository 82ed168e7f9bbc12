"""predict / tune / evaluate on a briefly trained run: files, round trips, TTA, ensembles, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pneumoseg.cli.main import app
from pneumoseg.errors import DataError
from pneumoseg.io.images import read_image, read_mask, write_png
from pneumoseg.scoring.metrics import dice_kaggle
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.scoring.tuned import find_tuned
from pneumoseg.inference.folder import predict_to_folder
from pneumoseg.inference.inputs import find_inputs, load_input
from pneumoseg.inference.predictor import Predictor
from pneumoseg.io.rle import read_annotations, rle_decode_absolute

runner = CliRunner()


def test_predict_folder_writes_masks_overlays_and_decodable_submission(trained_run: Path, synth_data: Path,
                                                                         tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    dicoms = sorted((synth_data / "dicom").glob("*.dcm"))[:3]
    for p in dicoms:
        (inputs / "sub").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, inputs / "sub" / p.name)
    png = load_input(dicoms[0]).pixels[:, :200]  # a non-square PNG input
    write_png(inputs / "plain.png", png)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(trained_run), str(inputs), "--out", str(out), "--no-progress",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    ids = [p.stem for p in dicoms] + ["plain"]
    preds = pd.read_csv(out / "predictions.csv", dtype={"image_id": str})
    assert sorted(preds["image_id"]) == sorted(ids)
    sub = read_annotations(out / "submission.csv")
    assert sorted(sub) == sorted(ids) and all(len(v) == 1 for v in sub.values())
    for image_id in ids:
        mask = read_mask(out / "masks" / f"{image_id}.png")
        h, w = (256, 200) if image_id == "plain" else (256, 256)
        assert mask.shape == (h, w)
        np.testing.assert_array_equal(sub.mask(image_id, h, w), mask)
        assert read_image(out / "overlays" / f"{image_id}.png").shape == (h, w)
        row = preds.set_index("image_id").loc[image_id]
        assert row["area_px"] == mask.sum() and 0 <= row["probability"] <= 1


def test_absolute_rle_submission_round_trip(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    predictor = Predictor([trained_run], device="cpu", postprocess=PostProcess(threshold=0.2))
    inputs = sorted((synth_data / "dicom").glob("*.dcm"))[:4]
    res = predict_to_folder(predictor, inputs, tmp_path, rle_format="absolute", progress=False)
    sub = pd.read_csv(res.submission_csv, dtype=str)
    for image_id, rle in zip(sub["ImageId"], sub["EncodedPixels"], strict=True):
        mask = read_mask(tmp_path / "masks" / f"{image_id}.png")
        np.testing.assert_array_equal(rle_decode_absolute(rle, *mask.shape), mask)


def test_tta_is_flip_symmetric_and_ensemble_of_one_run_is_the_run(trained_run: Path, synth_data: Path) -> None:
    image = load_input(sorted((synth_data / "dicom").glob("*.dcm"))[0]).pixels
    tta = Predictor([trained_run], device="cpu", tta=True)
    p = tta.probs_at_model_size([image, image[:, ::-1].copy()])
    np.testing.assert_allclose(p[1], p[0][:, ::-1], atol=1e-5)
    plain = Predictor([trained_run], device="cpu").probs_at_model_size([image])
    assert not np.allclose(p[0], plain[0], atol=1e-6)  # TTA really changes something
    twice = Predictor([trained_run, trained_run], device="cpu").probs_at_model_size([image])
    np.testing.assert_allclose(twice, plain, atol=1e-6)


def test_corrupt_input_is_reported_and_the_rest_predicted(trained_run: Path, synth_data: Path,
                                                          tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = sorted((synth_data / "dicom").glob("*.dcm"))[0]
    shutil.copy(good, inputs / good.name)
    (inputs / "broken.dcm").write_bytes(good.read_bytes()[:2000])
    (inputs / "notes.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(trained_run), str(inputs), "--out", str(out), "--no-progress",
                                 "--device", "cpu"])
    assert result.exit_code == 2
    assert "broken.dcm" in result.output and "notes.png" in result.output
    assert "2 input(s) could not be predicted" in result.output
    assert [p.stem for p in (out / "masks").iterdir()] == [good.stem]
    assert len(pd.read_csv(out / "submission.csv")) == 1


def test_run_without_checkpoint_is_one_clear_error(trained_run: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(trained_run / "config.yaml", bare / "config.yaml")
    (tmp_path / "in").mkdir()
    result = runner.invoke(app, ["predict", str(bare), str(tmp_path / "in"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no checkpoint" in result.output and len(result.output.strip().splitlines()) == 1
    with pytest.raises(DataError, match=r"no \.dcm, \.png or \.jpg"):
        find_inputs(bare)


def test_tune_then_evaluate(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = runner.invoke(app, ["tune", str(run), "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "untuned default" in result.output and "gain" in result.output
    tuned = find_tuned([run], "best", tta=False)
    assert tuned is not None and tuned.split == "val" and tuned.dice_kaggle >= tuned.default_dice_kaggle
    table = pd.read_csv(run / "tune.csv")
    assert len(table) > 10 and table["dice_kaggle"].iloc[0] == table["dice_kaggle"].max()
    predictor = Predictor([run], device="cpu")
    assert predictor.postprocess == tuned.rule and predictor.postprocess_source.startswith("tuned on val")
    # The rule was tuned without TTA: with --tta, predict falls back to the default and says so.
    assert Predictor([run], device="cpu", tta=True).postprocess_source.startswith("config default")

    result = runner.invoke(app, ["evaluate", str(run), "--split", "test", "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    ev = run / "eval" / "test"
    metrics = json.loads((ev / "metrics.json").read_text())
    for key in ("dice_kaggle", "dice_empty_baseline", "dice_positive", "image_auc", "sensitivity", "specificity",
                "fpr_empty", "n_images", "n_positive"):
        assert key in metrics
    assert metrics["resolution"] == "native" and metrics["postprocess"] == tuned.rule.to_dict()
    assert metrics["tta"] is False and isinstance(metrics["postprocess"], dict)
    per_image = pd.read_csv(ev / "per_image.csv", dtype={"image_id": str})
    assert len(per_image) == metrics["n_images"] and per_image["has_truth"].sum() == metrics["n_positive"]
    assert per_image["dice"].mean() == pytest.approx(metrics["dice_kaggle"], abs=1e-4)
    assert metrics["dice_empty_baseline"] == pytest.approx(1 - per_image["has_truth"].mean())
    empty_pred = per_image["pred_area_px"] == 0
    empty_truth = per_image["has_truth"] == 0
    assert (per_image.loc[empty_pred & empty_truth, "dice"] == 1).all()
    assert (per_image.loc[~empty_pred & empty_truth, "dice"] == 0).all()
    for name in ("best.png", "worst.png"):
        assert read_image(ev / name).shape[0] > 100
    # Another split goes to its own folder and leaves the test results alone.
    result = runner.invoke(app, ["evaluate", str(run), "--split", "val", "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((ev / "metrics.json").read_text()) == metrics
    assert json.loads((run / "eval" / "val" / "metrics.json").read_text())["split"] == "val"


def test_evaluate_metrics_match_an_independent_recomputation(trained_run: Path, synth_cache: Path,
                                                             tmp_path: Path) -> None:
    """Recompute per-image Dice from the written masks and the cache's full-resolution truth."""
    from pneumoseg.evaluation.evaluate import evaluate_run

    predictor = Predictor([trained_run], device="cpu", postprocess=PostProcess(threshold=0.3))
    metrics = evaluate_run(predictor, trained_run, "val", progress=False, out_dir=tmp_path / "ev")
    per_image = pd.read_csv(tmp_path / "ev" / "per_image.csv", dtype={"image_id": str})
    scores = []
    for image_id in per_image["image_id"]:
        truth = read_mask(synth_cache / "truth" / f"{image_id}.png")
        pred = read_mask(tmp_path / "ev" / "pred_masks" / f"{image_id}.png")
        assert pred.shape == truth.shape
        total = int(pred.sum()) + int(truth.sum())
        scores.append(1.0 if total == 0 else 2 * int((pred & truth).sum()) / total)
    assert metrics["dice_kaggle"] == pytest.approx(np.mean(scores), abs=1e-4)
    assert dice_kaggle(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4), bool)) == 1.0


def test_predict_writes_sr_and_sc_and_area_in_mm2(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    import pydicom

    from pneumoseg.io.dicom.read import pixel_spacing_mm

    inputs = sorted((synth_data / "dicom").glob("*.dcm"))[:2]
    predictor = Predictor([trained_run], device="cpu", postprocess=PostProcess(threshold=0.05))
    res = predict_to_folder(predictor, inputs, tmp_path / "o", progress=False, dicom_seg=True, dicom_sr=True,
                            dicom_sc=True)
    assert not res.failures and res.n_sr == res.n_sc == 2
    preds = pd.read_csv(tmp_path / "o" / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
    for path in inputs:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        image_id = header.SOPInstanceUID
        sr = pydicom.dcmread(tmp_path / "o" / "sr" / f"{image_id}.dcm")
        sc = pydicom.dcmread(tmp_path / "o" / "sc" / f"{image_id}.dcm")
        assert sr.Modality == "SR" and sc.pixel_array.shape == (header.Rows, header.Columns, 3)
        spacing = pixel_spacing_mm(header)
        row = preds.loc[image_id]
        if spacing is None:
            assert pd.isna(row["area_mm2"])
        else:
            (dy, dx), _ = spacing
            assert row["area_mm2"] == pytest.approx(row["area_px"] * dy * dx, rel=1e-3, abs=0.01)


@pytest.mark.parametrize(("prob", "fraction", "expected"), [
    (np.zeros((10, 10)), 0.001, 0.0),                       # k = max(1, 0.1) = 1 pixel
    (np.arange(100, dtype=float).reshape(10, 10) / 100, 0.05, (95 + 96 + 97 + 98 + 99) / 500),  # top 5
    (np.full((4, 4), 0.25), 0.5, 0.25),
])
def test_image_score_is_the_mean_of_the_top_pixels(prob: np.ndarray, fraction: float, expected: float) -> None:
    from pneumoseg.inference.outputs import image_score

    assert image_score(prob, fraction) == pytest.approx(expected)


def test_predictions_csv_has_a_discriminating_score_and_labelled_overlays(trained_run: Path, synth_data: Path,
                                                                          tmp_path: Path) -> None:
    from pneumoseg.io.overlay import overlay
    from pneumoseg.inference.folder import PREDICTIONS_HEADER
    from pneumoseg.inference.outputs import image_score

    predictor = Predictor([trained_run], device="cpu")
    inputs = sorted((synth_data / "dicom").glob("*.dcm"))[:3]
    seen = {}
    res = predict_to_folder(predictor, inputs, tmp_path, progress=False,
                            on_prediction=lambda image, pred: seen.update({pred.image_id: (image, pred)}))
    preds = pd.read_csv(res.predictions_csv, dtype={"image_id": str}).set_index("image_id")
    assert list(preds.reset_index().columns) == list(PREDICTIONS_HEADER)
    for image_id, (image, pred) in seen.items():
        row = preds.loc[image_id]
        assert row["score"] == pytest.approx(image_score(pred.prob), abs=1e-6)
        assert row["probability"] == pytest.approx(float(pred.prob.max()), abs=1e-6)
        assert 0 <= row["score"] <= row["probability"] <= 1
        written = read_image(tmp_path / "overlays" / f"{image_id}.png")
        plain = read_image_rgb_gray(overlay(image.pixels, pred.mask))
        assert written.shape == plain.shape                        # same size as the input
        assert not np.array_equal(written[:12], plain[:12])        # the id / score band at the top
        np.testing.assert_array_equal(written[40:-40], plain[40:-40])  # the image itself untouched


def read_image_rgb_gray(rgb: np.ndarray) -> np.ndarray:
    """What read_image returns for an RGB PNG of ``rgb`` (round trip through the PNG writer)."""
    import tempfile

    from pneumoseg.io.overlay import write_rgb_png

    with tempfile.TemporaryDirectory() as tmp:
        write_rgb_png(Path(tmp) / "x.png", rgb)
        return read_image(Path(tmp) / "x.png")


def test_the_inference_path_imports_no_training_library() -> None:
    """A one-image `predict` pays no training imports: torchmetrics (the streaming metrics) and Lightning
    stay out of the predictor and the predict command (they cost seconds of start-up per command)."""
    import subprocess
    import sys

    code = ("import sys, pneumoseg.inference.predictor, pneumoseg.cli.predict, pneumoseg.service.inference; "
            "print(' '.join(m for m in ('torchmetrics', 'lightning', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "", out.stdout
