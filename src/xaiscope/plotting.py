"""Figures written as PNG files (matplotlib, Agg backend: no display needed).

A base-level utility like ``io``: the commands draw their PNGs with it and the report
embeds figures made with it, so neither layer imports the other for plotting.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from xaiscope.io import atomic_path  # noqa: E402


def display_image(x: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` -> ``[H, W]`` or ``[H, W, 3]`` in [0, 1] for display (min-max stretched)."""
    arr = x.detach().cpu().float().numpy()
    lo, hi = arr.min(), arr.max()
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return arr[0] if arr.shape[0] == 1 else arr[:3].transpose(1, 2, 0)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save and close ``fig`` atomically as PNG."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def overlay(
    ax, image: torch.Tensor, heat: torch.Tensor, *, signed: bool = False, alpha: float = 0.6, title: str = ""
) -> None:
    """Draw ``heat`` ``[H, W]`` over ``image`` ``[C, H, W]`` on ``ax``."""
    img = display_image(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    h = heat.detach().cpu().float().numpy()
    finite = h[np.isfinite(h)]
    if signed:
        v = float(np.abs(finite).max()) if finite.size else 0.0
        ax.imshow(h, cmap="bwr", vmin=-(v or 1.0), vmax=v or 1.0, alpha=alpha)
    else:  # from 0 (or the lowest value, for a map with negative values) to the highest
        lo = min(0.0, float(finite.min())) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 0.0
        ax.imshow(h, cmap="inferno", vmin=lo, vmax=hi if hi > lo else lo + 1.0, alpha=alpha)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def save_overlay(image: torch.Tensor, heat: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """A single overlay PNG."""
    fig, ax = plt.subplots(figsize=(2.4, 2.4))
    overlay(ax, image, heat, title=title)
    return save_figure(fig, path)
