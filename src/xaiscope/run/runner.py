"""The runner: plan the grid, compute missing work units, commit them, analyse.

Steps: validate and record the config; open data and models (:class:`RunContext`:
random initial weights drawn under a seed derived from the run's seed and the model's
name; images whose model outputs are not finite dropped and reported by id); plan units (model x method x setting x
image batch); compare the committed units' input records with the current inputs
(:mod:`xaiscope.run.fingerprints`); compute each unit not yet committed (locally or
on Ray) and commit it, with its record, from this process; consolidate the tidy tables;
run the analyses it is given (``xaiscope.commands.run_job`` passes ranking, sensitivity,
global maps + PEPPR, variability, SIS); write the
manifest. Running the same command again skips committed units whose inputs are
unchanged; committed units whose model, images or settings changed stop the run with one
sentence naming the change, unless ``refresh=True`` (recompute just those) or
``force=True`` (recompute everything).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

import xaiscope
from xaiscope import evaluate, explain, models
from xaiscope.errors import ConfigError, StaleResultsError
from xaiscope.evaluate.plan import summary_lines, table_lines
from xaiscope.run import fingerprints
from xaiscope.run.config import RunConfig, dump_config, setting_id
from xaiscope.run.context import RunContext
from xaiscope.run.inputs import spacing_of
from xaiscope.run.store import RESULT_COLUMNS, RunStore
from xaiscope.run.units import Unit, UnitSource, compute_unit, inexact_counts, metric_instance

# The analyses that follow the units (ranking, sensitivity, global maps, ...): given the
# store, the context and the consolidated results, they write their tables and return
# their timings. ``xaiscope.commands.run_job`` passes them; the runner knows none by name.
Analyses = Callable[[RunStore, RunContext, pd.DataFrame, Any], dict[str, float]]


def commit(store: RunStore, ctx: RunContext, unit: Unit, result) -> None:
    a, rows, curves = result
    store.commit_unit(
        unit.id,
        key=unit.key,
        shape=(ctx.n_images, *ctx.shape),
        chunk=ctx.cfg.unit_images,
        start=unit.start,
        attributions=a,
        rows=rows,
        curves=curves,
        attrs={
            "model": unit.model,
            "method": unit.method,
            "setting": unit.setting,
            "hparams": dict(unit.hparams),
            "settled": explain.get(unit.method, **dict(unit.hparams)).settled(ctx.shape),  # 'auto' sizes resolved
        },
        record=ctx.unit_record(unit),
    )


def compare_units(store: RunStore, ctx: RunContext, units: list[Unit]) -> fingerprints.Comparison:
    """Committed units against the planned ``units``: which are stale, which no longer belong, and why."""
    planned = {u.id: u for u in units}
    stored = {uid: store.unit_record(uid) for uid in sorted(store.unit_ids())}
    current = {u.id: ctx.unit_record(u) for u in units}
    return fingerprints.compare(
        stored,
        planned,
        current,
        {u.id: u.model for u in units},
        {name: ctx.model_label(name) for name in ctx.models},
    )


def local_backend(
    ctx: UnitSource, units: list[Unit], on_result: Callable[[Unit, Any], None], counted: dict[str, int] | None = None
) -> None:
    """Compute units one after the other in this process; add the model passes each
    method's units made to ``counted`` (images through the model, :func:`models.count_passes`;
    passes through a prepared copy of the model, as DeepLIFT, guided backpropagation and CAM
    make, are not seen there)."""
    for unit in units:
        net = ctx.models[unit.model]
        with models.count_passes(net) as count:
            result = compute_unit(net, unit, ctx.inputs(unit))
        if counted is not None:
            counted[unit.method] = counted.get(unit.method, 0) + count.rows
        on_result(unit, result)


def score_set_level(store: RunStore, ctx: RunContext, results: pd.DataFrame) -> pd.DataFrame:
    """Add the rows of the set-level metrics (sufficiency, consistency), scored over all the
    run's images at once from the stored maps and the models' predicted classes (no model
    pass; :class:`~xaiscope.evaluate.setlevel.SetLevelScores`, reading the stored maps a
    block at a time), so they do not depend on ``unit_images``; rewrite ``results.parquet``."""
    set_metrics = [(n, h) for n, h in ctx.metrics if evaluate.get_class(n).set_level]
    if not set_metrics:
        return results
    from xaiscope.evaluate.setlevel import SetLevelScores

    rows, n, block = [], ctx.n_images, ctx.cfg.unit_images
    for model in ctx.models:
        predicted = ctx.outputs[model].argmax(dim=1)
        targets = ctx.targets[model].tolist()
        for method, hp in ctx.methods:
            setting = setting_id(hp)
            accs = [
                SetLevelScores(metric_instance(nm, h, ctx.batch_size, ctx.seed), n, ctx.shape[1:])
                for nm, h in set_metrics
            ]
            for start in range(0, n, block):  # the stored maps a block at a time
                a = torch.from_numpy(store.attributions(model, method, setting, slice(start, start + block)))
                idx = torch.arange(start, start + len(a))
                for acc in accs:
                    acc.update(idx, a, predicted[idx])
            for (name, _), acc in zip(set_metrics, accs):
                scores = acc.compute()[1]
                acc.close()
                base = {"model": model, "method": method, "setting": setting, "metric": name}
                rows += [
                    {"image_id": i, "label": int(y), "target": t, **base, "value": float(v)}
                    for i, y, t, v in zip(ctx.ids, ctx.labels.tolist(), targets, scores.tolist())
                ]
    keep = results[~results["metric"].isin([n for n, _ in set_metrics])]  # rows of older unit files
    out = pd.concat([keep, pd.DataFrame(rows, columns=RESULT_COLUMNS)], ignore_index=True)
    out = out.sort_values(["model", "method", "setting", "metric", "image_id"], kind="stable").reset_index(drop=True)
    store.write_results(out)
    return out


def run_folder(cfg: RunConfig, out: str | Path | None = None) -> Path:
    return Path(out or cfg.out or "xaiscope-run")


def resolved_config(cfg: RunConfig, root: Path) -> str:
    """The config text a run folder keeps (its ``out`` set to the folder)."""
    return dump_config(cfg.model_copy(update={"out": str(root)}))


def config_changed(cfg: RunConfig, out: str | Path | None = None) -> bool:
    """True when the run folder holds a run of a different configuration."""
    p = run_folder(cfg, out) / "config.yaml"
    return p.exists() and p.read_text() != resolved_config(cfg, run_folder(cfg, out))


def run(
    cfg: RunConfig,
    *,
    out: str | Path | None = None,
    force: bool = False,
    refresh: bool = False,
    console=None,
    backend: str | None = None,
    address: str | None = None,
    analyses: Analyses | None = None,
    plan_only: bool = False,
) -> Path:
    """Run (or resume) the configured grid, then ``analyses`` if given; return the run folder.

    The pass plan (:meth:`~xaiscope.run.context.RunContext.pass_plans`) is printed first;
    with ``plan_only`` it is printed in full and nothing is computed or written.

    Committed units whose inputs changed (model weights, images, masks, labels,
    normalisation, resolved settings) raise :class:`~xaiscope.errors.StaleResultsError`
    naming the change, and nothing is written; ``refresh=True`` recomputes exactly those
    units (and drops units that no longer belong to the plan), ``force=True`` everything.
    """
    from xaiscope.run.progress import ImageProgress

    root = run_folder(cfg, out)
    if plan_only:
        _print_plans(RunContext(cfg, console), console, full=True)
        return root
    store = RunStore(root, create=True)
    resolved = resolved_config(cfg, root)
    previous = store.read_config_text()
    if not force and previous is not None and previous != resolved:
        raise ConfigError(
            f"The run folder {root} holds a run with a different configuration; use --force to recompute or choose another --out."
        )
    t0 = time.time()
    ctx = RunContext(cfg, console)  # bad data or models fail here, before anything is cleared or written
    units = ctx.units()
    changes = fingerprints.Comparison() if force else compare_units(store, ctx, units)
    if changes:
        sentence = fingerprints.stale_sentence(
            changes.reasons,
            f"the run folder {root}",
            len(changes.stale),
            n_gone=len(changes.gone),
            unrecorded=changes.unrecorded,
        )
        if not refresh:
            raise StaleResultsError(sentence)
        if console is not None:
            console.print(f"[yellow]refreshing: {sentence.split('; use --refresh')[0]}[/]", highlight=False)
    if force:
        store.clear()
    store.write_config(resolved)
    for uid in changes.gone:
        store.remove_unit(uid)
    stale = {u.id for u in changes.stale}
    todo = [u for u in units if u.id in stale or not store.is_done(u.id)]
    planned = ctx.planned_passes(units)
    planned_todo = ctx.planned_passes(todo)
    counted: dict[str, int] = {}
    inexact = inexact_counts(ctx.metrics)
    if console is not None:
        loose = f"; at most or about for {', '.join(inexact)}" if inexact else ""
        console.print(
            f"plan: {len(units)} work units, {_total(planned):,.0f} model passes "
            f"({_total(planned_todo):,.0f} still to compute{loose})",
            highlight=False,
        )
    if todo:
        _print_plans(ctx, console, full=False)
    if ctx.skipped and console is not None:
        for name, ids in ctx.skipped.items():
            who = "" if name == "unreadable" else f"model {name}: "
            why = "cannot be read" if name == "unreadable" else "give non-finite outputs"
            console.print(
                f"[yellow]{who}{len(ids)} image(s) {why} and are skipped: {', '.join(ids[:10])}[/]", highlight=False
            )
    if console is not None and len(units) > len(todo):
        console.print(f"{len(units)} work units ({len(units) - len(todo)} already done)")
    images_todo = sum(u.stop - u.start for u in todo)
    with ImageProgress(console, images_todo, "explaining and scoring") as progress:

        def on_result(unit, result):
            commit(store, ctx, unit, result)
            progress.advance(unit.stop - unit.start, f"{unit.model} / {unit.method}")

        which = backend or cfg.backend
        if which == "ray":
            from xaiscope.run.ray_backend import ray_backend

            ray_backend(ctx, todo, on_result, address=address or cfg.ray_address, max_retries=cfg.ray_max_retries)
        else:
            with explain.voxel_spacing(spacing_of(ctx.source)):  # supervoxels in mm (LIME, SHAP, IROF)
                local_backend(ctx, todo, on_result, counted)
    t_units = time.time() - t0
    results = score_set_level(store, ctx, store.consolidate())
    timings = analyses(store, ctx, results, console) if analyses is not None else {}
    store.write_manifest(
        manifest(
            ctx,
            units,
            todo,
            {"units_s": round(t_units, 3), **timings, "total_s": round(time.time() - t0, 3)},
            n_stale=len(stale),
            passes={
                "planned": planned,
                "planned_this_time": planned_todo,
                "inexact": inexact,
                "counted_this_time": counted if which == "local" else None,
            },
        )
    )
    return root


def _total(per_method: dict[str, float]) -> float:
    return float(sum(per_method.values()))


def manifest(
    ctx: RunContext,
    units: list[Unit],
    todo: list[Unit],
    timings: dict[str, float],
    n_stale: int = 0,
    passes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Versions, seeds, device, dataset fingerprint, per model its initial-weights seed and
    weights hash, per unit the fingerprints it was computed from, model passes per method
    (planned from the declarations; counted where the local backend computed), timings and
    skipped images."""
    import captum
    import zennit

    return {
        "xaiscope": xaiscope.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "captum": captum.__version__,
        "zennit": getattr(zennit, "__version__", "unknown"),
        "numpy": np.__version__,
        "seed": ctx.cfg.seed,
        "device": str(ctx.device),
        "dataset": {
            "source": ctx.data_source,
            "images": ctx.n_images,
            "classes": ctx.classes,
            "shape": list(ctx.shape),
            "fingerprint": ctx.fingerprint(),
            "masks": ctx.has_masks,
        },
        "models": ctx.model_info,
        "methods": [{"method": n, "setting": setting_id(s)} for n, s in ctx.methods],
        "metrics": [
            {"metric": n, "hparams": h, "settled": evaluate.get(n, **h).settled(tuple(ctx.shape))}
            for n, h in ctx.metrics
        ],
        "units": {"total": len(units), "computed_this_time": len(todo)},
        "fingerprints": {
            "stale_recomputed": n_stale,
            "units": {u.id: fingerprints.summary(ctx.unit_record(u)) for u in units},
        },
        "passes": passes or {},
        "skipped_images": ctx.skipped,
        "timings_s": timings,
    }


def _print_plans(ctx: RunContext, console, *, full: bool) -> None:
    """Each model's pass plan: its summary lines, or every cell with ``full``."""
    if console is None:
        return
    plans = ctx.pass_plans()
    for name, plan in plans.items():
        lines = table_lines(plan) if full else summary_lines(plan)
        if len(plans) > 1:
            lines = [f"model {name}:", *lines]
        for line in lines:
            console.print(line, highlight=False, markup=False)
