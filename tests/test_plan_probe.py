"""The pass plan printed before a suite runs: counts, what sharing saves, marked cells, --plan.

The plan's passes per cell are the declared counts; what it says sharing saves is what a
shared block saves when the suite runs on the probe images (counted passes); the cell that
dominates is marked with the settings it grows with; ``--plan`` prints and writes nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from cli_helpers import run_cli
from fixture_models import seeded_cnn
from xaiscope import evaluate, explain, models
from xaiscope.evaluate.plan import pass_plan, summary_lines, table_lines
from xaiscope.evaluate.sharing import shared_passes

N, SHAPE, BS = 4, (1, 8, 8), 4
FIS = {"features_in_step": 1}
SUITE = {
    "faithfulness_estimate": FIS,
    "non_sensitivity": FIS,
    "pixel_flipping": FIS,
    "sensitivity_n": FIS,
    "completeness": {},
    "max_sensitivity": {"nr_samples": 5},
    "avg_sensitivity": {"nr_samples": 5},
    "relative_input_stability": {"nr_samples": 5},
    "relative_output_stability": {"nr_samples": 5},
    "relative_representation_stability": {"nr_samples": 5},
    "model_parameter_randomisation": {},
    "efficient_model_parameter_randomisation": {},
    "sparseness": {},
}


def _suite():
    return [
        evaluate.get(n, **({"batch_size": BS} if "model" in evaluate.get_class(n).needs else {}), **hp)
        for n, hp in SUITE.items()
    ]


def _inputs():
    g = torch.Generator().manual_seed(5)
    return torch.rand(N, *SHAPE, generator=g), torch.tensor([0, 1, 1, 0])


@pytest.mark.parametrize("across_methods", [True, False])
def test_the_plan_counts_what_the_suite_makes_and_what_sharing_saves(across_methods):
    net, (x, y) = seeded_cnn(), _inputs()
    explainers = [explain.get("saliency", batch_size=BS), explain.get("gradcam", batch_size=BS)]
    metrics = _suite()
    plan = pass_plan(net, x, y, explainers, metrics, n_images=N, batch_size=BS, across_methods=across_methods)
    shape = tuple(x.shape[1:])
    for c in plan.cells:
        ex = next(e for e in explainers if e.name == c.method)
        assert c.passes == next(m for m in metrics if m.name == c.metric).passes(shape, ex, net)
    # run the suite as evaluate (one block) or the run (one block per method) does
    with models.count_passes(net) as count:
        blocks = [explainers] if across_methods else [[e] for e in explainers]
        for group in blocks:
            with shared_passes(metrics):
                for ex in group:
                    a = ex(net, x, y)
                    for m in metrics:
                        m(net, x, y, a, explainer=ex)
    assert count.rows == N * (sum(plan.method_passes.values()) + sum(c.passes - c.saved for c in plan.cells))
    saved = {(c.method, c.metric): c.saved for c in plan.cells}
    assert saved[("saliency", "non_sensitivity")] == 65  # every single pixel and the base image
    assert saved[("saliency", "avg_sensitivity")] == 5  # the five re-explanations
    assert saved[("saliency", "efficient_model_parameter_randomisation")] == 1  # the fully random model
    assert saved[("gradcam", "non_sensitivity")] == 65
    # single pixels removed alone do not depend on the map: across methods gradcam's are saliency's
    assert saved[("gradcam", "faithfulness_estimate")] == (65 if across_methods else 0)
    assert plan.saved == sum(saved.values()) and 0 < plan.saved < plan.passes
    assert np.isfinite(plan.seconds) and plan.seconds > 0


def test_the_cell_that_dominates_is_marked_with_the_settings_it_grows_with():
    net, (x, y) = seeded_cnn(), _inputs()
    explainers = [explain.get("integrated_gradients", n_steps=16, batch_size=BS)]
    metrics = [evaluate.get("max_sensitivity", nr_samples=20, batch_size=BS), evaluate.get("sparseness")]
    plan = pass_plan(net, x, y, explainers, metrics, n_images=100, batch_size=BS)
    top = max(plan.cells, key=lambda c: c.seconds)
    assert top.metric == "max_sensitivity" and top.marked and not plan.cells[1].marked
    assert top.drivers == "max_sensitivity.nr_samples x integrated_gradients.n_steps"
    assert top.passes == 320
    text = "\n".join(table_lines(plan))
    assert "! integrated_gradients x max_sensitivity: 320 passes per image" in "\n".join(summary_lines(plan))
    assert "grows with" in text and "320" in text


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(6) % 2)
    return tmp_path / "d.npz"


def test_evaluate_and_run_print_the_plan_and_with_plan_write_nothing(npz, tmp_path, capsys):
    out = tmp_path / "res.parquet"
    common = ["--model", "fixture_models:seeded_cnn", "--data", npz, "--methods", "saliency,gradcam"]
    r = run_cli(capsys, "evaluate", *common, "--metrics", "deletion,max_sensitivity", "--out", out, "--plan")
    assert r.code == 0, r.err
    assert "plan: 2 method(s) x 2 metric(s) on 6 image(s)" in r.out and "max_sensitivity" in r.out
    assert not out.exists()
    r = run_cli(capsys, "evaluate", *common, "--metrics", "deletion", "--out", out, "-p", "deletion.steps=4")
    assert r.code == 0 and "plan: 2 method(s) x 1 metric(s)" in r.out and out.exists()
    cfg = {
        "out": str(tmp_path / "run"),
        "data": {"path": str(npz)},
        "models": [{"name": "m", "spec": "fixture_models:seeded_cnn"}],
        "methods": ["saliency"],
        "metrics": [{"name": "deletion", "hparams": {"steps": 4}}],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli(capsys, "run", tmp_path / "c.yaml", "--plan")
    assert r.code == 0, r.err
    assert "saliency" in r.out and "deletion" in r.out and not (tmp_path / "run").exists()
