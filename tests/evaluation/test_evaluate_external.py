"""evaluate --data: external validation on labelled DICOM / PNG folders, scored like a split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pneumoseg.cli.main import app
from pneumoseg.io.images import read_mask, write_png
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.inference.inputs import load_input
from pneumoseg.inference.outputs import image_score
from pneumoseg.inference.predictor import Predictor
from pneumoseg.io.rle import read_annotations, rle_encode

runner = CliRunner()
SPLIT_FILES = ("metrics.json", "per_image.csv", "best.png", "worst.png", "cases.csv")


@pytest.fixture(scope="module")
def external(synth_data: Path, tmp_path_factory: pytest.TempPathFactory,
             one_thread: None) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """8 DICOMs (one renamed and labelled by its stem only), a non-DICOM .dcm and an unsafe PNG name."""
    root = tmp_path_factory.mktemp("external")
    data = root / "hospital_b"
    data.mkdir()
    ann = read_annotations(synth_data / "train-rle.csv")
    dicoms = sorted((synth_data / "dicom").glob("*.dcm"))[:8]
    truths: dict[str, np.ndarray] = {}
    rows = []
    for k, path in enumerate(dicoms):
        uid = path.stem
        h, w = load_input(path).pixels.shape
        truth = ann.mask(uid, h, w)
        image_id = "case_a" if k == 0 else uid  # k = 0: labelled by file stem, not by its SOPInstanceUID
        shutil.copy(path, data / f"{image_id}.dcm")
        truths[image_id] = np.ascontiguousarray(truth)
        rows.append((image_id, rle_encode(truth)))
    (data / "broken.dcm").write_bytes(b"not a dicom")
    write_png(data / "bad name!.png", np.zeros((32, 32), np.uint8))
    csv = root / "labels.csv"
    csv.write_text("ImageId, EncodedPixels\n" + "".join(f"{i}, {r}\n" for i, r in rows))
    return data, csv, truths


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2 * float((a & b).sum()) / float(total)


def test_external_dicom_set_scores_every_labelled_image(trained_run: Path, external: tuple[Path, Path, dict],
                                                        tmp_path: Path) -> None:
    data, csv, truths = external
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(data), "--rle", str(csv), "--device", "cpu",
                                 "--no-progress", "--report"])
    assert result.exit_code == 2, result.output  # two bad files: the rest is scored
    out = run / "eval" / "hospital_b"
    for name in SPLIT_FILES:
        assert (out / name).is_file(), name
    assert "broken.dcm" in result.output and "bad name!.png" in result.output
    assert "by SOPInstanceUID: 7, by file stem: 1" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "hospital_b" and metrics["source"] == "external"
    assert metrics["matched_by"] == {"uid": 7, "stem": 1} and len(metrics["failures"]) == 2
    assert metrics["n_images"] == 8 and metrics["resolution"] == "native"
    per_image = pd.read_csv(out / "per_image.csv", dtype={"image_id": str}).set_index("image_id")
    assert sorted(per_image.index) == sorted(truths)
    # independent reference: the predictor on each file, Dice by hand against the CSV's masks
    predictor = Predictor([run], device="cpu")
    for image_id, truth in truths.items():
        pred = predictor.predict_batch([load_input(data / f"{image_id}.dcm")])[0]
        mask = read_mask(out / "pred_masks" / f"{image_id}.png")
        np.testing.assert_array_equal(mask, pred.mask)
        assert mask.shape == truth.shape
        row = per_image.loc[image_id]
        assert row["dice"] == pytest.approx(_dice(pred.mask, truth), abs=1e-5)
        assert row["score"] == pytest.approx(image_score(pred.prob), abs=1e-5)
        assert row["probability"] == pytest.approx(float(pred.prob.max()), abs=1e-5)
    assert metrics["dice_kaggle"] == pytest.approx(per_image["dice"].mean(), abs=1e-6)
    assert "(data set hospital_b)" in (run / "report.html").read_text()


def test_png_labels_give_the_same_scores(trained_run: Path, external: tuple[Path, Path, dict],
                                         tmp_path: Path) -> None:
    data, _, truths = external
    images, masks = tmp_path / "images", tmp_path / "masks"
    for image_id, truth in truths.items():
        write_png(images / f"{image_id}.png", load_input(data / f"{image_id}.dcm").pixels)
        write_png(masks / f"{image_id}.png", truth.astype(np.uint8) * 255)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    pp = PostProcess(threshold=0.3)
    from pneumoseg.evaluation.external import evaluate_external

    res = evaluate_external(Predictor([run], device="cpu", postprocess=pp), run, images, png_dir=masks,
                            name="pngs", progress=False)
    assert res.failures == [] and res.metrics["matched_by"] == {"uid": 0, "stem": len(truths)}
    dcm = evaluate_external(Predictor([run], device="cpu", postprocess=pp), run, data,
                            rle=None, png_dir=masks, name="dcms", progress=False)
    assert len(dcm.failures) == 2
    a = pd.read_csv(run / "eval" / "pngs" / "per_image.csv", dtype={"image_id": str}).set_index("image_id")
    b = pd.read_csv(run / "eval" / "dcms" / "per_image.csv", dtype={"image_id": str}).set_index("image_id")
    pd.testing.assert_frame_equal(a.sort_index(), b.sort_index())


def test_external_name_cannot_overwrite_a_split(trained_run: Path, external: tuple[Path, Path, dict]) -> None:
    data, csv, _ = external
    result = runner.invoke(app, ["evaluate", str(trained_run), "--data", str(data), "--rle", str(csv),
                                 "--name", "test", "--device", "cpu"])
    assert result.exit_code == 2 and "--name" in result.output
    result = runner.invoke(app, ["evaluate", str(trained_run), "--data", str(data), "--device", "cpu"])
    assert result.exit_code == 2 and "--rle CSV or --png-dir DIR" in result.output


def test_compare_gallery_shows_the_external_sets_images(trained_run: Path, external: tuple[Path, Path, dict],
                                                        tmp_path: Path) -> None:
    """Issue 21: `compare` of runs evaluated with --data showed "image not found" in every case (it looked
    in the run's cache). The eval folder records where each image came from (images.csv) and its labels."""
    import base64
    import io
    import re

    from PIL import Image

    from pneumoseg.evaluation.external import evaluate_external
    from pneumoseg.reporting.compare import compare_runs, render_html

    data, csv, truths = external
    runs = []
    for name, threshold in (("a", 0.05), ("b", 0.3)):
        run = tmp_path / name
        shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
        evaluate_external(Predictor([run], device="cpu", postprocess=PostProcess(threshold=threshold)), run, data,
                          rle=csv, progress=False)
        runs.append(run)
    images = pd.read_csv(runs[0] / "eval" / "hospital_b" / "images.csv", dtype={"image_id": str})
    assert sorted(images["image_id"]) == sorted(truths)
    assert (images["pixel_spacing_mm"] > 0).all()  # the DICOMs' Pixel Spacing
    c = compare_runs(runs, "hospital_b", n_boot=50, n_cases=3)
    assert c.bucket_unit == "mm²"
    cases = render_html(c).split('<section id="cases">')[1]
    n_rows = cases.count('<td class="id">')
    pngs = re.findall(r'<img alt="[^"]+" src="data:image/png;base64,([^"]+)"', cases)
    assert n_rows > 0 and len(pngs) == 2 * n_rows
    assert "image not found" not in cases and "no image" not in cases
    thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(pngs[0]))))
    assert thumb.shape[:2] == (200, 200) and thumb.std() > 5  # the 256 px phantom, not a blank tile
    # labels no longer reachable: every case says why it has no image
    metrics_path = runs[1] / "eval" / "hospital_b" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["labels"] = str(tmp_path / "moved.csv")
    metrics_path.write_text(json.dumps(metrics))
    cases = render_html(compare_runs(runs, "hospital_b", n_boot=50, n_cases=3)).split('<section id="cases">')[1]
    assert cases.count(f"no image: labels {tmp_path / 'moved.csv'} (recorded in {metrics_path}) not found") == n_rows
