"""Spectral relevance analysis (SpRAy): clusters of explanation strategies within one class.

Lapuschkin, Wäldchen, Binder, Montavon, Samek, Müller 2019, "Unmasking Clever Hans
predictors and assessing what machines really learn", Nature Communications 10:1096,
doi:10.1038/s41467-019-08987-4.

Input: attribution maps ``a_i`` (``[N, H, W]`` or ``[N, C, H, W]``) of ``N`` images for
one class. Steps (all deterministic for a given ``seed``):

1. **Features.** Channels summed, ``r_i = |a_i|`` (``signed=True`` keeps the sign),
   average-pooled to a ``g x g`` grid (``torch.nn.functional.adaptive_avg_pool2d``,
   ``g = 32`` by default), then normalised so that ``sum_p |r_i(p)| = 1`` (all-zero maps
   stay zero). ``v_i`` is the flattened ``g^2`` vector.
2. **Affinity graph.** ``K_ij = 1`` when ``v_j`` is one of the ``n_neighbors`` nearest
   neighbours of ``v_i`` (Euclidean, ``sklearn.neighbors.kneighbors_graph``), symmetrised
   as ``A = (K + K^T) / 2`` (so ``A_ij`` is 1 for mutual neighbours, 1/2 for one-sided).
   Default ``n_neighbors = max(10, round(2 sqrt(N)))`` (at most ``N - 1``): enough
   neighbours that one strategy whose maps differ by small shifts (a marker a few pixels
   away) stays one connected group, few enough that a strategy of a few percent of the
   images still forms its own.
3. **Eigengap.** ``L = I - D^{-1/2} A D^{-1/2}`` (``scipy.sparse.csgraph.laplacian``,
   ``normed=True``) has eigenvalues ``0 = l_1 <= l_2 <= ... <= 2``; there are as many
   (near-)zero eigenvalues as (nearly) disconnected groups. With the smallest
   ``K = max_k`` eigenvalues (default 10), the relative gap
   ``r_j = l_{j+1} / max(l_j, FLOOR)`` (``FLOOR = 0.01``) and the proposed number of clusters::

       J  = {j >= 2 : l_j <= LAMBDA_MAX (0.2),  l_{j+1} - l_j > GAP_MIN (0.05),  r_j > GAP_RATIO (3)}
       k  = argmax_{j in J} r_j     (the eigenvalue jumps at least three-fold after l_k)
       k  = 1                       when J is empty (l_2 > 0.2, or no gap stands out: one strategy)

   ``l_j <= 0.2`` keeps the splits into ``j`` groups joined by few edges: a small ``l_j``
   is what such a split implies (higher-order Cheeger inequality, Lee, Oveis Gharan and
   Trevisan 2014, J. ACM 61:37), so a gap higher up the spectrum (inside one
   well-connected group) does not count; ``l_2 > 0.2`` means the graph has no bottleneck.
   The gap is relative so that a clean two-way split (``l_2 = 0.02``, ``l_3 = 0.16``) is
   preferred to a three-way one with a larger absolute but smaller relative jump
   (``l_4 = 0.6``); ``GAP_MIN`` keeps numerically zero eigenvalues of disconnected groups
   from making gaps of nothing. ``k`` may also be fixed by the caller.
4. **Clusters.** ``sklearn.cluster.SpectralClustering(k, affinity="precomputed",
   random_state=seed)`` on ``A`` (k-means on the spectral embedding). The spectral
   embedding ``E`` (``sklearn.manifold.spectral_embedding`` of ``A``, ``max(k, 2)``
   dimensions, the same embedding SpectralClustering uses) ranks the members of a
   cluster: the ``prototypes`` most typical ones are those closest to the cluster's
   centre (mean of ``E`` over the cluster).
5. **Picture.** A 2-D embedding of the ``v_i`` by t-SNE (``sklearn.manifold.TSNE``,
   seeded; ``embedding="umap"`` when the ``umap`` package is importable).
6. **Where the relevance lies.** For a named mask ``S`` (the expert mask ``"mask"`` and
   each extra mask such as ``"confounder"``; bool ``[N, H, W]`` at the maps' size) and
   full-resolution maps ``m_i = |a_i| / sum |a_i|``, the share of cluster ``c`` is::

       share_c(S) = 1/|c| sum_{i in c} sum_p m_i(p) S_i(p)

   (each image weighs the same; always on ``|a|``, also when ``signed``), and
   ``share_c(outside) = 1/|c| sum_{i in c} sum_p m_i(p) [p in no mask of image i]``.

**Flag rule.** A cluster is flagged ``"shortcut"`` when, for some confounder mask ``S``
(the masks named in ``confounders``, default ``("confounder",)``), both

- ``share_c(S) > flag_share`` (default 0.2: more than a fifth of the cluster's mean
  relevance lies on the confounder), and
- ``share_c(S) > share_c(T)`` for every other (expert) mask ``T`` given (the cluster puts
  more relevance on the confounder than on the annotated finding).

Clusters are otherwise unflagged (``""``). The threshold 0.2 is for confounders that
cover a few percent of the image or less (the benchmark's marker covers 1 %): there a
fifth of the relevance is a 20-fold concentration; a larger confounder needs a larger
``flag_share``.

No model passes: the maps are computed beforehand (``E`` passes per image for the
explainer). Cost: ``O(N^2 g^2)`` for the neighbour search, a dense eigen-decomposition of
the ``N x N`` Laplacian for ``N <= 3000`` (sparse Lanczos above), and t-SNE.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from xaiscope.errors import ConfigError, DataError

GAP_MIN = 0.05
LAMBDA_MAX = 0.2
FLOOR = 0.01
GAP_RATIO = 3.0
FLAG_SHARE = 0.2
EMBEDDINGS = ("tsne", "umap", "none")
SHORTCUT = "shortcut"
DENSE_LIMIT = 3000  # graphs of up to this many images get a dense eigen-decomposition


@dataclass
class Cluster:
    """One cluster of :func:`spray`.

    Attributes
    ----------
    index : cluster number (0-based; clusters are numbered by decreasing size)
    members : image indices (into the maps given) in the cluster
    size : ``len(members)``
    mean_map : Tensor ``[H, W]``, mean of the members' normalised full-resolution maps ``m_i``
    prototypes : up to ``prototypes`` member indices, most typical first
    shares : mask name -> ``share_c(S)``; ``"outside"`` for relevance outside every mask
    flag : ``"shortcut"`` or ``""``
    accuracy : share of correctly classified members (None when correctness is not given)
    """

    index: int
    members: np.ndarray
    size: int
    mean_map: torch.Tensor
    prototypes: np.ndarray
    shares: dict[str, float]
    flag: str
    accuracy: float | None = None


@dataclass
class SprayResult:
    """Result of :func:`spray`.

    Attributes
    ----------
    labels : ``[N]`` int cluster of each image
    k : number of clusters used; ``k_proposed``: the eigengap proposal (rule in the module docstring)
    eigenvalues : the smallest ``max_k`` eigenvalues of the normalised Laplacian, ascending
    gaps : ``eigenvalues[1:] - eigenvalues[:-1]``
    embedding : ``[N, 2]`` t-SNE (or UMAP) coordinates, or None with ``embedding="none"``
    spectral : ``[N, max(k, 2)]`` spectral embedding
    features : Tensor ``[N, g, g]``, the pooled, normalised maps the graph is built on
    clusters : list of :class:`Cluster`, ``clusters[c].index == c``
    settings : every setting
    """

    labels: np.ndarray
    k: int
    k_proposed: int
    eigenvalues: np.ndarray
    gaps: np.ndarray
    embedding: np.ndarray | None
    spectral: np.ndarray
    features: torch.Tensor
    clusters: list[Cluster]
    settings: dict = field(default_factory=dict)

    @property
    def flagged(self) -> list[int]:
        """Indices of the clusters flagged ``"shortcut"``."""
        return [c.index for c in self.clusters if c.flag == SHORTCUT]


# ----------------------------------------------------------------------------- steps
def _as_maps(maps: torch.Tensor) -> torch.Tensor:
    maps = torch.as_tensor(maps)
    if maps.dim() == 4:
        maps = maps.sum(dim=1)
    if maps.dim() != 3:
        raise DataError(f"SpRAy needs maps [N, H, W] or [N, C, H, W]; got shape {list(maps.shape)}.")
    if not torch.isfinite(maps).all():
        raise DataError("SpRAy got attribution maps with non-finite values.")
    return maps.detach().double().cpu()


def _sum_to_one(m: torch.Tensor) -> torch.Tensor:
    d = m.abs().flatten(1).sum(1).view(-1, *([1] * (m.dim() - 1)))
    return torch.where(d > 0, m / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(m))


def features(maps: torch.Tensor, *, grid: int = 32, signed: bool = False) -> torch.Tensor:
    """Step 1: ``[N, g, g]`` maps, channel-summed, ``|.|`` unless ``signed``, average-pooled to
    ``grid x grid``, each normalised to ``sum |.| = 1`` (float64)."""
    if int(grid) < 1:
        raise ConfigError(f"The SpRAy grid must be at least 1 pixel, got {grid}.")
    m = _as_maps(maps)
    if not signed:
        m = m.abs()
    pooled = torch.nn.functional.adaptive_avg_pool2d(m.unsqueeze(1), (int(grid), int(grid))).squeeze(1)
    return _sum_to_one(pooled)


def affinity(v: np.ndarray, n_neighbors: int):
    """Step 2: the symmetrised k-nearest-neighbour graph ``A = (K + K^T) / 2`` (sparse CSR)."""
    from sklearn.neighbors import kneighbors_graph

    n = v.shape[0]
    nn = int(min(max(1, n_neighbors), n - 1))
    k = kneighbors_graph(v, n_neighbors=nn, mode="connectivity", include_self=False)
    return ((k + k.T) * 0.5).tocsr()


def laplacian_eigenvalues(a, count: int) -> np.ndarray:
    """The ``count`` smallest eigenvalues of the normalised Laplacian of ``a``, ascending."""
    from scipy.sparse.csgraph import laplacian

    n = a.shape[0]
    count = int(min(count, n))
    lap = laplacian(a.astype(np.float64), normed=True)
    if n <= DENSE_LIMIT or count >= n - 1:
        ev = np.linalg.eigvalsh(lap.toarray())[:count]
    else:  # largest eigenvalues of 2I - L are the smallest of L
        from scipy.sparse import identity
        from scipy.sparse.linalg import eigsh

        v0 = np.random.default_rng(0).standard_normal(n)
        top = eigsh(2.0 * identity(n, format="csr") - lap, k=count, which="LA", v0=v0, return_eigenvectors=False)
        ev = np.sort(2.0 - top)
    return np.clip(np.sort(ev), 0.0, 2.0)


def eigengap_k(
    eigenvalues: np.ndarray, *, gap_min: float = GAP_MIN, gap_ratio: float = GAP_RATIO, lambda_max: float = LAMBDA_MAX
) -> int:
    """Step 3: the proposed number of clusters (rule in the module docstring)."""
    ev = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    best, k = -np.inf, 1
    for j in range(2, ev.size):  # j = number of clusters; ev[j - 1] = l_j, ev[j] = l_{j+1}
        lo, hi = ev[j - 1], ev[j]
        r = hi / max(lo, FLOOR)
        if lo <= lambda_max and hi - lo > gap_min and r > gap_ratio and r > best:
            best, k = r, j
    return k


def shares(maps: torch.Tensor, masks: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Step 6 per image: ``(m [N, H, W], {name: [N] share of m_i in S_i}, plus "outside")``."""
    m = _sum_to_one(_as_maps(maps).abs())
    n, h, w = m.shape
    out: dict[str, np.ndarray] = {}
    union = torch.zeros((n, h, w), dtype=torch.bool)
    for name, s in masks.items():
        if name == "outside":
            raise ConfigError("'outside' is reserved for relevance outside every mask; rename that mask.")
        s = torch.as_tensor(s).cpu().bool()
        if tuple(s.shape) != (n, h, w):
            raise DataError(f"Mask {name!r} has shape {list(s.shape)} but the maps need {[n, h, w]}.")
        out[name] = (m * s).flatten(1).sum(1).numpy()
        union |= s
    out["outside"] = (m * ~union).flatten(1).sum(1).numpy()
    return m, out


def flag(
    cluster_shares: Mapping[str, float], confounders: Sequence[str] = ("confounder",), *, flag_share=FLAG_SHARE
) -> str:
    """The flag rule (module docstring): ``"shortcut"`` when some confounder's share exceeds
    ``flag_share`` and the share of every other mask (``"outside"`` excepted), else ``""``."""
    others = [float(v) for k, v in cluster_shares.items() if k not in confounders and k != "outside"]
    for c in confounders:
        s = float(cluster_shares.get(c, float("nan")))
        if s > flag_share and all(s > o for o in others):
            return SHORTCUT
    return ""


def _embed2d(v: np.ndarray, method: str, seed: int) -> np.ndarray | None:
    n = v.shape[0]
    if method == "none":
        return None
    if n < 3:
        return np.column_stack([np.arange(n, dtype=float), np.zeros(n)])
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ConfigError("The UMAP embedding needs the umap package (pip install umap-learn).") from None
        return umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, n - 1)).fit_transform(v)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (n - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(v)


# ----------------------------------------------------------------------------- entry point
def spray(
    maps: torch.Tensor,
    *,
    masks: Mapping[str, torch.Tensor] | None = None,
    confounders: Sequence[str] = ("confounder",),
    correct: Sequence[bool] | np.ndarray | torch.Tensor | None = None,
    k: int | None = None,
    grid: int = 32,
    signed: bool = False,
    n_neighbors: int | None = None,
    max_k: int = 10,
    gap_min: float = GAP_MIN,
    gap_ratio: float = GAP_RATIO,
    flag_share: float = FLAG_SHARE,
    prototypes: int = 4,
    embedding: str = "tsne",
    seed: int = 0,
) -> SprayResult:
    """Spectral relevance analysis of the maps of one class (module docstring).

    Parameters
    ----------
    maps : Tensor ``[N, H, W]`` or ``[N, C, H, W]`` (channels summed), attributions for one class
    masks : name -> bool ``[N, H, W]`` masks at the maps' size (e.g. ``{"mask": lesions,
        "confounder": markers}``), for the relevance shares per cluster
    confounders : names in ``masks`` that the flag rule treats as confounders
    correct : ``[N]`` bool, whether the model classified each image correctly (per-cluster accuracy)
    k : number of clusters; None (default) takes the eigengap proposal
    grid : side of the pooled feature grid (default 32)
    signed : cluster signed maps instead of ``|a|``
    n_neighbors : neighbours per image in the affinity graph (None: ``max(10, round(2 sqrt(N)))``;
        at most N - 1)
    max_k : eigenvalues examined by the eigengap rule (and largest k it proposes minus one)
    gap_min, gap_ratio : the eigengap rule's thresholds
    flag_share : the flag rule's threshold on the confounder share
    prototypes : most typical members kept per cluster
    embedding : "tsne" (default), "umap" or "none"
    seed : seeds spectral clustering and the 2-D embedding

    Returns
    -------
    SprayResult
    """
    from sklearn.cluster import SpectralClustering
    from sklearn.manifold import spectral_embedding

    if embedding not in EMBEDDINGS:
        raise ConfigError(f"Unknown SpRAy embedding {embedding!r}; choose one of {', '.join(EMBEDDINGS)}.")
    m_all = _as_maps(maps)
    n = m_all.shape[0]
    if n < 3:
        raise DataError(f"SpRAy needs at least 3 maps of the class; got {n}.")
    if n_neighbors is None:
        n_neighbors = max(10, round(2 * n**0.5))
    if n_neighbors < 1:
        raise ConfigError(f"n_neighbors must be at least 1, got {n_neighbors}.")
    if max_k < 2:
        raise ConfigError(f"max_k must be at least 2, got {max_k}.")
    if k is not None and not 1 <= int(k) <= n - 1:
        raise ConfigError(f"The number of clusters k must be between 1 and {n - 1} for {n} maps; got {k}.")
    masks = dict(masks or {})
    feats = features(m_all, grid=grid, signed=signed)
    v = feats.flatten(1).numpy()
    a = affinity(v, n_neighbors)
    ev = laplacian_eigenvalues(a, max_k)
    k_prop = eigengap_k(ev, gap_min=gap_min, gap_ratio=gap_ratio)
    k_used = int(k) if k is not None else k_prop
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        warnings.filterwarnings("ignore", message="Array is not symmetric")
        spec = spectral_embedding(a, n_components=max(k_used, 2), random_state=seed, drop_first=False)
        if k_used == 1:
            raw = np.zeros(n, dtype=np.int64)
        else:
            sc = SpectralClustering(n_clusters=k_used, affinity="precomputed", random_state=seed)
            raw = sc.fit_predict(a).astype(np.int64)
    # number clusters by decreasing size (ties: smallest first member), so names are stable
    order = sorted(np.unique(raw), key=lambda c: (-int((raw == c).sum()), int(np.flatnonzero(raw == c)[0])))
    labels = np.empty(n, dtype=np.int64)
    for new, old in enumerate(order):
        labels[raw == old] = new
    full, per_image = shares(m_all, masks)
    corr = None if correct is None else np.asarray(torch.as_tensor(correct).cpu().numpy(), dtype=bool).reshape(-1)
    if corr is not None and corr.shape[0] != n:
        raise DataError(f"There are {n} maps but {corr.shape[0]} correctness values.")
    clusters: list[Cluster] = []
    for c in range(len(order)):
        idx = np.flatnonzero(labels == c)
        centre = spec[idx].mean(0)
        dist = np.linalg.norm(spec[idx] - centre, axis=1)
        protos = idx[np.argsort(dist, kind="stable")[: max(0, int(prototypes))]]
        sh = {name: float(vals[idx].mean()) for name, vals in per_image.items()}
        clusters.append(
            Cluster(
                index=c,
                members=idx,
                size=int(idx.size),
                mean_map=full[idx].mean(0).float(),
                prototypes=protos,
                shares=sh,
                flag=flag(sh, confounders, flag_share=flag_share),
                accuracy=None if corr is None else float(corr[idx].mean()),
            )
        )
    return SprayResult(
        labels=labels,
        k=k_used,
        k_proposed=k_prop,
        eigenvalues=ev,
        gaps=np.diff(ev),
        embedding=_embed2d(v, embedding, seed),
        spectral=spec,
        features=feats.float(),
        clusters=clusters,
        settings={
            "grid": int(grid),
            "signed": bool(signed),
            "n_neighbors": int(min(n_neighbors, n - 1)),
            "max_k": int(max_k),
            "gap_min": gap_min,
            "gap_ratio": gap_ratio,
            "flag_share": flag_share,
            "confounders": [c for c in confounders if c in masks],
            "k_fixed": None if k is None else int(k),
            "embedding": embedding,
            "seed": int(seed),
        },
    )
