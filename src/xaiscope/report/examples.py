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
    """The maps of images ``picks`` in the four normalisations, each ``[len(picks), *spatial]`` in [0, 1].

    ``read(index)`` returns raw attributions ``[n, C, H, W]`` (``[n, C, D, H, W]``) of rows
    ``index`` (a slice) of one (model, method, setting). Rows are read in runs of consecutive
    rows (at most ``chunk_values`` values at a time), so memory stays bounded.
    """
    first = np.asarray(read(slice(0, 1)))
    c, pixels = first.shape[1], int(np.prod(first.shape[2:]))
    rows = scale_rows(n_images, pixels, picks, budget=budget, block=block)
    step = max(1, chunk_values // max(1, c * pixels))
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


def volume_rows(
    x: torch.Tensor, masks: np.ndarray | None, maps: dict[str, np.ndarray], row_labels: list[str]
) -> tuple[list, list | None, dict[str, list], list[str]]:
    """Volume examples as rows of 2D views for the example grid: per volume, the axial,
    coronal and sagittal slices through one voxel and the maximum-intensity projection along
    D (:func:`~xaiscope.plotting.volume_views`), the same views for the image, the mask
    and every method, so methods compare on the same slices. The voxel is the centre of the
    expert mask's mass where there is one, else the maximum of the methods' mean map. Views
    are flipped to draw superior and anterior up.

    ``x`` ``[K, C, D, H, W]``, ``masks`` ``[K, D, H, W]`` or None, ``maps`` method ->
    ``[K, D, H, W]``; returns images, masks, maps and labels with 4 rows per volume."""
    from xaiscope.plotting import volume_views

    images, mask_rows, labels = [], [] if masks is not None else None, []
    out: dict[str, list] = {m: [] for m in maps}
    for k in range(x.shape[0]):
        mean = torch.as_tensor(np.mean([maps[m][k] for m in maps], axis=0)) if maps else torch.zeros(x.shape[2:])
        if masks is not None and masks[k].any():
            at = tuple(int(round(float(v))) for v in np.argwhere(masks[k]).mean(axis=0))
        else:
            at = tuple(int(v) for v in np.unravel_index(int(mean.argmax()), tuple(mean.shape)))
        mk = None if masks is None else torch.as_tensor(masks[k])
        views = volume_views(x[k], mean, mk, at=at)
        for name, img, _, mv in views:
            images.append(img.flip(-2))
            labels.append(f"{row_labels[k]}\n{name}")
            if mask_rows is not None:
                mask_rows.append(np.flipud(mv.numpy()))
        for m, arr in maps.items():
            out[m] += [np.flipud(v[2].numpy()) for v in volume_views(x[k], torch.as_tensor(arr[k]), at=at)]
    return images, mask_rows, out, labels
