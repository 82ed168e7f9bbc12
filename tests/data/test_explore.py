"""Tests for pneumoseg.data.explore and the ``pneumoseg explore`` command."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import typer
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from typer.testing import CliRunner

from pneumoseg.cli.explore import register
from pneumoseg.data.explore import METADATA_COLUMNS, PNG_COLUMNS, explore, explore_png
from pneumoseg.data.synth import generate_dataset
from pneumoseg.errors import DataError
from pneumoseg.io.rle import rle_encode
from tests.shared_data import SIIM

SIIM_DICOM = SIIM / "dicom"
ID_307 = "1.2.276.0.7230010.3.1.4.8323329.307.1517875162.311533"


def _app() -> typer.Typer:
    """A fresh app holding only ``explore`` (other commands may not exist yet)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)

    @app.callback()
    def _root() -> None:
        """Test root, so that ``explore`` stays a sub-command."""

    return app


def _real_dir() -> Path:
    if not any(SIIM_DICOM.glob("*.dcm")):
        pytest.skip(f"real SIIM sample not found at {SIIM_DICOM} (only present on the dev machines)")
    return SIIM_DICOM


def _assert_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_cli_on_the_real_sample(tmp_path: Path) -> None:
    root = _real_dir()
    out = tmp_path / "out"
    result = CliRunner().invoke(_app(), ["explore", str(root), "--rle", str(root / "train-rle.csv"),
                                         "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Patient id" in result.output and "17d405a3-a0d2-4901-b33a-63906aa48d9f" in result.output
    assert "58.3%" in result.output and str(out / "samples.png") in result.output

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_images"], summary["n_positive"], summary["n_negative"]) == (12, 7, 5)
    assert summary["n_annotation_rows"] == 15 and summary["annotation_rows_per_image"] == {"1": 11, "4": 1}
    assert summary["regions_per_positive"] == {"1": 6, "4": 1}
    assert summary["warnings"] == [] and summary["failures"] == [] and summary["n_failed"] == 0
    assert summary["n_matched_by_stem"] == 0
    assert sum(summary["view_position"].values()) == 12 and set(summary["view_position"]) == {"PA", "AP"}
    assert sum(summary["sex"].values()) == 12

    meta = pd.read_csv(out / "metadata.csv")
    assert len(meta) == 12 and list(meta.columns) == METADATA_COLUMNS
    row = meta.set_index("image_id").loc[ID_307]
    assert (row["n_rle_rows"], row["n_annotations"], row["has_pneumothorax"]) == (4, 4, 1)
    assert meta["has_pneumothorax"].sum() == 7 and (meta["matched_by"] == "uid").all()
    assert (meta.loc[meta["has_pneumothorax"] == 0, "mask_area_px"] == 0).all()
    assert (meta.loc[meta["has_pneumothorax"] == 1, "mask_area_px"] > 1000).all()
    # Areas in mm²: every positive has PixelSpacing; checked against pydicom's own reading of it.
    assert summary["mask_area_unit"] == "mm2" and summary["n_positive_without_spacing"] == 0
    assert summary["pixel_spacing_source"] == {"PixelSpacing": 12}
    for _, row in meta.iterrows():
        spacing = [float(v) for v in pydicom.dcmread(root / row["file"], stop_before_pixels=True).PixelSpacing]
        assert row["pixel_spacing_mm"] == pytest.approx(math.sqrt(spacing[0] * spacing[1]))
        assert row["mask_area_mm2"] == pytest.approx(row["mask_area_px"] * spacing[0] * spacing[1], abs=1e-6)
    pos = meta[meta["has_pneumothorax"] == 1]["mask_area_mm2"]
    assert summary["mask_area_mm2"]["max"] == pytest.approx(pos.max()) and summary["mask_area_mm2"]["count"] == 7
    assert "mm²" in result.output

    for name in ("samples.png", "distributions.png"):
        width, height = _assert_png(out / name)
        assert width > 300 and height > 300
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_bad_dir_gives_one_error_line_and_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    csv = tmp_path / "rle.csv"
    csv.write_text("ImageId, EncodedPixels\nx, -1\n")
    for folder in (empty, tmp_path / "missing"):
        result = CliRunner().invoke(_app(), ["explore", str(folder), "--rle", str(csv), "--out", str(tmp_path / "o")])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and str(folder) in lines[0]
    assert not (tmp_path / "o").exists()


# --- synthetic data: runs everywhere ---------------------------------------------------------


def _write_dicom(path: Path, pixels: np.ndarray, patient: str, sex: str, view: str, age: str) -> str:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.PatientID, ds.PatientSex, ds.ViewPosition, ds.PatientAge = patient, sex, view, age
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    ds.set_pixel_data(pixels, "MONOCHROME2", 8)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def _synthetic(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Four 40x48 DICOMs in nested folders (2 positive, 1 negative, 1 without CSV row), an orphan
    CSV row and a broken .dcm file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "dicoms"
    masks: dict[str, np.ndarray] = {}
    rows = ["ImageId, EncodedPixels"]
    specs = [("p1", "M", "PA", "030Y", 2), ("p2", "F", "AP", "061Y", 1), ("p3", "F", "PA", "", 0),
             ("p4", "M", "AP", "045Y", None)]
    for i, (patient, sex, view, age, n_regions) in enumerate(specs):
        folder = root / f"study{i}" / "series"
        folder.mkdir(parents=True)
        pixels = rng.integers(0, 256, (40, 48), dtype=np.uint8)
        image_id = _write_dicom(folder / f"{i}.dcm", pixels, patient, sex, view, age)
        union = np.zeros((40, 48), dtype=bool)
        for r in range(n_regions or 0):
            region = np.zeros_like(union)
            region[5 + 15 * r: 12 + 15 * r, 10:30 - 5 * r] = True
            union |= region
            rows.append(f"{image_id}, {rle_encode(region)}")
        if n_regions == 0:
            rows.append(f"{image_id}, -1")
        masks[image_id] = union
    rows.append("1.2.3.orphan, -1")
    (root / "broken.dcm").write_bytes(b"not a dicom at all")
    csv = tmp_path / "train-rle.csv"
    csv.write_text("\n".join(rows) + "\n")
    return root, csv, masks


def test_explore_synthetic_counts_warnings_and_areas(tmp_path: Path) -> None:
    root, csv, masks = _synthetic(tmp_path)
    out = tmp_path / "out"
    summary = explore(root, csv, out, n_samples=3, progress=False)
    assert (summary["n_images"], summary["n_positive"], summary["n_negative"]) == (4, 2, 2)
    assert summary["n_without_annotation_row"] == 1 and summary["n_annotation_ids_without_image"] == 1
    assert summary["regions_per_positive"] == {"1": 1, "2": 1}
    assert summary["age"]["missing"] == 1 and summary["age"]["max"] == 61
    assert summary["sex"] == {"F": 2, "M": 2} and summary["view_position"] == {"AP": 2, "PA": 2}
    warnings = " | ".join(summary["warnings"])
    assert "1 image(s) have no row" in warnings and "counted as no pneumothorax" in warnings
    assert "1 ImageId(s) in the annotation CSV have no DICOM" in warnings
    assert "1 file(s) could not be used" in warnings and "broken.dcm" not in warnings  # named once: in failures
    assert len(summary["failures"]) == 1 and "broken.dcm" in summary["failures"][0]
    meta = pd.read_csv(out / "metadata.csv", keep_default_na=False).set_index("image_id")
    for image_id, mask in masks.items():
        assert meta.loc[image_id, "mask_area_px"] == mask.sum()
    assert meta["file"].str.startswith("study").all()
    assert json.loads((out / "summary.json").read_text()) == summary
    _assert_png(out / "samples.png")
    _assert_png(out / "distributions.png")


def test_explore_without_samples_and_all_unreadable(tmp_path: Path) -> None:
    root, csv, _ = _synthetic(tmp_path)
    summary = explore(root, csv, tmp_path / "out", n_samples=0, progress=False)
    assert "samples" not in summary["files"] and not (tmp_path / "out" / "samples.png").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.dcm").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"none of the 1 \.dcm files could be used"):
        explore(bad, csv, tmp_path / "out2", progress=False)


# --- bad items: listed, left out of every statistic, exit 2 (as prepare) ------------------------


def _bad_items(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """The synthetic set plus a file without pixel data, one with an invalid UID and one whose RLE
    row does not decode."""
    root, csv, masks = _synthetic(tmp_path)
    rng = np.random.default_rng(1)
    nopix = root / "nopix.dcm"
    uid = _write_dicom(nopix, rng.integers(0, 256, (40, 48), dtype=np.uint8), "p9", "M", "PA", "050Y")
    ds = pydicom.dcmread(nopix)
    del ds.PixelData
    ds.save_as(nopix)
    evil = root / "evil.dcm"
    evil_uid = _write_dicom(evil, rng.integers(0, 256, (40, 48), dtype=np.uint8), "p8", "F", "AP", "020Y")
    ds = pydicom.dcmread(evil)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID: that is the point
        ds.SOPInstanceUID = "../../../tmp/owned"
        ds.save_as(evil)
    badrle = _write_dicom(root / "badrle.dcm", rng.integers(0, 256, (40, 48), dtype=np.uint8), "p7", "F",
                          "PA", "030Y")
    lines = csv.read_text() + f"{uid}, -1\n{evil_uid}, -1\n{badrle}, 3 abc\n"
    csv.write_text(lines)
    return root, csv, masks


def test_bad_items_are_listed_left_out_and_the_others_summarised(tmp_path: Path) -> None:
    root, csv, masks = _bad_items(tmp_path)
    out = tmp_path / "out"
    summary = explore(root, csv, out, n_samples=4, progress=False)
    # The same four usable images as the clean synthetic set: nothing bad is counted.
    assert (summary["n_images"], summary["n_positive"], summary["n_negative"]) == (4, 2, 2)
    # The orphan, and the row of the UID evil.dcm no longer carries; not the rows of the bad files.
    assert summary["n_annotation_ids_without_image"] == 2
    failures = summary["failures"]
    assert len(failures) == 4 and summary["n_failed"] == 4
    for name, what in (("nopix.dcm", "no pixel data"), ("evil.dcm", "not a valid DICOM UID"),
                       ("badrle.dcm", "abc"), ("broken.dcm", "not a DICOM")):
        [line] = [f for f in failures if name in f or (name == "badrle.dcm" and "abc" in f)]
        assert what in line and "\n" not in line, line
    meta = pd.read_csv(out / "metadata.csv", keep_default_na=False).set_index("image_id")
    assert sorted(meta.index) == sorted(masks)
    assert json.loads((out / "summary.json").read_text())["failures"] == failures


def test_cli_exits_2_after_writing_when_items_are_bad(tmp_path: Path) -> None:
    root, csv, _ = _bad_items(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(_app(), ["explore", str(root), "--rle", str(csv), "--out", str(out),
                                         "--no-progress", "--samples", "2"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "failed:" in text and "nopix.dcm" in text and "4 file(s) could not be used" in text
    assert (out / "summary.json").is_file() and (out / "metadata.csv").is_file()


def test_output_folder_checked_before_any_work(tmp_path: Path) -> None:
    root, csv, _ = _synthetic(tmp_path)
    (tmp_path / "afile").write_text("x")
    for out, what in ((root, "overlaps the input"), (root / "sub", "overlaps the input"),
                      (tmp_path / "afile" / "out", "afile")):
        result = CliRunner().invoke(_app(), ["explore", str(root), "--rle", str(csv), "--out", str(out),
                                             "--no-progress"])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and what in lines[0], result.output
    assert not (root / "sub").exists() and not list(root.rglob("*.png"))


def test_unlabelled_folder_full_header_and_by_label(tmp_path: Path) -> None:
    root, csv, _ = _synthetic(tmp_path)
    out = tmp_path / "unlabelled"
    result = CliRunner().invoke(_app(), ["explore", str(root), "--out", str(out), "--no-progress", "--samples", "2",
                                         "--full-header"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output  # _synthetic holds one broken .dcm: listed, the rest explored
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labelled"] is False and summary["rle_csv"] is None and summary["n_positive"] is None
    assert "unlabelled" in result.output and "healthy" not in result.output
    assert "no pneumothorax" not in result.output and "no pneumothorax" not in json.dumps(summary)
    first = pydicom.dcmread(root / summary["first_file"], stop_before_pixels=True)
    for element in first:  # the whole header, as pydicom prints it (the seed's print(dataset))
        assert element.keyword in result.output or element.name in result.output
    labelled = explore(root, csv, tmp_path / "labelled", n_samples=0, progress=False)
    by = labelled["by_label"]
    assert by["pneumothorax"]["images"] == labelled["n_positive"]
    assert by["no pneumothorax"]["images"] == labelled["n_negative"]
    meta = pd.read_csv(tmp_path / "labelled" / "metadata.csv", keep_default_na=False)
    pos = meta[meta["has_pneumothorax"] == 1]
    assert by["pneumothorax"]["sex"] == pos["patient_sex"].replace("", "unknown").value_counts().to_dict()


def test_area_ticks_are_plain_numbers() -> None:
    from pneumoseg.data.explore.figures import _area_tick

    assert [_area_tick(v) for v in (50, 200, 1000, 20000, 1.5e6)] == ["50", "200", "1k", "20k", "1.5M"]


# --- areas in mm² (pixel spacing: dicom.pixel_spacing_mm) -----------------------------------------------


def test_synthetic_dicoms_get_areas_in_mm2(tmp_path: Path) -> None:
    synth = generate_dataset(tmp_path / "synth", n=6, size=64, progress=False)
    out = tmp_path / "out"
    summary = explore(synth.out_dir / "dicom", synth.csv_path, out, n_samples=0, progress=False)
    assert summary["n_positive"] == synth.n_positive == 2 and summary["mask_area_unit"] == "mm2"
    meta = pd.read_csv(out / "metadata.csv")
    assert (meta["pixel_spacing_source"] == "PixelSpacing").all()
    for _, row in meta.iterrows():
        row_mm, col_mm = (float(v) for v in pydicom.dcmread(synth.out_dir / "dicom" / row["file"]).PixelSpacing)
        assert row["mask_area_mm2"] == pytest.approx(row["mask_area_px"] * row_mm * col_mm, abs=1e-6)
    pos = meta.loc[meta["has_pneumothorax"] == 1, "mask_area_mm2"]
    assert summary["mask_area_mm2"]["min"] == pytest.approx(pos.min()) and pos.min() > 0
    assert not [w for w in summary["warnings"] if "pixel spacing" in w]
    _assert_png(out / "distributions.png")


def test_areas_stay_in_px_while_a_positive_lacks_spacing(tmp_path: Path) -> None:
    root, csv, masks = _synthetic(tmp_path)  # written without any pixel spacing
    none = explore(root, csv, tmp_path / "none", n_samples=0, progress=False)
    assert none["mask_area_unit"] == "px" and none["mask_area_mm2"] is None
    assert none["n_positive_without_spacing"] == 2 and none["pixel_spacing_source"] == {"none": 4}
    assert any("2 of 2 positive image(s) have no pixel spacing" in w for w in none["warnings"])
    # One positive gets ImagerPixelSpacing / magnification: its row has mm², the summary stays in px.
    positive = next(i for i, m in masks.items() if m.any())
    [path] = [p for p in root.rglob("*.dcm") if p.name != "broken.dcm" and
              pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == positive]
    ds = pydicom.dcmread(path)
    ds.ImagerPixelSpacing, ds.EstimatedRadiographicMagnificationFactor = [0.2, 0.25], 1.25
    ds.save_as(path)
    some = explore(root, csv, tmp_path / "some", n_samples=2, progress=False)
    assert some["mask_area_unit"] == "px" and some["n_positive_without_spacing"] == 1
    assert any("1 of 2 positive image(s) have no pixel spacing" in w for w in some["warnings"])
    meta = pd.read_csv(tmp_path / "some" / "metadata.csv", keep_default_na=False).set_index("image_id")
    row = meta.loc[positive]
    assert row["pixel_spacing_source"] == "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
    assert float(row["pixel_spacing_mm"]) == pytest.approx(math.sqrt(0.16 * 0.2))
    assert float(row["mask_area_mm2"]) == pytest.approx(masks[positive].sum() * 0.16 * 0.2)
    assert (meta.drop(index=positive)["mask_area_mm2"] == "").all()  # no spacing: empty, not 0


# --- the PNG layout (prepare --png-dir) ---------------------------------------------------------------


def _png_set(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """images/: two positives (one with 2 regions), an all-black mask, one without mask, a corrupt file,
    a mask of the wrong size and an unsafe name; masks/: one orphan."""
    rng = np.random.default_rng(3)
    root = tmp_path / "pngs"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truth: dict[str, np.ndarray] = {}
    for name, shape, blocks in (("a", (40, 48), [(2, 10, 3, 12), (20, 30, 20, 40)]), ("b", (32, 32), [(5, 9, 5, 25)]),
                                ("c", (40, 48), []), ("d", (36, 36), None), ("e", (40, 40), [(1, 4, 1, 4)])):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / "images" / f"{name}.png")
        if blocks is None:  # no mask file at all
            truth[name] = np.zeros(shape, dtype=bool)
            continue
        mask = np.zeros(shape if name != "e" else (20, 20), dtype=bool)
        for r0, r1, c0, c1 in blocks:
            mask[r0:r1, c0:c1] = True
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
        truth[name] = mask
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "images" / "-bad.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "masks" / "orphan.png")
    del truth["e"]  # wrong-size mask: a failure
    return root, truth


def test_png_set_statistics_failures_and_outputs(tmp_path: Path) -> None:
    from scipy import ndimage

    root, truth = _png_set(tmp_path)
    out = tmp_path / "out"
    summary = explore_png(root, out, n_samples=4, progress=False)
    assert summary["layout"] == "png" and summary["dicom_metadata"] is False and summary["labelled"] is True
    assert (summary["n_images"], summary["n_positive"], summary["n_negative"]) == (4, 2, 2)
    assert summary["n_without_mask"] == 1 and summary["n_masks_without_image"] == 1
    assert summary["mask_area_unit"] == "px" and summary["mask_area_mm2"] is None
    assert summary["image_size"] == {"40x48": 2, "32x32": 1, "36x36": 1}
    failures = summary["failures"]
    assert summary["n_failed"] == len(failures) == 3
    for name, what in (("broken.png", "not a readable image"), ("-bad.png", "cannot name an output file"),
                       ("e.png", "20x20 but image")):
        [line] = [f for f in failures if name in f]
        assert what in line and "\n" not in line, line
    warnings = " | ".join(summary["warnings"])
    assert "no DICOM metadata" in warnings and "1 image(s) have no mask" in warnings
    assert "1 mask(s) in masks/ have no image" in warnings and "3 file(s) could not be used" in warnings
    meta = pd.read_csv(out / "metadata.csv", keep_default_na=False).set_index("image_id")
    assert list(meta.reset_index().columns) == PNG_COLUMNS and sorted(meta.index) == sorted(truth)
    eight = np.ones((3, 3), dtype=int)
    for name, mask in truth.items():  # independent reference: numpy counts, scipy's 8-connected labels
        assert meta.loc[name, "mask_area_px"] == mask.sum()
        assert meta.loc[name, "n_regions"] == ndimage.label(mask, structure=eight)[1]
        assert meta.loc[name, "has_pneumothorax"] == int(mask.any())
    assert meta.loc["d", "mask_file"] == "" and meta.loc["a", "mask_file"] == "masks/a.png"
    assert summary["regions_per_positive"] == {"1": 1, "2": 1}
    assert summary["mask_area_px"]["max"] == truth["a"].sum()
    assert json.loads((out / "summary.json").read_text()) == summary
    for name in ("samples.png", "distributions.png"):
        _assert_png(out / name)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_cli_png_set_exits_2_and_checks_its_options(tmp_path: Path) -> None:
    root, _ = _png_set(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(_app(), ["explore", "--png-dir", str(root), "--out", str(out), "--no-progress",
                                         "--samples", "2"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "no DICOM header or metadata" in text and "failed:" in text and "broken.png" in text
    assert "3 file(s) could not be used" in text and (out / "summary.json").is_file()
    assert "Patient id" not in text
    csv = tmp_path / "rle.csv"
    csv.write_text("ImageId, EncodedPixels\nx, -1\n")
    for args, what in ((["--png-dir", str(root), "--rle", str(csv)], "--rle goes with DICOM_DIR"),
                       ([str(root), "--png-dir", str(root)], "exactly one"), ([], "exactly one"),
                       ([str(root)], f"use --png-dir {root}"),
                       (["--png-dir", str(root), "--full-header"], "--full-header"),
                       (["--png-dir", str(tmp_path / "nothing")], "PNG folder not found")):
        result = CliRunner().invoke(_app(), ["explore", *args, "--out", str(tmp_path / "o2"), "--no-progress"],
                                    env={"COLUMNS": "300"})
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and what in lines[0], result.output
    assert not (tmp_path / "o2").exists()


def test_png_set_all_unreadable_and_unlabelled(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "images" / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"none of the images could be used; first: .*x\.png"):
        explore_png(bad, tmp_path / "out", progress=False)
    Image.fromarray(np.full((16, 20), 7, dtype=np.uint8)).save(bad / "images" / "y.jpg")
    summary = explore_png(bad, tmp_path / "out", n_samples=0, progress=False)  # no masks/: unlabelled
    assert summary["labelled"] is False and summary["n_images"] == 1 and summary["n_positive"] is None
    assert any("unlabelled" in w for w in summary["warnings"]) and summary["image_size"] == {"16x20": 1}


def test_real_png_set(tmp_path: Path) -> None:
    png = SIIM / "png"
    if not (png / "images").is_dir():
        pytest.skip(f"real SIIM PNG set not found at {png} (only present on the dev machines)")
    out = tmp_path / "out"
    summary = explore_png(png, out, n_samples=4, progress=False)
    assert (summary["n_images"], summary["n_positive"], summary["n_negative"]) == (30, 30, 0)
    assert summary["failures"] == [] and summary["image_size"] == {"1024x1024": 30}
    meta = pd.read_csv(out / "metadata.csv").set_index("image_id")
    for name in list(meta.index)[:5]:  # independent reference: Pillow, 0/255 masks
        with Image.open(png / "masks" / f"{name}.png") as mask:
            assert meta.loc[name, "mask_area_px"] == int((np.asarray(mask.convert("L")) > 127).sum())
    assert summary["mask_area_px"]["count"] == 30 and summary["mask_area_px"]["min"] > 1000


# --- unlabelled is not negative (issue 21, item 6) ------------------------------------------------------


def _figure_texts(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Every text (titles, tick labels, legends) of each figure explore saves, by file name."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    texts: dict[str, list[str]] = {}
    save = Figure.savefig

    def recording(fig: Figure, path: object, *args: object, **kwargs: object) -> None:
        name = Path(str(path)).name  # atomic_path's tmp name holds the target's stem
        texts[name] = [t.get_text() for t in fig.findobj(Text) if t.get_text()] + [f"axes={len(fig.axes)}"]
        save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return texts


def test_unlabelled_sets_say_unlabelled_and_count_no_negatives(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    synth = generate_dataset(tmp_path / "synth", n=6, size=64, progress=False)
    texts = _figure_texts(monkeypatch)
    out = tmp_path / "dicom_out"
    result = CliRunner().invoke(_app(), ["explore", str(synth.out_dir / "dicom"), "--out", str(out), "--no-progress",
                                         "--samples", "4"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labelled"] is False and summary["n_images"] == 6
    assert summary["n_positive"] is None and summary["n_negative"] is None and summary["by_label"] == {}
    assert summary["by_view_position"] == {v: {"images": n} for v, n in summary["view_position"].items()}
    assert "pneumothorax" not in json.dumps(summary) and "pneumothorax" not in result.output
    assert "unlabelled (no --rle)" in result.output
    meta = pd.read_csv(out / "metadata.csv", keep_default_na=False)
    assert (meta["has_pneumothorax"] == "").all() and (meta["mask_area_px"] == "").all()
    dist = next(t for k, t in texts.items() if "distributions" in k)
    assert "6 images, unlabelled (no annotation CSV)" in dist and "axes=4" in dist
    samples = next(t for k, t in texts.items() if "samples" in k)
    assert "Samples (unlabelled)" in samples
    for figure in texts.values():
        assert not any("pneumothorax" in t or "positive" in t for t in figure), figure
    # The PNG layout without masks/: image sizes only.
    png = tmp_path / "png"
    (png / "images").mkdir(parents=True)
    for k in range(3):
        Image.fromarray(np.full((16, 20), 50 * k, dtype=np.uint8)).save(png / "images" / f"p{k}.png")
    texts.clear()
    result = CliRunner().invoke(_app(), ["explore", "--png-dir", str(png), "--out", str(tmp_path / "png_out"),
                                         "--no-progress"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "png_out" / "summary.json").read_text())
    assert summary["n_positive"] is None and summary["n_without_mask"] is None and summary["image_size"] == {"16x20": 3}
    assert "pneumothorax" not in json.dumps(summary) and "pneumothorax" not in result.output
    assert "unlabelled (no masks/ folder)" in result.output
    dist = next(t for k, t in texts.items() if "distributions" in k)
    assert "3 images, unlabelled (no masks/ folder)" in dist and "axes=1" in dist
    for figure in texts.values():
        assert not any("pneumothorax" in t or "positive" in t for t in figure), figure
