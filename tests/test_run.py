"""``xaiscope run``: config validation, the resumable store, ranking and sensitivity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cli_helpers import assert_user_error, run_cli
from xaiscope import evaluate, explain, models
from xaiscope.analyses.ranking import rank_methods
from xaiscope.analyses.sensitivity import map_similarity
from xaiscope.commands.run_job import run
from xaiscope.errors import ConfigError
from xaiscope.run.config import parse_config
from xaiscope.run.store import RunStore


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((10, 1, 16, 16)).astype(np.float32)
    masks = np.zeros((10, 16, 16), bool)
    masks[:, 4:10, 4:10] = True
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(10) % 2, masks=masks)
    return tmp_path / "d.npz"


def _cfg(npz, out, **extra):
    cfg = {
        "out": str(out),
        "unit_images": 4,
        "batch_size": 8,
        "data": {"path": str(npz)},
        "models": [{"name": "m", "spec": "fixture_models:seeded_cnn"}],
        "methods": [
            "saliency",
            {"name": "integrated_gradients", "hparams": {"n_steps": 4}, "grid": {"n_steps": [8]}},
            "random",
        ],
        "metrics": ["relevance_mass_accuracy", {"name": "deletion", "hparams": {"steps": 4}}],
        "analyses": {"ranking": {"draws": 200}},
    }
    cfg.update(extra)
    return cfg


def test_run_resumes_and_force_recomputes(npz, tmp_path):
    cfg = parse_config(_cfg(npz, tmp_path / "run"))
    root = run(cfg)
    store = RunStore(root)
    first = store.results()
    assert len(first) == 10 * 4 * 2  # images x (method, setting) x metrics
    assert store.read_manifest()["units"] == {"total": 12, "computed_this_time": 12}
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "units").glob("*.parquet")}
    run(cfg)
    assert store.read_manifest()["units"]["computed_this_time"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (root / "units").glob("*.parquet")} == stamps
    pd.testing.assert_frame_equal(store.results(), first)
    run(cfg, force=True)
    assert store.read_manifest()["units"]["computed_this_time"] == 12
    pd.testing.assert_frame_equal(store.results(), first)


def test_stored_attributions_equal_the_explainer_and_curves_are_kept(npz, tmp_path):
    root = run(parse_config(_cfg(npz, tmp_path / "run")))
    store = RunStore(root)
    net = models.load("fixture_models:seeded_cnn")
    ds_x = torch.from_numpy(np.load(npz)["x"])
    y = torch.from_numpy(np.load(npz)["y"])
    want = explain.get("integrated_gradients", n_steps=8)(net, ds_x, y)
    got = store.attributions("m", "integrated_gradients", "n_steps=8")
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
    manifest = store.read_manifest()
    assert manifest["dataset"]["images"] == 10 and len(manifest["dataset"]["fingerprint"]) == 16
    ranking = pd.read_parquet(root / "analyses" / "ranking.parquet")
    assert set(ranking["method"]) == {"saliency", "integrated_gradients", "random"}
    assert "p_beats_random" in ranking.columns


def test_a_different_config_in_the_same_folder_is_refused(npz, tmp_path):
    run(parse_config(_cfg(npz, tmp_path / "run")))
    other = parse_config(_cfg(npz, tmp_path / "run", seed=5))
    with pytest.raises(ConfigError, match="holds a run with a different configuration; use --force"):
        run(other)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"methodz": []}, "methodz: unknown key"),
        ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
        ({"methods": [{"name": "saliency", "hparam": {}}]}, "methods.0.hparam: unknown key"),
        ({"methods": ["saliancy"]}, "methods.0 \\(saliancy\\): Unknown method 'saliancy'"),
        (
            {"methods": [{"name": "integrated_gradients", "grid": {"n_steps": [0]}}]},
            "methods.0 \\(integrated_gradients\\).*must be >= 1",
        ),
        ({"metrics": ["deletio"]}, "metrics.0 \\(deletio\\): Unknown metric 'deletio'"),
        ({"data": {"path": "x", "masks": "maybe"}}, "data.masks: Input should be 'auto', 'required' or 'none'"),
        ({"models": []}, "models: List should have at least 1 item"),
    ],
)
def test_config_errors_name_the_key(npz, tmp_path, capsys, change, message):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_cfg(npz, tmp_path / "run", **change)))
    assert_user_error(run_cli(capsys, "run", path, "--no-report"), f"config.yaml: {message}")


def test_localisation_metric_without_masks_is_refused(tmp_path):
    np.savez(tmp_path / "nomask.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.array([0, 1, 0, 1]))
    with pytest.raises(ConfigError, match="relevance_mass_accuracy is a localisation metric and needs masks"):
        run(parse_config(_cfg(tmp_path / "nomask.npz", tmp_path / "run")))


def test_ranking_closed_form():
    rows = []
    # A beats B beats C on every metric (higher is better for m1, lower for m2)
    for method, v1, v2 in (("A", 0.9, 0.1), ("B", 0.5, 0.5), ("C", 0.1, 0.9)):
        for _ in range(3):
            rows += [{"method": method, "metric": "m1", "value": v1}, {"method": method, "metric": "m2", "value": v2}]
    r = rank_methods(pd.DataFrame(rows), {"m1": "higher", "m2": "lower"}, draws=500, seed=1, baselines=("C",))
    t = r.table.set_index("method")
    assert t.loc["A", "p_first"] == 1.0 and t.loc["A", "mean_rank"] == 1.0 and t.loc["C", "mean_rank"] == 3.0
    assert t.loc["A", "p_beats_C"] == 1.0 and t.loc["A", "metrics_beating_C"] == 2 and bool(t.loc["C", "is_baseline"])


def test_ranking_splits_first_place_by_metric_weights():
    rows = [
        {"method": "A", "metric": "m1", "value": 1.0},
        {"method": "A", "metric": "m2", "value": 0.0},
        {"method": "B", "metric": "m1", "value": 0.0},
        {"method": "B", "metric": "m2", "value": 1.0},
    ]
    r = rank_methods(pd.DataFrame(rows), {"m1": "higher", "m2": "higher"}, draws=20_000, seed=0)
    t = r.table.set_index("method")
    # A wins exactly when w1 > w2, which has probability 1/2 under Dir(1, 1)
    assert t.loc["A", "p_first"] == pytest.approx(0.5, abs=0.02)
    assert t.loc["A", "p_first"] + t.loc["B", "p_first"] == pytest.approx(1.0)
    again = rank_methods(pd.DataFrame(rows), {"m1": "higher", "m2": "higher"}, draws=20_000, seed=0)
    pd.testing.assert_frame_equal(again.table, r.table)


def test_sensitivity_similarities():
    a = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    same = map_similarity(a, a * 3.0)
    for k in ("spearman", "ssim", "top_k_overlap"):
        torch.testing.assert_close(same[k], torch.ones(3, dtype=same[k].dtype))
    reversed_order = map_similarity(a, 1.0 / (a.abs() + 0.1))  # same pixels, opposite ranking
    assert (reversed_order["spearman"] < -0.99).all()
    assert (reversed_order["top_k_overlap"] == 0).all()


def test_run_writes_the_statistics_of_its_aggregates(npz, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_cfg(npz, tmp_path / "run")))
    r = run_cli(capsys, "run", path, "--no-report", "--keep-non-discriminative")
    assert r.code == 0, r.err
    an = tmp_path / "run" / "analyses"
    res = pd.read_parquet(tmp_path / "run" / "results.parquet")
    means = pd.read_parquet(an / "metric_means_m.parquet")
    # every (method, setting, metric) mean, the non-default setting included, with its interval
    assert len(means) == len(res.groupby(["method", "setting", "metric"])) == 4 * 2
    assert {"mean", "ci_low", "ci_high", "ci_method", "n", "n_nan", "non_discriminative"} <= set(means.columns)
    assert set(means["ci_method"]) <= {"BCa", "percentile"}
    assert ((means["ci_low"] <= means["mean"]) & (means["mean"] <= means["ci_high"])).all()
    pairs = pd.read_parquet(an / "significance.parquet")
    assert len(pairs) == 2 * 3 and set(pairs["zero_method"]) == {"wilcox"}  # 2 metrics x 3 pairs
    assert set(pairs["mode"]) <= {"exact", "approx", "no_difference", "no_images"}
    flags = pd.read_parquet(an / "discrimination.parquet").set_index("metric")
    flagged = means.groupby("metric")["non_discriminative"].first()
    assert flagged.to_dict() == flags["non_discriminative"].to_dict()
    assert flags["used_in_ranking"].all()  # --keep-non-discriminative
    agreement = pd.read_parquet(an / "metric_agreement.parquet")
    assert len(agreement) == 4 and {"tau", "p_value", "cluster_a", "order_a"} <= set(agreement.columns)
    ranking = pd.read_parquet(an / "ranking.parquet")
    assert list(ranking["avg_rank"]) == sorted(ranking["avg_rank"])
    assert (ranking["rank_low"] <= ranking["rank_high"]).all()
    meta = __import__("json").loads((an / "ranking.json").read_text())
    assert meta["keep_non_discriminative"] is True and meta["paired_test"]["zero_method"] == "wilcox"
    assert meta["friedman"]["m"]["blocks"] == "metrics" and meta["friedman"]["m"]["q_alpha"] == 2.343


def test_set_level_metrics_run_and_take_no_part_in_paired_tests(npz, tmp_path):
    """Sufficiency and consistency perturb nothing step by step: a run scores them (no curve)
    and the paired tests leave them out."""
    cfg = _cfg(
        npz, tmp_path / "run", metrics=["sufficiency", "consistency", {"name": "deletion", "hparams": {"steps": 4}}]
    )
    root = run(parse_config(cfg))
    results = RunStore(root).results()
    assert set(results["metric"]) == {"sufficiency", "consistency", "deletion"}
    assert set(pd.read_parquet(root / "curves.parquet")["metric"]) == {"deletion"}
    assert set(pd.read_parquet(root / "analyses" / "significance.parquet")["metric"]) == {"deletion"}
    means = pd.read_parquet(root / "analyses" / "metric_means_m.parquet").set_index(["method", "metric"])
    assert means.loc[("saliency", "sufficiency"), "ci_method"] == "percentile, set score recomputed"


def test_set_level_scores_are_over_the_whole_set_whatever_the_unit_size(npz, tmp_path):
    """unit_images 4 and 10 give the same sufficiency and consistency rows (for methods whose
    maps do not depend on the units), equal to the metric computed on all images at once."""
    metrics = ["sufficiency", "consistency"]
    small = run(parse_config(_cfg(npz, tmp_path / "a", metrics=metrics, unit_images=4)))
    whole = run(parse_config(_cfg(npz, tmp_path / "b", metrics=metrics, unit_images=10)))
    a, b = RunStore(small).results(), RunStore(whole).results()
    a, b = (r[(r.method != "random") & r.metric.isin(metrics)].reset_index(drop=True) for r in (a, b))
    pd.testing.assert_frame_equal(a, b)  # the random maps themselves depend on the units' draws
    net = models.load("fixture_models:seeded_cnn")
    x, y = torch.from_numpy(np.load(npz)["x"]), torch.from_numpy(np.load(npz)["y"])
    maps = explain.get("saliency")(net, x, y)
    for name in metrics:
        want = evaluate.get(name)(net, x, y, maps).numpy()
        got = a[(a.method == "saliency") & (a.metric == name)].sort_values("image_id")["value"].to_numpy()
        order = np.argsort([str(i) for i in range(10)])
        np.testing.assert_allclose(got, want[order], atol=1e-6)


def test_a_run_of_two_models_writes_intervals_over_the_models(npz, tmp_path):
    models = [{"name": "m", "spec": "fixture_models:seeded_cnn"}, {"name": "n", "spec": "small_cnn"}]
    cfg = _cfg(npz, tmp_path / "run", models=models, methods=["saliency", "random"], metrics=["sparseness"])
    root = run(parse_config(cfg))
    table = pd.read_parquet(root / "analyses" / "metric_means_models.parquet")
    assert set(table["method"]) == {"saliency", "random"} and (table["n_models"] == 2).all()
    per_model = RunStore(root).results().groupby(["method", "model"])["value"].mean().groupby("method").mean()
    got = table.set_index("method")["mean"]
    assert got["saliency"] == pytest.approx(per_model["saliency"]) and got["random"] == pytest.approx(
        per_model["random"]
    )
