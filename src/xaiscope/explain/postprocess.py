"""Turn raw attributions ``[N, C, H, W]`` into maps ``[N, H, W]`` (volumes: ``[N, C, D, H, W]``
into ``[N, D, H, W]``).

Display choices never change stored data: raw attributions are kept and these
functions make new tensors.

Pooling over channels: ``sum``, ``mean``, ``max_abs`` (the channel value with the
largest magnitude, sign kept), ``l2`` (sqrt of the sum of squares, >= 0), ``pos_sum``
(sum of the positive parts). Then ``|.|`` unless ``signed=True``. Then normalisation:

- ``none``
- ``max``: divide each map by its largest magnitude, so it lies in [-1, 1];
- ``dataset_max``: divide all maps by the largest magnitude over the whole set;
- ``p99``: divide each map by the 99th percentile of its magnitudes, clip to [-1, 1];
- ``dataset_p99``: the same with the percentile over the whole set;
- ``sum_to_one``: divide each map by the sum of its magnitudes.

All-zero maps stay zero (no division by zero).
"""

from __future__ import annotations

import torch

from xaiscope.errors import MethodError

POOLS = ("sum", "mean", "max_abs", "l2", "pos_sum")
NORMALISATIONS = ("none", "max", "dataset_max", "p99", "dataset_p99", "sum_to_one")


def pool(a: torch.Tensor, how: str = "sum", spatial_dims: int | None = None) -> torch.Tensor:
    """Pool channels of raw attributions ``[N, C, *spatial]`` into maps ``[N, *spatial]``; maps
    pass through. Without ``spatial_dims``, a 3-D tensor is a 2D map, a 4-D one raw 2D
    attributions and a 5-D one raw volume attributions; a volume map ``[N, D, H, W]`` needs
    ``spatial_dims=3`` to be told from raw 2D attributions."""
    if spatial_dims is None:
        spatial_dims = 3 if a.dim() == 5 else 2
    if not a.is_floating_point():
        a = a.float()  # integer or boolean attributions are numbers
    if a.dim() == spatial_dims + 1:
        return a
    if a.dim() != spatial_dims + 2:
        raise MethodError(
            f"Attributions must be [N, C, H, W] or [N, C, D, H, W] (maps one dim less); got shape {list(a.shape)}."
        )
    if a.shape[1] == 0:
        raise MethodError(f"Attributions of shape {list(a.shape)} have no channels to pool.")
    if how == "sum":
        return a.sum(dim=1)
    if how == "mean":
        return a.mean(dim=1)
    if how == "max_abs":
        idx = a.abs().argmax(dim=1, keepdim=True)
        return a.gather(1, idx).squeeze(1)
    if how == "l2":
        return a.pow(2).sum(dim=1).sqrt()
    if how == "pos_sum":
        return a.clamp_min(0).sum(dim=1)
    raise MethodError(f"Unknown pooling {how!r}; choose one of {', '.join(POOLS)}.")


def _safe_div(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    d = d.view(-1, *([1] * (a.dim() - 1))) if d.dim() > 0 else d
    return torch.where(d > 0, a / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(a))


def _quantile(v: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile along the last dim (``torch.quantile`` has an input-size limit; kthvalue has none)."""
    n = v.shape[-1]
    k = min(n, max(1, int(round(q * (n - 1))) + 1))
    return v.kthvalue(k, dim=-1).values


def normalise(m: torch.Tensor, how: str = "none") -> torch.Tensor:
    """Normalise maps ``[N, *spatial]`` (see the module docstring)."""
    mag = m.abs().flatten(1)
    if how == "none":
        return m.clone()
    if how == "max":
        return _safe_div(m, mag.max(dim=1).values)
    if how == "dataset_max":
        return _safe_div(m, mag.max())
    if how == "p99":
        return _safe_div(m, _quantile(mag, 0.99)).clamp(-1, 1)
    if how == "dataset_p99":
        return _safe_div(m, _quantile(mag.flatten(), 0.99)).clamp(-1, 1)
    if how == "sum_to_one":
        return _safe_div(m, mag.sum(dim=1))
    raise MethodError(f"Unknown normalisation {how!r}; choose one of {', '.join(NORMALISATIONS)}.")


def postprocess(
    a: torch.Tensor, pool: str = "sum", normalise: str = "none", signed: bool = False, spatial_dims: int | None = None
) -> torch.Tensor:
    """Maps ``[N, *spatial]`` from raw attributions: pool channels, take ``|.|`` unless signed,
    normalise (``spatial_dims`` as in :func:`pool`)."""
    m = globals()["pool"](a, pool, spatial_dims)
    if m.shape[1:].numel() == 0:
        raise MethodError(f"Attributions of shape {list(a.shape)} have no pixels; there is nothing to post-process.")
    if m.shape[0] == 0:  # no images (e.g. no overlays asked for)
        return m.clone()
    if not signed:
        m = m.abs()
    return globals()["normalise"](m, normalise)
