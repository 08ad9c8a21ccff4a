"""``xaiscope demo --quick``: the README's first command, end to end on built-in data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cli_helpers import run_cli
from xaiscope import explain
from xaiscope.models import build


@pytest.mark.slow
def test_quick_demo_runs_every_method_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    r = run_cli(capsys, "demo", "--quick", "--out", out)
    assert r.code == 0, r.err
    run_dir = out / "run"
    report = run_dir / "report.html"
    assert report.exists() and str(report) in "".join(r.out.split())  # the console may wrap the path
    results = pd.read_parquet(run_dir / "results.parquet")
    cnn = build("small_cnn", width=4)
    cnn_methods = {n for n in explain.names() if explain.get_class(n).applies_to(cnn) is None}
    assert set(results["method"]) == cnn_methods  # every method that explains the demo's CNNs
    categories = {"localisation", "faithfulness", "randomisation", "complexity", "axiomatic"}
    from xaiscope import evaluate

    assert {evaluate.get_class(m).category for m in results["metric"].unique()} >= categories
    assert len(pd.read_parquet(run_dir / "curves.parquet")) > 0
    for path in (
        "analyses/ranking.parquet",
        "analyses/sensitivity_maps.parquet",
        "analyses/global/summary.json",
        "analyses/variability/fits.json",
        "analyses/sis/summary.json",
    ):
        assert (run_dir / path).exists(), path
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["units"]["total"] > 0
    html = report.read_text()
    for section in ("Summary ranking", "Example maps", "PEPPR", "ariability", "SIS"):
        assert section in html, section
    # running it again resumes: nothing is recomputed
    r = run_cli(capsys, "demo", "--quick", "--out", out)
    assert r.code == 0, r.err
    assert json.loads((run_dir / "manifest.json").read_text())["units"]["computed_this_time"] == 0
