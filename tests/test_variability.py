"""Model-collection variability: identical models, a hand-made pair, streaming vs two-pass, fits."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from xaiscope import explain, models
from xaiscope.analyses.fits import linear, quadratic
from xaiscope.analyses.variability import RunningStats, variability
from xaiscope.data import Dataset
from xaiscope.errors import ConfigError, DataError
from xaiscope.evaluate.stats import rank as average_ranks


def linear_model(w1: list[float]) -> torch.nn.Module:
    """logits = [0, w1 . flatten(x)] for 1x2x2 images."""
    lin = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], w1]))
    return torch.nn.Sequential(torch.nn.Flatten(), lin).eval()


def tiny_pair_data() -> Dataset:
    x = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])
    return Dataset(x=x, y=torch.tensor([1, 0]), ids=["a", "b"], classes=["n", "p"], source="hand")


def sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_two_model_collection_matches_hand_computed_values():
    ds = tiny_pair_data()
    mods = [linear_model([2.0, 0.0, 0.0, 1.0]), linear_model([-1.0, 0.0, 0.0, -1.0])]
    fg = torch.tensor([[True, False], [False, False]])
    r = variability(iter(mods), ds, explain.get("saliency"), foreground=fg)
    # model A: image a -> logits [0, 2] correct (p = sig 2); image b -> [0, 1] wrong (p_true = 1 - sig 1)
    # model B: image a -> [0, -1] wrong (p = sig -1);     image b -> [0, -1] correct (p_true = sig 1)
    torch.testing.assert_close(r.correct_mean, torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(r.correct_sd, torch.tensor([0.5, 0.5], dtype=torch.float64))  # sqrt(mu (1 - mu))
    pa, pb = [sig(2), sig(-1)], [1 - sig(1), sig(1)]
    torch.testing.assert_close(r.prob_mean, torch.tensor([sum(pa) / 2, sum(pb) / 2], dtype=torch.float64))
    torch.testing.assert_close(
        r.prob_sd, torch.tensor([abs(pa[0] - pa[1]) / 2, abs(pb[0] - pb[1]) / 2], dtype=torch.float64)
    )
    # saliency of logit_1 = |w1|, sum-to-one: A [2/3, 0, 0, 1/3], B [1/2, 0, 0, 1/2]; logit_0 has zero gradient
    torch.testing.assert_close(r.mean_map[0], torch.tensor([[7 / 12, 0.0], [0.0, 5 / 12]]))
    torch.testing.assert_close(r.sd_map[0], torch.tensor([[1 / 12, 0.0], [0.0, 1 / 12]]))
    torch.testing.assert_close(r.sd_map[1], torch.zeros(2, 2))
    torch.testing.assert_close(r.attention_sd, torch.tensor([1 / 24, 0.0], dtype=torch.float64))
    torch.testing.assert_close(r.attention_sd_fg, torch.tensor([1 / 12, 0.0], dtype=torch.float64))
    rho = spearmanr([2 / 3, 0, 0, 1 / 3], [0.5, 0, 0, 0.5]).statistic
    assert float(r.spearman_mean[0]) == pytest.approx(rho)
    assert math.isnan(float(r.spearman_mean[1]))  # constant maps: Spearman undefined
    assert float(r.pairwise[0, 1]) == pytest.approx(rho)
    torch.testing.assert_close(r.model_accuracy, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert r.passes == 2 * (1 + 1) * 2  # M (1 + E) N with E = 1 for saliency


def small_set(n=12, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(
        x=torch.rand(n, 1, 12, 12, generator=g),
        y=torch.arange(n) % 2,
        ids=[f"i{i}" for i in range(n)],
        classes=["a", "b"],
        source="random",
    )


def cnn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build("small_cnn", in_channels=1, num_classes=2, width=4).eval()


def test_identical_models_give_exactly_zero_sd():
    ds = small_set()
    base = cnn(0)
    r = variability((copy.deepcopy(base) for _ in range(3)), ds, explain.get("input_x_gradient"), batch_size=5)
    assert r.n_models == 3
    assert torch.equal(r.sd_map, torch.zeros_like(r.sd_map))
    assert torch.equal(r.correct_sd, torch.zeros_like(r.correct_sd))
    assert torch.equal(r.prob_sd, torch.zeros_like(r.prob_sd))
    assert torch.equal(r.attention_sd, torch.zeros_like(r.attention_sd))
    ok = torch.isfinite(r.spearman_mean)
    assert ok.any()
    torch.testing.assert_close(r.spearman_mean[ok], torch.ones(int(ok.sum()), dtype=torch.float64))


def test_streaming_equals_two_pass():
    ds = small_set(n=10)
    ex = explain.get("input_x_gradient")
    mods = [cnn(s) for s in range(4)]
    r = variability(iter(mods), ds, ex, batch_size=3, pair_images=None)
    maps = torch.stack([explain.postprocess(ex(m, ds.x, ds.y), normalise="sum_to_one").double() for m in mods])
    torch.testing.assert_close(r.mean_map.double(), maps.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.sd_map.double(), maps.std(0, unbiased=False), atol=1e-6, rtol=0)
    probs = torch.stack([models.forward(m, ds.x).softmax(1)[torch.arange(10), ds.y].double() for m in mods])
    torch.testing.assert_close(r.prob_mean, probs.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.prob_sd, probs.std(0, unbiased=False), atol=1e-6, rtol=0)
    # pairwise Spearman of models 1 and 3 on image 4
    rho = spearmanr(maps[1, 4].flatten().numpy(), maps[3, 4].flatten().numpy()).statistic
    i4 = []
    for a in range(4):
        for b in range(a + 1, 4):
            i4.append(spearmanr(maps[a, 4].flatten().numpy(), maps[b, 4].flatten().numpy()).statistic)
    assert float(r.spearman_mean[4]) == pytest.approx(np.mean(i4), abs=1e-6)
    all_13 = [spearmanr(maps[1, i].flatten().numpy(), maps[3, i].flatten().numpy()).statistic for i in range(10)]
    assert float(r.pairwise[1, 3]) == pytest.approx(np.mean(all_13), abs=1e-6)
    assert rho == pytest.approx(all_13[4])


def test_running_stats_is_numerically_stable():
    g = torch.Generator().manual_seed(1)
    items = 1e6 + torch.randn(50, 7, generator=g, dtype=torch.float64)  # large offset, small spread
    rs = RunningStats((7,))
    for v in items:
        rs.next_item()
        rs.update(v[:3], slice(0, 3))  # rows may arrive in batches
        rs.update(v[3:], slice(3, 7))
    torch.testing.assert_close(rs.mean, items.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(rs.sd(), items.std(0, unbiased=False), atol=1e-6, rtol=0)


def test_pair_subset_bounds_memory():
    ds = small_set(n=8)
    r = variability((cnn(s) for s in range(2)), ds, explain.get("saliency"), pair_images=3)
    assert r.pair_index.tolist() == [0, 1, 2]
    assert torch.isfinite(r.spearman_mean[:3]).all() and torch.isnan(r.spearman_mean[3:]).all()


def test_average_ranks_match_scipy():
    from scipy.stats import rankdata

    v = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0, 5.0]])
    np.testing.assert_allclose(average_ranks(v)[0].numpy(), rankdata(v[0].numpy()))


def test_variability_errors():
    ds = small_set(n=4)
    with pytest.raises(DataError, match="empty"):
        variability(iter([]), ds, explain.get("saliency"))
    with pytest.raises(ConfigError, match="normalisation"):
        variability(iter([cnn(0)]), ds, explain.get("saliency"), normalise="p99")
    with pytest.raises(DataError, match="foreground"):
        variability(iter([cnn(0)]), ds, explain.get("saliency"), foreground=torch.ones(3, 3, dtype=torch.bool))


def test_quadratic_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 200)
    y = 0.5 + 2.0 * x - 3.0 * x**2 + rng.normal(0, 0.01, 200)
    f = quadratic(x, y, n_boot=300, seed=1)
    np.testing.assert_allclose(f.coefficients, [0.5, 2.0, -3.0], atol=0.02)
    for c, lo, hi in zip([0.5, 2.0, -3.0], f.coefficients_low, f.coefficients_high):
        assert lo <= c <= hi
    assert f.r2 > 0.99 and f.r2_low <= f.r2 <= f.r2_high + 1e-12
    np.testing.assert_allclose(f.predict([0.0, 1.0]), [f.coefficients[0], sum(f.coefficients)])
    assert quadratic(x, y, n_boot=300, seed=1) == f  # seeded bootstrap


def test_linear_fit_recovers_known_coefficients_exactly_without_noise():
    x = np.linspace(0, 0.5, 30)
    f = linear(x, 0.1 + 0.4 * x, n_boot=50)
    np.testing.assert_allclose(f.coefficients, [0.1, 0.4], atol=1e-12)
    assert f.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(f.coefficients_low, [0.1, 0.4], atol=1e-9)
    f2 = linear(np.append(x, np.nan), np.append(0.1 + 0.4 * x, 1.0), n_boot=0)  # non-finite pairs dropped
    assert f2.n == 30 and math.isnan(f2.coefficients_low[0])


def test_fit_errors():
    with pytest.raises(DataError, match="at least 3 finite points"):
        quadratic([0.0, 1.0], [1.0, 2.0])
    with pytest.raises(DataError, match="2 distinct x values; got 1"):
        linear([0.5, 0.5, 0.5], [1.0, 2.0, 3.0])
    with pytest.raises(DataError, match="as many x as y"):
        linear([0.0, 1.0], [1.0])
    with pytest.raises(ConfigError, match="ci"):
        linear([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], ci=1.5)
