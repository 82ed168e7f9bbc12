"""quiet_lightning: Lightning's INFO lines and noise warnings off inside the block, all state back after it."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest

from pneumoseg.util.quiet import LIGHTNING_LOGGERS, quiet_lightning


def state() -> tuple[list[object], list[int], list[list[logging.Filter]]]:
    loggers = [logging.getLogger(n) for n in (*LIGHTNING_LOGGERS, "lightning.pytorch.utilities.rank_zero")]
    return list(warnings.filters), [lg.level for lg in loggers], [list(lg.filters) for lg in loggers]


@pytest.fixture(autouse=True)
def keep_levels() -> Iterator[None]:
    """The tests set Lightning's levels as ``import lightning`` does; put back whatever was there."""
    loggers = [logging.getLogger(n) for n in LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    yield
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


def test_hides_info_lines_and_noise_warnings_only_inside_the_block() -> None:
    child = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where rank_zero_info logs
    logging.getLogger("lightning.pytorch").setLevel(logging.INFO)  # what `import lightning` sets
    before = state()
    assert child.isEnabledFor(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_lightning():
            assert not child.isEnabledFor(logging.INFO) and child.isEnabledFor(logging.WARNING)
            warnings.warn("The 'train_dataloader' does not have many workers which may be a bottleneck.",
                          stacklevel=1)
            warnings.warn("Checkpoint directory /r/checkpoints exists and is not empty.", stacklevel=1)
            warnings.warn("a real problem", UserWarning, stacklevel=1)
        warnings.warn("The 'val_dataloader' does not have many workers", stacklevel=1)  # after: shown again
    assert [str(w.message) for w in caught] == ["a real problem", "The 'val_dataloader' does not have many workers"]
    assert state() == before and child.isEnabledFor(logging.INFO)


def test_restores_after_an_exception_and_keeps_a_higher_level() -> None:
    top = logging.getLogger("lightning.fabric")
    top.setLevel(logging.ERROR)  # a user's quieter choice stays
    before = state()
    with pytest.raises(RuntimeError, match="boom"), quiet_lightning():
        assert top.level == logging.ERROR
        raise RuntimeError("boom")
    assert state() == before
