"""CPU latency of one 1024 x 1024 DICOM -> mask + RLE, pneumoseg vs the notebook-style way.

    .venv/bin/python benchmarks/bench_predict.py [--model unet-resnet34] [--size 512] [--repeats 15]

Both sides run the same network (random weights: latency does not depend on them) on the same
file. pneumoseg: ``load_input`` (pydicom + pylibjpeg) -> ``Predictor.predict_batch`` (resize,
normalise, forward in inference mode, sigmoid, post-process, mask back to 1024) ->
``rle_encode``. Naive: ``pydicom.dcmread(...).pixel_array``, cv2.resize, forward under
``torch.no_grad``, threshold, cv2.resize back, and the seed's ``mask2rle`` loop over pixels.
Target: median <= 1.0 s on 2 cores for unet-resnet34 at 512.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import torch
from _seed import mask2rle  # type: ignore[import-not-found]  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
SIIM = ROOT.parent / "shared" / "data" / "siim"


def make_run(model: str, size: int, folder: Path) -> Path:
    """A run folder holding ``model`` with random weights (config.yaml + checkpoints/best.ckpt)."""
    from pneumoseg.config import load_config
    from pneumoseg.training.run_folder import init_run

    return init_run(load_config(None, [f"model.name={model}", f"data.size={size}"]), folder / "run")


def input_file(folder: Path) -> Path:
    real = sorted((SIIM / "dicom").glob("*.dcm"))
    if real:
        return real[0]
    from pneumoseg.data.synth import generate_dataset

    summary = generate_dataset(folder / "synth", n=1, size=1024, seed=0, progress=False)
    return summary.paths[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet-resnet34")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    from pneumoseg.inference.inputs import load_input

    from pneumoseg.inference.predictor import Predictor
    from pneumoseg.io.rle import rle_decode, rle_encode

    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(args.model, args.size, Path(tmp))
        dcm = input_file(Path(tmp))
        predictor = Predictor([run], device="cpu", batch_size=1)
        net = predictor.models[0][0]

        def ours() -> tuple[np.ndarray, str]:
            image = load_input(dcm)
            pred = predictor.predict_batch([image])[0]
            return pred.mask, rle_encode(pred.mask)

        def naive() -> tuple[np.ndarray, str]:
            pixels = pydicom.dcmread(dcm).pixel_array
            small = cv2.resize(pixels, (args.size, args.size)).astype(np.float32) / 255.0
            x = torch.from_numpy((small - 0.5) / 0.25)[None, None]
            with torch.no_grad():
                prob = torch.sigmoid(net(x))[0, 0].numpy()
            mask = (cv2.resize(prob, pixels.shape[::-1]) > 0.5).astype(np.uint8) * 255
            return mask > 0, mask2rle(mask.T, mask.shape[1], mask.shape[0])

        results = {}
        for name, fn in (("pneumoseg", ours), ("naive", naive)):
            fn()  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                mask, rle = fn()
                times.append(time.perf_counter() - start)
            results[name] = (statistics.median(times), min(times), mask, rle)
        # The masks may differ by interpolation details; the RLE of each must decode to its mask.
        for name, (_, _, mask, rle) in results.items():
            if rle and rle != "-1":
                assert (rle_decode(rle, *mask.shape) == mask).all(), name
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model} at {args.size}, "
              f"input {dcm.name}")
        print("| pipeline | median s | min s |")
        print("| --- | --- | --- |")
        for name, (med, best, _, _) in results.items():
            print(f"| {name} | {med:.3f} | {best:.3f} |")
        print(f"speed-up (median): {results['naive'][0] / results['pneumoseg'][0]:.2f}x")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
