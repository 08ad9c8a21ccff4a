"""The 3D lesion benchmark: lesions of two shapes in the MNI152 T1 brain, exact masks.

Background: nilearn's MNI152 T1 template at 2 mm with its brain, grey- and white-matter
masks (files inside the nilearn wheel; nothing is downloaded), in the array convention of
:class:`~xaiscope.data.Dataset` volumes: axes ``(D, H, W)`` are the ``(k, j, i)`` axes of the
image in closest-canonical RAS orientation, ``affine`` maps ``(d, h, w, 1)`` to RAS mm.
The box around the brain (:data:`~.params.MNI_BOX`, 80 x 94 x 77 voxels of the 95 x 117 x 99;
cutting the empty margin doubles the share of the volume a lesion covers, which is what a
CNN with global average pooling learns from) is resampled to ``size`` voxels: new index
``v'`` of an axis of ``n`` voxels sampled at ``m`` points sits at old continuous index
``(v' + 1/2) n / m - 1/2`` (linear interpolation after a Gaussian pre-filter of SD
``(n/m - 1)/2`` old voxels against aliasing; masks thresholded at 1/2), so
``affine' = affine @ [[diag(n/m), a + (n/m - 1)/2], [0, 1]]`` with ``a`` the box's first voxel.
The brain's 1st and 99th intensity percentiles are mapped to 0.1 and 0.5 (outside: 0), which
leaves room above the brain for bright lesions.

Volume formation (per volume; ``t`` the template, ``m`` the soft lesion mask of
:mod:`.lesions3d`, ``v`` lesion intensities, ``B`` a smooth bias field, ``g, o`` gain and
offset, ``e`` Gaussian noise)::

    x = (t + alpha (sum_k m_k v_k - m t)) B g + o + e

and the background is the same without lesions (``alpha = 0``), so ``x`` and the background
differ exactly on the mask ``m > 0``. Then the confounder marker (when drawn) replaces its
cube: ``x = 0.95`` there. Lesion centres are voxels of the chosen tissue, and every lesion
lies inside the brain mask. Class 0 lesions are ellipsoids, class 1 lobulated; count,
volume, intensity and placement bound are drawn alike for both, so only shape carries
the label.

Randomness: split ``s`` (train 0, test 1) draws from ``numpy.random.default_rng([seed, s])``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from xaiscope.data.benchmark import lesions3d as les
from xaiscope.data.benchmark.generate import CONFOUNDER_VALUE, MAX_ROUNDS, REDRAW_AFTER, SPLITS, _ids
from xaiscope.data.benchmark.params import MNI_2MM_DHW, MNI_BOX, VolumeParams
from xaiscope.data.dataset import Dataset
from xaiscope.errors import DataError

# (d, h, w, 1) -> (i = w, j = h, k = d, 1): the array order of volumes from the (i, j, k) order of NIfTI
DHW_FROM_IJK = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


@dataclass(frozen=True)
class Template:
    """The background at one size: arrays ``[D, H, W]`` (read-only) and the voxel-to-world matrix."""

    image: np.ndarray  # float32, brain in about [0.1, 0.5], 0 outside
    brain: np.ndarray  # bool
    tissue: np.ndarray  # bool, where lesion centres may lie (inside the brain)
    room: np.ndarray  # float32 mm from each voxel to the nearest voxel outside the brain
    affine: np.ndarray  # float64 [4, 4], values exactly representable in float32 (NIfTI's sform)
    spacing: np.ndarray  # float64 [3], mm per voxel along (D, H, W)


def resample(vol: np.ndarray, size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``vol`` ``[D, H, W]`` resampled to ``size`` and the index map ``T`` (``old = T @ new``, ``[4, 4]``)."""
    from scipy import ndimage

    factor = np.array(vol.shape, dtype=np.float64) / np.array(size)
    sigma = np.maximum(0.0, (factor - 1) / 2)
    smooth = ndimage.gaussian_filter(vol.astype(np.float32), sigma) if sigma.any() else vol.astype(np.float32)
    axes = [(np.arange(m) + 0.5) * f - 0.5 for m, f in zip(size, factor)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    out = ndimage.map_coordinates(smooth, coords, order=1, mode="nearest").astype(np.float32)
    t = np.eye(4)
    t[:3, :3] = np.diag(factor)
    t[:3, 3] = (factor - 1) / 2
    return out, t


def _dhw(img) -> tuple[np.ndarray, np.ndarray]:
    """A nibabel image as ``(array [D, H, W], affine of (d, h, w))`` in closest-canonical RAS."""
    import nibabel as nib

    can = nib.as_closest_canonical(img)
    return np.asarray(can.dataobj).transpose(2, 1, 0), can.affine @ DHW_FROM_IJK


@functools.lru_cache(maxsize=4)
def template(size: tuple[int, int, int] = (48, 56, 48), tissue: str = "wm") -> Template:
    """The MNI152 background at ``size`` (cached; nilearn is imported here, which takes seconds)."""
    from nilearn import datasets
    from scipy import ndimage

    t1, affine = _dhw(datasets.load_mni152_template(resolution=2))
    if t1.shape != MNI_2MM_DHW:
        raise DataError(f"nilearn's MNI152 template has shape {list(t1.shape)}, expected {list(MNI_2MM_DHW)}.")
    brain0 = _dhw(datasets.load_mni152_brain_mask(resolution=2))[0] > 0
    wm0 = _dhw(datasets.load_mni152_wm_mask(resolution=2, threshold=0.5))[0] > 0
    gm0 = _dhw(datasets.load_mni152_gm_mask(resolution=2, threshold=0.5))[0] > 0
    box = tuple(slice(a, b) for a, b in MNI_BOX)
    image, t = resample(t1[box].astype(np.float32), size)
    brain = resample(brain0[box], size)[0] >= 0.5
    wm = resample(wm0[box], size)[0] >= 0.5
    gm = resample(gm0[box], size)[0] >= 0.5
    lo, hi = np.percentile(image[brain], [1, 99])
    image = np.where(brain, np.clip(0.1 + 0.4 * (image - lo) / (hi - lo), 0.0, 1.0), 0.0).astype(np.float32)
    t[:3, 3] += [a for a, _ in MNI_BOX]  # index in the box -> index in the template
    new = (affine @ t).astype(np.float32).astype(np.float64)
    spacing = np.linalg.norm(new[:3, :3], axis=0)
    pad = np.pad(brain, 1)  # voxels beyond the array count as outside
    room = ndimage.distance_transform_edt(pad, sampling=spacing)[1:-1, 1:-1, 1:-1].astype(np.float32)
    where = (wm if tissue == "wm" else wm | gm) & brain
    arrays = [image, brain, where, room]
    for a in arrays:
        a.setflags(write=False)
    return Template(*arrays, affine=new, spacing=spacing)


def confounder_box(size: tuple[int, int, int]) -> tuple[int, int]:
    """Side of the marker cube and the side of the corner zone it may occupy (index corner ``(0, 0, 0)``,
    inferior-posterior-left of the head: air)."""
    side = max(2, round(min(size) / 16))
    return side, side + 2


def _specs(p: VolumeParams, y: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per volume: lesion count, kind, equal-volume radius (mm) and intensity, largest lesion first."""
    n, kmax = y.size, p.lesions[1]
    count = rng.integers(p.lesions[0], kmax + 1, size=n)
    present = np.arange(kmax)[None, :] < count[:, None]
    r0, r1 = p.radius
    rho = np.cbrt(r0**3 + rng.random((n, kmax)) * (r1**3 - r0**3))  # volume uniform between the two spheres'
    values = rng.uniform(p.intensity[0], p.intensity[1], size=(n, kmax)).astype(np.float32)
    order = np.argsort(-np.where(present, rho, -1.0), axis=1, kind="stable")
    return {
        "count": count,
        "present": present,
        "rho": np.take_along_axis(rho, order, axis=1),
        "values": np.take_along_axis(values, order, axis=1),
        "kind": np.broadcast_to(y[:, None], (n, kmax)).copy(),
    }


def _bias(n: int, size: tuple[int, int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """``[n, D, H, W]`` float32 fields ``exp(sum_t c_t P_t)`` over the 9 monomials of degree 1-2
    (``z, y, x, z^2, y^2, x^2, zy, zx, yx`` with coordinates in [-1, 1]), summed as three planes."""
    z, yy, xx = (np.linspace(-1, 1, s, dtype=np.float32) for s in size)
    c = rng.uniform(-strength / 3, strength / 3, size=(n, 9)).astype(np.float32)[:, :, None, None]
    dh = c[:, 0] * z[:, None] + c[:, 3] * z[:, None] ** 2 + c[:, 1] * yy + c[:, 4] * yy**2 + c[:, 6] * np.outer(z, yy)
    dw = c[:, 2] * xx + c[:, 5] * xx**2 + c[:, 7] * np.outer(z, xx)
    hw = c[:, 8] * np.outer(yy, xx)
    return np.exp(dh[:, :, :, None] + dw[:, :, None, :] + hw[:, None, :, :])


def make_split(p: VolumeParams, split: str, n: int | None = None) -> dict[str, np.ndarray]:
    """All arrays of one split of the 3D benchmark.

    Returns
    -------
    dict with ``image`` float32 ``[n, D, H, W]``, ``mask`` bool, ``confounder_mask`` bool,
    ``y`` int64, ``background`` float32 (the same volume without lesions), ``soft`` float32
    (soft lesion mask), ``n_lesions``, ``lesion_voxels``, ``confounded`` bool, ``centres``
    ``[n, K, 3]`` (continuous voxel indices, NaN for unused slots), ``affine`` ``[4, 4]`` and
    the template's ``brain`` and ``tissue`` masks ``[D, H, W]``.
    """
    n = (p.n_train if split == "train" else p.n_test) if n is None else n
    tpl = template(p.size, p.tissue)
    rng = np.random.default_rng([p.seed, SPLITS.index(split)])
    y = rng.permutation(np.arange(n) % 2).astype(np.int64)
    confounded = np.zeros(n, dtype=bool)
    ones = np.flatnonzero(y == 1)
    confounded[rng.permutation(ones)[: int(round(p.confounder_rate * ones.size))]] = True
    spec = _specs(p, y, rng)
    shp = les.shapes(spec["kind"], rng, irregularity=p.irregularity)
    points = np.argwhere(tpl.tissue)
    room = tpl.room[tuple(points.T)]
    centres = np.full((n, spec["present"].shape[1], 3), np.nan)
    todo = np.arange(n)
    for attempt in range(MAX_ROUNDS):
        if attempt > 0:  # redraw the shapes (and after a while sizes and intensities) of what did not fit
            fresh = les.shapes(spec["kind"][todo], rng, irregularity=p.irregularity)
            for key, val in fresh.items():
                shp[key][todo] = val
            if attempt >= REDRAW_AFTER:
                again = _specs(p, y[todo], rng)
                spec["rho"][todo], spec["values"][todo] = again["rho"], again["values"]
        bound = shp["gmax"][todo] * spec["rho"][todo]
        c, ok = les.place(room, points, bound, spec["present"][todo], tpl.spacing, rng)
        centres[todo[ok]] = c[ok]
        todo = todo[~ok]
        if todo.size == 0:
            break
    else:
        raise DataError(
            f"Lesions did not fit in the {p.tissue} tissue of {todo.size} of {n} {split} volumes after "
            f"{MAX_ROUNDS} tries; use fewer --lesions or a smaller radius."
        )
    m, mv = les.render(
        centres, shp, spec["rho"], spec["present"], p.size, tpl.spacing, edge=p.edge, values=spec["values"]
    )
    gain = rng.uniform(1 - p.jitter, 1 + p.jitter, size=(n, 1, 1, 1)).astype(np.float32)
    offset = rng.uniform(-p.jitter / 2, p.jitter / 2, size=(n, 1, 1, 1)).astype(np.float32)
    image = np.empty((n, *p.size), dtype=np.float32)
    background = np.empty_like(image)
    t, alpha = tpl.image[None], np.float32(p.alpha)
    for lo in range(0, n, les.CHUNK):
        sl = slice(lo, min(n, lo + les.CHUNK))
        scale = _bias(sl.stop - lo, p.size, p.bias, rng) * gain[sl]
        noise = rng.standard_normal((sl.stop - lo, *p.size), dtype=np.float32) * np.float32(p.noise) + offset[sl]
        background[sl] = t * scale + noise
        image[sl] = (t + alpha * (mv[sl] - m[sl] * t)) * scale + noise
    cmask = np.zeros((n, *p.size), dtype=bool)
    if p.confounder_rate > 0:
        side, zone = confounder_box(p.size)
        if tpl.brain[: zone + 1, : zone + 1, : zone + 1].any():
            raise DataError(f"At size {list(p.size)} the confounder's corner touches the brain; use a larger size.")
        off = rng.integers(1, zone - side + 2, size=(n, 3))
        for i in np.flatnonzero(confounded):
            a, b, c = off[i]
            cmask[i, a : a + side, b : b + side, c : c + side] = True
        image[cmask] = np.float32(CONFOUNDER_VALUE)
    mask = m > 0
    centres[~spec["present"]] = np.nan
    return {
        "image": image,
        "mask": mask,
        "confounder_mask": cmask,
        "y": y,
        "background": background,
        "soft": m,
        "n_lesions": spec["count"].astype(np.int64),
        "lesion_voxels": mask.reshape(n, -1).sum(axis=1),
        "confounded": confounded,
        "centres": centres,
        "affine": tpl.affine.copy(),
        "brain": tpl.brain.copy(),
        "tissue": tpl.tissue.copy(),
    }


def to_dataset(arr: dict[str, np.ndarray], p: VolumeParams, split: str) -> Dataset:
    """The split as a :class:`Dataset` of volumes ``[N, 1, D, H, W]``, ordered by class, then id."""
    n = arr["y"].size
    stems = _ids(n)
    order = np.lexsort((np.arange(n), arr["y"]))
    classes = p.classes
    extra = {"confounder": torch.from_numpy(arr["confounder_mask"][order])} if p.confounder_rate > 0 else {}
    return Dataset(
        x=torch.from_numpy(arr["image"][order]).unsqueeze(1),
        y=torch.from_numpy(arr["y"][order]),
        ids=[f"{classes[arr['y'][i]]}/{stems[i]}" for i in order],
        classes=classes,
        masks=torch.from_numpy(arr["mask"][order]),
        extra_masks=extra,
        source=f"benchmark3d:mni152:seed={p.seed}:{split}",
        affines=np.repeat(arr["affine"][None], n, axis=0),
    )


def make_dataset_3d(**params) -> tuple[Dataset, Dataset]:
    """``(train, test)`` volume datasets in memory, the volumes :func:`generate_3d` writes.

    Takes the settings of :class:`~xaiscope.data.benchmark.params.VolumeParams` (``n_train``,
    ``n_test``, ``size``, ``alpha``, ``lesions``, ``confounder_rate``, ``seed``, ``tissue``, ...).
    ``x`` is ``[N, 1, D, H, W]`` float32, not normalised; ``masks`` the lesion masks,
    ``affines`` the voxel-to-world matrix of every volume; ``extra_masks["confounder"]`` is
    present when ``confounder_rate > 0``.
    """
    p = VolumeParams.from_kwargs(**params)
    train = to_dataset(make_split(p, "train"), p, "train")
    test = to_dataset(make_split(p, "test"), p, "test") if p.n_test > 0 else train.subset([])
    return train, test
