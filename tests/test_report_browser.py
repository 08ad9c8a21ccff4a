"""The report in headless Chromium (Debian's package, driven by Playwright): no console or
page errors, every image loads, headers sort the table, the normalisation selector
switches the maps, and no script from data runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from report_helpers import runs
from xaiscope.report.html import write_report

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(
            "The browser tests need Debian's chromium at /usr/bin/chromium: "
            "apt-get install -y chromium (CI installs it)."
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("The browser tests need Playwright: pip install playwright (never run 'playwright install').")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"), args=ARGS
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    _, rich = runs(tmp_path_factory)
    return write_report(rich)


@pytest.fixture()
def page(browser, report):
    pg = browser.new_page(viewport={"width": 1300, "height": 900})
    pg.errors, pg.dialogs, pg.requests = [], [], []
    pg.on("console", lambda m: pg.errors.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(f"pageerror: {e}"))
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.goto(report.resolve().as_uri())
    pg.wait_for_load_state("load")
    yield pg
    pg.close()


def _column(pg, table_id: str, col: int) -> list[str]:
    return pg.eval_on_selector_all(
        f"#{table_id} tbody tr", f"rows => rows.map(r => r.cells[{col}].getAttribute('data-sort'))"
    )


def _is_sorted(values: list[str], descending: bool = False) -> bool:
    nums = [float(v) for v in values if v != ""]
    empties = [i for i, v in enumerate(values) if v == ""]
    ok_empties = empties == list(range(len(values) - len(empties), len(values)))  # NaN last
    return ok_empties and nums == sorted(nums, reverse=descending)


def test_opens_without_errors_and_every_image_loads(page, tmp_path):
    assert page.errors == []
    n, broken = page.evaluate(
        "() => [document.images.length, Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length]"
    )
    assert n >= 10 and broken == 0
    assert all(u.startswith(("file://", "data:")) for u in page.requests)  # nothing fetched from a network
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)


def test_clicking_a_metric_header_sorts_the_rows(page):
    headers = page.eval_on_selector_all("#metric-table thead th", "hs => hs.map(h => h.textContent)")
    target = None
    for col in range(3, len(headers)):
        before = _column(page, "metric-table", col)
        if not _is_sorted(before):
            target = col
            break
    assert target is not None, "every metric column is already sorted; the test needs an unsorted one"
    page.click(f"#metric-table thead th:nth-child({target + 1})")
    after = _column(page, "metric-table", target)
    assert after != before and sorted(after) == sorted(before) and _is_sorted(after)
    assert page.get_attribute(f"#metric-table thead th:nth-child({target + 1})", "aria-sort") == "ascending"
    page.click(f"#metric-table thead th:nth-child({target + 1})")
    assert _is_sorted(_column(page, "metric-table", target), descending=True)
    # text columns sort too
    page.click("#metric-table thead th:nth-child(2)")
    methods = _column(page, "metric-table", 1)
    assert methods == sorted(methods)
    assert page.errors == []


def test_normalisation_selector_switches_the_maps(page):
    img = "#examples img.norm-switch"
    first = page.get_attribute(img, "src")
    seen = {first}
    for key in ("dataset_max", "p99", "dataset_p99", "max"):
        page.select_option("#norm-select", key)
        src = page.get_attribute(img, "src")
        assert src == page.get_attribute(img, f"data-src-{key}")
        seen.add(src)
    assert len(seen) == 4 and page.get_attribute(img, "src") == first
    assert page.evaluate(f"() => document.querySelector('{img}').naturalWidth") > 0
    assert page.errors == []


def test_no_script_from_data_runs(page):
    assert page.dialogs == []
    assert page.evaluate("() => window.__xss") is None
    assert page.evaluate("() => document.getElementById('xssfile')") is None
    assert page.evaluate("() => document.scripts.length") == 1
    # the payloads are shown as text
    text = page.inner_text("body")
    assert "<script>alert(1)</script>" in text and '<img src=x onerror="window.__xss=1">' in text


@pytest.fixture(scope="module")
def spray_report(tmp_path_factory) -> Path:
    """A run on the lesion benchmark with a planted confounder: ranking statistics and SpRAy."""
    from xaiscope.commands.run_job import run
    from xaiscope.data.benchmark import generate
    from xaiscope.run.config import parse_config

    root = tmp_path_factory.mktemp("spray-report")
    generate(root / "bm", n_train=24, n_test=2, size=32, confounder_rate=0.5, seed=0)
    cfg = {
        "out": str(root / "run"),
        "data": {"path": str(root / "bm" / "train")},
        "models": [{"name": "m", "spec": "small_cnn"}],
        "methods": ["input", "saliency", "random"],
        "metrics": ["relevance_mass_accuracy", "confounder_relevance", "sparseness"],
        "analyses": {"ranking": {"draws": 100, "resamples": 100, "rank_resamples": 100}, "spray": {"k": 2}},
        "report": {"examples": 2},
    }
    return write_report(run(parse_config(cfg)))


def test_statistics_and_spray_sections_show_in_the_browser(browser, spray_report):
    pg = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(spray_report.resolve().as_uri())
    pg.wait_for_load_state("load")
    for section in ("#significance", "#agreement", "#spray"):
        assert pg.is_visible(section), section
    cd = pg.locator("img[alt^='critical-difference diagram']")
    assert cd.count() == 1 and cd.evaluate("i => i.complete && i.naturalWidth > 0")
    spray_images = pg.eval_on_selector_all("#spray img", "is => is.map(i => i.complete && i.naturalWidth > 0)")
    assert len(spray_images) >= 3 and all(spray_images)  # eigenvalues, embedding, cluster cards per class
    assert "cluster" in pg.inner_text("#spray").lower()
    assert errors == []
    pg.close()
