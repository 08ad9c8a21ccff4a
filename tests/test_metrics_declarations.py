"""Metrics as declarations: pass counts and formulas from one expression, new metrics from a
spec, the README table from the registry, and the draws of every family in draws.py."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from metrics_helpers import inputs
from xaiscope import evaluate, explain, models
from xaiscope.errors import MetricError
from xaiscope.evaluate import draws
from xaiscope.evaluate import perturbation as P
from xaiscope.evaluate.base import Param
from xaiscope.evaluate.cost import E, Env, H, W, ceil, setting


@pytest.fixture(scope="module")
def data():
    return inputs(0)


class LerfPatchDeletion(P.PerturbationMetric):
    """Deletion of 4x4 patches, least relevant first, to the image mean; score = area under
    ``f_y`` over the fraction axis. (A metric written as a declaration; not registered.)"""

    name, category, direction = "lerf_patch_deletion", "faithfulness", "higher"
    params = {"steps": Param(10, int, "steps", low=1), **P.settings({}, fill="mean", normalise=None)}
    spec = P.Perturbation(P.Patches(4), "lerf", P.Fractions(), summary=P.area)


def test_a_declared_metric_is_the_mechanism_with_those_pieces(data):
    net, x, y, a, _ = data
    ours = LerfPatchDeletion()
    assert ours.passes_formula == "steps + 1" and ours.passes((1, 16, 16)) == 11
    with models.count_passes(net) as c:
        got = ours(net, x, y, a)
    assert c.rows == 11 * len(x)
    same = evaluate.get("deletion", steps=10, order="lerf", patch_size=4, fill="mean")
    torch.testing.assert_close(got, same(net, x, y, a), rtol=0, atol=0)
    frac, curve = ours.curves(net, x, y, a)
    assert frac.tolist() == [i / 10 for i in range(11)] and curve.shape == (len(x), 11)


def test_counts_print_as_their_formulas():
    k = setting("features_in_step")
    assert str(1 + ceil(H * W / k) * setting("nr_samples")) == "1 + ceil(H*W / features_in_step) * nr_samples"
    assert str(1 + setting("nr_samples") * (E + 1)) == "1 + nr_samples * (E + 1)"
    c = 1 + ceil(H * W / k)
    assert c(Env({"features_in_step": 4}, (1, 16, 16))) == 65
    assert math.isnan(c(Env({"features_in_step": 4})))  # no shape given: unknown, not an error


@pytest.mark.parametrize("name", evaluate.names())
def test_passes_and_formula_come_from_one_expression(name):
    m = evaluate.get(name)
    assert m.passes_formula == str(type(m).cost) == evaluate.get_class(name).passes_formula
    p = m.passes(None)  # never an error; NaN where the count needs the shape, E or L
    assert p == p or math.isnan(p)
    if isinstance(m, P.PerturbationMetric) or m.category == "robustness":
        c = m.spec.cost()  # the image formula and, where volumes count otherwise, the volume one
        assert c.text in m.passes_formula and (c.vtext is None or c.vtext in m.passes_formula)


# metrics whose pass count is not checked against counted passes elsewhere
COUNTED = {
    "insertion": {"steps": 5},
    "selectivity": {"patch_size": 4},
    "faithfulness_estimate": {"features_in_step": 8},
    "sensitivity_n": {"features_in_step": 8},
    "sufficiency": {},
    "consistency": {},
    "completeness": {},
    "avg_sensitivity": {"nr_samples": 3},
    "local_lipschitz": {"nr_samples": 3},
    "relative_input_stability": {"nr_samples": 3},
    "smooth_model_parameter_randomisation": {"nr_samples": 2},
    "efficient_model_parameter_randomisation": {},
    "random_logit": {"num_classes": 3},
}


@pytest.mark.parametrize("name", sorted(COUNTED))
def test_declared_pass_count_is_the_counted_one(data, name):
    net, x, y, a, mask = data
    ex = explain.get("saliency")
    m = evaluate.get(name, **COUNTED[name])
    with models.count_passes(net) as c:
        m(net, x, y, a, mask=mask, explainer=ex)
    assert c.rows == m.passes((1, 16, 16), ex, net) * len(x), (c.rows, m.passes_formula)


def test_curves_of_metrics_without_steps_are_a_clear_error(data):
    net, x, y, a, _ = data
    with pytest.raises(MetricError, match="sufficiency changes no pixels"):
        evaluate.get("sufficiency").curves(net, x, y, a)


@pytest.mark.parametrize("name", ["pixel_flipping", "selectivity", "road", "faithfulness_estimate"])
def test_every_perturbation_metric_shows_its_curve(data, name):
    net, x, y, a, _ = data
    hp = {"patch_size": 4} if name == "selectivity" else {"percentage_step": 25} if name == "road" else {}
    m = evaluate.get(name, **({"features_in_step": 16} if "features_in_step" in evaluate.get(name).hparams else hp))
    axis, curve = m.curves(net, x, y, a)
    scores, axis2, curve2 = m.score_and_curves(net, x, y, a)
    assert curve.shape == (len(x), len(axis)) and len(axis) * len(x) <= m.passes((1, 16, 16)) * len(x)
    torch.testing.assert_close(scores, m(net, x, y, a))
    torch.testing.assert_close(curve2, curve)


def test_readme_metric_table_is_the_registry():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"`\w+`", cells[0]) and cells[0].strip("`") in evaluate.names():
            rows[cells[0].strip("`")] = cells[1:]
    want = {
        r["name"]: [r["category"], r["direction"], r["needs"], r["passes"], r["reference"]] for r in evaluate.table()
    }
    assert rows == want


def test_other_classes_never_draw_the_target_and_replay_numpy():
    y = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1])
    got = draws.other_classes(42, y, 3)
    assert (got != y).all() and ((got >= 0) & (got < 3)).all()
    r = np.random.RandomState(42).randint(0, 2, 8)
    assert got.tolist() == (r + (r >= y.numpy())).tolist()


def test_auto_sizes_keep_64x64_settings_and_bound_passes():
    from xaiscope.evaluate.perturbation import auto_patch_size, auto_step

    assert auto_step((64, 64)) == 1 and auto_step((28, 28)) == 1 and auto_step((224, 224)) == 13
    assert auto_step((24, 28, 24)) == 4 and auto_patch_size(8)((64, 64)) == 8 and auto_patch_size(8)((224, 224)) == 28
    pf, sel, inf = evaluate.get("pixel_flipping"), evaluate.get("selectivity"), evaluate.get("infidelity")
    assert pf.hparams["features_in_step"] == "auto" and np.isnan(pf.passes(None))
    assert pf.passes((1, 64, 64)) == evaluate.get("pixel_flipping", features_in_step=1).passes((1, 64, 64))
    for side in (64, 128, 224, 512):  # the 64x64 counts bound every size
        assert pf.passes((3, side, side)) <= pf.passes((3, 64, 64)) + 1
        assert sel.passes((3, side, side)) <= sel.passes((3, 64, 64)) and inf.passes((3, side, side)) <= 1 + 16 * 16
    assert pf.settled((3, 224, 224))["features_in_step"] == 13 and inf.settled((1, 224, 224))["patch_size"] == 14
    with pytest.raises(MetricError, match="'features_in_step' of pixel_flipping must be int or 'auto', got 2.5"):
        evaluate.get("pixel_flipping", features_in_step=2.5)


def test_auto_sizes_are_what_the_metrics_use():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(2, 2)).eval()  # fmt: skip
    x = torch.rand(2, 1, 72, 72, generator=torch.Generator().manual_seed(1))  # 5,184 pixels: 2 per step
    y, a = torch.tensor([0, 1]), torch.rand(2, 72, 72, generator=torch.Generator().manual_seed(2))
    for name, fixed in (("faithfulness_estimate", {"features_in_step": 2}), ("selectivity", {"patch_size": 9})):
        auto = evaluate.get(name, batch_size=512)
        torch.testing.assert_close(auto(net, x, y, a), evaluate.get(name, batch_size=512, **fixed)(net, x, y, a))
        assert auto.hparams == evaluate.get(name, batch_size=512).hparams  # 'auto' again after the call
