"""Run-length codecs for SIIM-ACR masks and a reader for the challenge's annotation CSV.

One job, hence its size: the challenge's RLE format, both ways (relative and absolute runs, the
annotation CSV's rows per image), vectorised and checked.

Conventions (the challenge's ``train-rle.csv``):

* pixels are numbered **column-major** (down the first column, then the next), from 0;
* a string is ``"start length start length ..."`` where each start is **relative to the end of
  the previous run** (the first is relative to pixel 0);
* ``"-1"`` (spaces allowed around it) is an empty mask; an image may have several rows, and its
  mask is the union of their masks.

The ``*_absolute`` variants use the standard Kaggle form: 1-based absolute starts, column-major
by default (``order="F"``; ``order="C"`` for row-major).

Decoders return ``bool`` arrays of shape ``(height, width)``. A column-major decode is the
transposed view of a column-major buffer, so the array is **F-contiguous**, not C-contiguous:
numpy, Pillow and OpenCV inputs accept it (cv2 copies it); call ``np.ascontiguousarray`` (~1 ms at
1024x1024) only where a C buffer is required (a cv2 ``dst``, raw ``.data``). Encoders accept any
2-D array whose non-zero pixels are the mask.

Every number is checked before the mask is allocated: tokens are ASCII integers, lengths >= 1,
starts >= 0 (>= 1 absolute), every run and the running end inside ``height * width``; a
violation raises ``RLEError`` (prefixed by ``where``, e.g. the file, row and ImageId).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from pneumoseg.errors import RLEError

__all__ = [
    "EMPTY_RLE",
    "MAX_PIXELS",
    "MAX_ROWS_PER_IMAGE",
    "Annotations",
    "read_annotations",
    "rle_decode",
    "rle_decode_absolute",
    "rle_encode",
    "rle_encode_absolute",
]

EMPTY_RLE = "-1"
#: Largest ``height * width`` a decoder accepts (a 1 GiB mask); keeps all run arithmetic in int64.
MAX_PIXELS = 2**30
#: Annotation rows kept per ImageId; more make that image one bad item (the challenge's files have at
#: most 5; each row is decoded to a full mask, so 10**6 rows used to take 84 s for one image).
MAX_ROWS_PER_IMAGE = 100
# A kept row that is bad (too long, one row too many): "!" + the reason. No RLE contains "!", and
# ``Annotations.mask`` raises the reason for that image only, before decoding anything.
_BAD = "!"

_INTEGER = re.compile(r"-?[0-9]+")
# Up to this many runs, one slice copy per run beats one np.repeat over the runs' span (measured on
# the stage-2 annotations; the median mask spans 18 % of a 1024x1024 image).
_SLICE_RUNS = 48
_ONES = memoryview(b"\x01" * 2**20)  # source of the slice copies: any run of a 1024x1024 image


def _is_empty(rle: str) -> bool:
    stripped = rle.strip()
    return stripped == EMPTY_RLE or stripped == ""


def _short(token: str) -> str:
    return repr(token if len(token) <= 24 else token[:20] + "...")


def _check_shape(height: int, width: int, where: str) -> int:
    """Return ``height * width`` after checking both are positive ints and the product is sane."""
    if type(height) is int and type(width) is int and 0 < height * width <= MAX_PIXELS and height > 0:
        return height * width
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise RLEError(f"{where}{name} must be a positive integer, got {value!r}")
    n = int(height) * int(width)
    if n > MAX_PIXELS:
        raise RLEError(f"{where}mask {height}x{width} has {n} pixels, more than the {MAX_PIXELS} allowed")
    return n


def _parse_values(rle: str, where: str, n: int, first: str) -> np.ndarray:
    """Parse ``"a b c d ..."`` into one int64 array (pairs interleaved), each value in 0..n, lengths >= 1.

    ``first`` names the first number of a pair in messages ("start" or "absolute start").
    Raises RLEError for a non-integer token, an odd count, more runs than pixels, a negative
    number, a length of 0 or a number larger than the image, before any large allocation.
    """
    text = rle.strip()
    if text.isascii() and not text.encode("ascii").translate(None, b"0123456789 "):
        # Only digits and spaces (the common case): numpy parses it in one call, and a number too
        # large for int64 saturates at 2**63-1, which the range check below reports.
        values = np.fromstring(text, dtype=np.int64, sep=" ")
    else:
        values = _parse_tokens(text.split(), where, n, first)
    if len(values) % 2:
        raise RLEError(f"{where}odd number of tokens ({len(values)}): RLE needs (start, length) pairs")
    if len(values) > 2 * n:
        raise RLEError(f"{where}{len(values) // 2} runs cannot fit in {n} pixels")
    lengths = values[1::2]
    if lengths.min() < 1:
        i = int(np.argmax(lengths < 1))
        raise RLEError(f"{where}run {i} has length {int(lengths[i])} (must be 1..{n})")
    if values.max() > n:
        k = int(np.argmax(values > n))
        what = first if k % 2 == 0 else "length"
        raise RLEError(f"{where}run {k // 2} {what} {_short(text.split()[k])} is past the image end "
                       f"(valid: at most {n}, the pixel count)")
    return values


def _parse_tokens(tokens: list[str], where: str, n: int, first: str) -> np.ndarray:
    """The careful path: name the first token that is not an integer, or is negative or huge."""
    for i, token in enumerate(tokens):
        if not _INTEGER.fullmatch(token):
            raise RLEError(f"{where}non-integer token {_short(token)} (token {i}): RLE holds integers only")
    if len(tokens) % 2:
        raise RLEError(f"{where}odd number of tokens ({len(tokens)}): RLE needs (start, length) pairs")
    values = [int(t) for t in tokens]
    for i, value in enumerate(values):
        what = first if i % 2 == 0 else "length"
        if value < 0:
            lowest = 0 if what == "start" else 1
            raise RLEError(f"{where}run {i // 2} has {'' if what == 'length' else 'negative '}{what} {value} "
                           f"(valid: {lowest}..{n})")
        if value > n:
            raise RLEError(f"{where}run {i // 2} {what} {_short(tokens[i])} is past the image end "
                           f"(valid: at most {n}, the pixel count)")
    return np.array(values, dtype=np.int64)


def _check_end(ends: np.ndarray, height: int, width: int, where: str) -> None:
    """``ends`` increase; raise RLEError naming the first run that ends past ``height * width``."""
    n = height * width
    if len(ends) and ends[-1] > n:
        i = int(np.searchsorted(ends, n, side="right"))
        raise RLEError(f"{where}run {i} ends at pixel {int(ends[i])}, past the image end "
                       f"({height}x{width} = {n})")


def _paint(bounds: np.ndarray, height: int, width: int, order: Literal["F", "C"]) -> np.ndarray:
    """Fill validated runs into a bool ``(height, width)`` mask.

    ``bounds`` is ``[start0, end0, start1, end1, ...]``: 0-based, in pixel order, increasing. The
    runs are filled into one zeroed flat buffer in pixel order and the result is a view of it
    (column-major: its transpose, F-contiguous): nothing is scattered or copied. Up to
    ``_SLICE_RUNS`` runs: one byte-slice copy each; more: one ``np.repeat`` of alternating
    True/False over the run and gap lengths, from the first start to the last end.
    """
    n = height * width
    flat = np.zeros(n, dtype=bool)
    if len(bounds) > 2 * _SLICE_RUNS:
        values = np.zeros(len(bounds) - 1, dtype=bool)
        values[0::2] = True
        flat[int(bounds[0]):int(bounds[-1])] = np.repeat(values, np.diff(bounds))
    elif n <= len(_ONES):  # every run fits the source: a memoryview copy costs less than ndarray setitem
        out, ones, pairs = flat.data.cast("B"), _ONES, iter(bounds.tolist())
        for start, end in zip(pairs, pairs, strict=True):
            out[start:end] = ones[:end - start]
    else:
        pairs = iter(bounds.tolist())
        for start, end in zip(pairs, pairs, strict=True):
            flat[start:end] = True
    return flat.reshape(width, height).T if order == "F" else flat.reshape(height, width)


def _empty(height: int, width: int, order: Literal["F", "C"]) -> np.ndarray:
    return np.zeros((width, height), dtype=bool).T if order == "F" else np.zeros((height, width), dtype=bool)


def rle_decode(rle: str, height: int = 1024, width: int = 1024, *, where: str = "") -> np.ndarray:
    """Decode the challenge's relative, column-major RLE into a bool ``(height, width)`` mask.

    ``"-1"`` gives an all-False mask. The result is F-contiguous (see the module docstring).
    ``where`` prefixes error messages (e.g. the file, row and ImageId). Raises RLEError for a
    non-integer token, an odd token count, a length < 1, a negative start, or a run past the end.
    """
    n = _check_shape(height, width, where)
    if _is_empty(rle):
        return _empty(height, width, "F")
    # start_i = end_{i-1} + rel_i: one cumulative sum over the interleaved tokens gives
    # [start0, end0, start1, end1, ...]. Every value is <= n <= 2**30 and there are <= 2n of them,
    # so the sums cannot overflow int64.
    bounds = np.cumsum(_parse_values(rle, where, n, "start"))
    _check_end(bounds[1::2], height, width, where)
    return _paint(bounds, height, width, "F")


def rle_decode_absolute(rle: str, height: int = 1024, width: int = 1024, *, order: Literal["F", "C"] = "F",
                        where: str = "") -> np.ndarray:
    """Decode standard Kaggle RLE (1-based absolute starts) into a bool ``(height, width)`` mask.

    ``order="F"`` numbers pixels column-major (F-contiguous result), ``"C"`` row-major (C-contiguous).
    ``""`` or ``"-1"`` is an empty mask. Runs must be sorted and must not overlap.
    """
    n = _check_shape(height, width, where)
    if _is_empty(rle):
        return _empty(height, width, order)
    values = _parse_values(rle, where, n, "absolute start")
    firsts, lengths = values[0::2], values[1::2]
    if (firsts < 1).any():
        i = int(np.flatnonzero(firsts < 1)[0])
        raise RLEError(f"{where}run {i} has start {int(firsts[i])} (absolute starts are 1-based: 1..{n})")
    starts = firsts - 1
    ends = starts + lengths
    overlap = starts[1:] < ends[:-1]
    if overlap.any():
        i = int(np.flatnonzero(overlap)[0]) + 1
        raise RLEError(f"{where}run {i} starts at {int(firsts[i])}, inside or before the previous run "
                       f"(runs must be sorted and must not overlap)")
    _check_end(ends, height, width, where)
    return _paint(np.column_stack((starts, ends)).ravel(), height, width, order)


def _runs_in_order(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of the C-order flattening of a C-contiguous bool ``seq``: (0-based starts, ends)."""
    flat = seq.reshape(-1)
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat[0]:
        edges = np.concatenate(([0], edges))
    if flat[-1]:
        edges = np.concatenate((edges, [flat.size]))
    return edges[0::2], edges[1::2]


def _runs_across(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of the F-order flattening of a C-contiguous bool ``arr`` (P, Q): (starts, ends).

    Finds where each column changes (a contiguous row-against-row comparison, no transposed copy),
    orders those few edges by column, then joins runs that continue from the bottom of one column
    into the top of the next.
    """
    p, q = arr.shape
    edges = np.empty((p + 1, q), dtype=bool)
    edges[0], edges[p] = arr[0], arr[p - 1]
    np.not_equal(arr[1:], arr[:-1], out=edges[1:p])
    row, col = np.divmod(np.flatnonzero(edges), q)
    key = np.sort(col * (p + 1) + row)  # unique per (column, edge row), in pixel order
    col, row = np.divmod(key, p + 1)
    pos = col * p + row
    starts, ends = pos[0::2], pos[1::2]
    joined = starts[1:] == ends[:-1]
    if joined.any():
        starts = starts[np.concatenate(([True], ~joined))]
        ends = ends[np.concatenate((~joined, [True]))]
    return starts, ends


def _mask_runs(mask: np.ndarray, order: Literal["F", "C"]) -> tuple[np.ndarray, np.ndarray]:
    """Return (0-based starts, lengths) of the foreground runs of ``mask`` in ``order`` pixel order.

    Works in the array's memory layout: C and F-contiguous masks are never copied transposed.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RLEError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if mask.dtype != bool:
        mask = mask != 0  # keeps the memory layout
    seq = mask.T if order == "F" else mask  # pixel order = C-order flattening of seq
    if seq.flags.c_contiguous:
        starts, ends = _runs_in_order(seq)
    elif seq.flags.f_contiguous:
        starts, ends = _runs_across(seq.T)
    else:
        starts, ends = _runs_in_order(np.ascontiguousarray(seq))
    return starts, ends - starts


def _join(values: np.ndarray) -> str:
    return " ".join(map(str, values.tolist()))


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (non-zero = foreground) in the challenge's relative column-major RLE.

    An empty mask gives ``"-1"``. ``rle_decode(rle_encode(m), *m.shape) == (m != 0)``.
    """
    starts, lengths = _mask_runs(mask, "F")
    if not len(starts):
        return EMPTY_RLE
    prev_ends = np.concatenate(([0], (starts + lengths)[:-1]))
    return _join(np.column_stack((starts - prev_ends, lengths)).ravel())


def rle_encode_absolute(mask: np.ndarray, *, order: Literal["F", "C"] = "F", empty: str = EMPTY_RLE) -> str:
    """Encode a 2-D mask as standard Kaggle RLE (1-based absolute starts); empty mask -> ``empty``."""
    starts, lengths = _mask_runs(mask, order)
    if not len(starts):
        return empty
    return _join(np.column_stack((starts + 1, lengths)).ravel())


class Annotations(dict[str, list[str]]):
    """ImageId -> list of RLE strings (one per CSV row, ``"-1"`` kept), in file order.

    ``rows[image_id]`` holds the 1-based CSV line number of each string, so errors can name it.
    A row identical to an earlier one (same ImageId, same runs) is counted once: ``add`` skips it
    and records a one-line message in ``duplicates`` (``warnings()`` summarises them in one line).
    """

    def __init__(self, source: str | os.PathLike[str] = "<memory>") -> None:
        super().__init__()
        self.source = str(source)
        self.rows: dict[str, list[int]] = {}
        self.duplicates: list[str] = []
        self._seen: dict[str, dict[str, int]] = {}
        self._repeats: list[str] = []

    def add(self, image_id: str, rle: str, row: int) -> bool:
        """Append one row; return False (and record it in ``duplicates``) if it repeats an earlier one.

        Rows of an image beyond ``MAX_ROWS_PER_IMAGE`` are not kept: the first of them is kept as a
        bad row, so that image (only) fails with a line naming it.
        """
        kept = self.get(image_id, [])
        if len(kept) >= MAX_ROWS_PER_IMAGE:
            if not kept[-1].startswith(_BAD):
                self.add_bad(image_id, f"more than {MAX_ROWS_PER_IMAGE} annotation rows for one image "
                                       f"(MAX_ROWS_PER_IMAGE)", row)
            return False
        key = " ".join(rle.split())
        seen = self._seen.setdefault(image_id, {})
        if key in seen:
            self.duplicates.append(f"{self.source} row {row}: ImageId {image_id} repeats row {seen[key]} "
                                   f"exactly; counted once")
            self._repeats.append(f"row {row} (ImageId {image_id}, as row {seen[key]})")
            return False
        seen[key] = row
        self.setdefault(image_id, []).append(rle)
        self.rows.setdefault(image_id, []).append(row)
        return True

    def add_bad(self, image_id: str, reason: str, row: int) -> None:
        """Keep a row that cannot be used: ``mask`` (and ``n_annotations``) of ``image_id`` then raise
        RLEError naming the file, row, ImageId and ``reason``; other images are not affected."""
        self.setdefault(image_id, []).append(_BAD + reason)
        self.rows.setdefault(image_id, []).append(row)

    def _check_rows(self, image_id: str) -> None:
        for rle, row in zip(self.get(image_id, []), self.rows.get(image_id, []), strict=True):
            if rle.startswith(_BAD):
                raise RLEError(f"{self.source} row {row} ImageId {image_id}: {rle[len(_BAD):]}")

    def warnings(self) -> list[str]:
        """One-line warnings for the user: [] or one line counting the duplicate rows, first few named."""
        if not self.duplicates:
            return []
        more = f", +{len(self._repeats) - 3} more" if len(self._repeats) > 3 else ""
        return [f"{len(self._repeats)} duplicate row(s) in {self.source} counted once: "
                f"{', '.join(self._repeats[:3])}{more}"]

    def n_annotations(self, image_id: str) -> int:
        """Number of non-empty annotation rows (pneumothorax regions as drawn) of ``image_id``.

        Raises RLEError when one of its rows is bad (``add_bad``)."""
        self._check_rows(image_id)
        return sum(not _is_empty(r) for r in self.get(image_id, []))

    def is_positive(self, image_id: str) -> bool:
        return self.n_annotations(image_id) > 0

    def mask(self, image_id: str, height: int = 1024, width: int = 1024) -> np.ndarray:
        """Union of the masks of all rows of ``image_id`` (bool ``(height, width)``, F-contiguous).

        Raises KeyError for an unknown ImageId and RLEError naming the file, ImageId and row.
        """
        self._check_rows(image_id)
        out: np.ndarray | None = None
        for rle, row in zip(self[image_id], self.rows[image_id], strict=True):
            if not _is_empty(rle):
                part = rle_decode(rle, height, width, where=f"{self.source} row {row} ImageId {image_id}: ")
                if out is None:
                    out = part
                else:
                    out |= part  # both column-major: a contiguous OR
        return _empty(height, width, "F") if out is None else out


def _open_text(path: Path) -> io.TextIOWrapper:
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    # utf-8-sig drops a BOM; newline="" lets csv handle CRLF.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def read_annotations(csv_path: str | os.PathLike[str]) -> Annotations:
    """Read the challenge's annotation CSV (``train-rle.csv``, ``.csv.gz`` too) into Annotations.

    Handles the file's quirks: a UTF-8 BOM, CRLF line ends, no header row (the sample file), the
    column literally named ``" EncodedPixels"`` and values like ``" -1"``. With a header (the first
    non-blank row, if it names ``ImageId``), the columns ``ImageId`` and ``EncodedPixels`` are found
    by name (surrounding spaces ignored); without one, they are the first two. Every row is kept
    (several rows of an image are its several annotations) except exact repeats, which are
    counted once and listed in ``duplicates``. RLE strings are stripped, not decoded here (see
    ``Annotations.mask``). Raises RLEError for a missing, unreadable, empty or header-only file.
    A row whose EncodedPixels is longer than the csv module's field limit (131,072 characters;
    the challenge's longest is ~5,300) is one bad row of its image (``Annotations.add_bad``),
    as are rows beyond ``MAX_ROWS_PER_IMAGE`` for one image; the rest of the file is read.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise RLEError(f"{path}: annotation file not found")
    out = Annotations(path)
    n_rows = 0
    line_no = 0  # physical line of the last record read
    reader = None
    try:
        with _open_text(path) as fh:
            last_line = [""]

            def lines() -> Iterator[str]:
                for line in fh:
                    last_line[0] = line
                    yield line

            reader = csv.reader(lines())
            id_col, rle_col = 0, 1
            first = True
            while True:
                try:
                    record = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    if "field limit" not in str(exc):
                        raise
                    line_no = reader.line_num
                    fields = last_line[0].split(",")
                    image_id = fields[id_col].strip().strip('"').strip() if len(fields) > id_col else ""
                    if first or not image_id or len(image_id) > 1000:
                        raise
                    out.add_bad(image_id, f"EncodedPixels longer than the {csv.field_size_limit()} characters "
                                          f"allowed", line_no)
                    n_rows += 1
                    continue
                line_no = reader.line_num
                if not record or all(not f.strip() for f in record):
                    continue
                if first:
                    first = False
                    names = [f.strip() for f in record]
                    if "ImageId" in names:
                        if "EncodedPixels" not in names:
                            raise RLEError(f"{path} row {line_no}: header has ImageId but no EncodedPixels "
                                           f"column: {record}")
                        id_col, rle_col = names.index("ImageId"), names.index("EncodedPixels")
                        continue
                if len(record) <= max(id_col, rle_col):
                    raise RLEError(f"{path} row {line_no}: expected ImageId and EncodedPixels, got {record}")
                image_id = record[id_col].strip()
                if not image_id:
                    raise RLEError(f"{path} row {line_no}: empty ImageId")
                out.add(image_id, record[rle_col].strip(), line_no)
                n_rows += 1
    except csv.Error as exc:
        row = reader.line_num if reader is not None else line_no + 1
        raise RLEError(f"{path} row {row}: unreadable CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise RLEError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start} of a chunk after row "
                       f"{line_no})") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise RLEError(f"{path}: unreadable ({exc})") from None
    if not n_rows:
        raise RLEError(f"{path}: no annotation rows (empty or header-only); expected rows of ImageId, "
                       f"EncodedPixels (-1 for no pneumothorax)")
    return out
