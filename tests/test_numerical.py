"""Numerical trouble: NaN model outputs skip images by id; undefined scores are NaN, counted.

* ``xaiscope run`` with a model that outputs NaN for bright images: those images are
  named on stdout and in ``manifest.json`` (``skipped_images``), left out of every table,
  and the rest of the run completes; the report lists them.
* All-zero and constant maps make metrics of every category return NaN (never an
  exception, never a silent 0 or inf), image by image: one bad map does not spoil the
  others' scores. The report counts the NaN scores per model, method, setting and metric.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from reliability_helpers import make_npz
from xaiscope import evaluate, explain, models

METRICS = ["sparseness", "relevance_mass_accuracy", "pointing_game"]


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory):
    """A finished run: 8 images, img02 and img05 bright (NaN outputs), img00 all zero."""
    tmp = tmp_path_factory.mktemp("nanrun")
    path = make_npz(tmp / "d.npz", n=8, bright=(2, 5))
    arrays = dict(np.load(path))
    arrays["x"][0] = 0.0  # the 'input' method gives an all-zero map for img00
    np.savez(path, **arrays)
    cfg = tmp / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "out": str(tmp / "run"),
                "unit_images": 4,
                "data": {"path": str(path)},
                "models": [{"name": "cnn", "spec": "fixture_models:nan_for_bright_images"}],
                "methods": ["saliency", "input"],
                "metrics": METRICS,
                "analyses": {"ranking": {"draws": 50}, "sensitivity": None},
                "report": {"examples": 2},
            }
        )
    )
    import io
    import sys

    from xaiscope.cli import main

    out = io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", out)
        try:
            main(["run", str(cfg)])
        except SystemExit as e:
            code = e.code
    return tmp / "run", code, out.getvalue()


def test_nan_output_images_are_reported_by_id_and_skipped(nan_run):
    root, code, stdout = nan_run
    assert code in (0, None), stdout
    text = " ".join(stdout.split())
    assert "model cnn: 2 image(s) give non-finite outputs and are skipped: img02, img05" in text
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["skipped_images"] == {"cnn": ["img02", "img05"]}
    assert manifest["dataset"]["images"] == 6
    res = pd.read_parquet(root / "results.parquet")
    kept = {f"img{i:02d}" for i in (0, 1, 3, 4, 6, 7)}
    assert set(res["image_id"]) == kept
    assert len(res) == len(kept) * 2 * len(METRICS)
    assert not res.duplicated(["image_id", "method", "metric"]).any()
    # the only NaN scores are the all-zero map of img00 under the 'input' method
    nan = res[res["value"].isna()]
    assert set(zip(nan["method"], nan["image_id"], nan["metric"])) == {("input", "img00", m) for m in METRICS}


def _nan_table(html: str) -> list[list[str]]:
    table = re.search(r'<table[^>]*id="nan-table"[^>]*>(.*?)</table>', html, re.S)
    assert table, "the report has no NaN table"
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.group(1), re.S)
    return [
        [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S)] for r in rows
    ]


def test_report_counts_nan_scores_and_lists_skipped_images(nan_run):
    root, _, _ = nan_run
    html = (root / "report.html").read_text()
    rows = _nan_table(html)
    assert rows[0] == ["model", "method", "setting", "metric", "NaN scores", "images"]
    assert sorted(rows[1:]) == sorted(["cnn", "input", "default", m, "1", "6"] for m in METRICS)
    section = html[html.index('id="nan"') :]
    section = section[: section.index("</section>")]
    assert "Model cnn: 2 image(s)" in section and "<li>img02</li>" in section and "<li>img05</li>" in section


# ------------------------------------------------------------------ metrics on degenerate maps


class ZeroExplainer:
    """An explainer whose every map is zero (for explainer-based metrics)."""

    name, hparams = "zero", {}

    def passes(self, shape=None):
        return 1.0

    def __call__(self, model, x, y):
        return torch.zeros_like(x)


@pytest.fixture(scope="module")
def degenerate():
    """4 images 16x16: a = the image itself ('input' method) with image 0 all zero and image 1 constant."""
    torch.manual_seed(0)
    net = models.build("small_cnn", width=4).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 16, 16, generator=g)
    x[0] = 0.0
    x[1] = 0.5
    y = torch.tensor([0, 1, 0, 1])
    mask = torch.zeros(4, 16, 16, dtype=torch.bool)
    mask[:, 4:9, 4:9] = True
    ex = explain.get("input")
    return net, x, y, ex(net, x, y), mask, ex


# metric -> settings; every one must give NaN for the all-zero map and finite values for the random ones
ZERO_NAN = {
    "relevance_mass_accuracy": {},
    "relevance_rank_accuracy": {},
    "pointing_game": {},
    "auroc": {},  # localisation
    "attribution_localisation": {},
    "focus": {},
    "sparseness": {},
    "complexity": {},  # complexity
    "faithfulness_correlation": {"nr_runs": 10},
    "faithfulness_estimate": {},
    "monotonicity_correlation": {"nr_samples": 2},
    "max_sensitivity": {"nr_samples": 3},
    "avg_sensitivity": {"nr_samples": 3},  # robustness
    "model_parameter_randomisation": {},
    "random_logit": {},  # randomisation
}
# these are undefined for a constant map as well (sparseness and complexity are defined: 0 and log(H W))
CONSTANT_NAN = {
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "pointing_game",
    "auroc",
    "attribution_localisation",
    "focus",
    "faithfulness_correlation",
    "faithfulness_estimate",
    "monotonicity_correlation",
    "model_parameter_randomisation",
    "random_logit",
}


@pytest.mark.parametrize("name", sorted(ZERO_NAN))
def test_degenerate_maps_give_nan_per_image(degenerate, name):
    net, x, y, a, mask, ex = degenerate
    metric = evaluate.get(name, **ZERO_NAN[name])
    s = metric(net, x, y, a, mask=mask, explainer=ex)
    assert s.shape == (4,)
    assert math.isnan(s[0]), f"{name}: all-zero map scored {float(s[0])}"
    if name in CONSTANT_NAN:
        assert math.isnan(s[1]), f"{name}: constant map scored {float(s[1])}"
    else:
        assert math.isfinite(s[1])
    assert torch.isfinite(s[2:]).all(), f"{name}: a degenerate map spoiled the others: {s.tolist()}"


def test_closed_forms_for_constant_maps(degenerate):
    net, x, y, a, mask, ex = degenerate
    assert float(evaluate.get("sparseness")(None, x, y, a)[1]) == pytest.approx(0.0, abs=1e-6)
    assert float(evaluate.get("complexity")(None, x, y, a)[1]) == pytest.approx(math.log(256), abs=1e-6)


@pytest.mark.parametrize("name", ["max_sensitivity", "random_logit", "model_parameter_randomisation"])
def test_explainer_returning_zero_maps_gives_nan_not_an_error(degenerate, name):
    net, x, y, _, mask, _ = degenerate
    kw = {"nr_samples": 2} if name == "max_sensitivity" else {}
    s = evaluate.get(name, **kw)(net, x, y, torch.zeros_like(x), mask=mask, explainer=ZeroExplainer())
    assert torch.isnan(s).all(), s.tolist()
