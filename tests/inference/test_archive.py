"""Archive prediction (pneumoseg.inference): DDP sharding, kill -9 and resume, the manifest, streamed inputs."""

from __future__ import annotations

import filecmp
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pneumoseg.cli.main import app
from pneumoseg.io.images import write_png
from pneumoseg.inference.archive import folder_source, iter_folder, iter_list, predict_archive
from pneumoseg.inference.archive.writers import PARTS, load_records
from pneumoseg.scoring.postprocess import PostProcess
from pneumoseg.inference.inputs import find_inputs, load_input
from pneumoseg.inference.predictor import Predictor

runner = CliRunner()
CLI = [sys.executable, "-m", "pneumoseg.cli.main"]


def _tree_equal(a: Path, b: Path) -> None:
    """Same file names and bytes in ``a`` and ``b`` (recursive), the part files and manifest aside.

    DICOM SEGs and SRs get new UIDs and times each time they are made: only their names are compared.
    """
    def names(root: Path) -> list[Path]:
        return sorted(p.relative_to(root) for p in root.rglob("*")
                      if p.is_file() and PARTS not in p.parts and p.name != "manifest.json")

    names_a = names(a)
    assert names_a == names(b)
    same_bytes = [str(n) for n in names_a if n.parts[0] not in ("seg", "sr")]
    _, mismatch, errors = filecmp.cmpfiles(a, b, same_bytes, shallow=False)
    assert not mismatch and not errors, mismatch


@pytest.fixture()
def archive(synth_data: Path, tmp_path: Path) -> Path:
    """9 DICOMs in nested folders, a PNG, a duplicate SOPInstanceUID (a copy under another name), a corrupt file."""
    root = tmp_path / "archive"
    dicoms = sorted((synth_data / "dicom").glob("*.dcm"))[:9]
    for i, p in enumerate(dicoms):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / f"d{i % 3}" / p.name)
    shutil.copy(dicoms[4], root / "d2" / "zz-copy.dcm")  # later in the walk: reported, the first one kept
    (root / "d0" / "broken.dcm").write_bytes(dicoms[0].read_bytes()[:1500])
    write_png(root / "plain.png", np.tile(np.arange(200, dtype=np.uint8), (120, 1)))
    return root


@pytest.fixture()
def partial_run(trained_run: Path, archive: Path, tmp_path: Path) -> Path:
    """The trained run with its threshold at the median pixel probability: masks neither empty nor full.

    The briefly trained net starts at the 0.01 foreground prior and its probabilities are nearly flat
    (~0.0094-0.0096): a threshold inside that band flips pixels on last-bit differences between one and
    two processes. The mask head is rescaled around the median logit first (logit -> k (logit - median),
    k spreading the 5-95 % logits over 8 units), so the probabilities spread around 0.5 and the masks
    test the pipeline, not float rounding.
    """
    import torch
    import yaml

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    image = load_input(next(archive.rglob("*.dcm"))).pixels
    prob = Predictor([run], device="cpu").probs_at_model_size([image])[0].astype(np.float64)
    logit = np.log(prob / (1 - prob))
    median, (low, high) = float(np.median(logit)), np.percentile(logit, [5, 95])
    k = 8.0 / max(float(high - low), 1e-6)
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        data = torch.load(ckpt, map_location="cpu", weights_only=False)
        state = data["state_dict"]
        head = [key for key, v in state.items() if key.endswith(".weight") and v.ndim == 4 and v.shape[0] == 1][-1]
        bias = head.removesuffix(".weight") + ".bias"
        state[head] = state[head] * k
        state[bias] = (state[bias] - median) * k
        torch.save(data, ckpt)
    prob = Predictor([run], device="cpu").probs_at_model_size([image])[0]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["postprocess"]["threshold"] = float(np.median(prob))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


@pytest.mark.slow  # starts pneumoseg in new processes (imports: most of the time)
def test_two_processes_equal_one_process_byte_for_byte(partial_run: Path, archive: Path, tmp_path: Path) -> None:
    args = [str(partial_run), str(archive), "--no-progress", "--device", "cpu", "--batch-size", "2", "--dicom-seg"]
    one = runner.invoke(app, ["predict", *args, "--out", str(tmp_path / "one"), "--workers", "0"])
    assert one.exit_code == 2, one.output  # the corrupt file and the duplicate
    two = subprocess.run([*CLI, "predict", *args, "--out", str(tmp_path / "two"), "--devices", "2", "--workers", "2"],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 2, two.stderr[-3000:]
    _tree_equal(tmp_path / "one", tmp_path / "two")
    preds = pd.read_csv(tmp_path / "one" / "predictions.csv", dtype={"image_id": str})
    assert len(preds) == 10 and preds["image_id"].is_unique
    assert list(preds["source"]) == [str(p) for p in find_inputs(archive) if "broken" not in p.name
                                     and "zz-copy" not in p.name]  # input order
    assert preds["area_px"].nunique() > 3  # a trained run: masks differ, the comparison means something
    for out in (one.output, two.stderr):
        assert "zz-copy.dcm: ImageId" in out and "already predicted from" in out and "broken.dcm" in out
    parts = list((tmp_path / "two" / PARTS).glob("*.jsonl"))
    assert len(parts) == 2  # one per rank, folded at the end


def test_one_process_runs_without_the_engine_byte_identical_to_the_lightning_loop(
        partial_run: Path, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pneumoseg.inference.archive import distributed

    predictor = Predictor([partial_run], device="cpu", batch_size=2)
    options = {"submission": None, "dicom_seg": True, "dicom_sr": True, "progress": False, "workers": 2}
    engine = predict_archive(predictor, folder_source(archive), tmp_path / "engine", accelerator="cpu",
                             engine=True, **options)  # Lightning's predict loop, one process
    # The CLI's one-process predict never reaches the Lightning loop ...
    def no_engine(*args: object, **kwargs: object) -> None:
        raise AssertionError("Lightning's predict loop was started for one process")

    monkeypatch.setattr(distributed, "predict_distributed", no_engine)
    cli = runner.invoke(app, ["predict", str(partial_run), str(archive), "--out", str(tmp_path / "cli"),
                              "--no-progress", "--device", "cpu", "--batch-size", "2", "--dicom-seg", "--dicom-sr",
                              "--workers", "2"])
    assert cli.exit_code == 2, cli.output  # the corrupt file and the duplicate
    assert "backend: torch (no " in cli.output  # the choice is printed: no model.onnx in the run
    # ... and writes the same bytes: masks, overlays, SRs aside, predictions.csv, submission.csv.
    _tree_equal(tmp_path / "engine", tmp_path / "cli")
    assert engine is not None and len(engine.failures) == 2
    assert {p.name for p in (tmp_path / "cli").iterdir()} >= {"masks", "overlays", "seg", "sr", "predictions.csv",
                                                              "submission.csv"}
    assert pd.read_csv(tmp_path / "cli" / "predictions.csv")["area_px"].nunique() > 3  # masks differ
    # A rerun resumes in process too (nothing predicted again).
    again = runner.invoke(app, ["predict", str(partial_run), str(archive), "--out", str(tmp_path / "cli"),
                                "--no-progress", "--device", "cpu", "--batch-size", "2", "--dicom-seg", "--dicom-sr"])
    assert "10 complete from an earlier run, 0 predicted now" in again.output


@pytest.fixture()
def pngs(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "pngs"
    for i in range(40):
        write_png(root / f"s{i % 2}" / f"img{i:03d}.png", rng.integers(0, 256, (128, 128), dtype=np.uint8))
    return root


@pytest.mark.slow  # starts pneumoseg in new processes (imports: most of the time)
def test_kill_9_then_resume_predicts_the_rest_once(trained_run: Path, pngs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [str(trained_run), str(pngs), "--out", str(out), "--no-progress", "--device", "cpu",
            "--batch-size", "1", "--workers", "0"]
    proc = subprocess.Popen([*CLI, "predict", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            # Committed part files only: a temporary (".<name>.<random>.tmp.jsonl", being fsync'd) is not one yet.
            if (out / PARTS).is_dir() and len([p for p in (out / PARTS).glob("[!.]*.jsonl")]) >= 3:
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    committed = len(load_records(out))
    assert 3 <= committed < 40
    # A kill may leave masks of the batch in flight and atomic temporaries; the rerun cleans them up.
    result = runner.invoke(app, ["predict", *args])
    assert result.exit_code == 0, result.output
    assert f"{committed} complete from an earlier run, {40 - committed} predicted now" in result.output
    preds = pd.read_csv(out / "predictions.csv", dtype={"image_id": str})
    assert sorted(preds["image_id"]) == sorted(f"img{i:03d}" for i in range(40))  # each image exactly once
    assert not [p for p in out.rglob(".*") if ".tmp" in p.name]
    # The same as a run that was never killed.
    ref = runner.invoke(app, ["predict", *args[:2], "--out", str(tmp_path / "ref"), *args[4:]])
    assert ref.exit_code == 0, ref.output
    _tree_equal(out, tmp_path / "ref")
    # Checked, not assumed: a deleted mask is predicted again, nothing else.
    (out / "masks" / "img007.png").unlink()
    again = runner.invoke(app, ["predict", *args])
    assert "39 complete from an earlier run, 1 predicted now" in again.output
    _tree_equal(out, tmp_path / "ref")


def test_other_settings_are_refused_in_one_line_unless_overwrite(trained_run: Path, pngs: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["predict", str(trained_run), str(pngs / "s0"), "--out", str(out), "--no-progress", "--device", "cpu",
            "--workers", "0"]
    assert runner.invoke(app, base).exit_code == 0
    before = (out / "predictions.csv").read_bytes()
    for extra, key in ((["--tta"], "tta"), (["--no-overlays"], "overlays"), (["--rle-format", "absolute"], "rle_format")):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, result.output
        assert f"other settings ({key}:" in result.output and "--overwrite" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert (out / "predictions.csv").read_bytes() == before
    result = runner.invoke(app, [*base, "--no-overlays", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "overlays").exists() and len(list((out / "masks").iterdir())) == 20
    assert runner.invoke(app, [*base, "--no-overlays"]).exit_code == 0  # the same settings resume


def test_inputs_are_streamed_not_listed(trained_run: Path, pngs: Path, tmp_path: Path) -> None:
    """The generator waits for the first mask after a few paths: listing everything first would time out."""
    out = tmp_path / "out"
    files = list(iter_folder(pngs))
    pulled: list[int] = []

    def paths() -> Iterator[Path]:
        for i, path in enumerate(files[:12]):
            pulled.append(i)
            if i == 6:
                deadline = time.monotonic() + 60
                while not (out / "masks").is_dir() or not any((out / "masks").iterdir()):
                    assert time.monotonic() < deadline, "nothing predicted before the listing went on"
                    time.sleep(0.01)
            yield path

    predictor = Predictor([trained_run], device="cpu", batch_size=2, postprocess=PostProcess(threshold=0.5))
    result = predict_archive(predictor, paths, out, progress=False, workers=0, accelerator="cpu")
    assert result is not None and result.n_images == 12 and not result.failures
    preds = pd.read_csv(out / "predictions.csv", dtype={"image_id": str})
    assert list(preds["image_id"]) == [p.stem for p in files[:12]]


def test_folder_walk_is_lazy_and_in_find_inputs_order(tmp_path: Path) -> None:
    for rel in ("b/x.dcm", "a.png", "a/z.PNG", "a/b/c.jpg", "a.b/y.dcm", "a/notes.txt", "c.dicom", "B.jpeg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    walk = iter_folder(tmp_path)
    assert isinstance(walk, Iterator)
    assert list(walk) == find_inputs(tmp_path)
    assert list(itertools.islice(folder_source(tmp_path)(), 2)) == find_inputs(tmp_path)[:2]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# archive\n{tmp_path / 'a.png'}\n\nb/x.dcm\n")
    assert list(iter_list(listing)) == [tmp_path / "a.png", Path("b/x.dcm")]


def test_list_input_and_listed_files_inside_out_are_refused(trained_run: Path, pngs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sneaky = out / "in" / "sneaky.png"
    write_png(sneaky, np.zeros((32, 32), np.uint8))
    files = sorted(pngs.rglob("*.png"))[:3]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in [files[0], sneaky, *files[1:]]))
    result = runner.invoke(app, ["predict", str(trained_run), "--list", str(listing), "--out", str(out),
                                 "--no-progress", "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 2
    assert len([ln for ln in result.output.splitlines() if "sneaky.png" in ln and "inside --out" in ln]) == 1
    preds = pd.read_csv(out / "predictions.csv", dtype={"image_id": str})
    assert list(preds["source"]) == [str(p) for p in files]  # the list's order
