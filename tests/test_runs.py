"""pneumoseg.runs: the one typed reader of RUN/config.yaml and the one resolver of RUN/eval/<name>/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pneumoseg.config import ExperimentConfig, dump_config, load_config
from pneumoseg.errors import ConfigError, DataError
from pneumoseg.runs import eval_dir, find_eval_dir, read_run_config, truth_areas


def _run(tmp_path: Path, *evaluated: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    dump_config(load_config(None, ["data.cache=/somewhere/cache", "model.name=unet"]), run / "config.yaml")
    for name in evaluated:
        (eval_dir(run, name)).mkdir(parents=True)
        (eval_dir(run, name) / "per_image.csv").write_text("image_id\n")
    return run


def test_run_config_is_the_typed_config_load_run_reads(tmp_path: Path) -> None:
    run = _run(tmp_path)  # no checkpoints: nothing but the config is read
    cfg = read_run_config(run)
    assert isinstance(cfg, ExperimentConfig) and cfg == load_config(run / "config.yaml")
    assert cfg.data.cache == "/somewhere/cache" and cfg.model.name == "unet"
    assert read_run_config(tmp_path / "nothing", required=False) is None
    with pytest.raises(DataError, match=r"is not a run folder \(no config\.yaml\)"):
        read_run_config(tmp_path / "nothing")
    (run / "config.yaml").write_text("model:\n  nmae: unet\n")
    with pytest.raises(ConfigError, match=r"config\.yaml"):
        read_run_config(run)


def test_reading_a_run_config_imports_no_torch() -> None:
    code = ("import sys; from pneumoseg.runs import read_run_config, find_eval_dir; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_one_eval_folder_resolver(tmp_path: Path) -> None:
    run = _run(tmp_path, "val", "hospital_b")
    assert find_eval_dir(run, "hospital_b") == run / "eval" / "hospital_b"
    with pytest.raises(DataError, match=r"evaluated on hospital_b, val; choose one with --split"):
        find_eval_dir(run)
    with pytest.raises(DataError, match=r"no evaluation of 'test' .*run `pneumoseg evaluate .* --split test` first"):
        find_eval_dir(run, "test")
    (eval_dir(run, "test")).mkdir()
    (eval_dir(run, "test") / "per_image.csv").write_text("image_id\n")
    assert find_eval_dir(run) == run / "eval" / "test"
    only = tmp_path / "only"
    shutil.copytree(run, only, ignore=shutil.ignore_patterns("test", "val"))
    assert find_eval_dir(only) == only / "eval" / "hospital_b"
    legacy = tmp_path / "legacy"  # an older flat RUN/eval/ naming its split
    (legacy / "eval").mkdir(parents=True)
    (legacy / "eval" / "per_image.csv").write_text("image_id\n")
    (legacy / "eval" / "metrics.json").write_text(json.dumps({"split": "val"}))
    assert find_eval_dir(legacy, "val") == legacy / "eval"
    with pytest.raises(DataError, match="does not exist"):
        find_eval_dir(tmp_path / "nope", "test")


def test_truth_areas_mm2_only_when_every_positive_has_a_spacing() -> None:
    per_image = pd.DataFrame({"image_id": ["a", "b", "c"], "truth_area_px": [0, 100, 400]})
    images = pd.DataFrame({"image_id": ["a", "b", "c"], "pixel_spacing_mm": [float("nan"), 0.5, 0.2]})
    area, unit = truth_areas(per_image, images.set_index("image_id", drop=False))
    assert unit == "mm²" and area[1:].tolist() == pytest.approx([25.0, 16.0])
    images.loc[2, "pixel_spacing_mm"] = float("nan")
    area, unit = truth_areas(per_image, images.set_index("image_id", drop=False))
    assert unit == "px" and area.tolist() == [0, 100, 400]
    assert truth_areas(per_image)[1] == "px"
