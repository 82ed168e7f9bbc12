"""prepare: the real DICOM and PNG samples, resuming after a kill, and every kind of bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import typer
from typer.testing import CliRunner

from pneumoseg.data.cache import INDEX_COLUMNS, read_truth
from pneumoseg.data.prepare import DEFAULT_MASK_RULE, SIZES, prepare_dicom, prepare_png
from pneumoseg.data.prepare_items import pixel_spacing_of
from pneumoseg.io.dicom.read import pixel_spacing_mm, read_dicom
from pneumoseg.errors import DataError
from pneumoseg.io.images import encode_png, read_image, read_mask, resize_image, resize_mask, write_png
from tests.helpers.dicom import write_dicom
from pneumoseg.io.rle import read_annotations
from tests.shared_data import SIIM, require_siim

DICOM = SIIM / "dicom"
RLE = DICOM / "train-rle.csv"
ID_307 = "1.2.276.0.7230010.3.1.4.8323329.307.1517875162.311533"
require_png = pytest.mark.skipif(not (SIIM / "png").is_dir(), reason=f"real PNG sample not found at {SIIM}")


def _app() -> typer.Typer:
    try:
        from pneumoseg.cli.main import app
    except Exception:  # another command module may be missing
        from pneumoseg.cli import prepare as cmd

        app = typer.Typer()
        cmd.register(app)
        app.command("noop", hidden=True)(lambda: None)  # keep `prepare` a subcommand
    return app


def _tree(root: Path, public: bool = False) -> dict[str, bytes]:
    files = {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}
    return {k: p.read_bytes() for k, p in files.items() if not (public and k.startswith(".parts"))}


def _files_of(cache: Path, image_id: str) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file() and image_id in p.name]


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory) -> Path:
    if not DICOM.is_dir():
        pytest.skip(f"real SIIM sample not found at {SIIM}")
    out = tmp_path_factory.mktemp("real") / "cache"
    result = prepare_dicom(DICOM, RLE, out, size=256, workers=2, progress=False)
    assert (result.n_done, result.n_skipped, result.n_failed, result.warnings) == (12, 0, 0, [])
    return out


@require_siim
def test_real_dicom_sample_index(real_cache):
    index = pd.read_csv(real_cache / "index.csv", dtype={"image_id": str})
    assert list(index.columns) == INDEX_COLUMNS
    assert len(index) == 12 and index["has_pneumothorax"].sum() == 7
    assert list(index["image_id"]) == sorted(index["image_id"])
    assert index.set_index("image_id").loc[ID_307, "n_annotations"] == 4
    assert set(index["view_position"]) <= {"PA", "AP"} and set(index["sex"]) <= {"M", "F"}
    assert (index["orig_height"] == 1024).all() and index["patient_id"].str.len().gt(0).all()
    assert (index["matched_by"] == "uid").all()  # the real files are named by their SOPInstanceUID
    ann = read_annotations(RLE)
    for row in index.itertuples():
        full = ann.mask(row.image_id, 1024, 1024)
        assert row.mask_area_px == int(full.sum())
        assert row.n_annotations == ann.n_annotations(row.image_id)
        small = read_image(real_cache / "masks" / f"{row.image_id}.png")
        expected = resize_mask(full, 256, rule=DEFAULT_MASK_RULE)
        assert np.array_equal(small, expected.astype(np.uint8) * 255 if expected.dtype == bool else expected)
        truth = read_truth(real_cache, row.image_id)  # full resolution, whatever the cache size
        assert truth.dtype == bool and np.array_equal(truth, full)
        img = read_image(real_cache / "images" / f"{row.image_id}.png")
        assert img.shape == (256, 256) and img.dtype == np.uint8 and img.std() > 10
    meta = json.loads((real_cache / "cache.json").read_text())
    assert meta["size"] == 256 and meta["layout"] == "dicom" and meta["created_by"].startswith("pneumoseg ")
    assert meta["mask_rule"] == DEFAULT_MASK_RULE
    # Pixel spacing from the headers, by the rule of pneumoseg.io.dicom.read.pixel_spacing_mm (an independent reader).
    for row in index.itertuples():
        (dr, dc), _ = pixel_spacing_mm(pydicom.dcmread(row.source, stop_before_pixels=True))
        assert row.pixel_spacing_mm == pytest.approx(math.sqrt(dr * dc), rel=1e-7)


@require_siim
def test_rerun_skips_everything_and_other_size_is_refused(real_cache, tmp_path):
    before = _tree(real_cache)
    again = prepare_dicom(DICOM, RLE, real_cache, size=256, workers=2, progress=False)
    assert (again.n_done, again.n_skipped) == (0, 12)
    assert _tree(real_cache) == before
    with pytest.raises(DataError, match=r"size 256.*--overwrite"):
        prepare_dicom(DICOM, RLE, real_cache, size=512, progress=False)
    with pytest.raises(DataError, match="multiple of 32 from 128 to 1024"):
        prepare_dicom(DICOM, RLE, tmp_path / "c", size=300, progress=False)


# The reduced JPEG decode (the default) against --exact-decode on the 12 real files at 256 px, measured
# (docs/data.md): per image, mean |difference| 0.045-0.065 grey levels, max 2. Asserted with a margin.
MAX_MEAN_DIFF, MAX_ABS_DIFF = 0.1, 3


@require_siim
def test_exact_decode_is_the_full_decode_and_the_default_stays_within_the_bound(real_cache, tmp_path):
    exact = tmp_path / "exact"
    args = ["prepare", "--dicom-dir", str(DICOM), "--rle", str(RLE), "--out", str(exact), "--size", "256",
            "--workers", "1", "--no-progress", "--exact-decode"]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    index = pd.read_csv(exact / "index.csv", dtype={"image_id": str})
    means = []
    for row in index.itertuples():
        name = f"{row.image_id}.png"
        # Byte-identical to what prepare wrote before the reduced decode existed: full decode, area resize.
        before = encode_png(resize_image(read_dicom(row.source).pixels, 256))
        assert (exact / "images" / name).read_bytes() == before
        diff = np.abs(read_image(real_cache / "images" / name).astype(int) - read_image(exact / "images" / name))
        assert diff.mean() < MAX_MEAN_DIFF and diff.max() <= MAX_ABS_DIFF, (name, diff.mean(), diff.max())
        means.append(diff.mean())
    assert 0 < np.mean(means)  # the default really is another decode
    # Masks, truth and index.csv do not depend on the decode.
    for sub in ("masks", "truth"):
        assert _tree(exact / sub) == _tree(real_cache / sub)
    assert (exact / "index.csv").read_bytes() == (real_cache / "index.csv").read_bytes()
    decode = {c: json.loads((c / "cache.json").read_text())["image_decode"] for c in (exact, real_cache)}
    assert (decode[exact]["mode"], decode[exact]["images_by_scale"]) == ("exact", {"1": 12})
    assert (decode[real_cache]["mode"], decode[real_cache]["images_by_scale"]) == ("reduced", {"4": 12})
    # Rerunning with the other mode redoes every image (no --overwrite needed) and records it.
    again = prepare_dicom(DICOM, RLE, exact, size=256, workers=1, progress=False)
    assert (again.n_done, again.n_skipped) == (12, 0)
    assert _tree(exact / "images") == _tree(real_cache / "images")
    assert json.loads((exact / "cache.json").read_text())["image_decode"]["mode"] == "reduced"


@require_siim
def test_reduced_decode_only_where_the_cache_is_at_most_half_the_source(tmp_path):
    src, rle = _copies(tmp_path, 1)
    for size, scale in ((512, "2"), (544, "1"), (1024, "1")):
        out = tmp_path / f"c{size}"
        prepare_dicom(src, rle, out, size=size, workers=1, progress=False)
        assert json.loads((out / "cache.json").read_text())["image_decode"]["images_by_scale"] == {scale: 12}
        index = pd.read_csv(out / "index.csv")
        assert (index["orig_height"] == 1024).all() and (index["orig_width"] == 1024).all()
        assert read_image(out / "images" / f"{index['image_id'][0]}.png").shape == (size, size)


def _copies(tmp_path: Path, n_copies: int) -> tuple[Path, Path]:
    """``n_copies`` symlinked copies of the 12 real files under new names, with matching RLE rows."""
    src = tmp_path / "dcm"
    src.mkdir()
    rows = ["ImageId, EncodedPixels"]
    ann = read_annotations(RLE)
    for k in range(n_copies):
        for f in sorted(DICOM.glob("*.dcm")):
            name = f"c{k:02d}_{f.stem}"
            (src / f"{name}.dcm").symlink_to(f)
            rows += [f"{name}, {r}" for r in ann[f.stem]]
    (tmp_path / "rle.csv").write_text("\n".join(rows) + "\n")
    return src, tmp_path / "rle.csv"


@require_siim
def test_resume_after_kill_is_byte_identical(tmp_path):
    src, rle = _copies(tmp_path, 4)
    ref = tmp_path / "ref"
    prepare_dicom(src, rle, ref, size=256, workers=2, progress=False)
    out = tmp_path / "killed"
    code = (f"from pneumoseg.data.prepare import prepare_dicom; "
            f"prepare_dicom({str(src)!r}, {str(rle)!r}, {str(out)!r}, size=256, workers=1, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 60
    while len(list((out / ".parts").glob("rec-*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    recorded = set().union(*(json.loads(p.read_text()) for p in (out / ".parts").glob("rec-*.json")))
    assert 16 <= len(recorded) < 48 and not (out / "index.csv").exists()
    # A stray temp file (as a kill during a write leaves) and a lost mask: both are redone.
    (out / "images" / ".c00_x.abc123.tmp.png").write_bytes(b"half")
    (out / "masks" / f"{min(recorded)}.png").unlink()
    resumed = prepare_dicom(src, rle, out, size=256, workers=2, progress=False)
    assert resumed.n_skipped == len(recorded) - 1 and resumed.n_done == 48 - resumed.n_skipped
    # The outputs (not the private resume records in .parts/) equal an uninterrupted run's.
    assert _tree(out, public=True) == _tree(ref, public=True)


@require_siim
def test_changed_annotation_is_redone(tmp_path):
    src, rle = _copies(tmp_path, 1)
    out = tmp_path / "cache"
    prepare_dicom(src, rle, out, size=256, workers=1, progress=False)
    text = rle.read_text().replace(f"c00_{ID_307}", "c00_moved", 1)
    rle.write_text(text)
    again = prepare_dicom(src, rle, out, size=256, workers=1, progress=False)
    assert again.n_done == 1 and again.n_skipped == 11
    row = pd.read_csv(out / "index.csv").set_index("image_id").loc[f"c00_{ID_307}"]
    assert row["n_annotations"] == 3
    assert any("c00_moved" in w for w in again.warnings)


def _bad_dicom_dir(tmp_path: Path) -> tuple[Path, Path]:
    import pydicom

    pos, neg = DICOM / f"{ID_307}.dcm", min(DICOM.glob("*.dcm"))
    src = tmp_path / "dcm"
    src.mkdir()
    (src / "good.dcm").symlink_to(pos)
    (src / "healthy_noann.dcm").symlink_to(neg)
    (src / "badrle.dcm").symlink_to(neg)
    (src / "junk.dcm").write_text("this is not a DICOM file\n")
    (src / "trunc.dcm").write_bytes(pos.read_bytes()[:40_000])
    ds = pydicom.dcmread(neg)
    del ds.PixelData
    ds.save_as(src / "nopix.dcm")
    good_rows = [f"good, {r}" for r in read_annotations(RLE)[ID_307]]
    rows = ["ImageId, EncodedPixels", *good_rows, "badrle, 5 abc", "junk, -1", "trunc, -1", "nopix, -1",
            "ghost_a, -1", "ghost_b, 10 10"]
    (tmp_path / "rle.csv").write_text("\n".join(rows) + "\n")
    return src, tmp_path / "rle.csv"


@require_siim
def test_bad_dicom_inputs_are_reported_and_leave_no_files(tmp_path):
    src, rle = _bad_dicom_dir(tmp_path)
    out = tmp_path / "cache"
    result = prepare_dicom(src, rle, out, size=256, workers=2, progress=False)
    assert result.n_failed == 4 and result.n_done == 2
    names = ("junk", "trunc", "nopix", "badrle")
    by_item = {name: [f for f in result.failures if name in f] for name in names}
    assert all(len(lines) == 1 for lines in by_item.values()), result.failures
    assert "not a DICOM" in by_item["junk"][0]
    assert "truncated" in by_item["trunc"][0].lower()
    assert "pixel" in by_item["nopix"][0].lower()
    assert "abc" in by_item["badrle"][0] and "rle.csv" in by_item["badrle"][0]
    assert all("\n" not in f for f in result.failures)
    records = "".join(p.read_text() for p in (out / ".parts").glob("rec-*.json"))
    for name in by_item:
        assert _files_of(out, name) == [], name
        assert f'"{name}"' not in records
    # No row under its UID nor under its stem: the image takes its SOPInstanceUID as id, healthy.
    neg_uid = min(DICOM.glob("*.dcm")).stem
    [no_ann] = [w for w in result.warnings if "no row" in w]
    assert no_ann.startswith("1 image(s)") and neg_uid in no_ann
    [by_name] = [w for w in result.warnings if "by file name" in w]
    assert by_name.startswith("4 image(s)") and "good, nopix, trunc" in by_name  # matched before they failed
    [orphan] = [w for w in result.warnings if "no DICOM file" in w]
    assert orphan.startswith("2 annotated") and "ghost_a" in orphan and "ghost_b" in orphan
    index = pd.read_csv(out / "index.csv", dtype={"image_id": str}).set_index("image_id")
    assert sorted(index.index) == sorted(["good", neg_uid])
    assert index.loc[neg_uid, "has_pneumothorax"] == 0 and index.loc[neg_uid, "matched_by"] == "none"
    assert index.loc["good", "matched_by"] == "stem" and index.loc["good", "n_annotations"] == 4


@require_siim
def test_cli_prepare_reports_failures_and_exits_2(tmp_path):
    src, rle = _bad_dicom_dir(tmp_path)
    out = tmp_path / "cache"
    args = ["prepare", "--dicom-dir", str(src), "--rle", str(rle), "--out", str(out), "--size", "256",
            "--workers", "2", "--no-progress"]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "4 item(s) could not be prepared" in text and "junk.dcm" in text and "warning" in text
    res = CliRunner().invoke(_app(), ["prepare", "--dicom-dir", str(src), "--out", str(out)])
    assert res.exit_code == 2 and "--rle" in res.output
    res = CliRunner().invoke(_app(), [a if a != "256" else "512" for a in args])
    assert res.exit_code == 2 and "--overwrite" in " ".join(res.output.split())


@require_png
def test_real_png_sample_via_cli(tmp_path):
    out = tmp_path / "cache"
    args = ["prepare", "--png-dir", str(SIIM / "png"), "--out", str(out), "--size", "256", "--workers", "2",
            "--no-progress"]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    index = pd.read_csv(out / "index.csv", keep_default_na=False)
    assert len(index) == 30 and index["has_pneumothorax"].all() and (index["patient_id"] == "").all()
    assert json.loads((out / "cache.json").read_text())["layout"] == "png"
    name = index["image_id"][0]
    full = read_mask(SIIM / "png" / "masks" / f"{name}.png")
    assert index["mask_area_px"][0] == full.sum()
    assert np.array_equal(read_mask(out / "masks" / f"{name}.png"), resize_mask(full, 256, rule="fraction"))
    assert {0, 255} <= set(np.unique(read_image(out / "masks" / f"{name}.png")).tolist())  # soft: 0..255
    assert np.array_equal(read_truth(out, name), full)  # the source mask itself, at 1024


def test_png_layout_bad_inputs(tmp_path):
    src = tmp_path / "png"
    img = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:12] = True
    mask[40:45, 40:60] = True
    write_png(src / "images" / "ok.png", img)
    write_png(src / "masks" / "ok.png", mask)
    write_png(src / "images" / "small_mask.png", img)
    write_png(src / "masks" / "small_mask.png", mask[:32, :32])
    write_png(src / "images" / "nomask.png", img)
    write_png(src / "masks" / "lonely.png", mask)
    (src / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    out = tmp_path / "cache"
    result = prepare_png(src, out, size=256, workers=1, progress=False)
    assert result.n_done == 2 and result.n_failed == 2
    [mismatch] = [f for f in result.failures if "small_mask" in f]
    assert "images/small_mask.png" in mismatch and "masks/small_mask.png" in mismatch and "32x32" in mismatch
    assert any("broken.png" in f for f in result.failures)
    assert any(w.startswith("2 image(s) have no mask") and "nomask" in w for w in result.warnings)
    assert any(w.startswith("1 mask(s)") and "lonely" in w for w in result.warnings)
    assert _files_of(out, "small_mask") == [] and _files_of(out, "broken") == []
    index = pd.read_csv(out / "index.csv").set_index("image_id")
    assert index.loc["ok", "n_annotations"] == 2 and index.loc["ok", "mask_area_px"] == mask.sum()
    assert index.loc["nomask", "has_pneumothorax"] == 0
    dcm = tmp_path / "dcm"
    write_dicom(dcm / "a.dcm", img)
    (tmp_path / "rle.csv").write_text("ImageId, EncodedPixels\na, -1\n")
    with pytest.raises(DataError, match=r"layout 'png'.*--overwrite"):
        prepare_dicom(dcm, tmp_path / "rle.csv", out, size=256, progress=False)
    assert prepare_png(src, out, size=512, workers=1, progress=False, overwrite=True).n_done == 2


def _spacing_file(path: Path, **attrs: object) -> Path:
    import pydicom

    write_dicom(path, np.full((32, 48), 90, dtype=np.uint8))
    ds = pydicom.dcmread(path)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


@pytest.mark.parametrize("attrs", [
    {}, {"PixelSpacing": [0.14, 0.14]}, {"PixelSpacing": [0.1, 0.2]}, {"ImagerPixelSpacing": [0.168, 0.168]},
    {"ImagerPixelSpacing": [0.2, 0.2], "EstimatedRadiographicMagnificationFactor": 1.1},
    {"PixelSpacing": [0.14, 0.14], "ImagerPixelSpacing": [0.2, 0.2]}, {"PixelSpacing": [0, 0.1]},
    {"PixelSpacing": [0.14, 0.14, 0.2]},
])
def test_pixel_spacing_follows_dicom_seg_rule(tmp_path, attrs):
    import pydicom

    path = _spacing_file(tmp_path / "a.dcm", **attrs)
    reference = pixel_spacing_mm(pydicom.dcmread(path))
    got = pixel_spacing_of(path)
    if reference is None:
        assert got is None
    else:
        (r, c), _ = reference
        assert got == pytest.approx(np.sqrt(r * c), rel=1e-7)  # area-preserving: px * got**2 = px * r * c


def test_any_multiple_of_32_is_a_cache_size_and_spacing_is_indexed(tmp_path):
    assert {128, 256, 384, 512, 768, 1024} <= set(SIZES) and all(s % 32 == 0 for s in SIZES)
    dicom = tmp_path / "dicom"
    ids = [write_dicom(dicom / f"{k}.dcm", np.full((40, 40), 50 + k, dtype=np.uint8)) for k in range(2)]
    import pydicom

    ds = pydicom.dcmread(dicom / "0.dcm")
    ds.PixelSpacing = [0.143, 0.143]
    ds.save_as(dicom / "0.dcm")
    rle = tmp_path / "rle.csv"
    rle.write_text("ImageId, EncodedPixels\n" + "".join(f"{i}, -1\n" for i in ids))
    prepare_dicom(dicom, rle, tmp_path / "c384", size=384, workers=1, progress=False)
    assert read_image(tmp_path / "c384" / "images" / f"{ids[0]}.png").shape == (384, 384)
    index = pd.read_csv(tmp_path / "c384" / "index.csv", dtype={"image_id": str}).set_index("image_id")
    assert list(index.reset_index().columns) == INDEX_COLUMNS
    assert index.loc[ids[0], "pixel_spacing_mm"] == pytest.approx(0.143)
    assert np.isnan(index.loc[ids[1], "pixel_spacing_mm"])  # unknown: empty cell
    for bad in (300, 96, 1056):
        with pytest.raises(DataError, match=rf"size {bad} is not supported: choose a multiple of 32 from 128 to 1024"):
            prepare_dicom(dicom, rle, tmp_path / f"c{bad}", size=bad, workers=1, progress=False)
