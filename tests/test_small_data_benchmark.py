"""The small-data benchmark's table: out-of-fold means, the paired difference, empty positives."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks.real_small_data import REFERENCE, _table
from pneumoseg.scoring.stats import paired_bootstrap


def test_table_reports_means_paired_difference_and_empty_positives() -> None:
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(12)]
    truth = np.array([True] * 9 + [False] * 3)
    ref = np.where(truth, rng.uniform(0.1, 0.5, 12), 1.0)
    other = np.where(truth, ref + 0.2, 0.0)
    other[0] = 0.0  # one positive predicted empty
    oof = pd.concat([pd.DataFrame({"recipe": name, "fold": 0, "image_id": ids, "has_truth": truth, "dice": d,
                                   "pred_positive": (d > 0) | ~truth})
                     for name, d in ((REFERENCE, ref), ("small_data", other))])
    results = pd.DataFrame({"recipe": [REFERENCE, "small_data"], "fold": 0, "steps": [200, 1000],
                            "predicts_nothing": False, "train_s": 60.0, "wall_s": [120.0, 600.0]})
    rows = {line.split("|")[1].strip(" `"): line for line in _table(results, oof, [REFERENCE, "small_data"])
            .splitlines()[2:]}
    assert f"{ref[truth].mean():.3f} (" in rows[REFERENCE] and "| reference |" in rows[REFERENCE]
    expected = paired_bootstrap(ref[truth], other[truth], seed=0).diff.value
    assert f"{expected:+.3f} (" in rows["small_data"]
    assert "| 1/9 |" in rows["small_data"] and "| 0/9 |" in rows[REFERENCE]
    assert rows["small_data"].rstrip().endswith("| 10.0 |")  # minutes per fold from wall_s
