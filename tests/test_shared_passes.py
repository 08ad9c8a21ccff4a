"""Metrics scored in one shared-passes block give bit-identical scores and make fewer passes.

Every metric that calls the model is scored alone and again inside
``evaluate.sharing.shared_passes`` with all the others, on the same images; the scores must be
equal bit for bit (NaN where NaN). The passes counted inside the block are the passes of the
metrics alone minus what the block says it saved, and the coincidences the mechanism is
built for are found: the unperturbed image read once, pixel_flipping's steps reused by
sensitivity_n, faithfulness_estimate's single pixels by non_sensitivity, one set of
re-explanations for the sensitivity pair and the relative-stability trio, the fully
randomised model explained once.
"""

from __future__ import annotations

import pytest
import torch

from fixture_models import seeded_cnn
from xaiscope import evaluate, explain, models
from xaiscope.evaluate.pairs import chunks
from xaiscope.evaluate.sharing import shared_passes

N, SHAPE, BS = 5, (1, 8, 8), 4

LIGHT = {  # fewer draws and steps, same mechanisms
    "deletion": {"steps": 5},
    "insertion": {"steps": 5},
    "faithfulness_correlation": {"nr_runs": 6, "subset_size": 8},
    "monotonicity_correlation": {"nr_samples": 3},
    "irof": {"n_segments": 6},
    "road": {"percentage_step": 20},
    "region_perturbation": {"patch_size": 2},
    "selectivity": {"patch_size": 2},
    "infidelity": {"patch_size": 2},
    "max_sensitivity": {"nr_samples": 6},
    "avg_sensitivity": {"nr_samples": 6},
    "local_lipschitz": {"nr_samples": 6},
    "relative_input_stability": {"nr_samples": 6},
    "relative_output_stability": {"nr_samples": 6},
    "relative_representation_stability": {"nr_samples": 6},
    "continuity": {"nr_steps": 4},
    "smooth_model_parameter_randomisation": {"nr_samples": 3},
}


def _inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(N, *SHAPE, generator=g)
    y = torch.tensor([0, 1, 1, 0, 1])
    return x, y


def _metrics(names=None, extra=None):
    names = names or [
        n
        for n in evaluate.names()
        if evaluate.get_class(n).needs & {"model", "explainer"} and not evaluate.get_class(n).set_level
    ]
    hp = {**LIGHT, **(extra or {})}
    return [
        evaluate.get(n, **{"batch_size": BS, **hp.get(n, {})})
        for n in names
        if "mask" not in evaluate.get_class(n).needs
    ]


def _score_all(metrics, net, x, y, a, ex):
    return [m(net, x, y, a, explainer=ex) for m in metrics]


@pytest.mark.parametrize("method, hp", [("saliency", {}), ("integrated_gradients", {"n_steps": 4})])
def test_every_metric_scores_bit_identically_inside_a_shared_block(method, hp):
    net, (x, y) = seeded_cnn(), _inputs()
    ex = explain.get(method, batch_size=BS, **hp)
    a = ex(net, x, y)
    metrics = _metrics()
    alone = _score_all(metrics, net, x, y, a, ex)
    with shared_passes(metrics) as scope:
        together = _score_all(metrics, net, x, y, a, ex)
    assert scope.saved > 0
    for m, s, t in zip(metrics, alone, together):
        torch.testing.assert_close(t, s, rtol=0, atol=0, equal_nan=True, msg=f"{m.name} differs when shared")


def _counted(metrics, net, x, y, a, ex, shared: bool):
    with models.count_passes(net) as count:
        if shared:
            with shared_passes(metrics) as scope:
                _score_all(metrics, net, x, y, a, ex)
            return count.rows, scope.saved
        _score_all(metrics, net, x, y, a, ex)
    return count.rows, 0


def _check_saving(names, extra=None, method="saliency"):
    net, (x, y) = seeded_cnn(), _inputs()
    ex = explain.get(method, batch_size=BS)
    a = ex(net, x, y)
    metrics = _metrics(names, extra)
    alone, _ = _counted(metrics, net, x, y, a, ex, shared=False)
    together, saved = _counted(metrics, net, x, y, a, ex, shared=True)
    assert together == alone - saved
    return alone, together, saved


def test_single_pixel_windows_and_cumulative_prefixes_are_read_once():
    fis = {"features_in_step": 1}
    # faithfulness_estimate: N base + 64 N single pixels; non_sensitivity: the same pairs in raster order
    alone, together, _ = _check_saving(
        ["faithfulness_estimate", "non_sensitivity"], {"faithfulness_estimate": fis, "non_sensitivity": fis}
    )
    assert alone == 2 * N * 65 and together == N * 65
    # sensitivity_n: base + the first 80% of pixel_flipping's cumulative steps (same order, same fill)
    alone, together, _ = _check_saving(
        ["pixel_flipping", "sensitivity_n"], {"pixel_flipping": fis, "sensitivity_n": fis}
    )
    assert alone == N * 64 + N * (1 + 51) and together == N * 64 + N  # only the base images are new


def test_the_unperturbed_image_is_read_once_and_other_settings_share_nothing_else():
    alone, together, saved = _check_saving(["completeness", "sufficiency", "faithfulness_correlation"])
    assert saved == 2 * N  # two of the three base reads
    # the same single-pixel steps with another fill are other inputs
    fis = {"features_in_step": 1}
    alone, together, saved = _check_saving(
        ["faithfulness_estimate", "non_sensitivity"],
        {"faithfulness_estimate": {**fis, "fill": "mean"}, "non_sensitivity": fis},
    )
    assert saved == N  # the base image only


def test_robustness_metrics_with_the_same_draws_reexplain_once():
    alone, together, _ = _check_saving(["max_sensitivity", "avg_sensitivity"])
    assert alone == 2 * 6 * N and together == 6 * N
    trio = ["relative_input_stability", "relative_output_stability", "relative_representation_stability"]
    alone, together, _ = _check_saving(trio)
    # alone: 3 x (1 + 6 (E + 1)); together: 6 E once, logits and layers forwards once each
    assert alone == 3 * N * (1 + 6 * 2) and together == N * (6 + 2 * (6 + 1))
    alone, together, saved = _check_saving(
        ["max_sensitivity", "avg_sensitivity"], {"avg_sensitivity": {"nr_samples": 6, "lower_bound": 0.3}}
    )
    assert saved == 0 and together == alone


def test_the_fully_randomised_model_is_explained_once():
    # each_layer top-down ends with every layer reset from seed + 1: the state all_layers makes
    names = ["model_parameter_randomisation", "efficient_model_parameter_randomisation"]
    alone, together, saved = _check_saving(names)
    assert saved == N and together == alone - N
    alone, together, saved = _check_saving(names, {"efficient_model_parameter_randomisation": {"seed": 7}})
    assert saved == 0


def test_no_model_call_holds_one_image_unless_the_batch_size_is_one():
    assert [s.stop - s.start for s in chunks(9, 4)] == [4, 3, 2]
    assert [s.stop - s.start for s in chunks(1, 4)] == [1]
    assert [s.stop - s.start for s in chunks(3, 1)] == [1, 1, 1]
    net, (x, y) = seeded_cnn(), _inputs()
    sizes = []
    h = net.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    try:
        a = explain.get("saliency")(net, x, y)
        m = evaluate.get("sufficiency", batch_size=BS)
        m(net, x[:1], y[:1], a[:1])  # one image: padded with a copy of itself
        with shared_passes([m]):
            evaluate.get("deletion", steps=4, batch_size=BS)(net, x, y, a)
    finally:
        h.remove()
    assert 1 not in sizes
