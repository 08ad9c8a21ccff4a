"""``xaiscope report RUN_DIR``: one self-contained HTML file, ``RUN/report.html``.

The report only reads the run folder (through :class:`~xaiscope.run.store.RunStore`)
and opens offline: every figure is an embedded base64 PNG, the CSS and the JavaScript
are inline, nothing refers to an external URL. Every string that comes from data or
config (class labels, image ids, file names, model and method names, config text) goes
through Jinja2's autoescaping; nothing from data is marked safe.

Sections (each left out when its inputs are absent): summary ranking (critical-difference
diagram, average rank over metrics with its bootstrap range, the Monte-Carlo weighting as a
robustness view) with the baselines marked; a sortable metric table (mean and 95% bootstrap
interval per method and metric, non-discriminative metrics labelled); paired tests (wins /
ties / losses per metric) and the discrimination flags; metric agreement; NaN counts and
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
from xaiscope.report.examples import NORMALISATIONS, normalised_maps, pick_examples, volume_rows

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

    def flagged(self) -> dict[str, set[str]]:
        """model -> the metrics flagged non-discriminative (``analyses/discrimination.parquet``)."""
        flags = self.parquet("discrimination.parquet")
        if flags is None or flags.empty or "non_discriminative" not in flags.columns:
            return {}
        f = flags[flags["non_discriminative"].astype(bool)]
        return {str(m): set(g["metric"]) for m, g in f.groupby("model")}

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
    tests = (run.ranking_meta.get("friedman") or {}) if isinstance(run.ranking_meta, dict) else {}
    flags = run.parquet("discrimination.parquet")
    out = []
    for model, df in table.groupby("model", sort=False):
        key = "avg_rank" if "avg_rank" in df.columns else "mean_rank"
        df = df.drop(columns=["model"]).sort_values(key, kind="stable")
        hidden = {"method", "is_baseline", "avg_rank_low", "avg_rank_high", "rank_low", "rank_high"}
        cols = [c for c in df.columns if c not in hidden]
        spread = "rank_low" in df.columns
        names = ["method"] + [_ranking_header(c) for c in cols[:1]]
        names += ["rank 95% range", "avg rank 95% range"] if spread else []
        names += [_ranking_header(c) for c in cols[1:]]
        rows = []
        for _, r in df.iterrows():
            base = bool(r.get("is_baseline", r["method"] in run.baselines))
            cells = [cell(r["method"], badge=base)] + [cell(r[c]) for c in cols[:1]]
            if spread:
                cells.append(cell(r["rank_low"], text=_range(r["rank_low"], r["rank_high"], "{:.0f}")))
                cells.append(cell(r["avg_rank_low"], text=_range(r["avg_rank_low"], r["avg_rank_high"], "{:.2f}")))
            cells += [cell(r[c]) for c in cols[1:]]
            rows.append({"cls": "baseline" if base else "", "cells": cells})
        t = tests.get(str(model)) or {}
        cd = t.get("critical_difference")
        cd_fig = None
        if spread and cd is not None and len(df) >= 2:
            cd_fig = data_uri(
                plots.cd_diagram(list(df["method"]), list(df["avg_rank"].astype(float)), float(cd), run.baselines)
            )
        left_out = []
        if flags is not None and not flags.empty and "used_in_ranking" in flags.columns:
            f = flags[(flags["model"] == model) & ~flags["used_in_ranking"].astype(bool)]
            left_out = [f"{m} ({why})" for m, why in zip(f["metric"], f["reason"])]
        out.append(
            {
                "model": model,
                "table": {"columns": names, "rows": rows, "note": ""},
                "cd": cd_fig,
                "tests": _friedman_text(t),
                "left_out": left_out,
                "note": str(t.get("note", "")),
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
    return {
        "avg_rank": "avg rank (metrics)",
        "mean_rank": "mean rank (weightings)",
        "p_first": "P(first, weightings)",
    }.get(c, c)


def _range(lo: Any, hi: Any, f: str) -> str:
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return ""
    return f.format(lo) if lo == hi else f"{f.format(lo)}\u2013{f.format(hi)}"


def _friedman_text(t: dict[str, Any]) -> str:
    """One line: Friedman over the metrics and Nemenyi's critical difference."""
    if not t or t.get("friedman_chi2") is None:
        return ""
    used = t.get("metrics_used") or []
    return (
        f"Friedman test over {len(used)} metrics (blocks) and {t.get('methods')} methods: "
        f"chi2 = {t['friedman_chi2']:.3g}, p = {t['friedman_p']:.3g}, Kendall's W = {t['kendall_w']:.2f}; "
        f"Nemenyi critical difference CD = {t['critical_difference']:.2f} (q = {t['q_alpha']})."
    )


def interval_table(run: RunView) -> pd.DataFrame:
    """Each (model, method, setting, metric) mean with its bootstrap interval: the run's
    ``metric_means_<model>.parquet`` where they cover the results, else computed here (same seed)."""
    from xaiscope.analyses.significance import mean_intervals

    parts = [run.parquet(f"metric_means_{m}.parquet") for m in run.models]
    keys = ["model", "method", "setting", "metric"]
    if all(p is not None and {*keys, "ci_low", "ci_high", "ci_method"} <= set(p.columns) for p in parts):
        got = pd.concat(parts, ignore_index=True)
        if len(got.drop_duplicates(keys)) == len(run.results.groupby(keys)):
            return got
    seed = int(run.ranking_meta.get("seed", 0)) if isinstance(run.ranking_meta, dict) else 0
    return mean_intervals(run.results, seed=seed)


def interval_cell(r, title: str) -> dict[str, Any]:
    """A table cell "mean [low, high]" (the interval left out where it is undefined)."""
    interval = f" [{r['ci_low']:.3g}, {r['ci_high']:.3g}]" if not math.isnan(r["ci_low"]) else ""
    return cell(r["mean"], text=f"{r['mean']:.4g}{interval}", title=title)


def models_table(run: RunView) -> dict[str, Any] | None:
    """Means over the models (two or more) with their two-level bootstrap interval, from the
    run's ``metric_means_models.parquet``: one row per method and setting, one column per metric."""
    df = run.parquet("metric_means_models.parquet")
    if df is None or df.empty:
        return None
    metrics = list(dict.fromkeys(df["metric"]))
    arrows = {"higher": " \u2191", "lower": " \u2193"}
    columns = ["method", "setting"] + [m + arrows.get(run.directions.get(m, ""), "") for m in metrics]
    ivs = df.set_index(["method", "setting", "metric"])
    rows = []
    for method, setting in dict.fromkeys(zip(df["method"], df["setting"])):
        cells = [cell(method, badge=method in run.baselines), cell(setting)]
        for m in metrics:
            r = ivs.loc[(method, setting, m)] if (method, setting, m) in ivs.index else None
            if r is None or math.isnan(r["mean"]):
                cells.append(cell(math.nan, text="\u2014"))
                continue
            title = f"{int(r['n_models'])} models, {int(r['n'])} scores; 95% {r['ci_method']} bootstrap interval"
            cells.append(interval_cell(r, title))
        rows.append({"cells": cells, "cls": "baseline" if method in run.baselines else ""})
    return {"columns": columns, "rows": rows, "note": ""}


def metric_table(run: RunView) -> dict[str, Any] | None:
    res = run.results
    if res.empty:
        return None
    metrics = list(dict.fromkeys(res["metric"]))
    ivs = interval_table(run).set_index(["model", "method", "setting", "metric"]).sort_index()
    flagged = run.flagged()
    arrows = {"higher": " \u2191", "lower": " \u2193"}
    columns = ["model", "method", "setting"]
    for m in metrics:
        label = m + arrows.get(run.directions.get(m, ""), "")
        models = [mod for mod in run.models if m in flagged.get(mod, ())]
        if models:
            label += " (non-discriminative" + (": " + ", ".join(models) if len(run.models) > 1 else "") + ")"
        columns.append(label)
    rows = []
    groups = res.groupby(["model", "method", "setting"], sort=False)
    keys = sorted(
        groups.groups,
        key=lambda k: (run.models.index(k[0]), run.methods.index(k[1]), k[2] != run.defaults.get(k[1]), k[2]),
    )
    for model, method, setting in keys:
        base = method in run.baselines
        cells = [
            cell(model),
            cell(method, badge=base),
            cell(setting + (" (default)" if setting == run.defaults.get(method) and setting != "default" else "")),
        ]
        for m in metrics:
            key = (model, method, setting, m)
            if key not in ivs.index:
                cells.append(cell(math.nan, text="\u2014"))
                continue
            r = ivs.loc[key]
            n, n_nan = int(r["n"]), int(r["n_nan"])
            title = f"n = {n} images" + (f", {n_nan} NaN" if n_nan else "")
            if r["ci_method"]:
                title += f"; 95% {r['ci_method']} bootstrap interval"
            if n == 0:
                cells.append(cell(r["mean"], text="\u2014" if n_nan == 0 else "NaN", title=title))
            else:
                cells.append(interval_cell(r, title))
        rows.append({"cells": cells, "cls": "baseline" if base else ""})
    return {"columns": columns, "rows": rows, "note": ""}


def significance_section(run: RunView) -> list[dict[str, Any]]:
    """Per model: wins / ties / losses of each method in the Holm-corrected paired tests of
    each metric, and the metrics' discrimination flags."""
    pairs = run.parquet("significance.parquet")
    flags = run.parquet("discrimination.parquet")
    if pairs is None or pairs.empty:
        return []
    out = []
    for model, df in pairs.groupby("model", sort=False):
        methods = [m for m in run.methods if m in set(df["method_a"]) | set(df["method_b"])]
        rows = []
        for metric, g in df.groupby("metric", sort=False):
            cells = [cell(metric)]
            for m in methods:
                mine = g[(g["method_a"] == m) | (g["method_b"] == m)]
                sig = mine["significant"].astype(bool)
                wins = int((sig & (mine["better"] == m)).sum())
                losses = int((sig & (mine["better"] != m)).sum())
                ties = len(mine) - wins - losses
                cells.append(
                    cell(
                        wins - losses,
                        text=f"{wins}/{ties}/{losses}",
                        title=f"{m} on {metric}: better than {wins}, not different from {ties}, worse than {losses}",
                    )
                )
            rows.append({"cells": cells, "cls": ""})
        matrix = {"columns": ["metric"] + methods, "rows": rows, "note": ""}
        figure = data_uri(plots.significance_matrices(df, methods))
        flag_table = None
        if flags is not None and not flags.empty:
            f = flags[flags["model"] == model].drop(columns=["model"])
            cols = [
                c
                for c in (
                    "metric",
                    "non_discriminative",
                    "reason",
                    "friedman_p",
                    "kendall_w",
                    "random_beaten",
                    "n_images",
                    "used_in_ranking",
                )
                if c in f.columns
            ]
            flag_table = table_from_df(f[cols], source="analyses/discrimination.parquet")
        modes = ", ".join(sorted(df["mode"].astype(str).unique()))
        out.append({"model": model, "matrix": matrix, "figure": figure, "flags": flag_table, "modes": modes})
    return out


def agreement_section(run: RunView) -> list[dict[str, Any]]:
    agree = run.parquet("metric_agreement.parquet")
    if agree is None or agree.empty:
        return []
    out = []
    for model, df in agree.groupby("model", sort=False):
        order = df.drop_duplicates("metric_a").sort_values("order_a")["metric_a"].tolist()
        tau = df.pivot(index="metric_a", columns="metric_b", values="tau").reindex(index=order, columns=order)
        if len(order) < 2:
            continue
        out.append({"model": model, "src": data_uri(plots.agreement_heatmap(tau))})
    return out


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
    from xaiscope.run.context import open_run_source

    try:
        src, positions = open_run_source(cfg)
    except XaiscopeError as e:
        run.notes.append(f"Example images are not shown: {e}")
        return []
    skipped = {str(i) for ids in (run.manifest.get("skipped_images") or {}).values() for i in ids}
    if skipped:
        positions = [p for p in positions if src.ids[p] not in skipped]
    want = (run.manifest.get("dataset") or {}).get("fingerprint")
    try:
        if want and src.fingerprint(positions=positions) != want:
            run.notes.append(f"Example images are not shown: the data at {cfg.data.path} has changed since the run.")
            return []
    except XaiscopeError as e:
        run.notes.append(f"Example images are not shown: {e}")
        return []
    picks = pick_examples(src.labels[positions], cfg.report.examples)
    if not picks:
        return []
    ds = src.take([positions[i] for i in picks])
    n_run = len(positions)
    classes = list(ds.classes)
    labels = [classes[int(v)] if int(v) < len(classes) else str(int(v)) for v in ds.y]
    row_labels = [f"{i}\n{lab}" for i, lab in zip(ds.ids, labels)]
    masks = None if ds.masks is None else ds.masks.numpy()
    out = []
    for model in run.models:
        maps: dict[str, dict[str, np.ndarray]] = {k: {} for k in NORMALISATIONS}
        for method in run.methods:
            setting = run.defaults.get(method)
            try:
                per_norm = normalised_maps(
                    functools.partial(run.store.attributions, model, method, setting),
                    n_run,
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
        srcs = {k: data_uri(plots.example_grid(*_grid_rows(ds.x, masks, maps[k], row_labels))) for k in NORMALISATIONS}
        out.append(
            {
                "model": model,
                "srcs": srcs,
                "default": "max",
                "rows": [{"id": str(id_), "label": lab, "index": int(i)} for id_, i, lab in zip(ds.ids, picks, labels)],
            }
        )
    return out


def _grid_rows(x, masks, maps, row_labels):
    """The example grid's rows: the images as they are, volumes as four 2D views each."""
    if x.dim() == 5:
        return volume_rows(x, masks, maps, row_labels)
    return x, masks, maps, row_labels


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
        "models_table": models_table(run),
        "significance": significance_section(run),
        "agreement": agreement_section(run),
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
