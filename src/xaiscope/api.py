"""Python entry points for notebooks: the counterparts of the CLI commands that take Python
objects (a model, tensors, a torch ``Dataset`` or ``DataLoader``) as well as paths, and
return tables.

>>> from xaiscope.api import evaluate_images
>>> df = evaluate_images(net, (x, y, masks), methods=["saliency", "gradcam"],
...                      metrics=["sparseness", "pointing_game"])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from xaiscope.errors import ConfigError


def evaluate_images(
    model: torch.nn.Module | str,
    data: Any,
    *,
    methods: Sequence[str],
    metrics: Sequence[str],
    params: dict[str, dict[str, Any]] | None = None,
    target: str | int = "true",
    batch_size: int | str = 64,
    device: str = "cpu",
    images_per_step: int = 256,
    normalise=None,
    classes: Sequence[str] | None = None,
    workers: int = 0,
    on_bad_image: str = "stop",
    weights: str | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    console=None,
):
    """Score ``methods`` with ``metrics`` on every image of ``data``; the tidy results as a
    pandas DataFrame (one row per image, method and metric: the columns of ``xaiscope
    evaluate``).

    Parameters
    ----------
    model : a ``torch.nn.Module`` (used as it is, moved to ``device``) or a model spec as on
        the command line (``small_cnn``, ``timm:NAME``, a TorchScript file ...).
    data : a folder or file path (image folder, ``.h5``, ``.zarr``, ``.npz``, MedMNIST), a
        :class:`~xaiscope.data.Dataset`, a torch ``Dataset`` or ``DataLoader`` yielding
        ``(x, y)``, ``(x, y, mask)`` or dicts with those keys, or a tuple ``(x, y)`` /
        ``(x, y, masks)`` of tensors. Images stream in batches of ``images_per_step``.
    params : settings per method or metric name, e.g. ``{"deletion": {"steps": 10}}``.
    target : ``"true"``, ``"pred"`` or a class index.
    normalise, classes, workers, on_bad_image : how ``data`` is read
        (:func:`xaiscope.data.open_source`).
    out : a folder to write ``results.parquet`` and ``manifest.json`` into.
    """
    from xaiscope import data as xdata
    from xaiscope.allocator import keep_heap
    from xaiscope.commands.evaluate_job import check_masks, prepare_evaluation, score_source
    from xaiscope.io import ensure_dir, write_json, write_parquet
    from xaiscope.run.inputs import (
        applicable_explainers,
        check_model_fits,
        open_model_for,
        resolve_device,
        settle_batch_size,
    )

    keep_heap()  # see xaiscope.allocator: perturbation loops ran 1.5x slower without it

    params = params or {}
    explainers, mets = prepare_evaluation(list(methods), list(metrics), params, batch_size)
    src = xdata.open_source(data, normalise=normalise, classes=classes, workers=workers, on_bad_image=on_bad_image)
    if isinstance(model, str):
        net, dev = open_model_for(model, src, weights=weights, device=device, seed=seed)
    elif isinstance(model, torch.nn.Module):
        if weights is not None:
            raise ConfigError("weights= applies to a model spec; load them into the module you pass instead.")
        dev = resolve_device(device)
        net = model.to(dev).eval()
        check_model_fits(net, src, dev)
    else:
        raise ConfigError(f"model must be a torch.nn.Module or a model spec string, got {type(model).__name__}.")
    bs, objs = settle_batch_size(batch_size, net, src, dev, explainers + mets, params)
    explainers, mets = objs[: len(explainers)], check_masks(objs[len(explainers) :], list(metrics), src, console)
    explainers = applicable_explainers(explainers, list(methods), net, console)
    df = score_source(
        net, src, dev, explainers, mets, target=target, batch_size=bs, images_per_step=images_per_step, console=console
    )
    if out is not None:
        folder = ensure_dir(Path(out))
        write_parquet(folder / "results.parquet", df)
        manifest = {
            "data": src.source,
            "images": len(src),
            "skipped": [{"image_id": k, "reason": v} for k, v in sorted(src.skipped.items())],
            "methods": [e.name for e in explainers],
            "metrics": [m.name for m in mets],
            "rows": len(df),
        }
        write_json(folder / "manifest.json", json.loads(json.dumps(manifest, default=str)))
    return df
