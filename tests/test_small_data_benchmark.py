"""The small-data benchmark's table: means over seeds, seed spread, lesion sizes, the paired difference."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks.real_small_data import REFERENCE, _table
from pneumoseg.scoring.stats import paired_bootstrap


def _oof(name: str, seed: int, ids: list[str], truth: np.ndarray, dice: np.ndarray, area: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"recipe": name, "seed": seed, "fold": 0, "image_id": ids, "has_truth": truth, "dice": dice,
                         "pred_positive": (dice > 0) | ~truth, "area": area})


def test_table_reports_seed_means_spread_sizes_paired_difference_and_empty_positives() -> None:
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(12)]
    truth = np.array([True] * 9 + [False] * 3)
    area = np.array([0.005, 0.005, 0.005, 0.02, 0.02, 0.02, 0.1, 0.1, 0.2, 0, 0, 0])
    ref = np.where(truth, rng.uniform(0.1, 0.5, 12), 1.0)
    other0 = np.where(truth, ref + 0.2, 0.0)
    other0[0] = 0.0  # one small positive predicted empty with seed 0
    other1 = np.where(truth, ref + 0.1, 0.0)
    other1[8] = 0.0  # the largest lesion predicted empty with seed 1
    oof = pd.concat([_oof(REFERENCE, 0, ids, truth, ref, area), _oof("lite0_imagenet", 0, ids, truth, other0, area),
                     _oof("lite0_imagenet", 1, ids, truth, other1, area)])
    results = pd.DataFrame({"recipe": [REFERENCE, "lite0_imagenet", "lite0_imagenet"], "seed": [0, 0, 1],
                            "fold": 0, "steps": [1000, 500, 500], "predicts_nothing": False, "train_s": 60.0,
                            "wall_s": [120.0, 600.0, 300.0]})
    rows = {line.split("|")[1].strip(" `"): line for line in _table(results, oof, [REFERENCE, "lite0_imagenet"])
            .splitlines()[2:]}
    mean = (other0 + other1) / 2
    cells = [c.strip() for c in rows["lite0_imagenet"].split("|")[1:-1]]
    assert cells[3] == "2" and cells[4].startswith(f"{mean[truth].mean():.3f} (")
    s0, s1 = other0[truth].mean(), other1[truth].mean()
    assert cells[5] == f"{s0:.3f} / {s1:.3f} (sd {np.std([s0, s1], ddof=1):.3f})"
    assert cells[7] == (f"< 1 %: {mean[:3].mean():.2f} (3); 1-5 %: {mean[3:6].mean():.2f} (3); "
                        f"> 5 %: {mean[6:9].mean():.2f} (3)")
    expected = paired_bootstrap(ref[truth], mean[truth], seed=0).diff.value
    assert cells[8].startswith(f"{expected:+.3f} (")
    assert cells[9] == "2/18 (1/6)"  # (seed, positive) pairs empty; of them over 5 % of the image
    assert cells[11] == "7.5"  # minutes per run from wall_s
    ref_cells = [c.strip() for c in rows[REFERENCE].split("|")[1:-1]]
    assert ref_cells[8] == "reference" and ref_cells[9] == "0/9 (0/3)" and ref_cells[5] == f"{ref[truth].mean():.3f}"


def test_rows_written_before_seeds_count_as_seed_42() -> None:
    ids = ["a", "b"]
    oof = pd.DataFrame({"recipe": REFERENCE, "fold": 0, "image_id": ids, "has_truth": [True, False],
                        "dice": [0.5, 1.0], "pred_positive": [True, False]})
    results = pd.DataFrame({"recipe": [REFERENCE], "fold": [0], "steps": [1000], "predicts_nothing": [False],
                            "train_s": [60.0]})
    row = _table(results, oof, [REFERENCE]).splitlines()[2]
    assert "| 1 | 0.500 (" in row and "| 0.500 |" in row
