"""Property-based tests of the RLE codecs and the annotation CSV reader.

Every property compares against pure-Python references written here (the challenge's
``rle2mask`` / ``mask2rle`` loops, with the validity rules spelled out one token at a time), so
a vectorised shortcut in ``pneumoseg.io.rle`` cannot agree with itself by construction.
"""

from __future__ import annotations

import gzip
import os
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pneumoseg.errors import RLEError
from pneumoseg.io.rle import (
    MAX_PIXELS,
    Annotations,
    read_annotations,
    rle_decode,
    rle_decode_absolute,
    rle_encode,
    rle_encode_absolute,
)

#: `make fuzz` sets PNEUMOSEG_FUZZ_SCALE to run every property many more times than CI does.
SCALE = int(os.environ.get("PNEUMOSEG_FUZZ_SCALE", "1"))
FAST = settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- references: plain Python, one token and one pixel at a time --------------------------------

def _tokens(rle: str) -> list[int] | None:
    """Integers of ``rle`` or None when empty ("-1"/""); ValueError for a non-integer token."""
    text = rle.strip()
    if text in ("", "-1"):
        return None
    tokens = text.split()
    for t in tokens:
        if not re.fullmatch(r"-?[0-9]+", t):
            raise ValueError(f"token {t!r}")
    if len(tokens) % 2:
        raise ValueError("odd")
    return [int(t) for t in tokens]


def _to_mask(flat: list[int], height: int, width: int, order: str) -> np.ndarray:
    if order == "F":  # pixel k is (row k % height, column k // height)
        return np.array(flat, dtype=bool).reshape(width, height).T
    return np.array(flat, dtype=bool).reshape(height, width)


def ref_decode(rle: str, height: int, width: int) -> np.ndarray:
    """The challenge's rle2mask, plus its implicit rules: starts >= 0, lengths >= 1, inside the image."""
    n = height * width
    flat = [0] * n
    values = _tokens(rle)
    if values is not None:
        pos = 0
        for rel, length in zip(values[0::2], values[1::2], strict=True):
            if rel < 0 or length < 1 or pos + rel + length > n:
                raise ValueError("run outside the image")
            pos += rel
            for k in range(pos, pos + length):
                flat[k] = 1
            pos += length
    return _to_mask(flat, height, width, "F")


def ref_decode_absolute(rle: str, height: int, width: int, order: str) -> np.ndarray:
    """Standard Kaggle RLE: 1-based absolute starts, sorted, not overlapping, inside the image."""
    n = height * width
    flat = [0] * n
    values = _tokens(rle)
    if values is not None:
        prev_end = 0
        for first, length in zip(values[0::2], values[1::2], strict=True):
            start = first - 1
            if first < 1 or length < 1 or start < prev_end or start + length > n:
                raise ValueError("bad run")
            for k in range(start, start + length):
                flat[k] = 1
            prev_end = start + length
    return _to_mask(flat, height, width, order)


def _pixel_runs(mask: np.ndarray, order: str) -> list[tuple[int, int]]:
    """(0-based start, length) of each run, walking the pixels one by one (the mask2rle loop)."""
    height, width = mask.shape
    cells = ([(r, c) for c in range(width) for r in range(height)] if order == "F"
             else [(r, c) for r in range(height) for c in range(width)])
    runs: list[tuple[int, int]] = []
    for k, (r, c) in enumerate(cells):
        if mask[r, c]:
            if runs and runs[-1][0] + runs[-1][1] == k:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((k, 1))
    return runs


def ref_encode(mask: np.ndarray) -> str:
    runs = _pixel_runs(mask, "F")
    out, prev_end = [], 0
    for start, length in runs:
        out += [start - prev_end, length]
        prev_end = start + length
    return " ".join(map(str, out)) if out else "-1"


def ref_encode_absolute(mask: np.ndarray, order: str) -> str:
    runs = _pixel_runs(mask, order)
    return " ".join(f"{s + 1} {n}" for s, n in runs) if runs else "-1"


# --- strategies ----------------------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


@st.composite
def masks_any_layout(draw: st.DrawFn) -> np.ndarray:
    """Small masks as bool or uint8 0/255, C-contiguous, F-contiguous or a strided view."""
    mask = draw(arrays(np.bool_, shapes))
    dtype = draw(st.sampled_from(["bool", "uint8"]))
    arr = mask.astype(np.uint8) * 255 if dtype == "uint8" else mask
    layout = draw(st.sampled_from(["C", "F", "view"]))
    if layout == "F":
        return np.asfortranarray(arr)
    if layout == "view":
        big = np.zeros((arr.shape[0] * 2, arr.shape[1] + 1), dtype=arr.dtype)
        big[::2, 1:] = arr
        return big[::2, 1:]
    return np.ascontiguousarray(arr)


@st.composite
def valid_relative(draw: st.DrawFn, shape: tuple[int, int] | None = None) -> tuple[str, int, int]:
    """A decodable relative RLE (zero gaps allowed, as the format allows) for a small image."""
    height, width = shape or draw(shapes)
    n = height * width
    pairs, pos = [], 0
    for _ in range(draw(st.integers(0, 8))):
        if pos >= n:
            break
        gap = draw(st.integers(0, n - pos - 1))
        length = draw(st.integers(1, n - pos - gap))
        pairs += [gap, length]
        pos += gap + length
    sep = draw(st.sampled_from([" ", "  ", "\t", " \n "]))
    return (sep.join(map(str, pairs)) if pairs else "-1"), height, width


token = st.one_of(
    st.integers(-3, 60).map(str),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["9223372036854775807", "9223372036854775808", "18446744073709551617", "-0", "007",
                     "1.5", "+3", "1_0", "0x10", "", "\u0663", "nan", "-", "1e3"]),
)
hostile = st.one_of(
    st.lists(token, max_size=10).flatmap(
        lambda ts: st.sampled_from([" ", "\t", "  ", "\u00a0", "\n"]).map(lambda sep: sep.join(ts))),
    st.text(max_size=30),
)


# --- codec properties ------------------------------------------------------------------------------

@FAST
@given(valid_relative())
def test_decode_matches_reference_on_valid_strings(case: tuple[str, int, int]) -> None:
    rle, height, width = case
    mask = rle_decode(rle, height, width)
    assert mask.shape == (height, width) and mask.dtype == bool
    np.testing.assert_array_equal(mask, ref_decode(rle, height, width))
    assert rle_encode(mask) == ref_encode(mask)  # zero-gap runs come back merged


@settings(max_examples=150 * SCALE, deadline=None)
@given(hostile, shapes)
def test_hostile_strings_decode_like_the_reference_or_raise_rle_error(rle: str, shape: tuple[int, int]) -> None:
    height, width = shape
    try:
        expected = ref_decode(rle, height, width)
    except ValueError:
        with pytest.raises(RLEError) as info:
            rle_decode(rle, height, width, where="f.csv row 7 ImageId x: ")
        assert str(info.value).startswith("f.csv row 7 ImageId x: ") and "\n" not in str(info.value)
    else:
        np.testing.assert_array_equal(rle_decode(rle, height, width), expected)


@settings(max_examples=150 * SCALE, deadline=None)
@given(hostile, shapes, st.sampled_from(["F", "C"]))
def test_hostile_strings_absolute(rle: str, shape: tuple[int, int], order: str) -> None:
    height, width = shape
    try:
        expected = ref_decode_absolute(rle, height, width, order)
    except ValueError:
        with pytest.raises(RLEError, match=r"^where: "):
            rle_decode_absolute(rle, height, width, order=order, where="where: ")  # type: ignore[arg-type]
    else:
        got = rle_decode_absolute(rle, height, width, order=order)  # type: ignore[arg-type]
        np.testing.assert_array_equal(got, expected)


@settings(max_examples=120 * SCALE, deadline=None)
@given(masks_any_layout())
def test_encoders_match_the_pixel_loop_in_any_layout(mask: np.ndarray) -> None:
    height, width = mask.shape
    truth = mask != 0
    rle = rle_encode(mask)
    assert rle == ref_encode(truth)
    np.testing.assert_array_equal(rle_decode(rle, height, width), truth)
    np.testing.assert_array_equal(ref_decode(rle, height, width), truth)
    for order in ("F", "C"):
        absolute = rle_encode_absolute(mask, order=order)  # type: ignore[arg-type]
        assert absolute == ref_encode_absolute(truth, order)
        np.testing.assert_array_equal(rle_decode_absolute(absolute, height, width, order=order),  # type: ignore[arg-type]
                                      truth)


@settings(max_examples=40 * SCALE, deadline=None)
@given(st.lists(valid_relative((6, 5)).map(lambda c: c[0]), min_size=1, max_size=4))
def test_annotations_mask_is_the_union(rles: list[str]) -> None:
    ann = Annotations()
    for row, rle in enumerate(rles, start=2):
        ann.add("img", rle, row)
    expected = np.zeros((6, 5), dtype=bool)
    for rle in dict.fromkeys(" ".join(r.split()) for r in rles):
        expected |= ref_decode(rle, 6, 5)
    np.testing.assert_array_equal(ann.mask("img", 6, 5), expected)


@settings(max_examples=25 * SCALE, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(40, 30), (7, 300)]), st.floats(0.05, 0.95))
def test_many_runs_and_few_runs_paint_the_same(seed: int, shape: tuple[int, int], p: float) -> None:
    """Masks with hundreds of runs (the np.repeat path) and a few runs (the slice path)."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < p
    few = np.zeros(shape, dtype=bool)
    few[rng.integers(0, shape[0]), :] = True  # one row: a run per column, 30-300 runs
    few[:, : rng.integers(1, 4)] = True
    for m in (mask, few, few[:, :5]):  # few[:, :5]: at most 5 runs
        h, w = m.shape
        rle = rle_encode(m)
        np.testing.assert_array_equal(rle_decode(rle, h, w), ref_decode(rle, h, w))
        for order in ("F", "C"):
            absolute = rle_encode_absolute(m, order=order)  # type: ignore[arg-type]
            np.testing.assert_array_equal(rle_decode_absolute(absolute, h, w, order=order),  # type: ignore[arg-type]
                                          ref_decode_absolute(absolute, h, w, order))


@pytest.mark.parametrize("n_runs", [3, 500])
def test_images_larger_than_1024_squared(n_runs: int) -> None:
    """Past 2**20 pixels the slice path uses ndarray assignment; both paths agree with a plain fill."""
    height, width = 1100, 1000
    rng = np.random.default_rng(n_runs)
    cuts = np.sort(rng.choice(height * width, size=2 * n_runs, replace=False))
    expected = np.zeros(height * width, dtype=bool)
    for start, end in zip(cuts[0::2], cuts[1::2], strict=True):
        expected[start:end] = True
    expected = expected.reshape(width, height).T
    rle = " ".join(f"{s + 1} {e - s}" for s, e in zip(cuts[0::2], cuts[1::2], strict=True))
    np.testing.assert_array_equal(rle_decode_absolute(rle, height, width), expected)
    np.testing.assert_array_equal(rle_decode(rle_encode(expected), height, width), expected)


# --- crafted strings: bounded work and memory, a named error --------------------------------------

BIG = 2**62
CRAFTED = [
    f"0 {BIG} 0 {BIG} 0 {BIG} 0 {BIG}",  # int64 sums wrap around to a small, "valid" end
    f"{2**63 - 1} 1 {2**63 - 1} 1 0 1",
    "0 " + "9" * 40,
    "0 1 " * 3 + "1 " + "9" * 400,
    "1 1048576 1 1",
    "1 1 " * 1_100_000,  # more runs than pixels
]


@pytest.mark.parametrize("rle", CRAFTED, ids=range(len(CRAFTED)))
def test_crafted_strings_raise_named_error_without_allocating(rle: str) -> None:
    tracemalloc.start()
    try:
        for decode in (rle_decode, rle_decode_absolute):
            with pytest.raises(RLEError, match=r"^train\.csv row 12 ImageId a\.b: .*(past the image end|cannot fit|"
                                               r"inside or before the previous run)"):
                decode(rle, 1024, 1024, where="train.csv row 12 ImageId a.b: ")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Nothing image-sized is allocated before the error; only the parsed tokens scale (with the string).
    assert peak < 2**20 + 16 * len(rle), peak


def test_huge_number_in_a_csv_names_file_row_and_image(tmp_path: Path) -> None:
    path = tmp_path / "train-rle.csv"
    path.write_text(f"ImageId, EncodedPixels\nok, -1\nhuge, 5 {'9' * 30}\n")
    ann = read_annotations(path)
    with pytest.raises(RLEError, match=r"train-rle\.csv row 3 ImageId huge: run 0 length '9{20}\.\.\.' is past"):
        ann.mask("huge")


@pytest.mark.parametrize(("height", "width"), [(0, 4), (4, -1), (True, 4), (2.0, 3), (2**15, 2**16)])
def test_bad_shapes_raise(height: object, width: object) -> None:
    with pytest.raises(RLEError, match=r"height|width|pixels"):
        rle_decode("1 1", height, width)  # type: ignore[arg-type]
    assert MAX_PIXELS >= 1024 * 1024


def test_decoded_mask_is_a_column_major_view() -> None:
    mask = rle_decode("3 2", 4, 5)
    assert mask.flags.f_contiguous and mask[3, 0] and mask[0, 1] and mask.sum() == 2
    assert rle_decode("-1", 4, 5).flags.f_contiguous
    assert rle_decode_absolute("4 2", 4, 5, order="C").flags.c_contiguous


# --- the annotation CSV reader ----------------------------------------------------------------------

ids = st.sampled_from(["1.2.276.0.1", "1.2.276.0.2", "img_3", "ID_0a0adf93f"])
rle_values = st.sampled_from(["-1", "0 2", "1 1 2 3", "5 4", "0 1 0 1", "12 3"])
HEADERS = [None, "ImageId,EncodedPixels", "ImageId, EncodedPixels", "EncodedPixels,ImageId,Set"]


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, str]], str | None]:
    rows = draw(st.lists(st.tuples(ids, rle_values), min_size=1, max_size=12))
    header = draw(st.sampled_from(HEADERS))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    lead = draw(st.sampled_from(["", " "]))
    lines = [header] if header else []
    for image_id, rle in rows:
        if header and header.startswith("EncodedPixels"):
            lines.append(f"{lead}{rle},{image_id},train")
        else:
            lines.append(f"{image_id},{lead}{rle}")
        if draw(st.booleans()) and draw(st.booleans()):
            lines.append("")  # blank lines are skipped
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    return bom + eol.join(lines).encode() + eol.encode(), rows, header


@FAST
@given(csv_files(), st.booleans())
def test_reader_keeps_rows_in_order_and_counts_repeats_once(tmp_path: Path, case: tuple, gz: bool) -> None:
    data, rows, _header = case
    path = tmp_path / ("a.csv.gz" if gz else "a.csv")
    path.write_bytes(gzip.compress(data) if gz else data)
    ann = read_annotations(path)
    expected: dict[str, list[str]] = {}
    n_dup = 0
    for image_id, rle in rows:
        if rle in expected.setdefault(image_id, []):
            n_dup += 1
        else:
            expected[image_id].append(rle)
    assert dict(ann) == expected
    assert len(ann.duplicates) == n_dup
    assert all("counted once" in m and "\n" not in m for m in ann.duplicates)
    assert len(ann.warnings()) == (1 if n_dup else 0)
    # Row numbers are the file's line numbers: each names a line holding that ImageId and RLE.
    text = data.decode("utf-8-sig").replace("\r\n", "\n").split("\n")
    for image_id, rles in ann.items():
        for rle, row in zip(rles, ann.rows[image_id], strict=True):
            assert image_id in text[row - 1] and rle in text[row - 1]
    for image_id in ann:
        assert ann.is_positive(image_id) == any(r != "-1" for r in ann[image_id])


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"ImageId, EncodedPixels\n",
                                     b"ImageId,EncodedPixels\r\n\r\n  \r\n", b"\n\n"])
def test_empty_or_header_only_csv_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "rle.csv"
    path.write_bytes(content)
    with pytest.raises(RLEError, match=r"rle\.csv: no annotation rows"):
        read_annotations(path)


def test_duplicate_rows_warn_with_rows_and_count_once(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("ImageId, EncodedPixels\na, 1 2\nb, -1\na,  1  2\nb, -1\na, 3 1\n")
    ann = read_annotations(path)
    assert ann == {"a": ["1 2", "3 1"], "b": ["-1"]} and ann.rows == {"a": [2, 6], "b": [3]}
    assert ann.n_annotations("a") == 2
    assert ann.duplicates == [f"{path} row 4: ImageId a repeats row 2 exactly; counted once",
                              f"{path} row 5: ImageId b repeats row 3 exactly; counted once"]
    (warning,) = ann.warnings()
    assert warning == (f"2 duplicate row(s) in {path} counted once: row 4 (ImageId a, as row 2), "
                       f"row 5 (ImageId b, as row 3)")


def test_nul_byte_is_kept_and_named_when_decoded(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"ImageId,EncodedPixels\na,1 2\nb,3\x004\n")
    with pytest.raises(RLEError, match=r"x\.csv row 3 ImageId b: non-integer token '3\\x004'"):
        read_annotations(path).mask("b", 4, 4)


@pytest.mark.parametrize(("content", "message"), [
    (b"ImageId,EncodedPixels\na,\xff\xfe 1\n", r"not UTF-8"),
    (b"ImageId,EncodedPixels\n\"a,1 2\n", r"unreadable CSV|expected ImageId"),
])
def test_unreadable_csv_is_a_named_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with pytest.raises(RLEError, match=message):
        read_annotations(path)


def test_truncated_gzip_is_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / "x.csv.gz"
    path.write_bytes(gzip.compress(b"ImageId,EncodedPixels\n" + b"a,1 2\n" * 1000)[:40])
    with pytest.raises(RLEError, match=r"x\.csv\.gz: unreadable"):
        read_annotations(path)
