"""Throughput, queue latency and memory of ``pneumoseg listen`` on CPU (demo model, random weights).

    .venv/bin/python benchmarks/bench_listen.py [--n 500] [--batch-size 4] [--max-pending 32] [--docs]

A ``pneumoseg listen`` subprocess (the demo config's unet_bn at 128 px, random weights: speed does
not depend on them; SEG for every image) receives ``--n`` C-STOREs of the 12 shared challenge
DICOMs (1024 x 1024 JPEG, each sent with a new SOPInstanceUID; synthetic phantoms without them)
from a sender in this process that retries on *Out of Resources* (back-pressure), and forwards
each SEG to a Storage SCP in this process. Measured: instances per second from the first
C-STORE to the last SEG received, queue latency (acknowledged receipt -> SEG acknowledged by the
destination) p50 / p95 from ``status.json``, and the listener's RSS every 50 instances.
``--docs`` rewrites the ``bench_listen`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt

ROOT = Path(__file__).resolve().parents[1]
SIIM = ROOT.parent / "shared" / "data" / "siim"
SC = "1.2.840.10008.5.1.4.1.1.7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inputs(folder: Path) -> list[Path]:
    real = sorted((SIIM / "dicom").glob("*.dcm"))
    if real:
        return real
    from pneumoseg.data.synth import generate_dataset

    return list(generate_dataset(folder / "synth", n=12, size=1024, seed=0, progress=False).paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-pending", type=int, default=32)
    parser.add_argument("--docs", action="store_true", help="Rewrite the bench_listen section of docs/benchmarks.md.")
    args = parser.parse_args()

    from pneumoseg.config import load_config
    from pneumoseg.training.run_folder import init_run

    tmp = Path(tempfile.mkdtemp(prefix="bench-listen-"))
    run = init_run(load_config("demo"), tmp / "run")
    files = inputs(tmp)
    datasets = [pydicom.dcmread(f) for f in files]

    received = 0
    done = threading.Event()

    def on_store(event: evt.Event) -> int:
        nonlocal received
        received += 1
        if received >= args.n:
            done.set()
        return 0x0000

    dest = AE("DEST")
    dest.supported_contexts = StoragePresentationContexts
    server = dest.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    port, queue = free_port(), tmp / "queue"
    log = (tmp / "listen.log").open("wb")
    listen = subprocess.Popen(
        [sys.executable, "-m", "pneumoseg.cli.main", "listen", str(run), "--port", str(port), "--queue", str(queue),
         "--forward", f"DEST@127.0.0.1:{server.server_address[1]}", "--device", "cpu",
         "--batch-size", str(args.batch_size), "--max-pending", str(args.max_pending)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    proc = psutil.Process(listen.pid)
    while not (queue / "status.json").is_file() or not json.loads((queue / "status.json").read_text()).get("listening"):
        if listen.poll() is not None:
            raise SystemExit((tmp / "listen.log").read_text())
        time.sleep(0.1)
    rss: list[tuple[int, float]] = []

    def sample() -> None:
        step = 50
        while not done.is_set():
            if received >= step:
                rss.append((received, proc.memory_info().rss / 2**20))
                step += 50
            time.sleep(0.05)
        rss.append((received, proc.memory_info().rss / 2**20))

    sampler = threading.Thread(target=sample)
    sender = AE("SENDER")
    for syntax in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"):
        sender.add_requested_context(SC, [syntax])
    assoc = sender.associate("127.0.0.1", port, ae_title="PNEUMOSEG")
    assert assoc.is_established
    busy = 0
    start = time.perf_counter()
    sampler.start()
    for i in range(args.n):
        ds = datasets[i % len(datasets)]
        ds.SOPInstanceUID = generate_uid()
        while (status := assoc.send_c_store(ds).Status) == 0xA700:
            busy += 1
            time.sleep(0.05)
        assert status == 0x0000, hex(status)
    assoc.release()
    done.wait()
    elapsed = time.perf_counter() - start
    sampler.join()
    time.sleep(0.3)
    status = json.loads((queue / "status.json").read_text())
    listen.terminate()
    listen.wait(30)
    server.shutdown()
    log.close()

    rate = args.n / elapsed
    lat = status["latency_s"]
    first, last = rss[0], rss[-1]
    peak = max(m for _, m in rss)
    source = "the 12 shared challenge DICOMs (1024 x 1024 JPEG)" if (SIIM / "dicom").is_dir() else "synthetic 1024 px phantoms"
    section = (
        "## `pneumoseg listen` throughput (CPU)\n\n"
        f"`benchmarks/bench_listen.py --n {args.n} --batch-size {args.batch_size} --max-pending {args.max_pending}`: "
        f"demo model (unet_bn at 128 px, random weights), {source} sent by C-STORE with new UIDs, "
        "one SEG per instance C-STOREd to a Storage SCP; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), torch on CPU.\n\n"
        "| measure | value |\n|---|---|\n"
        f"| instances per second (first C-STORE -> last SEG received) | {rate:.2f} |\n"
        f"| queue latency p50 / p95 (receipt acknowledged -> SEG acknowledged), s | {lat['p50']:.2f} / {lat['p95']:.2f} |\n"
        f"| C-STOREs answered Out of Resources (sender retried) | {busy} |\n"
        f"| listener RSS after {first[0]} / {last[0]} instances (peak), MiB | {first[1]:.0f} / {last[1]:.0f} ({peak:.0f}) |\n"
        f"| sent / failed | {status['sent']} / {status['failed']} |\n\n"
        "The sender floods the node, so queue latency is the time an instance waits behind "
        f"`--max-pending {args.max_pending}` others; an idle node answers in about one instance's processing time.\n"
    )
    print(section)
    print("RSS by instances:", ", ".join(f"{n}: {m:.0f}" for n, m in rss))
    if args.docs:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from _docs import update_section

        update_section("bench_listen", section)


if __name__ == "__main__":
    main()
