"""Batched statistics on rows: correlations, ranks, SSIM, trapezoid areas, AUC.

Each function takes ``[N, K]`` tensors (one row per image) and returns ``[N]``. Rows
with zero variance give NaN, as SciPy does.

Why our own: SciPy (``spearmanr``, ``pearsonr``, ``entropy``), scikit-learn
(``roc_auc_score``, ``average_precision_score``) and scikit-image
(``structural_similarity``) compute one image at a time on NumPy arrays on the CPU;
these compute every row of a batch in one tensor operation on the maps' device, so a
metric on a GPU never copies its maps back. ``tests/test_stats_oracles.py`` checks that
each gives the library's number (ties, constant rows and small images included).
"""

from __future__ import annotations

import numpy as np
import torch


def argsort_rows(v: torch.Tensor, *, descending: bool = False, stable: bool = True) -> torch.Tensor:
    """Argsort along the last dim, as ``v.argsort(dim=-1, descending=..., stable=...)``.

    On the CPU NumPy sorts: for the small rows of per-image maps its unstable sort is about
    ten times faster than torch's (0.07 ms vs 0.7 ms for 64 x 256 values). Rows with NaN,
    and other devices, use torch (NaN order differs between the two when descending).
    """
    if v.device.type != "cpu" or v.requires_grad or v.dim() == 0:
        return v.argsort(dim=-1, descending=descending, stable=stable)
    a = v.detach().numpy()
    if descending and np.isnan(a).any():
        return v.argsort(dim=-1, descending=True, stable=stable)
    key = -a if descending else a
    idx = np.argsort(key, axis=-1, kind="quicksort")
    if stable:  # without ties every order is the stable one; with ties sort again, stably
        sv = np.take_along_axis(key, idx, axis=-1)
        if (sv[..., 1:] == sv[..., :-1]).any():
            idx = np.argsort(key, axis=-1, kind="stable")
    return torch.from_numpy(idx)


def sort_rows(v: torch.Tensor) -> torch.Tensor:
    """Values sorted ascending along the last dim (NumPy on the CPU, see :func:`argsort_rows`)."""
    if v.device.type != "cpu" or v.requires_grad:
        return v.sort(dim=-1).values
    return torch.from_numpy(np.sort(v.detach().numpy(), axis=-1))


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row pair (float64 inside; NaN for constant rows)."""
    a = a.double() - a.double().mean(dim=-1, keepdim=True)
    b = b.double() - b.double().mean(dim=-1, keepdim=True)
    num = (a * b).sum(-1)
    den = (a.pow(2).sum(-1) * b.pow(2).sum(-1)).sqrt()
    r = num / den
    r = torch.where(den > 0, r, torch.full_like(r, float("nan")))
    return r.clamp(-1, 1)


def rank(v: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dim, ties get their average rank (1-based, like scipy.stats.rankdata)."""
    v = v.double()
    order = argsort_rows(v, stable=False)  # ties get their average rank whatever their order
    sv = v.gather(-1, order)
    k = v.shape[-1]
    pos = torch.arange(1, k + 1, device=v.device, dtype=torch.float64).expand_as(sv)
    new = torch.ones_like(sv, dtype=torch.bool)
    new[..., 1:] = sv[..., 1:] != sv[..., :-1]
    if bool(new.all()):  # no ties (the usual case for real-valued maps): ranks are positions
        return torch.empty_like(sv).scatter_(-1, order, pos)
    gid = new.long().cumsum(-1) - 1
    sums = torch.zeros_like(sv).scatter_add_(-1, gid, pos)
    cnts = torch.zeros_like(sv).scatter_add_(-1, gid, torch.ones_like(pos))
    avg = sums.gather(-1, gid) / cnts.gather(-1, gid)
    return torch.empty_like(avg).scatter_(-1, order, avg)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row pair."""
    return pearson(rank(a), rank(b))


def agreement(label: torch.Tensor, close: torch.Tensor) -> torch.Tensor:
    """For each item i, the share of the items j with ``close[i, j]`` whose ``label`` equals
    ``label[i]`` (``label`` ``[N]``, ``close`` ``[N, N]``); 0 where none is close."""
    same = label.view(1, -1) == label.view(-1, 1)
    cnt = close.sum(-1)
    share = (same & close).sum(-1).double() / cnt.clamp_min(1)
    return torch.where(cnt > 0, share, torch.zeros_like(share))


def trapz(v: torch.Tensor, dx: float = 1.0) -> torch.Tensor:
    """Trapezoid area of each row with spacing ``dx`` (``np.trapezoid(v, dx=dx, axis=-1)``)."""
    v = v.double()
    if v.shape[-1] < 2:
        return torch.zeros(v.shape[:-1], dtype=v.dtype, device=v.device)
    return dx * (v[..., 1:] + v[..., :-1]).sum(-1) / 2


def auroc(score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of ``score`` for binary ``label`` per row (ties count 1/2); NaN
    when a row has only one class."""
    r = rank(score)
    lab = label.bool()
    pos = lab.sum(-1).double()
    neg = (~lab).sum(-1).double()
    u = (r * lab).sum(-1) - pos * (pos + 1) / 2
    out = u / (pos * neg)
    return torch.where((pos > 0) & (neg > 0), out, torch.full_like(out, float("nan")))


def average_precision(score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Average precision per row, as ``sklearn.metrics.average_precision_score`` (tied scores
    form one threshold); NaN when a row has no positive."""
    order = argsort_rows(score.double(), descending=True)
    s = score.double().gather(-1, order)
    lab = label.gather(-1, order).double()
    tp = lab.cumsum(-1)
    k = torch.arange(1, s.shape[-1] + 1, device=s.device, dtype=torch.float64)
    boundary = torch.ones_like(s, dtype=torch.bool)
    boundary[..., :-1] = s[..., 1:] != s[..., :-1]
    tp_b = torch.where(boundary, tp, torch.zeros_like(tp))
    prev = torch.cummax(tp_b, dim=-1).values
    prev = torch.cat([torch.zeros_like(prev[..., :1]), prev[..., :-1]], -1)
    pos = lab.sum(-1)
    ap = (boundary * (tp - prev) * (tp / k)).sum(-1) / pos
    return torch.where(pos > 0, ap, torch.full_like(ap, float("nan")))


def ssim(a: torch.Tensor, b: torch.Tensor, win_size: int = 7) -> torch.Tensor:
    """Mean structural similarity per pair, as ``skimage.metrics.structural_similarity`` with
    ``data_range`` = range of both inputs together, uniform ``win_size`` window, sample
    covariance and the border of (win_size-1)//2 cropped:
    ``mean ((2 u_a u_b + C1)(2 s_ab + C2)) / ((u_a^2 + u_b^2 + C1)(s_a^2 + s_b^2 + C2))``,
    ``C1 = (0.01 R)^2``, ``C2 = (0.03 R)^2``. ``a``, ``b``: ``[N, ...]`` maps of any number of
    dimensions (``[N, L]``: 1-D signals, as Quantus passes flattened maps; ``[N, H, W]``;
    volumes). NaN for maps smaller than the window (skimage refuses them).

    Kept instead of skimage (which it matches to 1e-15) because it scores a whole batch at
    once, on the data's device; the window means are separable running sums, so it is
    faster than skimage's per-image calls on the CPU too."""
    a, b = a.double(), b.double()
    dims = a.dim() - 1
    if min(a.shape[1:]) < win_size:
        return torch.full((a.shape[0],), float("nan"), dtype=torch.float64, device=a.device)
    both = torch.stack([a, b], 1).flatten(1)
    dr = (both.amax(1) - both.amin(1)).abs().view(-1, *[1] * dims)
    v = torch.stack([a, b, a * a, b * b, a * b])
    for d in range(2, dims + 2):  # window sums along each axis in turn
        n = v.shape[d] - win_size + 1
        acc = v.narrow(d, 0, n).clone()
        for i in range(1, win_size):
            acc += v.narrow(d, i, n)
        v = acc
    ua, ub, uaa, ubb, uab = v / win_size**dims
    cov_norm = win_size**dims / (win_size**dims - 1)
    va, vb, vab = cov_norm * (uaa - ua * ua), cov_norm * (ubb - ub * ub), cov_norm * (uab - ua * ub)
    c1, c2 = (0.01 * dr) ** 2, (0.03 * dr) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua**2 + ub**2 + c1) * (va + vb + c2))
    return s.flatten(1).mean(1)
