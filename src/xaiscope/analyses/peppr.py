"""PEPPR: progressive erasing and progressive restoration with one global pixel order.

For label ``l`` one order of units (pixels, or ``K x K`` patches; voxels or ``K x K x K`` cubes for volumes) is taken from a global
map, most important first, and applied to every image of the set. For each fraction
``p`` in ``fractions`` (default 0, 0.05, ..., 1) with ``k(p) = round(p * U)`` of the
``U`` units:

- erasing: the top ``k(p)`` units of every image are set to the fill value;
- restoration: every image starts fully filled and its top ``k(p)`` units are put back.

After each step the model's performance on the whole set is measured: AUROC of
``f_l = softmax(model(x))_l`` as a one-vs-rest score for label ``l`` (Mann-Whitney with
average ranks for ties) and accuracy (argmax vs true label). Each curve is summarised
by its normalised area ``A = trapz(curve, fractions) / (fractions[-1] - fractions[0])``
(the plain trapezoid area for the default 0..1 range).

Reference orders: ``random_orders`` random orders (seeds ``seed, seed+1, ...``; mean and
SD of curves and areas), the reversed order (least important first) and, when given, the
other labels' global maps. Summary score (higher = more faithful)::

    S = [A_restore(map) - A_erase(map)] - mean_r [A_restore(random_r) - A_erase(random_r)]

A faithful map erases performance fast (small ``A_erase``) and restores it fast (large
``A_restore``), so ``S > 0``; a map no better than chance gives ``S ~ 0``. Units with equal
map values are ordered by a seeded random permutation (not by index).

Passes: the fully kept and the fully filled set do not depend on the order and are
evaluated once (``2 N``); every order costs ``2 (T - 2) N`` more for the ``T - 2`` inner
fractions of the default schedule (fractions equal to 0 or 1 are not re-evaluated).
Total for ``O`` orders: ``2 N + O * 2 * T_inner * N`` with ``O = 2 + random_orders +
len(other_maps)``. All (step, image) pairs of all orders are sent to the model in
batches of ``batch_size`` through :func:`xaiscope.models.forward`, so one call mixes
several steps when the set is small.

Reference: Hägele et al.-style progressive erasing/restoration of global relevance;
deletion/insertion (Petsiuk et al., 2018) with one order shared by all images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from xaiscope import models
from xaiscope.analyses.units import parse_unit
from xaiscope.data import Dataset, open_source
from xaiscope.data.summaries import Moments
from xaiscope.errors import ConfigError, DataError
from xaiscope.evaluate import stats
from xaiscope.explain.references import gaussian_blur
from xaiscope.models.state import eval_mode, model_device

FILLS = ("black", "mean", "blur")
METRICS = ("auroc", "accuracy")
CURVES = ("erasing", "restoration")
TIE_SALT = 7919  # seed offset of the tie-breaking permutation (kept apart from the random orders' seeds)


def default_fractions(step: float = 0.05) -> torch.Tensor:
    """``0, step, ..., 1`` (float64)."""
    n = int(round(1.0 / step))
    if n < 1 or abs(n * step - 1.0) > 1e-9:
        raise ConfigError(f"The fraction step must divide 1 (e.g. 0.05, 0.1), got {step}.")
    return torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)


def fill_images(ds: Dataset, fill: str = "black", *, sigma: float = 4.0) -> torch.Tensor:
    """The filled version of every image, broadcastable to ``ds.x`` (:func:`fill_step` of all images)."""
    mean = ds.fill_value().unsqueeze(0) if fill == "mean" else None
    return fill_step(ds.x, fill, norm=(ds.mean, ds.std), channel_mean=mean, sigma=sigma)


def fill_step(x: torch.Tensor, fill: str, *, norm=(None, None), channel_mean=None, sigma: float = 4.0) -> torch.Tensor:
    """The filled version of the images ``x``, broadcastable to ``x``.

    ``black``: raw intensity 0 in the stored scale (``-mean/std`` for data normalised with
    ``norm = (mean, std)``, 0 otherwise); ``mean``: ``channel_mean`` ``[1, C, 1, 1]``, the
    dataset's per-channel mean; ``blur``: each image blurred with a Gaussian of ``sigma``
    pixels.
    """
    c, ones = x.shape[1], [1] * (x.dim() - 2)
    if fill == "black":
        if norm[0] is not None and norm[1] is not None:
            mean = torch.as_tensor(norm[0], dtype=x.dtype, device=x.device).view(1, -1, *ones)
            std = torch.as_tensor(norm[1], dtype=x.dtype, device=x.device).view(1, -1, *ones)
            return ((0.0 - mean) / std).expand(1, c, *ones).contiguous()
        return torch.zeros(1, c, *ones, dtype=x.dtype, device=x.device)
    if fill == "mean":
        return torch.as_tensor(channel_mean, dtype=x.dtype).to(x.device).view(1, c, *ones)
    if fill == "blur":
        return gaussian_blur(x, sigma)
    raise ConfigError(f"Unknown fill {fill!r}; choose one of {', '.join(FILLS)}.")


def channel_mean(src, positions, step: int = 256) -> torch.Tensor:
    """Per-channel mean ``[1, C, 1, 1]`` (``[1, C, 1, 1, 1]`` for volumes) of the images at
    ``positions`` of ``src`` (one pass)."""
    mom = Moments(src.shape[0])
    for b in src.batches(step, positions):
        mom.update(b.x.numpy())
    return torch.tensor(mom.mean, dtype=torch.float32).view(1, -1, *([1] * (len(src.shape) - 1)))


def unit_scores(order_map: torch.Tensor, k: int) -> torch.Tensor:
    """Scores of the ``K x K`` units (``K x K x K`` cubes for a volume map; sum of the map
    inside each; edge units may be smaller), flattened row-major."""
    if k == 1:
        return order_map.flatten()
    dims = order_map.dim()
    pad = [p for n in reversed(order_map.shape) for p in (0, (-n) % k)]
    padded = torch.nn.functional.pad(order_map.view(1, 1, *order_map.shape), pad)
    pool = torch.nn.functional.avg_pool2d if dims == 2 else torch.nn.functional.avg_pool3d
    return pool(padded, k).flatten() * (k**dims)


def n_units(shape: tuple[int, ...], k: int) -> int:
    """Units of side ``k`` covering ``shape`` (the last ones clipped)."""
    return math.prod(-(-n // k) for n in shape)


def unit_masks(order: torch.Tensor, counts: torch.Tensor, shape: tuple[int, ...], k: int) -> torch.Tensor:
    """Bool masks ``[T, *shape]``: True on the first ``counts[t]`` units of ``order``."""
    grid = [-(-n // k) for n in shape]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    m = rank.view(1, -1) < counts.view(-1, 1).to(order.device)  # [T, U]
    m = m.view(-1, *grid)
    if k > 1:
        for axis, n in enumerate(shape, start=1):
            m = m.repeat_interleave(k, axis).narrow(axis, 0, n)
    return m


def descending_order(scores: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Unit indices from most to least important; ties are broken in a seeded random order.

    Ties carry no information (e.g. the zero background of a gradient map), so breaking
    them by index would favour whichever part of the image comes first in memory.
    """
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(scores.numel(), generator=g).to(scores.device)
    idx = torch.sort(scores.double()[perm], descending=True, stable=True).indices
    return perm[idx]


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Row-wise AUROC of ``scores`` ``[T, N]`` for the bool labels ``positive`` ``[N]`` (average ranks for ties)."""
    return stats.auroc(scores, positive.to(scores.device).expand_as(scores))


def area(curve: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Normalised trapezoid area over ``fractions`` along the last dim."""
    f = fractions.to(curve.device, torch.float64)
    return torch.trapezoid(curve.double(), f, dim=-1) / (f[-1] - f[0])


@dataclass
class PepprResult:
    """Curves, areas and the summary score of :func:`peppr`.

    ``curves[order][curve][metric]`` is a ``[T]`` tensor (``order`` in ``orders``: "map",
    "reversed", "random:<seed>", "other:<label>"; ``curve`` "erasing" / "restoration";
    ``metric`` "auroc" / "accuracy"). ``areas`` has the same keys with floats.
    ``random`` holds ``mean`` and ``sd`` (population, ddof=0) curves and areas over the
    random orders. ``score[metric]`` is the summary score ``S``.
    """

    label: int
    fractions: torch.Tensor
    orders: list[str]
    curves: dict
    areas: dict
    random: dict
    score: dict
    passes: int
    settings: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        """Tidy rows ``(label, order, curve, metric, fraction, value)``."""
        rows = []
        for order in self.orders:
            for curve in CURVES:
                for metric in METRICS:
                    for f, v in zip(
                        [round(f, 10) for f in self.fractions.tolist()], self.curves[order][curve][metric].tolist()
                    ):
                        rows.append(
                            {
                                "label": self.label,
                                "order": order,
                                "curve": curve,
                                "metric": metric,
                                "fraction": f,
                                "value": v,
                            }
                        )
        for stat in ("mean", "sd"):
            for curve in CURVES:
                for metric in METRICS:
                    for f, v in zip(
                        [round(f, 10) for f in self.fractions.tolist()],
                        self.random["curves"][stat][curve][metric].tolist(),
                    ):
                        rows.append(
                            {
                                "label": self.label,
                                "order": f"random_{stat}",
                                "curve": curve,
                                "metric": metric,
                                "fraction": f,
                                "value": v,
                            }
                        )
        return rows

    def summary(self) -> list[dict]:
        """One row per order: areas of both curves for both metrics, plus the random mean/SD rows."""
        rows = []
        for order in self.orders:
            row = {"label": self.label, "order": order}
            for curve in CURVES:
                for metric in METRICS:
                    row[f"area_{curve}_{metric}"] = self.areas[order][curve][metric]
            for metric in METRICS:
                row[f"gap_{metric}"] = row[f"area_restoration_{metric}"] - row[f"area_erasing_{metric}"]
                row[f"score_{metric}"] = row[f"gap_{metric}"] - self.random["gap"]["mean"][metric]
            rows.append(row)
        for stat in ("mean", "sd"):
            row = {"label": self.label, "order": f"random_{stat}"}
            for curve in CURVES:
                for metric in METRICS:
                    row[f"area_{curve}_{metric}"] = self.random["areas"][stat][curve][metric]
            for metric in METRICS:
                row[f"gap_{metric}"] = self.random["gap"][stat][metric]
            rows.append(row)
        return rows


def _evaluate(model, steps, n, masks_by_order, label, batch_size, dev, n_curves=2):
    """Softmax ``f_label`` and correctness ``[O, n_curves, T, N]`` for all orders/curves/steps.

    ``steps`` yields ``(offset, x, y, fill)`` for consecutive images of the set (``N`` in
    all). Within one step, row ``r`` of the flattened work list is (order, curve, step,
    image) in C order, cut into model calls of ``batch_size`` images, so a call mixes steps.
    """
    o_count, t_count = len(masks_by_order), masks_by_order[0].shape[0]
    shape = (o_count, n_curves, t_count, n)
    score = torch.empty(shape, dtype=torch.float64, device=dev)
    correct = torch.empty(shape, dtype=torch.float64, device=dev)
    masks = torch.stack(masks_by_order)  # [O, T, *spatial]
    for offset, x, y, fill in steps:
        nb = x.shape[0]
        total = o_count * n_curves * t_count * nb
        per_image_fill = fill.shape[0] > 1
        s_flat = torch.empty(total, dtype=torch.float64, device=dev)
        c_flat = torch.empty(total, dtype=torch.float64, device=dev)
        for start in range(0, total, batch_size):
            idx = torch.arange(start, min(total, start + batch_size), device=dev)
            img = idx % nb
            step = (idx // nb) % t_count
            curve = (idx // (nb * t_count)) % n_curves
            order = idx // (nb * t_count * n_curves)
            m = masks[order, step].unsqueeze(1)  # [B, 1, *spatial]
            # erasing: fill where m; restoration: keep where m
            keep_x = torch.where(curve.view(-1, *([1] * (m.dim() - 1))) == 0, ~m, m)
            xb = torch.where(keep_x, x[img], fill[img] if per_image_fill else fill)
            prob = models.forward(model, xb, batch_size=batch_size).softmax(dim=1).double()
            s_flat[idx] = prob[:, label]
            c_flat[idx] = (prob.argmax(dim=1) == y[img]).double()
        score[..., offset : offset + nb] = s_flat.view(o_count, n_curves, t_count, nb)
        correct[..., offset : offset + nb] = c_flat.view(o_count, n_curves, t_count, nb)
    return score, correct


def peppr(
    model: torch.nn.Module,
    dataset: Dataset,
    order_map: torch.Tensor,
    label: int,
    *,
    fractions: torch.Tensor | list[float] | None = None,
    fill: str = "black",
    unit: str = "pixel",
    random_orders: int = 5,
    seed: int = 0,
    other_maps: dict[int, torch.Tensor] | None = None,
    batch_size: int = 256,
    blur_sigma: float = 4.0,
    step_images: int = 256,
) -> PepprResult:
    """Progressive erasing and restoration curves for ``label`` ordered by ``order_map`` (module docstring).

    Parameters
    ----------
    model : torch.nn.Module
    dataset : Dataset or Source (:func:`xaiscope.data.open_source`), aligned images with true
        labels (both classes must occur for AUROC); read ``step_images`` at a time, so the
        images need not fit in memory
    order_map : Tensor ``[H, W]`` (``[D, H, W]``), the global map ``G_label`` (higher = more important)
    label : int, the class ``l`` scored one-vs-rest with ``f_l``
    fractions : increasing values in [0, 1], default 0, 0.05, ..., 1
    fill : "black" (default) | "mean" | "blur"
    unit : "pixel" (default) | "patch:K"
    random_orders : int, default 5, random orders (seeds ``seed .. seed+R-1``)
    seed : int, default 0
    other_maps : dict label -> ``[H, W]``, other labels' global maps as reference orders
    batch_size : int, default 256, images per model call
    blur_sigma : float, default 4.0, Gaussian sigma of the ``blur`` fill
    step_images : int, default 256, images read and perturbed together

    Returns
    -------
    PepprResult
    """
    src = open_source(dataset)
    positions = [p for p in range(len(src)) if src.ids[p] not in src.skipped]
    n = len(positions)
    spatial = tuple(src.shape[1:])
    size = "x".join(str(v) for v in spatial)
    if tuple(order_map.shape) != spatial:
        raise DataError(f"The order map has shape {list(order_map.shape)} but the images are {size}.")
    if not 0 <= int(label) < src.num_classes:
        raise ConfigError(f"label {label} is not a class of the data (it has {src.num_classes}).")
    pos = src.labels[positions] == int(label)
    if pos.all() or not pos.any():
        raise DataError(
            f"PEPPR needs images of label {label} and of other labels to compute AUROC; "
            f"{src.source or 'the data'} has {int(pos.sum())} of {n}."
        )
    if random_orders < 0:
        raise ConfigError(f"random_orders must be >= 0, got {random_orders}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    fr = default_fractions() if fractions is None else torch.as_tensor(fractions, dtype=torch.float64).flatten()
    if fr.numel() < 2 or (fr[1:] <= fr[:-1]).any() or fr[0] < 0 or fr[-1] > 1:
        raise ConfigError("fractions must be at least two increasing values in [0, 1].")
    k = parse_unit(unit)
    dev = model_device(model)
    units = n_units(spatial, k)
    counts = torch.round(fr * units).long()

    orders: dict[str, torch.Tensor] = {}
    base = descending_order(unit_scores(order_map.to(dev).double(), k), seed=TIE_SALT + int(seed))
    orders["map"] = base
    orders["reversed"] = base.flip(0)
    for r in range(random_orders):
        g = torch.Generator().manual_seed(int(seed) + r)
        orders[f"random:{int(seed) + r}"] = torch.randperm(units, generator=g).to(dev)
    for other_label, omap in (other_maps or {}).items():
        if tuple(omap.shape) != spatial:
            raise DataError(f"The map of label {other_label} has shape {list(omap.shape)} but the images are {size}.")
        orders[f"other:{other_label}"] = descending_order(
            unit_scores(omap.to(dev).double(), k), seed=TIE_SALT + int(seed)
        )

    # Fractions with k(p) = 0 or U give the same images for every order: evaluate them once.
    inner = (counts > 0) & (counts < units)
    if fill not in FILLS:
        raise ConfigError(f"Unknown fill {fill!r}; choose one of {', '.join(FILLS)}.")
    fill_mean = channel_mean(src, positions, step_images) if fill == "mean" else None
    pos = pos.to(dev)

    def steps():
        offset = 0
        for b in src.batches(step_images, positions):
            x = b.x.to(dev)
            f = fill_step(x, fill, norm=(src.mean, src.std), channel_mean=fill_mean, sigma=blur_sigma)
            yield offset, x, b.y.to(dev), f
            offset += len(b)

    names = list(orders)
    masks = [unit_masks(orders[nm], counts[inner], spatial, k) for nm in names]
    with eval_mode(model):
        ends = torch.tensor([0, units])
        end_masks = unit_masks(base, ends, spatial, k)  # [2, *spatial]: nothing / everything
        e_score, e_correct = _evaluate(model, steps(), n, [end_masks], int(label), batch_size, dev, n_curves=1)
        # e_*[0, 0] = erasing with nothing / everything -> [kept, filled]
        kept_s, filled_s = e_score[0, 0, 0], e_score[0, 0, 1]
        kept_c, filled_c = e_correct[0, 0, 0], e_correct[0, 0, 1]
        if int(inner.sum()) > 0:
            i_score, i_correct = _evaluate(model, steps(), n, masks, int(label), batch_size, dev)
    passes = 2 * n + len(names) * 2 * int(inner.sum()) * n

    t_count = fr.numel()
    curves: dict = {}
    areas: dict = {}
    for oi, nm in enumerate(names):
        curves[nm], areas[nm] = {}, {}
        for ci, curve in enumerate(CURVES):
            s_all = torch.empty(t_count, n, dtype=torch.float64, device=dev)
            c_all = torch.empty_like(s_all)
            none_done = counts == 0
            all_done = counts == units
            # erasing: k=0 -> kept images, k=U -> filled; restoration the other way round
            s_all[none_done] = kept_s if curve == "erasing" else filled_s
            c_all[none_done] = kept_c if curve == "erasing" else filled_c
            s_all[all_done] = filled_s if curve == "erasing" else kept_s
            c_all[all_done] = filled_c if curve == "erasing" else kept_c
            if int(inner.sum()) > 0:
                s_all[inner] = i_score[oi, ci]
                c_all[inner] = i_correct[oi, ci]
            au = auroc(s_all, pos).cpu()
            acc = c_all.mean(dim=1).cpu()
            curves[nm][curve] = {"auroc": au, "accuracy": acc}
            areas[nm][curve] = {m: float(area(v, fr)) for m, v in curves[nm][curve].items()}

    rnd = [nm for nm in names if nm.startswith("random:")]
    random: dict = {"curves": {"mean": {}, "sd": {}}, "areas": {"mean": {}, "sd": {}}, "gap": {"mean": {}, "sd": {}}}
    for curve in CURVES:
        for stat in ("mean", "sd"):
            random["curves"][stat][curve], random["areas"][stat][curve] = {}, {}
        for metric in METRICS:
            if rnd:
                stack = torch.stack([curves[nm][curve][metric] for nm in rnd])
                a = torch.tensor([areas[nm][curve][metric] for nm in rnd], dtype=torch.float64)
                c_mean, c_sd = stack.mean(0), stack.std(0, unbiased=False)
                a_mean, a_sd = float(a.mean()), float(a.std(unbiased=False))
            else:
                c_mean = c_sd = torch.full((t_count,), float("nan"), dtype=torch.float64)
                a_mean = a_sd = float("nan")
            random["curves"]["mean"][curve][metric] = c_mean
            random["curves"]["sd"][curve][metric] = c_sd
            random["areas"]["mean"][curve][metric] = a_mean
            random["areas"]["sd"][curve][metric] = a_sd
    score = {}
    for metric in METRICS:
        gaps = torch.tensor(
            [areas[nm]["restoration"][metric] - areas[nm]["erasing"][metric] for nm in rnd], dtype=torch.float64
        )
        random["gap"]["mean"][metric] = float(gaps.mean()) if rnd else float("nan")
        random["gap"]["sd"][metric] = float(gaps.std(unbiased=False)) if rnd else float("nan")
        own = areas["map"]["restoration"][metric] - areas["map"]["erasing"][metric]
        score[metric] = own - random["gap"]["mean"][metric]
    return PepprResult(
        label=int(label),
        fractions=fr,
        orders=names,
        curves=curves,
        areas=areas,
        random=random,
        score=score,
        passes=passes,
        settings={
            "fill": fill,
            "unit": unit,
            "random_orders": random_orders,
            "seed": seed,
            "blur_sigma": blur_sigma,
            "batch_size": batch_size,
        },
    )
