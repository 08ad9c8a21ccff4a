"""The HTML report: sections, self-containment, escaping, numbers, normalisations, errors."""

from __future__ import annotations

import base64
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

from report_helpers import XSS_CLASS, XSS_FILE, XSS_ID, XSS_SKIPPED, runs
from xaiscope import explain
from xaiscope.errors import OutputError
from xaiscope.report.examples import NORMALISATIONS, normalised_maps
from xaiscope.report.html import RunView, interval_table, write_report

SECTIONS = [
    "summary",
    "metrics",
    "significance",
    "agreement",
    "nan",
    "examples",
    "distributions",
    "curves",
    "sensitivity",
    "global",
    "peppr",
    "variability",
    "sis",
    "environment",
]


class Page(HTMLParser):
    """Collects section ids, <img> attributes, <script>/<link> tags and the tables' cells."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}
        self._table: str | None = None
        self._cell: list | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "section":
            self.sections.append(a.get("id", ""))
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "table":
            self._table = a.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = [a.get("data-sort", ""), ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append((self._cell[0], self._cell[1].strip()))
            self._cell = None
        elif tag == "table":
            self._table = None


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    base, rich = runs(tmp_path_factory)
    return write_report(base), write_report(rich)


@pytest.fixture(scope="module")
def rich_html(reports) -> str:
    return reports[1].read_text()


def test_report_written_with_every_section(reports, rich_html):
    base, rich = reports
    assert base.name == "report.html" and base.parent.name == "run" and rich.exists()
    page = Page(rich_html)
    assert [s for s in SECTIONS if s not in page.sections] == []
    # the plain run (deletion curves, no optional analyses) leaves the analyses' sections out
    base_page = Page(base.read_text())
    for s in ("summary", "metrics", "significance", "agreement", "nan", "examples", "distributions", "curves"):
        assert s in base_page.sections
    for s in ("global", "peppr", "variability", "sis"):
        assert s not in base_page.sections


def test_self_contained_no_external_references(rich_html):
    assert "http://" not in rich_html and "https://" not in rich_html
    page = Page(rich_html)
    assert not [t for t, _ in page.tags if t in ("link", "iframe", "object", "embed")]
    assert [a for t, a in page.tags if t == "script" and "src" in a] == []
    assert len(page.imgs) >= 10
    for img in page.imgs:
        for key, value in img.items():
            if key == "src" or key.startswith("data-src-"):
                assert value.startswith("data:image/png;base64,")
                assert base64.b64decode(value.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")


def test_every_data_string_is_escaped(rich_html):
    # raw payloads never appear; their escaped forms do
    for payload in (XSS_CLASS, XSS_ID, XSS_SKIPPED, XSS_FILE):
        assert payload not in rich_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rich_html
    assert "&lt;img src=x onerror=&#34;window.__xss=1&#34;&gt;" in rich_html
    assert "&lt;b&gt;gone&lt;/b&gt;" in rich_html
    assert "peppr_&lt;i id=xssfile&gt;q.png" in rich_html
    assert rich_html.count("<script") == 1  # only the report's own inline script
    assert "onerror=" not in re.sub(r"&lt;.*?&gt;", "", rich_html)


def test_metric_table_mean_and_bootstrap_interval_match_the_results(tmp_path_factory, rich_html):
    from xaiscope.analyses.significance import cell_rng, mean_interval

    _, rich = runs(tmp_path_factory)
    res = pd.read_parquet(rich / "results.parquet")
    seed = __import__("json").loads((rich / "analyses" / "ranking.json").read_text())["seed"]
    page = Page(rich_html)
    table = page.tables["metric-table"]
    header = [t for _, t in table[0]]
    metrics = [h.split(" ")[0] for h in header[3:]]
    assert set(metrics) == set(res["metric"])
    assert header[header.index("deletion \u2193 (non-discriminative)")] and any(
        h.startswith("relevance_mass_accuracy \u2191") for h in header
    )
    seen = 0
    for row in table[1:]:
        model, method, setting = (
            row[0][1],
            row[1][1].replace("baseline", "").strip(),
            row[2][1].replace(" (default)", ""),
        )
        for (sort, text), metric in zip(row[3:], metrics):
            v = res[(res.model == model) & (res.method == method) & (res.setting == setting) & (res.metric == metric)][
                "value"
            ].to_numpy()
            assert float(sort) == pytest.approx(np.nanmean(v), rel=1e-12)
            iv = mean_interval(v, rng=cell_rng(seed, model, method, setting, metric))
            assert text == f"{iv.mean:.4g} [{iv.low:.3g}, {iv.high:.3g}]" and iv.method in ("BCa", "percentile")
            seen += 1
    assert seen == 6 * 3  # 6 (method, setting) rows x 3 metrics


def test_report_computes_the_same_intervals_without_the_runs_tables(tmp_path_factory, tmp_path):
    base, _ = runs(tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(base, run)
    stored = interval_table(RunView(run))
    for f in (run / "analyses").glob("metric_means_*.parquet"):
        f.unlink()
    computed = interval_table(RunView(run))
    cols = ["model", "method", "setting", "metric", "mean", "ci_low", "ci_high", "ci_method", "n", "n_nan"]
    key = ["model", "method", "setting", "metric"]
    pd.testing.assert_frame_equal(
        stored[cols].sort_values(key).reset_index(drop=True), computed[cols].sort_values(key).reset_index(drop=True)
    )


def test_significance_agreement_and_cd_diagram_are_shown(tmp_path_factory, rich_html):
    _, rich = runs(tmp_path_factory)
    page = Page(rich_html)
    pairs = pd.read_parquet(rich / "analyses" / "significance.parquet")
    matrix = page.tables["significance-1"]
    methods = [t for _, t in matrix[0]][1:]
    assert [r[0][1] for r in matrix[1:]] == list(dict.fromkeys(pairs["metric"]))
    for row in matrix[1:]:
        g = pairs[pairs.metric == row[0][1]]
        for (_, text), m in zip(row[1:], methods):
            w, t, lo = (int(x) for x in text.split("/"))
            assert w + t + lo == len(methods) - 1
            mine = g[(g.method_a == m) | (g.method_b == m)]
            assert w == int((mine.significant & (mine.better == m)).sum())
    flags = [[t for _, t in r] for r in page.tables["discrimination-1"][1:]]
    assert {r[0] for r in flags} == {"deletion", "relevance_mass_accuracy", "sparseness"}
    alts = [a.get("alt", "") for a in page.imgs]
    assert "critical-difference diagram for model small_cnn" in alts
    assert "metric agreement for model small_cnn" in alts
    assert "significance matrices for model small_cnn" in alts
    assert "Friedman test over 3 metrics (blocks) and 5 methods" in rich_html
    ranking = page.tables["ranking-1"]
    assert [t for _, t in ranking[0]][:4] == ["method", "avg rank (metrics)", "rank 95% range", "avg rank 95% range"]


def test_cd_cliques_join_methods_closer_than_the_critical_difference():
    from xaiscope.report.plots import cliques

    assert cliques([1.0, 1.5, 3.0, 3.2], 1.0) == [(0, 1), (2, 3)]
    assert cliques([1.0, 1.5, 3.0, 3.2], 0.1) == []
    assert cliques([1.0, 1.5, 2.4, 3.2], 1.0) == [(0, 1), (1, 2), (2, 3)]
    assert cliques([1.0, 2.0, 3.0], 5.0) == [(0, 2)]


def test_nan_counts_and_skipped_images_are_listed(tmp_path_factory, rich_html):
    _, rich = runs(tmp_path_factory)
    res = pd.read_parquet(rich / "results.parquet")
    want = res[res.value.isna()].groupby(["method", "metric"]).size()
    assert len(want) >= 1  # the constant image makes a flat sobel map
    rows = [[t for _, t in r] for r in Page(rich_html).tables["nan-table"][1:]]
    got = {(r[1], r[3]): int(r[4]) for r in rows}
    assert got == {k: int(v) for k, v in want.items()}
    assert "Model small_cnn: 2 image(s)" in rich_html and "gone-1" in rich_html


def test_ranking_marks_baselines(rich_html):
    table = Page(rich_html).tables["ranking-1"]
    marked = {r[0][1].replace("baseline", "").strip() for r in table[1:] if r[0][1].endswith("baseline")}
    assert marked == {"random", "sobel", "input"}
    ranks = [float(r[1][0]) for r in table[1:]]
    assert ranks == sorted(ranks)


def test_example_images_have_four_distinct_normalisations(rich_html):
    imgs = [a for a in Page(rich_html).imgs if "norm-switch" in a.get("class", "")]
    assert len(imgs) == 1
    srcs = [imgs[0][f"data-src-{k}"] for k in NORMALISATIONS]
    assert len(set(srcs)) == 4 and imgs[0]["src"] == imgs[0]["data-src-max"]


def _reader(a: np.ndarray):
    return lambda idx: a[idx]


@pytest.mark.parametrize("budget", [2**24, 2 * 2 * 8 * 8])
def test_normalised_maps_closed_form(budget):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 2, 8, 8, generator=g).numpy()
    a[3] = 0.0  # an all-zero map stays zero
    picks = [0, 3, 7]
    out = normalised_maps(_reader(a), 10, picks, budget=budget, block=2, chunk_values=2 * 64 * 3)
    pooled = np.abs(a.sum(axis=1))
    assert set(out) == set(NORMALISATIONS)
    np.testing.assert_allclose(out["max"][0], pooled[0] / pooled[0].max(), rtol=1e-6)
    np.testing.assert_array_equal(out["max"][1], 0.0)
    assert out["max"][[0, 2]].max(axis=(1, 2)).tolist() == [1.0, 1.0]
    np.testing.assert_allclose(
        out["p99"], explain.postprocess(torch.from_numpy(a[picks]), normalise="p99").numpy(), rtol=1e-6
    )
    # exact dataset scales, or over two evenly spaced blocks of 2 rows (0-1 and 8-9) plus the picks
    sample = list(range(10)) if budget == 2**24 else [0, 1, 3, 7, 8, 9]
    for how in ("dataset_max", "dataset_p99"):
        want = explain.postprocess(torch.from_numpy(a[sample]), normalise=how).numpy()[[sample.index(p) for p in picks]]
        np.testing.assert_allclose(out[how], want, rtol=1e-6)
    for v in out.values():
        assert v.min() >= 0 and v.max() <= 1


def test_scale_rows_reads_whole_blocks_within_budget():
    from xaiscope.report.examples import scale_rows

    assert scale_rows(10, 4, [3], budget=40, block=4) == list(range(10))
    rows = scale_rows(1000, 100, [5, 999], budget=100 * 96, block=32)  # room for 3 of the 32 blocks: 0, 16, 31
    assert rows == sorted({*range(32), *range(512, 544), *range(992, 1000), 5, 999})


def test_missing_or_invalid_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(OutputError, match=r"The run folder .*nowhere does not exist\."):
        write_report(tmp_path / "nowhere")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(OutputError, match=r"The run folder .*file\.txt is a file, not a folder\."):
        write_report(f)
    (tmp_path / "half").mkdir()
    with pytest.raises(OutputError, match=r"half is not a finished xaiscope run: results\.parquet is missing"):
        write_report(tmp_path / "half")
    (tmp_path / "bad").mkdir()
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "bad" / "results.parquet")
    with pytest.raises(OutputError, match=r"results\.parquet is not an xaiscope results table \(no column 'method'\)"):
        write_report(tmp_path / "bad")


def test_moved_data_gives_a_note_not_a_crash(tmp_path_factory, tmp_path):
    base, _ = runs(tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(base, run)
    cfg = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(cfg.replace(str(base.parent / "d.npz"), str(tmp_path / "gone.npz")))
    html = write_report(run).read_text()
    sections = Page(html).sections
    assert "examples" not in sections and "metrics" in sections and "notes" in sections
    assert "Example images are not shown: The data file" in html and "gone.npz does not exist." in html


def test_cli_report_command(tmp_path_factory, tmp_path, capsys):
    from cli_helpers import run_cli

    base, _ = runs(tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(base, run)
    (run / "report.html").unlink(missing_ok=True)
    r = run_cli(capsys, "report", run)
    assert r.code == 0 and (run / "report.html").exists() and "report.html" in r.out
    r = run_cli(capsys, "report", tmp_path / "missing")
    assert r.code == 2 and "does not exist" in r.err and "Traceback" not in r.err
