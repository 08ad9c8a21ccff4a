"""The faithfulness mechanism: order features, change them step by step, measure the model.

A faithfulness metric is a declaration of four pieces:

- **units**: the features that are changed together: pixels, square patches (on a grid
  padded as Quantus pads it), SLIC superpixels, or random subsets of pixels. A unit
  covers all channels of its pixels. Each unit gets an attribution score (sum or mean
  of the map over its pixels).
- **steps**: which units are changed at step ``t``: a prefix of the unit order
  (cumulative: units ranked ``< hi_t``), a window of it (``lo_t <= rank < hi_t``), or a
  random subset. ``order`` is ``morf`` (most relevant first), ``lerf`` (least first) or
  ``random`` (seeded).
- **fill**: what replaces a changed pixel: ``black`` (the image's minimum, as Quantus),
  ``zero``, ``mean`` (the image's mean), ``blur`` (Gaussian blur of the image),
  ``uniform`` (one U(low, high) value per perturbed image, as Quantus' "uniform"
  baseline), or noisy linear imputation (ROAD). For insertion the roles swap: the
  chosen units show the image and the rest shows the fill.
- **summary** of the resulting curve ``f_y(x_t)``: area, correlation, monotonicity,
  accuracy (declared in ``faithfulness.py``).

All (image, step) pairs are built lazily in chunks of ``batch_size`` perturbed images
and each chunk goes to the model through :func:`xaiscope.models.forward`; nothing
loops over images in Python and nothing leaves the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from xaiscope import models
from xaiscope.evaluate import draws
from xaiscope.models.forward import check_target_range, iter_chunks

FILLS = ("black", "zero", "mean", "blur", "uniform")


# ----------------------------------------------------------------------------- units
@dataclass
class Units:
    """A partition of each image's pixels into units.

    ``ids`` ``[N, H*W]`` unit of every pixel; ``scores`` ``[N, U]`` attribution per unit;
    ``count`` ``[N]`` real units per image (units ``>= count`` are padding).
    """

    ids: torch.Tensor
    scores: torch.Tensor
    count: torch.Tensor

    @property
    def size(self) -> int:
        return self.scores.shape[1]


def pixel_units(m: torch.Tensor) -> Units:
    """Every pixel is a unit; score = map value. ``m``: ``[N, H, W]``."""
    n = m.shape[0]
    hw = m[0].numel()
    ids = torch.arange(hw, device=m.device).expand(n, hw)
    return Units(ids, m.flatten(1), torch.full((n,), hw, device=m.device))


def patch_grid(h: int, w: int, p: int, device) -> tuple[torch.Tensor, int]:
    """Patch id of each pixel on a ``p x p`` grid padded like Quantus (floor/ceil halves)."""
    ph = (p - h % p) // 2 if h % p else 0
    pw = (p - w % p) // 2 if w % p else 0
    gh, gw = math.ceil(h / p), math.ceil(w / p)
    rows = (torch.arange(h, device=device) + ph) // p
    cols = (torch.arange(w, device=device) + pw) // p
    return (rows.view(-1, 1) * gw + cols.view(1, -1)).flatten(), gh * gw


def patch_units(m: torch.Tensor, p: int) -> Units:
    """Square patches of side ``p``; score = sum of the map over the patch."""
    n, h, w = m.shape
    pid, count = patch_grid(h, w, p, m.device)
    scores = torch.zeros(n, count, device=m.device, dtype=m.dtype).index_add_(1, pid, m.flatten(1))
    return Units(pid.expand(n, -1), scores, torch.full((n,), count, device=m.device))


def superpixel_units(x: torch.Tensor, m: torch.Tensor, n_segments: int = 100, compactness: float = 10.0) -> Units:
    """SLIC superpixels of each image (scikit-image, ``start_label=0``); score = mean of the map.

    Segmentation runs on the CPU once per image (no model calls)."""
    from skimage.segmentation import slic

    n = x.shape[0]
    segs = []
    for i in range(n):
        img = x[i].detach().permute(1, 2, 0).double().cpu().numpy()
        segs.append(torch.as_tensor(slic(img, n_segments=n_segments, compactness=compactness, start_label=0)).flatten())
    ids = torch.stack(segs).to(m.device).long()
    count = ids.amax(1) + 1
    u = int(count.max())
    flat = m.flatten(1).double()
    sums = torch.zeros(n, u, device=m.device, dtype=torch.float64).scatter_add_(1, ids, flat)
    cnt = torch.zeros(n, u, device=m.device, dtype=torch.float64).scatter_add_(1, ids, torch.ones_like(flat))
    scores = torch.where(cnt > 0, sums / cnt.clamp_min(1), torch.full_like(sums, -math.inf))
    return Units(ids, scores, count)


def ranks(units: Units, order: str = "morf", generator: torch.Generator | None = None) -> torch.Tensor:
    """Position ``[N, U]`` of each unit in the order (padding units last)."""
    s = units.scores.double()
    pad = torch.arange(units.size, device=s.device).view(1, -1) >= units.count.view(-1, 1)
    if order == "random":
        key = torch.rand(s.shape, generator=generator, device=s.device)
        key = torch.where(pad, torch.full_like(key, 2.0), key)
        idx = key.argsort(dim=1, stable=True)
    else:
        key = -s if order == "morf" else s
        key = torch.where(pad, torch.full_like(key, math.inf), key)
        idx = key.argsort(dim=1, stable=True)
    r = torch.empty_like(idx)
    r.scatter_(1, idx, torch.arange(units.size, device=s.device).expand_as(idx))
    return r


# ----------------------------------------------------------------------------- steps
class Steps:
    """Which pixels are changed at each of ``T`` steps; ``mask(n_idx, t_idx)`` -> ``[B, H*W]``."""

    T: int

    def mask(self, n_idx: torch.Tensor, t_idx: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class RankSteps(Steps):
    """Units with ``lo[n, t] <= rank < hi[n, t]`` are changed at step t (``lo``/``hi``: ``[T]`` or ``[N, T]``)."""

    def __init__(self, units: Units, rank: torch.Tensor, lo, hi):
        self.units, self.rank = units, rank
        self.pix_rank = rank.gather(1, units.ids)  # [N, HW]
        dev = rank.device
        n = rank.shape[0]
        self.lo = (
            torch.as_tensor(lo, device=dev).long().expand(n, -1)
            if torch.as_tensor(lo).dim() <= 1
            else torch.as_tensor(lo, device=dev).long()
        )
        self.hi = (
            torch.as_tensor(hi, device=dev).long().expand(n, -1)
            if torch.as_tensor(hi).dim() <= 1
            else torch.as_tensor(hi, device=dev).long()
        )
        self.T = self.hi.shape[1]

    def mask(self, n_idx, t_idx):
        r = self.pix_rank[n_idx]
        return (r >= self.lo[n_idx, t_idx].unsqueeze(1)) & (r < self.hi[n_idx, t_idx].unsqueeze(1))

    def unit_sums(self, lo=None, hi=None) -> torch.Tensor:
        """Sum of the unit scores with ``lo_t <= rank < hi_t`` for each step ``[N, T]``
        (default: the changed units of each step), by prefix sums over the unit order."""
        scores = self.units.scores.double()
        n = scores.shape[0]
        cs = torch.cat([torch.zeros_like(scores[:, :1]), scores.gather(1, self.rank.argsort(dim=1)).cumsum(1)], 1)
        lo = self.lo if lo is None else torch.as_tensor(lo, device=scores.device).long().expand(n, -1)
        hi = self.hi if hi is None else torch.as_tensor(hi, device=scores.device).long().expand(n, -1)
        return cs.gather(1, hi) - cs.gather(1, lo)


class SubsetSteps(Steps):
    """Step t changes the pixel subset ``idx[n, t]`` (``[N, T, S]`` pixel indices)."""

    def __init__(self, idx: torch.Tensor, hw: int):
        self.idx, self.hw, self.T = idx, hw, idx.shape[1]

    def mask(self, n_idx, t_idx):
        sel = self.idx[n_idx, t_idx]
        m = torch.zeros(sel.shape[0], self.hw, dtype=torch.bool, device=sel.device)
        return m.scatter_(1, sel, True)


def cumulative(k: int, total: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` for steps of ``k`` units changed cumulatively: hi_t = min(t k, total), t = 1..T."""
    t = math.ceil(total / k) if limit is None else min(limit, math.ceil(total / k))
    hi = torch.clamp(torch.arange(1, t + 1) * k, max=total)
    return torch.zeros_like(hi), hi


def windows(k: int, total: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` for steps changing the next ``k`` units only (not cumulative)."""
    lo, hi = cumulative(k, total, limit)
    return hi - k, hi


def pixel_steps(
    m: torch.Tensor, k: int, order: str = "morf", *, cumulative_steps: bool = True, limit: int | None = None
) -> RankSteps:
    """Steps over the pixels of maps ``m`` ``[N, H, W]`` in ``order`` (``morf`` / ``lerf``):
    ``k`` pixels per step, cumulatively (prefixes of the order) or one window at a time."""
    units = pixel_units(m)
    lo, hi = (cumulative if cumulative_steps else windows)(k, units.size, limit)
    return RankSteps(units, ranks(units, order), lo, hi)


# ----------------------------------------------------------------------------- fills
Fill = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def image_fill(kind: str, x: torch.Tensor, *, sigma: float = 5.0, value: float = 0.0) -> Fill:
    """A fill that depends on the image only: black/zero/mean/blur/constant."""
    if kind == "black":
        base = x.flatten(1).amin(1).view(-1, 1, 1, 1).expand_as(x)
    elif kind == "zero":
        base = torch.zeros_like(x)
    elif kind == "mean":
        base = x.flatten(1).mean(1).view(-1, 1, 1, 1).expand_as(x)
    elif kind == "blur":
        from xaiscope.explain.references import gaussian_blur

        base = gaussian_blur(x, sigma)
    elif kind == "constant":
        base = torch.full_like(x, value)
    else:  # pragma: no cover - validated by the metric's Param
        raise ValueError(kind)

    def fill(xb, mb, n_idx, t_idx):
        return base[n_idx]

    return fill


def scalar_fill(values: torch.Tensor) -> Fill:
    """One fill value per (image, step): ``values`` ``[N, T]``."""

    def fill(xb, mb, n_idx, t_idx):
        return values[n_idx, t_idx].view(-1, 1, 1, 1).to(xb.dtype).expand_as(xb)

    return fill


def make_fill(
    kind: str, x: torch.Tensor, T: int, *, seed: int = 0, low: float = 0.0, high: float = 1.0, sigma: float = 5.0
) -> Fill:
    """Fill by name; ``uniform`` draws one U(low, high) value per (image, step) from ``seed``."""
    if kind == "uniform":
        g = draws.generator(seed, x.device, stream=11)
        vals = draws.uniform(g, (T, x.shape[0]), low, high, x.device).t()
        return scalar_fill(vals)
    return image_fill(kind, x, sigma=sigma)


def neighbour_mean(v: torch.Tensor) -> torch.Tensor:
    """``K * v`` (zero padding) for ROAD's 3x3 stencil ``K = [[1, 2, 1], [2, 0, 2], [1, 2, 1]] / 12``,
    computed separably as ``([1, 2, 1]^T [1, 2, 1] * v - 4 v) / 12`` (four times faster than
    ``conv2d`` in float64 on the CPU)."""
    p = torch.nn.functional.pad(v, (1, 1, 1, 1))
    rows = p[..., :, :-2] + 2 * p[..., :, 1:-1] + p[..., :, 2:]
    return (rows[..., :-2, :] + 2 * rows[..., 1:-1, :] + rows[..., 2:, :] - 4 * v) / 12


def noisy_linear_fill(x: torch.Tensor, noise: float, seed: int, tol: float = 1e-7, max_iter: int = 2000) -> Fill:
    """ROAD's noisy linear imputation (Rong et al. 2022) for the images ``x``: every removed
    pixel becomes the weighted mean of its 8 neighbours (weights 1/6 for the 4 direct and
    1/12 for the diagonal neighbours), solved jointly as a sparse linear system by batched
    conjugate gradients, plus Gaussian noise of standard deviation ``noise``. The noise is
    one field per image drawn from ``seed`` up front and shared by that image's steps, so
    scores do not depend on how (image, step) pairs are chunked.

    The system of image ``i`` is ``M (D - K * M) v = M K * (x (1 - M))`` (``K`` the 3x3
    stencil, ``D = K * 1`` its row sums, ``M`` the removed pixels): symmetric positive
    definite on the removed pixels. CG stops per system at ``|r| <= tol |r_0|``; converged
    systems leave the active set, so small holes do not wait for large ones.
    """

    def fill(xb, mb, n_idx, t_idx):
        b, c, h, w = xb.shape
        xd = xb.double().reshape(b * c, 1, h, w)
        m = mb.double().expand(b, c, h, w).reshape(b * c, 1, h, w)
        conv = neighbour_mean
        deg = conv(torch.ones(1, 1, h, w, dtype=torch.float64, device=xb.device))
        out = _conjugate_gradients(
            lambda v, mm: (deg * v - conv(v * mm)) * mm, conv(xd * (1 - m)) * m, m, tol, max_iter
        )
        out = out.reshape(b, c, h, w)
        if field is not None:
            out = out + noise * field[n_idx]
        return out.to(xb.dtype)

    field = None
    if noise > 0:
        field = draws.normal(draws.generator(seed, x.device, stream=12), x.shape, 0.0, 1.0, x.device).double()

    return fill


def _conjugate_gradients(op, rhs: torch.Tensor, m: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """Solve ``op(v, m) = rhs`` for a batch of SPD systems ``[B, 1, H, W]`` (``m`` the unknowns);
    each system stops at ``|r| <= tol |rhs|`` and is then dropped from the batch."""
    out = torch.zeros_like(rhs)
    idx = torch.arange(rhs.shape[0], device=rhs.device)
    v, r, p = torch.zeros_like(rhs), rhs.clone(), rhs.clone()
    rs = (r * r).flatten(1).sum(1)
    stop = tol * tol * rs
    for _ in range(max_iter):
        done = rs <= stop
        if bool(done.any()):
            out[idx[done]] = v[done]
            keep = ~done
            if not bool(keep.any()):
                return out
            idx, v, r, p, m, rs, stop = idx[keep], v[keep], r[keep], p[keep], m[keep], rs[keep], stop[keep]
        ap = op(p, m)
        alpha = (rs / (p * ap).flatten(1).sum(1)).view(-1, 1, 1, 1)
        v = v + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).flatten(1).sum(1)
        p = r + (rs_new / rs).view(-1, 1, 1, 1) * p
        rs = rs_new
    out[idx] = v
    return out


# ------------------------------------------------------------------------------ run
def target_score(out: torch.Tensor, y: torch.Tensor, output: str) -> torch.Tensor:
    """``f_y`` from model outputs: softmax probability or logit."""
    if output == "softmax":
        out = out.softmax(dim=1)
    return out.gather(1, y.view(-1, 1)).squeeze(1)


def run(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: Steps,
    fill: Fill,
    *,
    batch_size: int,
    output: str = "softmax",
    insertion: bool = False,
    valid: torch.Tensor | None = None,
    reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Model values ``[N, T]`` after each step (NaN where ``valid`` [N, T] is False).

    Step masks mark changed pixels; deletion puts the fill there, insertion shows the
    image there and the fill elsewhere. ``reduce(outputs, y)`` -> ``[B]`` (default
    :func:`target_score`). Pairs are sent to the model ``batch_size`` at a time.
    """
    n, c, h, w = x.shape
    T = steps.T
    vals = torch.full((n * T,), float("nan"), device=x.device, dtype=torch.float64)
    pairs = torch.arange(n * T, device=x.device)
    if valid is not None:
        pairs = pairs[valid.reshape(-1)]
    red = reduce or (lambda out, yb: target_score(out, yb, output))
    for sl in iter_chunks(pairs.numel(), batch_size):
        p = pairs[sl]
        n_idx, t_idx = p // T, p % T
        xb = x[n_idx]
        mb = steps.mask(n_idx, t_idx).view(-1, 1, h, w)
        fb = fill(xb, mb, n_idx, t_idx)
        xp = torch.where(mb, xb, fb) if insertion else torch.where(mb, fb, xb)
        out = models.forward(model, xp, batch_size=batch_size)
        if sl.start == 0:  # once per run: reductions that compare with y (ROAD) do not index by it
            check_target_range(y, out.shape[1])
        vals[p] = red(out, y[n_idx]).double()
    return vals.view(n, T)


def base_scores(model, x, y, *, batch_size: int, output: str = "softmax") -> torch.Tensor:
    """``f_y(x)`` of the unperturbed images (one pass each)."""
    return target_score(models.forward(model, x, batch_size=batch_size), y, output).double()
