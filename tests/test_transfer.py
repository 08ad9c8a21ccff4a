"""Pre-training study: OLS with CIs against scipy, the regression design, the study end to end, and errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from xaiscope.analyses.transfer import ols, regress_effects, transfer_study
from xaiscope.data import normalise_dataset
from xaiscope.data.benchmark import generate, make_dataset
from xaiscope.errors import ConfigError, DataError

TINY = dict(n_train=40, n_test=20, size=32, radius=(0.08, 0.14))


def test_ols_matches_scipy_linregress():
    from scipy import stats

    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = 1.5 - 0.7 * x + rng.normal(scale=0.3, size=30)
    fit = ols(np.column_stack([np.ones(30), x]), y, ci=0.9)
    ref = stats.linregress(x, y)
    assert np.allclose(fit["coef"], [ref.intercept, ref.slope])
    assert np.allclose(fit["se"], [ref.intercept_stderr, ref.stderr])
    q = stats.t.ppf(0.95, 28)
    assert np.allclose([fit["low"][1], fit["high"][1]], [ref.slope - q * ref.stderr, ref.slope + q * ref.stderr])
    assert fit["df"] == 28


def test_ols_without_residual_degrees_of_freedom_gives_nan_intervals():
    fit = ols(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([1.0, 3.0]))
    assert np.allclose(fit["coef"], [1, 2]) and np.isnan(fit["low"]).all()


def test_regress_effects_recovers_known_effects():
    rng = np.random.default_rng(1)
    rows = []
    for seed in range(6):
        for source, L_values in (("none", [0]), ("a", [0, 1, 2, 3]), ("b", [0, 1, 2, 3])):
            for L in L_values:
                acc = rng.uniform(0.7, 1.0)
                score = 0.2 + 0.5 * acc + {"none": 0, "a": 0.1, "b": -0.05}[source] + 0.02 * L + rng.normal(scale=0.005)
                rows.append(
                    {
                        "source": source,
                        "frozen_blocks": L,
                        "seed": seed,
                        "test_acc": acc,
                        "method": "m",
                        "metric": "k",
                        "score": score,
                    }
                )
    eff = regress_effects(pd.DataFrame(rows), ["a", "b"]).set_index("term")
    truth = {"intercept": 0.2, "test_acc": 0.5, "source=a": 0.1, "source=b": -0.05, "frozen_blocks": 0.02}
    assert set(eff.index) == set(truth)
    for term, value in truth.items():
        assert abs(eff.loc[term, "coef"] - value) < 0.02
        assert eff.loc[term, "ci_low"] <= value <= eff.loc[term, "ci_high"]
    assert (eff["n_runs"] == 54).all()


def _pair(**kw):
    tr, te = make_dataset(**{**TINY, **kw})
    normalise_dataset(tr, "dataset")
    normalise_dataset(te, (tr.mean, tr.std))
    return tr, te


def test_study_errors():
    tr, te = _pair()
    pre = {"other": _pair(rule="size")[0]}
    with pytest.raises(ConfigError, match="--freeze 5 is not between 0 and 4"):
        transfer_study(tr, te, pre, freeze=[0, 5], width=4)
    with pytest.raises(ConfigError, match="'none' is reserved"):
        transfer_study(tr, te, {"none": pre["other"]}, width=4)
    with pytest.raises(ConfigError, match="needs more than a mask"):
        transfer_study(tr, te, pre, metrics=["deletion"], width=4)
    te.masks = None
    with pytest.raises(DataError, match="has no lesion masks"):
        transfer_study(tr, te, pre, width=4)


@pytest.mark.slow
def test_study_end_to_end_and_frozen_blocks_keep_pretrained_weights(monkeypatch):
    import xaiscope.analyses.transfer as tmod

    tr, te = _pair()
    pre = {"rule_size": _pair(rule="size", seed=5)[0]}
    trained = []
    real_train = tmod.train

    def spy(model, ds, **kw):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        res = real_train(model, ds, **kw)
        trained.append((kw.get("freeze", ()), before, {k: v.clone() for k, v in model.state_dict().items()}))
        return res

    monkeypatch.setattr(tmod, "train", spy)
    res = transfer_study(
        tr,
        te,
        pre,
        arch="small_vgg",
        freeze=[0, 2],
        seeds=1,
        methods=["saliency"],
        epochs=1,
        pretrain_epochs=1,
        width=4,
        max_images=8,
    )
    runs = res.runs
    assert len(runs) == 3 * 3  # (scratch + 2 levels) x 3 metrics
    assert set(runs["source"]) == {"none", "rule_size"} and set(runs["frozen_blocks"]) == {0, 2}
    assert runs["score"].between(0, 1).all() and (runs["n_images"] <= 8).all()
    pre_state = trained[0][2]
    for freeze, before, after in trained[1:]:
        if freeze:  # fine-tuned from the pre-trained weights with features.0 and .1 frozen
            assert freeze == ["features.0", "features.1"]
            for k in before:
                if k.startswith(("features.0.", "features.1.")):
                    assert torch.equal(before[k], pre_state[k]) and torch.equal(after[k], pre_state[k])
    assert set(res.effects["term"]) <= {"intercept", "test_acc", "source=rule_size", "frozen_blocks"}


@pytest.mark.slow
def test_cli_transfer_writes_tables_and_plot(tmp_path):
    from xaiscope.cli import main

    generate(tmp_path / "bm", **TINY)
    generate(tmp_path / "pre", **{**TINY, "background": "noise", "n_test": 0})
    main(
        [
            "transfer",
            "--data",
            str(tmp_path / "bm"),
            "--pretrain-data",
            f"noise={tmp_path / 'pre'}",
            "--out",
            str(tmp_path / "out"),
            "--freeze",
            "0,1",
            "--seeds",
            "2",
            "--methods",
            "saliency",
            "--epochs",
            "1",
            "--pretrain-epochs",
            "1",
            "--width",
            "4",
            "--max-images",
            "6",
        ]
    )
    out = tmp_path / "out"
    for name in ("runs.csv", "runs.parquet", "effects.csv", "effects.parquet", "transfer.png", "summary.json"):
        assert (out / name).exists(), name
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 2 * 3 * 3 and set(runs["source"]) == {"none", "noise"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_runs"] == 6 and summary["sources"]["noise"].endswith("pre")
    with pytest.raises(SystemExit) as e:
        main(["transfer", "--data", str(tmp_path / "bm"), "--out", str(tmp_path / "o2"), "--freeze", "x"])
    assert e.value.code == 2
