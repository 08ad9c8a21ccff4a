"""Closed-form cases, invariances, pass counts and user errors of the metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metrics_helpers import inputs
from xaiscope import evaluate, explain, models
from xaiscope.errors import MetricError


class SumModel(nn.Module):
    """f(x) = [sum(x), -sum(x)] (logits)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        s = x.flatten(1).sum(1) * self.w
        return torch.stack([s, -s], 1)


@pytest.fixture(scope="module")
def data():
    return inputs(0)


def test_faithfulness_correlation_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, generator=g) + 0.5
    y = torch.zeros(4, dtype=torch.long)
    m = evaluate.get("faithfulness_correlation", nr_runs=30, subset_size=10, fill="zero", output="logit")
    torch.testing.assert_close(m(SumModel(), x, y, x), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(m(SumModel(), x, y, -x), -torch.ones(4), atol=1e-5, rtol=0)


def test_map_equal_to_mask_scores_one(data):
    _, x, y, _, mask = data
    a = mask.float()
    for name in (
        "relevance_mass_accuracy",
        "relevance_rank_accuracy",
        "pointing_game",
        "auroc",
        "average_precision",
        "precision_at_k",
        "attribution_localisation",
    ):
        torch.testing.assert_close(evaluate.get(name)(None, x, y, a, mask=mask), torch.ones(len(x)), msg=name)


def test_empty_mask_gives_nan_not_error(data):
    _, x, y, a, mask = data
    mask = mask.clone()
    mask[0] = False
    for name in ("relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game", "auroc", "top_k_intersection"):
        s = evaluate.get(name)(None, x, y, a, mask=mask)
        assert math.isnan(s[0]) and not torch.isnan(s[1:]).any(), name


def test_constant_map_sparseness_zero_and_zero_map_nan(data):
    _, x, y, _, _ = data
    assert evaluate.get("sparseness")(None, x, y, torch.full((8, 16, 16), 0.3)).abs().max() < 1e-6
    assert torch.isnan(evaluate.get("complexity")(None, x, y, torch.zeros(8, 16, 16))).all()


def test_monotonicity_follows_paper_on_additive_model():
    x = torch.rand(3, 1, 6, 6) + 0.1
    y = torch.zeros(3, dtype=torch.long)
    # adding positive pixels back only raises sum(x): monotone
    out = evaluate.get("monotonicity", fill="zero", output="logit")(SumModel(), x, y, x)
    assert out.tolist() == [1.0, 1.0, 1.0]
    out = evaluate.get("monotonicity", fill="zero", output="logit")(SumModel(), -x, y, x)
    assert out.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("batch_size", [1, 7, 512])
def test_monotonicity_early_stop_equals_whole_curve(data, batch_size):
    from xaiscope.evaluate import perturbation as P

    net, x, y, a, _ = data
    m = evaluate.get("monotonicity", features_in_step=8, batch_size=batch_size)
    with models.count_passes(net) as c:
        got = m(net, x, y, a)
    # the whole curve of every image, then the paper's test
    units = P.pixel_units(m.map(a, dims=2))
    lo, hi = P.cumulative(8, units.size)
    steps = P.RankSteps(units, P.ranks(units, "lerf"), lo, hi)
    v = P.run(net, x, y, steps, P.make_fill("black", x, steps.T), batch_size=512, insertion=True)
    want = (v.diff(dim=1) >= 0).all(dim=1).float()
    torch.testing.assert_close(got, want)
    full = m.passes((1, 16, 16)) * len(x)
    # a random-weight model's curves fail early: far fewer images reach the model
    # (unless one model call holds every step of every image)
    assert want.sum() < len(x)
    assert c.rows < full / 2 if batch_size < full else c.rows == full, (c.rows, full)
    # monotone curves still see every step: f = sum(x) with a = x is monotone for every image
    with models.count_passes(SumNet := SumModel()) as c2:
        assert m(SumNet, x + 0.1, y * 0, x + 0.1).tolist() == [1.0] * len(x)
    assert c2.rows == full


def test_completeness_gap_is_zero_for_exact_decomposition():
    x = torch.rand(3, 1, 6, 6)
    y = torch.zeros(3, dtype=torch.long)
    out = evaluate.get("completeness", fill="zero")(SumModel(), x, y, x)
    assert out.abs().max() < 1e-5


def test_deletion_insertion_curves(data):
    net, x, y, a, _ = data
    m = evaluate.get("deletion", steps=10)
    frac, curve = m.curves(net, x, y, a)
    assert frac.shape == (11,) and curve.shape == (8, 11)
    f0 = models.scores(net, x, y)
    torch.testing.assert_close(curve[:, 0].float(), f0)
    torch.testing.assert_close(m(net, x, y, a), torch.trapezoid(curve, frac.double()).float())
    ins = evaluate.get("insertion", steps=10, fill="zero")
    _, c2 = ins.curves(net, x, y, a)
    torch.testing.assert_close(c2[:, -1].float(), f0)


@pytest.mark.parametrize("name", ["model_parameter_randomisation", "smooth_model_parameter_randomisation"])
@pytest.mark.parametrize("method", ["input", "sobel"])
def test_model_independent_map_is_fully_similar(data, name, method):
    net, x, y, _, _ = data
    ex = explain.get(method)
    a = ex(net, x, y)
    hp = {"nr_samples": 2} if name.startswith("smooth") else {}
    if name.startswith("smooth"):
        hp["noise_magnitude"] = 0.0
    s = evaluate.get(name, **hp)(net, x, y, a, explainer=ex)
    torch.testing.assert_close(s, torch.ones(8), atol=1e-6, rtol=0)


BATCH_CASES = {
    "deletion": {},
    "pixel_flipping": {"features_in_step": 16},
    "region_perturbation": {"patch_size": 4},
    "faithfulness_correlation": {"nr_runs": 10, "subset_size": 20},
    "monotonicity_correlation": {"nr_samples": 2, "features_in_step": 32},
    "road": {"percentage_step": 20},
    "infidelity": {},
    "irof": {"n_segments": 16},
    "max_sensitivity": {"nr_samples": 5},
    "relative_output_stability": {"nr_samples": 4},
    "relative_representation_stability": {"nr_samples": 4},
    "continuity": {"nr_steps": 4},
    "model_parameter_randomisation": {},
    "non_sensitivity": {"features_in_step": 4},
}


@pytest.mark.parametrize("name", sorted(BATCH_CASES))
def test_batch_size_and_seed_invariance_and_pass_count(data, name):
    net, x, y, a, mask = data
    ex = explain.get("saliency")
    hp = BATCH_CASES[name]
    big = evaluate.get(name, batch_size=512, **hp)
    with models.count_passes(net) as c:
        s1 = big(net, x, y, a, mask=mask, explainer=ex)
    s2 = evaluate.get(name, batch_size=7 if name != "non_sensitivity" else 37, **hp)(
        net, x, y, a, mask=mask, explainer=ex
    )
    s3 = evaluate.get(name, batch_size=512, **hp)(net, x, y, a, mask=mask, explainer=ex)
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5, equal_nan=True)
    torch.testing.assert_close(s1, s3, equal_nan=True)
    if name == "model_parameter_randomisation":
        expected = big.passes((1, 16, 16), ex, net)
    elif name == "irof":
        expected = None  # depends on the superpixels found
    else:
        expected = big.passes((1, 16, 16), explainer=ex)
    if expected is not None:
        assert c.rows == expected * len(x), (c.rows, expected)


@pytest.mark.parametrize(
    "name",
    [
        "deletion",
        "road",
        "monotonicity",
        "max_sensitivity",
        "model_parameter_randomisation",
        "random_logit",
        "completeness",
    ],
)
def test_bad_targets_are_clear_errors(data, name):
    from xaiscope.errors import ModelError

    net, x, y, a, _ = data
    hp = {"nr_samples": 2} if name == "max_sensitivity" else {}
    m = evaluate.get(name, **hp)
    bad = y.clone()
    bad[3] = 9
    with pytest.raises(ModelError, match="Target class 9 is beyond the model's outputs"):
        m(net, x, bad, a, explainer=explain.get("saliency"))
    bad[3] = -2
    with pytest.raises(ModelError, match="got -2"):
        m(net, x, bad, a, explainer=explain.get("saliency"))


def test_unknown_metric_and_setting_errors():
    with pytest.raises(MetricError, match="Unknown metric 'delition'.*did you mean 'deletion'"):
        evaluate.get("delition")
    with pytest.raises(MetricError, match="has no setting 'step'.*did you mean 'steps'"):
        evaluate.get("deletion", step=3)
    with pytest.raises(MetricError, match="must be >= 1"):
        evaluate.get("deletion", steps=0)
    with pytest.raises(MetricError, match="must be one of"):
        evaluate.get("deletion", fill="purple")


def test_missing_inputs_errors(data):
    net, x, y, a, _ = data
    with pytest.raises(MetricError, match="needs masks"):
        evaluate.get("pointing_game")(None, x, y, a)
    with pytest.raises(MetricError, match="needs an explainer"):
        evaluate.get("max_sensitivity")(net, x, y, a)
    with pytest.raises(MetricError, match="attributions"):
        evaluate.get("sparseness")(None, x, y, a[:, :, :4])


def test_registry_metadata_complete():
    assert len(evaluate.names()) == 43
    for row in evaluate.table():
        assert row["category"] in evaluate.CATEGORIES and row["direction"] in ("higher", "lower") and row["reference"]


def test_emd_score_identical_distribution_is_one(data):
    _, x, y, _, mask = data
    s = evaluate.get("emd_score")(None, x, y, mask.float(), mask=mask)
    torch.testing.assert_close(s, torch.ones(8), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["deletion", "insertion"])
def test_score_and_curves_share_one_set_of_passes(name):
    import torch

    from xaiscope import evaluate, explain, models

    net = models.build("small_cnn", width=4).eval()
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1, 0])
    a = explain.get("saliency")(net, x, y)
    m = evaluate.get(name, steps=4)
    with models.count_passes(net) as count:
        scores, fractions, values = m.score_and_curves(net, x, y, a)
    assert count.rows == m.passes((1, 16, 16)) * 5
    torch.testing.assert_close(scores, m(net, x, y, a))
    f2, v2 = m.curves(net, x, y, a)
    torch.testing.assert_close(fractions, f2)
    torch.testing.assert_close(values, v2)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("descending", [False, True])
def test_fast_cpu_argsort_equals_torch_stable_argsort(ties, descending):
    from xaiscope.evaluate.stats import argsort_rows, sort_rows

    v = torch.rand(6, 257, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if ties:
        v = (v * 5).floor()
    assert torch.equal(argsort_rows(v, descending=descending), v.argsort(dim=-1, descending=descending, stable=True))
    torch.testing.assert_close(sort_rows(v), v.sort(dim=-1).values)


def test_road_stencil_equals_its_convolution():
    from xaiscope.evaluate.perturbation import neighbour_mean

    k = torch.tensor([[1, 2, 1], [2, 0, 2], [1, 2, 1]], dtype=torch.float64).view(1, 1, 3, 3) / 12
    v = torch.rand(3, 1, 7, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(neighbour_mean(v), torch.nn.functional.conv2d(v, k, padding=1), atol=1e-15, rtol=0)


def test_emd_coarse_transport_stays_within_its_bound_of_the_exact_one():
    """The coarse solver moves each unit of mass by at most half a cell diagonal in each
    distribution: |score_coarse - score_exact| <= k sqrt(2) / D."""
    from xaiscope.evaluate.localisation import cell_side

    g = torch.Generator().manual_seed(3)
    hw = 24
    a = torch.rand(6, hw, hw, generator=g) ** 3
    mask = torch.zeros(6, hw, hw, dtype=torch.bool)
    for i in range(6):
        mask[i, 2 + i : 9 + i, 4 + 2 * i : 12 + i] = True
    x, y = torch.rand(6, 1, hw, hw), torch.zeros(6, dtype=torch.long)
    exact = evaluate.get("emd_score", solver="exact")(None, x, y, a, mask=mask)
    for cells in (16, 64, 144):
        k = cell_side((hw, hw), cells)
        coarse = evaluate.get("emd_score", solver="coarse", max_cells=cells)(None, x, y, a, mask=mask)
        bound = k * 2**0.5 / (2 * hw * hw) ** 0.5
        assert (coarse - exact).abs().max() <= bound + 1e-9
    same = evaluate.get("emd_score", solver="coarse", max_cells=hw * hw)(None, x, y, a, mask=mask)
    torch.testing.assert_close(same, exact)  # cells of one pixel: the exact transport
    assert torch.equal(evaluate.get("emd_score", max_cells=hw * hw)(None, x, y, a, mask=mask), exact)  # auto: exact
