"""Training throughput through the real training code vs a plain PyTorch loop on device tensors.

    .venv/bin/python benchmarks/bench_train.py --cache CACHE [--model unet-resnet34] [--size 512]
        [--batch 16] [--precisions 32-true,bf16-mixed] [--batches 60] [--workers 8] [--epochs 3]

For each precision it trains a few short epochs with ``pneumoseg.training.run.train`` and reports
the median ``train_img_per_s`` of the epochs after the first (``history.csv``), in two rows:

* ``defaults``: the packaged default config as users get it (train Dice on, deterministic
  algorithms, the snapshot schedule, the seed's augmentations, channels_last on CUDA); only the
  model, size, batch, precision, workers and the number of batches are set;
* ``fastest``: the same plus ``train.deterministic=false`` (cuDNN autotuning) and
  ``train.train_dice=false``.

Then the same model and precision in a plain loop over random tensors already on the device (no
data loading): the gap is what the data pipeline and Lightning cost. Also peak GPU memory and
peak host RSS. On CPU use tiny settings, e.g.
``--model unet --size 128 --batch 8 --batches 16 --precisions 32-true --workers 1``.
``--metric-cost`` only times the training Dice of one batch: the former host path (copy to the
CPU, ``PostProcess``, ``dice_per_image``) against the device metric (``streaming.DiceKaggle``).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch


#: label -> overrides on top of the default config
SETTINGS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "fastest": ("train.deterministic=false", "train.train_dice=false"),
}


def real_loop(cache: str, model: str, size: int, batch: int, precision: str, batches: int, workers: int,
              epochs: int, extra: tuple[str, ...]) -> float:
    from pneumoseg.config import load_config
    from pneumoseg.training.run import train

    cfg = load_config(None, [
        f"data.cache={cache}", f"model.name={model}", f"data.size={size}", f"train.batch_size={batch}",
        f"train.precision={precision}", f"data.num_workers={workers}", f"train.epochs={epochs}",
        f"train.limit_train_batches={batches}", "train.limit_val_batches=2", *extra,
    ])
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run", progress=False)
        history = pd.read_csv(Path(tmp) / "run" / "history.csv")
    return float(history["train_img_per_s"].iloc[1:].median())


def plain_loop(model: str, size: int, batch: int, precision: str, steps: int) -> float:
    from pneumoseg.training.losses import create_loss
    from pneumoseg.models import create_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = create_model(model).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    loss_fn = create_loss("bce_dice")
    x = torch.randn(batch, 1, size, size, device=device)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.9).float()
    if device.type == "cuda":
        x = x.to(memory_format=torch.channels_last)
    dtype = None
    if precision.startswith("bf16"):
        dtype = torch.bfloat16
    elif precision.startswith("16"):
        dtype = torch.float16

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def metric_cost(size: int, batch: int, repeats: int = 20) -> tuple[float, float]:
    """ms per batch of training Dice: host numpy path (copy + PostProcess + dice_per_image) vs on device."""
    from pneumoseg.scoring.metrics import dice_per_image
    from pneumoseg.scoring.streaming import DiceKaggle
    from pneumoseg.scoring.postprocess import PostProcess

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(batch, 1, size, size, device=device, generator=gen)
    target = (torch.rand(batch, 1, size, size, device=device, generator=gen) > 0.9).float()
    pp, metric = PostProcess(0.5), DiceKaggle().to(device)

    def host() -> None:
        probs = torch.sigmoid(logits.float()).cpu().numpy()
        dice_per_image(pp.apply_batch(probs), target.cpu().numpy() > 0.5)

    def on_device() -> None:
        metric.update(torch.sigmoid(logits.float()) > 0.5, target >= 0.5)

    times = []
    for fn in (host, on_device):
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / repeats * 1000)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", help="a prepared cache with splits.csv (not needed for --metric-cost)")
    parser.add_argument("--model", default="unet-resnet34")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precisions", default="32-true,bf16-mixed")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not counted)")
    parser.add_argument("--settings", default="defaults,fastest", help=f"rows: {', '.join(SETTINGS)}")
    parser.add_argument("--metric-cost", action="store_true",
                        help="only time the training Dice per batch (host numpy vs on device) and exit")
    args = parser.parse_args()
    if args.metric_cost:
        host, dev = metric_cost(args.size, args.batch)
        print(f"training Dice per batch of {args.batch} at {args.size}: host numpy path {host:.2f} ms, "
              f"on device (DiceKaggle) {dev:.2f} ms")
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{device}, torch {torch.__version__}, {args.model} at {args.size}, batch {args.batch}")
    print("| precision | settings | pneumoseg train (img/s) | plain loop, no loader (img/s) "
          "| peak GPU memory |")
    print("| --- | --- | ---: | ---: | ---: |")
    if not args.cache:
        parser.error("--cache is required (except with --metric-cost)")
    for precision in args.precisions.split(","):
        plain = plain_loop(args.model, args.size, args.batch, precision, args.batches)
        for label in args.settings.split(","):
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            real = real_loop(args.cache, args.model, args.size, args.batch, precision, args.batches,
                             args.workers, args.epochs, SETTINGS[label])
            cuda = torch.cuda.is_available()
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "-"
            print(f"| {precision} | {label} | {real:.1f} | {plain:.1f} | {peak} |", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak host RSS (this process): {rss:.2f} GiB")


if __name__ == "__main__":
    main()
