"""Example panels of the report: a few images with every method's map, in four normalisations.

Maps are ``explain.postprocess(a, pool="sum")`` (channel sum, then ``|.|``) of the stored raw
attributions, normalised four ways:

- ``max``: per-image max, ``m / max(m)``;
- ``dataset_max``: ``m / max over all images of the run``;
- ``p99``: per-image 99th percentile, ``min(m / p99(m), 1)``;
- ``dataset_p99``: the same with the 99th percentile over the run's images.

Attributions are read chunk by chunk, so memory stays bounded. The dataset maximum is
exact; the dataset 99th percentile is exact while the run has at most ``budget`` map
pixels (2**24 by default) and is otherwise taken over evenly spaced images (plus the
examples) that fit the budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xaiscope import explain

NORMALISATIONS = {"max": "per-image max", "dataset_max": "dataset max", "p99": "per-image p99",
                  "dataset_p99": "dataset p99"}


def pick_examples(y: torch.Tensor, n: int) -> list[int]:
    """``n`` example positions taken round-robin over classes (deterministic), as the runner's
    ``max_images`` selection does."""
    from xaiscope.pipeline.runner import _stratified

    n = min(n, len(y))
    return _stratified(y, n) if n > 0 else []


def normalised_maps(read: Any, n_images: int, picks: list[int], *, budget: int = 2**24,
                    chunk_values: int = 2**22) -> dict[str, np.ndarray]:
    """The maps of images ``picks`` in the four normalisations, each ``[len(picks), H, W]`` in [0, 1].

    ``read(index)`` returns raw attributions ``[n, C, H, W]`` of rows ``index`` (a slice or
    a list of positions) of one (model, method, setting).
    """
    first = np.asarray(read(slice(0, 1)))
    _, c, h, w = first.shape
    rows = max(1, chunk_values // max(1, c * h * w))
    if n_images * h * w <= budget:
        scale_idx = list(range(n_images))
    else:
        step = int(np.ceil(n_images * h * w / budget))
        scale_idx = sorted(set(range(0, n_images, step)) | set(picks))
    wanted = set(scale_idx)
    pooled: dict[int, torch.Tensor] = {}
    overall_max = torch.tensor(0.0)
    for start in range(0, n_images, rows):
        stop = min(n_images, start + rows)
        m = explain.postprocess(torch.from_numpy(np.asarray(read(slice(start, stop)))).float(), pool="sum")
        m = torch.nan_to_num(m, nan=0.0)
        overall_max = torch.maximum(overall_max, m.max())
        for j in range(start, stop):
            if j in wanted:
                pooled[j] = m[j - start]
    scale_set = torch.stack([pooled[j] for j in scale_idx])
    pos = [scale_idx.index(p) for p in picks]
    ex = scale_set[pos]
    out = {
        "max": explain.normalise(ex, "max"),
        "dataset_max": ex / overall_max if overall_max > 0 else torch.zeros_like(ex),
        "p99": explain.normalise(ex, "p99"),
        "dataset_p99": explain.normalise(scale_set, "dataset_p99")[pos],
    }
    return {k: v.clamp(0, 1).numpy() for k, v in out.items()}
