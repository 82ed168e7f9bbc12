"""Which training recipe learns best from few real images? K-fold cross-validation on the shared set.

The 42 real SIIM images in ``../shared/data/siim`` (12 DICOMs + 30 PNG pairs; 37 positive) are
prepared at ``--size`` px into one cache, split into ``--folds`` patient-grouped folds
(``pneumoseg.data.split``; the PNGs have no patient id: each is its own group), and every recipe
is trained once per fold on the other folds (CPU, ``train.max_steps`` budgets). Each fold's model
(``last.ckpt``: the end of training, so the validation fold never picks the checkpoint) predicts its
held-out fold with flip TTA at a fixed 0.5 threshold; the out-of-fold per-image Dice over all 42
images gives ``dice_kaggle`` and over the positives ``dice_positive``, with 95 % percentile
bootstrap CIs (``pneumoseg.scoring.stats.bootstrap_ci``, resampled within positives / negatives).

    .venv/bin/python benchmarks/real_small_data.py --work /tmp/rsd [--recipes seed,steps,...] [--docs]

Writes ``WORK/results.csv`` (one row per recipe and fold), ``WORK/oof.csv`` (per image) and, with
``--docs``, the ``small-data`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._docs import update_section  # noqa: E402
from pneumoseg.config import load_config  # noqa: E402
from pneumoseg.scoring.metrics import dice_per_image  # noqa: E402
from pneumoseg.scoring.stats import bootstrap_ci, paired_bootstrap  # noqa: E402
from pneumoseg.training.run import train  # noqa: E402

__all__ = ["RECIPES", "main", "oof_predict", "prepare_cache"]

SHARED = ROOT.parent / "shared" / "data" / "siim"

#: the SIIM winner's geometric augmentations as a spec list: the ``winner`` preset spelled out
#: (tests/data/test_dataset.py checks they draw the same as the preset; the 256 px rows were run with this)
WINNER_AUG = ("augment.transforms=[{name: HorizontalFlip, p: 0.5}, "
              "{name: Affine, scale: [0.9, 1.1], translate_percent: [-0.0625, 0.0625], rotate: [-15, 15], p: 0.5}, "
              "{name: ElasticTransform, alpha: 30, sigma: 5, p: 0.3}, "
              "{name: RandomBrightnessContrast, p: 0.3}]")

#: the recipes' shared step budget: warm-up + cosine over optimizer steps of 8 images
STEPS = ["train.max_steps=200", "train.min_steps=null", "train.batch_size=8", "schedule.name=cosine",
         "schedule.warmup_steps=20", "optim.lr=0.002"]

#: name -> (base config, overrides, what it tests)
RECIPES: dict[str, tuple[str, list[str], str]] = {
    "seed": ("seed_unet", ["train.epochs=30", "schedule.name=snapshot", "schedule.snapshots=3",
                           "train.max_steps=null", "train.min_steps=null", "schedule.warmup_steps=0",
                           "model.name=unet", "train.batch_size=16", "optim.lr=0.001", "augment.preset=seed"],
             "seed_unet as first packaged: 30 epochs (60 steps of 16), snapshot x3"),
    "steps": ("seed_unet", [*STEPS, "model.name=unet", "augment.preset=seed"],
              "200 steps of 8, warm-up + cosine, lr 2e-3"),
    "steps_bn": ("seed_unet", [*STEPS, "model.name=unet_bn", "augment.preset=seed"],
                 "same, the UNet with BatchNorm (`unet_bn`)"),
    "steps_bn_ema": ("seed_unet", [*STEPS, "model.name=unet_bn", "augment.preset=seed", "train.ema=0.98"],
                     "same as steps_bn, EMA of the weights (decay 0.98)"),
    "long_bn": ("seed_unet", [*STEPS, "train.max_steps=500", "model.name=unet_bn", "augment.preset=seed"],
                "steps_bn with 500 steps"),
    "steps_bn_winner_aug": ("seed_unet", [*STEPS, "model.name=unet_bn", WINNER_AUG],
                            "same as steps_bn, the winner's shift-scale-rotate + elastic"),
    "steps_bn_lovasz": ("seed_unet", [*STEPS, "model.name=unet_bn", "augment.preset=seed",
                                      "loss={bce: 1.0, dice: 1.0, lovasz: 1.0}"],
                        "same as steps_bn, BCE + Dice + Lovasz hinge"),
    "small_data": ("small_data", [], "the packaged `small_data.yaml`: steps_bn_winner_aug with 1000 steps, 50 warm-up"),
}

#: the recipe every other one is compared with (paired bootstrap on the same out-of-fold images)
REFERENCE = "steps_bn"


def prepare_cache(work: Path, size: int, folds: int) -> Path:
    """One cache of the 12 DICOMs and 30 PNG pairs at ``size`` px with ``folds`` folds; returns it."""
    from pneumoseg.data.prepare import prepare_dicom, prepare_png
    from pneumoseg.data.split import write_splits

    cache = work / f"all{size}"
    if (cache / "splits.csv").is_file():
        return cache
    parts = []
    prepare_dicom(SHARED / "dicom", SHARED / "dicom" / "train-rle.csv", work / f"dcm{size}", size=size,
                  workers=1, progress=False)
    prepare_png(SHARED / "png", work / f"png{size}", size=size, workers=1, progress=False)
    for name in (f"dcm{size}", f"png{size}"):
        for sub in ("images", "masks"):
            (cache / sub).mkdir(parents=True, exist_ok=True)
            for f in (work / name / sub).glob("*.png"):
                shutil.copyfile(f, cache / sub / f.name)
        parts.append(pd.read_csv(work / name / "index.csv", dtype={"image_id": str, "patient_id": str}))
    pd.concat(parts).to_csv(cache / "index.csv", index=False)
    shutil.copyfile(work / f"dcm{size}" / "cache.json", cache / "cache.json")
    write_splits(cache, test=0.0, folds=folds, seed=10)
    return cache


def oof_predict(run: Path, cache: Path, ids: list[str], threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(per-image Dice (N,), predicted mask not empty (N,)) of ``run``'s last.ckpt on ``ids``, flip TTA,
    at the cache's size (``Predictor.probs_at_model_size``: the one inference path)."""
    from pneumoseg.io.images import read_image, read_mask
    from pneumoseg.inference.predictor import Predictor

    predictor = Predictor([run], checkpoint="last", tta=True, device="cpu")
    dice, positive = [], []
    for image_id in ids:
        pred = predictor.probs_at_model_size([read_image(cache / "images" / f"{image_id}.png")])[0] > threshold
        truth = read_mask(cache / "masks" / f"{image_id}.png")
        dice.append(float(dice_per_image(pred[None], truth[None])[0]))
        positive.append(bool(pred.any()))
    return np.asarray(dice), np.asarray(positive)


def _table(results: pd.DataFrame, oof: pd.DataFrame, order: list[str]) -> str:
    """The Markdown table: OOF metrics with CIs, the paired difference from :data:`REFERENCE`."""
    ref = oof[oof["recipe"] == REFERENCE].set_index("image_id")
    lines = ["| recipe | what | steps / fold | OOF dice_positive (95 % CI) | OOF dice_kaggle (95 % CI) "
             f"| dice_positive minus `{REFERENCE}` (95 % CI, p) | positives predicted empty "
             "| predicts nothing (folds) | min / fold |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in order:
        rows = results[results["recipe"] == name]
        per = oof[oof["recipe"] == name]
        if rows.empty or len(per) == 0:
            continue
        pos = per["has_truth"].to_numpy(bool)
        d = per["dice"].to_numpy(float)
        ci_pos = bootstrap_ci(d[pos], seed=0)
        ci_all = bootstrap_ci(d, strata=pos, seed=0)
        diff = "reference" if name == REFERENCE else "n/a"
        common = per[per["image_id"].isin(ref.index) & pos]
        if name != REFERENCE and len(common) == int(pos.sum()) and len(common):
            paired = paired_bootstrap(ref.loc[common["image_id"], "dice"].to_numpy(float),
                                      common["dice"].to_numpy(float), seed=0)
            diff = f"{paired.diff.value:+.3f} ({paired.diff.low:+.3f} to {paired.diff.high:+.3f}, p {paired.p_value:.2f})"
        empty = f"{int((~per.loc[pos, 'pred_positive'].astype(bool)).sum())}/{int(pos.sum())}" \
            if "pred_positive" in per else "n/a"
        folds = f"{int(rows['predicts_nothing'].sum())}/{len(rows)}"
        minutes = rows["wall_s"] if "wall_s" in rows else rows["train_s"]
        lines.append(f"| `{name}` | {RECIPES[name][2]} | {int(rows['steps'].mean())} | "
                     f"{ci_pos.value:.3f} ({ci_pos.low:.3f}-{ci_pos.high:.3f}) | "
                     f"{ci_all.value:.3f} ({ci_all.low:.3f}-{ci_all.high:.3f}) | {diff} | {empty} | {folds} | "
                     f"{minutes.mean() / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/pneumoseg-small-data"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--recipes", default="seed,steps_bn,steps_bn_winner_aug,steps_bn_lovasz,small_data,steps")
    ap.add_argument("--fresh", action="store_true", help="train every (recipe, fold) again, ignoring WORK/results.csv")
    ap.add_argument("--docs", action="store_true", help="write the small-data section of docs/benchmarks.md")
    ap.add_argument("--report-only", action="store_true",
                    help="no training: the table (and --docs) from WORK/results.csv + oof.csv")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    names = [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {unknown} (valid: {', '.join(RECIPES)})")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results_df = pd.read_csv(args.work / "results.csv")
        done = [n for n in names if n in set(results_df["recipe"])]
        _report(results_df, pd.read_csv(args.work / "oof.csv", dtype={"image_id": str}), done, args)
        return 0
    t0 = time.perf_counter()
    cache = prepare_cache(args.work, args.size, args.folds)
    from pneumoseg.data.dataset import read_labels, split_ids

    results: list[dict[str, Any]] = []
    oof: list[dict[str, Any]] = []
    if not args.fresh and (args.work / "results.csv").is_file() and (args.work / "oof.csv").is_file():
        # resume: a (recipe, fold) whose row was written is finished; everything else is trained again
        earlier = pd.read_csv(args.work / "results.csv")
        if "size" not in earlier or set(earlier["size"]) != {args.size} or earlier["fold"].max() >= args.folds:
            ap.error(f"{args.work}/results.csv is from another --size or --folds: use another --work or --fresh")
        results = earlier.to_dict("records")
        oof = pd.read_csv(args.work / "oof.csv", dtype={"image_id": str}).to_dict("records")
        print(f"resuming: {len(results)} finished (recipe, fold) runs in {args.work} (--fresh to start over)")
    done = {(r["recipe"], int(r["fold"])) for r in results}
    for name in names:
        base, overrides, _ = RECIPES[name]
        for fold in range(args.folds):
            if (name, fold) in done:
                continue
            run = args.work / "runs" / f"{name}-f{fold}"
            if run.exists():
                shutil.rmtree(run)
            cfg = load_config(base, [*overrides, f"data.cache={cache}", f"data.fold={fold}",
                                     f"data.size={args.size}", "data.num_workers=0", "train.accelerator=cpu"])
            start = time.perf_counter()
            train(cfg, run, progress=False)
            train_s = time.perf_counter() - start
            import json

            summary = json.loads((run / "train_summary.json").read_text())
            ids = split_ids(cache, "val", fold)
            dice, predicted = oof_predict(run, cache, ids)
            truth = read_labels(cache, ids)
            for image_id, d, t, p in zip(ids, dice, truth, predicted, strict=True):
                oof.append({"recipe": name, "fold": fold, "image_id": image_id, "has_truth": bool(t), "dice": d,
                            "pred_positive": bool(p)})
            results.append({"recipe": name, "fold": fold, "size": args.size, "steps": summary["optimizer_steps"],
                            "predicts_nothing": bool(summary["predicts_nothing"]), "train_s": train_s,
                            "wall_s": time.perf_counter() - start,
                            "dice_positive": float(dice[truth].mean()), "dice_kaggle": float(dice.mean())})
            print(f"{name} fold {fold}: {summary['optimizer_steps']} steps, {train_s:.0f} s, "
                  f"dice_positive {dice[truth].mean():.3f}, dice_kaggle {dice.mean():.3f} "
                  f"[{time.perf_counter() - t0:.0f} s so far]", flush=True)
            pd.DataFrame(results).to_csv(args.work / "results.csv", index=False)
            pd.DataFrame(oof).to_csv(args.work / "oof.csv", index=False)
    _report(pd.DataFrame(results), pd.DataFrame(oof), names, args)
    return 0


def _report(results: pd.DataFrame, oof: pd.DataFrame, names: list[str], args: argparse.Namespace) -> None:
    table = _table(results, oof, names)
    partial = [f"{n}: {int((results['recipe'] == n).sum())}/{args.folds} folds" for n in names
               if int((results["recipe"] == n).sum()) < args.folds]
    if partial:
        table += "\nPartial (the run was stopped): " + ", ".join(partial) + ".\n"
    chosen = results[results["recipe"].isin(names)]
    total = (chosen["wall_s"] if "wall_s" in chosen else chosen["train_s"]).sum()
    print(table)
    print(f"total {total / 60:.1f} min (training + out-of-fold prediction, all folds)")
    if args.docs:
        cmd = (f"python benchmarks/real_small_data.py --work /tmp/rsd --size {args.size} --folds {args.folds} "
               f"--recipes {','.join(names)} --docs")
        update_section("small-data", (
            "## Learning from few real images (cross-validation)\n\n"
            f"The 42 shared real SIIM images (12 DICOM + 30 PNG, 37 positive) at {args.size} px, "
            f"{args.folds} patient-grouped folds, every recipe trained on the CPU (2 cores) once "
            "per fold; out-of-fold per-image Dice of each fold model's `last.ckpt` with flip TTA at "
            "threshold 0.5 (no tuning), 95 % bootstrap CIs over the 42 images "
            "(`pneumoseg.scoring.stats.bootstrap_ci`; dice_kaggle resampled within positives and negatives) and "
            f"each recipe's paired difference from `{REFERENCE}` on the same out-of-fold positive images "
            "(`pneumoseg.scoring.stats.paired_bootstrap`, two-sided p). "
            "With 5 negatives in all, dice_kaggle is mostly dice_positive.\n\n"
            f"```bash\n{cmd}\n```\n\n{table}\n"
            f"Run time: {total / 60:.1f} min in total on 2 CPU cores (training + out-of-fold prediction of "
            "every fold; preparing the cache, under a minute, left out). `positives predicted empty` counts "
            "the positive images whose out-of-fold mask is empty; `predicts nothing` is the run's own "
            "flag (`RUN/train_summary.json`, at the best validation epoch), while the OOF columns score "
            "`last.ckpt`. Dice is scored at the cache's size against its masks (what the models trained on), "
            "not at the 1024 px source as `evaluate` does: the table ranks recipes. Interrupted runs resume: "
            "finished (recipe, fold) rows in `WORK/results.csv` are kept; `--report-only` rebuilds this table.\n"))


if __name__ == "__main__":
    raise SystemExit(main())
