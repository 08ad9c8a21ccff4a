"""Rank attribution methods across metrics.

Per metric, methods are ranked by their mean score over images (1 = best; direction
aware; ties share the average rank; a method with no finite score on a metric ranks
last on it). A random weighting of the metrics is drawn from a flat Dirichlet,
w ~ Dir(1, ..., 1), and each method's weighted rank sum_m w_m r_{method,m} orders the
methods; over ``draws`` weightings we report each method's mean overall rank, the
probability of ranking first, and, against each sanity baseline (random, sobel,
input), the probability of ranking above it and the number of metrics on which it does
(cf. Rong et al. 2022, arXiv:2202.00449; Hedström et al. 2023, Quantus, JMLR 24(34)).

This weighting is the ranking's robustness view; the headline (average rank over
metrics, Friedman + Nemenyi critical difference, bootstrap rank ranges) and the
statistics behind it are in :mod:`xaiscope.analyses.significance`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata


@dataclass
class Ranking:
    """``table``: one row per method (mean_rank, p_first, metric ranks, baseline comparisons);
    ``metric_means``: methods x metrics mean scores; ``draws``: number of weightings."""

    table: pd.DataFrame
    metric_means: pd.DataFrame
    draws: int


def metric_ranks(means: pd.DataFrame, directions: dict[str, str]) -> pd.DataFrame:
    """Methods x metrics ranks (1 = best) from mean scores."""
    ranks = {}
    for metric in means.columns:
        v = means[metric].to_numpy(dtype=float)
        sign = -1.0 if directions.get(metric, "higher") == "higher" else 1.0
        key = np.where(np.isfinite(v), sign * v, np.inf)
        ranks[metric] = rankdata(key, method="average")
    return pd.DataFrame(ranks, index=means.index)


def rank_methods(
    scores: pd.DataFrame,
    directions: dict[str, str],
    *,
    draws: int = 10_000,
    seed: int = 0,
    baselines: tuple[str, ...] = ("random", "sobel", "input"),
) -> Ranking:
    """Rank methods from tidy per-image ``scores`` (columns: method, metric, value)."""
    means = scores.groupby(["method", "metric"])["value"].mean().unstack("metric")
    means = means.loc[:, means.notna().any(axis=0)]
    if means.empty or len(means) < 1:
        return Ranking(pd.DataFrame(columns=["method", "mean_rank", "p_first"]), means, draws)
    r = metric_ranks(means, directions)
    k, m = r.shape
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(m), size=draws)  # [D, M]
    weighted = w @ r.to_numpy().T  # [D, K]
    overall = rankdata(weighted, axis=1, method="min")
    table = pd.DataFrame({"method": r.index, "mean_rank": overall.mean(0), "p_first": (overall == 1).mean(0)})
    for metric in r.columns:
        table[f"rank[{metric}]"] = r[metric].to_numpy()
    methods = list(r.index)
    for b in baselines:
        if b not in methods:
            continue
        j = methods.index(b)
        table[f"p_beats_{b}"] = (weighted < weighted[:, [j]]).mean(0)
        table[f"metrics_beating_{b}"] = (r.to_numpy() < r.to_numpy()[[j]]).sum(1)
    table["is_baseline"] = table["method"].isin(baselines)
    table = table.sort_values(["mean_rank", "method"]).reset_index(drop=True)
    return Ranking(table, means, draws)
