"""Synthetic annotators: seeded imperfect copies of the true lesion masks.

Annotator ``j`` (``j = 0, 1, ...``) draws in the style ``STYLES[j % 4]``, more strongly
for each further round of four (``level = 1 + j // 4``):

- ``dilated``: the true mask dilated by ``level`` to ``level + 1`` pixels (drawn per image);
  it always contains the true mask;
- ``eroded``: eroded by ``level`` pixels (lesions too thin to survive keep their central pixel);
- ``shifted``: moved by up to ``level + 1`` pixels in each direction (not both zero), no wrap;
- ``partial``: one half of the mask removed (the part above, below, left or right of its
  centre, drawn per image), as an annotator who missed part of the lesion.

Annotator ``j`` of split ``s`` draws from ``numpy.random.default_rng([seed, s, 1000 + j])``,
independently of the images, so adding annotators never changes an image or the truth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

STYLES = ("dilated", "eroded", "shifted", "partial")


def names(k: int) -> list[str]:
    """Folder names of ``k`` annotators: ``annotator_1_dilated``, ``annotator_2_eroded``, ..."""
    return [f"annotator_{j + 1}_{STYLES[j % len(STYLES)]}" for j in range(k)]


def _one(mask: np.ndarray, style: str, level: int, rng: np.random.Generator) -> np.ndarray:
    if not mask.any():
        return mask.copy()
    if style == "dilated":
        return ndimage.binary_dilation(mask, iterations=int(rng.integers(level, level + 2)))
    if style == "eroded":
        out = ndimage.binary_erosion(mask, iterations=level)
        labels, n = ndimage.label(mask)
        for k in range(1, n + 1):  # a lesion eroded away keeps its innermost pixel
            comp = labels == k
            if not (out & comp).any():
                dist = ndimage.distance_transform_edt(comp)
                out[np.unravel_index(np.argmax(dist), mask.shape)] = True
        return out
    if style == "shifted":
        while True:
            dy, dx = rng.integers(-(level + 1), level + 2, size=2)
            if dy or dx:
                break
        return ndimage.shift(mask.astype(np.uint8), (int(dy), int(dx)), order=0, cval=0) > 0
    # partial: drop the half on one side of the mask's centre
    yy, xx = np.nonzero(mask)
    side = int(rng.integers(4))
    grid_y, grid_x = np.indices(mask.shape)
    cy, cx = yy.mean(), xx.mean()
    drop = [grid_y < cy, grid_y > cy, grid_x < cx, grid_x > cx][side]
    out = mask & ~drop
    return out if out.any() else mask.copy()


def annotate(mask: np.ndarray, k: int, seed: int, split: int) -> np.ndarray:
    """Bool ``[n, k, H, W]``: ``k`` synthetic annotators' masks of the true masks ``[n, H, W]``."""
    out = np.zeros((mask.shape[0], k, *mask.shape[1:]), dtype=bool)
    for j in range(k):
        rng = np.random.default_rng([seed, split, 1000 + j])
        style, level = STYLES[j % len(STYLES)], 1 + j // len(STYLES)
        for i in range(mask.shape[0]):
            out[i, j] = _one(mask[i], style, level, rng)
    return out
