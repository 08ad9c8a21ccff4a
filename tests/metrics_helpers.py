"""Shared inputs for the metric tests: a tiny random-weight CNN, 8 grey images, saliency maps."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

if not hasattr(np, "trapz"):  # Quantus 0.6 calls np.trapz, removed in NumPy 2.4 (test code only)
    np.trapz = np.trapezoid

N, H, W, K = 8, 16, 16, 3


def tiny_cnn(seed: int = 0) -> nn.Module:
    """conv-relu-pool, conv-relu, GAP, linear; first module a Conv2d (Quantus' input shift needs it)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, K),
    ).eval()


def inputs(seed: int = 0):
    """``(model, x, y, a, mask)``: a = per-image max-normalised saliency maps [N, 1, H, W] (ties broken)."""
    from xaiscope import explain
    from xaiscope.evaluate.base import normalise_max

    net = tiny_cnn(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, 1, H, W, generator=g)
    y = torch.arange(N) % K
    sal = explain.get("saliency")(net, x, y)
    a = normalise_max(sal + 1e-6 * torch.rand(sal.shape, generator=g))
    mask = torch.zeros(N, H, W, dtype=torch.bool)
    for i in range(N):
        r, c = 2 + i % 5, 3 + (i * 3) % 7
        mask[i, r : r + 6, c : c + 5] = True
    return net, x, y, a, mask


def explain_func(normalise: bool = False):
    """A Quantus ``explain_func`` that returns our saliency maps [N, 1, H, W]."""
    from xaiscope import explain
    from xaiscope.evaluate.base import normalise_max

    ex = explain.get("saliency")

    def f(model, inputs, targets, **kwargs):
        xb = torch.as_tensor(np.asarray(inputs)).float()
        yb = torch.as_tensor(np.asarray(targets)).long()
        m = explain.pool(ex(model, xb, yb), "sum").unsqueeze(1)
        if normalise:
            m = normalise_max(m)
        return m.numpy()

    return f
