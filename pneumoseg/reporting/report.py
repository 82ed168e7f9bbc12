"""One self-contained HTML report of a run (plus a Markdown summary), from its files only.

Reads ``RUN/config.yaml`` (typed: ``pneumoseg.runs.read_run_config``; shown as written),
``RUN/history.csv`` / ``curves.png``, ``RUN/tune.csv``, the cache's ``splits.csv`` + ``index.csv``
(when reachable) and what ``pneumoseg evaluate`` wrote in ``RUN/eval/<split>/``
(``pneumoseg.runs.find_eval_dir``: ``metrics.json`` with the post-processing rule it applied,
``per_image.csv``, ``images.csv``, ``cases.csv`` + ``cases/``; the split, or the external data set,
is named in the report) and ``RUN/train_summary.json`` when training wrote one (its predicts-nothing flag and
warnings are shown at the top). The header says what the model was trained on
(``RUN/provenance.json``; "training data unknown" without one) and that it is not for clinical use.
Figures: ROC and precision-recall curves of the image score, the
per-image Dice histogram (whole-number counts), Dice against pneumothorax size (mm² when every
positive image has a pixel spacing, else source px: ``pneumoseg.runs.truth_areas``; plain-number
log ticks that never crowd) and tune's threshold sweep. Wide tables scroll inside their own box and
images shrink to the page, so the page fits a 1400 px window; case captions show ids shortened at a
token boundary (``short_id``) with the full id as a tooltip. No model is loaded. Figures are embedded as base64 data URLs and
the page has no external CSS/JS, so it opens offline; the per-image table sorts by clicking a
header; a thumbnail enlarges on click. Overlays: prediction red, truth blue.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import os
import string
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pneumoseg import __version__
from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.errors import DataError
from pneumoseg.config import ExperimentConfig
from pneumoseg.evaluation.cases import CASE_CATEGORIES
from pneumoseg.util.paths import short_id
from pneumoseg.runs import CONFIG_FILE, find_eval_dir, read_eval_images, read_run_config, truth_areas, unit_text
from pneumoseg.training.provenance import NOT_FOR_CLINICAL_USE, Provenance, describe_training, read_provenance

__all__ = ["METRICS", "ReportData", "ReportFiles", "curve_points", "load_report_data", "render_html",
           "render_markdown", "write_report"]

# metric key -> meaning (the order of the metrics table)
METRICS = {
    "dice_kaggle": "challenge metric: mean per-image Dice, empty truth + empty prediction = 1",
    "dice_empty_baseline": "dice_kaggle of predicting nothing at all (the share of images without pneumothorax)",
    "dice_positive": "mean Dice over images with a pneumothorax",
    "image_auc": "image-level detection AUC (score: mean of the top 0.1 % pixel probabilities)",
    "sensitivity": "images with a pneumothorax that got a non-empty mask",
    "specificity": "empty images that got an empty mask",
    "fpr_empty": "empty images that got a mask (1 - specificity)",
}
CATEGORY_TITLES = {
    "best": "Best cases (highest Dice)",
    "worst": "Worst cases (lowest Dice)",
    "false_positive": "False positives (empty truth, non-empty prediction)",
    "false_negative": "False negatives (pneumothorax, empty prediction)",
}


@dataclass
class ReportData:
    """Everything the report shows, read from a run folder (None where a file is absent)."""

    run: Path
    eval_dir: Path
    metrics: dict[str, Any]
    per_image: pd.DataFrame
    config_text: str | None = None
    config: ExperimentConfig | None = None
    area: np.ndarray | None = None  # truth area of each per_image row, in ``area_unit``
    area_unit: str = "px"           # "mm²" when every positive image has a pixel spacing, else "px"
    data_summary: pd.DataFrame | None = None
    data_note: str = ""
    history: pd.DataFrame | None = None
    curves_png: bytes | None = None
    postprocess: dict[str, Any] | None = None
    tune: pd.DataFrame | None = None
    cases: pd.DataFrame | None = None
    train_summary: dict[str, Any] | None = None
    provenance: Provenance | None = None

    @property
    def provenance_line(self) -> str:
        """What the model was trained on, and "not for clinical use" (the header's line)."""
        records = [self.provenance] if self.provenance is not None else []
        return f"{describe_training(records)}. {NOT_FOR_CLINICAL_USE}."

    def count(self, outcome: str) -> int:
        """Images with outcome ``TP`` | ``TN`` | ``FP`` | ``FN`` (see :func:`_outcomes`)."""
        return int((_outcomes(self.per_image) == outcome).sum())


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path


def _outcomes(per_image: pd.DataFrame) -> pd.Series:
    truth = per_image["truth_area_px"] > 0
    pred = per_image["pred_area_px"] > 0
    out = pd.Series("TN", index=per_image.index)
    out[truth & pred], out[~truth & pred], out[truth & ~pred] = "TP", "FP", "FN"
    return out


def _need(path: Path, run: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path} not found: run `pneumoseg evaluate {run}` first")
    return path


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={"image_id": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None


def _data_summary(cache: str | None) -> tuple[pd.DataFrame | None, str]:
    """Per split: images, patients, positives and positive rate, from the cache's CSVs."""
    if not cache:
        return None, "the run's config names no data.cache"
    splits, index = Path(cache) / "splits.csv", Path(cache) / "index.csv"
    if not (splits.is_file() and index.is_file()):
        return None, f"cache not reachable from here: {splits} / {index} not found"
    df = _read_csv(splits).merge(_read_csv(index), on="image_id", how="left")
    rows = []
    for name, part in [*df.groupby("split", sort=False), ("all", df)]:
        pos = int(part["has_pneumothorax"].fillna(0).sum())
        rows.append({"split": name, "images": len(part), "patients": part["patient_id"].nunique(),
                     "positive": pos, "positive_rate": pos / len(part) if len(part) else math.nan})
    order = {"train": 0, "val": 1, "test": 2, "all": 9}
    table = pd.DataFrame(rows).sort_values("split", key=lambda s: s.map(lambda v: order.get(v, 5)))
    note = f"from {cache}" + (f" ({df['fold'].nunique()} folds)" if "fold" in df else "")
    return table.reset_index(drop=True), note


def _curves(run: Path, history: pd.DataFrame | None) -> bytes | None:
    if (run / "curves.png").is_file():
        return (run / "curves.png").read_bytes()
    if history is None or history.empty:
        return None
    from pneumoseg.training.callbacks import plot_history

    with tempfile.TemporaryDirectory() as tmp:
        plot_history(history.to_dict("records"), Path(tmp) / "curves.png")
        return (Path(tmp) / "curves.png").read_bytes()


def load_report_data(run_dir: str | os.PathLike[str], eval_dir: str | os.PathLike[str] | None = None) -> ReportData:
    """Read a run's files; DataError naming the missing file when ``evaluate`` has not run."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"run folder {run} does not exist")
    ev = Path(eval_dir) if eval_dir else find_eval_dir(run)
    try:
        metrics = json.loads(_need(ev / "metrics.json", run).read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{ev / 'metrics.json'}: not valid JSON ({exc})") from None
    data = ReportData(run, ev, metrics, _read_csv(_need(ev / "per_image.csv", run)))
    data.provenance = read_provenance(run)
    data.config = read_run_config(run, required=False)
    if data.config is not None:
        data.config_text = (run / CONFIG_FILE).read_text()
    data.data_summary, data.data_note = _data_summary(data.config.data.cache if data.config else None)
    data.area, data.area_unit = truth_areas(data.per_image, read_eval_images(ev))
    if (run / "history.csv").is_file():
        data.history = _read_csv(run / "history.csv")
    data.curves_png = _curves(run, data.history)
    applied = metrics.get("postprocess")
    data.postprocess = applied if isinstance(applied, dict) else None
    if (run / "tune.csv").is_file():
        data.tune = _read_csv(run / "tune.csv")
    if (ev / "cases.csv").is_file():
        data.cases = _read_csv(ev / "cases.csv")
    if (run / "train_summary.json").is_file():
        try:
            summary = json.loads((run / "train_summary.json").read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{run / 'train_summary.json'}: not valid JSON ({exc})") from None
        data.train_summary = summary if isinstance(summary, dict) else None
    return data


# ---------------------------------------------------------------- figures


def _score(per_image: pd.DataFrame) -> tuple[np.ndarray, str]:
    col = "score" if "score" in per_image else "probability"
    return per_image[col].to_numpy(float), col


def curve_points(score: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    """ROC (``fpr``, ``tpr``) and precision-recall (``recall``, ``precision``) points of an image score.

    One point per distinct score, thresholds from high to low (an image is called positive when
    its score is >= the threshold); ROC starts at (0, 0), PR at recall 0 with precision 1.
    """
    order = np.argsort(-score, kind="stable")
    s, y = score[order], positive[order].astype(bool)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1] if len(s) else np.array([], int)
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    n_pos, n_neg = max(1, int(y.sum())), max(1, int((~y).sum()))
    precision = tp / np.maximum(1, tp + fp)
    return {"fpr": np.r_[0.0, fp / n_neg], "tpr": np.r_[0.0, tp / n_pos],
            "recall": np.r_[0.0, tp / n_pos], "precision": np.r_[1.0, precision]}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def log_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """Tick positions for a log axis over [``lo``, ``hi``] (> 0): the densest of the 1-2-3-5, 1-2-5, 1-3
    and 1 (decades) sequences with at most ``max_ticks`` inside, else every k-th decade. Labelled as
    plain numbers, no minor labels: the labels never crowd (matplotlib's own minor labels such as
    3x10^2 and 4x10^2 overlapped on a range under a decade and a half)."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in ((1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0**e for e in range(first, last + 1) for m in mantissas if lo <= m * 10.0**e <= hi]
        if len(ticks) <= max_ticks:
            return ticks
    decades = [10.0**e for e in range(first, last + 1) if lo <= 10.0**e <= hi]
    return decades[::math.ceil(len(decades) / max_ticks)]


def _tick_text(value: float, _pos: int | None = None) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def _size_axes(ax: Any, area: np.ndarray, dice: np.ndarray, unit: str) -> None:
    """Dice against truth area (positive images) on a log x axis with uncrowded plain-number ticks."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set(title="Dice vs pneumothorax size (positive images)", xlabel=f"truth area ({unit}, log)",
           ylabel="Dice", ylim=(-0.03, 1.03))
    keep = area > 0
    area, dice = area[keep], dice[keep]
    if not area.size:
        return
    ax.scatter(area, dice, s=12, alpha=0.7, color="#286eff")
    ax.set_xscale("log")
    lo, hi = float(area.min()) / 1.4, float(area.max()) * 1.4
    ax.set_xlim(lo, hi)
    ticks = log_ticks(lo, hi)
    if len(ticks) < 2:  # under one 1-2-3-5 step: the data's ends
        ticks = sorted({float(f"{area.min():.2g}"), float(f"{area.max():.2g}")})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(_tick_text))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _figures(d: ReportData) -> Figure:
    """ROC, precision-recall, per-image Dice histogram and Dice vs truth area, in one 2 x 2 figure."""
    from matplotlib.ticker import MaxNLocator

    df = d.per_image
    score, col = _score(df)
    positive = df["truth_area_px"].to_numpy() > 0
    dice = df["dice"].to_numpy(float)
    fig = Figure(figsize=(10, 7.6), dpi=90)
    FigureCanvasAgg(fig)
    (roc, pr), (hist, size) = fig.subplots(2, 2)
    if positive.any() and (~positive).any():
        pts = curve_points(score, positive)
        roc.plot(pts["fpr"], pts["tpr"], drawstyle="steps-post")
        pr.plot(pts["recall"], pts["precision"], drawstyle="steps-post")
        pr.axhline(positive.mean(), color="grey", ls=":", lw=1, label=f"prevalence {positive.mean():.2f}")
        pr.legend(loc="lower left", fontsize=8)
    else:
        for ax in (roc, pr):
            ax.text(0.5, 0.5, "needs positive and empty images", ha="center", va="center", transform=ax.transAxes)
    roc.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    roc.set(title=f"ROC (image score: {col}; AUC {_fmt(d.metrics.get('image_auc'), 3)})",
            xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02))
    pr.set(title="Precision-recall (image level)", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    bins = np.linspace(0, 1, 21)
    hist.hist([dice[positive], dice[~positive]], bins=bins, stacked=True, label=["pneumothorax", "empty truth"],
              color=["#286eff", "#9aa5af"])
    hist.set(title="Per-image Dice", xlabel="Dice", ylabel="images")
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.5 images
    hist.legend(fontsize=8)
    area, unit = (d.area, d.area_unit) if d.area is not None else truth_areas(df)
    _size_axes(size, np.asarray(area, float)[positive], dice[positive], unit)
    fig.tight_layout()
    return fig


def _sweep_png(tune: pd.DataFrame) -> bytes | None:
    """dice_kaggle against the threshold (best min_area at each) for tune.csv's plain-threshold rules."""
    if not {"threshold", "dice_kaggle"} <= set(tune.columns):
        return None
    plain = tune[tune["mode"] == "plain"] if "mode" in tune else tune
    plain = plain.dropna(subset=["threshold"])
    if plain.empty:
        return None
    best = plain.groupby("threshold")["dice_kaggle"].max().sort_index()
    fig = Figure(figsize=(5.5, 3.4), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(best.index, best.to_numpy(), marker="o", ms=3)
    if "dice_positive" in plain:
        ax.plot(best.index, plain.groupby("threshold")["dice_positive"].max().sort_index().to_numpy(), "--",
                marker=".", ms=3, label="dice_positive")
        ax.legend(["dice_kaggle (best min_area)", "dice_positive"], fontsize=8)
    ax.set(title="Threshold sweep (tune.csv, plain rules)", xlabel="threshold", ylabel="score on the tuning split")
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------- HTML


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _esc(value: Any) -> str:
    return html.escape(_fmt(value))


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(df: pd.DataFrame, sortable: bool = False, row_class: pd.Series | None = None,
           cell_class: dict[str, str] | None = None) -> str:
    """An HTML table; numeric columns right-aligned and sorted as numbers."""
    num = {c: pd.api.types.is_numeric_dtype(df[c]) for c in df.columns}
    heads = "".join(f'<th data-type="{"num" if num[c] else "text"}">{html.escape(str(c))}</th>' for c in df.columns)
    cls = cell_class or {}
    rows = []
    for k, rec in enumerate(df.itertuples(index=False)):
        cells = "".join(f'<td class="{"num" if num[c] else cls.get(c, "")}">{_esc(v)}</td>'
                        for c, v in zip(df.columns, rec, strict=True))
        attr = f' class="{html.escape(str(row_class.iloc[k]))}"' if row_class is not None else ""
        rows.append(f"<tr{attr}>{cells}</tr>")
    return (f'<div class="tablewrap"><table{" class=sortable" if sortable else ""}><thead><tr>{heads}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{body}\n</section>\n'


def _metrics_html(d: ReportData) -> str:
    m = d.metrics
    n_empty = int((d.per_image["truth_area_px"] == 0).sum())
    cards = "".join(f'<div class="card"><div class="v">{_esc(m.get(k))}</div><div class="k">{k}</div></div>'
                    for k in ("dice_kaggle", "dice_positive", "image_auc", "sensitivity", "specificity"))
    cards = (f'<div class="cards">{cards}<div class="card"><div class="v">{d.count("FP")} / {n_empty}</div>'
             '<div class="k">false positives on empty images</div></div></div>')
    rows = [(k, _with_ci(m, k), v) for k, v in METRICS.items()]
    rows += [("false positives on empty images", f"{d.count('FP')} of {n_empty}", "empty truth, non-empty mask"),
             ("missed pneumothoraces", f"{d.count('FN')} of {len(d.per_image) - n_empty}",
              "pneumothorax, empty mask"),
             ("images", f"{m.get('n_images')} ({m.get('n_positive')} with pneumothorax)", _what(m))]
    table = _table(pd.DataFrame(rows, columns=["metric", "value", "meaning"]))
    ctx = (f"{_what(m)}; model {m.get('model')} at {m.get('model_size', m.get('size'))} px, "
           f"TTA {'on' if m.get('tta') else 'off'}; scored at the {m.get('resolution', 'model')} resolution "
           f"({m.get('source_size', 'n/a')}); post-processing: {m.get('postprocess_text', m.get('postprocess'))}")
    return f'{cards}{table}<p class="note">{html.escape(ctx)}</p>'


def _data_html(d: ReportData) -> str:
    if d.data_summary is None:
        return f'<p class="note">{html.escape(d.data_note)}</p>'
    note = f'<p class="note">{html.escape(d.data_note)}; evaluated on split {_esc(d.metrics.get("split"))}</p>'
    return _table(d.data_summary) + note


def _curves_html(d: ReportData) -> str:
    parts = []
    if d.curves_png:
        parts.append(f'<img class="curves" alt="training curves" src="{_data_url(d.curves_png)}">')
    h = d.history
    if h is not None and not h.empty and "val_dice_kaggle" in h:
        best = h.loc[h["val_dice_kaggle"].idxmax()]
        parts.append(f'<p class="note">{len(h)} epochs; best val dice_kaggle {_fmt(float(best["val_dice_kaggle"]))} '
                     f'at epoch {int(best["epoch"])}.</p>')
    return "".join(parts) or '<p class="note">no curves.png or history.csv in the run</p>'


def _postprocess_html(d: ReportData, top: int = 10) -> str:
    if d.postprocess is None:
        return '<p class="note">metrics.json records no post-processing rule: re-run `pneumoseg evaluate`.</p>'
    pp = pd.DataFrame([(k, _fmt(v)) for k, v in d.postprocess.items()], columns=["parameter", "value"])
    mode = "triplet rule" if d.postprocess.get("top_threshold") is not None else "plain threshold"
    source = html.escape(str(d.metrics.get("postprocess_source", "")))
    out = (f"<div class=two><div><h3>Applied rule ({mode})</h3><p class=note>{source}</p>{_table(pp)}</div>")
    if d.tune is not None:
        sweep = _sweep_png(d.tune)
        if sweep is not None:
            out += f'<div><img class="curves" alt="threshold sweep" src="{_data_url(sweep)}"></div>'
        out += (f"<div><h3>Top {min(top, len(d.tune))} of {len(d.tune)} rules (tune.csv)</h3>"
                f"{_table(d.tune.head(top), sortable=True)}</div>")
    return out + "</div>"


def _figures_html(d: ReportData) -> str:
    _, col = _score(d.per_image)
    return (f'<img class="curves" alt="ROC, precision-recall, Dice histogram, Dice vs size" '
            f'src="{_data_url(_png(_figures(d)))}"><p class="note">Image score: {html.escape(col)} '
            f"({html.escape(str(d.metrics.get('image_score', 'largest pixel probability')))}). "
            f"Size: truth area in {html.escape(unit_text(d.area_unit))}.</p>")



def _warnings_html(d: ReportData) -> str:
    """The training summary's predicts-nothing flag and warnings ('' when there is nothing to say)."""
    t = d.train_summary or {}
    lines = [str(w) for w in t.get("warnings") or []]
    if t.get("predicts_nothing"):
        lines.insert(0, "the model predicts nothing (train_summary.json: predicts_nothing): its dice_kaggle is "
                        "the empty baseline, not segmentation")
    if not lines:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f'<div class="warn"><b>Training warnings</b><ul>{items}</ul></div>'


def _what(m: dict[str, Any]) -> str:
    """``split test`` or ``data set NAME`` (an external evaluation)."""
    return f"data set {m.get('split')}" if m.get("source") == "external" else f"split {m.get('split')}"


def _per_image_html(d: ReportData) -> str:
    df = d.per_image.copy()
    outcome = _outcomes(df)
    df.insert(1, "outcome", outcome)
    df = df.drop(columns=[c for c in ("has_truth",) if c in df])
    if d.area_unit == "mm²" and d.area is not None and "truth_area_mm2" not in df:
        df.insert(df.columns.get_loc("truth_area_px") + 1, "truth_area_mm2", np.round(d.area, 1))
    body = _table(df, sortable=True, row_class=outcome, cell_class={"image_id": "id", "outcome": "outcome"})
    return (f'<p class="note">{len(df)} images; click a header to sort. Outcome: TP/TN/FP/FN at image level '
            f"(non-empty truth / prediction).</p><div class=scroll>{body}</div>")


def _galleries_html(d: ReportData) -> str:
    legend = ('<p class="legend"><span style="background:#ff2828"></span>prediction'
              '<span style="background:#286eff"></span>truth (tint and outline; purple where both)</p>')
    if d.cases is None:
        return legend + (f'<p class="note">{html.escape(str(d.eval_dir / "cases.csv"))} not found: rerun '
                         f"`pneumoseg evaluate {html.escape(str(d.run))}` to make the galleries.</p>")
    totals = {"false_positive": d.count("FP"), "false_negative": d.count("FN")}
    out = [legend]
    for cat in CASE_CATEGORIES:
        rows = d.cases[d.cases["category"] == cat]
        total = f" of {totals[cat]}" if cat in totals else ""
        out.append(f'<h3 id="gallery-{cat}">{html.escape(CATEGORY_TITLES[cat])} '
                   f'<span class="note">({len(rows)}{total} shown)</span></h3>')
        figs = []
        for r in rows.itertuples(index=False):
            path = d.eval_dir / str(r.file)
            if not path.is_file():
                continue
            figs.append(f'<figure><img class="zoom" alt="{html.escape(r.image_id)}" '
                        f'title="click to enlarge" src="{_data_url(path.read_bytes())}">'
                        f'<figcaption><b>Dice {_fmt(float(r.dice), 3)}</b> · score '
                        f'{_fmt(float(getattr(r, "score", r.probability)), 3)}<br>'
                        f"truth {r.truth_area_px} px · pred {r.pred_area_px} px<br>"
                        f'<span class="id" title="{html.escape(r.image_id)}">{html.escape(short_id(r.image_id))}</span>'
                        "</figcaption></figure>")
        out.append(f'<div class="grid">{"".join(figs)}</div>' if figs else '<p class="note">none</p>')
    return "\n".join(out)


def render_html(d: ReportData) -> str:
    """The report page (a complete HTML document with inline CSS/JS and data-URL images)."""
    sections = [("metrics", "Metrics", _warnings_html(d) + _metrics_html(d)),
                ("figures", "Detection and Dice", _figures_html(d)), ("data", "Data", _data_html(d)),
                ("training", "Training curves", _curves_html(d)),
                ("postprocess", "Post-processing search", _postprocess_html(d)),
                ("galleries", "Cases", _galleries_html(d)),
                ("per-image", "Per-image results", _per_image_html(d))]
    if d.config_text is not None:
        sections.append(("config", "Resolved config", _config_html(d)))
    nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in sections)
    m = d.metrics
    subtitle = (f"{d.run.resolve()} · {_what(m)} · {m.get('n_images')} images · "
                f"generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by pneumoseg {__version__}")
    template = string.Template(resources.files("pneumoseg.reporting").joinpath("report_template.html").read_text("utf-8"))
    return template.substitute(title=html.escape(f"pneumoseg report: {d.run.resolve().name} ({_what(m)})"),
                               subtitle=html.escape(subtitle), provenance=html.escape(d.provenance_line), nav=nav,
                               body="".join(_section(a, t, b) for a, t, b in sections))


def _config_blocks(d: ReportData) -> list[str]:
    """The resolved config as one text block per top-level key; ``postprocess`` shows the rule applied."""
    blocks: list[str] = []
    for line in (d.config_text or "").splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            blocks.append(line)
        elif blocks:
            blocks[-1] += "\n" + line
    if d.postprocess is not None:
        source = d.metrics.get("postprocess_source", "applied")
        rule = yaml.safe_dump({"postprocess": d.postprocess}, sort_keys=False).rstrip()
        blocks = [f"# applied by evaluate ({source}); the config's default is not used\n{rule}"
                  if b.startswith("postprocess:") else b for b in blocks]
    return blocks


def _config_html(d: ReportData) -> str:
    """Config blocks laid out in columns, none split across two."""
    return '<div class="config">' + "".join(f"<pre>{html.escape(b)}</pre>" for b in _config_blocks(d)) + "</div>"


def _with_ci(m: dict[str, Any], key: str) -> str:
    """``0.8123 [0.79, 0.83]``: the value and its 95 % bootstrap interval when evaluate stored one, else
    ``0.8123 (n too small: 12 images)`` when evaluate said why it gave none."""
    ci = (m.get("ci95") or {}).get(key)
    text = _fmt(m.get(key))
    note = (m.get("ci95_notes") or {}).get(key)
    if ci and all(isinstance(v, int | float) and v == v for v in ci):
        text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
    elif note and text != "n/a":
        text += f" ({note})"  # e.g. "n too small: 12 images": no interval on so few images
    return text


def _md_table(rows: list[tuple[str, str]], head: tuple[str, str]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "| --- | --- |"]
    return "\n".join(lines + [f"| {a} | {b} |" for a, b in rows])


def render_markdown(d: ReportData, html_path: str | os.PathLike[str]) -> str:
    """A short summary: metrics, post-processing, key numbers and where the HTML report is."""
    m = d.metrics
    n_empty = int((d.per_image["truth_area_px"] == 0).sum())
    rows = [(f"`{k}`", _with_ci(m, k)) for k in METRICS]
    pp = m.get("postprocess_text") or (json.dumps(d.postprocess) if d.postprocess is not None else "n/a")
    lines = [f"# pneumoseg report: {d.run.resolve().name} ({_what(m)})", "", f"**{d.provenance_line}**", "",
             f"Full report (figures, galleries, sortable per-image table): `{Path(html_path).resolve()}`", "",
             f"{_what(m).capitalize()}: {m.get('n_images')} images, {m.get('n_positive')} with pneumothorax; "
             f"model `{m.get('model')}` at {m.get('model_size', m.get('size'))} px, TTA {'on' if m.get('tta') else 'off'}; "
             f"scored at the {m.get('resolution', 'model')} resolution ({m.get('source_size', 'n/a')}).", "",
             "## Metrics", "", _md_table(rows, ("metric", "value [95 % bootstrap CI]")), "",
             "## Post-processing", "", f"`{pp}`"]
    if d.tune is not None and len(d.tune):
        lines.append(f"(best of {len(d.tune)} rules in `tune.csv`: dice_kaggle {_fmt(float(d.tune['dice_kaggle'].iloc[0]))}"
                     " on the tuning split)")
    lines += ["", "## Key numbers", "",
              f"- false positives on empty images: {d.count('FP')} of {n_empty}",
              f"- missed pneumothoraces (empty prediction): {d.count('FN')} of {len(d.per_image) - n_empty}"]
    t = d.train_summary or {}
    if t.get("predicts_nothing"):
        lines.append("- **warning: the model predicts nothing** (train_summary.json)")
    lines += [f"- training warning: {w}" for w in t.get("warnings") or []]
    h = d.history
    if h is not None and not h.empty and "val_dice_kaggle" in h:
        best = h.loc[h["val_dice_kaggle"].idxmax()]
        lines.append(f"- training: {len(h)} epochs, best val dice_kaggle {_fmt(float(best['val_dice_kaggle']))} "
                     f"at epoch {int(best['epoch'])}")
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                 eval_dir: str | os.PathLike[str] | None = None) -> ReportFiles:
    """Write ``out`` (default ``RUN/report.html``) and the Markdown summary beside it (``.md``)."""
    data = load_report_data(run_dir, eval_dir)
    html_path = Path(out) if out else Path(run_dir) / "report.html"
    md_path = html_path.with_suffix(".md")
    atomic_write_text(html_path, render_html(data))
    atomic_write_text(md_path, render_markdown(data, html_path))
    return ReportFiles(html_path, md_path)
