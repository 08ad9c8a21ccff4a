"""The ``xaiscope evaluate`` job: explain with each method, score with each metric, write a tidy table.

One row per image, method and metric: ``image_id, label, target, method, metric, value,
direction, category, settings`` (``settings`` = JSON of the method's and the metric's
hyperparameters). The Parquet file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xaiscope import evaluate, explain
from xaiscope.errors import ConfigError, MetricError
from xaiscope.io import ensure_dir, write_parquet
from xaiscope.run.inputs import ModelAndImages, build_explainers, open_model_and_images, provisional_batch_size


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


def run_evaluate(
    what: ModelAndImages,
    *,
    methods: list[str],
    metrics: list[str],
    out: Path,
    params: dict[str, dict[str, Any]] | None = None,
    console=None,
) -> tuple[Path, int]:
    """Compute every metric for every method on every image; write ``out`` (Parquet). Returns (path, rows).

    ``what.seed`` fixes the random initial weights of a zoo, torchvision or factory spec
    (:func:`~xaiscope.run.inputs.model_seed`)."""
    import pandas as pd
    from rich.progress import Progress

    params = params or {}
    if not methods:
        raise ConfigError("No methods were given; pass --methods with names from 'xaiscope methods'.")
    requested = list(metrics)
    methods, (metrics, _) = explain.expand(methods), evaluate.select(requested, masks=True)
    unknown = [k for k in params if k not in methods and k not in metrics]
    if unknown:
        raise ConfigError(f"--param names {unknown[0]!r}, which is neither in --methods nor in --metrics.")
    mets = build_metrics(metrics, params, provisional_batch_size(what.batch_size))
    explainers = build_explainers(methods, params, what.batch_size)
    if Path(out).suffix.lower() != ".parquet":
        raise ConfigError(f"--out {out} must end in .parquet.")
    ensure_dir(Path(out).parent)  # an unwritable output fails now, not after all the work
    net, ds, dev, batch_size, objs, t = open_model_and_images(what, explainers + mets, params)
    explainers, mets = objs[: len(explainers)], objs[len(explainers) :]
    kept, left_out = evaluate.select(requested, masks=ds.masks is not None, extra_masks=set(ds.extra_masks))
    mets = [m for m in mets if m.name in kept]
    if left_out and console is not None:
        lacking = "no masks" if ds.masks is None else "not every extra mask"
        console.print(
            f"{ds.source} has {lacking}: left out {len(left_out)} localisation metric(s) ({', '.join(left_out)})."
        )
    if not mets:
        raise MetricError(f"Every metric asked for needs masks, but the data in {ds.source} has none.")
    needs_mask = [m.name for m in mets if "mask" in m.needs and m.mask_name() is None]
    if needs_mask and ds.masks is None:
        raise MetricError(
            f"Metric {needs_mask[0]} is a localisation metric and needs masks, but the data in {ds.source} has none."
        )
    for m in mets:
        evaluate.mask_for(m, ds.masks, ds.extra_masks, f"the data in {ds.source}")
    x = ds.x.to(dev)
    extra_masks = {k: v.to(dev) for k, v in ds.extra_masks.items()}
    mask = ds.masks.to(dev) if ds.masks is not None else None
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("evaluating", total=len(explainers) * (1 + len(mets)))
        for ex in explainers:
            progress.update(task, description=f"{ex.name}: explaining")
            a = ex(net, x, t)
            progress.advance(task)
            for m in mets:
                progress.update(task, description=f"{ex.name}: {m.name}")
                mm = evaluate.mask_for(m, mask, extra_masks)
                scores = m(net, x, t, a, mask=mm, explainer=ex).cpu().tolist()
                settings = json.dumps({"method": ex.hparams, "metric": m.hparams}, sort_keys=True, default=str)
                for i, v in enumerate(scores):
                    rows.append(
                        (
                            ds.ids[i],
                            int(ds.y[i]),
                            int(t[i]),
                            ex.name,
                            m.name,
                            float(v),
                            m.direction,
                            m.category,
                            settings,
                        )
                    )
                progress.advance(task)
    df = pd.DataFrame(
        rows, columns=["image_id", "label", "target", "method", "metric", "value", "direction", "category", "settings"]
    )
    write_parquet(out, df)
    return Path(out), len(df)
