"""Run an attribution function over image chunks so no model call exceeds ``batch_size``."""

from __future__ import annotations

from typing import Callable

import torch


def per_chunk(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    images: int,
) -> torch.Tensor:
    """``torch.cat([fn(x[s], y[s]) for s in chunks of `images` images])``."""
    images = max(1, int(images))
    if x.shape[0] <= images:
        return fn(x, y)
    return torch.cat([fn(x[i : i + images], y[i : i + images]) for i in range(0, x.shape[0], images)])


def split_samples(total: int, per_call: int) -> list[int]:
    """Split ``total`` samples into calls of at most ``per_call``."""
    per_call = max(1, per_call)
    return [min(per_call, total - i) for i in range(0, total, per_call)]
