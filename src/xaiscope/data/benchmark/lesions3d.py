"""3D lesions: star-shaped blobs given by a radius function ``r(u)`` of the direction ``u``.

The 3D counterpart of :mod:`.lesions`. A lesion is the set ``{p : |p - c| < rho g(u)}``
(lengths in mm) where ``u = (p - c) / |p - c|``, ``rho`` is the radius of the sphere of
equal volume and ``g`` a radius function of unit volume ratio: ``mean_u g(u)^3 = 1`` over
the sphere, since the volume of a star-shaped body is ``(1/3) integral g^3 dOmega``
(``4 pi rho^3 / 3`` here). The mean is taken over ``S`` Fibonacci-sphere directions.

- ellipsoid (class 0 of the ``shape`` rule): semi-axes ``(1, a_2, a_3)`` with
  ``a_i ~ U(1, max_aspect)``, random orientation ``R`` (a uniform unit quaternion);
  ``g(u) = 1 / sqrt(sum_i (R^T u)_i^2 / a_i^2)``.
- lobulated (class 1): ``g(u) = 1 + sum_{j=1..J} a_j cos(k_j u.d_j + phi_j)``, plane
  waves on the sphere with random directions ``d_j``, frequencies ``k_j ~ U(3, 5)``,
  phases ``phi_j ~ U(0, 2 pi)`` and amplitudes ``a_j ~ U(0, 1)`` rescaled so
  ``sum_j a_j = irregularity`` (``g >= 1 - irregularity > 0``).

Both kinds are drawn for every lesion (the random stream does not depend on the labels)
and the one asked for is kept. The soft mask has a ramp in *normalised* radius::

    m = smoothstep(clip((1 - |p - c| / r(u)) / edge, 0, 1))

so ``integral m dV = 3 V integral_0^1 h(t) t^2 dt`` (``h`` the ramp) is the same multiple of
the volume ``V`` for every shape: equal-volume lesions of both classes have equal masked
volume *and* equal summed contrast. ``m`` is 1 at the centre and exactly 0 outside the
outline, so the ground-truth mask ``m > 0`` holds exactly the voxels a lesion changes.
"""

from __future__ import annotations

import numpy as np

S = 2048  # directions of the Fibonacci sphere used for the volume normalisation and the maximum radius
J = 4  # plane waves per lobulated lesion
FREQ = (3.0, 5.0)  # range of their frequencies k
CHUNK = 32  # volumes rendered at a time (bounds the memory of the windows)


def sphere(n: int = S) -> np.ndarray:
    """``[n, 3]`` unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def _rotations(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """``[*shape, 3, 3]`` uniformly random rotations (from unit quaternions ``(w, x, y, z)``)."""
    q = rng.standard_normal((*shape, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def shapes(
    kind: np.ndarray, rng: np.random.Generator, *, irregularity: float = 0.9, max_aspect: float = 1.6
) -> dict[str, np.ndarray]:
    """Shape parameters of lesions ``kind`` ``[n, K]`` (0 ellipsoid, 1 lobulated).

    Returns ``kind``, ``rot`` ``[n, K, 3, 3]``, ``axes`` ``[n, K, 3]`` (ellipsoids), ``dirs``
    ``[n, K, J, 3]``, ``freq``, ``phase``, ``amp`` ``[n, K, J]`` (waves), ``norm`` ``[n, K]`` (the
    factor giving ``mean g^3 = 1``) and ``gmax`` ``[n, K]``: the largest ``g`` of *either* kind
    drawn for the slot, so anything bounded by it (placement) is distributed alike in both classes.
    """
    kind = np.asarray(kind)
    shape = kind.shape
    rot = _rotations(shape, rng)
    axes = np.concatenate([np.ones((*shape, 1)), rng.uniform(1.0, max_aspect, size=(*shape, 2))], axis=-1)
    dirs = rng.standard_normal((*shape, J, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    freq = rng.uniform(*FREQ, size=(*shape, J))
    phase = rng.uniform(0, 2 * np.pi, size=(*shape, J))
    amp = rng.uniform(0, 1, size=(*shape, J))
    amp *= irregularity / amp.sum(axis=-1, keepdims=True)
    p = {"rot": rot, "axes": axes, "dirs": dirs, "freq": freq, "phase": phase, "amp": amp}
    n_ell, n_irr, gmax = (np.zeros(shape) for _ in range(3))
    u = sphere().astype(np.float32)
    for lo in range(0, shape[0], CHUNK):  # [CHUNK, K, S] at a time
        sl = slice(lo, lo + CHUNK)
        part = {key: val[sl] for key, val in p.items()}
        ell, irr = _ellipsoid(part, u), _waves(part, u)
        n_ell[sl] = np.cbrt((ell.astype(np.float64) ** 3).mean(axis=-1))
        n_irr[sl] = np.cbrt((irr.astype(np.float64) ** 3).mean(axis=-1))
        # 2% for directions between the samples
        gmax[sl] = np.maximum(ell.max(axis=-1) / n_ell[sl], irr.max(axis=-1) / n_irr[sl]) * 1.02
    return {**p, "kind": kind, "norm": np.where(kind == 1, n_irr, n_ell), "gmax": gmax}


def _ellipsoid(p: dict, u: np.ndarray) -> np.ndarray:
    """Unnormalised ellipsoid radius of each lesion ``[*lead]`` in directions ``u`` ``[*lead, M, 3]`` or ``[M, 3]``."""
    rot, inv2 = p["rot"].astype(np.float32), (1.0 / p["axes"] ** 2).astype(np.float32)
    q = 0.0
    for i in range(3):  # (R^T u)_i = sum_c R_ci u_c
        local = sum(rot[..., c, i, None] * u[..., c] for c in range(3))
        q = q + local**2 * inv2[..., i, None]
    return 1.0 / np.sqrt(q)


def _waves(p: dict, u: np.ndarray) -> np.ndarray:
    """Unnormalised lobulated radius ``1 + sum_j a_j cos(k_j u.d_j + phi_j)`` in directions ``u``."""
    d, k, phi, a = (p[key].astype(np.float32) for key in ("dirs", "freq", "phase", "amp"))
    g = 1.0
    for j in range(J):
        proj = sum(d[..., j, c, None] * u[..., c] for c in range(3))
        g = g + a[..., j, None] * np.cos(k[..., j, None] * proj + phi[..., j, None])
    return g


def radius(p: dict, u: np.ndarray) -> np.ndarray:
    """Unit-volume radius ``g(u)`` of each lesion (``p`` indexed to ``[m]``) in directions ``u`` ``[m, M, 3]``."""
    g = np.where(p["kind"][..., None] == 1, _waves(p, u), _ellipsoid(p, u))
    return g / p["norm"][..., None].astype(np.float32)


def place(
    room: np.ndarray,
    points: np.ndarray,
    bound: np.ndarray,
    present: np.ndarray,
    spacing: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose lesion centres among candidate voxels so every lesion stays in room and none overlap.

    Parameters
    ----------
    room : ``[P]`` mm from each candidate voxel to the nearest voxel outside the allowed region.
    points : ``[P, 3]`` int, the candidate voxels ``(d, h, w)`` (the tissue where centres may lie).
    bound : ``[n, K]`` mm, an upper bound of each lesion's radius.
    present : ``[n, K]`` bool, which lesion slots are used.
    spacing : ``[3]`` voxel size in mm.

    Returns
    -------
    centres ``[n, K, 3]`` continuous voxel indices and ``ok`` ``[n]`` (False where a lesion
    did not fit). A centre is a voxel drawn uniformly among those that fit, plus an offset
    ``U(-1/2, 1/2)`` per axis. A voxel fits lesion ``k`` when ``room >= bound_k + s`` and lies
    at least ``bound_i + bound_k + 3 s`` from every earlier lesion ``i`` (``s`` the largest
    voxel side; the offsets move a centre by at most ``0.87 s``), so lesions stay inside the
    region and at least one voxel apart.
    """
    n, k = bound.shape
    s = float(spacing.max())
    mm = points.astype(np.float32) * spacing.astype(np.float32)  # [P, 3]
    centres = np.zeros((n, k, 3), dtype=np.float64)
    ok = np.ones(n, dtype=bool)
    offsets = rng.uniform(-0.5, 0.5, size=(n, k, 3))
    for j in range(k):
        good = room[None, :] >= (bound[:, j, None] + s)  # [n, P]
        for i in range(j):
            c = (centres[:, i] * spacing).astype(np.float32)  # [n, 3]
            d2 = ((mm[None, :, :] - c[:, None, :]) ** 2).sum(-1)
            reach = (bound[:, i] + bound[:, j] + 3 * s).astype(np.float32)
            good &= (d2 >= reach[:, None] ** 2) | ~present[:, i, None]
        score = rng.random(good.shape, dtype=np.float32)
        score[~good] = -1.0
        pick = score.argmax(axis=1)
        found = score[np.arange(n), pick] >= 0
        ok &= found | ~present[:, j]
        centres[:, j] = points[pick] + offsets[:, j]
    return centres, ok


def render(
    centres: np.ndarray,
    p: dict,
    rho: np.ndarray,
    present: np.ndarray,
    size: tuple[int, int, int],
    spacing: np.ndarray,
    *,
    edge: float = 0.15,
    values: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks ``m`` ``[n, D, H, W]`` float32 and ``sum_k m_k v_k`` (zeros without ``values``).

    ``centres`` ``[n, K, 3]`` continuous voxel indices, ``p`` the :func:`shapes` of the
    lesions, ``rho`` ``[n, K]`` equal-volume radii in mm, ``spacing`` ``[3]`` mm per voxel,
    ``edge`` the ramp's share of the radius. Lesions do not overlap, so the sum is the union.
    """
    n, k = rho.shape
    reach = float((p["gmax"] * rho * present).max(initial=0.0))
    half = np.ceil(reach / spacing).astype(np.int64) + 1  # [3] window half-widths, voxels
    win = [np.arange(2 * h + 1) for h in half]
    size_a = np.asarray(size)
    m_all = np.zeros((n, *size), dtype=np.float32)
    mv_all = np.zeros_like(m_all)
    for lo in range(0, n, CHUNK):
        sl = slice(lo, min(n, lo + CHUNK))
        c = centres[sl]
        pad = np.zeros((c.shape[0], *(size_a + 2 * half + 2)), dtype=np.float32)
        pad_v = np.zeros_like(pad)
        rows = np.arange(c.shape[0])[:, None, None, None]
        for j in range(k):
            top = np.floor(c[:, j]).astype(np.int64) - half  # [m, 3]
            grid = [(top[:, a, None] + win[a][None, :]) for a in range(3)]  # voxel indices per axis
            off = [((grid[a] - c[:, j, a, None]) * spacing[a]).astype(np.float32) for a in range(3)]
            vec = np.stack(
                np.broadcast_arrays(off[0][:, :, None, None], off[1][:, None, :, None], off[2][:, None, None, :]), -1
            )
            dist = np.sqrt((vec**2).sum(-1))
            u = vec / np.maximum(dist, 1e-6)[..., None]
            pj = {key: val[sl, j] for key, val in p.items()}
            shape = u.shape
            r = radius(pj, u.reshape(shape[0], -1, 3)).reshape(shape[:-1]) * rho[sl, j, None, None, None]
            t = np.clip((1 - dist / r) / np.float32(edge), 0.0, 1.0)
            s = (t * t * (3 - 2 * t) * present[sl, j, None, None, None]).astype(np.float32)
            idx = [grid[a] + half[a] + 1 for a in range(3)]
            iz, iy, ix = idx[0][:, :, None, None], idx[1][:, None, :, None], idx[2][:, None, None, :]
            pad[rows, iz, iy, ix] += s
            if values is not None:
                pad_v[rows, iz, iy, ix] += s * np.float32(values[sl, j])[:, None, None, None]
        inner = tuple(slice(h + 1, h + 1 + z) for h, z in zip(half, size))
        m_all[sl] = pad[(slice(None), *inner)]
        mv_all[sl] = pad_v[(slice(None), *inner)]
    return m_all, mv_all
