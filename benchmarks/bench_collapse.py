"""Why from-scratch training collapsed with some seeds: the plain loop of the learnability test
(``tests/data/test_synth.py``: unet_bn + bce_dice, Adam 3e-3 cosine, 500 steps of 8 phantoms at 128 px,
no Lightning, no checkpoint choice), with and without the mask head's prior bias
(``pneumoseg.models.heads.init_output_bias``), over several torch seeds.

Run:  .venv/bin/python benchmarks/bench_collapse.py --seeds 0,1,2,3 --variants none,prior [--steps 500]
Prints one line per (variant, seed): held-out Dice on positives, the share of held-out images predicted
non-empty, and the mean predicted probability after 25 steps (how far the first steps pushed it down).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.data.test_synth import _dice, _phantom_batch

from pneumoseg.models import create_model
from pneumoseg.models.heads import init_output_bias
from pneumoseg.training.losses import create_loss


def run(variant: str, seed: int, steps: int) -> dict[str, float]:
    torch.manual_seed(seed)
    x_train, y_train, _ = _phantom_batch(1, 240, np.random.default_rng(0).random(240) < 0.8)
    x_test, y_test, _ = _phantom_batch(2, 40, np.ones(40, bool))

    def tensor(images: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(images).float()[:, None] / 255 - 0.5) / 0.25

    xt, yt = tensor(x_train), torch.from_numpy(y_train).float()[:, None]
    model = create_model("unet_bn")
    if variant == "prior":
        init_output_bias(model, 0.01)
    loss_fn = create_loss("bce_dice")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    early = float("nan")
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(xt), (8,), generator=gen)
        out = model(xt[idx])
        loss = loss_fn(out, yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if step == 24:
            early = float(torch.sigmoid(out.detach()).mean())
    model.eval()
    with torch.no_grad():
        pred = torch.sigmoid(model(tensor(x_test)))[:, 0].numpy() > 0.5
    return {"dice": float(_dice(pred, y_test).mean()), "nonempty": float(pred.reshape(len(pred), -1).any(1).mean()),
            "p_step25": early, "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--variants", default="none,prior")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for variant in a.variants.split(","):
        for seed in map(int, a.seeds.split(",")):
            r = run(variant, seed, a.steps)
            print(f"{variant:6s} seed {seed}: held-out dice_positive {r['dice']:.3f}, non-empty {r['nonempty']:.2f}, "
                  f"mean p at step 25 {r['p_step25']:.4f}, {r['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
