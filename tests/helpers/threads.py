"""One torch intra-op thread for a block or a test module (two shared cores: faster and reproducible)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """``torch.set_num_threads(1)`` inside the block; the former count restored after it, also on error."""
    import torch  # lazily: conftest.py imports this module for tests that never touch torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for the whole test module (its module-scoped fixtures included); tests/conftest.py
    makes it available everywhere."""
    with one_torch_thread():
        yield


@pytest.fixture(autouse=True, scope="module")
def one_thread_per_module(one_thread: None) -> None:
    """``one_thread`` for every module of a folder whose conftest.py imports this fixture (autouse)."""
