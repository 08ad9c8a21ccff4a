"""Meta-evaluation (MetaQuantus protocol): the consistency scores in closed form, a metric
that ignores the model, and a metric that reads it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import wilcoxon

from fixture_models import seeded_cnn
from xaiscope import evaluate, explain
from xaiscope.analyses.meta import PAPER_TESTS, iac, iec, meta_evaluate, perturbed_images, perturbed_model
from xaiscope.evaluate import draws


class Constant:
    """A metric that ignores the model, the images and the explanation."""

    direction = "higher"

    def __call__(self, model, x, y, a, mask=None, explainer=None):
        return torch.full((x.shape[0],), 0.5)


def _linear():
    """Three classes from the flattened image: noise on its weights or inputs changes predictions."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 3))


def _x(n=32):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def test_iac_is_the_wilcoxon_p_value_and_its_complement_for_an_adversary():
    q = np.array([0.1, 0.5, 0.2, 0.9, 0.4, 0.7, 0.3, 0.8])
    q_hat = q + np.array([0.05, -0.02, 0.11, 0.07, 0.03, 0.2, -0.01, 0.09])
    keep = np.array([True] * 7 + [False])
    p = wilcoxon(q[:7] - q_hat[:7], zero_method="zsplit").pvalue
    assert iac(q, q_hat, keep, adversary=False) == pytest.approx(p)
    assert iac(q, q_hat, keep, adversary=True) == pytest.approx(1 - p)
    assert iac(q, q, keep, adversary=False) == 1.0 and iac(q, q, keep, adversary=True) == 0.0
    assert math.isnan(iac(q, q_hat, np.zeros(8, bool), adversary=False))


def test_iec_counts_kept_rank_positions_and_worsened_scores():
    q_star = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4]])  # 2 methods x 3 images
    same_order = q_star * 0.5
    swapped = q_star[::-1]
    keep = np.array([True, True, False])
    assert iec(q_star, same_order, keep, adversary=False, lower_is_better=False) == 1.0
    assert iec(q_star, swapped, keep, adversary=False, lower_is_better=False) == 0.0
    # adversary: share of (method, image) with q* better than q^ (higher is better here)
    assert iec(q_star, same_order, keep, adversary=True, lower_is_better=False) == 1.0
    assert iec(q_star, same_order, keep, adversary=True, lower_is_better=True) == 0.0


def test_perturbations_are_seeded_and_scaled():
    net = seeded_cnn()
    a = perturbed_model(net, 0.001, draws.generator(3, torch.device("cpu")))
    b = perturbed_model(net, 0.001, draws.generator(3, torch.device("cpu")))
    w, wa, wb = (next(m.parameters()) for m in (net, a, b))
    assert torch.equal(wa, wb) and not torch.equal(wa, w)
    assert ((wa / w - 1).abs().max()) < 0.01
    x = _x()
    xt = perturbed_images(x, 5.0, draws.generator(0, x.device))
    assert xt.min() >= x.min() and xt.max() <= x.max() and not torch.equal(xt, x)


def test_a_metric_that_ignores_the_model_has_no_adversarial_reactivity():
    methods = [explain.get("saliency"), explain.get("random")]
    summary, detail = meta_evaluate(Constant(), _linear(), _x(), methods, iterations=2, perturbations=2)
    assert (detail["kept"] > 0).all()
    assert list(summary["space"]) == ["model", "input"]
    for _, row in summary.iterrows():
        assert row["IAC_AR"] == 0 and row["IEC_AR"] == 0
        assert row["IAC_NR"] == 1 and row["IEC_NR"] == 1
        assert row["MC"] == 0.5 and row["MC_std"] == 0
    assert len(detail) == len(PAPER_TESTS) * 2


def test_a_metric_that_reads_the_model_reacts_to_disruptive_noise():
    methods = [explain.get("saliency"), explain.get("random")]
    metric = evaluate.get("deletion", steps=4)
    summary, detail = meta_evaluate(metric, _linear(), _x(), methods, iterations=1, perturbations=2, seed=1)
    model = summary.set_index("space").loc["model"]
    assert model["IAC_AR"] > 0 or model["IEC_AR"] > 0
    adv = detail[(detail["space"] == "model") & (detail["test"] == "adversary")]
    assert (adv["kept"] > 0).all()  # sigma = 2 changes predictions
    again, _ = meta_evaluate(metric, _linear(), _x(), methods, iterations=1, perturbations=2, seed=1)
    assert summary.equals(again)


def test_a_test_that_keeps_no_image_has_no_score():
    """A model whose prediction never changes: the adversary tests keep nothing, MC is NaN."""
    methods = [explain.get("saliency"), explain.get("random")]
    summary, _ = meta_evaluate(Constant(), seeded_cnn(), _x(), methods, iterations=1, perturbations=1)
    row = summary.set_index("space").loc["model"]
    assert row["IAC_NR"] == 1 and math.isnan(row["IAC_AR"]) and math.isnan(row["MC"])


def test_meta_evaluation_needs_two_methods():
    with pytest.raises(ValueError, match="at least two"):
        meta_evaluate(Constant(), seeded_cnn(), _x(), [explain.get("saliency")])


def _data(tmp_path, masks=True):
    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 16, 16)).astype(np.float32)
    arrays = {"x": x, "y": np.arange(12) % 2}
    if masks:
        m = np.zeros((12, 16, 16), bool)
        m[:, 4:10, 4:10] = True
        arrays["masks"] = m
    np.savez(tmp_path / "d.npz", **arrays)
    return tmp_path / "d.npz"


def test_meta_evaluate_command_writes_its_tables(tmp_path, capsys):
    import json

    import pandas as pd

    from cli_helpers import run_cli

    data = _data(tmp_path)
    args = ["--model", "small_cnn", "--data", data, "--methods", "saliency,random", "--out", tmp_path / "meta"]
    metrics = ["--metrics", "sparseness,relevance_mass_accuracy", "--iterations", "1", "--perturbations", "2"]
    r = run_cli(capsys, "meta-evaluate", *args, *metrics)
    assert r.code == 0, r.err
    summary = pd.read_parquet(tmp_path / "meta" / "meta.parquet")
    assert set(summary["metric"]) == {"sparseness", "relevance_mass_accuracy"}
    assert set(summary["space"]) == {"model", "input"}
    assert {"IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR", "MC", "MC_std", "direction"} <= set(summary.columns)
    detail = pd.read_parquet(tmp_path / "meta" / "meta_detail.parquet")
    assert len(detail) == 2 * len(PAPER_TESTS)  # metrics x tests x 1 iteration
    settings = json.loads((tmp_path / "meta" / "meta.json").read_text())
    assert settings["perturbations"] == 2 and [t["level"] for t in settings["tests"]] == [0.001, 2.0, 0.001, 5.0]


def test_meta_evaluate_bad_input_is_one_sentence(tmp_path, capsys):
    from cli_helpers import assert_user_error, run_cli

    data = _data(tmp_path, masks=False)
    base = ["meta-evaluate", "--model", "small_cnn", "--data", data, "--out", tmp_path / "meta"]
    r = run_cli(capsys, *base, "--methods", "saliency", "--metrics", "sparseness")
    assert_user_error(r, r"meta-evaluation compares methods: give at least two in --methods\.")
    r = run_cli(capsys, *base, "--methods", "saliency,random", "--metrics", "pointing_game")
    assert_user_error(r, r"Metric pointing_game is a localisation metric and needs masks, but \S+ has none\.")
    assert not (tmp_path / "meta" / "meta.parquet").exists()


def test_a_run_meta_evaluates_its_metrics(tmp_path):
    import pandas as pd

    from xaiscope.commands.run_job import run
    from xaiscope.run.config import parse_config

    cfg = {
        "out": str(tmp_path / "run"),
        "data": {"path": str(_data(tmp_path))},
        "models": [{"name": "m", "spec": "small_cnn"}],
        "methods": ["saliency", "random"],
        "metrics": ["sparseness"],
        "analyses": {
            "ranking": None,
            "sensitivity": None,
            "meta": {"metrics": ["sparseness"], "iterations": 1, "perturbations": 1, "max_images": 6},
        },
    }
    root = run(parse_config(cfg))
    summary = pd.read_parquet(root / "analyses" / "meta" / "meta.parquet")
    assert list(summary["metric"].unique()) == ["sparseness"]
    from xaiscope.report.html import write_report

    html = write_report(root).read_text()
    assert 'id="meta"' in html and "IAC_NR" in html
