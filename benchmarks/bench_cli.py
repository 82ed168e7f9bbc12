"""Where users wait: CLI start-up, one-image ``predict`` and the default backend on CPU, in one run.

    .venv/bin/python benchmarks/bench_cli.py [--rounds 3] [--repeats 10] [--threads 2] [--write]

Wall times of fresh processes, the commands of each round run one after another (alternating, so
a change in the machine's load hits every side alike), median over ``rounds``:

- ``pneumoseg --help`` vs ``python -c "import typer, rich"`` (target: ratio <= 3);
- ``pneumoseg predict RUN one.dcm --out X`` with the default backend (``auto``: the run's
  ``model.onnx``, exported first) and with ``--backend torch``, vs a plain script that loads the
  same checkpoint with segmentation_models_pytorch, reads the DICOM with pydicom, resizes,
  normalises, runs the network under ``torch.inference_mode`` and writes the mask PNG
  (target: predict <= 1.5x the plain script);

then, in this process, the per-image latency of one 1024 x 1024 challenge DICOM through
``load_input`` + ``Predictor.predict_batch`` with ``backend="auto"`` (ONNX) and ``"torch"``
(eager), alternating, median of ``repeats`` after a warm-up (target: >= 1.4x). The run is
``unet-resnet34`` at 512 px with random weights (latency does not depend on them). Every process
gets ``OMP_NUM_THREADS=threads``. ``--write`` rewrites the "cli" and "predict-cli" sections of
docs/benchmarks.md; the load average (``os.getloadavg()``) is recorded before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _docs import update_section  # type: ignore[import-not-found]  # benchmarks/ is on sys.path
from bench_predict import input_file, make_run  # type: ignore[import-not-found]

PLAIN = '''
import json, sys
import cv2, numpy as np, pydicom, torch
import segmentation_models_pytorch as smp

run, dcm, out = sys.argv[1:]
prep = json.load(open(f"{run}/preprocessing.json"))
size, channels = prep["size"], prep["in_channels"]
net = smp.create_model("unet", encoder_name="resnet34", encoder_weights=None, in_channels=channels, classes=1)
state = torch.load(f"{run}/checkpoints/best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
net.eval()
pixels = pydicom.dcmread(dcm).pixel_array
small = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
mean, std = np.array(prep["mean"], np.float32), np.array(prep["std"], np.float32)
x = (torch.from_numpy(small)[None, None].repeat(1, channels, 1, 1) - torch.from_numpy(mean)[:, None, None]) \\
    / torch.from_numpy(std)[:, None, None]
with torch.inference_mode():
    prob = torch.sigmoid(net(x))[0, 0].numpy()
prob = cv2.resize(prob, pixels.shape[::-1], interpolation=cv2.INTER_LINEAR)
cv2.imwrite(out, ((prob > 0.5) * 255).astype(np.uint8))
'''


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    return time.perf_counter() - start


def _alternate(commands: dict[str, Callable[[int], list[str]]], rounds: int, env: dict[str, str]) -> dict[str, float]:
    """Median wall time of each command, the commands run in turn each round (round r: ``make(r)``)."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for r in range(rounds):
        for name, make in commands.items():
            times[name].append(_wall(make(r), env))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--write", action="store_true", help="Rewrite the sections of docs/benchmarks.md.")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    py = sys.executable
    cli = [py, "-m", "pneumoseg.cli.main"]
    load_before = os.getloadavg()

    start = {"help": lambda r: [*cli, "--help"], "typer": lambda r: [py, "-c", "import typer, rich"]}
    startup = _alternate(start, max(5, args.rounds), env)

    import torch

    from pneumoseg.inference.inputs import load_input

    from pneumoseg.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = make_run("unet-resnet34", 512, folder)
        dcm = input_file(folder)
        t0 = time.perf_counter()
        subprocess.run([*cli, "export", str(run)], check=True, env=env, stdout=subprocess.DEVNULL)
        export_s = time.perf_counter() - t0
        (folder / "plain.py").write_text(PLAIN)
        predict = {
            "predict": lambda r: [*cli, "predict", str(run), str(dcm), "--out", str(folder / f"auto{r}")],
            "plain": lambda r: [py, str(folder / "plain.py"), str(run), str(dcm), str(folder / f"plain{r}.png")],
            "predict_torch": lambda r: [*cli, "predict", str(run), str(dcm), "--out", str(folder / f"torch{r}"),
                                        "--backend", "torch"],
        }
        walls = _alternate(predict, args.rounds, env)

        predictors = {"auto": Predictor([run], device="cpu", batch_size=1, backend="auto"),
                      "torch": Predictor([run], device="cpu", batch_size=1, backend="torch")}
        assert predictors["auto"].backend == "onnx", predictors["auto"].backend_reason
        latency: dict[str, list[float]] = {name: [] for name in predictors}
        for _ in range(args.repeats + 1):  # the first is the warm-up
            for name, predictor in predictors.items():
                t0 = time.perf_counter()
                predictor.predict_batch([load_input(dcm)])
                latency[name].append(time.perf_counter() - t0)
        lat = {name: statistics.median(t[1:]) for name, t in latency.items()}
    load_after = os.getloadavg()

    loads = (f"load average (1, 5, 15 min) {', '.join(f'{v:.1f}' for v in load_before)} before, "
             f"{', '.join(f'{v:.1f}' for v in load_after)} after")
    busy = max(load_before[0], load_after[0]) >= (os.cpu_count() or 1)
    machine = (f"{os.cpu_count()} cores ({platform.machine()}), "
               + ("shared with other jobs and loaded" if busy else "quiet") + f": {loads}; "
               f"torch {torch.__version__}, OMP_NUM_THREADS={args.threads}")
    command = "`.venv/bin/python benchmarks/bench_cli.py" + (f" --rounds {args.rounds}" if args.rounds != 3 else "") + "`"
    cli_md = (
        "## CLI start-up\n\n"
        f"{command} (median of {max(5, args.rounds)} wall times, the two commands alternating; {machine}):\n\n"
        "| command | median |\n|---|---|\n"
        f"| `python -m pneumoseg.cli.main --help` | {startup['help']:.3f} s |\n"
        f"| `python -c \"import typer, rich\"` | {startup['typer']:.3f} s |\n"
        f"| ratio (target <= 3) | {startup['help'] / startup['typer']:.2f} |\n\n"
        "Before the lazy imports in `pneumoseg/cli/prepare.py` and `split.py`, `--help` pulled in numpy, cv2 and "
        "pandas (one unrepeated run: 1.16 s; `-X importtime` put 0.63 s under `pneumoseg.cli.main`). "
        "`--help`, `--version` and usage errors import none of torch, lightning, pandas, cv2, fastapi, numpy, "
        "matplotlib, pydicom, sklearn (tests/cli/test_lazy_cli.py).\n\n"
        "### One-image `predict` (fresh processes)\n\n"
        f"Same run: `pneumoseg predict RUN one.dcm --out X` (one 1024 x 1024 challenge DICOM, `unet-resnet34` at "
        f"512 px, random weights, `RUN/model.onnx` exported first by `pneumoseg export RUN` in {export_s:.0f} s), "
        "one process: no Lightning engine. The plain script loads the same checkpoint with "
        "segmentation_models_pytorch, reads, resizes, normalises, predicts under `inference_mode` and writes the "
        f"mask PNG. Median of {args.rounds} rounds, the three commands alternating:\n\n"
        "| command | median wall |\n|---|---|\n"
        f"| `pneumoseg predict RUN one.dcm --out X` (default backend: onnx) | {walls['predict']:.2f} s |\n"
        f"| `pneumoseg predict ... --backend torch` | {walls['predict_torch']:.2f} s |\n"
        f"| plain script | {walls['plain']:.2f} s |\n"
        f"| ratio predict / plain (target <= 1.5) | {walls['predict'] / walls['plain']:.2f} "
        f"(torch backend: {walls['predict_torch'] / walls['plain']:.2f}) |\n\n"
        "What `predict` imports for one image on the ONNX backend: torch, pydicom, cv2, onnxruntime and pneumoseg's "
        "own modules; not segmentation_models_pytorch/timm (the model registry loads them on its first lookup), "
        "pandas, scikit-learn, highdicom (imported when a SEG/SR is built), the `onnx` package (the metadata is read "
        "by onnxruntime), albumentations (a run's config is read without rebuilding its augmentation) or Lightning "
        "(tests/inference/test_export.py). Before that change the same command took 9.06 s against the plain "
        "script's 5.63 s (1.61x, quiet machine, round 3's second session).\n\n")
    predict_md = (
        "### Default backend on CPU (in process)\n\n"
        f"{command}, after the rounds above: one 1024 x 1024 challenge DICOM ({dcm.name[:24]}...) through "
        "`load_input` + `Predictor.predict_batch` (area resize, normalise, network, sigmoid, upsample to 1024, "
        "post-process), `unet-resnet34` at 512, batch 1, `backend=\"auto\"` (picks the run's `model.onnx`: "
        "onnxruntime) vs `backend=\"torch\"` (eager), alternating, median of "
        f"{args.repeats} after a warm-up; {machine}.\n\n"
        "| backend | median s |\n|---|---|\n"
        f"| auto (onnxruntime, `RUN/model.onnx`) | {lat['auto']:.3f} |\n"
        f"| torch (eager, inference_mode) | {lat['torch']:.3f} |\n\n"
        f"Speed-up **{lat['torch'] / lat['auto']:.2f}x** (target >= 1.4x)."
        + (" Contention widens the gap: PyTorch's eager mode suffers more from shared cores (the forward alone was "
           "1.51x on a quieter machine, see ONNX)." if busy else "") + "\n")
    print(cli_md + predict_md)
    if args.write:
        update_section("cli", cli_md)
        update_section("predict-cli", predict_md)


if __name__ == "__main__":
    main()
