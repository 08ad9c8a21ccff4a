"""Clustering sufficient input subsets by where they lie (energy distance + DBSCAN).

Each SIS is a set of pixel coordinates ``X = {(h, w)}``. The distance between two SIS
is the energy distance (Székely & Rizzo 2013) between the uniform distributions on
their coordinate sets::

    D^2(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|

with ``|.|`` the Euclidean distance in pixels and the expectations taken over all pairs
(V-statistics, so ``D^2 >= 0`` and ``D^2 = 0`` iff the sets are equal). We cluster on
``D = sqrt(D^2)`` by default (``squared=False``) because ``D`` is a metric (it obeys the
triangle inequality), which DBSCAN's density-reachability assumes; ``D^2`` is not.
Scale: two single pixels ``d`` apart have ``D^2 = 2d`` and ``D = sqrt(2d)``, so
``eps = 2`` joins single-pixel SIS up to 2 pixels apart. SIS spread over an image are
much closer than that (on 8x8 digits, pairwise ``D`` is mostly 0.5-1.2), so the default
``eps="auto"`` takes the median distance at which a SIS becomes a core point.

DBSCAN (scikit-learn, ``metric="precomputed"``) groups SIS with at least
``min_samples`` neighbours within ``eps``; label -1 is noise. Carter et al. 2019
(arXiv:1810.03805) cluster SIS the same way to find the patterns a model relies on.

Cost: no model call; ``O(N^2)`` set pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from xaiscope.errors import ConfigError


def _as_masks(items) -> torch.Tensor:
    masks = [it.mask if hasattr(it, "mask") else torch.as_tensor(it) for it in items]
    shapes = {tuple(m.shape) for m in masks}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ConfigError(f"All SIS masks must be [H, W] of one shape to be clustered, got shapes {sorted(shapes)}.")
    out = torch.stack([m.detach().to("cpu").bool() for m in masks])
    empty = (~out.flatten(1).any(1)).nonzero().flatten()
    if empty.numel():
        raise ConfigError(f"SIS number {int(empty[0])} is empty; the energy distance needs at least one pixel per SIS.")
    return out


def energy_distances(masks, *, squared: bool = False, algorithm: str = "auto") -> torch.Tensor:
    """Energy distances ``[N, N]`` (float64) between the pixel-coordinate sets of ``masks`` ``[N, H, W]``.

    ``algorithm``: ``"grid"`` computes ``P G P^T`` with ``P`` the sets as distributions
    on the ``H x W`` grid and ``G`` the grid's distance matrix (fast for small images);
    ``"pairs"`` loops over set pairs with ``torch.cdist`` (memory ``O(|X| |Y|)``);
    ``"auto"`` uses ``grid`` when ``H * W <= 4096``. Both give the same numbers.
    """
    m = _as_masks(list(masks) if not isinstance(masks, torch.Tensor) else list(masks))
    n, h, w = m.shape
    if algorithm == "auto":
        algorithm = "grid" if h * w <= 4096 else "pairs"
    if algorithm == "grid":
        grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2).double()
        g = torch.cdist(grid, grid)
        p = m.reshape(n, -1).double()
        p = p / p.sum(1, keepdim=True)
        cross = p @ g @ p.T
        self_term = cross.diagonal().clone()
    elif algorithm == "pairs":
        coords = [mi.nonzero().double() for mi in m]
        self_term = torch.stack([torch.cdist(c, c).mean() for c in coords])
        cross = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n):
            for j in range(i + 1, n):
                cross[i, j] = cross[j, i] = torch.cdist(coords[i], coords[j]).mean()
        cross.diagonal().copy_(self_term)
    else:
        raise ConfigError(f"Unknown algorithm {algorithm!r}; choose auto, grid or pairs.")
    d2 = (2 * cross - self_term.view(-1, 1) - self_term.view(1, -1)).clamp_min(0)
    d2.fill_diagonal_(0)
    return d2 if squared else d2.sqrt()


def auto_eps(d: torch.Tensor, min_samples: int) -> float:
    """The median ``min_samples``-distance: for each SIS the distance to its
    ``min_samples``-th nearest SIS counting itself (the radius at which it would be a
    DBSCAN core point), then the median over SIS, so about half the SIS are core points.
    A scale-free default: energy distances shrink when SIS spread out or images are small."""
    n = d.shape[0]
    kth = d.sort(dim=1).values[:, min(min_samples, n) - 1]
    eps = float(kth.median())
    return eps if eps > 0 else float(d[d > 0].min()) if (d > 0).any() else 1.0


@dataclass
class Cluster:
    """One DBSCAN cluster of SIS.

    ``members``: indices into the clustered list; ``mean_image`` ``[C, H, W]``: mean of
    the members' SIS images (input on the SIS, mask value elsewhere; None when no images
    were given); ``mean_mask`` ``[H, W]``: share of members whose SIS holds each pixel;
    ``counts``/``shares``: members per source and their share of the cluster;
    ``source_fraction``: share of each source's SIS that fall in this cluster;
    ``medoid``: the member with the smallest summed distance to the others.
    """

    label: int
    members: list[int]
    mean_image: torch.Tensor | None
    mean_mask: torch.Tensor
    counts: dict[str, int]
    shares: dict[str, float]
    source_fraction: dict[str, float]
    medoid: int

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class ClusterResult:
    """Labels (``-1`` = noise), the distance matrix and the clusters of a SIS clustering."""

    labels: list[int]
    distances: torch.Tensor
    clusters: list[Cluster]
    noise: list[int]
    sources: list[str]
    eps: float
    min_samples: int
    squared: bool
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """A JSON-ready summary (no arrays)."""
        return {
            "eps": self.eps,
            "min_samples": self.min_samples,
            "distance": "energy distance D^2" if self.squared else "energy distance D = sqrt(D^2)",
            "n_sis": len(self.labels),
            "n_clusters": len(self.clusters),
            "n_noise": len(self.noise),
            "sources": sorted(set(self.sources)),
            "clusters": [
                {
                    "label": c.label,
                    "size": c.size,
                    "members": c.members,
                    "medoid": c.medoid,
                    "counts": c.counts,
                    "shares": c.shares,
                    "source_fraction": c.source_fraction,
                }
                for c in self.clusters
            ],
            "noise": self.noise,
            **self.extra,
        }


def check_eps(eps, name: str = "eps") -> float | str:
    """``"auto"`` or a positive float; a :class:`ConfigError` naming ``name`` otherwise."""
    if eps == "auto":
        return eps
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive number or 'auto', got {eps!r}.") from None
    if not value > 0:
        raise ConfigError(f"{name} must be a positive number or 'auto', got {eps!r}.")
    return value


def cluster(
    sis_list,
    eps: float,
    min_samples: int = 3,
    *,
    sources: list[str] | None = None,
    images: torch.Tensor | list | None = None,
    squared: bool = False,
) -> ClusterResult:
    """Cluster SIS by the energy distance between their pixel sets with DBSCAN.

    Parameters
    ----------
    sis_list : list of :class:`~xaiscope.analyses.sis.SISResult` or of BoolTensor ``[H, W]``
    eps : float > 0 or ``"auto"``
        DBSCAN neighbourhood radius in the units of the distance (``D``, or ``D^2`` when
        ``squared``). ``"auto"`` (or None) uses :func:`auto_eps`.
    min_samples : int, default 3
        DBSCAN core-point threshold (the point itself included).
    sources : list of str, optional
        A label per SIS (e.g. the model it came from); default each SISResult's
        ``source`` (``""`` for plain masks). Clusters report counts and shares per source.
    images : Tensor ``[N, C, H, W]`` or list, optional
        The SIS images for the cluster means; default each SISResult's ``image``.
    squared : bool, default False
        Cluster on ``D^2`` instead of ``D``.
    """
    from sklearn.cluster import DBSCAN

    items = list(sis_list)
    if not items:
        raise ConfigError("There are no SIS to cluster.")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ConfigError(f"min_samples must be a positive integer, got {min_samples!r}.")
    if eps is not None:
        eps = check_eps(eps)
    masks = _as_masks(items)
    n = len(items)
    if sources is None:
        sources = [str(getattr(it, "source", "")) for it in items]
    if len(sources) != n:
        raise ConfigError(f"{len(sources)} source labels were given for {n} SIS.")
    if images is None and all(getattr(it, "image", None) is not None for it in items):
        images = [it.image for it in items]
    img = None if images is None else torch.stack([torch.as_tensor(i).detach().cpu().float() for i in images])
    if img is not None and img.shape[0] != n:
        raise ConfigError(f"{img.shape[0]} images were given for {n} SIS.")
    d = energy_distances(masks, squared=squared)
    if eps is None or eps == "auto":
        eps = auto_eps(d, min_samples)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(d.numpy()).tolist()
    totals = {s: sources.count(s) for s in sorted(set(sources))}
    clusters = []
    for lab in sorted(set(labels) - {-1}):
        mem = [i for i, lab_i in enumerate(labels) if lab_i == lab]
        idx = torch.tensor(mem)
        counts = {s: sum(sources[i] == s for i in mem) for s in totals}
        sub = d[idx][:, idx]
        clusters.append(
            Cluster(
                label=lab,
                members=mem,
                mean_image=None if img is None else img[idx].mean(0),
                mean_mask=masks[idx].double().mean(0),
                counts=counts,
                shares={s: c / len(mem) for s, c in counts.items()},
                source_fraction={s: counts[s] / totals[s] for s in totals},
                medoid=mem[int(sub.sum(1).argmin())],
            )
        )
    return ClusterResult(
        labels=labels,
        distances=d,
        clusters=clusters,
        noise=[i for i, lab_i in enumerate(labels) if lab_i == -1],
        sources=list(sources),
        eps=eps,
        min_samples=min_samples,
        squared=squared,
    )
