"""Losses against hand-computed values on 1x1x2x2 tensors, weighted sums, empty batches."""

from __future__ import annotations

import math

import pytest
import torch

from pneumoseg.errors import ConfigError
from pneumoseg.training.losses import LOSSES, WeightedLoss, create_loss, list_losses, soft_dice

LN2 = math.log(2)


def t22(*values: float) -> torch.Tensor:
    """(1, 1, 2, 2) from values in row-major order."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 2, 2)


# Case A: logits all 0 (p = 0.5), target [[1, 0], [0, 0]].
#   bce = ln 2; Dice = (2*0.5 + 1) / (2 + 1 + 1) = 0.5; focal = 0.5^2 ln 2 per pixel;
#   lovasz: every error 1 - 0 = 1, sum of Lovasz gradients = final Jaccard loss 1 -> 1.
# Case B: logits [[2, -1], [0, 1]], target [[1, 0], [0, 1]].
#   bce = mean(ln(1+e^-2), ln(1+e^-1), ln 2, ln(1+e^-1)) = 0.3616497
#   p = (0.8807971, 0.2689414, 0.5, 0.7310586): Dice = (2*1.6118557 + 1) / (2.3807971 + 2 + 1) = 0.7849602
#   focal: sum (1 - p_t)^2 * (-ln p_t) / 4 with p_t = (0.8808, 0.7311, 0.5, 0.7311) = 0.0551016
#   lovasz: errors 1 - x*s = (-1, 0, 1, 0); sorted, only the largest (a negative pixel) is > 0:
#   loss = 1 * (1 - 2/3) = 1/3.
BCE_B = (math.log1p(math.exp(-2)) + 2 * math.log1p(math.exp(-1)) + LN2) / 4
P_B = [1 / (1 + math.exp(-x)) for x in (2, -1, 0, 1)]
DICE_B = (2 * (P_B[0] + P_B[3]) + 1) / (sum(P_B) + 2 + 1)
PT_B = [P_B[0], 1 - P_B[1], 1 - P_B[2], P_B[3]]
FOCAL_B = sum((1 - pt) ** 2 * -math.log(pt) for pt in PT_B) / 4

CASES = {
    "A": (t22(0, 0, 0, 0), t22(1, 0, 0, 0)),
    "B": (t22(2, -1, 0, 1), t22(1, 0, 0, 1)),
}
TABLE = [
    ("bce", "A", LN2),
    ("dice", "A", 0.5),
    ("bce_dice", "A", LN2 + 0.5),
    ("bce_logdice", "A", LN2 + LN2),
    ("focal", "A", 0.25 * LN2),
    ("lovasz", "A", 1.0),
    ("bce", "B", BCE_B),
    ("dice", "B", 1 - DICE_B),
    ("bce_dice", "B", BCE_B + 1 - DICE_B),
    ("bce_logdice", "B", BCE_B - math.log(DICE_B)),
    ("focal", "B", FOCAL_B),
    ("lovasz", "B", 1 / 3),
]


def test_hand_constants() -> None:
    assert BCE_B == pytest.approx(0.3616497, abs=1e-6)
    assert DICE_B == pytest.approx(0.7849602, abs=1e-6)
    assert FOCAL_B == pytest.approx(0.0551016, abs=1e-6)


@pytest.mark.parametrize(("name", "case", "expected"), TABLE)
def test_loss_values(name: str, case: str, expected: float) -> None:
    logits, target = CASES[case]
    loss = create_loss(name)
    value = loss(logits, target)
    assert value.ndim == 0
    assert float(value) == pytest.approx(expected, abs=1e-5)
    assert sum(loss.last_parts.values()) == pytest.approx(expected, abs=1e-5)


def test_table_covers_every_loss() -> None:
    assert {name for name, _, _ in TABLE} == set(LOSSES) == set(list_losses())


def test_weighted_sum_equals_sum_of_parts() -> None:
    logits, target = CASES["B"]
    weights = {"bce": 3, "dice": 1, "focal": 4}
    loss = create_loss(weights)
    assert isinstance(loss, WeightedLoss)
    total = loss(logits, target)
    expected = 3 * BCE_B + (1 - DICE_B) + 4 * FOCAL_B
    assert float(total) == pytest.approx(expected, abs=1e-5)
    parts = loss.last_parts
    assert set(parts) == {"bce", "dice", "focal", "total"}
    assert parts["total"] == pytest.approx(sum(weights[k] * parts[k] for k in weights), abs=1e-6)
    assert parts["bce"] == pytest.approx(BCE_B, abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_all_empty_batch_has_finite_loss_and_nonzero_gradient(name: str) -> None:
    logits = torch.full((2, 1, 4, 4), 0.3, requires_grad=True)
    target = torch.zeros(2, 1, 4, 4)
    value = create_loss(name)(logits, target)
    value.backward()
    assert torch.isfinite(value)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0, f"{name}: silent zero gradient on an all-empty batch"
    if name == "dice":  # the gradient pushes every prediction towards 0
        assert (logits.grad > 0).all()


def test_dice_is_per_batch() -> None:
    # Image 1: 4 positive pixels, all predicted. Image 2: empty, one false-positive pixel.
    # Pooled over the batch: (2*4 + 1) / (5 + 4 + 1) = 0.9 (a per-image mean would give 0.75).
    logits = torch.full((2, 1, 2, 2), -30.0)
    target = torch.zeros(2, 1, 2, 2)
    logits[0], target[0] = 30.0, 1.0
    logits[1, 0, 0, 0] = 30.0
    assert float(soft_dice(logits, target)) == pytest.approx(0.9, abs=1e-6)


def test_targets_may_be_bool_or_uint8() -> None:
    logits, target = CASES["B"]
    for cast in (torch.bool, torch.uint8):
        assert float(create_loss("bce_dice")(logits, target.to(cast))) == pytest.approx(
            BCE_B + 1 - DICE_B, abs=1e-5
        )


@pytest.mark.parametrize("name", ["bce", "dice", "bce_dice", "bce_logdice", "focal", "lovasz"])
def test_losses_compute_in_float32(name: str) -> None:
    """bf16 logits (as under mixed precision) give a float32 loss equal to the float32 logits' loss."""
    logits, target = CASES["B"]
    low = logits.to(torch.bfloat16)
    loss = create_loss(name)(low, target)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(create_loss(name)(low.float(), target)), abs=1e-6)
    weighted = create_loss({name: 2.0})(low, target)
    assert weighted.dtype == torch.float32 and float(weighted) == pytest.approx(2 * float(loss), abs=1e-5)


def test_soft_targets() -> None:
    """Soft targets (covered fractions): BCE and Dice use them as they are; Lovasz cuts at 0.5."""
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[[0.25, 1.0], [0.0, 0.6]]]])
    p = torch.sigmoid(logits)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert float(create_loss("bce")(logits, target)) == pytest.approx(float(bce), abs=1e-6)
    dice = (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    assert float(create_loss("dice")(logits, target)) == pytest.approx(1 - float(dice), abs=1e-6)
    assert 0 < float(create_loss("focal")(logits, target)) < float(bce)  # finite, down-weighted
    assert float(create_loss("lovasz")(logits, target)) == pytest.approx(
        float(create_loss("lovasz")(logits, (target >= 0.5).float())))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        create_loss("bce")(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2))


def test_unknown_names_and_bad_weights() -> None:
    with pytest.raises(ConfigError, match=r"unknown loss 'dice2'.*bce, bce_dice"):
        create_loss("dice2")
    with pytest.raises(ConfigError, match=r"unknown loss 'jaccard'.*lovasz"):
        create_loss({"bce": 1, "jaccard": 1})
    with pytest.raises(ConfigError, match=">= 0"):
        create_loss({"bce": -1})
    with pytest.raises(ConfigError, match="must be a number"):
        create_loss({"bce": "a lot"})
    with pytest.raises(ConfigError, match="empty"):
        create_loss({})
    with pytest.raises(ConfigError, match="name or a mapping"):
        create_loss(3)  # type: ignore[arg-type]
