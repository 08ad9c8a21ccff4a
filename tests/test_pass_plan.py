"""The run's plan counts model passes from the declarations; the local backend's count agrees.

For every metric (and a method of each pass structure), :func:`planned_passes` of one
work unit equals the images that reach the model while :func:`compute_unit` computes it
(``models.count_passes``), so the plan a run prints and records is the work it does.
"""

from __future__ import annotations

import math

import pytest
import torch

from fixture_models import seeded_cnn
from xaiscope import evaluate, models
from xaiscope.run.units import Unit, UnitInputs, compute_unit, planned_passes

N, SHAPE = 3, (1, 12, 12)


def _unit_inputs(metrics):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, *SHAPE, generator=g)
    masks = torch.zeros(N, *SHAPE[1:], dtype=torch.bool)
    masks[:, 3:8, 3:8] = True
    y = torch.arange(N) % 2
    confounder = torch.zeros_like(masks)
    confounder[:, :2, :2] = True
    ids = [f"i{i}" for i in range(N)]
    extra = {"confounder": confounder}
    return UnitInputs(
        x=x, y=y, targets=y, ids=ids, masks=masks, metrics=metrics, batch_size=4, seed=0, extra_masks=extra
    )


def _check(method: str, hparams: dict, metrics: list[tuple[str, dict]]):
    net = seeded_cnn()
    unit = Unit("m", method, tuple(sorted(hparams.items())), 0, N)
    planned = planned_passes(unit, net, SHAPE, metrics, 4, 0)
    with models.count_passes(net) as count:
        compute_unit(net, unit, _unit_inputs(metrics))
    return planned, count.rows


@pytest.mark.parametrize("metric", evaluate.names())
def test_planned_passes_of_every_metric_are_the_passes_made(metric):
    hp = {"steps": 4} if "steps" in evaluate.get(metric).hparams else {}
    hp.update(
        {"faithfulness_correlation": {"subset_size": 16}, "monotonicity_correlation": {"nr_samples": 5}}.get(metric, {})
    )
    planned, counted = _check("saliency", {}, [(metric, hp)])
    kind = evaluate.get_class(metric).cost.kind
    assert not math.isnan(planned)
    if kind == "exact":
        assert planned == counted
    elif kind == "at most":
        assert counted <= planned
    else:  # "about": superpixels found, one probe image per call
        assert 0.5 * planned <= counted <= 2 * planned


@pytest.mark.parametrize(
    "method, hparams",
    [("saliency", {}), ("integrated_gradients", {"n_steps": 5}), ("occlusion", {}), ("random", {}), ("gradcam", {})],
)
def test_planned_passes_of_methods_with_a_metric_are_the_passes_made(method, hparams):
    planned, counted = _check(method, hparams, [("deletion", {"steps": 4}), ("sparseness", {})])
    assert planned == counted


def test_a_run_records_planned_and_counted_passes(tmp_path):
    """The manifest of a local run: planned per method equals counted per method."""
    import numpy as np

    from xaiscope.commands.run_job import run
    from xaiscope.run.config import parse_config
    from xaiscope.run.store import RunStore

    x = np.random.default_rng(0).random((6, *SHAPE)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(6) % 2)
    cfg = {
        "out": str(tmp_path / "run"),
        "unit_images": 4,
        "data": {"path": str(tmp_path / "d.npz")},
        "models": [{"name": "m", "spec": "fixture_models:seeded_cnn"}],
        "methods": ["saliency", {"name": "integrated_gradients", "hparams": {"n_steps": 4}}],
        "metrics": [{"name": "deletion", "hparams": {"steps": 4}}, "monotonicity"],
        "analyses": {"ranking": {"draws": 10}},
    }
    passes = RunStore(run(parse_config(cfg))).read_manifest()["passes"]
    assert passes["inexact"] == {"monotonicity": "at most"}
    assert set(passes["counted_this_time"]) == {"saliency", "integrated_gradients"}
    for method, n in passes["counted_this_time"].items():
        assert n <= passes["planned"][method] == passes["planned_this_time"][method]
    # without monotonicity's early stop the plan is the count: deletion's 1 + 4 steps and the explainer's
    assert passes["planned"]["saliency"] - 6 * 1 - 6 * (1 + 4) == 6 * (12 * 12)
