"""The ``xaiscope explain`` job: attributions per method, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiscope import explain, models
from xaiscope.io import ensure_dir, safe_name, write_npz
from xaiscope.run.inputs import build_explainers, open_inputs, settle_batch_size


def choose_targets(
    model, x: torch.Tensor, y: torch.Tensor, target: str | int, batch_size: int, num_outputs: int
) -> torch.Tensor:
    """Targets: the true labels, the predicted labels, or one fixed class."""
    from xaiscope.errors import ConfigError

    if target == "true":
        return y
    if target == "pred":
        return models.forward(model, x, batch_size=batch_size).argmax(dim=1)
    k = int(target)
    if not 0 <= k < num_outputs:
        raise ConfigError(f"--target {k} is not a class of the model (it has {num_outputs} outputs).")
    return torch.full_like(y, k)


def run_explain(
    *,
    model: str,
    data: Path,
    methods: list[str],
    out: Path,
    weights: str | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    batch_size: int | str = 64,
    device: str = "cpu",
    target: str | int = "true",
    overlays: int = 8,
    trust_model: bool = False,
    seed: int = 0,
    console=None,
) -> list[Path]:
    """Compute and write ``out/<method>.npz`` (attributions, ids, targets, labels) and overlays.

    ``seed`` fixes the random initial weights of a zoo, torchvision or factory spec
    (:func:`~xaiscope.run.inputs.model_seed`)."""
    from rich.progress import Progress

    from xaiscope.errors import ConfigError
    from xaiscope.plotting import save_overlay

    params = params or {}
    methods = explain.expand(methods)
    unknown = [m for m in params if m not in methods]
    if unknown:
        raise ConfigError(f"--param names method {unknown[0]!r}, which is not in --methods.")
    explainers = build_explainers(methods, params, batch_size)
    net, ds, dev = open_inputs(model, data, weights=weights, device=device, trust_model=trust_model, seed=seed)
    batch_size, explainers = settle_batch_size(batch_size, net, ds, dev, explainers, params)
    ensure_dir(out)
    n_out = net(ds.x[:1].to(dev)).shape[1]
    x = ds.x.to(dev)
    t = choose_targets(net, x, ds.y.to(dev), target, batch_size, n_out)
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
