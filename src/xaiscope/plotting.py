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
    ax,
    image: torch.Tensor,
    heat: torch.Tensor,
    *,
    signed: bool = False,
    alpha: float = 0.6,
    title: str = "",
    mask: torch.Tensor | None = None,
    origin: str = "upper",
) -> None:
    """Draw ``heat`` ``[H, W]`` over ``image`` ``[C, H, W]`` on ``ax``; ``mask`` ``[H, W]`` as an outline."""
    img = display_image(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, origin=origin)
    h = heat.detach().cpu().float().numpy()
    finite = h[np.isfinite(h)]
    if signed:
        v = float(np.abs(finite).max()) if finite.size else 0.0
        ax.imshow(h, cmap="bwr", vmin=-(v or 1.0), vmax=v or 1.0, alpha=alpha, origin=origin)
    else:  # from 0 (or the lowest value, for a map with negative values) to the highest
        lo = min(0.0, float(finite.min())) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 0.0
        ax.imshow(h, cmap="inferno", vmin=lo, vmax=hi if hi > lo else lo + 1.0, alpha=alpha, origin=origin)
    if mask is not None:
        m = mask.detach().cpu().numpy().astype(float)
        if 0 < m.sum() < m.size:
            ax.contour(m, levels=[0.5], colors="cyan", linewidths=0.8, origin=origin)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def save_overlay(
    image: torch.Tensor, heat: torch.Tensor, path: str | Path, title: str = "", mask: torch.Tensor | None = None
) -> Path:
    """A single overlay PNG; a volume (``image`` ``[C, D, H, W]``, ``heat`` ``[D, H, W]``) gets
    its four views side by side (:func:`volume_views`)."""
    if heat.dim() == 3:
        return save_volume_overlay(image, heat, path, title, mask)
    fig, ax = plt.subplots(figsize=(2.4, 2.4))
    overlay(ax, image, heat, title=title, mask=mask)
    return save_figure(fig, path)


def volume_views(
    image: torch.Tensor, heat: torch.Tensor, mask: torch.Tensor | None = None, at: tuple[int, int, int] | None = None
) -> list[tuple]:
    """The views of a volume map: ``(name, image [C, h, w], heat [h, w], mask [h, w] or None)``
    for the axial, coronal and sagittal slices through the map's maximum (or through voxel
    ``at``) and the maximum-intensity projection along D (of the image and of the map).

    Axes are the stored ``(D, H, W)`` = (inferior->superior, posterior->anterior,
    left->right) of :mod:`xaiscope.data.volumes`; slices are drawn with the origin at the
    bottom left, so superior and anterior point up."""
    h = heat.detach().cpu().float()
    finite = torch.nan_to_num(h, nan=float("-inf"))
    if at is None:
        at = tuple(int(v) for v in np.unravel_index(int(finite.argmax()), tuple(h.shape)))
    d, r, c = at
    m = None if mask is None else mask.detach().cpu().bool()

    def cut(index):
        return image[(slice(None), *index)], h[index], None if m is None else m[index]

    views = [
        (f"axial d={d}", *cut((d, slice(None), slice(None)))),
        (f"coronal h={r}", *cut((slice(None), r, slice(None)))),
        (f"sagittal w={c}", *cut((slice(None), slice(None), c))),
    ]
    mip_mask = None if m is None else m.any(dim=0)
    views.append(("MIP along d", image.amax(dim=1), h.amax(dim=0), mip_mask))
    return views


def save_volume_overlay(
    image: torch.Tensor, heat: torch.Tensor, path: str | Path, title: str = "", mask: torch.Tensor | None = None
) -> Path:
    """One PNG with the four :func:`volume_views` of a volume map, map over image, mask outlined."""
    views = volume_views(image, heat, mask)
    fig, axes = plt.subplots(1, len(views), figsize=(2.2 * len(views), 2.4))
    for ax, (name, img, hm, mm) in zip(axes, views):
        overlay(ax, img, hm, title=name, mask=mm, origin="lower")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def save_volume_map_and_sd(
    image: torch.Tensor,
    heat: torch.Tensor,
    sd: torch.Tensor,
    path: str | Path,
    title: str,
    sd_title: str = "per-voxel SD",
    signed: bool = False,
) -> Path:
    """A volume's map over its image (top row) and a per-voxel SD map (bottom row), both in
    the four :func:`volume_views` through the map's maximum."""
    h = heat.detach().cpu().float()
    at = tuple(int(v) for v in np.unravel_index(int(torch.nan_to_num(h, nan=float("-inf")).argmax()), tuple(h.shape)))
    views, sd_views = volume_views(image, h, at=at), volume_views(image, sd, at=at)
    fig, axes = plt.subplots(2, len(views), figsize=(2.2 * len(views), 4.8))
    for col, ((name, img, hm, _), (_, _, sdm, _)) in enumerate(zip(views, sd_views)):
        overlay(axes[0, col], img, hm, signed=signed, title=name, origin="lower")
        im = axes[1, col].imshow(sdm.numpy(), cmap="viridis", origin="lower")
        axes[1, col].set_axis_off()
    axes[1, 0].set_title(sd_title, fontsize=8)
    fig.colorbar(im, ax=axes[1, -1], fraction=0.046)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
