"""Groups of methods and metrics: ``all``, families and categories, in Python, the CLI and run configs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cli_helpers import assert_user_error, run_cli
from xaiscope import evaluate, explain
from xaiscope.errors import ConfigError, MethodError, MetricError
from xaiscope.run.config import parse_config

LOCALISATION = evaluate.groups()["localisation"]


def test_all_and_families_expand_in_registration_order_each_once():
    assert explain.expand(["all"]) == explain.names()
    assert evaluate.expand(["all"]) == evaluate.names()
    assert explain.expand(["cams"]) == [
        "cam",
        "gradcam",
        "gradcam_plus_plus",
        "guided_gradcam",
        "hirescam",
        "xgradcam",
        "layercam",
        "eigencam",
        "scorecam",
        "ablationcam",
        "fullgrad",
    ]
    assert explain.expand(["sobel", "baseline", "lrp"]) == [
        "sobel",
        "random",
        "laplace",
        "input",
        "lrp_epsilon_plus_flat",
        "lrp_epsilon_gamma_box",
        "lrp_alpha2_beta1_flat",
        "attn_lrp",
    ]
    # every method is in exactly one family, every metric in exactly one category
    assert sorted(sum(explain.groups().values(), [])) == sorted(explain.names())
    assert sorted(sum(evaluate.groups().values(), [])) == sorted(evaluate.names())
    assert set(evaluate.groups()) == set(evaluate.CATEGORIES)


def test_a_member_named_like_its_group_wins_and_the_prefix_names_the_group():
    assert evaluate.expand(["complexity"]) == ["complexity"]
    assert evaluate.expand(["category:complexity"]) == ["sparseness", "complexity", "effective_complexity"]
    assert explain.expand(["family:cams"]) == explain.expand(["cams"])


@pytest.mark.parametrize(
    "expand,name,error,message",
    [
        (explain.expand, "lrpp", MethodError, "Unknown method 'lrpp' \\(did you mean 'lrp'\\?\\)"),
        (evaluate.expand, "robustnes", MetricError, "Unknown metric 'robustnes' \\(did you mean 'robustness'\\?\\)"),
        (evaluate.expand, "category:nope", MetricError, "Unknown metric 'category:nope'"),
    ],
)
def test_unknown_names_are_one_sentence(expand, name, error, message):
    with pytest.raises(error, match=message):
        expand([name])


def test_without_masks_groups_leave_localisation_out_but_a_named_metric_stays():
    kept, left = evaluate.select(["all"], masks=False)
    assert left == LOCALISATION and not set(kept) & set(LOCALISATION)
    assert evaluate.select(["all"], masks=True) == (evaluate.names(), [])
    kept, left = evaluate.select(["pointing_game", "localisation"], masks=False)
    assert kept == ["pointing_game"] and "pointing_game" not in left


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((4, 1, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "n.npz", x=x, y=np.array([0, 1, 0, 1]))
    masks = np.zeros((4, 16, 16), bool)
    masks[:, 4:10, 5:11] = True
    np.savez(tmp_path / "m.npz", x=x, y=np.array([0, 1, 0, 1]), masks=masks)
    return tmp_path


def test_explain_writes_one_file_per_member_of_a_family(npz, capsys):
    r = run_cli(capsys, "explain", "--model", "small_cnn", "--data", npz / "n.npz", "--methods", "lrp,sobel")
    assert r.code == 2  # --out is required: the command line is checked first
    r = run_cli(
        capsys,
        "explain",
        "--model",
        "small_cnn",
        "--data",
        npz / "n.npz",
        "--methods",
        "lrp,sobel",
        "--out",
        npz / "maps",
        "--overlays",
        "0",
    )
    assert r.code == 0, r.err
    # attn_lrp explains transformers: the lrp group leaves it out on a CNN
    assert sorted(p.stem for p in (npz / "maps").glob("*.npz")) == sorted(
        set(explain.expand(["lrp", "sobel"])) - {"attn_lrp"}
    )


def test_evaluate_all_metrics_without_masks_scores_every_other_metric(npz, capsys):
    out = npz / "res.parquet"
    r = run_cli(
        capsys,
        "evaluate",
        "--model",
        "small_cnn",
        "--data",
        npz / "n.npz",
        "--methods",
        "sobel",
        "--metrics",
        "all",
        "--out",
        out,
        "-p",
        "monotonicity_correlation.nr_samples=2",  # 25,600 passes per image by default
    )
    assert r.code == 0, r.err
    assert "left out 11 localisation metric(s)" in r.out
    df = pd.read_parquet(out)
    assert sorted(set(df.metric)) == sorted(set(evaluate.names()) - set(LOCALISATION))
    assert len(df) == 4 * (len(evaluate.names()) - len(LOCALISATION))


def test_evaluate_a_category_that_needs_masks_on_data_without_them_is_refused(npz, capsys):
    r = run_cli(
        capsys,
        "evaluate",
        "--model",
        "small_cnn",
        "--data",
        npz / "n.npz",
        "--methods",
        "sobel",
        "--metrics",
        "localisation",
        "--out",
        npz / "r.parquet",
    )
    assert_user_error(r, "Every metric asked for needs masks")
    assert not (npz / "r.parquet").exists()


def _cfg(data, **extra):
    return {
        "data": {"path": str(data)},
        "models": [{"name": "m", "spec": "small_cnn"}],
        "methods": ["saliency"],
        **extra,
    }


def test_run_config_groups_expand_and_a_named_entry_keeps_its_settings(npz):
    cfg = parse_config(
        _cfg(
            npz / "m.npz",
            methods=[{"name": "gradcam", "hparams": {"relu": False}}, "cams", "baseline"],
            metrics=["all"],
        )
    )
    entries = cfg.method_entries()
    assert [m.name for m in entries] == [
        "gradcam",
        "cam",
        "gradcam_plus_plus",
        "guided_gradcam",
        "hirescam",
        "xgradcam",
        "layercam",
        "eigencam",
        "scorecam",
        "ablationcam",
        "fullgrad",
        *explain.groups()["baseline"],
    ]
    assert entries[0].hparams == {"relu": False}
    assert [m.name for m in cfg.metric_entries(masks=True)] == evaluate.names()
    assert not {m.name for m in cfg.metric_entries(masks=False)} & set(LOCALISATION)


def test_run_config_group_with_settings_is_refused(npz):
    with pytest.raises(ConfigError, match=r"methods\.0 \(cams\): a group takes no hparams or grid"):
        parse_config(_cfg(npz / "m.npz", methods=[{"name": "cams", "hparams": {"relu": False}}]))


def test_run_command_replaces_the_configs_methods_and_metrics(npz, capsys):
    import yaml

    path = npz / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                **_cfg(npz / "n.npz", out=str(npz / "run")),
                "unit_images": 4,
                "batch_size": 4,
                "analyses": {"ranking": {"draws": 20}},
            }
        )
    )
    r = run_cli(
        capsys,
        "run",
        path,
        "--no-report",
        "--methods",
        "baseline",
        "--metrics",
        "category:complexity,localisation",
    )
    assert r.code == 0, r.err
    res = pd.read_parquet(npz / "run" / "results.parquet")
    assert set(res.method) == set(explain.groups()["baseline"])
    assert set(res.metric) == {"sparseness", "complexity", "effective_complexity"}
    # the analyses see the expanded methods too: every member is ranked
    ranking = pd.read_parquet(npz / "run" / "analyses" / "ranking.parquet")
    assert set(ranking.method) == set(explain.groups()["baseline"])
