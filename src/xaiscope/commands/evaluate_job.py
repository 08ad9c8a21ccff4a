"""The ``xaiscope evaluate`` job: explain with each method, score with each metric, write a tidy table.

One row per image, method and metric: ``image_id, label, target, method, metric, value,
direction, category, settings`` (``settings`` = JSON of the method's and the metric's
hyperparameters). The Parquet file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from xaiscope import evaluate, explain
from xaiscope.errors import ConfigError, MetricError
from xaiscope.evaluate.plan import summary_lines, table_lines
from xaiscope.io import ensure_dir, write_parquet
from xaiscope.run.inputs import (
    ModelAndImages,
    applicable_explainers,
    build_explainers,
    open_model_and_source,
    provisional_batch_size,
    spacing_of,
)


def build_metrics(names: list[str], params: dict[str, dict[str, Any]], batch_size: int) -> list[evaluate.Metric]:
    """Metrics by name with their settings (``batch_size`` for model-bound ones); clear errors."""
    if not names:
        raise MetricError("No metrics were given; pass --metrics with names from 'xaiscope metrics'.")
    out = []
    for n in names:
        cls = evaluate.get_class(n)
        hp = dict(params.get(n, {}))
        if ("model" in cls.needs or "explainer" in cls.needs) and "batch_size" not in hp:
            hp["batch_size"] = batch_size
        out.append(cls(**hp))
    return out


COLUMNS = ["image_id", "label", "target", "method", "metric", "value", "direction", "category", "settings"]


def check_masks(mets: list, requested: list[str], src, console=None) -> list:
    """The metrics the data of ``src`` has masks for: localisation metrics that came with a
    group (``all``, ``localisation``) of the ``requested`` names are left out (said on
    ``console``) when it has no masks; one sentence when none is left, when a metric named
    explicitly needs masks the data lacks, or when an extra mask a metric names is missing."""
    kept, left_out = evaluate.select(list(requested), masks=src.has_masks, extra_masks=src.extra_mask_names)
    if left_out and console is not None:
        lacking = "no masks" if not src.has_masks else "not every extra mask"
        console.print(
            f"{src.source} has {lacking}: left out {len(left_out)} localisation metric(s) ({', '.join(left_out)})."
        )
    mets = [m for m in mets if m.name in kept]
    if not mets:
        raise MetricError(f"Every metric asked for needs masks, but the data in {src.source} has none.")
    needs_mask = [m.name for m in mets if "mask" in m.needs and m.mask_name() is None]
    if needs_mask and not src.has_masks:
        raise MetricError(
            f"Metric {needs_mask[0]} is a localisation metric and needs masks, but the data in {src.source} has none."
        )
    for m in mets:
        evaluate.mask_for(m, src.has_masks, {n: True for n in src.extra_mask_names}, f"the data in {src.source}")
    return mets


def score_source(
    net,
    src,
    dev,
    explainers: list,
    mets: list,
    *,
    target: str | int,
    batch_size: int,
    images_per_step: int = 256,
    console=None,
):
    """Every metric of every method on every image of the lazy source ``src``, one batch of
    ``images_per_step`` images at a time: the tidy table (columns :data:`COLUMNS`).

    Memory holds one batch, its attributions and the metrics' perturbed copies of it (chunked
    by ``batch_size``); set-level metrics keep one map per image
    (:class:`~xaiscope.evaluate.setlevel.SetLevelScores`, on disk beyond its budget) and are
    scored over the whole set at the end, so no score depends on the batches."""
    import pandas as pd

    from xaiscope import models
    from xaiscope.evaluate.setlevel import SetLevelScores
    from xaiscope.evaluate.sharing import shared_passes
    from xaiscope.run.progress import ImageProgress
    from xaiscope.run.steps import each_step

    n = len(src)
    sets = {
        (i, j): SetLevelScores(m, n, src.shape[1:])
        for i in range(len(explainers))
        for j, m in enumerate(mets)
        if m.set_level
    }
    parts: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # (method, metric, positions, values)
    targets = np.full(n, -1, dtype=np.int64)

    def step(b):
        """Scores of one step (nothing kept when it fails: the set-level maps are overwritten
        by position, the rows are returned)."""
        x, t, mask, extra = step_inputs(b, net, dev, target, batch_size)
        pred = models.forward(net, x, batch_size=batch_size).argmax(dim=1) if sets else None
        pos, out = b.index.numpy(), []
        with shared_passes([m for m in mets if not m.set_level]):  # one block for every method of the step
            for i, ex in enumerate(explainers):
                a = ex(net, x, t)
                for j, m in enumerate(mets):
                    if m.set_level:
                        sets[(i, j)].update(b.index, a, pred)
                    else:
                        v = m(net, x, t, a, mask=evaluate.mask_for(m, mask, extra), explainer=ex)
                        out.append((i, j, pos, v.cpu().numpy()))
        return t.cpu().numpy(), out

    try:
        with ImageProgress(console, n, "evaluating") as progress, explain.voxel_spacing(spacing_of(src)):
            for b, (t, out) in each_step(src.batches(images_per_step), step):
                targets[b.index.numpy()] = t
                parts += out
                progress.advance(len(b))
        for (i, j), acc in sets.items():
            pos, v = acc.compute()
            parts.append((i, j, pos, v.numpy()))
    finally:
        for acc in sets.values():
            acc.close()
    order = sorted(range(len(parts)), key=lambda k: parts[k][:2])
    blocks = []
    for k in order:
        i, j, pos, v = parts[k]
        ex, m = explainers[i], mets[j]
        settings = json.dumps(
            {"method": ex.settled(src.shape), "metric": m.settled(src.shape)}, sort_keys=True, default=str
        )
        blocks.append(
            pd.DataFrame(
                {
                    "_i": i,
                    "_j": j,
                    "_pos": pos,
                    "image_id": [src.ids[p] for p in pos.tolist()],
                    "label": src.labels.numpy()[pos].astype(int),
                    "target": targets[pos].astype(int),
                    "method": ex.name,
                    "metric": m.name,
                    "value": v.astype(float),
                    "direction": m.direction,
                    "category": m.category,
                    "settings": settings,
                }
            )
        )
    if not blocks:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.concat(blocks, ignore_index=True).sort_values(["_i", "_j", "_pos"], kind="stable")
    return df[COLUMNS].reset_index(drop=True)


def prepare_evaluation(methods, metrics, params, batch_size):
    """``(explainers, metrics)`` built from names and ``params`` (all checked before any data is read)."""
    if not methods:
        raise ConfigError("No methods were given; pass --methods with names from 'xaiscope methods'.")
    methods, (metric_names, _) = explain.expand(methods), evaluate.select(list(metrics), masks=True)
    unknown = [k for k in params if k not in methods and k not in metric_names]
    if unknown:
        raise ConfigError(f"--param names {unknown[0]!r}, which is neither in --methods nor in --metrics.")
    mets = build_metrics(metric_names, params, provisional_batch_size(batch_size))
    return build_explainers(methods, params, batch_size), mets


def run_evaluate(
    what: ModelAndImages,
    *,
    methods: list[str],
    metrics: list[str],
    out: Path,
    params: dict[str, dict[str, Any]] | None = None,
    images_per_step: int = 256,
    console=None,
    plan_only: bool = False,
) -> tuple[Path | None, int]:
    """Compute every metric for every method on every image; write ``out`` (Parquet). Returns (path, rows).

    The pass plan (:func:`probe_plan`) is printed first; with ``plan_only`` nothing else is
    done or written (the result is ``(None, 0)``).

    The images stream from disk (:func:`score_source`). ``what.seed`` fixes the random initial
    weights of a zoo, torchvision or factory spec (:func:`~xaiscope.run.inputs.model_seed`)."""
    params = params or {}
    explainers, mets = prepare_evaluation(methods, metrics, params, what.batch_size)
    if Path(out).suffix.lower() != ".parquet":
        raise ConfigError(f"--out {out} must end in .parquet.")
    ensure_dir(Path(out).parent)  # an unwritable output fails now, not after all the work
    net, src, dev, batch_size, objs = open_model_and_source(what, explainers + mets, params)
    explainers, mets = objs[: len(explainers)], check_masks(objs[len(explainers) :], metrics, src, console)
    explainers = applicable_explainers(explainers, methods, net, console)
    if console is not None:  # the plan is for the user to read: no probe without a console
        plan = probe_plan(net, src, dev, explainers, mets, target=what.target, batch_size=batch_size)
        for line in table_lines(plan) if plan_only else summary_lines(plan):
            console.print(line, highlight=False, markup=False)
    if plan_only:
        return None, 0
    df = score_source(
        net,
        src,
        dev,
        explainers,
        mets,
        target=what.target,
        batch_size=batch_size,
        images_per_step=images_per_step,
        console=console,
    )
    if src.skipped and console is not None:
        console.print(f"left out {len(src.skipped)} unreadable image(s): {', '.join(sorted(src.skipped))}")
    write_parquet(out, df)
    return Path(out), len(df)


def probe_plan(net, src, dev, explainers, mets, *, target, batch_size: int, probe: int = 4):
    """The :class:`~xaiscope.evaluate.plan.PassPlan` of the job, probed on the first ``probe``
    images of ``src`` (one shared-passes block spans every method, as :func:`score_source` runs)."""
    from xaiscope.evaluate.plan import pass_plan

    x, t, masks, extra = step_inputs(next(iter(src.batches(min(probe, len(src))))), net, dev, target, batch_size)
    unit = [m for m in mets if not m.set_level]
    return pass_plan(
        net,
        x,
        t,
        explainers,
        unit,
        n_images=len(src),
        batch_size=batch_size,
        mask_of=lambda m: evaluate.mask_for(m, masks, extra),
    )


def step_inputs(b, net, dev, target, batch_size: int):
    """``(x, targets, masks, extra masks)`` of a source batch ``b`` on the device ``dev``."""
    from xaiscope.run.inputs import choose_targets
    from xaiscope.run.steps import to_device

    x, y = to_device(b.x, dev), to_device(b.y, dev)
    masks = None if b.masks is None else to_device(b.masks, dev)
    extra = {k: to_device(v, dev) for k, v in b.extra_masks.items()}
    return x, choose_targets(net, x, y, target, batch_size), masks, extra
