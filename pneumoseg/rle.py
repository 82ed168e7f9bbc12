"""Run-length codecs for SIIM-ACR masks and a reader for the challenge's annotation CSV.

Conventions (the challenge's ``train-rle.csv``):

* pixels are numbered **column-major** (down the first column, then the next), from 0;
* a string is ``"start length start length ..."`` where each start is **relative to the end of
  the previous run** (the first is relative to pixel 0);
* ``"-1"`` (spaces allowed around it) is an empty mask; an image may have several rows, and its
  mask is the union of their masks.

The ``*_absolute`` variants use the standard Kaggle form: 1-based absolute starts, column-major
by default (``order="F"``; ``order="C"`` for row-major). Decoders return ``bool`` arrays of shape ``(height, width)``; encoders accept any array
whose non-zero pixels are the mask.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path
from typing import Literal

import numpy as np

from pneumoseg.errors import RLEError

__all__ = [
    "EMPTY_RLE",
    "Annotations",
    "read_annotations",
    "rle_decode",
    "rle_decode_absolute",
    "rle_encode",
    "rle_encode_absolute",
]

EMPTY_RLE = "-1"


def _is_empty(rle: str) -> bool:
    stripped = rle.strip()
    return stripped == EMPTY_RLE or stripped == ""


def _parse_pairs(rle: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``"a b c d ..."`` into int64 arrays (firsts, lengths); raise RLEError on bad tokens."""
    tokens = rle.split()
    if len(tokens) % 2:
        raise RLEError(f"{where}odd number of tokens ({len(tokens)}): RLE needs (start, length) pairs")
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise RLEError(f"{where}non-integer token {bad!r}") from None
    firsts, lengths = values[0::2], values[1::2]
    if (lengths <= 0).any():
        i = int(np.flatnonzero(lengths <= 0)[0])
        raise RLEError(f"{where}run {i} has length {int(lengths[i])} (must be > 0)")
    return firsts, lengths


def _runs_to_mask(starts: np.ndarray, lengths: np.ndarray, height: int, width: int, where: str,
                  order: Literal["F", "C"]) -> np.ndarray:
    """Paint sorted, non-overlapping runs (absolute 0-based starts) into a C-contiguous bool mask.

    Work is proportional to the foreground area, not the image size: only the run pixels are
    generated and scattered into a zeroed (lazily allocated) array.
    """
    n = height * width
    ends = starts + lengths
    if len(starts) and ends[-1] > n:
        raise RLEError(f"{where}run ends at pixel {int(ends[-1])}, past the image end ({height}x{width} = {n})")
    mask = np.zeros((height, width), dtype=bool)
    if not len(starts):
        return mask
    # Pixel numbers of every run: 0..total-1 shifted by each run's (start - pixels before it).
    offsets = starts - (np.cumsum(lengths) - lengths)
    pixels = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(offsets, lengths)
    if order == "F":
        col, row = np.divmod(pixels, height)
        pixels = row * width + col
    mask.ravel()[pixels] = True
    return mask


def rle_decode(rle: str, height: int = 1024, width: int = 1024, *, where: str = "") -> np.ndarray:
    """Decode the challenge's relative, column-major RLE into a bool ``(height, width)`` mask.

    ``"-1"`` gives an all-False mask. ``where`` prefixes error messages (e.g. the ImageId and row).
    Raises RLEError for an odd token count, a non-integer token, a length <= 0, a negative
    start or a run past the image end.
    """
    if _is_empty(rle):
        return np.zeros((height, width), dtype=bool)
    rel, lengths = _parse_pairs(rle, where)
    if (rel < 0).any():
        i = int(np.flatnonzero(rel < 0)[0])
        raise RLEError(f"{where}run {i} has negative start {int(rel[i])}")
    # start_i = start_{i-1} + length_{i-1} + rel_i: one cumulative sum over the interleaved tokens.
    positions = np.cumsum(np.column_stack((rel, lengths)).ravel())
    return _runs_to_mask(positions[0::2], lengths, height, width, where, "F")


def _mask_runs(mask: np.ndarray, order: Literal["F", "C"]) -> tuple[np.ndarray, np.ndarray]:
    """Return (0-based absolute starts, lengths) of the foreground runs of ``mask``.

    Scans the mask once in memory order and sorts only the foreground pixel numbers, which is
    much cheaper than a strided column-major copy of the whole image.
    """
    if mask.ndim != 2:
        raise RLEError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    height, width = mask.shape
    pixels = np.flatnonzero(np.asarray(mask, dtype=bool))
    if order == "F" and len(pixels):
        row, col = np.divmod(pixels, width)
        pixels = np.sort(col * height + row)
    breaks = np.flatnonzero(np.diff(pixels) != 1) + 1
    starts = pixels[np.concatenate(([0], breaks))] if len(pixels) else pixels
    ends = pixels[np.concatenate((breaks - 1, [len(pixels) - 1]))] + 1 if len(pixels) else pixels
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


def rle_decode_absolute(rle: str, height: int = 1024, width: int = 1024, *, order: Literal["F", "C"] = "F",
                        where: str = "") -> np.ndarray:
    """Decode standard Kaggle RLE (1-based absolute starts) into a bool ``(height, width)`` mask.

    ``order="F"`` numbers pixels column-major (as this challenge's stage 2), ``"C"`` row-major.
    ``""`` or ``"-1"`` is an empty mask. Runs must be sorted and must not overlap.
    """
    if _is_empty(rle):
        return np.zeros((height, width), dtype=bool)
    firsts, lengths = _parse_pairs(rle, where)
    starts = firsts - 1
    if (starts < 0).any():
        i = int(np.flatnonzero(starts < 0)[0])
        raise RLEError(f"{where}run {i} has start {int(firsts[i])} (absolute starts are 1-based)")
    if len(starts) > 1 and (starts[1:] < (starts + lengths)[:-1]).any():
        i = int(np.flatnonzero(starts[1:] < (starts + lengths)[:-1])[0]) + 1
        raise RLEError(f"{where}run {i} starts at {int(firsts[i])}, inside or before the previous run")
    return _runs_to_mask(starts, lengths, height, width, where, order)


def rle_encode_absolute(mask: np.ndarray, *, order: Literal["F", "C"] = "F", empty: str = EMPTY_RLE) -> str:
    """Encode a 2-D mask as standard Kaggle RLE (1-based absolute starts); empty mask -> ``empty``."""
    starts, lengths = _mask_runs(mask, order)
    if not len(starts):
        return empty
    return _join(np.column_stack((starts + 1, lengths)).ravel())


class Annotations(dict[str, list[str]]):
    """ImageId -> list of RLE strings (one per CSV row, ``"-1"`` kept), in file order.

    ``rows[image_id]`` holds the 1-based CSV line number of each string, so errors can name it.
    """

    def __init__(self, source: str | os.PathLike[str] = "<memory>") -> None:
        super().__init__()
        self.source = str(source)
        self.rows: dict[str, list[int]] = {}

    def add(self, image_id: str, rle: str, row: int) -> None:
        self.setdefault(image_id, []).append(rle)
        self.rows.setdefault(image_id, []).append(row)

    def n_annotations(self, image_id: str) -> int:
        """Number of non-empty annotation rows (pneumothorax regions as drawn) of ``image_id``."""
        return sum(not _is_empty(r) for r in self.get(image_id, []))

    def is_positive(self, image_id: str) -> bool:
        return self.n_annotations(image_id) > 0

    def mask(self, image_id: str, height: int = 1024, width: int = 1024) -> np.ndarray:
        """Union of the masks of all rows of ``image_id`` (bool ``(height, width)``).

        Raises KeyError for an unknown ImageId and RLEError naming the file, ImageId and row.
        """
        out = np.zeros((height, width), dtype=bool)
        for rle, row in zip(self[image_id], self.rows[image_id], strict=True):
            if not _is_empty(rle):
                out |= rle_decode(rle, height, width, where=f"{self.source} row {row} ImageId {image_id}: ")
        return out


def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    # utf-8-sig drops a BOM; newline="" lets csv handle CRLF.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def read_annotations(csv_path: str | os.PathLike[str]) -> Annotations:
    """Read the challenge's annotation CSV (``train-rle.csv``, ``.csv.gz`` too) into Annotations.

    Handles the file's quirks: a UTF-8 BOM, CRLF line ends, no header row (the sample file), the
    column literally named ``" EncodedPixels"`` and values like ``" -1"``. With a header, the
    columns ``ImageId`` and ``EncodedPixels`` are found by name (surrounding spaces ignored);
    without one, they are the first two. Every row is kept: several rows of an image are its
    several annotations. RLE strings are stripped but not decoded here (see ``Annotations.mask``).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise RLEError(f"{path}: annotation file not found")
    out = Annotations(path)
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        id_col, rle_col = 0, 1
        for line_no, record in enumerate(reader, start=1):
            if not record or all(not f.strip() for f in record):
                continue
            if line_no == 1:
                names = [f.strip() for f in record]
                if "ImageId" in names:
                    if "EncodedPixels" not in names:
                        raise RLEError(f"{path} row 1: header has ImageId but no EncodedPixels column: {record}")
                    id_col, rle_col = names.index("ImageId"), names.index("EncodedPixels")
                    continue
            if len(record) <= max(id_col, rle_col):
                raise RLEError(f"{path} row {line_no}: expected ImageId and EncodedPixels, got {record}")
            image_id = record[id_col].strip()
            if not image_id:
                raise RLEError(f"{path} row {line_no}: empty ImageId")
            out.add(image_id, record[rle_col].strip(), line_no)
    return out
