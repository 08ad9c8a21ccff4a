"""Statistics of the aggregates (analyses/significance.py): bootstrap intervals and their
coverage, Holm, Wilcoxon, Friedman + Nemenyi, non-discriminative metrics, rank spread and
metric agreement, against closed forms, hand-computed tables, SciPy and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xaiscope.analyses import significance as S


def _tidy(cube: np.ndarray, methods: list[str], metrics: list[str]) -> pd.DataFrame:
    """Tidy scores from ``[images, methods, metrics]``."""
    n = cube.shape[0]
    rows = [
        {"image_id": f"i{i:03d}", "method": a, "metric": m, "value": float(cube[i, j, k])}
        for i in range(n)
        for j, a in enumerate(methods)
        for k, m in enumerate(metrics)
    ]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- intervals
def test_bootstrap_interval_covers_the_mean_of_an_exponential_at_95_percent():
    # 200 samples of n = 30 from Exp(1) (true mean 1, skewed); one seeded interval each.
    # Tolerance 0.04: 2.6 binomial standard errors (0.015 at 200 repetitions) plus BCa's
    # known O(1/n) undercoverage on skewed data.
    rng = np.random.default_rng(20)
    hits, methods = [], set()
    for r in range(200):
        iv = S.mean_interval(rng.exponential(1.0, 30), rng=np.random.default_rng(r))
        hits.append(iv.low <= 1.0 <= iv.high)
        methods.add(iv.method)
    coverage = float(np.mean(hits))
    assert methods == {"BCa"}
    assert abs(coverage - 0.95) <= 0.04, coverage
    # an 80% interval covers about 80%: the level is the one asked for
    rng = np.random.default_rng(21)
    hits80 = [S.mean_interval(rng.exponential(1.0, 30), rng=np.random.default_rng(r), level=0.8) for r in range(200)]
    assert abs(np.mean([iv.low <= 1.0 <= iv.high for iv in hits80]) - 0.8) <= 0.07


def test_bootstrap_interval_is_seeded_falls_back_and_counts_nan():
    v = np.array([0.1, 0.4, np.nan, 0.35, 0.2, 0.9, np.nan, 0.5])
    a = S.mean_interval(v, rng=S.cell_rng(3, "m", "saliency", "default", "x"))
    b = S.mean_interval(v, rng=S.cell_rng(3, "m", "saliency", "default", "x"))
    assert a == b and (a.n, a.n_nan, a.method) == (6, 2, "BCa")
    assert a.mean == pytest.approx(np.nanmean(v)) and a.low < a.mean < a.high
    want = stats.bootstrap(
        (v[np.isfinite(v)],),
        np.mean,
        n_resamples=2000,
        method="BCa",
        rng=S.cell_rng(3, "m", "saliency", "default", "x"),
    ).confidence_interval
    assert (a.low, a.high) == pytest.approx((want.low, want.high))
    c = S.mean_interval(np.full(12, 0.25), rng=np.random.default_rng(0))  # constant: BCa degenerate
    assert (c.low, c.high, c.method) == (0.25, 0.25, "percentile")
    assert math.isnan(S.mean_interval(np.array([0.3]), rng=np.random.default_rng(0)).low)
    assert S.mean_interval(np.array([np.nan]), rng=np.random.default_rng(0)).n_nan == 1
    # two distinct values in 3: BCa's acceleration is defined; a single outlier among equal values
    # can make BCa's bounds non-finite, then the percentile interval is used
    d = S.mean_interval(np.array([0.0] * 29 + [1.0]), rng=np.random.default_rng(0))
    assert d.method in ("BCa", "percentile") and d.low <= d.mean <= d.high


def test_mean_intervals_one_row_per_cell():
    df = pd.DataFrame(
        {
            "model": "m",
            "method": ["a"] * 6 + ["b"] * 6,
            "setting": "default",
            "metric": ["x", "y"] * 6,
            "value": np.arange(12, dtype=float),
        }
    )
    out = S.mean_intervals(df, seed=1, n_resamples=500)
    assert len(out) == 4 and list(out.columns[-6:]) == ["mean", "ci_low", "ci_high", "ci_method", "n", "n_nan"]
    row = out[(out.method == "a") & (out.metric == "y")].iloc[0]
    assert row["mean"] == pytest.approx(np.mean([1, 3, 5])) and row["n"] == 3


# ----------------------------------------------------------------------------- Holm, Wilcoxon
def test_holm_by_hand_and_against_statsmodels():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(S.holm(p), [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(S.holm([0.2, np.nan])[1]) and S.holm([0.2, np.nan])[0] == 0.2
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 45, 190):
        q = rng.random(size) ** 3
        np.testing.assert_allclose(S.holm(q), multitest.multipletests(q, method="holm")[1], rtol=1e-12)


def test_wilcoxon_pairs_match_scipy_and_name_the_mode():
    rng = np.random.default_rng(1)
    n = 30
    a = rng.normal(0.0, 1.0, n)
    cube = np.stack(
        [a, a + 0.8 + rng.normal(0, 0.3, n), a + rng.normal(0, 1.0, n), a + np.round(rng.normal(0, 2, n))], 1
    )
    cube[3, 1] = np.nan
    methods = ["a", "b", "c", "d"]
    out = S.wilcoxon_pairs(cube, methods, sign=1.0)
    assert len(out) == 6 and set(out["zero_method"]) == {"wilcox"}
    ab = out[(out.method_a == "a") & (out.method_b == "b")].iloc[0]
    ok = np.isfinite(cube[:, 1])
    want = stats.wilcoxon(cube[ok, 0], cube[ok, 1], zero_method="wilcox", method="exact")
    assert ab["n"] == n - 1 and ab["mode"] == "exact" and ab["p_value"] == pytest.approx(want.pvalue)
    assert ab["better"] == "b" and ab["significant"]
    ad = out[(out.method_a == "a") & (out.method_b == "d")].iloc[0]  # integer differences: ties
    assert ad["mode"] == "approx"
    np.testing.assert_allclose(out["p_holm"], S.holm(out["p_value"]))
    # lower is better: the same data favour the other method
    assert S.wilcoxon_pairs(cube, methods, sign=-1.0).iloc[0]["better"] == "a"
    same = S.wilcoxon_pair(a, a.copy())
    assert same["p_value"] == 1.0 and same["mode"] == "no_difference"
    none = S.wilcoxon_pair(a, np.full(n, np.nan))
    assert none["n"] == 0 and math.isnan(none["p_value"]) and none["mode"] == "no_images"


# ----------------------------------------------------------------------------- Friedman, Nemenyi
def test_friedman_by_hand_and_against_scipy():
    v = np.array([[3, 2, 1], [3, 1, 2], [2, 3, 1], [3, 2, 1]], float)
    f = S.friedman(v)
    # rank sums 5, 8, 11: chi2 = 12 / (4 3 4) (25 + 64 + 121) - 3 4 4 = 4.5; df 2: p = exp(-4.5 / 2)
    np.testing.assert_allclose(f.mean_ranks, [1.25, 2.0, 2.75])
    assert f.chi2 == pytest.approx(4.5) and f.p_value == pytest.approx(math.exp(-2.25))
    assert f.kendall_w == pytest.approx(4.5 / (4 * 2))
    assert f.iman_davenport == pytest.approx(3 * 4.5 / (4 * 2 - 4.5))
    rng = np.random.default_rng(2)
    for shape in ((12, 5), (40, 3), (7, 9)):
        x = np.round(rng.normal(size=shape) + np.arange(shape[1]) * 0.3, 1)  # with ties
        want = stats.friedmanchisquare(*x.T)
        got = S.friedman(x)
        assert got.chi2 == pytest.approx(want.statistic) and got.p_value == pytest.approx(want.pvalue)
    const = S.friedman(np.ones((5, 4)))
    assert const.chi2 == 0.0 and const.p_value == 1.0 and const.kendall_w == 0.0


def test_nemenyi_critical_values_and_difference():
    for k, q in S.Q_05.items():
        assert q == pytest.approx(stats.studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2), abs=2e-3)
    assert S.Q_05[4] == 2.569 and S.Q_05[10] == 3.164  # Demsar 2006, Table 5(a)
    assert S.critical_difference(4, 10) == pytest.approx(2.569 * math.sqrt(4 * 5 / 60))
    assert S.q_alpha(25) == pytest.approx(stats.studentized_range.ppf(0.95, 25, np.inf) / math.sqrt(2))


# ----------------------------------------------------------------------------- flags
def test_flag_fires_on_a_constant_metric_and_not_on_a_discriminating_one():
    rng = np.random.default_rng(3)
    n, methods = 40, ["gradcam", "random", "saliency"]
    constant = np.full((n, 3), 0.5)
    good = np.stack([rng.normal(1.0, 0.3, n), rng.normal(0.0, 0.3, n), rng.normal(0.6, 0.3, n)], 1)
    f_const = S.discrimination(constant, methods, 1.0, S.wilcoxon_pairs(constant, methods, 1.0))
    f_good = S.discrimination(good, methods, 1.0, S.wilcoxon_pairs(good, methods, 1.0))
    assert f_const["non_discriminative"] and "Friedman p = 1" in f_const["reason"]
    assert not f_good["non_discriminative"] and f_good["reason"] == "" and f_good["random_beaten"]
    assert f_good["kendall_w"] > 0.5
    # methods differ, but nothing beats random: random scores as well as the best method
    rnd = good.copy()
    rnd[:, 1] = good[:, 0] + rng.normal(0, 0.01, n)
    f_rnd = S.discrimination(rnd, methods, 1.0, S.wilcoxon_pairs(rnd, methods, 1.0))
    assert f_rnd["friedman_p"] < 0.05 and f_rnd["non_discriminative"]
    assert f_rnd["reason"] == "no method beats the random baseline"
    # a tiny but significant effect: W under the floor
    tiny = rng.normal(0, 1, (2000, 3)) + np.array([0.0, 0.05, 0.1])
    f_tiny = S.discrimination(tiny, ["a", "b", "c"], 1.0, None)
    assert f_tiny["friedman_p"] < 0.05 and f_tiny["kendall_w"] < 0.1 and f_tiny["non_discriminative"]


def test_analyse_leaves_flagged_metrics_out_of_the_ranking_unless_kept():
    rng = np.random.default_rng(4)
    n, methods = 30, ["a", "b", "random"]
    good = np.stack([rng.normal(2, 0.3, n), rng.normal(1, 0.3, n), rng.normal(0, 0.3, n)], 1)
    cube = np.stack([good, np.full((n, 3), 0.5), -good + rng.normal(0, 0.1, (n, 3)), good], 2)
    scores = _tidy(cube, methods, ["good", "flat", "low", "setwise"])
    directions = {"good": "higher", "flat": "higher", "low": "lower", "setwise": "higher"}
    r = S.analyse(scores, directions, set_level={"setwise"}, n_boot=200, seed=0)
    flags = r.flags.set_index("metric")
    assert flags.loc["flat", "non_discriminative"] and not flags.loc["good", "non_discriminative"]
    assert not flags.loc["low", "non_discriminative"] and not flags.loc["setwise", "non_discriminative"]
    assert r.metrics_used == ["good", "low", "setwise"] and set(r.pairs["metric"]) == {"flat", "good", "low"}
    spread = r.spread.set_index("method")
    assert spread.loc["a", "avg_rank"] == 1.0 and spread.loc["random", "avg_rank"] == 3.0
    assert (spread["rank_low"] == spread["rank_high"]).all()  # clear separation: no spread
    assert r.cd == pytest.approx(S.critical_difference(3, 3))
    kept = S.analyse(scores, directions, set_level={"setwise"}, keep_non_discriminative=True, n_boot=50)
    assert kept.metrics_used == ["flat", "good", "low", "setwise"]


# ----------------------------------------------------------------------------- rank spread, agreement
def test_rank_spread_covers_both_positions_of_two_equal_methods():
    rng = np.random.default_rng(5)
    n = 25
    a, d = rng.normal(0, 1, n), rng.normal(0, 0.5, n)
    b = a + d - d.mean()  # the same mean as a: either may come first in a resample
    cube = np.stack([a, b, rng.normal(-5, 1, n)], 1)[:, :, None] * np.array([1.0, 2.0])  # two metrics alike
    scores = _tidy(cube, ["a", "b", "c"], ["x", "y"])
    out = S.rank_spread(scores, {"x": "higher", "y": "higher"}, n_boot=400, seed=1).set_index("method")
    assert out.loc["a", "rank_low"] == 1 and out.loc["a", "rank_high"] == 2
    assert out.loc["b", "rank_low"] == 1 and out.loc["b", "rank_high"] == 2
    assert out.loc["c", "rank_low"] == out.loc["c", "rank_high"] == 3
    again = S.rank_spread(scores, {"x": "higher", "y": "higher"}, n_boot=400, seed=1).set_index("method")
    pd.testing.assert_frame_equal(out, again)


def test_metric_agreement_is_direction_aware_and_clusters():
    means = pd.DataFrame(
        {
            "up": [1.0, 2.0, 3.0, 4.0, 5.0],
            "down": [5.0, 4.0, 3.0, 2.0, 1.0],  # lower is better: the same ordering as up
            "other": [3.0, 5.0, 1.0, 4.0, 2.0],
            "flat": [1.0] * 5,
        },
        index=list("abcde"),
    )
    out = S.metric_agreement(means, {"up": "higher", "down": "lower", "other": "higher", "flat": "higher"})
    t = out.set_index(["metric_a", "metric_b"])["tau"]
    assert t["up", "down"] == pytest.approx(1.0) and t["up", "up"] == 1.0
    assert t["up", "other"] == pytest.approx(stats.kendalltau([1, 2, 3, 4, 5], [3, 5, 1, 4, 2]).statistic)
    assert math.isnan(t["up", "flat"])
    c = out.drop_duplicates("metric_a").set_index("metric_a")
    assert c.loc["up", "cluster_a"] == c.loc["down", "cluster_a"] != c.loc["other", "cluster_a"]
    assert abs(c.loc["up", "order_a"] - c.loc["down", "order_a"]) == 1


def test_two_level_interval_covers_the_mean_over_models_where_pooling_images_does_not():
    """Models differ (model effect N(0, 1)), images vary within a model (N(0, 0.5^2)): the
    two-level bootstrap covers the grand mean 0 near its level (a little under: 8 models),
    the interval over pooled images, which ignores the models, far below it."""
    from xaiscope.analyses.significance import hierarchical_interval

    rng = np.random.default_rng(0)
    hits_two_level = hits_pooled = 0
    reps = 100
    for r in range(reps):
        models = [rng.normal(rng.normal(0, 1), 0.5, size=15) for _ in range(8)]
        two = hierarchical_interval(models, rng=np.random.default_rng(r), n_resamples=300)
        pooled = S.mean_interval(
            np.concatenate(models), rng=np.random.default_rng(r), n_resamples=300, method="percentile"
        )
        hits_two_level += two.low <= 0 <= two.high
        hits_pooled += pooled.low <= 0 <= pooled.high
    assert hits_two_level / reps >= 0.82
    assert hits_pooled / reps <= 0.6


def test_collection_intervals_need_two_models_and_leave_nan_out():
    from xaiscope.analyses.significance import collection_intervals

    rows = [
        {"model": m, "method": "saliency", "setting": "default", "metric": "x", "value": v}
        for m, vals in (("a", [0.1, 0.2, np.nan]), ("b", [0.5, 0.7, 0.6]))
        for v in vals
    ]
    df = pd.DataFrame(rows)
    out = collection_intervals(df, seed=1, n_resamples=200)
    row = out.iloc[0]
    assert row["mean"] == pytest.approx((0.15 + 0.6) / 2) and row["n_models"] == 2 and row["n_nan"] == 1
    assert row["ci_low"] <= row["mean"] <= row["ci_high"] and row["ci_method"] == "two-level percentile"
    assert collection_intervals(df[df.model == "a"], seed=1).empty


def test_set_level_interval_recomputes_the_set_score_on_resamples():
    predicted = np.array([0] * 5 + [1] * 5)
    pairs = ~np.eye(10, dtype=bool)  # every other image is paired
    iv = S.set_level_interval(pairs, predicted, rng=np.random.default_rng(0), n_resamples=300)
    assert iv.mean == pytest.approx(4 / 9) and iv.method == "percentile, set score recomputed"
    assert iv.low < iv.mean < iv.high
    same = S.set_level_interval(pairs, np.zeros(10, int), rng=np.random.default_rng(0), n_resamples=300)
    assert (same.mean, same.low, same.high) == (1.0, 1.0, 1.0)  # copies are never paired with themselves
