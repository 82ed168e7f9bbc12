"""Native-resolution scoring and the training-mask rule, measured on synthetic phantoms.

One data set of phantoms at 256 px (their native size, as in the demo), prepared twice at the
demo's 128 px: with soft training masks (the covered fraction of each low-resolution pixel) and
with the binary fraction >= 0.5 rule. The demo recipe is trained on each, the post-processing tuned
on val and the test split scored at the native 256 px (what ``pneumoseg evaluate`` reports). For the
soft run, the first round's model-size figure is computed too, from the same probabilities:
threshold at 128 px against the truth shrunk to 128 px with the "any pixel" rule (what ``evaluate``
used to report).

Each rule is trained once per ``--seeds`` value (the training seed; the data and splits stay the
same), so the rule's effect can be told from seed-to-seed noise.

Run:  .venv/bin/python benchmarks/bench_native.py [--n 400] [--steps 525] [--seeds 0,1,2] [--update-docs]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from _docs import update_section  # type: ignore[import-not-found]  # benchmarks/ is on sys.path

from pneumoseg.config import load_config
from pneumoseg.data.dataset import split_ids
from pneumoseg.data.cache import read_truth
from pneumoseg.data.prepare import prepare_dicom
from pneumoseg.data.split import write_splits
from pneumoseg.data.synth import generate_dataset
from pneumoseg.evaluation.evaluate import evaluate_run
from pneumoseg.io.images import read_image, resize_mask
from pneumoseg.scoring.metrics import dice_per_image
from pneumoseg.inference.predictor import Predictor
from pneumoseg.training.run import train
from pneumoseg.evaluation.tune import tune_runs


def _model_size_dice(predictor: Predictor, cache: Path) -> tuple[float, float]:
    """The old figure: threshold at the model size, against the any-rule model-size truth."""
    ids = split_ids(cache, "test")
    rule = predictor.postprocess
    scale = (predictor.size / 256) ** 2
    dice, pos = [], []
    for image_id in ids:
        image = read_image(cache / "images" / f"{image_id}.png")
        prob = predictor.probs_at_model_size([image])[0]
        truth = resize_mask(read_truth(cache, image_id), predictor.size, rule="any")  # the first round's truth
        pred = type(rule)(threshold=rule.threshold, min_area=round(rule.min_area * scale),
                          top_threshold=rule.top_threshold, bottom_threshold=rule.bottom_threshold)(prob)
        dice.append(dice_per_image(pred[None], truth[None])[0])
        pos.append(truth.any())
    d, p = np.array(dice), np.array(pos)
    return float(d.mean()), float(d[p].mean()) if p.any() else math.nan


def _sd(values: np.ndarray) -> str:
    return f" +- {values.std(ddof=1):.4f}" if values.size > 1 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--steps", type=int, default=525, help="optimizer steps (train.min_steps)")
    ap.add_argument("--seeds", default="42", help="training seeds, comma-separated (one run per rule and seed; "
                    "default: the configs' train.seed)")
    ap.add_argument("--rules", default="soft,fraction", help="training-mask rules to compare")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run (e.g. schedule.warmup_steps=50)")
    ap.add_argument("--update-docs", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_dataset(root / "synth", n=args.n, size=256, seed=0, progress=False)
        seeds = [int(v) for v in args.seeds.split(",")]
        rules = args.rules.split(",")
        for rule in rules:
            cache = root / f"cache-{rule}"
            prepare_dicom(root / "synth" / "dicom", root / "synth" / "train-rle.csv", cache, size=128, workers=2,
                          progress=False, mask_rule=rule)
            write_splits(cache, val=0.15, test=0.15, seed=0)
            for seed in seeds:
                run = root / f"run-{rule}-{seed}"
                cfg = load_config("demo", [f"data.cache={cache}", f"train.min_steps={args.steps}", f"train.seed={seed}",
                                          *args.overrides])
                t0 = time.perf_counter()
                train(cfg, run, progress=False)
                tune_runs([run], device="cpu", progress=False)
                predictor = Predictor([run], device="cpu")
                m = evaluate_run(predictor, run, "test", progress=False)
                row = {"rule": rule, "seed": seed, "native_dice_kaggle": m["dice_kaggle"],
                       "native_dice_positive": m["dice_positive"], "n_test": m["n_images"],
                       "seconds": time.perf_counter() - t0,
                       "predicts_nothing": json.loads((run / "train_summary.json").read_text())["predicts_nothing"]}
                if rule == "soft":
                    row["model_size_dice_kaggle"], row["model_size_dice_positive"] = _model_size_dice(predictor, cache)
                rows.append(row)
                print(row, flush=True)
    lines = ["| training masks | seed | dice_kaggle at 256 (native) | dice_positive at 256 "
             "| model-size (128) dice_kaggle | model-size dice_positive | test images |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ms_k = f"{r['model_size_dice_kaggle']:.4f}" if "model_size_dice_kaggle" in r else "-"
        ms_p = f"{r['model_size_dice_positive']:.4f}" if "model_size_dice_positive" in r else "-"
        lines.append(f"| {r['rule']} | {r['seed']} | {r['native_dice_kaggle']:.4f} | {r['native_dice_positive']:.4f} "
                     f"| {ms_k} | {ms_p} | {r['n_test']} |")
    for rule in rules:
        k = np.array([r["native_dice_kaggle"] for r in rows if r["rule"] == rule])
        q = np.array([r["native_dice_positive"] for r in rows if r["rule"] == rule])
        lines.append(f"| **{rule}, mean** | {len(k)} seeds | {k.mean():.4f}{_sd(k)} | {q.mean():.4f}{_sd(q)} | | | |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.update_docs:
        section = (f"## Native-resolution scores and the training-mask rule (synthetic phantoms)\n\n"
                   f"`.venv/bin/python benchmarks/bench_native.py --n {args.n} --steps {args.steps} --seeds {args.seeds} "
                   "--update-docs`: "
                   f"{args.n} phantoms at 256 px (native), cache at 128, the demo recipe (unet_bn at 128 px, {args.steps} optimizer steps, CPU), "
                   "one run per training seed (same data and splits), tuned on val, scored on test.\n\n" + text)
        update_section("native", section)


if __name__ == "__main__":
    main()
