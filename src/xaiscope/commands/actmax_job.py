"""The ``xaiscope actmax`` job: activation maximisation for one class (or layer channel).

Writes into ``out`` (``NAME`` = ``class_<K>`` or ``<layer>_channel_<c>``):

- ``NAME.npy``: the image ``[C, H, W]`` in the model's input scale;
- ``NAME.png``: the image; ``NAME_trajectory.png``: the objective per step;
- ``NAME.json``: the objective (and class probability) trajectory, start and final
  values, every setting, and the pass count (``steps + 1``).

The input shape and valid range come from the sidecar of a model trained by
``xaiscope train`` (``input_size``; raw pixels in [0, 1] mapped through its
normalisation) unless ``--shape`` / ``--range`` are given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from xaiscope import models
from xaiscope.analyses.actmax import visualize
from xaiscope.errors import ConfigError
from xaiscope.io import atomic_path, ensure_dir, safe_name, write_json
from xaiscope.run.inputs import model_seed, resolve_device


def parse_ints(text: str, name: str, n: int) -> tuple[int, ...]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{name} must be {n} comma-separated integers, got {text!r}.") from None
    if len(vals) != n or any(v < 1 for v in vals):
        raise ConfigError(f"{name} must be {n} comma-separated positive integers, got {text!r}.")
    return vals


def parse_range(text: str) -> tuple[float, float]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--range must be LOW,HIGH (two numbers), got {text!r}.") from None
    if not lo < hi:
        raise ConfigError(f"--range must have LOW < HIGH, got {text!r}.")
    return lo, hi


def _figures(image: torch.Tensor, objective: list[float], title: str, base: Path) -> None:
    import matplotlib.pyplot as plt

    from xaiscope.plotting import display_image, save_figure

    fig, ax = plt.subplots(figsize=(2.6, 2.6))
    img = display_image(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    save_figure(fig, base.with_suffix(".png"))
    fig, ax = plt.subplots(figsize=(4, 2.6))
    ax.plot(range(len(objective)), objective)
    ax.set_xlabel("step")
    ax.set_ylabel("objective")
    ax.set_title(title, fontsize=8)
    save_figure(fig, base.parent / f"{base.name}_trajectory.png")


def run_actmax(
    *,
    model: str,
    target: int | None,
    out: Path,
    shape: str | None = None,
    clip_range: str | None = None,
    weights: str | None = None,
    num_classes: int | None = None,
    layer: str | None = None,
    channel: int = 0,
    steps: int = 200,
    lr: float = 0.05,
    l2_decay: float = 0.01,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    norm_clip_pct: float = 0.0,
    contrib_clip_pct: float = 0.0,
    seed: int = 0,
    output: str = "logit",
    device: str = "cpu",
    trust_model: bool = False,
) -> dict:
    """Run :func:`~xaiscope.analyses.actmax.visualize` for a model spec and write the results."""
    info = models.read_sidecar(model)
    if shape is not None:
        chw = parse_ints(shape, "--shape", 3)
    elif info is not None and info.get("input_size"):
        chw = tuple(int(v) for v in info["input_size"])
    else:
        raise ConfigError(f"The model {model} has no sidecar with its input size; give --shape C,H,W.")
    if clip_range is not None:
        lo, hi = parse_range(clip_range)
    elif info is not None and info.get("normalisation"):
        mean = np.asarray(info["normalisation"]["mean"], dtype=float)
        std = np.asarray(info["normalisation"]["std"], dtype=float)
        lo, hi = ((0.0 - mean) / std).tolist(), ((1.0 - mean) / std).tolist()
    else:
        lo, hi = 0.0, 1.0
    if layer is None and (target is None or target < 0):
        raise ConfigError(f"--class must be a class index >= 0, got {target}.")
    net = models.load(
        model,
        weights,
        num_classes=num_classes or 2,
        in_channels=chw[0],
        trust_model=trust_model,
        seed=model_seed(seed, model),
    )
    dev = resolve_device(device)
    net = net.to(dev)
    try:
        with torch.no_grad():
            n_out = models.forward(net, torch.zeros((1, *chw), device=dev)).shape[1]
    except RuntimeError as e:
        raise ConfigError(
            f"The model {model} cannot process inputs of shape {list(chw)}: {str(e).splitlines()[0]}"
        ) from None
    if layer is None and target >= n_out:
        raise ConfigError(
            f"--class {target} is out of range: the model {model} has {n_out} outputs (classes 0..{n_out - 1})."
        )
    res = visualize(
        net,
        target,
        shape=chw,
        steps=steps,
        lr=lr,
        l2_decay=l2_decay,
        blur_every=blur_every,
        blur_sigma=blur_sigma,
        clip_range=(lo, hi),
        norm_clip_pct=norm_clip_pct,
        contrib_clip_pct=contrib_clip_pct,
        seed=seed,
        layer=layer,
        channel=channel if layer is not None else None,
        output=output,
    )
    ensure_dir(out)
    name = f"class_{target}" if layer is None else f"{safe_name(layer)}_channel_{channel}"
    image = res.image.cpu()
    with atomic_path(out / f"{name}.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, image.numpy())
    title = f"class {target}" if layer is None else f"{layer} channel {channel}"
    _figures(image, res.objective, f"{title}: {res.start:.2f} -> {res.final:.2f}", out / name)
    record = {
        "model": model,
        "objective": res.objective,
        "probability": res.probability,
        "start": res.start,
        "final": res.final,
        "passes": res.passes,
        "params": res.params,
        "objective_name": (
            f"{output} of class {target}" if layer is None else f"mean activation of {layer} channel {channel}"
        ),
    }
    write_json(out / f"{name}.json", record)
    return record
