"""``xaiscope report RUN_DIR``: one self-contained HTML file, ``RUN/report.html``.

The report only reads the run folder (through :class:`~xaiscope.run.store.RunStore`)
and opens offline: every figure is an embedded base64 PNG, the CSS and the JavaScript
are inline, nothing refers to an external URL. Every string that comes from data or
config (class labels, image ids, file names, model and method names, config text) goes
through Jinja2's autoescaping; nothing from data is marked safe.

Sections (each left out when its inputs are absent): summary ranking with the baselines
marked; a sortable metric table (mean +- 95% CI per method and metric); NaN counts and
skipped images; example images with every method's map in four normalisations;
metric distributions; deletion/insertion curves; hyperparameter sensitivity; global
maps + PEPPR, variability and SIS outputs (rendered generically); run environment.
"""

from __future__ import annotations

import base64
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xaiscope.errors import OutputError, XaiscopeError
from xaiscope.io import write_text
from xaiscope.report import plots
from xaiscope.report.artefacts import collect
from xaiscope.report.examples import NORMALISATIONS, normalised_maps, pick_examples

DEFAULT_BASELINES = ("random", "sobel", "input")
MAX_TABLE_ROWS = 100


# ----------------------------------------------------------------------------- helpers
def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes (only base64 characters: safe in HTML)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def fmt(v: Any) -> str:
    """A table cell's text."""
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "NaN" if math.isnan(v) else f"{float(v):.4g}"
    s = str(v)
    return s if len(s) <= 300 else s[:297] + "..."


def sort_key(v: Any) -> str:
    """The ``data-sort`` value of a cell: a number when numeric (empty for NaN), else the text."""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (int, np.integer, float, np.floating)):
        return "" if math.isnan(float(v)) else repr(float(v))
    return fmt(v)


def cell(v: Any, text: str | None = None, title: str = "", badge: bool = False) -> dict[str, Any]:
    """A table cell: its text, ``data-sort`` key, tooltip and whether it carries the baseline badge."""
    return {"text": fmt(v) if text is None else text, "sort": sort_key(v), "title": title, "badge": badge}


def table_from_df(df: pd.DataFrame, max_rows: int = MAX_TABLE_ROWS, source: str = "") -> dict[str, Any]:
    """A template table (columns, rows of cells, a note when rows were left out)."""
    shown = df.head(max_rows)
    rows = [{"cells": [cell(v) for v in rec], "cls": ""} for rec in shown.itertuples(index=False, name=None)]
    note = ""
    if len(df) > max_rows:
        note = f"First {max_rows} of {len(df)} rows" + (f"; the full table is {source}." if source else ".")
    return {"columns": [str(c) for c in df.columns], "rows": rows, "note": note}


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, int, int]:
    """``(mean, half width of the t-interval, n finite, n NaN)`` of one method's scores."""
    from scipy.special import (
        stdtrit,  # Student t quantile (lighter to import than scipy.stats)
    )

    v = np.asarray(values, float)
    finite = v[np.isfinite(v)]
    n, n_nan = int(finite.size), int(v.size - finite.size)
    if n == 0:
        return math.nan, math.nan, 0, n_nan
    mean = float(finite.mean())
    if n < 2:
        return mean, math.nan, n, n_nan
    half = float(stdtrit(n - 1, 0.5 + level / 2) * finite.std(ddof=1) / math.sqrt(n))
    return mean, half, n, n_nan


# ----------------------------------------------------------------------------- reading the run
class RunView:
    """What the report reads from a run folder."""

    def __init__(self, run_dir: str | Path):
        from xaiscope.run.store import RunStore

        root = Path(run_dir)
        if root.exists() and not root.is_dir():
            raise OutputError(f"The run folder {root} is a file, not a folder.")
        self.store = RunStore(root)
        self.root = root
        if not (root / "results.parquet").exists():
            raise OutputError(
                f"{root} is not a finished xaiscope run: results.parquet is missing "
                f"(run 'xaiscope run' on its config to finish it)."
            )
        try:
            self.results = self.store.results()
            self.curves = self.store.curves()
        except (OSError, ValueError) as e:
            raise OutputError(f"The results tables in {root} cannot be read ({e}).") from None
        missing = {"model", "method", "setting", "metric", "value"} - set(self.results.columns)
        if missing:
            raise OutputError(
                f"{root / 'results.parquet'} is not an xaiscope results table (no column {min(missing)!r})."
            )
        self.results = self.results[self.results["metric"] != "none"]
        self.manifest = self._manifest()
        self.config_text = self.store.read_config_text()
        self.notes: list[str] = []
        self.cfg = self._config()
        self.analyses = root / "analyses"
        self.ranking_meta = self._json("ranking.json") or {}
        self.baselines = tuple(
            self.ranking_meta.get("baselines")
            or (self.cfg.analyses.ranking.baselines if self.cfg and self.cfg.analyses.ranking else DEFAULT_BASELINES)
        )
        self.directions = self._directions()
        self.models = list(dict.fromkeys(self.results["model"]))
        self.methods = self._method_order()
        self.defaults = self._defaults()

    def _manifest(self) -> dict[str, Any]:
        try:
            manifest = self.store.read_manifest()
        except (OSError, ValueError) as e:
            raise OutputError(f"{self.root / 'manifest.json'} cannot be read ({e}).") from None
        if not isinstance(manifest, dict):
            raise OutputError(f"{self.root / 'manifest.json'} is not an xaiscope manifest (not a JSON object).")
        return manifest

    def _json(self, name: str) -> Any:
        import json

        p = self.root / "analyses" / name
        try:
            return json.loads(p.read_text()) if p.exists() else None
        except (OSError, ValueError):
            self.notes.append(f"analyses/{name} cannot be read and is left out.")
            return None

    def _config(self):
        from xaiscope.run.config import load_config

        if self.config_text is None:
            self.notes.append("config.yaml is missing: example images are not shown.")
            return None
        try:
            return load_config(self.root / "config.yaml")
        except XaiscopeError as e:
            self.notes.append(f"config.yaml cannot be used ({e}); example images are not shown.")
            return None

    def _directions(self) -> dict[str, str]:
        out = dict(self.ranking_meta.get("directions") or {})
        from xaiscope import evaluate

        for m in self.results["metric"].unique():
            if m not in out:
                try:
                    out[m] = evaluate.get_class(m).direction
                except XaiscopeError:
                    pass
        return out

    def _method_order(self) -> list[str]:
        listed = [m["method"] for m in self.manifest.get("methods", []) if isinstance(m, dict) and "method" in m]
        present = list(dict.fromkeys(self.results["method"]))
        return [m for m in dict.fromkeys(listed) if m in present] + sorted(m for m in present if m not in listed)

    def _defaults(self) -> dict[str, str]:
        """Each method's default setting: the first listed in the manifest, else ``default``."""
        out: dict[str, str] = {}
        for m in self.manifest.get("methods", []):
            if isinstance(m, dict) and m.get("method") not in out and "setting" in m:
                out[m["method"]] = m["setting"]
        for method, df in self.results.groupby("method"):
            if method not in out:
                settings = sorted(df["setting"].unique())
                out[method] = "default" if "default" in settings else settings[0]
        return out

    def default_rows(self, df: pd.DataFrame) -> pd.DataFrame:
        """Rows of ``df`` at each method's default setting."""
        return df[df["setting"] == df["method"].map(self.defaults)]

    def parquet(self, name: str) -> pd.DataFrame | None:
        p = self.analyses / name
        if not p.exists():
            return None
        try:
            return pd.read_parquet(p)
        except (OSError, ValueError):
            self.notes.append(f"analyses/{name} cannot be read and is left out.")
            return None


# ----------------------------------------------------------------------------- sections
def ranking_section(run: RunView) -> list[dict[str, Any]]:
    table = run.parquet("ranking.parquet")
    if table is None or table.empty:
        return []
    out = []
    for model, df in table.groupby("model", sort=False):
        df = df.drop(columns=["model"]).sort_values("mean_rank", kind="stable")
        cols = [c for c in df.columns if c not in ("method", "is_baseline")]
        names = ["method"] + [_ranking_header(c) for c in cols]
        rows = []
        for _, r in df.iterrows():
            base = bool(r.get("is_baseline", r["method"] in run.baselines))
            rows.append(
                {
                    "cls": "baseline" if base else "",
                    "cells": [cell(r["method"], badge=base)] + [cell(r[c]) for c in cols],
                }
            )
        out.append(
            {
                "model": model,
                "table": {"columns": names, "rows": rows, "note": ""},
                "figure": data_uri(plots.mean_ranks(df.assign(is_baseline=df.get("is_baseline", False)))),
            }
        )
    return out


def _ranking_header(c: str) -> str:
    if c.startswith("rank[") and c.endswith("]"):
        return f"rank: {c[5:-1]}"
    if c.startswith("p_beats_"):
        return f"P(beats {c[8:]})"
    if c.startswith("metrics_beating_"):
        return f"metrics beating {c[16:]}"
    return {"mean_rank": "mean rank", "p_first": "P(first)"}.get(c, c)


def metric_table(run: RunView) -> dict[str, Any] | None:
    res = run.results
    if res.empty:
        return None
    metrics = list(dict.fromkeys(res["metric"]))
    arrows = {"higher": " \u2191", "lower": " \u2193"}
    columns = ["model", "method", "setting"] + [m + arrows.get(run.directions.get(m, ""), "") for m in metrics]
    rows = []
    groups = res.groupby(["model", "method", "setting"], sort=False)
    keys = sorted(
        groups.groups,
        key=lambda k: (run.models.index(k[0]), run.methods.index(k[1]), k[2] != run.defaults.get(k[1]), k[2]),
    )
    for model, method, setting in keys:
        g = groups.get_group((model, method, setting))
        base = method in run.baselines
        cells = [
            cell(model),
            cell(method, badge=base),
            cell(setting + (" (default)" if setting == run.defaults.get(method) and setting != "default" else "")),
        ]
        for m in metrics:
            mean, half, n, n_nan = mean_ci(g.loc[g["metric"] == m, "value"].to_numpy())
            if n == 0:
                text = "\u2014" if n_nan == 0 else "NaN"
            else:
                text = f"{mean:.4g}" + (f" \u00b1 {half:.2g}" if not math.isnan(half) else "")
            title = f"n = {n} images" + (f", {n_nan} NaN" if n_nan else "")
            cells.append(cell(mean, text=text, title=title))
        rows.append({"cells": cells, "cls": "baseline" if base else ""})
    return {"columns": columns, "rows": rows, "note": ""}


def nan_section(run: RunView) -> dict[str, Any]:
    res = run.results
    g = res.assign(nan=res["value"].isna()).groupby(["model", "method", "setting", "metric"], sort=True)["nan"]
    counts = pd.DataFrame({"NaN scores": g.sum().astype(int), "images": g.size()}).reset_index()
    counts = counts[counts["NaN scores"] > 0]
    skipped = run.manifest.get("skipped_images") or {}
    skipped_rows = [
        {"model": str(m), "count": len(ids), "ids": [str(i) for i in ids]}
        for m, ids in (skipped.items() if isinstance(skipped, dict) else [])
        if ids
    ]
    return {"nan": table_from_df(counts) if len(counts) else None, "skipped": skipped_rows}


def examples_section(run: RunView) -> list[dict[str, Any]]:
    cfg = run.cfg
    if cfg is None or cfg.report.examples == 0 or not (run.root / "attributions.zarr").exists():
        return []
    from xaiscope.run.context import open_run_data

    try:
        ds = open_run_data(cfg)
    except XaiscopeError as e:
        run.notes.append(f"Example images are not shown: {e}")
        return []
    skipped = {str(i) for ids in (run.manifest.get("skipped_images") or {}).values() for i in ids}
    if skipped:
        ds = ds.subset([i for i, name in enumerate(ds.ids) if str(name) not in skipped])
    want = (run.manifest.get("dataset") or {}).get("fingerprint")
    if want and ds.fingerprint() != want:
        run.notes.append(f"Example images are not shown: the data at {cfg.data.path} has changed since the run.")
        return []
    picks = pick_examples(ds.y, cfg.report.examples)
    if not picks:
        return []
    classes = list(ds.classes)
    labels = [classes[int(ds.y[i])] if int(ds.y[i]) < len(classes) else str(int(ds.y[i])) for i in picks]
    row_labels = [f"{ds.ids[i]}\n{lab}" for i, lab in zip(picks, labels)]
    masks = None if ds.masks is None else ds.masks[picks].numpy()
    out = []
    for model in run.models:
        maps: dict[str, dict[str, np.ndarray]] = {k: {} for k in NORMALISATIONS}
        for method in run.methods:
            setting = run.defaults.get(method)
            try:
                per_norm = normalised_maps(
                    functools.partial(run.store.attributions, model, method, setting),
                    len(ds),
                    picks,
                    block=cfg.unit_images,
                )
            except (KeyError, FileNotFoundError, ValueError) as e:  # no stored array for this triple
                run.notes.append(f"No stored attributions for {model} / {method} / {setting} ({type(e).__name__}).")
                continue
            for k, v in per_norm.items():
                maps[k][method] = v
        if not maps["max"]:
            continue
        srcs = {k: data_uri(plots.example_grid(ds.x[picks], masks, maps[k], row_labels)) for k in NORMALISATIONS}
        out.append(
            {
                "model": model,
                "srcs": srcs,
                "default": "max",
                "rows": [{"id": str(ds.ids[i]), "label": lab, "index": int(i)} for i, lab in zip(picks, labels)],
            }
        )
    return out


def distributions_section(run: RunView) -> list[dict[str, str]]:
    out = []
    for model in run.models:
        df = run.default_rows(run.results[run.results["model"] == model])
        if df.empty:
            continue
        metrics = list(dict.fromkeys(df["metric"]))
        methods = [m for m in run.methods if m in set(df["method"])]
        out.append(
            {
                "model": model,
                "src": data_uri(plots.metric_distributions(df, metrics, methods, run.baselines, run.directions)),
            }
        )
    return out


def curves_section(run: RunView) -> list[dict[str, str]]:
    c = run.curves
    if c is None or c.empty:
        return []
    c = run.default_rows(c)
    out = []
    for (model, metric), df in c.groupby(["model", "metric"], sort=True):
        out.append({"model": model, "metric": metric, "src": data_uri(plots.mean_curves(df, metric, run.baselines))})
    return out


def sensitivity_section(run: RunView) -> dict[str, Any] | None:
    maps = run.parquet("sensitivity_maps.parquet")
    scores = run.parquet("sensitivity_scores.parquet")
    if (maps is None or maps.empty) and (scores is None or scores.empty):
        return None
    figures = []
    keys = set()
    for df in (maps, scores):
        if df is not None and not df.empty:
            keys |= set(map(tuple, df[["model", "method"]].drop_duplicates().to_numpy()))
    for model, method in sorted(keys):
        item = {"model": model, "method": method, "maps": None, "scores": None}
        if maps is not None and not maps.empty:
            sub = maps[(maps["model"] == model) & (maps["method"] == method)]
            if len(sub):
                item["maps"] = data_uri(
                    plots.sensitivity_maps(sub, f"{model} / {method}: maps against the default setting")
                )
        if scores is not None and not scores.empty:
            sub = scores[
                (scores["model"] == model)
                & (scores["method"] == method)
                & (scores["setting"] != run.defaults.get(method))
            ]
            if len(sub):
                item["scores"] = data_uri(plots.sensitivity_scores(sub, f"{model} / {method}: metric change"))
        figures.append(item)
    table = None
    if scores is not None and not scores.empty:
        table = table_from_df(scores, source="analyses/sensitivity_scores.parquet")
    summary = None
    if maps is not None and not maps.empty:
        cols = [c for c in ("spearman", "ssim", "top_k_overlap") if c in maps.columns]
        summary = table_from_df(maps.groupby(["model", "method", "setting"], sort=True)[cols].mean().reset_index())
    return {"figures": figures, "scores": table, "maps": summary}


def generic_sections(run: RunView) -> list[dict[str, Any]]:
    out = []
    for art in collect(run.root):
        out.append(
            {
                "key": art.key,
                "title": art.title,
                "figures": [{"caption": rel, "src": data_uri(png)} for rel, png in art.figures],
                "tables": [{"caption": rel, "table": table_from_df(df, source=rel)} for rel, df in art.tables],
                "left_out": art.left_out,
            }
        )
    return out


def environment_section(run: RunView) -> dict[str, Any]:
    from xaiscope.report.artefacts import _flatten

    rows = [
        (k, v) for k, v in _flatten(run.manifest) if not k.startswith(("methods.", "metrics.", "fingerprints.units."))
    ]
    return {
        "manifest": table_from_df(pd.DataFrame(rows, columns=["key", "value"]), max_rows=500) if rows else None,
        "config": run.config_text,
    }


# ----------------------------------------------------------------------------- rendering
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("xaiscope.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def build_context(run: RunView) -> dict[str, Any]:
    """Everything the template shows (strings are plain; the template escapes them)."""
    ctx: dict[str, Any] = {
        "title": run.cfg.report.title if run.cfg else "xaiscope report",
        "run_dir": str(run.root),
        "version": str(run.manifest.get("xaiscope", "")),
        "dataset": run.manifest.get("dataset") or {},
        "models": run.models,
        "methods": run.methods,
        "baselines": list(run.baselines),
        "n_results": len(run.results),
        "ranking": ranking_section(run),
        "metric_table": metric_table(run),
        "nan": nan_section(run),
        "examples": examples_section(run),
        "norms": list(NORMALISATIONS.items()),
        "distributions": distributions_section(run),
        "curves": curves_section(run),
        "sensitivity": sensitivity_section(run),
        "generic": generic_sections(run),
        "environment": environment_section(run),
    }
    ctx["notes"] = list(run.notes)
    return ctx


def render(ctx: dict[str, Any]) -> str:
    return _environment().get_template("report.html").render(**ctx)


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html`` (atomically) and return its path."""
    run = RunView(run_dir)
    html = render(build_context(run))
    path = run.root / "report.html"
    write_text(path, html)
    return path
