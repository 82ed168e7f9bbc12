"""The mask head's starting point: its bias set to the foreground prior (RetinaNet, Lin et al. 2017).

A freshly built network's last 1x1 convolution has a bias near 0, so it starts at p = 0.5 on every
pixel while well under 1 % of a chest radiograph's pixels are pneumothorax. The first optimizer steps
then spend themselves driving every logit down at once: with BCE's large gradient on the many
background pixels and Dice's reward for an exactly-empty prediction on empty images, a from-scratch
network can settle in "predict nothing" and never leave it (pneumoseg saw it with some seeds of the
demo recipe; docs/benchmarks.md, "Learns with every seed"). Starting the bias at
``log(pi / (1 - pi))`` makes the initial prediction the prior ``pi`` instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["init_output_bias", "mask_head"]


def mask_head(net: nn.Module) -> nn.Conv2d:
    """The convolution producing the mask logits: the last ``Conv2d`` of ``net.segmentation_head``
    (smp) or ``net.head`` (pneumoseg's U-Nets), else the last ``Conv2d`` of the network."""
    for name in ("segmentation_head", "head"):
        part = getattr(net, name, None)
        if isinstance(part, nn.Module):
            convs = [m for m in part.modules() if isinstance(m, nn.Conv2d)]
            if convs:
                return convs[-1]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(net).__name__} has no Conv2d: cannot find its mask head")
    return convs[-1]


@torch.no_grad()
def init_output_bias(net: nn.Module, prior: float) -> nn.Conv2d:
    """Set the mask head's bias to ``log(prior / (1 - prior))`` (a bias is added if it has none).

    ``prior`` in (0, 1): the initial foreground probability of every pixel. Returns the head.
    """
    if not 0 < prior < 1:
        raise ValueError(f"output prior must be in (0, 1), got {prior}")
    head = mask_head(net)
    if head.bias is None:
        head.bias = nn.Parameter(torch.zeros(head.out_channels, device=head.weight.device,
                                             dtype=head.weight.dtype))
    head.bias.fill_(math.log(prior / (1 - prior)))
    return head
