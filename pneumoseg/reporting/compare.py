"""Compare evaluated runs on one split: metrics with bootstrap CIs, paired differences, cases.

The entry points are :func:`compare_runs` (the statistics, a :class:`Comparison`) and
:func:`write_comparison` (the page and its Markdown); this module also holds what the comparison page says.
Works from what ``pneumoseg evaluate RUN --split S`` (or ``--data DIR``: S is the data set's name)
wrote (``gather.load_run_eval``: ``RUN/eval/S/``, ``RUN/config.yaml``, ``RUN/history.csv`` for curves,
training time and throughput; nothing is predicted again). Case thumbnails (``figures.thumbnail``) read each
image and its truth back the way the evaluation did: the cache's ``images/`` + ``truth/`` for a split, the
recorded files and labels for an external set; a case without an image says why ("no image: cache ... not
found from here").

Statistics (``pneumoseg.scoring.stats``): images are resampled with replacement within the strata
pneumothorax / empty; each run's metric gets a percentile CI; each later run is compared with
the first (A) on the **same** resampled images (paired bootstrap: difference, CI, two-sided
p), and its per-image Dice with a Wilcoxon signed-rank test. Runs must have been evaluated on
the same images (``allow_different_sets``: compare on the common ones) with the same truth.
Small samples (``pneumoseg.scoring.stats``): below 20 images, or 5 images behind a metric (or in a
size bucket), no interval is shown ("n too small"), and a p-value is the exact paired
permutation test's (marked "exact") wherever at most 16 images differ between the runs; a set
below 20 images or without a positive adds a note.

Size buckets: positive images split by truth area (``pneumoseg.runs.truth_areas``: mm² when every
positive image has a pixel spacing, else source pixels; the header says which) at ``size_edges``
(default: the tertiles of the positive images' areas).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumoseg.data.split import small_set_warning
from pneumoseg.errors import DataError, PneumosegError
from pneumoseg.evaluation.cases import CaseLoader
from pneumoseg.reporting.figures import case_loader, history_png, thumbnail
from pneumoseg.reporting.gather import RunEval, image_score, load_run_eval
from pneumoseg.reporting.render import data_url, generated_text, md_table, page, table_html, write_pages
from pneumoseg.runs import truth_areas, unit_text
from pneumoseg.scoring.stats import (
    CI,
    MAX_EXACT,
    METRIC_NAMES,
    MIN_IMAGES,
    MIN_SUBSET,
    PairedResult,
    PerImage,
    bootstrap_ci,
    bootstrap_distributions,
    exact_paired_p,
    interval_note,
    metric_note,
    metric_statistic,
    predict_nothing_dice,
    wilcoxon_p,
)
from pneumoseg.training.provenance import NOT_FOR_CLINICAL_USE, describe_training, read_provenance
from pneumoseg.util.paths import short_id

__all__ = ["CASE_KINDS", "Comparison", "compare_runs", "metric_header", "metric_rows", "render_html",
           "render_markdown", "write_comparison"]

CASE_KINDS = {"disagree": "Where the runs disagree most (largest spread of per-image Dice)",
              "best": "Best cases (highest mean Dice over the runs, pneumothorax images)",
              "worst": "Worst cases (lowest mean Dice over the runs)"}
FACT_KEYS = ("model", "parameters", "epochs", "train_time_s", "train_img_per_s", "latency_ms")


def _common_ids(runs: list[RunEval], allow_different_sets: bool) -> tuple[list[str], list[str]]:
    """The image ids every run was evaluated on (first run's order) and notes; refuses differing sets."""
    first = runs[0]
    ids = list(first.per_image.index)
    notes = []
    for r in runs[1:]:
        other = set(r.per_image.index)
        only_a = [i for i in ids if i not in other]
        only_b = sorted(other - set(first.per_image.index))
        if only_a or only_b:
            common = [i for i in ids if i in other]
            example = (only_a or only_b)[0]
            line = (f"{r.run} was evaluated on other images of split {r.eval_dir.name!r} than {first.run}: "
                    f"{len(r.per_image)} vs {len(first.per_image)} images, {len(only_b)} only in the former, "
                    f"{len(only_a)} only in the latter (e.g. {example})")
            if not allow_different_sets:
                raise DataError(f"{line}; pass --allow-different-sets to compare on the {len(common)} common images")
            notes.append(line)
        ids = [i for i in ids if i in other]
    if not ids:
        raise DataError("the runs share no evaluated image: nothing to compare")
    truth = first.per_image.loc[ids, "has_truth"].to_numpy() > 0
    for r in runs[1:]:
        bad = np.flatnonzero((r.per_image.loc[ids, "has_truth"].to_numpy() > 0) != truth)
        if bad.size:
            raise DataError(f"{r.eval_dir / 'per_image.csv'}: ImageId {ids[bad[0]]} has has_truth "
                            f"{int(not truth[bad[0]])} but {int(truth[bad[0]])} in {first.eval_dir / 'per_image.csv'}; "
                            "runs must be scored against the same truth")
    resolutions = {str(r.metrics.get("resolution", "n/a")) for r in runs}
    if len(resolutions) > 1:
        notes.append(f"runs were scored at different resolutions ({', '.join(sorted(resolutions))}): Dice values are "
                     "not strictly comparable")
    return ids, notes


@dataclass
class Comparison:
    """Everything :func:`compare_runs` computed; per-run dicts are keyed by run label."""

    runs: list[RunEval]
    split: str
    image_ids: list[str]
    has_truth: np.ndarray
    per: dict[str, PerImage]
    ci: dict[str, dict[str, CI]]
    paired: dict[str, dict[str, PairedResult]]
    wilcoxon: dict[str, float]
    buckets: pd.DataFrame
    bucket_unit: str
    cases: dict[str, list[str]]
    baseline: float
    n_boot: int
    seed: int
    level: float
    notes: list[str] = field(default_factory=list)


def _buckets(c: Comparison, edges: tuple[float, float] | None) -> pd.DataFrame:
    area, c.bucket_unit = truth_areas(c.runs[0].per_image.loc[c.image_ids], c.runs[0].images)
    pos = c.has_truth
    if edges is None:
        edges = tuple(np.quantile(area[pos], [1 / 3, 2 / 3])) if pos.any() else (math.nan, math.nan)
    lo, hi = edges
    unit = c.bucket_unit
    groups = [("empty (no pneumothorax)", ~pos), (f"small (< {lo:.0f} {unit})", pos & (area < lo)),
              (f"medium ({lo:.0f} to < {hi:.0f} {unit})", pos & (area >= lo) & (area < hi)),
              (f"large (>= {hi:.0f} {unit})", pos & (area >= hi))]
    rows = []
    for name, keep in groups:
        row: dict[str, Any] = {"bucket": name, "images": int(keep.sum())}
        note = interval_note(len(c.image_ids), int(keep.sum()), "images in the bucket")
        for r in c.runs:
            row[r.label] = bootstrap_ci(c.per[r.label].dice[keep], None, c.n_boot, c.seed, c.level, note=note)
        rows.append(row)
    return pd.DataFrame(rows)


def _cases(c: Comparison, n_cases: int) -> dict[str, list[str]]:
    dice = np.stack([c.per[r.label].dice for r in c.runs])
    truth_area = c.runs[0].per_image.loc[c.image_ids, "truth_area_px"].to_numpy()
    any_pred = np.stack([c.per[r.label].pred_positive for r in c.runs]).any(0)
    spread, mean = dice.max(0) - dice.min(0), dice.mean(0)
    ids = np.asarray(c.image_ids, dtype=object)
    disagree = np.lexsort((-truth_area, -spread))
    best = np.flatnonzero(c.has_truth)[np.lexsort((-truth_area[c.has_truth], -mean[c.has_truth]))]
    visible = np.flatnonzero(c.has_truth | any_pred)
    worst = visible[np.lexsort((-truth_area[visible], mean[visible]))]
    return {"disagree": list(ids[disagree[spread[disagree] > 0][:n_cases]]),
            "best": list(ids[best[mean[best] > 0][:n_cases]]),
            "worst": list(ids[worst[mean[worst] < 1][:n_cases]])}


def _paired(name: str, boot: PairedResult, a: PerImage, b: PerImage) -> PairedResult:
    """The bootstrap result, with the exact permutation p-value where few enough images differ."""
    exact = exact_paired_p(name, a, b)
    return boot if exact is None else PairedResult(boot.diff, exact, exact=True)


def compare_runs(runs: Sequence[str | os.PathLike[str]], split: str = "test", allow_different_sets: bool = False,
                 n_boot: int = 2000, seed: int = 0, level: float = 0.95, n_cases: int = 6,
                 size_edges: tuple[float, float] | None = None) -> Comparison:
    """Compare two or more evaluated runs on ``split`` (the first is the reference A)."""
    if len(runs) < 2:
        raise DataError(f"compare needs at least two runs, got {len(runs)} (a run may be given twice)")
    labels = [chr(ord("A") + k) if k < 26 else f"R{k + 1}" for k in range(len(runs))]
    evals = [load_run_eval(r, split, lab) for r, lab in zip(runs, labels, strict=True)]
    ids, notes = _common_ids(evals, allow_different_sets)
    has_truth = evals[0].per_image.loc[ids, "has_truth"].to_numpy() > 0
    per = {}
    for r in evals:
        df = r.per_image.loc[ids]
        per[r.label] = PerImage.from_arrays(df["dice"], has_truth, df["pred_area_px"] > 0, image_score(df)[0])
    # One set of resamples for every run and metric: the differences to A are paired.
    dist = bootstrap_distributions({(lab, m): metric_statistic(m, per[lab]) for lab in labels for m in METRIC_NAMES},
                                   len(ids), has_truth, n_boot, seed)
    notes_ci = {m: metric_note(m, per[labels[0]]) for m in METRIC_NAMES}  # same truth in every run
    ci = {lab: {m: dist[lab, m].ci(level, notes_ci[m]) for m in METRIC_NAMES} for lab in labels}
    paired = {lab: {m: _paired(m, dist[lab, m].paired(dist[labels[0], m], level, notes_ci[m]), per[labels[0]],
                               per[lab]) for m in METRIC_NAMES} for lab in labels[1:]}
    wil = {lab: wilcoxon_p(per[labels[0]].dice, per[lab].dice) for lab in labels[1:]}
    small = small_set_warning("compared on", [("", len(ids), int(has_truth.sum()))])
    if small:
        notes.append(small)
    c = Comparison(evals, split, ids, has_truth, per, ci, paired, wil, pd.DataFrame(), "px", {},
                   predict_nothing_dice(has_truth), n_boot, seed, level, notes)
    c.buckets = _buckets(c, size_edges)
    c.cases = _cases(c, n_cases)
    return c


# ---------------------------------------------------------------- rendering


def _ci_text(ci: CI, digits: int = 4, sign: str = "") -> str:
    """``value [low, high]``, ``value (n too small: ...)`` or ``n/a``."""
    if math.isnan(ci.value):
        return "n/a"
    if ci.note:
        return f"{ci.value:{sign}.{digits}f} ({ci.note})"
    return f"{ci.value:{sign}.{digits}f} [{ci.low:{sign}.{digits}f}, {ci.high:{sign}.{digits}f}]"


def _diff_text(p: PairedResult, digits: int = 4) -> str:
    return _ci_text(p.diff, digits, "+")


def _p_text(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _paired_p_text(p: PairedResult) -> str:
    """The p cell: ``0.062 (exact)`` for the exact permutation test, else the bootstrap p."""
    return _p_text(p.p_value) + (" (exact)" if p.exact and not math.isnan(p.p_value) else "")


def _fact_text(key: str, v: Any) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if key == "parameters":
        return f"{int(v) / 1e6:.2f} M"
    if key == "train_time_s":
        return f"{v / 60:.1f} min" if v >= 60 else f"{v:.1f} s"
    if key in ("train_img_per_s", "latency_ms"):
        return f"{v:.1f}"
    return str(v)


def metric_rows(c: Comparison, digits: int = 4) -> list[list[str]]:
    """Rows ``metric, value [CI] per run, then (diff [CI], p) per later run``; the CLI's and reports' table."""
    rows = []
    for m in METRIC_NAMES:
        row = [m] + [_ci_text(c.ci[r.label][m], digits) for r in c.runs]
        for r in c.runs[1:]:
            row += [_diff_text(c.paired[r.label][m], digits), _paired_p_text(c.paired[r.label][m])]
        rows.append(row)
    return rows


def metric_header(c: Comparison) -> list[str]:
    head = ["metric"] + [r.label for r in c.runs]
    for r in c.runs[1:]:
        head += [f"{r.label} − A", "p"]
    return head


def _cell(text: str) -> str:
    """A table cell; ``value [low, high]`` is shown as the value over a muted interval."""
    value, sep, interval = text.partition(" [")
    if not sep:
        return f"<td>{html.escape(text)}</td>"
    return f'<td>{html.escape(value)}<br><span class="note">[{html.escape(interval)}</span></td>'


def _html_table(head: list[str], rows: list[list[str]], sortable: bool = False) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return table_html(th, body, " class=sortable" if sortable else "")


def _facts_rows(c: Comparison) -> list[list[str]]:
    rows = []
    for r in c.runs:
        f = r.facts()
        rows.append([r.label, str(r.run.resolve())] + [_fact_text(k, f[k]) for k in FACT_KEYS])
    return rows


FACT_HEAD = ["run", "folder", "model", "parameters", "epochs", "training time", "train img/s",
             "inference ms/img"]


def _bucket_head(c: Comparison) -> list[str]:
    return [f"bucket (truth area, {c.bucket_unit})", "images"] + [r.label for r in c.runs]


def _bucket_rows(c: Comparison) -> list[list[str]]:
    return [[row["bucket"], str(row["images"])] + [_ci_text(row[r.label]) for r in c.runs]
            for row in c.buckets.to_dict("records")]


def _method_text(c: Comparison) -> str:
    return (f"{len(c.image_ids)} images ({int(c.has_truth.sum())} with pneumothorax) of split {c.split}. "
            f"Intervals: {c.level:.0%} percentile bootstrap, {c.n_boot} resamples (seed {c.seed}) of the images, "
            "drawn with replacement within pneumothorax / empty images. Differences are paired: both runs on the "
            "same resampled images; p is the two-sided paired bootstrap p-value, or, marked exact, the exact paired "
            f"permutation test (all swaps of the runs' results) where at most {MAX_EXACT} images differ. No "
            f"interval (n too small) below {MIN_IMAGES} images, or below {MIN_SUBSET} images behind a metric or in a "
            "bucket. "
            f"Wilcoxon: signed-rank test on per-image Dice. Predict-nothing baseline (dice_kaggle of an empty mask everywhere): "
            f"{c.baseline:.4f}.")


def _cases_html(c: Comparison) -> str:
    out = ['<p class="legend"><span style="background:#ff2828"></span>prediction'
           '<span style="background:#286eff"></span>truth</p>']
    dice = {r.label: dict(zip(c.image_ids, c.per[r.label].dice, strict=True)) for r in c.runs}
    loaders: dict[str, CaseLoader | str] = {}
    for r in c.runs:
        try:
            loaders[r.label] = case_loader(r)
        except PneumosegError as exc:
            loaders[r.label] = str(exc)
    for kind, title in CASE_KINDS.items():
        out.append(f'<h3 id="cases-{kind}">{html.escape(title)}</h3>')
        if not c.cases[kind]:
            out.append('<p class="note">none</p>')
            continue
        head = "".join(f"<th>{html.escape(r.name)}</th>" for r in c.runs)
        rows = []
        for image_id in c.cases[kind]:
            cells = []
            for r in c.runs:
                load = loaders[r.label]
                try:
                    if isinstance(load, str):
                        raise DataError(load)
                    img = f'<img alt="{html.escape(image_id)} {r.label}" src="{data_url(thumbnail(r, image_id, load))}">'
                except PneumosegError as exc:
                    img = f'<p class="note missing">no image: {html.escape(str(exc))}</p>'

                cells.append(f"<td><figure>{img}<figcaption><b>Dice {dice[r.label][image_id]:.3f}</b> · "
                             f"pred {int(r.per_image.loc[image_id, 'pred_area_px'])} px</figcaption></figure></td>")
            truth = int(c.runs[0].per_image.loc[image_id, "truth_area_px"])
            rows.append(f'<tr><td class="id"><span title="{html.escape(image_id)}">{html.escape(short_id(image_id))}'
                        f'</span><br>truth {truth} px</td>{"".join(cells)}</tr>')
        out.append(table_html(f"<th>ImageId</th>{head}", "".join(rows), ' class="cases"'))
    return "\n".join(out)


def render_html(c: Comparison) -> str:
    """The comparison page: one self-contained HTML document (inline CSS/JS, data-URL images)."""
    wil = "".join(f"<li>{html.escape(r.name)} vs A: Wilcoxon p = {_p_text(c.wilcoxon[r.label])}</li>"
                  for r in c.runs[1:])
    metrics = (_html_table(metric_header(c), metric_rows(c)) + f"<ul>{wil}</ul>"
               f'<p class="note" id="method">{html.escape(_method_text(c))}</p>')
    curves = history_png(c.runs)
    curves_html = (f'<img class="curves" alt="learning curves" src="{data_url(curves)}">' if curves else
                   '<p class="note">no history.csv in the runs</p>')
    buckets = (_html_table(_bucket_head(c), _bucket_rows(c)) +
               f'<p class="note">mean per-image Dice [{c.level:.0%} CI]; truth areas in '
               f"{html.escape(unit_text(c.bucket_unit))}</p>")
    notes = "".join(f'<p class="note warn">{html.escape(n)}</p>' for n in c.notes)
    sections = [("runs", "Runs", _html_table(FACT_HEAD, _facts_rows(c)) + notes),
                ("metrics", "Metrics", metrics), ("sizes", f"Dice by pneumothorax size ({c.bucket_unit})", buckets),
                ("curves", "Learning curves", curves_html), ("cases", "Cases side by side", _cases_html(c))]
    subtitle = f"split {c.split} · {len(c.image_ids)} images · {generated_text()}"
    title = "pneumoseg compare: " + " vs ".join(r.run.resolve().name for r in c.runs)
    trained = describe_training([read_provenance(r.run) for r in c.runs])
    return page(title, subtitle, f"{trained}. {NOT_FOR_CLINICAL_USE}.", sections)


def render_markdown(c: Comparison, html_path: str | os.PathLike[str]) -> str:
    """The comparison's tables in Markdown, with a pointer to the HTML page."""
    lines = ["# pneumoseg compare: " + " vs ".join(r.run.resolve().name for r in c.runs), "",
             f"Full page (curves, cases): `{Path(html_path).resolve()}`", "", "## Runs", "",
             md_table(FACT_HEAD, _facts_rows(c)), ""]
    lines += [f"> {n}" for n in c.notes] + ([""] if c.notes else [])
    lines += ["## Metrics", "", md_table(metric_header(c), metric_rows(c)), ""]
    lines += [f"- {r.name} vs A: Wilcoxon p = {_p_text(c.wilcoxon[r.label])}" for r in c.runs[1:]]
    lines += ["", _method_text(c), "", f"## Dice by pneumothorax size ({c.bucket_unit})", "",
              md_table(_bucket_head(c), _bucket_rows(c)), "", f"Truth areas in {unit_text(c.bucket_unit)}."]
    return "\n".join(lines) + "\n"


def write_comparison(c: Comparison, out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the HTML page ``out`` and the Markdown beside it (``.md``); return both paths."""
    return write_pages(out, render_html(c), render_markdown(c, out))
