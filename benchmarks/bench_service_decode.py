"""DICOM uploads in flight against the service: latency with the DICOM reader's old process-wide lock
(before) and without it (after), interleaved in one run on one server.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_service_decode.py [--rounds 6] [--per-round 24]
        [--concurrency 8] [--model unet] [--size 64] [--threads 1] [--update-docs]

Inputs: the 12 real SIIM DICOMs (1024 x 1024 JPEG baseline) found as tests/shared_data.py finds
them (``$PNEUMOSEG_SIIM_DIR``, else ``../shared/data/siim`` beside the repository); without them
the script says so and exits 0. The app (``create_app``, ``max_concurrent`` = ``--concurrency`` so
that many uploads are decoded at once) runs on uvicorn on 127.0.0.1 with ``--model`` at ``--size``
px, random weights (small, so the decode is a large part of each request; the forward pass stays
serialised by the service's model lock). ``--concurrency`` client threads (httpx) POST /predict.

"Before" re-enables the lock the reader held until commit ccaea14 (``_WARNINGS_LOCK``, an RLock
held around every read and decode), by wrapping ``pneumoseg.io.dicom.read._guarded`` in one
process-wide RLock: the same scope the old lock had, everything else the same code. Rounds
alternate before/after (the order flips each round) so that the machine's other load falls on
both. ``--update-docs`` rewrites the "service-decode" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import torch
from _docs import DOCS, update_section  # type: ignore[import-not-found]  # benchmarks/ is on sys.path
from bench_predict import make_run  # type: ignore[import-not-found]
from bench_service import post_latencies  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parents[1]
SIIM = Path(os.environ.get("PNEUMOSEG_SIIM_DIR", ROOT.parent / "shared/data/siim"))
LOCKED = threading.Event()
"""Set: reads take the old process-wide lock ("before"); clear: they do not ("after")."""


def install_switchable_lock() -> None:
    """Wrap the reader's per-read guard in one process-wide RLock while ``LOCKED`` is set."""
    import pneumoseg.io.dicom.read as reader

    old_lock, original = threading.RLock(), reader._guarded

    @contextlib.contextmanager
    def guarded(label: str) -> Iterator[list]:
        with old_lock if LOCKED.is_set() else contextlib.nullcontext(), original(label) as caught:
            yield caught

    reader._guarded = guarded


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def saturated_note(*uptimes: str) -> str:
    """A sentence when the 1-minute load average exceeded the core count (the run cannot show the gain)."""
    loads = [float(u.split("load average:")[1].split(",")[0]) for u in uptimes if "load average:" in u]
    if not loads or min(loads) <= (os.cpu_count() or 1):
        return ""
    return (" The load average stayed above the core count: the CPUs, not the lock, bounded the throughput, "
            "so this run cannot show what concurrent decodes gain on idle cores (the difference is within "
            "the run's noise); rerun on an idle machine for that.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds of each mode (interleaved)")
    parser.add_argument("--per-round", type=int, default=24, help="uploads per round")
    parser.add_argument("--concurrency", type=int, default=8, help="uploads in flight")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--update-docs", action="store_true", help="rewrite the service-decode section")
    args = parser.parse_args()

    real = sorted((SIIM / "dicom").glob("*.dcm"))
    if not real:
        print(f"skipped: no real SIIM DICOMs under {SIIM / 'dicom'} (set PNEUMOSEG_SIIM_DIR)")
        return
    files = [(p.name, p.read_bytes()) for p in real]
    torch.set_num_threads(args.threads)

    import pneumoseg
    from pneumoseg.inference.predictor import Predictor
    from pneumoseg.service import ServiceSettings, create_app, serve_in_background

    install_switchable_lock()
    latencies: dict[str, list[float]] = {"before": [], "after": []}
    walls: dict[str, float] = {"before": 0.0, "after": 0.0}
    load_start = uptime()
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(args.model, args.size, Path(tmp))
        predictor = Predictor([run], device="cpu", batch_size=1)
        # generous connection timeouts: on a loaded machine a pooled connection may idle past the 5 s default
        settings = ServiceSettings(cache_size=16, max_concurrent=args.concurrency, keep_alive_s=600.0,
                                   header_timeout_s=600.0, body_timeout_s=600.0)
        app = create_app([run], settings, predictor=predictor)
        with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=600) as client:
            for mode in ("before", "after"):  # warm-up
                (LOCKED.set if mode == "before" else LOCKED.clear)()
                post_latencies(client, files, args.concurrency, args.concurrency, 0)
            for r in range(args.rounds):
                for mode in ("before", "after") if r % 2 == 0 else ("after", "before"):
                    (LOCKED.set if mode == "before" else LOCKED.clear)()
                    got, wall = post_latencies(client, files, args.per_round, args.concurrency, r * args.per_round)
                    latencies[mode] += got
                    walls[mode] += wall
    LOCKED.clear()
    load_end = uptime()

    def row(mode: str, label: str) -> str:
        ms = np.asarray(latencies[mode]) * 1000
        return (f"| {label} | {ms.size} | {np.percentile(ms, 50):.0f} ms | {np.percentile(ms, 95):.0f} ms | "
                f"{ms.max():.0f} ms | {ms.size / walls[mode]:.1f} uploads/s |\n")

    p50 = {m: float(np.percentile(latencies[m], 50)) for m in latencies}
    cmd = (f"PYTHONPATH=. .venv/bin/python benchmarks/bench_service_decode.py --rounds {args.rounds} "
           f"--per-round {args.per_round} --concurrency {args.concurrency} --model {args.model} --size {args.size} "
           f"--threads {args.threads}")
    section = "".join([
        "## Service: concurrent DICOM decodes\n\n",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__} "
        f"({args.threads} thread(s)), Linux, shared with other jobs. `uptime` at the start: `{load_start}`; "
        f"at the end: `{load_end}`.\n\n",
        f"Reproduce: `{cmd}` (add `--update-docs` to rewrite this section).\n\n",
        f"{args.concurrency} uploads in flight (client threads, httpx) against the app on uvicorn (127.0.0.1), "
        f"`max_concurrent={args.concurrency}`, model `{args.model}` at {args.size} px on CPU (random weights; "
        f"the forward pass stays serialised by the model lock), uploads cycling through the {len(files)} real "
        "SIIM DICOMs (1024 px, JPEG baseline). Latency is the client's, for the whole POST /predict. "
        "*Before*: the reader's old process-wide lock, re-enabled by the script around the same calls it "
        "covered until ccaea14 (every DICOM read and decode); *after*: no lock (each read keeps its own "
        f"warnings in a ContextVar). {args.rounds} rounds of {args.per_round} uploads per mode, interleaved "
        "in one run on one server.\n\n",
        "| | uploads | p50 | p95 | max | throughput |\n",
        "|---|---:|---:|---:|---:|---:|\n",
        row("before", "before: reader lock (as at ccaea14)"),
        row("after", "after: no lock"),
        f"\nMedian latency after / before: {p50['after'] / p50['before']:.2f}.",
        saturated_note(load_start, load_end),
        "\n",
    ])
    print(f"pneumoseg imported from {Path(pneumoseg.__file__).parent}")
    print(section)
    sys.stdout.flush()
    if args.update_docs:
        update_section("service-decode", section)
        print(f"updated {DOCS}")


if __name__ == "__main__":
    main()
