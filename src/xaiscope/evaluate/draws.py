"""Every random draw a metric makes, in one place.

Each function takes an explicit ``torch.Generator`` (on the device of the data) and a
shape, or an explicit seed; draws are made in a fixed order (outer loop first), so the
same seed gives the same numbers, and tests can substitute a function to replay another
library's draws.
"""

from __future__ import annotations

import numpy as np
import torch


def generator(seed: int, device: torch.device, stream: int = 0) -> torch.Generator:
    """A generator on ``device`` seeded from ``(seed, stream)``; streams keep chunks independent."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed) * 1_000_003 + int(stream))
    return g


def uniform(g: torch.Generator, shape, low: float, high: float, device) -> torch.Tensor:
    """Uniform draws in ``[low, high)``."""
    return torch.rand(shape, generator=g, device=device) * (high - low) + low


def normal(g: torch.Generator, shape, mean: float, std: float, device) -> torch.Tensor:
    """Gaussian draws."""
    return torch.randn(shape, generator=g, device=device) * std + mean


def subsets(g: torch.Generator, n: int, runs: int, n_features: int, size: int, device) -> torch.Tensor:
    """``[n, runs, size]`` feature indices, each row a subset drawn without replacement."""
    keys = torch.rand((n, runs, n_features), generator=g, device=device)
    return keys.topk(size, dim=-1).indices


def other_classes(seed: int, y: torch.Tensor, k: int) -> torch.Tensor:
    """For each target ``y_i`` one of the other ``k - 1`` classes, uniformly: ``r + (r >= y_i)``
    with ``r`` from NumPy's ``RandomState(seed).randint(0, k - 1)``, one draw per image in
    order (the stream Quantus' random_logit draws from for one batch)."""
    r = np.random.RandomState(seed).randint(0, k - 1, y.shape[0])
    r = torch.as_tensor(r, device=y.device).long()
    return r + (r >= y).long()
