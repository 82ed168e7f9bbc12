"""CLI start-up: median of 5 wall times of `pneumoseg --help` vs `python -c "import typer, rich"`."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time


def _median(cmd: list[str], n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    cli = _median([sys.executable, "-m", "pneumoseg.cli.main", "--help"])
    base = _median([sys.executable, "-c", "import typer, rich"])
    print(f"pneumoseg --help: {cli:.3f} s  import typer, rich: {base:.3f} s  ratio {cli / base:.2f}  "
          f"load average {os.getloadavg()[0]:.2f}")
