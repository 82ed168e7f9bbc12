"""`pneumoseg score`: hand-made CSVs with hand-worked Dice, both RLE flavours, missing/extra ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pneumoseg.cli.main import app
from pneumoseg.errors import DataError, RLEError
from pneumoseg.scoring.metrics import dice_per_image
from pneumoseg.io.rle import read_annotations, rle_decode, rle_encode, rle_encode_absolute
from pneumoseg.scoring.submission import score_submission
from tests.shared_data import SIIM, require_siim

# 4x4 images, pixels numbered column-major from 0: pixel p is (row p % 4, column p // 4).
# Truth in the challenge's relative form, with the file's quirks (BOM, " EncodedPixels", " -1").
TRUTH = ("\ufeffImageId, EncodedPixels\r\n"
         "img1,0 2\r\n"        # pixels 0, 1
         "img1,8 2\r\n"        # second region of img1: pixels 8, 9 -> union {0, 1, 8, 9}
         "img2, -1\r\n"
         "img3,5 3\r\n"        # pixels 5, 6, 7
         "img4, -1\r\n")
# Submission in standard Kaggle form (1-based absolute starts). img1's string does not decode
# as relative RLE (its third run would end past pixel 16), so "auto" must find "absolute".
SUBMISSION = ("ImageId,EncodedPixels\n"
              "img1,1 2 9 2 14 2\n"   # pixels 0,1, 8,9, 13,14: 4 of 6 hit the 4 true -> Dice 8/10
              "img2,2 3\n"            # pixels 1,2,3 on an empty truth -> Dice 0
              "img4,-1\n"             # empty on empty -> 1
              "img5,1 1\n")           # not in the truth: extra, ignored; img3 missing -> empty -> 0


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return _write(tmp_path, "submission.csv", SUBMISSION), _write(tmp_path, "truth.csv", TRUTH)


def test_hand_worked_scores(files: tuple[Path, Path]) -> None:
    sub, truth = files
    res = score_submission(sub, truth, height=4, width=4, n_boot=200)
    assert (res.submission_format, res.truth_format) == ("absolute", "relative")
    df = res.per_image.set_index("image_id")
    assert list(df.index) == ["img1", "img2", "img3", "img4"]
    assert df["dice"].tolist() == pytest.approx([0.8, 0.0, 0.0, 1.0])
    assert df["truth_area_px"].tolist() == [4, 0, 3, 0]
    assert df["pred_area_px"].tolist() == [6, 3, 0, 0]
    assert df["intersection_px"].tolist() == [4, 0, 0, 0]
    assert df["status"].tolist() == ["scored", "scored", "missing", "scored"]
    assert res.missing == ["img3"] and res.extra == ["img5"]
    m = res.metrics
    assert m["dice_kaggle"] == pytest.approx(0.45) and m["dice_positive"] == pytest.approx(0.4)
    assert (m["sensitivity"], m["specificity"], m["fpr_empty"]) == (0.5, 0.5, 0.5)
    assert m["predict_nothing"] == 0.5
    assert (m["n_images"], m["n_positive"], m["n_missing"], m["n_extra"]) == (4, 2, 1, 1)
    ci = res.dice_kaggle  # 4 images: no interval, and the reason instead of a degenerate one
    assert ci.value == pytest.approx(0.45) and np.isnan(ci.low) and np.isnan(ci.high)
    assert ci.note.startswith("n too small") and "n too small" in str(ci)


def test_explicit_format_that_does_not_fit_names_the_row(files: tuple[Path, Path]) -> None:
    sub, truth = files
    with pytest.raises(RLEError, match=r"submission\.csv row 2 ImageId img1: .*past the image end"):
        score_submission(sub, truth, rle_format="relative", height=4, width=4, n_boot=10)


def test_strict_refuses_missing_ids_like_kaggle(files: tuple[Path, Path]) -> None:
    sub, truth = files
    with pytest.raises(DataError, match=r"1 ImageIds .* have no row \(first: img3\)"):
        score_submission(sub, truth, height=4, width=4, strict=True)


def test_auto_detects_each_file_flavour(tmp_path: Path) -> None:
    # 8x8. Truth: a's relative "3 2 1 2" (pixels 3,4 then 6,7) has a start before the previous
    # run's end if read as absolute -> relative. Submission: b's absolute "4 2 61 2" (pixels
    # 3,4 and 60,61) would run past pixel 64 if read as relative -> absolute.
    truth = _write(tmp_path, "t.csv", "ImageId,EncodedPixels\na,3 2 1 2\nb,3 2 55 2\n")
    sub = _write(tmp_path, "s.csv", "ImageId,EncodedPixels\na,4 2 7 2\nb,4 2 61 2\n")
    res = score_submission(sub, truth, height=8, width=8, n_boot=10)
    assert (res.submission_format, res.truth_format) == ("absolute", "relative")
    assert res.metrics["dice_kaggle"] == 1.0
    assert any("s.csv: read as absolute RLE (row 3 ImageId b is not valid relative RLE)" in n for n in res.notes)
    assert any("t.csv: read as relative RLE (row 2 ImageId a is not valid absolute RLE)" in n for n in res.notes)


def test_auto_choice_that_fails_later_says_why(tmp_path: Path) -> None:
    # Row 2 is absolute only; row 3 decodes in neither flavour at 8x8.
    sub = _write(tmp_path, "s.csv", "ImageId,EncodedPixels\na,4 2 61 2\nb,60 10\n")
    truth = _write(tmp_path, "t.csv", "ImageId,EncodedPixels\na,-1\nb,-1\n")
    with pytest.raises(RLEError, match=r"s\.csv row 3 ImageId b: .*; .*read as absolute RLE \(row 2 ImageId a"):
        score_submission(sub, truth, height=8, width=8)


def test_ambiguous_file_is_read_as_relative_with_a_note(tmp_path: Path) -> None:
    one_run = _write(tmp_path, "t.csv", "ImageId,EncodedPixels\na,2 3\n")
    res = score_submission(one_run, one_run, height=4, width=4, n_boot=10)
    assert res.submission_format == "relative" and res.metrics["dice_kaggle"] == 1.0
    assert any("decodes as relative and as absolute" in n for n in res.notes)


def test_file_in_neither_flavour_is_refused(tmp_path: Path) -> None:
    bad = _write(tmp_path, "bad.csv", "ImageId,EncodedPixels\na,5 2 13 30\n")
    truth = _write(tmp_path, "t.csv", "ImageId,EncodedPixels\na,-1\n")
    with pytest.raises(RLEError, match=r"decodes neither as relative RLE .* nor as absolute"):
        score_submission(bad, truth, height=4, width=4)


def test_random_masks_in_both_flavours_against_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    h, w, n = 16, 12, 30
    truth = rng.random((n, h, w)) < 0.2
    truth[rng.random(n) < 0.5] = False
    pred = truth ^ (rng.random((n, h, w)) < 0.05)
    pred[rng.random(n) < 0.2] = False
    ids = [f"1.2.{k}" for k in range(n)]
    # truth: relative, one row per image; submission: absolute, each mask split over two rows
    t_lines = ["ImageId,EncodedPixels"] + [f"{i},{rle_encode(m)}" for i, m in zip(ids, truth, strict=True)]
    s_lines = ["ImageId,EncodedPixels"]
    for i, m in zip(ids, pred, strict=True):
        top, bottom = m.copy(), m.copy()
        top[h // 2:], bottom[:h // 2] = False, False
        s_lines += [f"{i},{rle_encode_absolute(top)}", f"{i},{rle_encode_absolute(bottom)}"]
    t_path = _write(tmp_path, "t.csv", "\n".join(t_lines) + "\n")
    s_path = _write(tmp_path, "s.csv", "\n".join(s_lines) + "\n")
    res = score_submission(s_path, t_path, "absolute", "relative", height=h, width=w, n_boot=50)
    assert res.per_image["dice"].to_numpy() == pytest.approx(dice_per_image(pred, truth), abs=1e-6)
    assert res.metrics["dice_kaggle"] == pytest.approx(dice_per_image(pred, truth).mean())


def test_cli_prints_scores_and_writes_the_table(files: tuple[Path, Path], tmp_path: Path) -> None:
    sub, truth = files
    out = tmp_path / "out" / "per_image.csv"
    result = CliRunner().invoke(app, ["score", str(sub), "--truth", str(truth), "--height", "4", "--width", "4",
                                      "--n-boot", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "dice_kaggle" in result.output and "0.4500" in result.output
    assert "missing (1, scored empty): img3" in result.output
    assert "extra (1, ignored): img5" in result.output
    table = pd.read_csv(out)
    assert list(table["image_id"]) == ["img1", "img2", "img3", "img4"]
    assert table["dice"].tolist() == pytest.approx([0.8, 0.0, 0.0, 1.0])


def test_cli_errors_are_one_line(files: tuple[Path, Path], tmp_path: Path) -> None:
    sub, truth = files
    result = CliRunner().invoke(app, ["score", str(sub), "--truth", str(truth), "--rle-format", "rowmajor"])
    assert result.exit_code == 2
    assert "RLE format 'rowmajor' is not valid; choose one of auto, relative, absolute" in result.output
    result = CliRunner().invoke(app, ["score", str(sub), "--truth", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2 and "annotation file not found" in result.output
    assert len(result.output.strip().splitlines()) == 1


@require_siim
def test_real_challenge_files(tmp_path: Path) -> None:
    """The challenge's own sample file (no header, BOM, CRLF) against the sample's train-rle.csv."""
    sample, truth = SIIM / "dicom" / "train-rle-sample.csv", SIIM / "dicom" / "train-rle.csv"
    res = score_submission(sample, truth, n_boot=200)
    assert (res.submission_format, res.truth_format) == ("relative", "relative")
    assert res.metrics["n_images"] == 12 and len(res.missing) == 2 and not res.extra
    scored = res.per_image[res.per_image["status"] == "scored"]
    assert (scored["dice"] == 1.0).all()
    assert (res.per_image.loc[res.per_image["status"] == "missing", "dice"] == 0.0).all()
    # The truth re-encoded as standard Kaggle RLE, one row per annotation: auto finds absolute
    # and every image (the 4-annotation one included) scores 1.
    ann = read_annotations(truth)
    lines = ["ImageId,EncodedPixels"]
    for image_id, rles in ann.items():
        lines += [f"{image_id},{rle_encode_absolute(rle_decode(r, 1024, 1024), empty='')}" for r in rles]
    absolute = _write(tmp_path, "absolute.csv", "\n".join(lines) + "\n")
    res = score_submission(absolute, truth, n_boot=50)
    assert res.submission_format == "absolute" and res.metrics["dice_kaggle"] == 1.0
    assert max(len(v) for v in ann.values()) == 4
