"""Our metrics against Quantus 0.6 on the same inputs (tiny random CNN, 8 images, saliency maps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics_helpers import explain_func, inputs
from xaiscope import evaluate, explain

quantus = pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def data():
    return inputs(0)


def _q(metric, data, batch_size=64, with_mask=False, **call):
    net, x, y, a, mask = data
    kw = dict(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu", batch_size=batch_size)
    if with_mask:
        kw["s_batch"] = mask.unsqueeze(1).numpy()
    kw.update(call)
    return np.asarray(metric(**kw), dtype=np.float64)


def _ours(name, data, **hp):
    net, x, y, a, mask = data
    return evaluate.get(name, **hp)(net, x, y, a, mask=mask, explainer=explain.get("saliency")).double().numpy()


LOCALISATION = [
    ("relevance_mass_accuracy", "RelevanceMassAccuracy", {}),
    ("relevance_rank_accuracy", "RelevanceRankAccuracy", {}),
    ("pointing_game", "PointingGame", {}),
    ("top_k_intersection", "TopKIntersection", {"k": 40}),
    ("attribution_localisation", "AttributionLocalisation", {}),
    ("auroc", "AUC", {}),
]


@pytest.mark.parametrize("ours,theirs,hp", LOCALISATION)
def test_localisation_matches_quantus(data, ours, theirs, hp):
    q = _q(getattr(quantus, theirs)(disable_warnings=True, **hp), data, with_mask=True)
    np.testing.assert_allclose(_ours(ours, data, **hp), q, atol=1e-5)


def test_focus_matches_quantus_on_mosaic_quadrants(data):
    net, x, y, a, _ = data
    c = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]] * 2)
    q = np.asarray(
        quantus.Focus(disable_warnings=True)(
            model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), custom_batch=c, device="cpu"
        )
    )
    quad = torch.zeros(8, 16, 16, dtype=torch.bool)
    for i, ci in enumerate(c):
        for k, (r, cc) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
            quad[i, r : r + 8, cc : cc + 8] = bool(ci[k])
    ours = evaluate.get("focus")(None, x, y, a, mask=quad).double().numpy()
    np.testing.assert_allclose(ours, q, atol=1e-5)


COMPLEXITY = [
    ("sparseness", "Sparseness"),
    ("complexity", "Complexity"),
    ("effective_complexity", "EffectiveComplexity"),
]


@pytest.mark.parametrize("ours,theirs", COMPLEXITY)
def test_complexity_matches_quantus(data, ours, theirs):
    q = _q(getattr(quantus, theirs)(disable_warnings=True), data)
    np.testing.assert_allclose(_ours(ours, data), q, atol=1e-5)


@pytest.mark.slow
def test_pixel_flipping_matches_quantus(data):
    q = _q(quantus.PixelFlipping(disable_warnings=True, return_auc_per_sample=True), data)
    np.testing.assert_allclose(_ours("pixel_flipping", data), q, atol=1e-5 * 256)


def test_pixel_flipping_curve_matches_quantus(data):
    net, x, y, a, _ = data
    q = _q(quantus.PixelFlipping(disable_warnings=True, features_in_step=8), data)
    _, ours = evaluate.get("pixel_flipping", features_in_step=8).curves(net, x, y, a)
    np.testing.assert_allclose(ours.numpy(), q, atol=1e-5)


def test_region_perturbation_matches_quantus(data):
    q = _q(quantus.RegionPerturbation(disable_warnings=True, patch_size=4), data)
    net, x, y, a, _ = data
    _, ours = evaluate.get("region_perturbation", patch_size=4).curves(net, x, y, a)
    np.testing.assert_allclose(ours.numpy(), q, atol=1e-5)
    np.testing.assert_allclose(_ours("region_perturbation", data, patch_size=4), np.trapezoid(q, axis=1), atol=1e-4)


def test_selectivity_matches_quantus(data):
    q = _q(quantus.Selectivity(disable_warnings=True, patch_size=4), data)
    np.testing.assert_allclose(_ours("selectivity", data, patch_size=4), np.trapezoid(q, axis=1), atol=1e-4)


def test_faithfulness_estimate_matches_quantus(data):
    q = _q(quantus.FaithfulnessEstimate(disable_warnings=True, features_in_step=4), data)
    np.testing.assert_allclose(_ours("faithfulness_estimate", data, features_in_step=4), q, atol=1e-5)


def test_faithfulness_correlation_matches_quantus_with_replayed_draws(data, monkeypatch):
    from xaiscope.evaluate import draws

    np.random.seed(3)
    q = _q(
        quantus.FaithfulnessCorrelation(disable_warnings=True, nr_runs=20, subset_size=30, return_aggregate=False), data
    )
    np.random.seed(3)

    def replay(g, n, runs, n_features, size, device):
        idx = np.empty((n, runs, size), dtype=np.int64)
        for r in range(runs):
            for i in range(n):
                idx[i, r] = np.random.choice(n_features, size, replace=False)
            np.random.uniform(0.0, 1.0, size=n)  # Quantus draws its unused "uniform" baseline on every call
        return torch.as_tensor(idx)

    monkeypatch.setattr(draws, "subsets", replay)
    np.testing.assert_allclose(_ours("faithfulness_correlation", data, nr_runs=20, subset_size=30), q, atol=1e-5)


def test_monotonicity_correlation_matches_quantus_with_replayed_draws(data, monkeypatch):
    from xaiscope.evaluate import perturbation as P

    np.random.seed(5)
    q = _q(quantus.MonotonicityCorrelation(disable_warnings=True, nr_samples=4, features_in_step=16), data)
    np.random.seed(5)

    def replay(kind, x, T, **kw):
        vals = np.stack([np.random.uniform(0.0, 1.0, size=x.shape[0]) for _ in range(T)], 1)
        return P.scalar_fill(torch.as_tensor(vals))

    monkeypatch.setattr(P, "make_fill", replay)
    np.testing.assert_allclose(_ours("monotonicity_correlation", data, nr_samples=4, features_in_step=16), q, atol=1e-5)


def test_sensitivity_n_per_step_matches_quantus(data):
    net, x, y, a, _ = data
    q = _q(quantus.SensitivityN(disable_warnings=True, features_in_step=16, return_aggregate=False), data)
    ours = evaluate.get("sensitivity_n", features_in_step=16).per_n(net, x, y, a).numpy()
    np.testing.assert_allclose(ours, q, atol=1e-5)


def test_irof_running_mean_matches_quantus_batch_of_one(data):
    q = _q(quantus.IROF(disable_warnings=True, return_aggregate=False), data, batch_size=1)
    np.testing.assert_allclose(_ours("irof", data, fill="running_mean"), q, atol=1e-4)


def test_road_matches_quantus_within_noise(data):
    np.random.seed(0)
    q = quantus.ROAD(disable_warnings=True, percentages=list(range(1, 100, 10)))
    out = _q(lambda **kw: list(q(**kw).values()), data)
    net, x, y, a, _ = data
    _, ours = evaluate.get("road", percentage_step=10).curves(net, x, y, a)
    # imputation noise (std 0.01) is drawn differently: at most one image in 8 may flip per percentage
    assert np.abs(ours.mean(0).numpy() - out).max() <= 1 / 8 + 1e-9


def test_road_imputation_without_noise_is_quantus_solve():
    from quantus.functions.perturb_func import noisy_linear_imputation

    from xaiscope.evaluate import perturbation as P

    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 2, 9, 11, generator=g, dtype=torch.float64).float()
    idx = torch.randperm(99, generator=g)[:40]
    q = noisy_linear_imputation(x[0].double().numpy(), idx.numpy(), noise=0.0)
    m = torch.zeros(1, 99, dtype=torch.bool)
    m[0, idx] = True
    ours = P.noisy_linear_fill(x, 0.0, 0)(
        x, m.view(1, 1, 9, 11), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    )
    got = torch.where(m.view(1, 1, 9, 11), ours, x)
    np.testing.assert_allclose(got[0].numpy(), q, atol=1e-5)


def test_infidelity_matches_quantus(data):
    q = _q(quantus.Infidelity(disable_warnings=True, n_perturb_samples=2), data)
    np.testing.assert_allclose(_ours("infidelity", data), q, rtol=1e-4, atol=1e-8)


def test_sufficiency_matches_quantus(data):
    q = _q(quantus.Sufficiency(disable_warnings=True, threshold=0.6), data)
    np.testing.assert_allclose(_ours("sufficiency", data), q, atol=1e-5)


def test_consistency_first_n_sign_matches_quantus(data):
    q = _q(quantus.Consistency(disable_warnings=True), data)
    np.testing.assert_allclose(_ours("consistency", data, discretise="first_n_sign"), q, atol=1e-5)


@pytest.mark.slow
def test_non_sensitivity_matches_quantus(data):
    q = _q(quantus.NonSensitivity(disable_warnings=True), data)
    np.testing.assert_allclose(_ours("non_sensitivity", data), q, atol=1e-5)


def test_completeness_equal_matches_quantus(data):
    q = _q(quantus.Completeness(disable_warnings=True), data)
    np.testing.assert_allclose(_ours("completeness", data, output="equal", normalise=True), q, atol=1e-5)


def test_input_invariance_matches_quantus(data):
    q = _q(quantus.InputInvariance(disable_warnings=True), data, explain_func=explain_func())
    np.testing.assert_allclose(_ours("input_invariance", data), q, atol=1e-5)


# ------------------------------------------------------------------ explainer-based
def _replay_noise(monkeypatch, kind):
    from xaiscope.evaluate import draws

    if kind == "uniform":
        monkeypatch.setattr(
            draws,
            "uniform",
            lambda g, shape, lo, hi, device: torch.as_tensor(
                np.random.uniform(lo, hi, size=(shape[0], int(np.prod(shape[1:])))).reshape(shape)
            ),
        )
    else:
        monkeypatch.setattr(
            draws,
            "normal",
            lambda g, shape, mu, sd, device: torch.as_tensor(
                np.random.normal(mu, sd, size=(shape[0], int(np.prod(shape[1:])))).reshape(shape)
            ),
        )


ROBUST = [
    ("max_sensitivity", "MaxSensitivity", {"nr_samples": 6}, "uniform", False),
    ("avg_sensitivity", "AvgSensitivity", {"nr_samples": 6}, "uniform", False),
    ("local_lipschitz", "LocalLipschitzEstimate", {"nr_samples": 6}, "normal", True),
    ("relative_input_stability", "RelativeInputStability", {"nr_samples": 6}, "uniform", False),
    ("relative_output_stability", "RelativeOutputStability", {"nr_samples": 6}, "uniform", False),
    ("relative_representation_stability", "RelativeRepresentationStability", {"nr_samples": 6}, "uniform", False),
]


@pytest.mark.parametrize("ours,theirs,hp,noise,norm", ROBUST)
def test_robustness_matches_quantus_with_replayed_noise(data, monkeypatch, ours, theirs, hp, noise, norm):
    np.random.seed(7)
    q = _q(getattr(quantus, theirs)(disable_warnings=True, **hp), data, explain_func=explain_func(norm), batch_size=64)
    np.random.seed(7)
    _replay_noise(monkeypatch, noise)
    got = _ours(ours, data, batch_size=64, **hp)
    if ours.startswith("relative"):  # we ignore draws that change the prediction; Quantus' max turns them into NaN
        ok = ~np.isnan(q)
        assert ok.sum() >= 4
        np.testing.assert_allclose(got[ok], q[ok], rtol=1e-4)
    else:
        np.testing.assert_allclose(got, q, rtol=1e-4, atol=1e-6)


def test_continuity_matches_quantus(data):
    q = _q(quantus.Continuity(disable_warnings=True, nr_steps=8), data, explain_func=explain_func(True), batch_size=1)
    np.testing.assert_allclose(_ours("continuity", data, nr_steps=8), q, rtol=1e-4)


def test_mprt_quantus_average_matches_quantus(data):
    q = quantus.MPRT(disable_warnings=True, return_average_correlation=True)
    net, x, y, a, _ = data
    out = np.asarray(
        q(
            model=net,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=a.numpy(),
            explain_func=explain_func(True),
            device="cpu",
        )
    )
    np.testing.assert_allclose(_ours("model_parameter_randomisation", data, summary="quantus_average"), out, atol=1e-5)


def test_mprt_layers_match_quantus(data):
    q = quantus.MPRT(disable_warnings=True)
    net, x, y, a, _ = data
    out = q(
        model=net,
        x_batch=x.numpy(),
        y_batch=y.numpy(),
        a_batch=a.numpy(),
        explain_func=explain_func(True),
        device="cpu",
    )
    ours = evaluate.get("model_parameter_randomisation").layers(net, x, y, a, explain.get("saliency"))
    assert list(ours) == [k for k in out if k != "original"]
    for k, v in ours.items():
        np.testing.assert_allclose(v.numpy(), out[k], atol=1e-5)


def test_smooth_mprt_single_sample_matches_quantus(data):
    q = quantus.SmoothMPRT(disable_warnings=True, nr_samples=1, return_average_correlation=True)
    net, x, y, a, _ = data
    out = np.asarray(
        q(
            model=net,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=None,
            explain_func=quantus.explain,
            explain_func_kwargs={"method": "Saliency"},
            device="cpu",
        )
    )
    ours = _ours("smooth_model_parameter_randomisation", data, nr_samples=1, summary="quantus_average")
    np.testing.assert_allclose(ours, out, atol=1e-5)


def test_efficient_mprt_matches_quantus(data):
    q = quantus.EfficientMPRT(disable_warnings=True)
    net, x, y, a, _ = data
    out = np.asarray(
        q(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), explain_func=explain_func(), device="cpu")
    )
    np.testing.assert_allclose(_ours("efficient_model_parameter_randomisation", data), out, atol=1e-5)


def test_random_logit_ssim_flat_matches_quantus(data):
    q = _q(quantus.RandomLogit(disable_warnings=True, num_classes=3), data, explain_func=explain_func(True))
    np.testing.assert_allclose(_ours("random_logit", data, similarity="ssim_flat", num_classes=3), q, atol=1e-5)
