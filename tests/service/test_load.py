"""20 concurrent uploads against the real uvicorn server on 127.0.0.1: all succeed; p50/p95 latency."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from pneumoseg.io.rle import rle_decode

N_REQUESTS = 20


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def test_twenty_concurrent_uploads_all_succeed(server: str, synth_data: Path) -> None:
    files = sorted((synth_data / "dicom").glob("*.dcm"))[:N_REQUESTS]
    payloads = [(f.name, f.read_bytes()) for f in files]
    with httpx.Client(base_url=server, timeout=60) as client:
        assert client.get("/health").status_code == 200

        def one(i: int) -> tuple[int, float, dict]:
            name, data = payloads[i % len(payloads)]
            start = time.perf_counter()
            r = client.post("/predict", files={"file": (name, data, "application/dicom")})
            elapsed = time.perf_counter() - start
            return r.status_code, elapsed, r.json()

        wall = time.perf_counter()
        with ThreadPoolExecutor(max_workers=N_REQUESTS) as pool:
            results = list(pool.map(one, range(N_REQUESTS)))
        wall = time.perf_counter() - wall
        statuses = [s for s, _, _ in results]
        assert statuses == [200] * N_REQUESTS, statuses
        bodies = [b for _, _, b in results]
        assert len({b["id"] for b in bodies}) == N_REQUESTS
        for (name, _), body in zip((payloads[i % len(payloads)] for i in range(N_REQUESTS)), bodies, strict=True):
            assert body["filename"] == name
            assert int(rle_decode(body["rle"], body["height"], body["width"]).sum()) == body["area_px"]
        # Every stored result is still served, and the server answers afterwards.
        for body in bodies[:3]:
            assert client.get(body["urls"]["overlay"]).status_code == 200
        assert client.get("/health").json()["results_cached"] == N_REQUESTS
    latencies = [t for _, t, _ in results]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    print(f"\n{N_REQUESTS} concurrent POST /predict (256 px DICOM, 64 px model): p50 {p50 * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms, wall {wall:.2f} s, "
          f"{N_REQUESTS / wall:.1f} req/s, mean {statistics.mean(latencies) * 1000:.0f} ms")
    assert p50 <= p95
