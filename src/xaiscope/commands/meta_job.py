"""``xaiscope meta-evaluate``: how reliable each metric is on this model and data.

Runs the MetaQuantus protocol (:mod:`xaiscope.analyses.meta`) for every metric with the
given methods and writes, into the output folder:

- ``meta.parquet``: per metric and space (model, input): ``IAC_NR, IAC_AR, IEC_NR,
  IEC_AR, MC, MC_std``, the metric's direction and category;
- ``meta_detail.parquet``: per metric, test and iteration: ``iac, iec, kept``;
- ``meta.json``: the settings (tests and levels, iterations, perturbations, seed,
  methods, images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from xaiscope import evaluate
from xaiscope.analyses.meta import PAPER_TESTS, meta_evaluate
from xaiscope.commands.evaluate_job import build_metrics
from xaiscope.errors import ConfigError
from xaiscope.io import ensure_dir, write_json, write_parquet
from xaiscope.run.context import stratified
from xaiscope.run.inputs import ModelAndImages, build_explainers, open_model_and_images, provisional_batch_size


def meta_tables(
    model: torch.nn.Module,
    ds,
    explainers: list,
    metrics: list,
    *,
    iterations: int = 3,
    perturbations: int = 5,
    seed: int = 0,
    batch_size: int = 64,
    max_images: int | None = None,
    device: torch.device | None = None,
    console=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(summary, detail)`` of every metric (see the module docstring), on at most
    ``max_images`` images taken round-robin over classes."""
    if len(explainers) < 2:
        raise ConfigError("meta-evaluation compares methods: give at least two in --methods.")
    if max_images is not None and max_images < len(ds):
        ds = ds.subset(stratified(ds.y, max_images))
    dev = device or torch.device("cpu")
    x = ds.x.to(dev)
    summaries, details = [], []
    for m in metrics:
        if console is not None:
            console.print(f"meta-evaluating {m.name}")
        mask = evaluate.mask_for(m, ds.masks, ds.extra_masks, source=str(ds.source))
        if "mask" in m.needs and mask is None:
            raise ConfigError(f"Metric {m.name} is a localisation metric and needs masks, but {ds.source} has none.")
        mask = mask.to(dev) if mask is not None else None
        summary, detail = meta_evaluate(
            m,
            model,
            x,
            explainers,
            mask=mask,
            iterations=iterations,
            perturbations=perturbations,
            seed=seed,
            batch_size=batch_size,
        )
        label = {"metric": m.name, "direction": m.direction, "category": m.category}
        summaries.append(summary.assign(**label))
        details.append(detail.assign(metric=m.name))
    summary = pd.concat(summaries, ignore_index=True)
    summary = summary[["metric", *[c for c in summary.columns if c != "metric"]]]
    detail = pd.concat(details, ignore_index=True)
    return summary, detail[["metric", *[c for c in detail.columns if c != "metric"]]]


def write_meta(
    out: Path,
    model: torch.nn.Module,
    model_name: str,
    ds,
    explainers: list,
    metrics: list,
    *,
    iterations: int = 3,
    perturbations: int = 5,
    seed: int = 0,
    batch_size: int = 64,
    max_images: int | None = None,
    device: torch.device | None = None,
    console=None,
) -> Path:
    """Meta-evaluate (:func:`meta_tables`) and write ``meta.parquet``, ``meta_detail.parquet``
    and ``meta.json`` (the tests and settings) into ``out``; return the path of ``meta.parquet``."""
    summary, detail = meta_tables(
        model,
        ds,
        explainers,
        metrics,
        iterations=iterations,
        perturbations=perturbations,
        seed=seed,
        batch_size=batch_size,
        max_images=max_images,
        device=device,
        console=console,
    )
    out = ensure_dir(out)
    write_parquet(out / "meta.parquet", summary)
    write_parquet(out / "meta_detail.parquet", detail)
    settings = {
        "tests": [{"space": t.space, "kind": t.kind, "level": t.level} for t in PAPER_TESTS],
        "iterations": iterations,
        "perturbations": perturbations,
        "seed": seed,
        "methods": {ex.name: ex.hparams for ex in explainers},
        "metrics": {m.name: m.hparams for m in metrics},
        "images": min(len(ds), max_images or len(ds)),
        "data": str(ds.source),
        "model": model_name,
    }
    write_json(out / "meta.json", settings)
    return out / "meta.parquet"


def run_meta(
    what: ModelAndImages,
    *,
    methods: list[str],
    metrics: list[str],
    out: Path,
    params: dict[str, dict[str, Any]] | None = None,
    iterations: int = 3,
    perturbations: int = 5,
    max_images: int | None = None,
    console=None,
) -> Path:
    """Meta-evaluate ``metrics`` with ``methods`` on ``what``; write into the folder ``out``."""
    from xaiscope import explain

    params = params or {}
    methods = explain.expand(methods)
    names, _ = evaluate.select(list(metrics), masks=True)
    unknown = [k for k in params if k not in methods and k not in names]
    if unknown:
        raise ConfigError(f"--param names {unknown[0]!r}, which is neither in --methods nor in --metrics.")
    mets = build_metrics(names, params, provisional_batch_size(what.batch_size))
    explainers = build_explainers(methods, params, what.batch_size)
    ensure_dir(out)  # an unwritable output fails now, not after all the work
    net, ds, dev, batch_size, objs, _ = open_model_and_images(what, explainers + mets, params)
    explainers, mets = objs[: len(explainers)], objs[len(explainers) :]
    if ds.masks is None:
        kept, _ = evaluate.select(list(metrics), masks=False)
        mets = [m for m in mets if m.name in kept]
    return write_meta(
        out,
        net,
        what.model,
        ds,
        explainers,
        mets,
        iterations=iterations,
        perturbations=perturbations,
        seed=what.seed,
        batch_size=batch_size,
        max_images=max_images,
        device=dev,
        console=console,
    )
