"""The perturbation mechanism: order features, change them step by step, measure the model.

A metric built on it is a :class:`Perturbation` declaration of six pieces, consumed by
one generic :class:`PerturbationMetric`:

- **features** (a feature space): the units that are changed together: :class:`Pixels`,
  square :class:`Patches` (on a grid padded as Quantus pads it) or SLIC
  :class:`Superpixels`; on volumes ``[N, C, D, H, W]`` voxels, cubes on the same padded grid
  along D, H and W, and SLIC supervoxels. A unit covers all channels of its pixels and gets
  an attribution score (sum or mean of the map over its pixels).
- **order**: ``morf`` (most relevant first), ``lerf`` (least first), ``random`` (seeded)
  or ``raster`` (unit index order).
- **schedule**: which units are changed at step ``t``: fixed :class:`Fractions` of the
  units, :class:`Cumulative` prefixes of the order (``k`` units more per step),
  :class:`Windows` of it (the next ``k`` units alone), :class:`Percentages`,
  :class:`RandomSubsets` of the pixels, or a :class:`Single` step changing every unit.
  The schedule's step count is a :class:`~xaiscope.evaluate.cost.Count` of the units, so
  a metric's pass count and its formula follow from the declaration.
- **fill**: what replaces a changed pixel: ``black`` (the image's minimum, as Quantus),
  ``zero``, ``mean`` (the image's mean), ``blur`` (Gaussian blur of the image; of the
  volume along D, H and W),
  ``uniform`` (one U(low, high) value per perturbed image, as Quantus' "uniform"
  baseline), ``running_mean`` (the mean of the image as it is when a unit is removed) or
  ``noisy_linear`` imputation (ROAD; in volumes over the 26-neighbourhood). For insertion
  the roles swap: the chosen units show
  the image and the rest shows the fill.
- **output** read from the model: ``softmax`` / ``logit`` of the target ``f_y``,
  ``correct`` (the prediction is the target) or ``class`` (the predicted class); with
  ``base`` the unperturbed images are read too (one pass each).
- **summary** of the resulting :class:`Curve`: :func:`area`, :func:`correlation`,
  :func:`mean`, or the metric's own ``summarise``.

A metric is a :class:`PerturbationMetric` whose class attribute ``spec`` is its
:class:`Perturbation`; its ``cost`` (model passes per image) follows from it.

All (image, step) pairs are built lazily in chunks of ``batch_size`` perturbed images
and each chunk goes to the model through :func:`xaiscope.models.forward`; nothing
loops over images in Python and nothing leaves the device. Image shape is handled by
the feature space (which pixels form a unit) and the fill (what a changed pixel
becomes) only; both work on images and volumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from xaiscope import models
from xaiscope.errors import MetricError
from xaiscope.evaluate import draws, pairs, stats
from xaiscope.evaluate.base import ABS, NORM, OUTPUT_P, Metric, Param
from xaiscope.evaluate.cost import Count, D, Env, H, W, ceil, floor, number, per_dims, setting, smallest, symbol
from xaiscope.explain.base import mean_side

FILLS = ("black", "zero", "mean", "blur", "uniform")
ORDERS = ("morf", "lerf", "random")


def fill_param(default: str, extra: tuple = (), choices: tuple = FILLS) -> Param:
    """The ``fill`` setting: value for changed pixels."""
    return Param(default, str, "value for changed pixels", choices=choices + extra)


def auto_step(spatial: tuple[int, ...]) -> int:
    """``features_in_step`` ``auto``: ``max(1, ceil(P / 4096))`` for ``P`` pixels (voxels): one
    pixel per step up to 64x64 (Quantus' default), then as many as keep the steps at 4,096,
    so a 224x224 image (13 per step) costs what a 64x64 one does, not 12x more."""
    return max(1, math.ceil(math.prod(spatial) / 4096))


def auto_patch_size(side_at_64: int):
    """The ``patch_size`` ``auto`` rule of a metric whose patches have side ``side_at_64`` at
    64x64: ``max(side_at_64, ceil(side_at_64 * L / 64))`` with ``L`` the geometric mean of the
    sides, so the number of patches stays that of a 64x64 image (8 -> 28 at 224x224)."""

    def rule(spatial: tuple[int, ...], hparams: dict | None = None) -> int:
        return max(side_at_64, math.ceil(side_at_64 * mean_side(spatial) / 64))

    return rule


AUTO_DOC = "'auto' follows the image size (see auto_step / auto_patch_size)"
FEATURES_IN_STEP = Param(
    "auto", int, f"pixels changed per step; {AUTO_DOC}", low=1, auto=lambda spatial, hparams: auto_step(spatial)
)


def settings(first: dict, fill="black", output=OUTPUT_P, absolute=ABS, normalise=NORM) -> dict[str, Param]:
    """A metric's settings: ``first``, then ``fill`` (a default fill name or a Param), ``output``,
    ``abs`` and ``normalise``; None leaves one out."""
    rest = {"fill": fill_param(fill) if isinstance(fill, str) else fill, "output": output}
    rest.update({"abs": absolute, "normalise": normalise})
    return {**first, **{k: v for k, v in rest.items() if v is not None}}


# ----------------------------------------------------------------------- feature spaces
@dataclass
class Units:
    """A partition of each image's pixels into units.

    ``ids`` ``[N, P]`` unit of every pixel (``P`` = H*W, or D*H*W voxels); ``scores``
    ``[N, U]`` attribution per unit;
    ``count`` ``[N]`` real units per image (units ``>= count`` are padding).
    """

    ids: torch.Tensor
    scores: torch.Tensor
    count: torch.Tensor

    @property
    def size(self) -> int:
        return self.scores.shape[1]


def pixel_units(m: torch.Tensor) -> Units:
    """Every pixel (voxel) is a unit; score = map value. ``m``: ``[N, H, W]`` or ``[N, D, H, W]``."""
    n, hw = m.shape[0], m[0].numel()
    return Units(torch.arange(hw, device=m.device).expand(n, hw), m.flatten(1), torch.full((n,), hw, device=m.device))


def resolve(hp: dict, v):
    """A declared value: a string that names a setting reads it from ``hp``; anything else is the value."""
    return hp[v] if isinstance(v, str) and v in hp else v


def _count(v) -> Count:
    return setting(v) if isinstance(v, str) else number(v)


class Pixels:
    """Every pixel (voxel; all its channels) is a unit; its score is the map value."""

    def units(self, x: torch.Tensor, m: torch.Tensor, hp: dict) -> Units:
        return pixel_units(m)

    def count(self) -> Count:
        return per_dims(H * W, D * H * W)


def patch_grid(spatial: tuple[int, ...], p: int, device) -> tuple[torch.Tensor, int]:
    """Patch id ``[prod(spatial)]`` of each pixel (voxel) on a grid of ``p``-sided squares
    (cubes), padded like Quantus along every axis (floor/ceil halves), row-major; and the
    number of patches ``prod ceil(L / p)``."""
    ids = torch.zeros((), dtype=torch.long, device=device)
    for n in spatial:
        pad = (p - n % p) // 2 if n % p else 0
        ids = ids[..., None] * math.ceil(n / p) + (torch.arange(n, device=device) + pad) // p
    return ids.flatten(), math.prod(math.ceil(n / p) for n in spatial)


@dataclass(frozen=True)
class Patches:
    """Square patches (cubes in volumes) of side ``size`` (a setting or a number) on
    :func:`patch_grid`; score = sum of the map."""

    size: str | int = "patch_size"

    def units(self, x, m, hp) -> Units:
        p, n = resolve(hp, self.size), m.shape[0]
        if p == 1:
            return pixel_units(m)
        pid, count = patch_grid(tuple(m.shape[1:]), p, m.device)
        scores = torch.zeros(n, count, device=m.device, dtype=m.dtype).index_add_(1, pid, m.flatten(1))
        return Units(pid.expand(n, -1), scores, torch.full((n,), count, device=m.device))

    def count(self) -> Count:
        p = _count(self.size)
        return per_dims(ceil(H / p) * ceil(W / p), ceil(D / p) * ceil(H / p) * ceil(W / p))


@dataclass(frozen=True)
class Superpixels:
    """SLIC superpixels of each image (scikit-image, ``start_label=0``, on the CPU once per
    image); score = mean of the map over the superpixel. Volumes get the supervoxels the
    explainers use (:func:`xaiscope.explain.perturbation.superpixels`: SLIC with the voxel
    spacing of ``voxel_spacing``, a grid for a flat volume); images keep the SLIC call Quantus
    makes. SLIC scales each image to [0, 1] and segments an image as a volume of one slice, so
    a one-slice volume gets its image's superpixels (unless it is flat or a spacing is set)."""

    segments: str = "n_segments"
    compactness: str = "compactness"

    def units(self, x, m, hp) -> Units:
        n = x.shape[0]
        if x.dim() == 5:
            from xaiscope.explain.perturbation import segment_ahead

            seg, comp = hp[self.segments], hp[self.compactness]
            ids = torch.stack([s.flatten() for s in segment_ahead(x, seg, comp, workers=2)])
        else:
            from skimage.segmentation import slic

            kw = {"n_segments": hp[self.segments], "compactness": hp[self.compactness], "start_label": 0}
            imgs = x.detach().permute(0, 2, 3, 1).double().cpu().numpy()
            ids = torch.stack([torch.as_tensor(slic(imgs[i], **kw)).flatten() for i in range(n)])
        ids = ids.to(m.device).long()
        count = ids.amax(1) + 1
        flat = m.flatten(1).double()
        sums = torch.zeros(n, int(count.max()), device=m.device, dtype=torch.float64).scatter_add_(1, ids, flat)
        cnt = torch.zeros_like(sums).scatter_add_(1, ids, torch.ones_like(flat))
        return Units(ids, torch.where(cnt > 0, sums / cnt.clamp_min(1), torch.full_like(sums, -math.inf)), count)

    def count(self) -> Count:
        return symbol(
            f"K (superpixels, about {self.segments})",
            lambda env: env.hparams[self.segments],
            shaped=True,
            kind="about",
            vtext=f"K (supervoxels, about {self.segments})",
        )


def ranks(units: Units, order: str = "morf", generator: torch.Generator | None = None) -> torch.Tensor:
    """Position ``[N, U]`` of each unit in the order (padding units last): ``morf``, ``lerf``,
    ``random`` (keys from ``generator``) or ``raster`` (unit index)."""
    s = units.scores.double()
    pos = torch.arange(units.size, device=s.device).expand(s.shape[0], -1)
    if order == "raster":
        return pos
    pad = pos >= units.count.view(-1, 1)
    if order == "random":
        key = torch.where(pad, 2.0, torch.rand(s.shape, generator=generator, device=s.device))
    else:
        key = torch.where(pad, math.inf, -s if order == "morf" else s)
    return torch.empty_like(pos).scatter_(1, key.argsort(dim=1, stable=True), pos)


# ----------------------------------------------------------------------------- steps
class Steps:
    """Which pixels are changed at each of ``T`` steps; ``mask(n_idx, t_idx)`` -> ``[B, P]``;
    ``unit_sums()`` -> ``[N, T]`` attribution sum of each step's changed units."""

    T: int

    def mask(self, n_idx: torch.Tensor, t_idx: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def _per_image(v, n: int, device) -> torch.Tensor:
    v = torch.as_tensor(v, device=device).long()
    return v.expand(n, -1) if v.dim() <= 1 else v


class RankSteps(Steps):
    """Units with ``lo[n, t] <= rank < hi[n, t]`` are changed at step t (``lo``/``hi``: ``[T]`` or ``[N, T]``)."""

    def __init__(self, units: Units, rank: torch.Tensor, lo, hi):
        self.units, self.rank = units, rank
        self.pix_rank = rank.gather(1, units.ids)  # [N, HW]
        self.lo, self.hi = _per_image(lo, rank.shape[0], rank.device), _per_image(hi, rank.shape[0], rank.device)
        self.T = self.hi.shape[1]

    def mask(self, n_idx, t_idx):
        r = self.pix_rank[n_idx]
        return (r >= self.lo[n_idx, t_idx].unsqueeze(1)) & (r < self.hi[n_idx, t_idx].unsqueeze(1))

    def codes(self, h: torch.Tensor) -> torch.Tensor:
        """``[N, T, 2]`` sums of the pixel codes ``h`` ``[P, 2]`` over each step's changed pixels:
        differences of prefix sums of the unit codes along the order."""
        n, ids = self.rank.shape[0], self.units.ids
        idx = ids.unsqueeze(-1).expand(n, -1, 2)
        uh = torch.zeros(n, self.units.size, 2, dtype=torch.long, device=h.device)
        uh.scatter_add_(1, idx, h.unsqueeze(0).expand(n, -1, -1))
        us = uh.gather(1, self.rank.argsort(dim=1).unsqueeze(-1).expand(-1, -1, 2))
        cs = torch.cat([torch.zeros_like(us[:, :1]), us.cumsum(1)], 1)
        hi, lo = self.hi.unsqueeze(-1).expand(-1, -1, 2), self.lo.unsqueeze(-1).expand(-1, -1, 2)
        return cs.gather(1, hi) - cs.gather(1, lo)

    def unit_sums(self, lo=None, hi=None) -> torch.Tensor:
        """Sum of the unit scores with ``lo_t <= rank < hi_t`` for each step ``[N, T]``
        (default: the changed units of each step), by prefix sums over the unit order."""
        scores = self.units.scores.double()
        n = scores.shape[0]
        cs = torch.cat([torch.zeros_like(scores[:, :1]), scores.gather(1, self.rank.argsort(dim=1)).cumsum(1)], 1)
        lo = self.lo if lo is None else _per_image(lo, n, scores.device)
        hi = self.hi if hi is None else _per_image(hi, n, scores.device)
        return cs.gather(1, hi) - cs.gather(1, lo)


class SubsetSteps(Steps):
    """Step t changes the pixel subset ``idx[n, t]`` (``[N, T, S]`` pixel indices); ``scores``
    ``[N, P]`` are the pixels' attributions."""

    def __init__(self, idx: torch.Tensor, hw: int, scores: torch.Tensor):
        self.idx, self.hw, self.T, self.scores = idx, hw, idx.shape[1], scores

    def mask(self, n_idx, t_idx):
        sel = self.idx[n_idx, t_idx]
        return torch.zeros(sel.shape[0], self.hw, dtype=torch.bool, device=sel.device).scatter_(1, sel, True)

    def codes(self, h: torch.Tensor) -> torch.Tensor:
        """``[N, T, 2]`` sums of the pixel codes ``h`` over each subset."""
        return h[self.idx].sum(2)

    def unit_sums(self) -> torch.Tensor:
        n, t, s = self.idx.shape
        return self.scores.double().gather(1, self.idx.flatten(1)).view(n, t, s).sum(-1)


def cumulative(k: int, total: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` for steps of ``k`` units changed cumulatively: hi_t = min(t k, total), t = 1..T."""
    t = math.ceil(total / k) if limit is None else min(limit, math.ceil(total / k))
    hi = torch.clamp(torch.arange(1, t + 1) * k, max=total)
    return torch.zeros_like(hi), hi


# --------------------------------------------------------------------------- schedules
class Schedule:
    """Which units change at each step. ``count(u)`` is the number of steps T for ``u`` units
    (a :class:`Count`: the same expression gives T at run time and the pass formula)."""

    def count(self, u: Count) -> Count:  # pragma: no cover - abstract
        raise NotImplementedError

    def steps(self, units: Units, rank: torch.Tensor | None, hp: dict, x: torch.Tensor, name: str = "") -> Steps:
        t = int(self.count(number(units.size))(Env(hp)))
        return RankSteps(units, rank, *self.bounds(t, units.size, hp))

    def bounds(self, t: int, u: int, hp: dict) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """``(lo, hi)`` ``[T]``: units ranked ``lo_t <= rank < hi_t`` change at step t."""
        raise NotImplementedError

    def axis(self, t: int, hp: dict) -> torch.Tensor:
        """The curve's x values ``[T]`` (default: step numbers 1..T)."""
        return torch.arange(1, t + 1)

    def spacing(self, hp: dict) -> float:
        """Distance between two curve points for areas."""
        return 1.0

    def valid(self, units: Units, steps: Steps) -> torch.Tensor | None:
        """``[N, T]`` pairs worth a model pass (None: all)."""
        return None


@dataclass(frozen=True)
class Fractions(Schedule):
    """Fixed fractions ``t / T`` of the units, t = 0..T (``T`` = setting ``n``), cumulatively:
    the curve starts at the unchanged image."""

    n: str = "steps"

    def count(self, u):
        return setting(self.n) + 1

    def bounds(self, t, u, hp):
        hi = torch.round(self.axis(t, hp) * u).long()
        return torch.zeros_like(hi), hi

    def axis(self, t, hp):
        return torch.arange(t, dtype=torch.float64) / (t - 1)

    def spacing(self, hp):
        return 1.0 / hp[self.n]


@dataclass(frozen=True)
class Cumulative(Schedule):
    """``k`` more units per step, cumulatively: ``hi_t = min(t k, U)``, t = 1..T, with
    ``T = ceil(U / k)``, at most ``limit``, or ``floor(share U / k)``."""

    k: str | int = 1
    limit: str | None = None
    share: str | None = None

    def count(self, u):
        k = _count(self.k)
        if self.share is not None:
            return floor(setting(self.share) * u / k)
        t = u if self.k == 1 else ceil(u / k)
        return smallest(t, setting(self.limit)) if self.limit is not None else t

    def bounds(self, t, u, hp):
        return cumulative(resolve(hp, self.k), u, t)

    def valid(self, units, steps):
        # units beyond an image's own count (superpixels) are padding: steps that add none are skipped
        if bool((units.count == units.size).all()):
            return None
        return torch.cat([torch.zeros_like(steps.hi[:, :1]), steps.hi[:, :-1]], 1) < units.count.view(-1, 1)


@dataclass(frozen=True)
class Windows(Schedule):
    """The next ``k`` units alone at each step (not cumulative), T = ceil(U / k) windows, each
    repeated ``repeat`` times in a row."""

    k: str | int = 1
    repeat: str | None = None

    def count(self, u):
        t = ceil(u / _count(self.k))
        return t * setting(self.repeat) if self.repeat is not None else t

    def bounds(self, t, u, hp):
        k, r = resolve(hp, self.k), hp[self.repeat] if self.repeat is not None else 1
        _, hi = cumulative(k, u)
        return (hi - k).repeat_interleave(r), hi.repeat_interleave(r)


@dataclass(frozen=True)
class Percentages(Schedule):
    """The first ``p`` % of the units in order, for p = 1, 1 + s, ... < 100 (``s`` = setting ``step``)."""

    step: str = "percentage_step"

    def count(self, u):
        s = self.step
        return symbol(f"len(range(1, 100, {s}))", lambda env: len(range(1, 100, env.hparams[s])))

    def bounds(self, t, u, hp):
        hi = (u * self.axis(t, hp).double() / 100).long()
        return torch.zeros_like(hi), hi

    def axis(self, t, hp):
        return torch.arange(1, 100, hp[self.step])


@dataclass(frozen=True)
class RandomSubsets(Schedule):
    """Step t changes a random subset of ``size`` pixels, ``runs`` subsets per image, drawn
    from stream ``stream`` of the seed."""

    runs: str = "nr_runs"
    size: str = "subset_size"
    stream: int = 3

    def count(self, u):
        return setting(self.runs)

    def steps(self, units, rank, hp, x, name=""):
        s, hw = hp[self.size], units.size
        if s >= hw:
            what = "voxels of a volume" if x.dim() == 5 else "pixels of an image"
            raise MetricError(f"{name}: {self.size} {s} must be smaller than the {hw} {what}.")
        g = draws.generator(hp["seed"], x.device, self.stream)
        return SubsetSteps(draws.subsets(g, x.shape[0], hp[self.runs], hw, s, x.device), hw, units.scores)


class Single(Schedule):
    """One step that changes every unit."""

    def count(self, u):
        return number(1)

    def steps(self, units, rank, hp, x, name=""):
        return AllSteps(units)


class AllSteps(Steps):
    """One step that changes every pixel."""

    T = 1

    def __init__(self, units: Units):
        self.units = units

    def mask(self, n_idx, t_idx):
        return torch.ones(1, 1, dtype=torch.bool, device=n_idx.device).expand(n_idx.shape[0], self.units.ids.shape[1])

    def codes(self, h: torch.Tensor) -> torch.Tensor:
        """``[N, 1, 2]``: every pixel changes."""
        return h.sum(0).expand(self.units.ids.shape[0], 1, 2)

    def unit_sums(self) -> torch.Tensor:
        return self.units.scores.double().sum(1, keepdim=True)


# ----------------------------------------------------------------------------- fills
Fill = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _per_image_fill(base: torch.Tensor) -> Fill:
    return lambda xb, mb, n_idx, t_idx: base[n_idx]


def scalar_fill(values: torch.Tensor) -> Fill:
    """One fill value per (image, step): ``values`` ``[N, T]``."""
    return lambda xb, mb, n_idx, t_idx: values[n_idx, t_idx].view(-1, *[1] * (xb.dim() - 1)).to(xb.dtype).expand_as(xb)


def make_fill(
    kind: str, x: torch.Tensor, T: int, *, seed: int = 0, low: float = 0.0, high: float = 1.0, sigma: float = 5.0
) -> Fill:
    """Fill by name: ``black`` (the image's minimum), ``zero``, ``mean`` (the image's mean), ``blur``
    (:func:`blur` of ``sigma`` pixels) or ``uniform`` (one U(low, high) value per (image, step)
    from ``seed``); images ``[N, C, H, W]`` or volumes ``[N, C, D, H, W]``."""
    if kind == "uniform":
        g = draws.generator(seed, x.device, stream=11)
        return scalar_fill(draws.uniform(g, (T, x.shape[0]), low, high, x.device).t())
    if kind == "blur":
        return _keyed(_per_image_fill(blur(x, sigma)), ("blur", float(sigma)))
    if kind == "zero":
        return _keyed(_per_image_fill(torch.zeros_like(x)), ("zero",))
    flat = x.flatten(1)
    value = flat.amin(1) if kind == "black" else flat.mean(1)
    return _keyed(_per_image_fill(value.view(-1, *[1] * (x.dim() - 1)).expand_as(x)), (kind,))


def _keyed(fill: Fill, key: tuple) -> Fill:
    """``fill`` with ``key``: what it puts in a pixel depends only on the image and ``key``, so
    pairs with the same changed pixels and key are the same input (shared passes)."""
    fill.key = key  # type: ignore[attr-defined]
    return fill


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels, each channel on its own, reflect
    padding. Images: :func:`xaiscope.explain.references.gaussian_blur` (radius
    ``min(round(3 sigma), H - 1, W - 1)``). Volumes: the same 1-D kernel along W, H and D in
    turn, of radius ``min(round(3 sigma), L - 1)`` over the axes of length L > 1; an axis of
    length 1 is left as it is, so a volume of one slice is blurred as that image."""
    from xaiscope.explain.references import gaussian_blur

    if x.dim() == 4:
        return gaussian_blur(x, sigma)
    axes = [d for d in range(x.dim() - 1, 1, -1) if x.shape[d] > 1]
    if sigma <= 0 or not axes:
        return x.clone()
    radius = min([max(1, int(round(3 * sigma)))] + [x.shape[d] - 1 for d in axes])
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, -1)
    out = x
    for d in axes:
        v = out.movedim(d, -1)
        flat = torch.nn.functional.pad(v.reshape(-1, 1, v.shape[-1]), (radius, radius), mode="reflect")
        out = torch.nn.functional.conv1d(flat, k).view(v.shape).movedim(-1, d)
    return out.contiguous()


def running_mean_fill(x: torch.Tensor, steps: RankSteps) -> Fill:
    """At step t a newly changed unit takes the mean of the image after steps 1..t-1 and keeps
    it (Quantus' IROF fill, run one image at a time)."""
    n, ones = x.shape[0], [1] * (x.dim() - 2)
    cur, idx = x.clone(), torch.arange(n, device=x.device)
    mu_t = torch.empty(n, steps.T, device=x.device, dtype=torch.float64)
    for t in range(steps.T):
        mu = cur.flatten(1).mean(1)
        mu_t[:, t] = mu.double()
        new = steps.mask(idx, torch.full_like(idx, t)).view(n, 1, *x.shape[2:])
        if t > 0:
            new = new & ~steps.mask(idx, torch.full_like(idx, t - 1)).view(n, 1, *x.shape[2:])
        cur = torch.where(new, mu.view(-1, 1, *ones).to(cur.dtype), cur)
    per_pix = mu_t.gather(1, steps.pix_rank.clamp(max=steps.T - 1)).to(x.dtype)
    return _per_image_fill(per_pix.view(n, 1, *x.shape[2:]).expand_as(x))


def fill_for(kind: str, x: torch.Tensor, steps: Steps, hp: dict) -> Fill:
    """The fill named ``kind`` (:func:`make_fill`, ``running_mean`` or ``noisy_linear``) for these
    steps; its settings (``seed``, ``sigma``, ``noise``) come from ``hp``."""
    if kind == "noisy_linear":
        return noisy_linear_fill(x, hp["noise"], hp["seed"])
    if kind == "running_mean":
        return running_mean_fill(x, steps)
    return make_fill(kind, x, steps.T, seed=hp.get("seed", 0), sigma=hp.get("sigma", 5.0))


def neighbour_mean(v: torch.Tensor) -> torch.Tensor:
    """``K * v`` (zero padding) for ROAD's 3x3 stencil ``K = [[1, 2, 1], [2, 0, 2], [1, 2, 1]] / 12``
    on ``[B, 1, H, W]``, computed separably as ``([1, 2, 1]^T [1, 2, 1] * v - 4 v) / 12`` (four
    times faster than ``conv2d`` in float64 on the CPU). On volumes ``[B, 1, D, H, W]`` the
    same binomial weights in 3D: ``([1, 2, 1]^(x3) * v - 8 v) / 56`` over the 26 neighbours
    (face 4/56, edge 2/56, corner 1/56), whose middle slice is ROAD's stencil (times 24/56),
    so a volume of one slice is imputed as that image."""
    dims = v.dim() - 2
    acc = torch.nn.functional.pad(v, (1, 1) * dims)
    for d in range(v.dim() - 1, 1, -1):  # W first, then H (and D)
        n = acc.shape[d] - 2
        acc = acc.narrow(d, 0, n) + 2 * acc.narrow(d, 1, n) + acc.narrow(d, 2, n)
    centre = 2**dims
    return (acc - centre * v) / (4**dims - centre)


def noisy_linear_fill(x: torch.Tensor, noise: float, seed: int, tol: float = 1e-7, max_iter: int = 2000) -> Fill:
    """ROAD's noisy linear imputation (Rong et al. 2022) for the images ``x``: every removed
    pixel becomes the weighted mean of its 8 neighbours (weights 1/6 for the 4 direct and
    1/12 for the diagonal neighbours), solved jointly as a sparse linear system by batched
    conjugate gradients, plus Gaussian noise of standard deviation ``noise``. In volumes a
    removed voxel becomes the mean of its 26 neighbours with the same binomial weights
    (:func:`neighbour_mean`: 4 for the 6 face, 2 for the 12 edge and 1 for the 8 corner
    neighbours, relative); a one-slice volume gets its image's imputation. The noise is
    one field per image drawn from ``seed`` up front and shared by that image's steps, so
    scores do not depend on how (image, step) pairs are chunked.

    The system of image ``i`` is ``M (D - K * M) v = M K * (x (1 - M))`` (``K`` the 3x3
    (3x3x3) stencil, ``D = K * 1`` its row sums, ``M`` the removed pixels): symmetric positive
    definite on the removed pixels. CG stops per system at ``|r| <= tol |r_0|``; converged
    systems leave the active set, so small holes do not wait for large ones.
    """

    def fill(xb, mb, n_idx, t_idx):
        b, c, *sp = xb.shape
        xd = xb.double().reshape(b * c, 1, *sp)
        m = mb.double().expand(b, c, *sp).reshape(b * c, 1, *sp)
        conv = neighbour_mean
        deg = conv(torch.ones(1, 1, *sp, dtype=torch.float64, device=xb.device))
        out = _conjugate_gradients(
            lambda v, mm: (deg * v - conv(v * mm)) * mm, conv(xd * (1 - m)) * m, m, tol, max_iter
        )
        out = out.reshape(b, c, *sp)
        if field is not None:
            out = out + noise * field[n_idx]
        return out.to(xb.dtype)

    field = None
    if noise > 0:
        field = draws.normal(draws.generator(seed, x.device, stream=12), x.shape, 0.0, 1.0, x.device).double()

    return fill


def _conjugate_gradients(op, rhs: torch.Tensor, m: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """Solve ``op(v, m) = rhs`` for a batch of SPD systems ``[B, 1, *spatial]`` (``m`` the unknowns);
    each system stops at ``|r| <= tol |rhs|`` and is then dropped from the batch."""
    ones = [1] * (rhs.dim() - 1)
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
        alpha = (rs / (p * ap).flatten(1).sum(1)).view(-1, *ones)
        v = v + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).flatten(1).sum(1)
        p = r + (rs_new / rs).view(-1, *ones) * p
        rs = rs_new
    out[idx] = v
    return out


# ------------------------------------------------------------------------------ run
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
    base: bool = False,
):
    """Model values ``[N, T]`` after each step (NaN where ``valid`` [N, T] is False).

    Step masks mark changed pixels; deletion puts the fill there, insertion shows the
    image there and the fill elsewhere; ``output`` is read by
    :func:`~xaiscope.evaluate.pairs.pick` (softmax or logit of the target, ``correct``,
    ``class``, in float64). Pairs are
    sent to the model ``batch_size`` at a time (:func:`~xaiscope.evaluate.pairs.run_pairs`,
    which shares them across the metrics of a shared-passes block). With ``base`` the
    unperturbed images go first in the same calls and the result is ``(base [N], values [N, T])``.
    """
    n, T = x.shape[0], steps.T
    nb = n if base else 0
    vals = torch.full((nb + n * T,), float("nan"), device=x.device, dtype=torch.float64)
    pairs_ = torch.arange(n * T, device=x.device)
    if valid is not None:
        pairs_ = pairs_[valid.reshape(-1)]
    pairs_ = torch.cat([torch.arange(-nb, 0, device=x.device), pairs_])  # p < 0: image p + N unperturbed
    r = pairs.run_pairs(model, x, y, steps, fill, pairs_, nb, batch_size=batch_size, insertion=insertion)
    vals[pairs_ + nb] = pairs.pick(r, y[pairs.pair_images(pairs_, nb, T)], output)
    return (vals[:n], vals[n:].view(n, T)) if base else vals.view(n, T)


def unperturbed(model, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, output: str) -> torch.Tensor:
    """The readout ``[N]`` of the unperturbed images (shared like every pair): :func:`run`
    with no step."""
    return run(model, x, y, NoSteps(), _unchanged, batch_size=batch_size, output=output, base=True)[0]


class NoSteps(Steps):
    """No step: only unperturbed images are read."""

    T = 0


def _unchanged(xb, mb, n_idx, t_idx):  # pragma: no cover - never called: no step changes a pixel
    return xb


_unchanged.key = ("none",)


# ----------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Perturbation:
    """A metric's use of the mechanism (see the module docstring). ``order``, ``fill`` and
    ``output`` name a setting or give the value; ``stream`` seeds a random order; ``curve``
    is what :meth:`PerturbationMetric.curves` shows and ``summary`` reduces: the model
    ``values`` or their ``drop`` from the unperturbed image (``base``)."""

    features: Pixels | Patches | Superpixels | None = None
    order: str | None = "morf"
    schedule: Schedule | None = None
    fill: str = "fill"
    output: str = "output"
    base: bool = False
    insertion: bool = False
    curve: str = "values"
    summary: Callable[[Curve], torch.Tensor] | None = None
    stream: int = 0

    def cost(self) -> Count:
        """Model passes per image: the base pass plus one per step."""
        steps = self.schedule.count(self.features.count()) if self.schedule is not None else number(0)
        return (1 if self.base else 0) + steps


@dataclass
class Curve:
    """One evaluation of a declaration: the inputs, the steps, and what the model gave.

    ``base`` ``[N]``: the readout of the unperturbed images (with ``base``); ``values``
    ``[N, T]``: the readout after each step (NaN where ``valid`` is False); ``curve``: the
    declared curve (``values`` or ``base - values``); ``axis`` ``[T]``: its x values.
    """

    x: torch.Tensor
    a: torch.Tensor
    m: torch.Tensor
    base: torch.Tensor | None = None
    units: Units | None = None
    steps: Steps | None = None
    fill: Fill | None = None
    values: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    curve: torch.Tensor | None = None
    axis: torch.Tensor | None = None
    spacing: float = 1.0

    def drop(self) -> torch.Tensor:
        """``f(x) - f(x_t)`` ``[N, T]``."""
        return self.base.unsqueeze(1) - self.values


def area(c: Curve) -> torch.Tensor:
    """Trapezoid area under the curve (spacing of the schedule)."""
    return stats.trapz(c.curve, dx=c.spacing)


def correlation(c: Curve) -> torch.Tensor:
    """Pearson correlation over steps of the changed units' attribution sum and the output drop."""
    return stats.pearson(c.steps.unit_sums(), c.drop())


def mean(c: Curve) -> torch.Tensor:
    """Mean of the curve over steps."""
    return c.curve.mean(1)


class PerturbationMetric(Metric):
    """A metric declared by a :class:`Perturbation` (class attribute ``spec``): its score is
    ``summarise(evaluate(...))``. Subclasses change :meth:`summarise` or :meth:`run` where a
    metric differs."""

    needs = frozenset({"model"})
    spec: ClassVar[Perturbation] = Perturbation()

    def _score(self, model, x, y, a, mask, explainer):
        return self.summarise(self.evaluate(model, x, y, a))

    def summarise(self, c: Curve) -> torch.Tensor:
        return self.spec.summary(c)

    def evaluate(self, model, x, y, a) -> Curve:
        """Build the steps, run them through the model and collect the :class:`Curve`."""
        spec, hp = self.spec, self.hparams
        c, sched, output = Curve(x, a, self.map(a, dims=x.dim() - 2)), spec.schedule, resolve(hp, spec.output)
        if sched is None:  # no perturbation: the unperturbed images only
            if spec.base:
                c.base = unperturbed(model, x, y, batch_size=self.batch_size, output=output)
            return c
        c.units, order = spec.features.units(x, c.m, hp), resolve(hp, spec.order)
        g = draws.generator(hp.get("seed", 0), x.device, spec.stream) if order == "random" else None
        c.steps = sched.steps(c.units, ranks(c.units, order, g) if order else None, hp, x, self.name)
        c.fill = fill_for(resolve(hp, spec.fill), x, c.steps, hp)
        valid = sched.valid(c.units, c.steps)
        c.base, c.values, c.valid = self.run(model, x, y, c.steps, c.fill, output, valid, spec.base)
        c.curve = c.drop() if spec.curve == "drop" else c.values
        c.axis, c.spacing = sched.axis(c.steps.T, hp).to(x.device), sched.spacing(hp)
        return c

    def run(self, model, x, y, steps: Steps, fill: Fill, output: str, valid: torch.Tensor | None, base: bool):
        """``(base [N] or None, values [N, T], valid [N, T])``: the readout of the unperturbed
        images (with ``base``, in the same model calls) and of every (image, step) pair."""
        kw = {"batch_size": self.batch_size, "output": output, "insertion": self.spec.insertion}
        out = run(model, x, y, steps, fill, valid=valid, base=base, **kw)
        f0, v = out if base else (None, out)
        return f0, v, torch.ones_like(v, dtype=torch.bool) if valid is None else valid

    @property
    def has_curve(self) -> bool:
        """True when the declaration perturbs the images step by step (a schedule), so
        :meth:`curves` and :meth:`score_and_curves` have a curve to give."""
        return self.spec.schedule is not None

    def _checked_curve(self, model, x, y, a) -> Curve:
        if not self.has_curve:
            raise MetricError(f"{self.name} changes no pixels: it has no curve.")
        x, y, a, _ = self._check(model, x, y, a, None, None)
        with models.eval_mode(model):
            return self.evaluate(model, x, y, a)

    def curves(self, model, x, y, a, mask=None, explainer=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(axis [T], curve [N, T])``: the declared curve and its x values."""
        with self.sized(tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else None):
            c = self._checked_curve(model, x, y, a)
        return c.axis, c.curve

    def score_and_curves(self, model, x, y, a, mask=None, explainer=None):
        """``(scores [N], axis [T], curve [N, T])`` from one set of model passes (what
        ``__call__`` and :meth:`curves` give, without computing the curve twice)."""
        with self.sized(tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else None):
            c = self._checked_curve(model, x, y, a)
            return self.summarise(c).to(device=c.x.device, dtype=torch.float32), c.axis, c.curve
