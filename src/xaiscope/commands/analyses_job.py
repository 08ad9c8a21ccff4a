"""Analyses of a run, written under ``RUN/analyses/``: ranking, sensitivity, and (when
configured) global maps + PEPPR, model-collection variability, SIS and SpRAy."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from xaiscope import evaluate
from xaiscope.analyses.ranking import rank_methods
from xaiscope.analyses.sensitivity import map_sensitivity, score_sensitivity
from xaiscope.analyses.significance import EXACT_MAX_N, analyse, collection_intervals, mean_intervals, q_alpha
from xaiscope.io import write_json, write_parquet
from xaiscope.run.config import setting_id
from xaiscope.run.inputs import model_seed

if TYPE_CHECKING:
    from xaiscope.run.context import RunContext
    from xaiscope.run.store import RunStore


def default_settings(ctx: "RunContext") -> dict[str, str]:
    """Each method's first (default) setting id."""
    out: dict[str, str] = {}
    for m in ctx.method_entries:
        out[m.name] = setting_id(m.settings()[0])
    return out


def ranking_job(store: "RunStore", ctx: "RunContext", results: pd.DataFrame) -> None:
    """The ranking and the statistics of its aggregates, per model (``analyses/``):

    ``metric_means_<model>.parquet`` (every setting's mean with its bootstrap interval),
    ``metric_means_models.parquet`` (with two or more models: means over the models with a
    two-level bootstrap interval over models and images),
    ``significance.parquet`` (paired tests), ``discrimination.parquet`` (flags),
    ``metric_agreement.parquet``, ``ranking.parquet`` and ``ranking.json``."""
    cfg = ctx.cfg.analyses.ranking
    defaults = default_settings(ctx)
    scored_all = results[results["metric"] != "none"]
    metrics = list(scored_all["metric"].unique())
    directions = {n: evaluate.get_class(n).direction for n in metrics}
    set_level = {n for n in metrics if evaluate.get_class(n).set_level}
    intervals = mean_intervals(scored_all, seed=ctx.cfg.seed, n_resamples=cfg.resamples)
    if set_level:
        intervals = _set_level_intervals(store, ctx, intervals, set_level, cfg.resamples)
    over_models = collection_intervals(scored_all, seed=ctx.cfg.seed, n_resamples=cfg.resamples)
    if len(over_models):
        write_parquet(store.analyses / "metric_means_models.parquet", over_models)
    scored = scored_all[scored_all["setting"] == scored_all["method"].map(defaults)]
    tables, pairs, flags, agreement, tests = [], [], [], [], {}
    for model, df in scored.groupby("model"):
        sig = analyse(
            df,
            directions,
            set_level=set_level,
            keep_non_discriminative=cfg.keep_non_discriminative,
            alpha=cfg.alpha,
            w_floor=cfg.w_floor,
            n_boot=cfg.rank_resamples,
            seed=ctx.cfg.seed,
        )
        r = rank_methods(
            df[df["metric"].isin(sig.metrics_used)],
            directions,
            draws=cfg.draws,
            seed=ctx.cfg.seed,
            baselines=tuple(cfg.baselines),
        )
        t = sig.spread.merge(r.table, on="method", how="right")
        t = t.sort_values(["avg_rank", "method"], kind="stable").reset_index(drop=True)
        t.insert(0, "model", model)
        tables.append(t)
        for part, out in ((sig.pairs, pairs), (sig.flags, flags), (sig.agreement, agreement)):
            if len(part):
                out.append(part.assign(model=model)[["model", *part.columns]])
        means = intervals[intervals["model"] == model]
        flag = sig.flags.set_index("metric")
        means = means.assign(
            non_discriminative=means["metric"].map(flag["non_discriminative"]).fillna(False).astype(bool),
            used_in_ranking=means["metric"].isin(sig.metrics_used),
        )
        write_parquet(store.analyses / f"metric_means_{model}.parquet", means.reset_index(drop=True))
        f = sig.friedman
        tests[str(model)] = {
            "blocks": "metrics",
            "metrics_used": sig.metrics_used,
            "metrics_left_out": [m for m in flag.index if m not in sig.metrics_used],
            "methods": int(f.k) if f else 0,
            "friedman_chi2": f.chi2 if f else None,
            "friedman_p": f.p_value if f else None,
            "kendall_w": f.kendall_w if f else None,
            "iman_davenport_f": f.iman_davenport if f else None,
            "iman_davenport_p": f.p_iman_davenport if f else None,
            "q_alpha": q_alpha(int(f.k), cfg.alpha) if f and f.k >= 2 else None,
            "critical_difference": sig.cd,
        }
        if bool(sig.flags["non_discriminative"].all()) and not cfg.keep_non_discriminative:
            tests[str(model)]["note"] = "every metric is non-discriminative: all of them are ranked"
    if tables:
        write_parquet(store.analyses / "ranking.parquet", pd.concat(tables, ignore_index=True))
    for name, parts in (("significance", pairs), ("discrimination", flags), ("metric_agreement", agreement)):
        if parts:
            write_parquet(store.analyses / f"{name}.parquet", pd.concat(parts, ignore_index=True))
    if tables:
        write_json(
            store.analyses / "ranking.json",
            {
                "draws": cfg.draws,
                "seed": ctx.cfg.seed,
                "baselines": cfg.baselines,
                "directions": directions,
                "set_level_metrics": sorted(set_level),
                "interval": {
                    "level": 0.95,
                    "method": "BCa, percentile where BCa is degenerate",
                    "resamples": cfg.resamples,
                },
                "rank_resamples": cfg.rank_resamples,
                "paired_test": {
                    "test": "Wilcoxon signed-rank",
                    "zero_method": "wilcox",
                    "mode": f"exact up to {EXACT_MAX_N} non-zero differences without ties, else approx",
                    "correction": "Holm over all pairs of a metric",
                },
                "alpha": cfg.alpha,
                "w_floor": cfg.w_floor,
                "keep_non_discriminative": cfg.keep_non_discriminative,
                "friedman": _finite(tests),
            },
        )


def _finite(obj):
    """``obj`` with NaN / infinite floats as None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _set_level_intervals(store, ctx, intervals: pd.DataFrame, set_level: set[str], resamples: int) -> pd.DataFrame:
    """The intervals of the set-level metrics from resampling the images and recomputing the
    set score (:func:`~xaiscope.analyses.significance.set_level_interval`)."""
    import torch

    from xaiscope.analyses.significance import cell_rng, set_level_interval
    from xaiscope.run.units import metric_instance

    intervals = intervals.copy()
    hparams = dict(ctx.metrics)
    for i, row in intervals[intervals["metric"].isin(set_level)].iterrows():
        a = torch.from_numpy(store.attributions(row["model"], row["method"], row["setting"]))
        metric = metric_instance(row["metric"], hparams[row["metric"]], ctx.batch_size, ctx.seed)
        pairs = metric.set_pairs(a, dims=a.dim() - 2).cpu().numpy()  # stored raw [N, C, *spatial]
        predicted = ctx.outputs[row["model"]].argmax(dim=1).numpy()
        key = (row["model"], row["method"], row["setting"], row["metric"])
        iv = set_level_interval(pairs, predicted, rng=cell_rng(ctx.cfg.seed, "set", *key), n_resamples=resamples)
        intervals.loc[i, ["ci_low", "ci_high", "ci_method"]] = [iv.low, iv.high, iv.method]
    return intervals


def sensitivity_job(store: "RunStore", ctx: "RunContext", results: pd.DataFrame) -> None:
    cfg = ctx.cfg.analyses.sensitivity
    maps_rows, score_rows = [], []
    ids = ctx.ids
    for m in ctx.method_entries:
        settings = [setting_id(s) for s in m.settings()]
        if len(settings) < 2:
            continue
        for model in ctx.models:
            maps = {s: torch.from_numpy(store.attributions(model, m.name, s)) for s in settings}
            df = map_sensitivity(maps, settings[0], ids, top_k=cfg.top_k)
            df.insert(0, "method", m.name)
            df.insert(0, "model", model)
            maps_rows.append(df)
            sub = results[(results["model"] == model) & (results["method"] == m.name) & (results["metric"] != "none")]
            if len(sub):
                sc = score_sensitivity(sub, settings[0])
                sc.insert(0, "method", m.name)
                sc.insert(0, "model", model)
                score_rows.append(sc)
    if maps_rows:
        write_parquet(store.analyses / "sensitivity_maps.parquet", pd.concat(maps_rows, ignore_index=True))
    if score_rows:
        write_parquet(store.analyses / "sensitivity_scores.parquet", pd.concat(score_rows, ignore_index=True))


def _first_model(ctx: "RunContext", spec: str | None) -> tuple[str, str | None, int | None]:
    """``(spec, weights, initial-weights seed)`` of an analysis' model: the one named, or
    the run's first model with the seed its work units were computed with."""
    if spec is not None:
        return spec, None, None
    m = ctx.cfg.models[0]
    return m.spec, m.weights, model_seed(ctx.cfg.seed, m.name)


def global_job(store: "RunStore", ctx: "RunContext", results: pd.DataFrame) -> None:
    from xaiscope.commands.global_job import run_global

    g = ctx.cfg.analyses.global_maps
    spec, weights, init_seed = _first_model(ctx, g.model)
    run_global(
        model=spec,
        weights=weights,
        data=Path(g.data or ctx.cfg.data.path),
        method=g.method,
        params={g.method: g.hparams} if g.hparams else None,
        by=g.by,
        fill=g.fill,
        unit=g.unit,
        step=g.step,
        random_orders=g.random_orders,
        seed=ctx.cfg.seed,
        init_seed=init_seed,
        batch_size=ctx.cfg.batch_size,
        device=ctx.cfg.device,
        out=store.analyses / "global",
    )


def variability_job(store: "RunStore", ctx: "RunContext", results: pd.DataFrame) -> None:
    from xaiscope.commands.variability_job import run_variability

    v = ctx.cfg.analyses.variability
    run_variability(
        collection=Path(v.collection),
        data=Path(v.data or ctx.cfg.data.path),
        methods=v.methods,
        pair_images=v.pair_images,
        n_boot=v.n_boot,
        seed=ctx.cfg.seed,
        batch_size=ctx.cfg.batch_size,
        device=ctx.cfg.device,
        out=store.analyses / "variability",
    )


def sis_job(store: "RunStore", ctx: "RunContext", results: pd.DataFrame) -> None:
    from xaiscope.commands.sis_job import run_sis

    s = ctx.cfg.analyses.sis
    spec, weights, init_seed = _first_model(ctx, s.model)
    run_sis(
        model=spec,
        weights=[weights] if weights else None,
        data=Path(s.data or ctx.cfg.data.path),
        target=s.target,
        tau=s.tau,
        unit=s.unit,
        max_images=s.images,
        batch_size=max(ctx.cfg.batch_size, 256),
        device=ctx.cfg.device,
        seed=ctx.cfg.seed,
        init_seed=init_seed,
        out=store.analyses / "sis",
    )


def spray_job(store: "RunStore", ctx: "RunContext", results: pd.DataFrame) -> None:
    from xaiscope.commands.spray_job import run_spray

    s = ctx.cfg.analyses.spray
    spec, weights, init_seed = _first_model(ctx, s.model)
    run_spray(
        model=spec,
        weights=weights,
        data=Path(s.data or ctx.cfg.data.path),
        klass=s.classes,
        method=s.method,
        params={s.method: s.hparams} if s.hparams and s.method else None,
        k=s.k,
        grid=s.grid,
        signed=s.signed,
        n_neighbors=s.neighbors,
        embedding=s.embedding,
        confounders=tuple(s.confounders),
        seed=ctx.cfg.seed,
        init_seed=init_seed,
        batch_size=ctx.cfg.batch_size,
        device=ctx.cfg.device,
        out=store.analyses / "spray",
    )


def _default_explainers(ctx: "RunContext") -> list:
    """The run's methods, each at its first (default) setting (as :func:`default_settings`)."""
    from xaiscope import explain

    return [explain.get(m.name, **{"batch_size": ctx.batch_size, **m.settings()[0]}) for m in ctx.method_entries]


def annotators_job(store: "RunStore", ctx: "RunContext", results: pd.DataFrame) -> None:
    """Several annotators against each other and the run's methods against them, on its
    first model: ``analyses/annotators/`` as ``xaiscope annotators`` writes it."""
    from xaiscope.commands.annotators_job import localisation_metrics, write_annotator_tables

    a = ctx.cfg.analyses.annotators
    name = next(iter(ctx.models))
    write_annotator_tables(
        store.analyses / "annotators",
        ctx.models[name],
        ctx.dataset,
        _default_explainers(ctx),
        ctx.targets[name],
        localisation_metrics(a.metrics, {}),
        top_k=a.top_k,
        staple_backend=a.staple,
        device=ctx.device,
    )


def meta_job(store: "RunStore", ctx: "RunContext", results: pd.DataFrame) -> None:
    """Meta-evaluation of the configured metrics with the run's methods (default settings)
    on its first model: ``analyses/meta/`` as ``xaiscope meta-evaluate`` writes it."""
    from xaiscope.commands.evaluate_job import build_metrics
    from xaiscope.commands.meta_job import write_meta

    m = ctx.cfg.analyses.meta
    name = next(iter(ctx.models))
    write_meta(
        store.analyses / "meta",
        ctx.models[name],
        name,
        ctx.dataset,
        _default_explainers(ctx),
        build_metrics(evaluate.expand(m.metrics), {}, ctx.batch_size),
        iterations=m.iterations,
        perturbations=m.perturbations,
        seed=ctx.seed,
        batch_size=ctx.batch_size,
        max_images=m.max_images,
        device=ctx.device,
    )


def run_analyses(store: "RunStore", ctx: "RunContext", results: pd.DataFrame, console=None) -> dict[str, float]:
    """Run the configured analyses; return their timings in seconds."""
    timings: dict[str, float] = {}
    a = ctx.cfg.analyses
    jobs = [
        ("ranking", a.ranking, ranking_job),
        ("sensitivity", a.sensitivity, sensitivity_job),
        ("global", a.global_maps, global_job),
        ("variability", a.variability, variability_job),
        ("sis", a.sis, sis_job),
        ("spray", a.spray, spray_job),
        ("meta", a.meta, meta_job),
        ("annotators", a.annotators, annotators_job),
    ]
    for name, cfg, job in jobs:
        if cfg is None:
            continue
        if console is not None:
            console.print(f"analysis: {name}")
        t = time.time()
        job(store, ctx, results)
        timings[f"{name}_s"] = round(time.time() - t, 3)
    return timings
