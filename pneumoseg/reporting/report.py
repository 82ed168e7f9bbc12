"""One self-contained HTML report of a run (plus a Markdown summary), from its files only.

The entry point is :func:`write_report`; this module holds what the report page says (its sections and
the Markdown summary). What it reads (``gather.load_report_data``: ``RUN/config.yaml`` shown as written,
``history.csv`` / ``curves.png``, ``tune.csv``, the cache's ``splits.csv`` + ``index.csv`` when reachable,
``RUN/eval/<split>/`` from ``pneumoseg evaluate`` with the post-processing rule it applied, and
``train_summary.json``), the figures (``figures``) and the page frame (``render``) live beside it.
The split, or the external data set, is named in the report; training's predicts-nothing flag and warnings
are shown at the top. The header says what the model was trained on (``RUN/provenance.json``; "training
data unknown" without one) and that it is not for clinical use. Figures: ROC and precision-recall curves
of the image score, the per-image Dice histogram, Dice against pneumothorax size (mm² when every positive
image has a pixel spacing, else source px) and tune's threshold sweep. Wide tables scroll inside their own
box and images shrink to the page, so the page fits a 1400 px window; case captions show ids shortened at
a token boundary (``short_id``) with the full id as a tooltip. No model is loaded. The page has no external
CSS/JS, so it opens offline; the per-image table sorts by clicking a header; a thumbnail enlarges on
click. Overlays: prediction red, truth blue.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pneumoseg.evaluation.cases import CASE_CATEGORIES
from pneumoseg.reporting.figures import detection_figure, png, sweep_png
from pneumoseg.reporting.gather import ReportData, image_score, load_report_data, outcomes
from pneumoseg.reporting.render import data_url, esc, fmt, generated_text, md_table, page, table_html, write_pages
from pneumoseg.runs import unit_text
from pneumoseg.util.paths import short_id

__all__ = ["METRICS", "ReportFiles", "render_html", "render_markdown", "write_report"]

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


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path


# ---------------------------------------------------------------- HTML


def _table(df: pd.DataFrame, sortable: bool = False, row_class: pd.Series | None = None,
           cell_class: dict[str, str] | None = None) -> str:
    """An HTML table; numeric columns right-aligned and sorted as numbers."""
    num = {c: pd.api.types.is_numeric_dtype(df[c]) for c in df.columns}
    heads = "".join(f'<th data-type="{"num" if num[c] else "text"}">{html.escape(str(c))}</th>' for c in df.columns)
    cls = cell_class or {}
    rows = []
    for k, rec in enumerate(df.itertuples(index=False)):
        cells = "".join(f'<td class="{"num" if num[c] else cls.get(c, "")}">{esc(v)}</td>'
                        for c, v in zip(df.columns, rec, strict=True))
        attr = f' class="{html.escape(str(row_class.iloc[k]))}"' if row_class is not None else ""
        rows.append(f"<tr{attr}>{cells}</tr>")
    return table_html(heads, "".join(rows), " class=sortable" if sortable else "")


def _metrics_html(d: ReportData) -> str:
    m = d.metrics
    n_empty = int((d.per_image["truth_area_px"] == 0).sum())
    cards = "".join(f'<div class="card"><div class="v">{esc(m.get(k))}</div><div class="k">{k}</div></div>'
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
    note = f'<p class="note">{html.escape(d.data_note)}; evaluated on split {esc(d.metrics.get("split"))}</p>'
    return _table(d.data_summary) + note


def _best_epoch(d: ReportData) -> tuple[int, str, int] | None:
    """(epochs trained, best val dice_kaggle as text, its epoch) from history.csv; None without one."""
    h = d.history
    if h is None or h.empty or "val_dice_kaggle" not in h:
        return None
    best = h.loc[h["val_dice_kaggle"].idxmax()]
    return len(h), fmt(float(best["val_dice_kaggle"])), int(best["epoch"])


def _curves_html(d: ReportData) -> str:
    parts = []
    if d.curves_png:
        parts.append(f'<img class="curves" alt="training curves" src="{data_url(d.curves_png)}">')
    best = _best_epoch(d)
    if best:
        parts.append(f'<p class="note">{best[0]} epochs; best val dice_kaggle {best[1]} at epoch {best[2]}.</p>')
    return "".join(parts) or '<p class="note">no curves.png or history.csv in the run</p>'


def _postprocess_html(d: ReportData, top: int = 10) -> str:
    if d.postprocess is None:
        return '<p class="note">metrics.json records no post-processing rule: re-run `pneumoseg evaluate`.</p>'
    pp = pd.DataFrame([(k, fmt(v)) for k, v in d.postprocess.items()], columns=["parameter", "value"])
    mode = "triplet rule" if d.postprocess.get("top_threshold") is not None else "plain threshold"
    source = html.escape(str(d.metrics.get("postprocess_source", "")))
    out = (f"<div class=two><div><h3>Applied rule ({mode})</h3><p class=note>{source}</p>{_table(pp)}</div>")
    if d.tune is not None:
        sweep = sweep_png(d.tune)
        if sweep is not None:
            out += f'<div><img class="curves" alt="threshold sweep" src="{data_url(sweep)}"></div>'
        out += (f"<div><h3>Top {min(top, len(d.tune))} of {len(d.tune)} rules (tune.csv)</h3>"
                f"{_table(d.tune.head(top), sortable=True)}</div>")
    return out + "</div>"


def _figures_html(d: ReportData) -> str:
    _, col = image_score(d.per_image)
    return (f'<img class="curves" alt="ROC, precision-recall, Dice histogram, Dice vs size" '
            f'src="{data_url(png(detection_figure(d)))}"><p class="note">Image score: {html.escape(col)} '
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
    outcome = outcomes(df)
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
                        f'title="click to enlarge" src="{data_url(path.read_bytes())}">'
                        f'<figcaption><b>Dice {fmt(float(r.dice), 3)}</b> · score '
                        f'{fmt(float(getattr(r, "score", r.probability)), 3)}<br>'
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
    m = d.metrics
    subtitle = f"{d.run.resolve()} · {_what(m)} · {m.get('n_images')} images · {generated_text()}"
    return page(f"pneumoseg report: {d.run.resolve().name} ({_what(m)})", subtitle, d.provenance_line, sections)


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
    text = fmt(m.get(key))
    note = (m.get("ci95_notes") or {}).get(key)
    if ci and all(isinstance(v, int | float) and v == v for v in ci):
        text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
    elif note and text != "n/a":
        text += f" ({note})"  # e.g. "n too small: 12 images": no interval on so few images
    return text


def render_markdown(d: ReportData, html_path: str | os.PathLike[str]) -> str:
    """A short summary: metrics, post-processing, key numbers and where the HTML report is."""
    m = d.metrics
    n_empty = int((d.per_image["truth_area_px"] == 0).sum())
    rows = [[f"`{k}`", _with_ci(m, k)] for k in METRICS]
    pp = m.get("postprocess_text") or (json.dumps(d.postprocess) if d.postprocess is not None else "n/a")
    lines = [f"# pneumoseg report: {d.run.resolve().name} ({_what(m)})", "", f"**{d.provenance_line}**", "",
             f"Full report (figures, galleries, sortable per-image table): `{Path(html_path).resolve()}`", "",
             f"{_what(m).capitalize()}: {m.get('n_images')} images, {m.get('n_positive')} with pneumothorax; "
             f"model `{m.get('model')}` at {m.get('model_size', m.get('size'))} px, TTA {'on' if m.get('tta') else 'off'}; "
             f"scored at the {m.get('resolution', 'model')} resolution ({m.get('source_size', 'n/a')}).", "",
             "## Metrics", "", md_table(["metric", "value [95 % bootstrap CI]"], rows), "",
             "## Post-processing", "", f"`{pp}`"]
    if d.tune is not None and len(d.tune):
        lines.append(f"(best of {len(d.tune)} rules in `tune.csv`: dice_kaggle {fmt(float(d.tune['dice_kaggle'].iloc[0]))}"
                     " on the tuning split)")
    lines += ["", "## Key numbers", "",
              f"- false positives on empty images: {d.count('FP')} of {n_empty}",
              f"- missed pneumothoraces (empty prediction): {d.count('FN')} of {len(d.per_image) - n_empty}"]
    t = d.train_summary or {}
    if t.get("predicts_nothing"):
        lines.append("- **warning: the model predicts nothing** (train_summary.json)")
    lines += [f"- training warning: {w}" for w in t.get("warnings") or []]
    best = _best_epoch(d)
    if best:
        lines.append(f"- training: {best[0]} epochs, best val dice_kaggle {best[1]} at epoch {best[2]}")
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                 eval_dir: str | os.PathLike[str] | None = None) -> ReportFiles:
    """Write ``out`` (default ``RUN/report.html``) and the Markdown summary beside it (``.md``)."""
    data = load_report_data(run_dir, eval_dir)
    html_path = Path(out) if out else Path(run_dir) / "report.html"
    return ReportFiles(*write_pages(html_path, render_html(data), render_markdown(data, html_path)))
