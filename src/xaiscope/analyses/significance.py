"""Statistical trust in a run's aggregates: bootstrap intervals, paired tests, Friedman +
Nemenyi critical differences, non-discriminative metrics and metric agreement.

All inputs are tidy per-image score tables (columns ``image_id``, ``method``, ``metric``,
``value``; one model, one setting per method unless a function says otherwise); the
scores themselves stay per image and are never replaced by these summaries.

- **Intervals** (:func:`mean_interval`, :func:`mean_intervals`): the mean over images with
  a 95% bootstrap interval from :func:`scipy.stats.bootstrap`, **BCa** (bias-corrected and
  accelerated, Efron 1987) by default, falling back to the **percentile** interval when BCa
  is degenerate (constant scores, or a non-finite BCa bound); the table names the method
  used per cell. Every cell draws from its own generator seeded by the run's seed and the
  cell's key, so an interval does not depend on which other cells are computed.
- **Rank spread** (:func:`rank_spread`): image indices are resampled jointly across
  methods and metrics (one multinomial draw of counts per resample), metric means and
  per-metric ranks are recomputed, and each method's average rank over metrics and its
  position (1 = best) are summarised by their 2.5 / 97.5 percentiles.
- **Paired tests** (:func:`wilcoxon_pairs`): per metric, every pair of methods on the images
  where both are finite: Wilcoxon signed-rank (:func:`scipy.stats.wilcoxon`), zero
  differences dropped (``zero_method="wilcox"``), ``exact`` null distribution when at most
  50 non-zero differences without ties remain, else the normal approximation (``approx``,
  tie-corrected variance, no continuity correction); Holm's step-down correction
  (:func:`holm`) over all pairs of that metric.
- **Friedman + Nemenyi** (:func:`friedman`, :func:`critical_difference`): Demsar 2006,
  JMLR 7:1-30. For the overall ranking the blocks are the metrics (each method's rank on a
  metric's mean score) -- metrics are not independent data sets, so the test and the
  critical difference describe these metrics, not a population of them.
- **Non-discriminative metrics** (:func:`discrimination`): a metric is flagged when the
  Friedman test over images (blocks = images, treatments = methods) gives p >= 0.05, when
  Kendall's W = chi2 / (N (k - 1)) < 0.1 (a negligible effect however small p is), or
  when no method beats the ``random`` baseline in the Holm-corrected paired tests.
- **Metric agreement** (:func:`metric_agreement`): Kendall's tau between two metrics'
  orderings of the methods (direction-aware: tau = 1 means they agree on which methods
  are better), clustered by average linkage on (1 - tau) / 2.
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from scipy.stats import rankdata

LEVEL = 0.95
ALPHA = 0.05
W_FLOOR = 0.1
EXACT_MAX_N = 50
RANDOM = "random"

# Nemenyi's critical values q_0.05 = studentized range q(0.95, k, inf) / sqrt(2):
# k = 2..10 from Demsar 2006, JMLR 7:1-30, Table 5(a); k = 11..20 from the same formula
# (scipy.stats.studentized_range, checked in the tests).
Q_05 = {
    2: 1.960,
    3: 2.343,
    4: 2.569,
    5: 2.728,
    6: 2.850,
    7: 2.949,
    8: 3.031,
    9: 3.102,
    10: 3.164,
    11: 3.219,
    12: 3.268,
    13: 3.313,
    14: 3.354,
    15: 3.391,
    16: 3.426,
    17: 3.458,
    18: 3.489,
    19: 3.517,
    20: 3.544,
}


# ----------------------------------------------------------------------------- intervals
@dataclass(frozen=True)
class Interval:
    """Mean over the finite scores, its interval ``[low, high]`` and the interval's method
    (``BCa``, ``percentile``, or ``""`` when fewer than two finite scores)."""

    mean: float
    low: float
    high: float
    n: int
    n_nan: int
    method: str


def cell_rng(seed: int, *key: str) -> np.random.Generator:
    """A generator for one cell, from the run's seed and the cell's key (stable across runs)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32("\x1f".join(map(str, key)).encode())])


def mean_interval(
    values, *, rng: np.random.Generator, level: float = LEVEL, n_resamples: int = 2000, method: str = "BCa"
) -> Interval:
    """Mean of the finite ``values`` with a bootstrap interval (BCa, else percentile)."""
    v = np.asarray(values, float)
    finite = v[np.isfinite(v)]
    n, n_nan = int(finite.size), int(v.size - finite.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, n_nan, "")
    mean = float(finite.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, n_nan, "")
    if np.ptp(finite) == 0:  # constant: every resample has the same mean; BCa is undefined
        return Interval(mean, mean, mean, n, n_nan, "percentile")
    for how in dict.fromkeys([method, "percentile"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                (finite,),
                np.mean,
                n_resamples=n_resamples,
                confidence_level=level,
                method=how,
                vectorized=True,
                batch=max(1, min(n_resamples, 2_000_000 // n)),
                rng=rng,
            )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return Interval(mean, lo, hi, n, n_nan, how)
    return Interval(mean, math.nan, math.nan, n, n_nan, "")


def mean_intervals(
    scores: pd.DataFrame,
    *,
    seed: int = 0,
    keys: tuple[str, ...] = ("model", "method", "setting", "metric"),
    level: float = LEVEL,
    n_resamples: int = 2000,
) -> pd.DataFrame:
    """One row per ``keys`` group: mean, ci_low, ci_high, ci_method, n, n_nan."""
    rows = []
    for key, g in scores.groupby(list(keys), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        iv = mean_interval(g["value"].to_numpy(), rng=cell_rng(seed, *key), level=level, n_resamples=n_resamples)
        rows.append(
            {
                **dict(zip(keys, key)),
                "mean": iv.mean,
                "ci_low": iv.low,
                "ci_high": iv.high,
                "ci_method": iv.method,
                "n": iv.n,
                "n_nan": iv.n_nan,
            }
        )
    cols = [*keys, "mean", "ci_low", "ci_high", "ci_method", "n", "n_nan"]
    return pd.DataFrame(rows, columns=cols)


def hierarchical_interval(
    per_model: list[np.ndarray], *, rng: np.random.Generator, level: float = LEVEL, n_resamples: int = 2000
) -> Interval:
    """Mean over models of each model's mean score, with a two-level percentile bootstrap
    interval: each resample draws the models with replacement, then within each drawn
    model its images with replacement, and averages the models' means (Davison & Hinkley
    1997, sec. 3.8). The interval so covers the variation between models (seeds, training
    runs) as well as between images. NaN scores are left out; models without a finite
    score do not count."""
    models = [v[np.isfinite(v)] for v in (np.asarray(a, float) for a in per_model)]
    n_nan = int(sum(np.asarray(a, float).size for a in per_model) - sum(m.size for m in models))
    models = [m for m in models if m.size]
    n = int(sum(m.size for m in models))
    if not models:
        return Interval(math.nan, math.nan, math.nan, 0, n_nan, "")
    mean = float(np.mean([m.mean() for m in models]))
    if len(models) < 2:
        return Interval(mean, math.nan, math.nan, n, n_nan, "")
    k = len(models)
    draws = np.empty(n_resamples)
    picks = rng.integers(k, size=(n_resamples, k))
    for b in range(n_resamples):
        draws[b] = np.mean([models[j][rng.integers(models[j].size, size=models[j].size)].mean() for j in picks[b]])
    lo, hi = _percentile_bounds(draws, level)
    return Interval(mean, lo, hi, n, n_nan, "two-level percentile")


def set_level_interval(
    pairs: np.ndarray, predicted: np.ndarray, *, rng: np.random.Generator, level: float = LEVEL, n_resamples: int = 2000
) -> Interval:
    """Mean set-level score (sufficiency, consistency) with a percentile interval from
    resampling the images and recomputing the set score on each resample: for image i of the
    resample, the share of the images paired with it (``pairs`` ``[N, N]``, decided once on
    the whole set) that share its ``predicted`` class, 0 when none is paired; a copy of an
    image is never paired with itself."""
    pairs = np.asarray(pairs, bool)
    predicted = np.asarray(predicted)
    n = len(predicted)

    def score(idx: np.ndarray) -> float:
        sub = pairs[np.ix_(idx, idx)] & (idx[:, None] != idx[None, :])
        same = predicted[idx][:, None] == predicted[idx][None, :]
        cnt = sub.sum(1)
        return float(np.where(cnt > 0, (sub & same).sum(1) / np.maximum(cnt, 1), 0.0).mean())

    mean = score(np.arange(n))
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, 0, "")
    draws = np.array([score(rng.integers(n, size=n)) for _ in range(n_resamples)])
    lo, hi = _percentile_bounds(draws, level)
    return Interval(mean, lo, hi, n, 0, "percentile, set score recomputed")


def _percentile_bounds(draws: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``draws``."""
    tail = (1 - level) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail])
    return float(lo), float(hi)


def collection_intervals(
    scores: pd.DataFrame, *, seed: int = 0, level: float = LEVEL, n_resamples: int = 2000
) -> pd.DataFrame:
    """Over the models of a collection (two or more models scored on the same images): one row
    per (method, setting, metric) with the mean over models of the per-model means and its
    :func:`hierarchical_interval`; empty with fewer than two models."""
    cols = ["method", "setting", "metric", "mean", "ci_low", "ci_high", "ci_method", "n_models", "n", "n_nan"]
    if scores["model"].nunique() < 2:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, g in scores.groupby(["method", "setting", "metric"], sort=False):
        per_model = [m["value"].to_numpy(float) for _, m in g.groupby("model", sort=True)]
        iv = hierarchical_interval(per_model, rng=cell_rng(seed, "models", *key), level=level, n_resamples=n_resamples)
        rows.append(
            dict(zip(("method", "setting", "metric"), key))
            | {"mean": iv.mean, "ci_low": iv.low, "ci_high": iv.high, "ci_method": iv.method}
            | {"n_models": len(per_model), "n": iv.n, "n_nan": iv.n_nan}
        )
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------- per-image cubes
def score_cube(scores: pd.DataFrame, methods: list[str], metrics: list[str]) -> np.ndarray:
    """``[images, methods, metrics]`` per-image scores (NaN where missing), images in sorted id order."""
    wide = scores.groupby(["image_id", "method", "metric"])["value"].mean().unstack(["method", "metric"])
    cols = pd.MultiIndex.from_product([methods, metrics], names=["method", "metric"])
    wide = wide.reindex(columns=cols)
    return wide.to_numpy(float).reshape(len(wide), len(methods), len(metrics))


def _signs(metrics: list[str], directions: dict[str, str]) -> np.ndarray:
    """+1 where higher is better, -1 where lower is better."""
    return np.array([1.0 if directions.get(m, "higher") == "higher" else -1.0 for m in metrics])


def ranks_of_means(means: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Per-metric ranks (1 = best, ties averaged, a non-finite mean last) of ``means`` ``[..., K, M]``."""
    key = np.where(np.isfinite(means), -signs * means, np.inf)
    return rankdata(key, axis=-2, method="average")


def rank_spread(
    scores: pd.DataFrame,
    directions: dict[str, str],
    *,
    methods: list[str] | None = None,
    metrics: list[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Bootstrap spread of each method's overall rank (images resampled jointly across metrics).

    Columns: method, avg_rank (mean over metrics of the per-metric rank, all images),
    avg_rank_low/high and rank_low/high (percentiles of the average rank and of the position
    1..K among the methods over ``n_boot`` resamples of the images).
    """
    methods = methods or sorted(scores["method"].unique())
    metrics = metrics or sorted(scores["metric"].unique())
    cube = score_cube(scores, methods, metrics)
    n, k, m = cube.shape
    signs = _signs(metrics, directions)
    flat = cube.reshape(n, k * m)
    finite = np.isfinite(flat)
    x0 = np.where(finite, flat, 0.0)
    rng = np.random.default_rng(seed)
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    avg_all, pos_all = [], []
    chunk = max(1, 2_000_000 // max(1, n))
    for b0 in range(0, n_boot, chunk):
        b = min(chunk, n_boot - b0)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(float)  # [B, n]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (counts @ x0) / (counts @ finite)
        r = ranks_of_means(means.reshape(b, k, m), signs)
        avg = r.mean(-1)
        avg_all.append(avg)
        pos_all.append(rankdata(avg, axis=1, method="min"))
    avg_b, pos_b = np.concatenate(avg_all), np.concatenate(pos_all)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN (method, metric): mean of empty slice
        point = ranks_of_means(np.nanmean(cube, axis=0) if n else np.full((k, m), np.nan), signs).mean(-1)
    return pd.DataFrame(
        {
            "method": methods,
            "avg_rank": point,
            "avg_rank_low": np.percentile(avg_b, lo_q, axis=0),
            "avg_rank_high": np.percentile(avg_b, hi_q, axis=0),
            "rank_low": np.percentile(pos_b, lo_q, axis=0, method="lower"),  # positions stay whole numbers
            "rank_high": np.percentile(pos_b, hi_q, axis=0, method="higher"),
        }
    )


# ----------------------------------------------------------------------------- paired tests
def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count)."""
    p = np.asarray(p, float)
    out, ok = np.full(p.shape, np.nan), np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    out[order] = np.minimum(1.0, np.maximum.accumulate((len(order) - np.arange(len(order))) * p[order]))
    return out


def wilcoxon_pair(a: np.ndarray, b: np.ndarray) -> dict:
    """Wilcoxon signed-rank test of ``a - b`` over the images where both are finite."""
    ok = np.isfinite(a) & np.isfinite(b)
    d = (a - b)[ok]
    nz = d[d != 0]
    row = {"n": int(ok.sum()), "n_nonzero": int(nz.size), "median_diff": float(np.median(d)) if d.size else math.nan}
    if d.size == 0:
        return {**row, "statistic": math.nan, "p_value": math.nan, "mode": "no_images"}
    if nz.size == 0:
        return {**row, "statistic": math.nan, "p_value": 1.0, "mode": "no_difference"}
    ties = np.unique(np.abs(nz)).size < nz.size
    mode = "exact" if nz.size <= EXACT_MAX_N and not ties else "approx"
    res = stats.wilcoxon(nz, zero_method="wilcox", method=mode)
    return {**row, "statistic": float(res.statistic), "p_value": float(res.pvalue), "mode": mode}


def wilcoxon_pairs(cube: np.ndarray, methods: list[str], sign: float, *, alpha: float = ALPHA) -> pd.DataFrame:
    """Every pair of methods on one metric (``cube``: ``[images, methods]``), Holm-corrected.

    ``better`` names the method favoured by the median difference (by the mean where the
    median is 0), direction-aware (``sign`` +1: higher is better); ``significant`` is
    ``p_holm < alpha``.
    """
    rows = []
    for i in range(len(methods)):
        for j in range(i + 1, len(methods)):
            r = wilcoxon_pair(cube[:, i], cube[:, j])
            d = cube[:, i] - cube[:, j]
            d = d[np.isfinite(d)]
            eff = r["median_diff"] if r["median_diff"] != 0 or not d.size else float(d.mean())
            better = "" if not eff or math.isnan(eff) else (methods[i] if sign * eff > 0 else methods[j])
            rows.append({"method_a": methods[i], "method_b": methods[j], **r, "better": better})
    cols = ["method_a", "method_b", "n", "n_nonzero", "median_diff", "statistic", "p_value", "mode", "better"]
    out = pd.DataFrame(rows, columns=cols)
    out["p_holm"] = holm(out["p_value"].to_numpy(float))
    out["significant"] = out["p_holm"] < alpha
    out["zero_method"] = "wilcox"
    return out


# ----------------------------------------------------------------------------- Friedman + Nemenyi
@dataclass
class Friedman:
    """Friedman test of ``k`` treatments over ``n`` blocks (Demsar 2006, eq. 1-2)."""

    chi2: float
    p_value: float
    kendall_w: float
    iman_davenport: float
    p_iman_davenport: float
    n: int
    k: int
    mean_ranks: np.ndarray = field(repr=False)


def friedman(values: np.ndarray, higher_is_better: bool = True) -> Friedman:
    """Friedman's chi2 (tie-corrected, as :func:`scipy.stats.friedmanchisquare`) of ``values``
    ``[blocks, treatments]``; rows with a non-finite value are left out. ``mean_ranks``: 1 = best."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v).all(1)]
    n, k = v.shape
    r = rankdata(-v if higher_is_better else v, axis=1, method="average")
    mean_ranks = r.mean(0) if n else np.full(k, np.nan)
    if n < 2 or k < 2:
        return Friedman(math.nan, math.nan, math.nan, math.nan, math.nan, n, k, mean_ranks)
    ties = 0.0
    for row in v:
        _, t = np.unique(row, return_counts=True)
        ties += float((t**3 - t).sum())
    denom = 1.0 - ties / (n * k * (k * k - 1))
    chi2 = 12.0 * n / (k * (k + 1)) * float(((mean_ranks - (k + 1) / 2) ** 2).sum())
    if denom <= 0:  # every block constant
        return Friedman(0.0, 1.0, 0.0, 0.0, 1.0, n, k, mean_ranks)
    chi2 /= denom
    w = chi2 / (n * (k - 1))
    ff_den = n * (k - 1) - chi2
    ff = (n - 1) * chi2 / ff_den if ff_den > 0 else math.inf
    p_ff = float(stats.f.sf(ff, k - 1, (k - 1) * (n - 1))) if math.isfinite(ff) else 0.0
    return Friedman(chi2, float(stats.chi2.sf(chi2, k - 1)), w, ff, p_ff, n, k, mean_ranks)


def q_alpha(k: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical value for ``k`` treatments (table for alpha 0.05, k <= 20; else computed)."""
    if alpha == 0.05 and k in Q_05:
        return Q_05[k]
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of mean ranks, q_alpha sqrt(k (k + 1) / (6 n))."""
    if k < 2 or n < 1:
        return math.nan
    return q_alpha(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n))


# ----------------------------------------------------------------------------- degenerate metrics
def discrimination(
    cube: np.ndarray,
    methods: list[str],
    sign: float,
    pairs: pd.DataFrame | None,
    *,
    alpha: float = ALPHA,
    w_floor: float = W_FLOOR,
    random: str = RANDOM,
) -> dict:
    """Does one metric (``cube``: ``[images, methods]``) tell the methods apart?

    Friedman over the images complete for the methods with any finite score; ``random_beaten``
    (None without a ``random`` method or paired tests): some method beats ``random`` in
    ``pairs`` (Holm-corrected). ``non_discriminative`` when p >= ``alpha``, W < ``w_floor``
    or ``random_beaten`` is False; ``reason`` says which.
    """
    keep = np.isfinite(cube).any(0)
    f = friedman(sign * cube[:, keep])
    beaten = None
    if pairs is not None and random in methods and len(pairs):
        vs = pairs[(pairs["method_a"] == random) | (pairs["method_b"] == random)]
        beaten = bool((vs["significant"] & (vs["better"] != random) & (vs["better"] != "")).any())
    reasons = []
    if not f.k >= 2 or not f.n >= 2:
        reasons.append("fewer than 2 methods or images with finite scores")
    else:
        if not f.p_value < alpha:
            reasons.append(f"Friedman p = {f.p_value:.3g} >= {alpha:g}")
        if not f.kendall_w >= w_floor:
            reasons.append(f"Kendall's W = {f.kendall_w:.3g} < {w_floor:g}")
    if beaten is False:
        reasons.append(f"no method beats the {random} baseline")
    return {
        "n_images": f.n,
        "n_methods": f.k,
        "friedman_chi2": f.chi2,
        "friedman_p": f.p_value,
        "kendall_w": f.kendall_w,
        "random_beaten": beaten,
        "non_discriminative": bool(reasons),
        "reason": "; ".join(reasons),
    }


# ----------------------------------------------------------------------------- agreement
def metric_agreement(means: pd.DataFrame, directions: dict[str, str], *, cut: float = 0.25) -> pd.DataFrame:
    """Kendall's tau between every two metrics' orderings of the methods (``means``: methods x
    metrics), direction-aware, clustered by average linkage on (1 - tau) / 2.

    Columns: metric_a, metric_b, tau, p_value, n_methods, order_a, order_b (position of each
    metric in the dendrogram's leaf order) and cluster_a, cluster_b (flat clusters cut at
    distance ``cut``, i.e. average tau >= 1 - 2 cut within a cluster).
    """
    from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
    from scipy.spatial.distance import squareform

    metrics = list(means.columns)
    v = means.to_numpy(float) * _signs(metrics, directions)
    m = len(metrics)
    tau, pv, nn = np.eye(m), np.zeros((m, m)), np.zeros((m, m), int)
    for i in range(m):
        for j in range(m):
            ok = np.isfinite(v[:, i]) & np.isfinite(v[:, j])
            nn[i, j] = int(ok.sum())
            if i >= j:
                continue
            t, p = (math.nan, math.nan)
            if ok.sum() >= 3:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = stats.kendalltau(v[ok, i], v[ok, j])
                t, p = float(res.statistic), float(res.pvalue)
            tau[i, j] = tau[j, i] = t
            pv[i, j] = pv[j, i] = p
    for i in range(m):  # a metric agrees with itself only where it orders something
        if nn[i, i] < 2 or np.nanstd(v[:, i]) == 0:
            tau[i, i], pv[i, i] = math.nan, math.nan
    if m >= 2:
        dist = np.where(np.isfinite(tau), (1 - tau) / 2, 0.5)
        np.fill_diagonal(dist, 0.0)
        z = linkage(squareform(dist, checks=False), method="average")
        order = np.argsort(leaves_list(z))
        cluster = fcluster(z, t=cut, criterion="distance")
    else:
        order, cluster = np.zeros(m, int), np.ones(m, int)
    rows = [
        {
            "metric_a": metrics[i],
            "metric_b": metrics[j],
            "tau": tau[i, j],
            "p_value": pv[i, j],
            "n_methods": nn[i, j],
            "order_a": int(order[i]),
            "order_b": int(order[j]),
            "cluster_a": int(cluster[i]),
            "cluster_b": int(cluster[j]),
        }
        for i in range(m)
        for j in range(m)
    ]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- one model
@dataclass
class ModelSignificance:
    """Everything :func:`analyse` computes for one model (at each method's default setting)."""

    pairs: pd.DataFrame
    flags: pd.DataFrame
    spread: pd.DataFrame
    friedman: Friedman | None
    cd: float
    metrics_used: list[str]
    agreement: pd.DataFrame


def analyse(
    scores: pd.DataFrame,
    directions: dict[str, str],
    *,
    set_level: frozenset[str] | set[str] = frozenset(),
    keep_non_discriminative: bool = False,
    alpha: float = ALPHA,
    w_floor: float = W_FLOOR,
    n_boot: int = 1000,
    seed: int = 0,
    random: str = RANDOM,
) -> ModelSignificance:
    """Paired tests, flags, Friedman + CD over metrics, rank spread and agreement for one
    model's per-image ``scores`` (one setting per method).

    Set-level metrics (``set_level``) take no part in the paired tests and are never flagged
    (their per-image values are not independent). The overall ranking uses the metrics not
    flagged (all of them with ``keep_non_discriminative``, or when every metric is flagged).
    """
    methods = sorted(scores["method"].unique())
    metrics = sorted(scores["metric"].unique())
    cube = score_cube(scores, methods, metrics)
    signs = _signs(metrics, directions)
    pair_tables, flag_rows = [], []
    for j, metric in enumerate(metrics):
        if metric in set_level:
            flag_rows.append({"metric": metric, "non_discriminative": False, "reason": "set-level metric: not tested"})
            continue
        pairs = wilcoxon_pairs(cube[:, :, j], methods, signs[j], alpha=alpha)
        pairs.insert(0, "metric", metric)
        pair_tables.append(pairs)
        flag_rows.append(
            {
                "metric": metric,
                **discrimination(cube[:, :, j], methods, signs[j], pairs, alpha=alpha, w_floor=w_floor, random=random),
            }
        )
    flags = pd.DataFrame(flag_rows)
    flagged = set(flags.loc[flags["non_discriminative"].astype(bool), "metric"])
    used = [m for m in metrics if keep_non_discriminative or m not in flagged] or metrics
    flags["used_in_ranking"] = flags["metric"].isin(used)
    pairs = pd.concat(pair_tables, ignore_index=True) if pair_tables else pd.DataFrame()
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = pd.DataFrame(np.nanmean(cube, axis=0), index=methods, columns=metrics) if len(cube) else None
    if means is None:
        return ModelSignificance(pairs, flags, pd.DataFrame(), None, math.nan, used, pd.DataFrame())
    used_idx = [metrics.index(m) for m in used]
    r = ranks_of_means(means.to_numpy(float)[:, used_idx], signs[used_idx])  # [K, M_used]
    fr = friedman(r.T, higher_is_better=False)
    cd = critical_difference(len(methods), len(used), alpha)
    spread = rank_spread(
        scores[scores["metric"].isin(used)], directions, methods=methods, metrics=used, n_boot=n_boot, seed=seed
    )
    agreement = metric_agreement(means, directions)
    return ModelSignificance(pairs, flags, spread, fr, cd, used, agreement)
