"""report: evaluate's case thumbnails, the self-contained HTML report and its Markdown summary."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
import pandas as pd
import pytest
from typer.testing import CliRunner

from pneumoseg.cli.main import app
from pneumoseg.evaluation.cases import CASE_CATEGORIES, case_order
from pneumoseg.io.images import read_image
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.scoring.tuned import TunedRule, save_tuned
from pneumoseg.reporting.figures import curve_points
from pneumoseg.reporting.report import METRICS, write_report

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def evaluated(trained_run: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """A copy of the trained run after ``evaluate --report`` (threshold lowered: mixed outcomes)."""
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(trained_run, run)
    save_tuned(TunedRule(PostProcess(threshold=0.3), TunedRule.key_of([run], "best", False)[0], "best", False,
                         "val", 1, 0.5, 0.5))
    result = runner.invoke(app, ["evaluate", str(run), "--split", "val", "--no-progress", "--device", "cpu",
                                 "--report"])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    return run


def _section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start:page.index("</section>", start)]


def test_case_order_picks_the_right_images() -> None:
    #              0     1     2     3     4     5     6
    per_image = pd.DataFrame({
        "dice":          [1.0, 0.9, 0.0, 0.0, 0.5, 1.0, 0.0],
        "truth_area_px": [0,   40,  0,   30,  20,  0,   90],
        "pred_area_px":  [0,   38,  5,   0,   10,  0,   0],
        "probability":   [0.1, 0.9, 0.6, 0.2, 0.8, 0.3, 0.4],
    })
    order = {k: v.tolist() for k, v in case_order(per_image, n_cases=2).items()}
    assert order == {
        "best": [1, 4],             # Dice > 0 among images with truth or prediction
        "worst": [6, 3],            # lowest Dice, larger truth first
        "false_positive": [2],      # empty truth, non-empty prediction
        "false_negative": [6, 3],   # truth, empty prediction, largest first
    }
    assert tuple(order) == CASE_CATEGORIES


def test_evaluate_saves_thumbnails_and_cases_csv(evaluated: Path) -> None:
    ev = evaluated / "eval" / "val"
    cases = pd.read_csv(ev / "cases.csv", dtype={"image_id": str})
    per_image = pd.read_csv(ev / "per_image.csv", dtype={"image_id": str}).set_index("image_id")
    assert list(cases.columns) == ["category", "image_id", "dice", "truth_area_px", "pred_area_px",
                                   "probability", "score", "file"]
    assert set(cases["category"]) <= set(CASE_CATEGORIES) and len(cases) > 0
    assert cases.groupby("category").size().max() <= 8
    for row in cases.itertuples():
        thumb = read_image(ev / row.file)  # grayscale read of the RGB overlay
        assert thumb.shape == (256, 256)
        assert row.file == f"cases/{row.category}/{row.image_id}.png"
        assert row.dice == pytest.approx(per_image.loc[row.image_id, "dice"])
    fp = cases[cases["category"] == "false_positive"]
    assert (per_image.loc[fp["image_id"], "has_truth"] == 0).all() and (fp["pred_area_px"] > 0).all()
    fn = cases[cases["category"] == "false_negative"]
    assert (per_image.loc[fn["image_id"], "has_truth"] == 1).all() and (fn["pred_area_px"] == 0).all()
    n_fp = int(((per_image["has_truth"] == 0) & (per_image["pred_area_px"] > 0)).sum())
    assert len(fp) == min(8, n_fp)
    stored = {p.relative_to(ev).as_posix() for p in (ev / "cases").rglob("*.png")}
    assert stored == set(cases["file"])


def test_report_is_self_contained_and_complete(evaluated: Path) -> None:
    page = (evaluated / "report.html").read_text()
    ev = evaluated / "eval" / "val"
    assert 'src="http' not in page and "<link" not in page and "<script src" not in page
    imgs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert imgs and all(src.startswith("data:image/png;base64,") for src in imgs)
    metrics = json.loads((ev / "metrics.json").read_text())
    metrics_html = _section(page, "metrics")
    for key in METRICS:
        value = metrics[key]
        assert key in metrics_html
        assert (f"{value:.4f}" if value == value else "n/a") in metrics_html
    per_image = pd.read_csv(ev / "per_image.csv", dtype={"image_id": str})
    table = _section(page, "per-image")
    assert table.count("<tr") - 1 == len(per_image)
    assert all(image_id in table for image_id in per_image["image_id"])
    cases = pd.read_csv(ev / "cases.csv", dtype={"image_id": str})
    for category in CASE_CATEGORIES:
        assert f'id="gallery-{category}"' in page
    galleries = _section(page, "galleries")
    fp_html = galleries[galleries.index('id="gallery-false_positive"'):galleries.index('id="gallery-false_negative"')]
    shown = re.findall(r'<img class="zoom" alt="([^"]+)"', fp_html)
    assert shown == cases.loc[cases["category"] == "false_positive", "image_id"].tolist()
    assert set(shown) <= set(per_image.loc[per_image["has_truth"] == 0, "image_id"])
    for anchor in ("data", "training", "postprocess", "config"):
        assert f'<section id="{anchor}">' in page
    assert "positive_rate" in _section(page, "data")  # the session cache is reachable
    assert "cache:" in _section(page, "config")


def test_markdown_summary_and_report_command(evaluated: Path, tmp_path: Path) -> None:
    metrics = json.loads((evaluated / "eval" / "val" / "metrics.json").read_text())
    md = (evaluated / "report.md").read_text()
    assert f"{metrics['dice_kaggle']:.4f}" in md and str((evaluated / "report.html").resolve()) in md
    if metrics["n_images"] < 20:  # issue 21: the value with the reason it has no interval
        assert f"{metrics['dice_kaggle']:.4f} (n too small: {metrics['n_images']} images)" in md
    (evaluated / "curves.png").rename(tmp_path / "curves.png")  # redrawn from history.csv
    try:
        out = tmp_path / "out" / "r.html"
        result = runner.invoke(app, ["report", str(evaluated), "--out", str(out)])
        assert result.exit_code == 0, result.output
    finally:
        (tmp_path / "curves.png").rename(evaluated / "curves.png")
    assert out.is_file() and (tmp_path / "out" / "r.md").is_file()
    assert 'alt="training curves" src="data:image/png;base64,' in out.read_text()


def test_report_header_says_what_the_model_was_trained_on(evaluated: Path, tmp_path: Path) -> None:
    header = (evaluated / "report.html").read_text().split("</header>")[0]
    assert "Trained on synthetic data" in header and "not for clinical use" in header
    assert "Trained on synthetic data" in (evaluated / "report.md").read_text().split("## Metrics")[0]
    old = tmp_path / "old"  # a run trained before provenance.json: the report still renders, and says so
    shutil.copytree(evaluated, old)
    (old / "provenance.json").unlink()
    write_report(old)
    header = (old / "report.html").read_text().split("</header>")[0]
    assert "Training data unknown" in header and "not for clinical use" in header


def test_missing_eval_is_one_clear_error(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run / "config.yaml", run / "config.yaml")
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert "metrics.json" in result.output and f"pneumoseg evaluate {run}" in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless chromium")
def test_headless_browser_sorts_the_per_image_table(evaluated: Path, tmp_path: Path) -> None:
    page = (evaluated / "report.html").read_text()
    click = ("<script>var t=document.querySelector('#per-image table');"
             "Array.from(t.tHead.rows[0].cells).find(c=>c.textContent==='dice').click();</script></body>")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", click))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", "--dump-dom",
             probe.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    table = _section(dom, "per-image")
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table[table.index("<tbody>"):], flags=re.S)
    dice = [float(re.findall(r"<td[^>]*>([^<]*)</td>", r)[heads.index("dice")]) for r in rows]
    per_image = pd.read_csv(evaluated / "eval" / "val" / "per_image.csv")
    assert len(dice) == len(per_image)
    assert dice == sorted(dice) and np.allclose(sorted(dice), np.sort(per_image["dice"]), atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless chromium")
def test_headless_browser_shows_the_training_data_in_the_header(evaluated: Path, tmp_path: Path) -> None:
    """Chromium renders the report: the header says what the model was trained on and "not for clinical
    use"; a screenshot of the first screen is kept (tmp_path/report-header.png)."""
    shot = tmp_path / "report-header.png"
    with tempfile.TemporaryDirectory() as profile:
        common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}"]
        dom = subprocess.run([*common, "--dump-dom", (evaluated / "report.html").as_uri()], capture_output=True,
                             text=True, timeout=120, check=True).stdout
        subprocess.run([*common, "--window-size=1400,900", f"--screenshot={shot}", (evaluated / "report.html").as_uri()],
                       capture_output=True, timeout=120, check=True)
    header = dom.split("</header>")[0]
    assert "Trained on synthetic data" in header and "not for clinical use" in header
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (900, 1400) and pixels.std() > 5  # a rendered page, not a blank one


def test_curve_points_match_sklearn() -> None:
    from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

    rng = np.random.default_rng(0)
    positive = rng.random(60) < 0.3
    score = np.round(np.where(positive, 0.3, 0.0) + rng.random(60) * 0.7, 2)  # ties on purpose
    pts = curve_points(score, positive)
    assert np.trapezoid(pts["tpr"], pts["fpr"]) == pytest.approx(roc_auc_score(positive, score))
    fpr, tpr, _ = roc_curve(positive, score, drop_intermediate=False)
    np.testing.assert_allclose(pts["fpr"], fpr)
    np.testing.assert_allclose(pts["tpr"], tpr)
    precision, recall, _ = precision_recall_curve(positive, score)
    np.testing.assert_allclose(pts["precision"][1:], precision[:-1][::-1])
    np.testing.assert_allclose(pts["recall"][1:], recall[:-1][::-1])


def test_report_figures_split_name_zoom_and_training_warnings(evaluated: Path, tmp_path: Path) -> None:
    page = (evaluated / "report.html").read_text()
    assert "(split val)" in page.split("</title>")[0]
    figures = _section(page, "figures")
    assert 'alt="ROC, precision-recall, Dice histogram, Dice vs size" src="data:image/png;base64,' in figures
    assert "score" in figures
    assert 'id="lightbox"' in page and page.count('class="zoom"') == page.count("<figure>")
    summary = evaluated / "train_summary.json"
    own = json.loads(summary.read_text()) if summary.is_file() else {}
    assert ("Training warnings" in page) == bool(own.get("warnings") or own.get("predicts_nothing"))
    run = tmp_path / "run"
    shutil.copytree(evaluated, run)
    (run / "train_summary.json").write_text(json.dumps({"predicts_nothing": True, "warnings": ["only 10 steps"]}))
    from pneumoseg.evaluation.tune import tune_runs

    tune_runs([run], device="cpu", progress=False)  # writes tune.csv: the threshold sweep
    files = write_report(run, eval_dir=run / "eval" / "val")
    assert 'alt="threshold sweep" src="data:image/png;base64,' in _section(files.html.read_text(), "postprocess")
    warn = _section(files.html.read_text(), "metrics")
    assert "Training warnings" in warn and "predicts nothing" in warn and "only 10 steps" in warn
    assert "predicts nothing" in files.markdown.read_text()
    result = runner.invoke(app, ["report", str(run), "--split", "val", "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert "report of val" in result.output


def test_best_and_worst_never_share_an_image(evaluated: Path) -> None:
    cases = pd.read_csv(evaluated / "eval" / "val" / "cases.csv", dtype={"image_id": str})
    best = set(cases.loc[cases["category"] == "best", "image_id"])
    worst = set(cases.loc[cases["category"] == "worst", "image_id"])
    assert not best & worst


def test_config_section_shows_the_applied_rule_in_unsplit_blocks(evaluated: Path) -> None:
    page = (evaluated / "report.html").read_text()
    config = _section(page, "config")
    blocks = re.findall(r"<pre>(.*?)</pre>", config, flags=re.S)
    top_keys = [ln.split(":")[0] for ln in (evaluated / "config.yaml").read_text().splitlines()
                if ln and not ln[0].isspace() and not ln.startswith("#")]
    assert len(blocks) == len(top_keys)
    (pp,) = [b for b in blocks if "postprocess:" in b]
    assert "applied by evaluate" in pp and "threshold: 0.3" in pp and "area_unit: source_px" in pp
    assert "break-inside: avoid" in page


# ---------------------------------------------------------------- issue 21 item 8: defects found by users


def _chromium_driver(tmp_path: Path, width: int = 1400, height: int = 1000) -> object:
    """Headless Chromium (selenium) with a viewport of exactly ``width`` x ``height`` CSS px."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM_BIN)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--no-first-run", f"--window-size={width},{height}",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return drv


CHROMIUM_BIN, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM_BIN.exists() and CHROMEDRIVER.exists()),
                    reason=f"needs {CHROMIUM_BIN} and {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver)")
def test_report_does_not_scroll_sideways_at_1400_px(evaluated: Path, tmp_path: Path) -> None:
    """Users saw the report scroll sideways in a 1400 px window (wide tables, figures): wide tables now
    scroll inside their own box, figures are at most the page's width."""
    from pneumoseg.evaluation.tune import tune_runs

    run = tmp_path / "run"
    shutil.copytree(evaluated, run)
    tune_runs([run], device="cpu", progress=False)  # tune.csv: the widest table
    files = write_report(run, eval_dir=run / "eval" / "val")
    drv = _chromium_driver(tmp_path)
    try:
        drv.set_page_load_timeout(60)
        drv.get(files.html.as_uri())
        state = drv.execute_script("""
            const wide = Array.from(document.querySelectorAll('body *'))
                .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5
                             && !e.closest('.scroll, .tablewrap, #lightbox'))
                .map(e => e.tagName + '.' + e.className);
            return {inner: window.innerWidth, scroll: document.documentElement.scrollWidth, wide: wide.slice(0, 5),
                    img: Math.max(...Array.from(document.images).filter(i => !i.closest('#lightbox'))
                                  .map(i => i.getBoundingClientRect().right))};
        """)
        drv.save_screenshot(str(tmp_path / "report-1400.png"))
    finally:
        drv.quit()
    assert state["inner"] == 1400
    assert state["scroll"] <= 1400, state
    assert state["img"] <= 1400


def _overlapping_labels(fig: object, ax: object) -> tuple[list[str], list[tuple[str, str]]]:
    """The x tick labels drawn inside the axes' range and the pairs whose boxes overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    lo, hi = ax.get_xlim()
    shown = [(t.label1.get_text(), t.label1.get_window_extent(renderer))
             for t in ax.xaxis.get_major_ticks() + ax.xaxis.get_minor_ticks()
             if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]
    return [s for s, _ in shown], [(a, b) for k, (a, box) in enumerate(shown) for b, other in shown[k + 1:]
                                   if box.overlaps(other)]


@pytest.mark.parametrize("lo, hi", [(150, 1500), (300, 900), (2000, 3000), (12, 250_000), (40, 41)])
def test_dice_vs_size_ticks_do_not_overlap_and_counts_are_whole(lo: float, hi: float) -> None:
    """Users saw '3x10^2' over '4x10^2' on the Dice-vs-size log axis (areas 150..1500 px) and
    '0.5 images' on the histogram of 3 images."""
    from pneumoseg.reporting.figures import detection_figure
    from pneumoseg.reporting.gather import ReportData

    area = np.r_[np.geomspace(lo, hi, 3), 0.0]
    per_image = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "truth_area_px": area.round(),
                              "pred_area_px": [10, 0, 5, 0], "probability": 0.5, "score": 0.5,
                              "dice": [0.2, 0.0, 0.9, 1.0], "has_truth": [1, 1, 1, 0]})
    fig = detection_figure(ReportData(Path("run"), Path("run/eval/test"), {}, per_image))
    hist, size = fig.axes[2:4]
    labels, overlaps = _overlapping_labels(fig, size)
    assert len(labels) >= 2 and not overlaps, labels
    assert all("times" not in s and "^" not in s for s in labels)  # plain numbers
    ylo, yhi = hist.get_ylim()
    counts = [v for v in hist.get_yticks() if ylo <= v <= yhi]
    assert counts and all(float(v).is_integer() for v in counts), counts


def test_short_ids_end_at_token_boundaries() -> None:
    from pneumoseg.util.paths import short_id

    uid = "1.2.276.0.7230010.3.1.4.8323329.5797.1517875162.895"
    assert short_id(uid) == "…1517875162.895"  # not "…17875162.895" (cut mid-token)
    assert short_id("patient_0042_followup_b") == "…0042_followup_b"
    assert short_id("img00") == "img00"
    assert short_id("x" * 30) == "x" * 30  # one token: never cut
    for text in (uid, "patient_0042_followup_b", "ab.cd-ef_gh." * 8):
        short = short_id(text)
        tail = short.removeprefix("…")
        assert short.startswith("…") and len(short) <= 18 and text.endswith(tail)
        assert text[len(text) - len(tail) - 1] in "._-"  # the cut is at a separator


def test_gallery_captions_are_short_ids_with_the_full_id_in_a_tooltip(evaluated: Path) -> None:
    from pneumoseg.util.paths import short_id

    galleries = _section((evaluated / "report.html").read_text(), "galleries")
    cases = pd.read_csv(evaluated / "eval" / "val" / "cases.csv", dtype={"image_id": str})
    for image_id in cases["image_id"]:
        assert f'title="{image_id}">{short_id(image_id)}</span>' in galleries


def test_report_sizes_are_in_mm2_when_the_pixel_spacing_is_known(evaluated: Path) -> None:
    """The synthetic DICOMs carry Pixel Spacing: evaluate records it (images.csv) and the report's
    Dice-vs-size figure and per-image table give areas in mm² (they said source px)."""
    ev = evaluated / "eval" / "val"
    images = pd.read_csv(ev / "images.csv", dtype={"image_id": str}).set_index("image_id")
    per_image = pd.read_csv(ev / "per_image.csv", dtype={"image_id": str}).set_index("image_id")
    assert sorted(images.index) == sorted(per_image.index)
    assert (images["pixel_spacing_mm"] > 0).all() and images["source"].str.endswith(".dcm").all()
    page = (evaluated / "report.html").read_text()
    assert "Size: truth area in mm² (from the images&#x27; Pixel Spacing)" in _section(page, "figures")
    table = _section(page, "per-image")
    assert "truth_area_mm2" in table
    row = per_image[per_image["truth_area_px"] > 0].iloc[0]
    mm2 = row["truth_area_px"] * images.loc[row.name, "pixel_spacing_mm"] ** 2
    assert f"{round(mm2, 1):.4f}" in table
