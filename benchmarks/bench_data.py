"""Data benchmarks: RLE codec vs the seed's rle2mask, prepare vs the seed's serial loop, prepare's memory.

Run from the repository root (needs the real sample in ../shared/data/siim, or PNEUMOSEG_SIIM_DIR):

    .venv/bin/python benchmarks/bench_data.py                 # full run, prints a markdown section
    .venv/bin/python benchmarks/bench_data.py --quick         # a smaller, faster run
    .venv/bin/python benchmarks/bench_data.py --only rle      # the RLE codec only (~1 minute)
    .venv/bin/python benchmarks/bench_data.py --update-docs   # also rewrite the "Data" section of
                                                              # docs/benchmarks.md (with --only rle:
                                                              # only its RLE subsection)
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import psutil

from pneumoseg.io.rle import read_annotations, rle_decode, rle_encode
from _docs import DOCS, update_section  # type: ignore[import-not-found]  # benchmarks/ is on sys.path
from _seed import mask2rle, rle2mask  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parents[1]
SIIM = Path(os.environ.get("PNEUMOSEG_SIIM_DIR", ROOT.parent / "shared/data/siim"))
STAGE2 = SIIM / "labels" / "stage2-train-rle.csv.gz"
DICOM = SIIM / "dicom"


# ---------------------------------------------------------------- the seed notebook's code (baseline): _seed.py

def seed_get_data(files: list[Path], rles: dict[str, list[str]], size: int) -> tuple[list, list]:
    """The seed's serial loop: read, resize, decode, keep everything in lists."""
    import pydicom

    images, masks = [], []
    for f in files:
        img = pydicom.dcmread(f).pixel_array
        images.append(cv2.resize(img, (size, size)))
        mask = np.zeros((1024, 1024))
        for rle in rles.get(f.stem, []):
            if rle.strip() != "-1":
                mask += rle2mask(rle, 1024, 1024).T
        masks.append(cv2.resize(mask, (size, size)) > 0)
    return images, masks


# ---------------------------------------------------------------- RLE

def read_rows(limit: int | None) -> list[str]:
    with gzip.open(STAGE2, "rt", encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        rows = [r[1].strip() for r in reader]
    return rows[:limit] if limit else rows


def seed_decode(rle: str) -> np.ndarray:
    """The seed's call: ``rle2mask(...).T`` for a run list, a zero float mask for ``-1``."""
    return rle2mask(rle, 1024, 1024).T if rle != "-1" else np.zeros((1024, 1024))


def _time_pass(fn: Callable[[str], object], rows: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to run ``fn`` over ``rows`` once."""
    t0, c0 = time.perf_counter(), time.process_time()
    for rle in rows:
        fn(rle)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_rle(limit: int | None, repeats: int = 3, n_mask2rle: int = 5) -> dict:
    """Decode positive and empty rows separately (best of ``repeats`` passes, seed and ours in the
    same pass), check every mask against the seed's, then time encoding."""
    rows = read_rows(limit)
    positive = [r for r in rows if r != "-1"]
    empty = [r for r in rows if r == "-1"]
    out: dict = {"rows": len(rows), "positive": len(positive), "empty": len(empty), "repeats": repeats}
    mismatches = nonempty_seed = nonempty_ours = 0
    for rle in rows:
        seed, ours = seed_decode(rle) > 0, rle_decode(rle, 1024, 1024)
        nonempty_seed += bool(seed.any())
        nonempty_ours += bool(ours.any())
        mismatches += not np.array_equal(seed, ours)
    out.update(nonempty_seed=nonempty_seed, nonempty_ours=nonempty_ours, mismatches=mismatches)
    for name, subset in (("positive", positive), ("empty", empty)):
        for side in ("seed", "ours"):
            out[f"{name}_{side}_s"] = out[f"{name}_{side}_cpu"] = float("inf")
        for _ in range(repeats):
            for side, fn in (("seed", seed_decode), ("ours", rle_decode)):
                wall, cpu = _time_pass(fn, subset)
                out[f"{name}_{side}_s"] = min(out[f"{name}_{side}_s"], wall)
                out[f"{name}_{side}_cpu"] = min(out[f"{name}_{side}_cpu"], cpu)
    for unit in ("s", "cpu"):
        for side in ("seed", "ours"):
            out[f"all_{side}_{unit}"] = out[f"positive_{side}_{unit}"] + out[f"empty_{side}_{unit}"]
    for key in ("positive", "empty", "all"):
        out[f"{key}_speedup"] = out[f"{key}_seed_s"] / out[f"{key}_ours_s"]
        out[f"{key}_speedup_cpu"] = out[f"{key}_seed_cpu"] / out[f"{key}_ours_cpu"]

    masks = [rle_decode(r, 1024, 1024) for r in positive]  # F-contiguous, as decoded
    c_masks = [np.ascontiguousarray(m) for m in masks]  # C-contiguous, as a model's output
    t0 = time.perf_counter()
    again = [rle_encode(m) for m in masks]
    out["encode_f_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    again_c = [rle_encode(m) for m in c_masks]
    out["encode_c_s"] = time.perf_counter() - t0
    out["reencode_diff"] = sum(a != " ".join(r.split()) or b != a for a, b, r in zip(again, again_c, positive,
                                                                                      strict=True))
    sample = c_masks[:: max(1, len(c_masks) // max(n_mask2rle, 1))][:n_mask2rle]
    t0 = time.perf_counter()
    seed_rles = [mask2rle((m.T * 255).astype(np.uint8), 1024, 1024) for m in sample]
    out["mask2rle_s"] = time.perf_counter() - t0
    out["mask2rle_n"] = len(sample)
    out["mask2rle_diff"] = sum(a != rle_encode(m) for a, m in zip(seed_rles, sample, strict=True))
    return out


# ---------------------------------------------------------------- prepare

def make_copies(tmp: Path, n: int, tag: str) -> tuple[Path, Path, dict[str, list[str]]]:
    """``n`` DICOMs: the 12 real ones symlinked under new names, with duplicated RLE rows."""
    src = tmp / f"dicom-{tag}{n}"
    src.mkdir()
    ann = read_annotations(DICOM / "train-rle.csv")
    real = sorted(DICOM.glob("*.dcm"))
    rles: dict[str, list[str]] = {}
    lines = ["ImageId, EncodedPixels"]
    for k in range(n):
        f = real[k % len(real)]
        name = f"r{k:05d}_{f.stem}"
        (src / f"{name}.dcm").symlink_to(f)
        rles[name] = list(ann[f.stem])
        lines += [f"{name}, {r}" for r in ann[f.stem]]
    csv_path = tmp / f"rle-{tag}{n}.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return src, csv_path, rles


class ChildCPU:
    """CPU seconds used by this process's descendants (workers, forkserver), polled in a thread."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for child in psutil.Process().children(recursive=True):
                try:
                    t = child.cpu_times()
                    self.seen[child.pid] = t.user + t.system
                except psutil.Error:
                    pass
            time.sleep(0.02)

    def __enter__(self) -> ChildCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.seen.values())


def bench_prepare(tmp: Path, n: int, size: int) -> dict:
    from pneumoseg.data.prepare import prepare_dicom

    src, csv_path, rles = make_copies(tmp, n, "speed")
    files = sorted(src.glob("*.dcm"))
    t0, c0 = time.perf_counter(), time.process_time()
    images, _ = seed_get_data(files, rles, size)
    t_seed, c_seed = time.perf_counter() - t0, time.process_time() - c0
    assert len(images) == n
    del images
    out = {"n": n, "seed_s": t_seed, "seed_cpu_ms": 1e3 * c_seed / n}
    for workers in (1, 2):
        with ChildCPU() as children:
            t0, c0 = time.perf_counter(), time.process_time()
            res = prepare_dicom(src, csv_path, tmp / f"cache{n}_{workers}", size=size, workers=workers,
                                progress=False)
            out[f"ours{workers}_s"] = time.perf_counter() - t0
            cpu = time.process_time() - c0
        out[f"ours{workers}_cpu_ms"] = 1e3 * (cpu + children.seconds) / n
        assert res.n_done == n and res.n_failed == 0, res
    t0 = time.perf_counter()
    res = prepare_dicom(src, csv_path, tmp / f"cache{n}_2", size=size, workers=2, progress=False)
    out["resume_s"] = time.perf_counter() - t0
    assert res.n_skipped == n
    out["speedup"] = t_seed / out["ours2_s"]
    return out


def peak_rss(tmp: Path, n: int, size: int) -> dict:
    """Peak of the summed RSS of a prepare subprocess and its workers (psutil, polled every 10 ms)."""
    src, csv_path, _ = make_copies(tmp, n, "mem")
    code = ("from pneumoseg.data.prepare import prepare_dicom\n"
            f"r = prepare_dicom({str(src)!r}, {str(csv_path)!r}, {str(tmp / f'mem{n}')!r}, size={size}, "
            "workers=2, progress=False)\nassert r.n_done == " + str(n))
    t0 = time.perf_counter()
    proc = psutil.Popen([sys.executable, "-c", code])
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [proc, *proc.children(recursive=True)]:
                total += p.memory_info().rss
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.01)
    if proc.returncode:
        raise SystemExit(f"prepare subprocess failed with code {proc.returncode}")
    return {"n": n, "peak_mb": peak / 2**20, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- report

def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}, Linux"


def load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def rle_markdown(r: dict, args: argparse.Namespace, marked: bool = False) -> str:
    """The RLE subsection (its own markers, so ``--only rle --update-docs`` rewrites just this)."""
    cmd = ".venv/bin/python benchmarks/bench_data.py --only rle" + (" --quick" if args.quick else "")

    def ms(seconds: float, n: int) -> str:
        return f"{1e3 * seconds / max(n, 1):.3f} ms"

    buf = io.StringIO()
    w = buf.write
    if marked:
        w("<!-- data-rle:start -->\n")
    w("### RLE: `pneumoseg.io.rle` vs the seed's `rle2mask` (+ `.T`) and the challenge's `mask2rle`\n\n")
    w(f"Machine: {machine()}. Load average (1/5/15 min) at the start: {args.load_start}, at the end: "
      f"{load()} (the cores are shared with other jobs). Reproduce: `{cmd}` (add `--update-docs` to "
      "rewrite this subsection).\n\n")
    w(f"`stage2-train-rle.csv.gz`, 1024x1024: {r['positive']:,} rows with runs and {r['empty']:,} empty "
      f"(`-1`) rows, timed separately (for `-1` the seed's caller makes a zero float mask instead of "
      f"calling `rle2mask`); best of {r['repeats']} passes, the seed and `rle_decode` over the same rows in "
      "each pass.\n\n")
    w("| rows | count | seed `rle2mask` per row | `rle_decode` per row | speed-up | speed-up in CPU time |\n"
      "|---|---:|---:|---:|---:|---:|\n")
    for key, label in (("positive", "with runs"), ("empty", "empty (`-1`)"), ("all", "all")):
        n = r["rows"] if key == "all" else r[key]
        speed = f"{r[key + '_speedup']:.1f}x"
        speed = f"**{speed}**" if key == "positive" else speed
        w(f"| {label} | {n:,} | {ms(r[key + '_seed_s'], n)} | {ms(r[key + '_ours_s'], n)} | {speed} | "
          f"{r[key + '_speedup_cpu']:.1f}x |\n")
    w(f"\nPer-row times are wall-clock; the last column compares the CPU time of this process (less "
      f"sensitive to other jobs on the shared cores). Target on rows with runs: >= 5x. The all-rows figure "
      f"is mostly empty rows, which cost both sides an allocation and nothing else; quote the first line. "
      f"Masks differing from the seed's: "
      f"**{r['mismatches']}** of {r['rows']:,} (non-empty: {r['nonempty_seed']:,} seed, "
      f"{r['nonempty_ours']:,} ours). Where it comes from: the string is parsed by one numpy call and "
      "the runs are filled as slices (or one `np.repeat` when there are many) of a column-major buffer "
      "whose transposed view is returned, instead of scattering every pixel through `divmod`.\n\n")
    w("| encode (rows with runs) | masks | per mask |\n|---|---:|---:|\n")
    w(f"| `rle_encode`, masks as decoded (F-contiguous) | {r['positive']:,} | "
      f"{ms(r['encode_f_s'], r['positive'])} |\n")
    w(f"| `rle_encode`, C-contiguous copies (a model's output) | {r['positive']:,} | "
      f"{ms(r['encode_c_s'], r['positive'])} |\n")
    w(f"| the challenge's `mask2rle` (a loop over every pixel) | {r['mask2rle_n']} | "
      f"{ms(r['mask2rle_s'], r['mask2rle_n'])} |\n\n")
    w(f"Re-encoded strings differing from the original: **{r['reencode_diff']}** of {r['positive']:,}; "
      f"`mask2rle` strings differing from `rle_encode`'s: **{r['mask2rle_diff']}** of {r['mask2rle_n']}.\n")
    if marked:
        w("<!-- data-rle:end -->\n\n")
    return buf.getvalue()


def markdown(r: dict, p: dict, mem: list[dict], args: argparse.Namespace) -> str:
    cmd = "make bench  # = .venv/bin/python benchmarks/bench_data.py" + (" --quick" if args.quick else "")
    buf = io.StringIO()
    w = buf.write
    w("## Data\n\n")
    w(f"Machine: {machine()}. Load average (1/5/15 min) at the start: {args.load_start}, at the end: "
      f"{load()}; other jobs sharing the cores slow the parallel numbers most.\n\n"
      f"Reproduce: `{cmd}` (add `--update-docs` to rewrite this section).\n\n")
    w(rle_markdown(r, args, marked=True))
    w(f"### prepare: {p['n']} DICOMs at {args.size}px vs the seed's serial `get_data` loop\n\n")
    w("The 12 real JPEG-baseline DICOMs, symlinked under new names with duplicated RLE rows. The seed loop "
      "(pydicom read + `cv2.resize`, `rle2mask` per row, everything kept in lists) writes nothing; prepare "
      "also writes two PNGs and a record per image.\n\n")
    w("| | time | images/s | CPU per image (all processes) |\n|---|---:|---:|---:|\n")
    for label, key in (("seed loop (serial)", "seed"), ("prepare, --workers 1", "ours1"),
                       ("prepare, --workers 2", "ours2"), ("prepare rerun (all skipped)", "resume")):
        cpu = f"{p[key + '_cpu_ms']:.1f} ms" if key + "_cpu_ms" in p else ""
        w(f"| {label} | {p[key + '_s']:.2f} s | {p['n'] / p[key + '_s']:.0f} | {cpu} |\n")
    w(f"\nSpeed-up with 2 workers: **{p['speedup']:.1f}x** (target >= 2x). Where it comes from: "
      "`pneumoseg.io.dicom.read` decodes the challenge's JPEG-baseline files with Pillow (libjpeg-turbo, ~5 ms) "
      "instead of pydicom's default plugin (pylibjpeg, ~11-15 ms of the seed loop's ~18 ms per image), "
      "and two worker processes share the 2 cores, minus the pool's start (~0.5 s).\n\n")
    w("### prepare: peak memory (parent + 2 workers, summed RSS, polled every 10 ms)\n\n")
    w("| files | peak RSS | wall time (incl. start) | images/s |\n|---:|---:|---:|---:|\n")
    for m in mem:
        w(f"| {m['n']:,} | {m['peak_mb']:.0f} MB | {m['seconds']:.1f} s | {m['n'] / m['seconds']:.0f} |\n")
    w("\nTarget: flat in the number of files, < 1 GB. The sum counts pages shared by the processes "
      "(libraries) once per process, so it overstates the real footprint.\n")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 RLE rows, 48 files, memory at 48/240 files")
    ap.add_argument("--only", choices=("all", "rle"), default="all", help="run only the RLE part")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--update-docs", action="store_true", help="rewrite the Data section of docs/benchmarks.md "
                    "(with --only rle: its RLE subsection)")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args()
    args.load_start = load()
    if not (STAGE2.is_file() and DICOM.is_dir()):
        raise SystemExit(f"real SIIM sample not found at {SIIM} (set PNEUMOSEG_SIIM_DIR)")
    n_prep, n_mem = (48, (48, 240)) if args.quick else (204, (204, 2004))
    print("RLE ...", file=sys.stderr)
    r = bench_rle(2000 if args.quick else None, n_mask2rle=2 if args.quick else 5)
    if args.only == "rle":
        section = rle_markdown(r, args)
        print(section)
        if args.json:
            args.json.write_text(json.dumps({"rle": r}, indent=2))
        if args.update_docs:
            update_section("data-rle", section)
            print(f"updated the RLE subsection of {DOCS}", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="pneumoseg-bench-") as tmp:
        print("prepare ...", file=sys.stderr)
        p = bench_prepare(Path(tmp), n_prep, args.size)
        print("memory ...", file=sys.stderr)
        mem = [peak_rss(Path(tmp), n, args.size) for n in n_mem]
    section = markdown(r, p, mem, args)
    print(section)
    if args.json:
        args.json.write_text(json.dumps({"rle": r, "prepare": p, "memory": mem}, indent=2))
    if args.update_docs:
        update_section("data", section)
        print(f"updated {DOCS}", file=sys.stderr)


if __name__ == "__main__":
    main()
