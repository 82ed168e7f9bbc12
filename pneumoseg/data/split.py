"""Patient-grouped, stratified splits of a prepared cache -> ``CACHE/splits.csv``.

Rule:

* ``folds == 0``: every patient goes to exactly one of train / val / test, with about ``val`` and
  ``test`` of the images in val and test, and about the same positive rate in each split.
* ``folds == K > 0``: ``test`` of the images are held out (split ``test``, fold ``-1``); the rest get
  ``fold`` 0..K-1 (about equal sizes and positive rates). Fold 0 is the default validation set:
  its ``split`` is ``val``, the other folds' is ``train``. Giving ``val`` too is refused (it is 1/K).

``write_splits`` refuses to replace a ``CACHE/splits.csv`` that differs from the one it would
write (runs trained on the old one would silently be scored on other images) unless ``force``.

Groups are patients (``patient_id``); an image without one (the PNG layout) is its own group, with
a warning, since two images of one patient could then land in different splits.

Small sets: a split (or fold) with fewer than ``MIN_IMAGES`` images, or with no positive, gets one
warning line naming each such split (``small_set_warning``; tune, evaluate and compare use it too): on
so few images a metric swings with single images and has no honest confidence interval, and
without a positive dice_positive, sensitivity and image_auc are undefined.

The assignment is a seeded greedy: groups are shuffled (``np.random.default_rng(seed)``), sorted
by size (largest first), and each goes to the bucket where it most reduces the squared, relative
shortfall of images and of positives against the bucket's targets.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from pneumoseg.util.atomic import atomic_write_text
from pneumoseg.errors import DataError

__all__ = ["DEFAULT_VAL", "MIN_IMAGES", "make_splits", "read_index", "small_set_text", "small_set_warning",
           "split_summary", "write_splits"]

SPLITS = ("train", "val", "test")
DEFAULT_VAL = 0.1  #: validation fraction when neither it nor folds are given
#: Fewer images than this in a split, a tuning or an evaluation set: a warning, and no bootstrap interval
#: (``pneumoseg.scoring.stats``: "n too small").
MIN_IMAGES = 20


def small_set_text(n_images: int, n_positive: int) -> str | None:
    """``"12 images (< 20)"``, ``"40 images, none with pneumothorax"``, both, or None when the set is fine."""
    problems = []
    if n_images < MIN_IMAGES:
        problems.append(f"{n_images} image{'' if n_images == 1 else 's'} (< {MIN_IMAGES})")
    if n_positive == 0:
        problems.append("none with pneumothorax" if problems else f"{n_images} images, none with pneumothorax")
    return ", ".join(problems) or None


def small_set_warning(what: str, sizes: list[tuple[str, int, int]]) -> str | None:
    """One warning line for the sets ``(name, n_images, n_positive)`` that are small or have no positive.

    ``"{what}: {name} has 12 images (< 20); ...: <what that means>"`` (an empty name: ``"{what} 12 images
    (< 20): ..."``), or None when every set is fine.
    """
    problems = [(name, small_set_text(n, pos), n < MIN_IMAGES, pos == 0) for name, n, pos in sizes]
    problems = [p for p in problems if p[1]]
    if not problems:
        return None
    means = []
    if any(p[2] for p in problems):
        means.append(f"metrics on fewer than {MIN_IMAGES} images swing with single images and get no "
                     "confidence interval")
    if any(p[3] for p in problems):
        means.append("without a positive, dice_positive, sensitivity and image_auc are undefined")
    listed = "; ".join(f"{name} has {text}" if name else str(text) for name, text, _, _ in problems)
    return f"{what}{': ' if problems[0][0] else ' '}{listed}: {'; '.join(means)}"


def _warn_small(splits: pd.DataFrame, positive: np.ndarray, expected: list[str]) -> None:
    """One UserWarning naming every split (or fold) in ``expected`` that is small or has no positive."""
    key = splits["fold"].map(lambda f: "test" if f < 0 else f"fold {f}") if "fold" in splits else splits["split"]
    sizes = []
    for name in expected:
        keep = (key == name).to_numpy()
        sizes.append((name, int(keep.sum()), int(positive[keep].sum())))
    line = small_set_warning("small splits", sizes)
    if line:
        warnings.warn(f"{line}; use larger fractions, fewer folds or more images", UserWarning, stacklevel=3)


def _check_args(val: float | None, test: float, folds: int) -> float:
    """Check the arguments; return the validation fraction to use (``DEFAULT_VAL`` when ``val`` is None)."""
    if folds and val is not None:
        raise DataError(f"--val {val} with --folds {folds}: with folds the validation set is one fold "
                        "(1/K of the non-test images); drop --val")
    val = DEFAULT_VAL if val is None else val
    for name, frac in (("val", val), ("test", test)):
        if not 0.0 <= frac < 1.0:
            raise DataError(f"--{name} {frac} is not a fraction: choose a value in [0, 1)")
    if folds < 0 or folds == 1:
        raise DataError(f"--folds {folds}: choose 0 (plain train/val/test split) or K >= 2 folds")
    if folds == 0 and val + test >= 1.0:
        raise DataError(f"--val {val} + --test {test} = {val + test:g} leaves nothing to train on: "
                        "keep the sum < 1")
    return val


def _groups(index: pd.DataFrame) -> np.ndarray:
    """Group label per row: patient_id, or the image_id where the patient is unknown."""
    if "patient_id" in index.columns:
        pid = index["patient_id"].fillna("").astype(str).str.strip()
    else:
        pid = pd.Series([""] * len(index), index=index.index)
    missing = pid == ""
    if missing.any():
        warnings.warn(f"{int(missing.sum())} of {len(index)} images have no patient_id: each is its own "
                      "group, so images of one patient may land in different splits", UserWarning,
                      stacklevel=3)
    return np.where(missing, "img:" + index["image_id"].astype(str), "pat:" + pid).astype(str)


def _assign(sizes: np.ndarray, positives: np.ndarray, fractions: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """Greedy stratified assignment of groups (sizes, positives) to buckets with ``fractions``."""
    order = rng.permutation(len(sizes))
    order = order[np.argsort(-sizes[order], kind="stable")]
    target_n = fractions * sizes.sum()
    target_p = fractions * positives.sum()
    # Scale each bucket's error by its target so small buckets (val, test) count as much as train.
    scale_n = np.maximum(target_n, 1.0)
    scale_p = np.maximum(target_p, 1.0)
    usable = fractions > 0
    count_n = np.zeros(len(fractions))
    count_p = np.zeros(len(fractions))
    out = np.empty(len(sizes), dtype=np.int64)
    for g in order:
        n, p = sizes[g], positives[g]
        gain = (((count_n + n - target_n) ** 2 - (count_n - target_n) ** 2) / scale_n
                + ((count_p + p - target_p) ** 2 - (count_p - target_p) ** 2) / scale_p)
        gain[~usable] = np.inf
        b = int(np.argmin(gain))
        out[g] = b
        count_n[b] += n
        count_p[b] += p
    return out


def make_splits(index: pd.DataFrame, val: float | None = None, test: float = 0.1, folds: int = 0,
                seed: int = 10) -> pd.DataFrame:
    """Assign each image of ``index`` (columns image_id, has_pneumothorax[, patient_id]) a split.

    Returns a DataFrame with ``image_id``, ``split`` (train|val|test) and, when ``folds`` > 0,
    ``fold`` (0..folds-1; -1 for test), in the order of ``index``. No patient is in two splits
    (nor two folds). Deterministic for a given ``seed``. See the module docstring for the rule.
    ``val``: validation fraction (default ``DEFAULT_VAL``); refused together with ``folds``.
    """
    val = _check_args(val, test, folds)
    for col in ("image_id", "has_pneumothorax"):
        if col not in index.columns:
            raise DataError(f"index has no {col!r} column (columns: {', '.join(map(str, index.columns))})")
    if index.empty:
        raise DataError("index is empty: nothing to split")
    dupes = index["image_id"][index["image_id"].duplicated()]
    if len(dupes):
        raise DataError(f"index lists image_id {dupes.iloc[0]!r} more than once ({len(dupes)} duplicates)")
    groups = _groups(index)
    codes, uniques = pd.factorize(groups, sort=True)
    sizes = np.bincount(codes, minlength=len(uniques)).astype(float)
    positive = (index["has_pneumothorax"].astype(int).to_numpy() > 0).astype(float)
    positives = np.bincount(codes, weights=positive, minlength=len(uniques))
    if folds:
        if folds > len(uniques):
            raise DataError(f"--folds {folds} is more than the {len(uniques)} patients (groups) in the index")
        fractions = np.array([test] + [(1.0 - test) / folds] * folds)
        bucket = _assign(sizes, positives, fractions, np.random.default_rng(seed))[codes]
        fold = bucket - 1  # bucket 0 = test -> fold -1
        split = np.where(fold == -1, "test", np.where(fold == 0, "val", "train"))
        out = pd.DataFrame({"image_id": index["image_id"].to_numpy(), "split": split, "fold": fold})
        _warn_small(out, positive, (["test"] if test else []) + [f"fold {k}" for k in range(folds)])
        return out
    fractions = np.array([1.0 - val - test, val, test])
    bucket = _assign(sizes, positives, fractions, np.random.default_rng(seed))[codes]
    out = pd.DataFrame({"image_id": index["image_id"].to_numpy(), "split": np.asarray(SPLITS)[bucket]})
    _warn_small(out, positive, [s for s, f in zip(SPLITS, fractions, strict=True) if f > 0])
    return out


def read_index(cache: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``CACHE/index.csv`` (ids as strings, empty patient ids kept as ``""``)."""
    path = Path(cache) / "index.csv"
    if not path.is_file():
        raise DataError(f"{path} not found: run `pneumoseg prepare ... --out {cache}` first")
    try:
        return pd.read_csv(path, dtype={"image_id": str, "patient_id": str}, keep_default_na=False,
                           na_values={"age": [""]})
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable index CSV ({exc})") from None


def split_summary(index: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """Per split (and fold): images, patients, positives and positive rate.

    With folds, the ``fold`` column is text: ``"0"``.. ``"K-1"``, and ``"test"`` for the held-out
    images (stored as fold -1 in splits.csv).
    """
    df = index[["image_id", "has_pneumothorax"]].merge(splits, on="image_id")
    df["group"] = _groups_quiet(index).reindex(df["image_id"]).to_numpy()
    keys = ["split", "fold"] if "fold" in df.columns else ["split"]
    out = df.groupby(keys, sort=True).agg(images=("image_id", "size"), patients=("group", "nunique"),
                                          positives=("has_pneumothorax", "sum")).reset_index()
    out["positive_rate"] = out["positives"] / out["images"]
    out["order"] = out["split"].map({s: i for i, s in enumerate(SPLITS)})
    out = out.sort_values(["order", *keys[1:]]).drop(columns="order").reset_index(drop=True)
    if "fold" in out.columns:
        out["fold"] = [("test" if f < 0 else str(f)) for f in out["fold"]]
    return out


def _groups_quiet(index: pd.DataFrame) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pd.Series(_groups(index), index=index["image_id"].to_numpy())


def _changed(path: Path, new: pd.DataFrame) -> int | None:
    """How many images ``new`` would move (or add / drop) against the splits.csv at ``path``; None if unreadable."""
    try:
        old = pd.read_csv(path, dtype={"image_id": str, "split": str}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, OSError):
        return None
    if "image_id" not in old.columns or "split" not in old.columns:
        return None
    cols = [c for c in ("split", "fold") if c in new.columns]
    a = old.set_index("image_id").reindex(columns=cols).astype(str)
    b = new.set_index("image_id")[cols].astype(str)
    both = a.index.intersection(b.index)
    moved = int((a.loc[both] != b.loc[both]).any(axis=1).sum()) if len(both) else 0
    return moved + len(a.index.difference(b.index)) + len(b.index.difference(a.index))


def write_splits(cache: str | os.PathLike[str], val: float | None = None, test: float = 0.1, folds: int = 0,
                 seed: int = 10, force: bool = False) -> Path:
    """Split ``CACHE/index.csv`` with :func:`make_splits` and write ``CACHE/splits.csv`` atomically.

    An existing splits.csv with other content is replaced only with ``force`` (else DataError):
    runs trained on it keep their validation and test images only while it stays as it is.
    """
    splits = make_splits(read_index(cache), val=val, test=test, folds=folds, seed=seed)
    path = Path(cache) / "splits.csv"
    text = splits.to_csv(index=False, lineterminator="\n")
    if path.is_file() and not force:
        try:
            same = path.read_text(encoding="utf-8") == text
        except (OSError, UnicodeDecodeError):
            same = False
        if same:
            return path  # already written by the same command: nothing to do
        changed = _changed(path, splits)
        what = f"{changed} image(s) would change split" if changed else "its content would change"
        raise DataError(f"{path} exists and differs from this split ({what}); runs trained on it would be "
                        "validated and tested on other images: pass --force to replace it, or split into "
                        "another cache")
    atomic_write_text(path, text)
    return path
