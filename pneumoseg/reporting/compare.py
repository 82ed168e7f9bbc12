"""Compare evaluated runs on one split: metrics with bootstrap CIs, paired differences, cases.

Works from what ``pneumoseg evaluate RUN --split S`` (or ``--data DIR``: S is the data set's name)
wrote, found by ``pneumoseg.runs.find_eval_dir`` (nothing is predicted again): ``RUN/eval/S/metrics.json``,
``per_image.csv`` (``image_id, has_truth, truth_area_px, pred_area_px, probability, dice``
[, older ``pixel_spacing_mm``, ``truth_area_mm2``]), ``images.csv`` (source file, pixel spacing)
and ``pred_masks/<id>.png``; plus ``RUN/config.yaml`` (the typed config: ``pneumoseg.runs.read_run_config``),
``RUN/history.csv`` (curves, training time, throughput). Case thumbnails read each image and its
truth back the way the evaluation did (``pneumoseg.evaluation.evaluate.eval_case_loader``): the
cache's ``images/`` + ``truth/`` for a split, the recorded files and labels for an external set; a
case without an image says why ("no image: cache ... not found from here"). An older ``RUN/eval/``
whose ``metrics.json`` names the split is read too.

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

import base64
import datetime as dt
import html
import io
import json
import math
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumoseg import __version__
from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.errors import DataError, PneumosegError
from pneumoseg.config import ExperimentConfig
from pneumoseg.evaluation.cases import CaseLoader
from pneumoseg.evaluation.external import eval_case_loader
from pneumoseg.util.paths import short_id
from pneumoseg.io.images import read_mask, resize_image, resize_mask
from pneumoseg.runs import find_eval_dir, read_eval_images, read_run_config, truth_areas, unit_text
from pneumoseg.io.overlay import encode_rgb_png, overlay
from pneumoseg.util.paths import safe_name
from pneumoseg.data.split import small_set_warning
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

__all__ = ["CASE_KINDS", "REQUIRED_COLUMNS", "Comparison", "RunEval", "compare_runs",
           "load_run_eval", "metric_header", "metric_rows", "render_html", "render_markdown", "write_comparison"]

REQUIRED_COLUMNS = ("image_id", "has_truth", "truth_area_px", "pred_area_px", "probability", "dice")
CASE_KINDS = {"disagree": "Where the runs disagree most (largest spread of per-image Dice)",
              "best": "Best cases (highest mean Dice over the runs, pneumothorax images)",
              "worst": "Worst cases (lowest mean Dice over the runs)"}
FACT_KEYS = ("model", "parameters", "epochs", "train_time_s", "train_img_per_s", "latency_ms")


@dataclass
class RunEval:
    """One run's evaluation of a split, as read from its folder."""

    label: str
    run: Path
    eval_dir: Path
    metrics: dict[str, Any]
    per_image: pd.DataFrame
    config: ExperimentConfig | None = None
    history: pd.DataFrame | None = None
    images: pd.DataFrame | None = None  # EV/images.csv: source file and pixel spacing of each image

    @property
    def name(self) -> str:
        return f"{self.label}: {self.run.resolve().name}"

    def facts(self) -> dict[str, Any]:
        """Model, parameter count, epochs, training time and throughput, inference latency (NaN: unknown)."""
        m, h = self.metrics, self.history
        model = m.get("model") or (self.config.model.name if self.config else None) or "n/a"
        params = m.get("n_params", m.get("parameters"))
        if params is None:
            params = _count_parameters(self.config)
        time_s = img_s = math.nan
        if h is not None and "epoch_time_s" in h:
            time_s = float(pd.to_numeric(h["epoch_time_s"], errors="coerce").sum())
        if h is not None and "train_img_per_s" in h:
            img_s = float(pd.to_numeric(h["train_img_per_s"], errors="coerce").median())
        latency = m.get("latency_ms_per_image", math.nan)
        if "predict_seconds" in m and m.get("n_images"):
            latency = 1000 * float(m["predict_seconds"]) / float(m["n_images"])
        return {"model": model, "parameters": params if params is not None else math.nan,
                "epochs": len(h) if h is not None else math.nan, "train_time_s": time_s,
                "train_img_per_s": img_s, "latency_ms": float(latency)}


def _count_parameters(config: ExperimentConfig | None) -> int | None:
    """Parameters of the config's model, built on torch's meta device (no memory); None if unknown."""
    if config is None:
        return None
    try:
        import torch

        from pneumoseg.models import create_model

        with torch.device("meta"):
            net = create_model(config.model.name, in_channels=config.data.in_channels,
                               aux_classifier=config.model.aux_classifier)
        return int(sum(p.numel() for p in net.parameters()))
    except (PneumosegError, ImportError, RuntimeError, TypeError, ValueError):
        return None


def _read_per_image(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"image_id": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; needs {', '.join(REQUIRED_COLUMNS)}")
    for col in REQUIRED_COLUMNS[1:]:
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            k = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataError(f"{path} row {k + 2} ImageId {df['image_id'].iloc[k]}: {col} {df[col].iloc[k]!r} "
                            "is not a number")
        df[col] = values
    for image_id in df["image_id"]:  # ids become file names (thumbnails): refuse ../ and the like
        safe_name(str(image_id), path)
    dup = df["image_id"].duplicated()
    if dup.any():
        raise DataError(f"{path}: ImageId {df['image_id'][dup].iloc[0]} appears more than once")
    return df.set_index("image_id", drop=False)


def load_run_eval(run: str | os.PathLike[str], split: str, label: str = "A") -> RunEval:
    """Read a run's evaluation of ``split``; DataError naming what is missing."""
    path = Path(run)
    ev = find_eval_dir(path, split)
    try:
        metrics = json.loads((ev / "metrics.json").read_text()) if (ev / "metrics.json").is_file() else {}
    except json.JSONDecodeError as exc:
        raise DataError(f"{ev / 'metrics.json'}: not valid JSON ({exc})") from None
    if metrics.get("split", split) != split:
        raise DataError(f"{ev / 'metrics.json'}: split is {metrics.get('split')!r}, expected {split!r}")
    out = RunEval(label, path, ev, metrics, _read_per_image(ev / "per_image.csv"),
                  read_run_config(path, required=False), images=read_eval_images(ev))
    if (path / "history.csv").is_file():
        try:
            out.history = pd.read_csv(path / "history.csv")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path / 'history.csv'}: cannot read CSV ({exc})") from None
    return out


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
        score = df["score"] if "score" in df else df["probability"]  # evaluate's AUC score (top-k mean)
        per[r.label] = PerImage.from_arrays(df["dice"], has_truth, df["pred_area_px"] > 0, score)
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


# ---------------------------------------------------------------- figures


def _curves_png(c: Comparison) -> bytes | None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("val_dice_kaggle", "validation dice_kaggle"), ("val_dice_positive", "validation dice_positive"),
              ("val_loss", "validation loss"), ("train_loss", "training loss")]
    panels = [p for p in panels if any(r.history is not None and p[0] in r.history for r in c.runs)]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for k, (col, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for r in c.runs:
            if r.history is not None and col in r.history:
                ax.plot(r.history["epoch"], r.history[col], "-o", ms=3, label=r.name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _mask_or_empty(path: Path, shape: tuple[int, int], area: float) -> np.ndarray | None:
    if path.is_file():
        return read_mask(path)
    return np.zeros(shape, bool) if area == 0 else None


THUMBNAIL = 200  # px, longest side of a case thumbnail


def _case_loader(run: RunEval) -> CaseLoader:
    """How the cases of ``run``'s evaluation are read back: the cache of a split, the recorded files and
    labels of an external set (``pneumoseg.evaluation.evaluate.eval_case_loader``); PneumosegError: why not."""
    cache = run.config.data.cache if run.config is not None else None
    if run.config is None and run.metrics.get("source") != "external":
        raise DataError(f"{run.run / 'config.yaml'} not found: the run's cache (the split's images) is unknown")
    return eval_case_loader(run.eval_dir, run.metrics, cache, THUMBNAIL)


def _thumbnail(run: RunEval, image_id: str, load: CaseLoader, size: int = THUMBNAIL) -> bytes:
    """PNG of the image with the run's prediction (red) and the truth (blue); PneumosegError saying why not."""
    image, truth = load(image_id)
    pred_path = run.eval_dir / "pred_masks" / f"{image_id}.png"
    pred = _mask_or_empty(pred_path, truth.shape, float(run.per_image.loc[image_id, "pred_area_px"]))
    if pred is None:
        raise DataError(f"{pred_path} not found")
    h, w = truth.shape
    scale = size / max(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    rgb = overlay(resize_image(image, shape), resize_mask(pred, shape), resize_mask(truth, shape))
    return encode_rgb_png(rgb)


# ---------------------------------------------------------------- rendering


def _num(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


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
    return (f'<div class="tablewrap"><table{" class=sortable" if sortable else ""}><thead><tr>{th}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


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
            loaders[r.label] = _case_loader(r)
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
                    png = _thumbnail(r, image_id, load)
                    img = (f'<img alt="{html.escape(image_id)} {r.label}" src="data:image/png;base64,'
                           f'{base64.b64encode(png).decode("ascii")}">')
                except PneumosegError as exc:
                    img = f'<p class="note missing">no image: {html.escape(str(exc))}</p>'

                cells.append(f"<td><figure>{img}<figcaption><b>Dice {dice[r.label][image_id]:.3f}</b> · "
                             f"pred {int(r.per_image.loc[image_id, 'pred_area_px'])} px</figcaption></figure></td>")
            truth = int(c.runs[0].per_image.loc[image_id, "truth_area_px"])
            rows.append(f'<tr><td class="id"><span title="{html.escape(image_id)}">{html.escape(short_id(image_id))}'
                        f'</span><br>truth {truth} px</td>{"".join(cells)}</tr>')
        out.append(f'<div class="tablewrap"><table class="cases"><thead><tr><th>ImageId</th>{head}</tr></thead>'
                   f"<tbody>{''.join(rows)}</tbody></table></div>")
    return "\n".join(out)


def render_html(c: Comparison) -> str:
    """The comparison page: one self-contained HTML document (inline CSS/JS, data-URL images)."""
    wil = "".join(f"<li>{html.escape(r.name)} vs A: Wilcoxon p = {_p_text(c.wilcoxon[r.label])}</li>"
                  for r in c.runs[1:])
    metrics = (_html_table(metric_header(c), metric_rows(c)) + f"<ul>{wil}</ul>"
               f'<p class="note" id="method">{html.escape(_method_text(c))}</p>')
    curves = _curves_png(c)
    curves_html = (f'<img class="curves" alt="learning curves" src="data:image/png;base64,'
                   f'{base64.b64encode(curves).decode("ascii")}">' if curves else
                   '<p class="note">no history.csv in the runs</p>')
    buckets = (_html_table(_bucket_head(c), _bucket_rows(c)) +
               f'<p class="note">mean per-image Dice [{c.level:.0%} CI]; truth areas in '
               f"{html.escape(unit_text(c.bucket_unit))}</p>")
    notes = "".join(f'<p class="note warn">{html.escape(n)}</p>' for n in c.notes)
    sections = [("runs", "Runs", _html_table(FACT_HEAD, _facts_rows(c)) + notes),
                ("metrics", "Metrics", metrics), ("sizes", f"Dice by pneumothorax size ({c.bucket_unit})", buckets),
                ("curves", "Learning curves", curves_html), ("cases", "Cases side by side", _cases_html(c))]
    nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{html.escape(t)}</h2>\n{b}\n</section>\n' for a, t, b in sections)
    subtitle = (f"split {c.split} · {len(c.image_ids)} images · generated "
                f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by pneumoseg {__version__}")
    template = string.Template(resources.files("pneumoseg.reporting").joinpath("report_template.html").read_text("utf-8"))
    title = "pneumoseg compare: " + " vs ".join(r.run.resolve().name for r in c.runs)
    trained = describe_training([read_provenance(r.run) for r in c.runs])
    return template.substitute(title=html.escape(title), subtitle=html.escape(subtitle), nav=nav, body=body,
                               provenance=html.escape(f"{trained}. {NOT_FOR_CLINICAL_USE}."))


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in rows])


def render_markdown(c: Comparison, html_path: str | os.PathLike[str]) -> str:
    """The comparison's tables in Markdown, with a pointer to the HTML page."""
    lines = ["# pneumoseg compare: " + " vs ".join(r.run.resolve().name for r in c.runs), "",
             f"Full page (curves, cases): `{Path(html_path).resolve()}`", "", "## Runs", "",
             _md_table(FACT_HEAD, _facts_rows(c)), ""]
    lines += [f"> {n}" for n in c.notes] + ([""] if c.notes else [])
    lines += ["## Metrics", "", _md_table(metric_header(c), metric_rows(c)), ""]
    lines += [f"- {r.name} vs A: Wilcoxon p = {_p_text(c.wilcoxon[r.label])}" for r in c.runs[1:]]
    lines += ["", _method_text(c), "", f"## Dice by pneumothorax size ({c.bucket_unit})", "",
              _md_table(_bucket_head(c), _bucket_rows(c)), "", f"Truth areas in {unit_text(c.bucket_unit)}."]
    return "\n".join(lines) + "\n"


def write_comparison(c: Comparison, out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the HTML page ``out`` and the Markdown beside it (``.md``); return both paths."""
    html_path = Path(out)
    md_path = html_path.with_suffix(".md")
    atomic_write_text(html_path, render_html(c))
    atomic_write_text(md_path, render_markdown(c, html_path))
    return html_path, md_path
