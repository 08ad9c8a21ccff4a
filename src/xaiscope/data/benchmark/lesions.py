"""Lesions: star-shaped blobs given by a radius profile ``r(theta)``, placed on tissue.

One mechanism draws both classes. A lesion is the set ``{p : |p - c| < A^(1/2) g(theta)}``
where ``g`` is a radius profile of unit area (``(1/2) integral g^2 dtheta = 1``) sampled
at ``T`` angles, ``A`` the lesion's area in pixels and ``theta`` the angle of ``p - c``.

- regular (class 0 under the ``shape`` rule): an ellipse, aspect ratio ``U(1, 1.6)``,
  random orientation; ``g(t) = ab / sqrt((b cos t')^2 + (a sin t')^2)``, ``ab = 1/pi``.
- irregular (class 1): ``g = (1 + sum_{k=3..6} a_k cos(k t + phi_k))`` scaled to unit
  area, amplitudes ``a_k ~ U(0, 1)`` rescaled so ``sum a_k = irregularity``.

Both classes draw the area, the count and the intensity from the same distributions,
so only the outline carries the label. The soft mask is
``m = smoothstep(clip((r(theta) - d) / edge, 0, 1))``: 1 in the core, a ramp of
``edge`` pixels inside the outline and exactly 0 outside, so the ground-truth mask
``m > 0`` holds exactly the pixels a lesion changes.
"""

from __future__ import annotations

import numpy as np

T = 64  # angles per radius profile


def ellipse_profiles(n: int, rng: np.random.Generator, *, max_aspect: float = 1.6) -> np.ndarray:
    """``[n, T]`` unit-area ellipse radius profiles with random aspect ratio and orientation."""
    aspect = rng.uniform(1.0, max_aspect, size=(n, 1))
    phase = rng.uniform(0, np.pi, size=(n, 1))
    a = np.sqrt(aspect / np.pi)
    b = np.sqrt(1 / (np.pi * aspect))
    t = np.linspace(0, 2 * np.pi, T, endpoint=False)[None, :] - phase
    return unit_area(a * b / np.sqrt((b * np.cos(t)) ** 2 + (a * np.sin(t)) ** 2))


def irregular_profiles(
    n: int, rng: np.random.Generator, *, irregularity: float = 0.6, harmonics: tuple[int, int] = (3, 6)
) -> np.ndarray:
    """``[n, T]`` unit-area noisy radius profiles (sum of harmonics ``k`` in ``harmonics``)."""
    ks = np.arange(harmonics[0], harmonics[1] + 1)
    amp = rng.uniform(0, 1, size=(n, ks.size))
    amp *= irregularity / amp.sum(axis=1, keepdims=True)
    phi = rng.uniform(0, 2 * np.pi, size=(n, ks.size))
    t = np.linspace(0, 2 * np.pi, T, endpoint=False)
    g = 1 + (amp[:, :, None] * np.cos(ks[None, :, None] * t[None, None, :] + phi[:, :, None])).sum(axis=1)
    return unit_area(g)


def unit_area(g: np.ndarray) -> np.ndarray:
    """Scale radius profiles ``[n, T]`` so the enclosed area ``pi * mean(g^2)`` is 1."""
    return (g / np.sqrt(np.pi * (g**2).mean(axis=1, keepdims=True))).astype(np.float32)


def profiles(kind: np.ndarray, rng: np.random.Generator, *, irregularity: float = 0.6) -> np.ndarray:
    """Unit-area profiles ``[n, T]``: ellipses where ``kind == 0``, irregular where ``kind == 1``.

    Both kinds are drawn for every lesion (so the random stream does not depend on the
    labels) and the one asked for is kept.
    """
    kind = np.asarray(kind)
    ell = ellipse_profiles(kind.size, rng)
    irr = irregular_profiles(kind.size, rng, irregularity=irregularity)
    return np.where(kind.reshape(-1, 1) == 1, irr, ell).reshape(*kind.shape, T)


def place(
    dist: np.ndarray,
    radius: np.ndarray,
    present: np.ndarray,
    rng: np.random.Generator,
    *,
    gap: float = 2.0,
    forbid: np.ndarray | None = None,
    candidates: int = 48,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose lesion centres so every lesion lies on tissue and none overlap.

    Parameters
    ----------
    dist : ``[n, H, W]`` distance to the nearest non-foreground pixel (see backgrounds).
    radius : ``[n, K]`` largest radius of each lesion in pixels.
    present : ``[n, K]`` bool, which lesion slots are used.
    gap : least free distance between two lesions, in pixels.
    forbid : ``[n, H, W]`` bool or None, pixels no lesion may touch (a confounder zone).
    candidates : pixels tried per lesion before falling back to a scan of all pixels.

    Returns
    -------
    centres ``[n, K, 2]`` (y, x) float32 and ``ok`` ``[n]`` bool (False where a lesion did
    not fit; such images must be redrawn). A centre is a uniformly drawn pixel where
    ``dist >= R + 1`` and far enough from earlier lesions, plus a sub-pixel offset in
    ``[-0.5, 0.5)``: the first fitting one of ``candidates`` uniform pixels, or, when none
    fits, a uniform draw among all fitting pixels (both are uniform over fitting pixels).
    """
    n, h, w = dist.shape
    k = radius.shape[1]
    room = dist.reshape(n, -1).copy()
    if forbid is not None and forbid.any():
        from scipy import ndimage

        for i in np.flatnonzero(forbid.reshape(n, -1).any(axis=1)):
            room[i] = np.minimum(room[i], ndimage.distance_transform_edt(~forbid[i]).astype(np.float32).ravel())
    centres = np.zeros((n, k, 2), dtype=np.float32)
    ok = np.ones(n, dtype=bool)
    offsets = rng.uniform(-0.5, 0.5, size=(n, k, 2)).astype(np.float32)
    rows = np.arange(n)[:, None]

    def fits(flat: np.ndarray, j: int, sel: np.ndarray) -> np.ndarray:
        """Which flat pixel indices ``[m, c]`` of images ``sel`` can take lesion ``j``."""
        r = radius[sel, j][:, None]
        good = room[sel[:, None], flat] >= r + 1.0
        py, px = (flat // w).astype(np.float32), (flat % w).astype(np.float32)
        for i in range(j):
            d = np.sqrt((py - centres[sel, i, 0, None]) ** 2 + (px - centres[sel, i, 1, None]) ** 2)
            good &= (d >= radius[sel, i, None] + r + gap + 1.0) | ~present[sel, i, None]
        return good

    for j in range(k):
        cand = rng.integers(0, h * w, size=(n, candidates))
        good = fits(cand, j, np.arange(n))
        first = good.argmax(axis=1)
        found = good[np.arange(n), first]
        best = cand[np.arange(n), first]
        miss = np.flatnonzero(~found & present[:, j])
        if miss.size:  # scan every pixel of the images where no candidate fitted
            allpix = np.broadcast_to(np.arange(h * w), (miss.size, h * w))
            score = rng.random((miss.size, h * w), dtype=np.float32)
            score[~fits(allpix, j, miss)] = -1.0
            pick = score.argmax(axis=1)
            best[miss] = pick
            found[miss] = score[np.arange(miss.size), pick] >= 0
        ok &= found | ~present[:, j]
        centres[:, j, 0] = best // w + offsets[:, j, 0]
        centres[:, j, 1] = best % w + offsets[:, j, 1]
    del rows
    return centres, ok


def render(
    centres: np.ndarray,
    prof: np.ndarray,
    scale: np.ndarray,
    present: np.ndarray,
    size: int,
    *,
    edge: float = 1.5,
    values: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks of the lesions of each image.

    Parameters
    ----------
    centres : ``[n, K, 2]``; prof : ``[n, K, T]`` unit-area profiles; scale : ``[n, K]``
        square root of each lesion's area; present : ``[n, K]`` bool; size : image side.
    edge : width of the soft ramp inside the outline, pixels.
    values : ``[n, K]`` or None; when given, also return ``sum_k m_k v_k``.

    Returns
    -------
    ``m`` ``[n, H, W]`` float32 in [0, 1] (lesions do not overlap, so the sum is the
    union) and ``mv`` ``[n, H, W]`` (``sum_k m_k v_k``, zeros without ``values``).
    """
    n, k, t = prof.shape
    half = int(np.ceil(float((prof.max(axis=-1) * scale * present).max(initial=0.0)))) + 2
    w = 2 * half + 1
    o = half + 1  # padding: a window never reaches further than ``half`` pixels past the image
    pad = np.zeros((n, size + 2 * o, size + 2 * o), dtype=np.float32)
    pad_v = np.zeros_like(pad) if values is not None else None
    rows = np.arange(n)[:, None, None]
    win = np.arange(w)
    for j in range(k):
        # window of w x w pixels around the centre, in image coordinates
        top = np.floor(centres[:, j]).astype(np.int64) - half  # [n, 2]
        py = (top[:, 0, None] + win[None, :]).astype(np.float32)  # [n, w]
        px = (top[:, 1, None] + win[None, :]).astype(np.float32)
        dy = py[:, :, None] - centres[:, j, 0, None, None]
        dx = px[:, None, :] - centres[:, j, 1, None, None]
        d = np.sqrt(dy**2 + dx**2)
        u = (np.arctan2(dy, dx) % np.float32(2 * np.pi)) * np.float32(t / (2 * np.pi))
        fl = np.floor(u)
        i0 = fl.astype(np.int64) % t
        frac = u - fl
        p = prof[:, j]
        r = ((1 - frac) * p[rows, i0] + frac * p[rows, (i0 + 1) % t]) * scale[:, j, None, None]
        s = np.clip((r - d) / np.float32(edge), 0.0, 1.0)
        s = s * s * (3 - 2 * s) * present[:, j, None, None]
        iy = top[:, 0, None, None] + o + win[None, :, None]
        ix = top[:, 1, None, None] + o + win[None, None, :]
        pad[rows, iy, ix] += s
        if values is not None:
            pad_v[rows, iy, ix] += s * values[:, j, None, None]
    m = np.ascontiguousarray(pad[:, o : o + size, o : o + size])
    mv = np.zeros_like(m) if pad_v is None else np.ascontiguousarray(pad_v[:, o : o + size, o : o + size])
    return m, mv


def max_radius(prof: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Largest radius ``[n, K]`` in pixels (profile maximum times ``sqrt(area)``, plus a 1% margin for interpolation)."""
    return prof.max(axis=-1) * scale * 1.01
