"""Recent results, kept compact (PNG bytes) in an LRU bounded by bytes and by count."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ResultStore", "StoredResult"]


@dataclass(frozen=True)
class StoredResult:
    """One prediction kept for the PNG routes, as 8-bit grayscale PNG bytes at the input's resolution.

    ``image_png``: the radiograph; ``prob_png``: probability x 255 (rounded); ``mask_png``: the
    post-processed mask as 0/255; ``summary``: the JSON answer sent. ``values_z``: the intensities
    the viewer windows on (``Intensities.compressed``); ``header_dcm``: the source DICOM without
    its pixel data (for SEG / SR; empty for PNG / JPEG); ``truth_png``: the ground-truth mask
    (0/255) when one is known (browse mode), else empty. ``nbytes`` counts every byte string plus
    the JSON text (the RLE can be long).
    """

    image_png: bytes
    prob_png: bytes
    mask_png: bytes
    summary: dict[str, Any]
    values_z: bytes = b""
    header_dcm: bytes = b""
    truth_png: bytes = b""
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        blobs = (self.image_png, self.prob_png, self.mask_png, self.values_z, self.header_dcm, self.truth_png)
        size = sum(len(b) for b in blobs) + len(json.dumps(self.summary))
        object.__setattr__(self, "nbytes", size)


class ResultStore:
    """Thread-safe LRU of results by id, holding at most ``max_bytes`` (sum of ``nbytes``) and ``max_items``.

    Values need an ``nbytes`` attribute. Adding a value evicts the least recently used ones until
    it fits; a value larger than ``max_bytes`` by itself is not stored (``put`` returns False).
    """

    def __init__(self, max_bytes: int, max_items: int | None = None) -> None:
        if max_bytes < 1:
            raise ValueError(f"ResultStore max_bytes must be >= 1, got {max_bytes}")
        if max_items is not None and max_items < 1:
            raise ValueError(f"ResultStore max_items must be >= 1, got {max_items}")
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, key: str, value: StoredResult) -> bool:
        """Store ``value`` under ``key`` (evicting the oldest as needed); False when it alone exceeds the budget."""
        size = int(value.nbytes)
        if size > self.max_bytes:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= int(old.nbytes)
            while self._items and (self._bytes + size > self.max_bytes
                                   or (self.max_items is not None and len(self._items) >= self.max_items)):
                _, evicted = self._items.popitem(last=False)
                self._bytes -= int(evicted.nbytes)
            self._items[key] = value
            self._bytes += size
        return True

    def get(self, key: str) -> StoredResult | None:
        """The value (now the most recently used) or None when unknown or evicted."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    @property
    def nbytes(self) -> int:
        """Bytes held (sum of the values' ``nbytes``)."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
