"""CPU latency of one forward pass, PyTorch vs onnxruntime, on the same exported network.

    .venv/bin/python benchmarks/bench_onnx.py [--model unet-resnet34] [--size 512] [--repeats 10] [--threads 2]

A run folder with random weights (latency does not depend on them) is exported with
``pneumoseg.inference.onnx.export_onnx``; both runtimes then predict one real radiograph (or a synthetic
one when the sample is absent) resized to ``size``, batch 1, with the same number of threads:
``Predictor.probs_at_model_size`` (normalise, forward, sigmoid) with the torch backend and with the
onnx backend. Prints the median and minimum of ``repeats`` timed runs (after one warm-up; the two runtimes
alternate) as a
markdown table, and the largest probability difference between the two.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_predict import input_file, make_run  # type: ignore[import-not-found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet-resnet34")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import onnxruntime as ort

    from pneumoseg.inference.onnx import OnnxModel, export_onnx
    from pneumoseg.inference.inputs import load_input
    from pneumoseg.inference.predictor import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(args.model, args.size, Path(tmp))
        start = time.perf_counter()
        onnx_file = export_onnx(run, run / "model.onnx")
        export_s = time.perf_counter() - start
        image = load_input(input_file(Path(tmp))).pixels
        backends = {"PyTorch (eager, inference_mode)": Predictor([run], device="cpu", batch_size=1),
                    "onnxruntime (CPUExecutionProvider)": Predictor([run], device="cpu", batch_size=1, backend="onnx")}
        onnx_predictor = backends["onnxruntime (CPUExecutionProvider)"]
        onnx_predictor.models = [(OnnxModel(onnx_file, device="cpu", threads=args.threads), onnx_predictor.cfg)]
        probs = {name: p.probs_at_model_size([image]) for name, p in backends.items()}  # warm-up
        times: dict[str, list[float]] = {name: [] for name in backends}
        for _ in range(args.repeats):  # interleaved, so that load from other jobs hits both alike
            for name, predictor in backends.items():
                t0 = time.perf_counter()
                predictor.probs_at_model_size([image])
                times[name].append(time.perf_counter() - t0)
        results = {name: (statistics.median(t), min(t)) for name, t in times.items()}
        diff = float(np.abs(np.subtract(*probs.values())).max())
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; "
              f"torch {torch.__version__}, onnxruntime {ort.__version__}; {args.model} at {args.size}, batch 1, "
              f"{args.repeats} runs; export {export_s:.1f} s, {onnx_file.stat().st_size / 2**20:.0f} MiB")
        print("| runtime | median s | min s |")
        print("| --- | ---: | ---: |")
        for name, (med, best) in results.items():
            print(f"| {name} | {med:.3f} | {best:.3f} |")
        torch_med, onnx_med = (r[0] for r in results.values())
        print(f"speed-up (median): {torch_med / onnx_med:.2f}x; max |p_onnx - p_torch| = {diff:.1e}")


if __name__ == "__main__":
    main()
