"""RLE codec tests against the real challenge annotations and an independent loop decoder."""

from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pneumoseg.errors import RLEError
from pneumoseg.io.rle import (
    Annotations,
    read_annotations,
    rle_decode,
    rle_decode_absolute,
    rle_encode,
    rle_encode_absolute,
)
from tests.shared_data import SIIM, require_siim


def reference_decode(rle: str, height: int, width: int) -> np.ndarray:
    """The challenge's own loop decoder (mask_functions.rle2mask), written independently."""
    flat = np.zeros(width * height, dtype=np.uint8)
    if rle.strip() != "-1":
        values = [int(v) for v in rle.split()]
        pos = 0
        for start, length in zip(values[0::2], values[1::2], strict=True):
            pos += start
            flat[pos : pos + length] = 1
            pos += length
    return flat.reshape(width, height).T.astype(bool)


def test_decode_small_hand_case() -> None:
    # 3x3, column-major numbering 0..8; runs: pixels 1-2 (col 0 rows 1-2), then 1 gap, pixels 4-4.
    mask = rle_decode("1 2 1 1", 3, 3)
    expected = np.zeros((3, 3), bool)
    expected[1, 0] = expected[2, 0] = True
    expected[1, 1] = True
    np.testing.assert_array_equal(mask, expected)
    assert rle_encode(expected) == "1 2 1 1"


@pytest.mark.parametrize("empty", ["-1", " -1", "-1 ", " -1 "])
def test_minus_one_is_empty(empty: str) -> None:
    assert not rle_decode(empty, 8, 6).any()
    assert rle_decode(empty, 8, 6).shape == (8, 6)


def test_encode_empty_gives_minus_one() -> None:
    assert rle_encode(np.zeros((5, 7), bool)) == "-1"


def test_non_square_orientation() -> None:
    mask = np.zeros((4, 6), bool)
    mask[0, 5] = True  # last column, first row: column-major index 5 * 4 = 20
    assert rle_encode(mask) == "20 1"
    np.testing.assert_array_equal(rle_decode("20 1", 4, 6), mask)
    assert rle_encode_absolute(mask) == "21 1"
    assert rle_encode_absolute(mask, order="C") == "6 1"


@settings(max_examples=200, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_roundtrip_random_masks(mask: np.ndarray) -> None:
    h, w = mask.shape
    np.testing.assert_array_equal(rle_decode(rle_encode(mask), h, w), mask)
    np.testing.assert_array_equal(reference_decode(rle_encode(mask), h, w), mask)
    for order in ("F", "C"):
        np.testing.assert_array_equal(rle_decode_absolute(rle_encode_absolute(mask, order=order), h, w,
                                                          order=order), mask)


@pytest.mark.parametrize("case", ["empty", "full", "corners"])
def test_roundtrip_edge_masks(case: str) -> None:
    h, w = 16, 9
    mask = np.zeros((h, w), bool) if case != "full" else np.ones((h, w), bool)
    if case == "corners":
        mask[0, 0] = mask[0, -1] = mask[-1, 0] = mask[-1, -1] = True
    for m in (mask, ~mask):
        np.testing.assert_array_equal(rle_decode(rle_encode(m), h, w), m)
        np.testing.assert_array_equal(rle_decode_absolute(rle_encode_absolute(m), h, w), m)
    if case == "full":
        assert rle_encode(mask) == f"0 {h * w}"
        assert rle_encode_absolute(mask) == f"1 {h * w}"


def test_encode_accepts_uint8_0_255() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 3] = 255
    np.testing.assert_array_equal(rle_decode(rle_encode(mask), 10, 10), mask > 0)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number of tokens"),
        ("1 x", "non-integer token 'x'"),
        ("1 2.5", "non-integer token"),
        ("1 0", "length 0"),
        ("1 -3", "length -3"),
        ("-2 3", "negative start -2"),
        ("5 3 0 100", "past the image end"),
        ("100 1", "past the image end"),
        # Numbers beyond int64 and sums that would wrap around: a named error, not StopIteration.
        ("1 " + "9" * 25, "run 0 length '9{20}\\.\\.\\.' is past the image end"),
        ("99999999999999999999 1", "run 0 start '99999999999999999999' is past the image end"),
        ("0 4611686018427387904 0 4611686018427387904", "run 0 length '4611686018427387904' is past"),
        ("0 1 " * 101, "101 runs cannot fit in 100 pixels"),
        ("1 ٣", "non-integer token '٣'"),
        ("1 +3", "non-integer token '\\+3'"),
    ],
)
def test_malformed_raises(rle: str, message: str) -> None:
    with pytest.raises(RLEError, match=message):
        rle_decode(rle, 10, 10, where="img row 3: ")
    with pytest.raises(RLEError, match="img row 3"):
        rle_decode(rle, 10, 10, where="img row 3: ")


@pytest.mark.parametrize(("rle", "message"), [("0 3", "1-based"), ("5 3 6 2", "inside or before"),
                                              ("95 10", "past the image end"), ("1 2 3", "odd")])
def test_malformed_absolute_raises(rle: str, message: str) -> None:
    with pytest.raises(RLEError, match=message):
        rle_decode_absolute(rle, 10, 10)


def test_read_annotations_error_names_file_row_and_image(tmp_path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("ImageId, EncodedPixels\nimg_a, -1\nimg_b, 3 4 5\n")
    ann = read_annotations(path)
    assert ann["img_a"] == ["-1"] and not ann.mask("img_a", 4, 4).any()
    with pytest.raises(RLEError, match=r"bad\.csv row 3 ImageId img_b: odd number of tokens"):
        ann.mask("img_b", 4, 4)


def test_read_annotations_header_with_extra_columns(tmp_path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("Set,EncodedPixels,ImageId\ntrain,0 2,a\ntrain,-1,b\n")
    ann = read_annotations(path)
    assert ann == {"a": ["0 2"], "b": ["-1"]}
    assert ann.is_positive("a") and not ann.is_positive("b")


def test_read_annotations_missing_file(tmp_path) -> None:
    with pytest.raises(RLEError, match="not found"):
        read_annotations(tmp_path / "nope.csv")


# --- real challenge annotations ------------------------------------------------------------

@require_siim
def test_sample_file_quirks_match_train_rle() -> None:
    sample = read_annotations(SIIM / "dicom" / "train-rle-sample.csv")
    raw = (SIIM / "dicom" / "train-rle-sample.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw  # the quirks are really there
    full = read_annotations(SIIM / "dicom" / "train-rle.csv")
    assert len(sample) == 10
    for image_id in sample:
        assert image_id in full, image_id
        np.testing.assert_array_equal(sample.mask(image_id), full.mask(image_id))


@require_siim
def test_multi_row_image_is_union() -> None:
    ann = read_annotations(SIIM / "dicom" / "train-rle.csv")
    (image_id,) = [i for i in ann if ".307." in i]
    assert ann.n_annotations(image_id) == 4
    parts = [rle_decode(r) for r in ann[image_id]]
    np.testing.assert_array_equal(ann.mask(image_id), np.logical_or.reduce(parts))
    assert sum(p.sum() for p in parts) >= ann.mask(image_id).sum() > max(p.sum() for p in parts)
    assert sum(ann.is_positive(i) for i in ann) == 7 and len(ann) == 12


@require_siim
def test_every_stage2_row_decodes_and_reencodes() -> None:
    path = SIIM / "labels" / "stage2-train-rle.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8-sig", newline="") as fh:
        rows = [r[1].strip() for r in list(csv.reader(fh))[1:]]
    assert len(rows) == 12954
    n_pos = 0
    for i, rle in enumerate(rows):
        mask = rle_decode(rle)
        assert rle_encode(mask) == rle, f"row {i + 2}"
        if rle != "-1":
            n_pos += 1
            assert mask.any()
            if i % 97 == 0:  # the loop reference is slow; check a spread-out subset against it
                np.testing.assert_array_equal(mask, reference_decode(rle, 1024, 1024))
            absolute = rle_encode_absolute(mask)
            if i % 13 == 0:
                np.testing.assert_array_equal(rle_decode_absolute(absolute), mask)
    ann = read_annotations(path)
    assert len(ann) == 12047
    assert sum(len(v) for v in ann.values()) == 12954
    assert sum(ann.is_positive(i) for i in ann) == 2669
    assert n_pos == sum(ann.n_annotations(i) for i in ann)


def test_one_overlong_row_is_one_bad_image(tmp_path) -> None:
    """Issue 20 item 8: one EncodedPixels longer than csv's field limit made the whole file unreadable."""
    path = tmp_path / "rle.csv"
    long_rle = " ".join(["1 1"] * 40_000)  # 160,000 characters: over the 131,072 limit
    path.write_text(f"ImageId,EncodedPixels\na,1 2\nlong,{long_rle}\nb,-1\nlong,5 5\n")
    ann = read_annotations(path)
    assert ann.mask("a", 4, 4).sum() == 2 and not ann.is_positive("b")
    with pytest.raises(RLEError, match=rf"^{path} row 3 ImageId long: EncodedPixels longer than the 131072 "):
        ann.mask("long", 1024, 1024)
    with pytest.raises(RLEError, match="row 3 ImageId long"):
        ann.n_annotations("long")


def test_rows_per_image_are_bounded(tmp_path) -> None:
    """Issue 20 item 8: 10**6 rows for one image were kept and decoded one full mask each (84 s)."""
    from pneumoseg.io.rle import MAX_ROWS_PER_IMAGE

    path = tmp_path / "rle.csv.gz"
    rows = "".join(f"bomb,{i + 1} 1\n" for i in range(100_000))
    with gzip.open(path, "wt") as fh:
        fh.write("ImageId,EncodedPixels\nok,1 1\n" + rows)
    ann = read_annotations(path)
    assert len(ann["bomb"]) == MAX_ROWS_PER_IMAGE + 1  # the rows kept, then the one bad row
    with pytest.raises(RLEError, match=rf"row {MAX_ROWS_PER_IMAGE + 3} ImageId bomb: more than {MAX_ROWS_PER_IMAGE} "):
        ann.mask("bomb", 1024, 1024)
    assert ann.mask("ok", 2, 2).sum() == 1
    again = Annotations(path)  # prepare re-adds an image's rows in its worker: the same outcome
    for rle, row in zip(ann["bomb"], ann.rows["bomb"], strict=True):
        again.add("bomb", rle, row)
    with pytest.raises(RLEError, match=f"more than {MAX_ROWS_PER_IMAGE}"):
        again.mask("bomb", 1024, 1024)
