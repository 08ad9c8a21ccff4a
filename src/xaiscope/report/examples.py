"""Example panels of the report: a few images with every method's map, in four normalisations.

Maps are ``explain.postprocess(a, pool="sum")`` (channel sum, then ``|.|``) of the stored raw
attributions, normalised four ways:

- ``max``: per-image max, ``m / max(m)``;
- ``dataset_max``: ``m / max over all images of the run``;
- ``p99``: per-image 99th percentile, ``min(m / p99(m), 1)``;
- ``dataset_p99``: the same with the 99th percentile over the run's images.

The dataset scales (maximum, 99th percentile) are exact while the run has at most
``budget`` map pixels (2**24 by default, e.g. 1,000 images of 128 x 128); beyond that they
are taken over whole storage chunks of images at evenly spaced places that fit the
budget (plus the examples), so a report on a large run reads a bounded amount of data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xaiscope import explain

NORMALISATIONS = {
    "max": "per-image max",
    "dataset_max": "dataset max",
    "p99": "per-image p99",
    "dataset_p99": "dataset p99",
}


def pick_examples(y: torch.Tensor, n: int) -> list[int]:
    """``n`` example positions taken round-robin over classes (deterministic), as the runner's
    ``max_images`` selection does."""
    from xaiscope.run.context import stratified

    n = min(n, len(y))
    return stratified(y, n) if n > 0 else []


def scale_rows(n_images: int, pixels: int, picks: list[int], *, budget: int, block: int) -> list[int]:
    """The rows whose maps set the dataset-level scales: all rows when ``n_images * pixels``
    fits ``budget``, else whole blocks of ``block`` rows (storage chunks) at evenly spaced
    places that fit it, plus the picks."""
    if n_images * pixels <= budget:
        return list(range(n_images))
    n_blocks = -(-n_images // block)
    keep = max(1, budget // (pixels * block))
    starts = sorted({round(float(b)) * block for b in np.linspace(0, n_blocks - 1, min(keep, n_blocks))})
    rows = {r for s in starts for r in range(s, min(n_images, s + block))}
    return sorted(rows | set(picks))


def normalised_maps(
    read: Any, n_images: int, picks: list[int], *, budget: int = 2**24, block: int = 32, chunk_values: int = 2**22
) -> dict[str, np.ndarray]:
    """The maps of images ``picks`` in the four normalisations, each ``[len(picks), H, W]`` in [0, 1].

    ``read(index)`` returns raw attributions ``[n, C, H, W]`` of rows ``index`` (a slice) of
    one (model, method, setting). Rows are read in runs of consecutive rows (at most
    ``chunk_values`` values at a time), so memory stays bounded.
    """
    first = np.asarray(read(slice(0, 1)))
    _, c, h, w = first.shape
    rows = scale_rows(n_images, h * w, picks, budget=budget, block=block)
    step = max(1, chunk_values // max(1, c * h * w))
    runs: list[tuple[int, int]] = []
    for r in rows:  # consecutive rows -> one read, at most ``step`` rows long
        if runs and runs[-1][1] == r and r - runs[-1][0] < step:
            runs[-1] = (runs[-1][0], r + 1)
        else:
            runs.append((r, r + 1))
    parts = []
    for start, stop in runs:
        m = explain.postprocess(torch.from_numpy(np.asarray(read(slice(start, stop)))).float(), pool="sum")
        parts.append(torch.nan_to_num(m, nan=0.0))
    scale_set = torch.cat(parts)
    pos = [rows.index(p) for p in picks]
    ex = scale_set[pos]
    out = {
        "max": explain.normalise(ex, "max"),
        "dataset_max": explain.normalise(scale_set, "dataset_max")[pos],
        "p99": explain.normalise(ex, "p99"),
        "dataset_p99": explain.normalise(scale_set, "dataset_p99")[pos],
    }
    return {k: v.clamp(0, 1).numpy() for k, v in out.items()}
