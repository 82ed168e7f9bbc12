"""`pneumoseg compare` on fabricated eval folders and caches (nothing is trained or predicted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from pneumoseg.cli.main import app
from pneumoseg.reporting.compare import compare_runs, write_comparison
from pneumoseg.errors import DataError
from pneumoseg.io.images import write_png
from pneumoseg.scoring.metrics import dice_per_image
from pneumoseg.scoring.stats import METRIC_NAMES
from tests.helpers.browser import chromium, needs_chromium, save_screenshot

NATIVE, MODEL = 64, 32
N_IMAGES = 24


def _disc(rng: np.random.Generator, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:NATIVE, :NATIVE]
    cy, cx = rng.uniform(18, 46, 2)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


@pytest.fixture
def study(tmp_path: Path) -> dict[str, object]:
    """A cache of 24 images (1/3 with a pneumothorax of growing size) and the truth masks."""
    rng = np.random.default_rng(0)
    cache = tmp_path / "cache"
    ids = [f"1.2.3.{k}" for k in range(N_IMAGES)]
    truths = np.zeros((N_IMAGES, NATIVE, NATIVE), bool)
    for k in range(0, N_IMAGES, 3):
        truths[k] = _disc(rng, 3 + k)
    for k, image_id in enumerate(ids):
        write_png(cache / "images" / f"{image_id}.png", rng.integers(40, 200, (MODEL, MODEL), dtype=np.uint8))
        write_png(cache / "truth" / f"{image_id}.png", truths[k])
    return {"root": tmp_path, "cache": cache, "ids": ids, "truths": truths, "rng": rng}


def make_run(study: dict[str, object], name: str, preds: np.ndarray, split: str = "test",
             keep: slice | None = None, metrics_extra: dict[str, object] | None = None) -> Path:
    """A run folder as `pneumoseg train` + `evaluate` would leave it, from predicted masks."""
    root, ids, truths = Path(study["root"]), list(study["ids"]), np.asarray(study["truths"])
    if keep is not None:
        ids, truths, preds = ids[keep], truths[keep], preds[keep]
    run = root / name
    ev = run / "eval" / split
    config = {"data": {"cache": str(study["cache"]), "size": MODEL, "in_channels": 1}, "model": {"name": "unet"}}
    (run).mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    history = pd.DataFrame({"epoch": [0, 1, 2], "val_dice_kaggle": [0.5, 0.6, 0.7], "val_loss": [1.0, 0.8, 0.7],
                            "train_loss": [1.1, 0.9, 0.7], "train_img_per_s": [10.0, 12.0, 11.0],
                            "epoch_time_s": [30.0, 30.0, 30.0]})
    history.to_csv(run / "history.csv", index=False)
    for image_id, mask in zip(ids, preds, strict=True):
        if mask.any():
            write_png(ev / "pred_masks" / f"{image_id}.png", mask)
    has_truth = truths.reshape(len(ids), -1).any(1)
    per_image = pd.DataFrame({
        "image_id": ids, "has_truth": has_truth.astype(int),
        "truth_area_px": truths.reshape(len(ids), -1).sum(1), "pred_area_px": preds.reshape(len(ids), -1).sum(1),
        "probability": np.where(preds.reshape(len(ids), -1).any(1), 0.9, 0.2),
        "dice": dice_per_image(preds, truths).round(5),
        "pixel_spacing_mm": 0.5,
    })
    per_image["truth_area_mm2"] = per_image["truth_area_px"] * 0.25
    ev.mkdir(parents=True, exist_ok=True)
    per_image.to_csv(ev / "per_image.csv", index=False)
    metrics = {"split": split, "resolution": "native", "model": "unet", "postprocess": {"threshold": 0.5},
               "n_images": len(ids), "n_params": 1234567, "predict_seconds": 2.4, **(metrics_extra or {})}
    (ev / "metrics.json").write_text(json.dumps(metrics))
    return run


def _shifted(truths: np.ndarray, dx: int) -> np.ndarray:
    return np.roll(truths, dx, axis=2)


def test_run_compared_with_itself_differs_by_zero(study: dict[str, object], tmp_path: Path) -> None:
    run = make_run(study, "unet-a", _shifted(np.asarray(study["truths"]), 2))
    c = compare_runs([run, run], "test", n_boot=300)
    for m in METRIC_NAMES:
        p = c.paired["B"][m]
        assert (p.diff.value, p.diff.low, p.diff.high, p.p_value) == (0.0, 0.0, 0.0, 1.0), m
        assert c.ci["A"][m] == c.ci["B"][m]
    assert c.wilcoxon["B"] == 1.0 and c.cases["disagree"] == []
    html_path, md_path = write_comparison(c, tmp_path / "out" / "cmp.html")
    page = html_path.read_text()
    assert page.count('+0.0000<br><span class="note">[+0.0000, +0.0000]</span>') == len(METRIC_NAMES)
    assert 'src="http' not in page and "<script src" not in page
    assert "+0.0000 [+0.0000, +0.0000]" in md_path.read_text()


def test_known_per_image_difference_is_covered(study: dict[str, object]) -> None:
    truths = np.asarray(study["truths"])
    a = make_run(study, "a", _shifted(truths, 3))
    b = make_run(study, "b", _shifted(truths, 1))
    # Per-image differences are known from the masks (independent of compare's CSV reading).
    da, db = dice_per_image(_shifted(truths, 3), truths), dice_per_image(_shifted(truths, 1), truths)
    pos = truths.reshape(N_IMAGES, -1).any(1)
    c = compare_runs([a, b], "test", n_boot=1000)
    kag, dpos = c.paired["B"]["dice_kaggle"], c.paired["B"]["dice_positive"]
    assert kag.diff.value == pytest.approx((db - da).mean(), abs=1e-4)
    assert dpos.diff.value == pytest.approx((db - da)[pos].mean(), abs=1e-4)
    assert kag.diff.covers((db - da).mean()) and dpos.diff.low > 0 and dpos.p_value < 0.01
    assert c.ci["A"]["dice_positive"].value == pytest.approx(da[pos].mean(), abs=1e-4)
    assert 0 < c.wilcoxon["B"] < 0.05
    # Disagreement: largest spread of per-image Dice first.
    spread = np.abs(db - da)
    assert c.cases["disagree"][0] == list(study["ids"])[int(np.argmax(spread))]
    assert c.runs[0].facts()["parameters"] == 1234567
    assert c.runs[0].facts()["latency_ms"] == pytest.approx(100.0)
    assert c.runs[0].facts()["train_time_s"] == 90.0


def test_size_buckets_use_mm2_and_match_pandas(study: dict[str, object]) -> None:
    truths = np.asarray(study["truths"])
    a = make_run(study, "a", _shifted(truths, 2))
    b = make_run(study, "b", np.zeros_like(truths))
    c = compare_runs([a, b], "test", n_boot=200, size_edges=(100.0, 400.0))
    assert c.bucket_unit == "mm²"
    df = pd.read_csv(a / "eval/test/per_image.csv")
    area = df["truth_area_mm2"]
    expected = {"empty": df[area == 0], "small": df[(area > 0) & (area < 100)],
                "medium": df[(area >= 100) & (area < 400)], "large": df[area >= 400]}
    for (_, row), (key, part) in zip(c.buckets.iterrows(), expected.items(), strict=True):
        assert row["bucket"].startswith(key) and row["images"] == len(part)
        assert row["A"].value == pytest.approx(part["dice"].mean())
        assert np.isnan(row["B"].value) or key == "empty" or row["B"].value == 0.0
    assert c.baseline == pytest.approx(1 - np.mean(truths.reshape(N_IMAGES, -1).any(1)))


def test_different_image_sets_are_refused_unless_allowed(study: dict[str, object]) -> None:
    truths = np.asarray(study["truths"])
    a = make_run(study, "a", _shifted(truths, 2))
    b = make_run(study, "b", _shifted(truths, 1), keep=slice(0, 20))
    with pytest.raises(DataError, match="pass --allow-different-sets to compare on the 20 common images") as err:
        compare_runs([a, b], "test", n_boot=50)
    assert "\n" not in str(err.value) and "4 only in the latter" in str(err.value)
    c = compare_runs([a, b], "test", allow_different_sets=True, n_boot=50)
    assert len(c.image_ids) == 20 and c.notes


def test_missing_evaluation_and_other_truth_are_refused(study: dict[str, object]) -> None:
    truths = np.asarray(study["truths"])
    a = make_run(study, "a", _shifted(truths, 2))
    with pytest.raises(DataError, match=r"run `pneumoseg evaluate .*a --split val` first"):
        compare_runs([a, a], "val")
    b = make_run(study, "b", _shifted(truths, 2))
    df = pd.read_csv(b / "eval/test/per_image.csv", dtype={"image_id": str})
    df.loc[1, "has_truth"] = 1
    df.to_csv(b / "eval/test/per_image.csv", index=False)
    with pytest.raises(DataError, match=r"ImageId 1\.2\.3\.1 has has_truth 1 but 0"):
        compare_runs([a, b], "test")
    df.drop(columns="dice").to_csv(b / "eval/test/per_image.csv", index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) dice"):
        compare_runs([a, b], "test")
    df = pd.read_csv(a / "eval/test/per_image.csv", dtype={"image_id": str})
    df.loc[2, "image_id"] = "../../etc/passwd"
    df.to_csv(a / "eval/test/per_image.csv", index=False)
    with pytest.raises(DataError, match=r"per_image\.csv: ImageId '\.\./\.\./etc/passwd' cannot name"):
        compare_runs([a, a], "test")
    with pytest.raises(DataError, match="at least two runs"):
        compare_runs([a], "test")


def test_parameters_counted_from_the_config_when_not_recorded(study: dict[str, object]) -> None:
    from pneumoseg.cli.models import count_parameters

    truths = np.asarray(study["truths"])
    a = make_run(study, "a", truths)
    metrics = json.loads((a / "eval/test/metrics.json").read_text())
    del metrics["n_params"]
    (a / "eval/test/metrics.json").write_text(json.dumps(metrics))
    c = compare_runs([a, a], "test", n_boot=20)
    assert c.runs[0].facts()["parameters"] == count_parameters("unet")


def test_cli_prints_the_table_and_writes_the_page(study: dict[str, object], tmp_path: Path) -> None:
    truths = np.asarray(study["truths"])
    a = make_run(study, "a", _shifted(truths, 3))
    b = make_run(study, "b", _shifted(truths, 1))
    out = tmp_path / "pages" / "ab.html"
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--split", "test", "--out", str(out),
                                      "--n-boot", "200"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "dice_kaggle" in result.output and "B − A" in result.output and "Wilcoxon" in result.output
    assert out.is_file() and out.with_suffix(".md").is_file()
    c = make_run(study, "c", truths, keep=slice(0, 12))
    result = CliRunner().invoke(app, ["compare", str(a), str(c), "--out", str(out)])
    assert result.exit_code == 2 and "--allow-different-sets" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_page_header_says_the_training_data_is_unknown_without_a_record(study: dict[str, object],
                                                                        tmp_path: Path) -> None:
    truths = np.asarray(study["truths"])
    a, b = make_run(study, "a", truths), make_run(study, "b", _shifted(truths, 1))  # no provenance.json
    out = tmp_path / "ab.html"
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--split", "test", "--out", str(out),
                                      "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    header = out.read_text().split("</header>")[0]
    assert "Training data unknown" in header and "not for clinical use" in header


@needs_chromium
def test_page_renders_in_headless_chromium(study: dict[str, object], tmp_path: Path) -> None:
    truths = np.asarray(study["truths"])
    runs = [make_run(study, n, _shifted(truths, dx)) for n, dx in (("a", 3), ("b", 1), ("c", 0))]
    html_path, _ = write_comparison(compare_runs(runs, "test", n_boot=200, n_cases=3), tmp_path / "cmp.html")
    with chromium(tmp_path / "profile") as drv:
        drv.get(html_path.as_uri())
        state = drv.execute_script("""
            const imgs = Array.from(document.images).filter(i => !i.closest('#lightbox'));  // the shared template's click-to-enlarge
            const metrics = document.querySelector('#metrics table');
            return {title: document.title, sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
                    metricRows: metrics.tBodies[0].rows.length, metricCols: metrics.tHead.rows[0].cells.length,
                    images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
                    external: imgs.filter(i => !i.src.startsWith('data:')).length,
                    caseRows: document.querySelectorAll('table.cases tbody tr').length,
                    resources: performance.getEntriesByType('resource').length};
        """)
        save_screenshot(drv, tmp_path, "compare.png")
    assert state["title"] == "pneumoseg compare: a vs b vs c"
    assert state["sections"] == ["runs", "metrics", "sizes", "curves", "cases"]
    assert state["metricRows"] == len(METRIC_NAMES) and state["metricCols"] == 1 + 3 + 2 * 2
    # curves + 3 runs per case row; every image decodes and none is fetched from anywhere
    assert state["caseRows"] >= 6 and state["images"] == 1 + 3 * state["caseRows"]
    assert state["loaded"] == state["images"] and state["external"] == 0 and state["resources"] == 0


def _small_run(root: Path, name: str, dice: np.ndarray, has_truth: np.ndarray) -> Path:
    """An evaluated run of len(dice) images from per-image Dice alone (prediction non-empty where Dice > 0)."""
    ev = root / name / "eval" / "test"
    ev.mkdir(parents=True)
    pred = ((dice > 0) & has_truth) * 100
    pd.DataFrame({"image_id": [f"img{k:02d}" for k in range(len(dice))], "has_truth": has_truth.astype(int),
                  "truth_area_px": has_truth * 500, "pred_area_px": pred, "probability": np.where(pred, 0.9, 0.2),
                  "dice": dice}).to_csv(ev / "per_image.csv", index=False)
    (ev / "metrics.json").write_text(json.dumps({"split": "test"}))
    return root / name


def test_twelve_images_no_degenerate_interval_and_an_exact_p(tmp_path: Path) -> None:
    """Issue 21: on 12 images the stratified bootstrap said "0.3333 [0.3333, 0.3333]" and "p < 0.001"
    beside its own Wilcoxon p of 0.0625 (A predicts nothing; B finds 5 of the 8 positives)."""
    has_truth = np.array([True] * 8 + [False] * 4)
    dice_a = np.where(has_truth, 0.0, 1.0)
    dice_b = dice_a.copy()
    dice_b[:5] = [0.5, 0.6, 0.7, 0.8, 0.9]
    a, b = _small_run(tmp_path, "a", dice_a, has_truth), _small_run(tmp_path, "b", dice_b, has_truth)
    out = tmp_path / "cmp.html"
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(out)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "0.333 [0.333, 0.333]" not in text and "< 0.001" not in text
    assert "0.333 (n too small: 12 images)" in text and "0.062 (exact)" in text
    assert "Wilcoxon p = 0.0625" in text
    assert text.count("note: compared on 12 images (< 20):") == 1
    md = out.with_suffix(".md").read_text()
    assert "[0.3333, 0.3333]" not in md and "< 0.001" not in md and "0.062 (exact)" in md
    c = compare_runs([a, b], "test")
    assert c.paired["B"]["dice_kaggle"].exact and c.paired["B"]["dice_kaggle"].p_value == pytest.approx(c.wilcoxon["B"])
    assert all(np.isnan(c.ci[r][m].low) and c.ci[r][m].note for r in "AB" for m in METRIC_NAMES)


def _with_images_csv(run: Path, spacing: list[float | None]) -> None:
    """Replace per_image.csv's mm² columns by the images.csv evaluate writes (source, pixel spacing)."""
    ev = run / "eval" / "test"
    per_image = pd.read_csv(ev / "per_image.csv", dtype={"image_id": str})
    per_image.drop(columns=["pixel_spacing_mm", "truth_area_mm2"], errors="ignore").to_csv(ev / "per_image.csv", index=False)
    pd.DataFrame({"image_id": per_image["image_id"], "source": "x.dcm",
                  "pixel_spacing_mm": spacing}).to_csv(ev / "images.csv", index=False)


def test_size_buckets_in_mm2_from_the_recorded_pixel_spacing(study: dict[str, object], tmp_path: Path) -> None:
    """Issue 21: buckets were in px although the DICOMs had Pixel Spacing (evaluate never recorded it)."""
    truths = np.asarray(study["truths"])
    a, b = make_run(study, "a", _shifted(truths, 2)), make_run(study, "b", truths)
    _with_images_csv(a, [0.5] * N_IMAGES)
    _with_images_csv(b, [0.5] * N_IMAGES)
    c = compare_runs([a, b], "test", n_boot=50, size_edges=(100.0, 400.0))
    assert c.bucket_unit == "mm²"
    area = truths.reshape(N_IMAGES, -1).sum(1) * 0.25
    assert c.buckets["images"].tolist() == [int((area == 0).sum()), int(((area > 0) & (area < 100)).sum()),
                                            int(((area >= 100) & (area < 400)).sum()), int((area >= 400).sum())]
    html_path, md_path = write_comparison(c, tmp_path / "cmp.html")
    sizes = html_path.read_text().split('<section id="sizes">')[1].split("</section>")[0]
    assert "Dice by pneumothorax size (mm²)" in sizes and "bucket (truth area, mm²)" in sizes
    assert "mm² (from the images&#x27; Pixel Spacing)" in sizes
    assert "## Dice by pneumothorax size (mm²)" in md_path.read_text()
    spacing: list[float | None] = [0.5] * N_IMAGES
    spacing[3] = None  # one positive without a spacing: px for all
    _with_images_csv(a, spacing)
    c = compare_runs([a, b], "test", n_boot=50)
    assert c.bucket_unit == "px"
    assert "source pixels (no Pixel Spacing known)" in write_comparison(c, tmp_path / "px.html")[0].read_text()


def test_case_gallery_says_why_a_case_has_no_image(study: dict[str, object], tmp_path: Path) -> None:
    """Issue 21: a case without an image said only "image not found"; now it names what is missing."""
    truths = np.asarray(study["truths"])
    a, b = make_run(study, "a", _shifted(truths, 2)), make_run(study, "b", truths)
    c = compare_runs([a, b], "test", n_boot=50, n_cases=2)
    page = write_comparison(c, tmp_path / "ok.html")[0].read_text()
    assert "no image" not in page and "image not found" not in page
    shutil.rmtree(Path(study["cache"]))
    page = write_comparison(c, tmp_path / "gone.html")[0].read_text()
    cases = page.split('<section id="cases">')[1]
    n_cells = 2 * cases.count('<td class="id">')
    assert n_cells and cases.count(f"no image: cache {study['cache']} (the run&#x27;s data.cache) not found from "
                                   "here") == n_cells
