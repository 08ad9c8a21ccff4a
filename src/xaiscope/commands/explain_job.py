"""The ``xaiscope explain`` job: attributions per method, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiscope import explain
from xaiscope.io import ensure_dir, safe_name, write_npz
from xaiscope.run.inputs import ModelAndImages, build_explainers, open_model_and_images


def run_explain(
    what: ModelAndImages,
    *,
    methods: list[str],
    out: Path,
    params: dict[str, dict[str, Any]] | None = None,
    overlays: int = 8,
    console=None,
) -> list[Path]:
    """Compute and write ``out/<method>.npz`` (attributions, ids, targets, labels) and overlays.

    ``what.seed`` fixes the random initial weights of a zoo, torchvision or factory spec
    (:func:`~xaiscope.run.inputs.model_seed`)."""
    from rich.progress import Progress

    from xaiscope.errors import ConfigError
    from xaiscope.plotting import save_overlay

    params = params or {}
    methods = explain.expand(methods)
    unknown = [m for m in params if m not in methods]
    if unknown:
        raise ConfigError(f"--param names method {unknown[0]!r}, which is not in --methods.")
    explainers = build_explainers(methods, params, what.batch_size)
    net, ds, dev, batch_size, explainers, t = open_model_and_images(what, explainers, params)
    ensure_dir(out)
    written = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("explaining", total=len(explainers) * len(ds))
        for ex in explainers:
            parts = []
            for sl, xb, _ in ds.batches(batch_size):
                parts.append(ex(net, xb.to(dev), t[sl]).cpu())
                progress.advance(task, xb.shape[0])
            a = torch.cat(parts)
            path = out / f"{ex.name}.npz"
            write_npz(
                path,
                attributions=a.numpy(),
                ids=np.array(ds.ids),
                targets=t.cpu().numpy(),
                labels=ds.y.numpy(),
                hparams=np.array(repr(ex.hparams)),
            )
            written.append(path)
            maps = explain.postprocess(a[:overlays], pool="sum", normalise="max")
            for i in range(min(overlays, len(ds))):
                save_overlay(
                    ds.x[i],
                    maps[i],
                    out / "overlays" / ex.name / f"{safe_name(ds.ids[i])}.png",
                    title=f"{ex.name}: {ds.ids[i]}",
                )
    return written
