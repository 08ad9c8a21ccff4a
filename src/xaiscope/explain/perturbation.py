"""Perturbation methods: occlusion and feature ablation computed by Captum; LIME and KernelSHAP
batched here (:mod:`xaiscope.explain.surrogate`).

Pass counts per image: occlusion ``1 + windows`` where windows =
``prod_axis (ceil((L_axis - w)/s) + 1)`` over the spatial axes (H, W; D, H, W for volumes:
cubic windows; Captum adds a last, clipped window where the stride does not divide
``L - w``); feature_ablation ``1 + prod_axis ceil(L_axis / p)`` patches (cubes in 3D); lime
and kernel_shap ``n_samples``.
LIME and KernelSHAP work on SLIC superpixels (Achanta et al. 2012) whose number and
compactness are hyperparameters; on volumes SLIC makes supervoxels (``channel_axis=None``
for one channel), with the voxel spacing set by :func:`voxel_spacing` (the jobs set it from
the volumes' affines) so compactness is measured in millimetres, not voxels.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Sequence

import captum.attr as ca
import numpy as np
import torch

from xaiscope.errors import MethodError
from xaiscope.explain.base import Explainer, Param, mean_side, register
from xaiscope.explain.chunking import per_chunk
from xaiscope.explain.references import REFERENCES, reference


def _windows(size: int, window: int, stride: int) -> int:
    return max(0, -(-(size - window) // stride)) + 1


_SPACING: contextvars.ContextVar[tuple[float, ...] | None] = contextvars.ContextVar("voxel_spacing", default=None)


@contextlib.contextmanager
def voxel_spacing(spacing: Sequence[float] | None) -> Iterator[None]:
    """Within the block, supervoxels of volumes use voxel size ``spacing`` ``(dz, dy, dx)`` in mm
    (None: isotropic unit voxels)."""
    token = _SPACING.set(None if spacing is None else tuple(float(v) for v in spacing))
    try:
        yield
    finally:
        _SPACING.reset(token)


#: the ``auto`` sizes keep about this many occlusion windows and ablation patches per image
#: side at most (2D; the cube root of their squares in 3D: 6 per axis), and never go below
#: the fixed defaults sized for 64x64 images (window 8, stride 4, patch 4)
AUTO_WINDOWS_PER_SIDE, AUTO_PATCHES_PER_SIDE, MIN_WINDOW, MIN_PATCH = 15, 16, 8, 4

AUTO = "'auto' sizes it to the image (see auto_occlusion / auto_patch)"


def _per_side(per_side_2d: int, dims: int) -> int:
    return max(1, round(per_side_2d ** (2 / dims)))


def auto_occlusion(spatial: Sequence[int], window: int | str = "auto", stride: int | str = "auto") -> tuple[int, int]:
    """``(window, stride)`` with ``auto`` resolved for an image of sides ``spatial``.

    ``window = min(max(8, ceil(2 L / (n + 1))), shortest side)`` with ``L`` the geometric mean
    of the sides and ``n`` = 15 windows per side in 2D (6 per axis in 3D); ``stride = max(1,
    window // 2)``. With stride = window / 2 an axis of length ``L`` holds about ``2 L / w - 1
    = n`` windows, so the passes stay near ``1 + 15^2`` per image (``1 + 6^3`` per volume) however
    large the image, and images up to 64x64 keep window 8, stride 4: 224x224 gets window 28,
    stride 14 (226 passes, not 3,026), a volume of 48x56x48 window 15, stride 7.
    """
    if window == "auto":
        n = _per_side(AUTO_WINDOWS_PER_SIDE, len(spatial))
        window = min(max(MIN_WINDOW, math.ceil(2 * mean_side(spatial) / (n + 1))), min(spatial))
    if stride == "auto":
        stride = max(1, int(window) // 2)
    return int(window), int(stride)


def auto_patch(spatial: Sequence[int], patch: int | str = "auto") -> int:
    """``patch`` with ``auto`` resolved: ``max(4, ceil(L / n))`` with ``L`` the geometric mean of
    the sides and ``n`` = 16 patches per side in 2D (6 per axis in 3D): 4 up to 64x64, 14 at
    224x224 (257 passes, not 3,137), 5 for a volume of 24x28x24."""
    if patch != "auto":
        return int(patch)
    return max(MIN_PATCH, math.ceil(mean_side(spatial) / _per_side(AUTO_PATCHES_PER_SIDE, len(spatial))))


@register
class OcclusionExplainer(Explainer):
    """Occlusion: drop in the target score when a sliding square window is replaced by the
    reference (Zeiler & Fergus 2014, arXiv:1311.2901). ``window``/``stride`` ``auto`` follow
    :func:`auto_occlusion` (8 and 4 up to 64x64)."""

    name, family, library = "occlusion", "perturbation", "captum"
    params = {
        "window": Param("auto", int, f"window side (pixels); {AUTO}", low=1, auto=lambda sp, hp: auto_occlusion(sp)[0]),
        "stride": Param(
            "auto", int, f"stride (pixels); {AUTO}", low=1, auto=lambda sp, hp: auto_occlusion(sp, hp["window"])[1]
        ),
        "baseline": Param("zero", str, "fill of the window", choices=REFERENCES),
    }

    def _passes(self, shape, model=None):
        if shape is None:
            return float("nan")
        h = self.settled(shape)
        return 1 + math.prod(_windows(n, h["window"], h["stride"]) for n in shape[1:])

    def _attribute(self, model, x, y):
        h = self.settled(tuple(x.shape[1:]))
        spatial, window, stride = tuple(x.shape[2:]), h["window"], h["stride"]
        if window > min(spatial):
            size = "x".join(str(n) for n in spatial)
            raise MethodError(f"occlusion window {window} is larger than the image ({size}).")
        occ = ca.Occlusion(model)
        images = max(1, min(x.shape[0], self.batch_size))

        def run(xb, yb):
            return occ.attribute(
                xb,
                sliding_window_shapes=(xb.shape[1], *[window] * len(spatial)),
                strides=(xb.shape[1], *[stride] * len(spatial)),
                baselines=reference(xb, h["baseline"]),
                target=yb,
                perturbations_per_eval=max(1, self.batch_size // xb.shape[0]),
            )

        return per_chunk(run, x, y, images)


def patch_mask(spatial: Sequence[int], patch: int, device) -> torch.Tensor:
    """Feature ids ``[1, 1, *spatial]`` of a grid of ``patch``-sided squares (cubes in 3D), row-major."""
    ids = torch.zeros((), dtype=torch.long, device=device)
    for n in spatial:
        ids = ids[..., None] * math.ceil(n / patch) + (torch.arange(n, device=device) // patch)
    return ids.view(1, 1, *spatial)


@register
class FeatureAblationExplainer(Explainer):
    """Feature ablation: drop in the target score when each square patch is replaced by the
    reference; ``patch`` ``auto`` follows :func:`auto_patch` (4 up to 64x64)."""

    name, family, library = "feature_ablation", "perturbation", "captum"
    params = {
        "patch": Param("auto", int, f"patch side (pixels); {AUTO}", low=1, auto=lambda sp, hp: auto_patch(sp)),
        "baseline": Param("zero", str, "fill of the patch", choices=REFERENCES),
    }

    def _passes(self, shape, model=None):
        if shape is None:
            return float("nan")
        p = self.settled(shape)["patch"]
        return 1 + math.prod(math.ceil(n / p) for n in shape[1:])

    def _attribute(self, model, x, y):
        h = self.settled(tuple(x.shape[1:]))
        fa = ca.FeatureAblation(model)
        mask = patch_mask(x.shape[2:], h["patch"], x.device)

        def run(xb, yb):
            return fa.attribute(
                xb,
                baselines=reference(xb, h["baseline"]),
                target=yb,
                feature_mask=mask.expand(xb.shape[0], xb.shape[1], *xb.shape[2:]),
                perturbations_per_eval=max(1, self.batch_size // xb.shape[0]),
            )

        return per_chunk(run, x, y, max(1, min(x.shape[0], self.batch_size)))


def superpixels(x: torch.Tensor, n_segments: int, compactness: float) -> torch.Tensor:
    """SLIC superpixel ids ``[1, C, H, W]`` (supervoxel ids ``[1, C, D, H, W]``; long) for one
    image ``[1, C, *spatial]``.

    The image is min-max scaled to [0, 1] first, so ``compactness`` means the same for
    normalised and raw data. Volumes use the voxel spacing of :func:`voxel_spacing`. A flat
    image (one superpixel) falls back to a grid of 4 cells per side."""
    from skimage.segmentation import slic

    spatial = tuple(x.shape[2:])
    img = np.moveaxis(x[0].detach().cpu().numpy(), 0, -1)
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    gray = img.shape[-1] == 1
    spacing = _SPACING.get() if len(spatial) == 3 else None
    seg = slic(
        img[..., 0] if gray else img,
        n_segments=n_segments,
        compactness=compactness,
        start_label=0,
        channel_axis=None if gray else -1,
        spacing=None if spacing is None else np.asarray(spacing, dtype=np.float64),
    )
    seg = torch.from_numpy(np.asarray(seg, dtype=np.int64)).to(x.device).view(1, 1, *spatial)
    if int(seg.max()) < 1:  # a flat image gives one superpixel; a grid keeps the surrogate defined
        seg = patch_mask(spatial, max(1, min(spatial) // 4), x.device)
    return seg.expand(1, x.shape[1], *spatial)


class _SurrogateExplainer(Explainer):
    """Shared mechanism of LIME and KernelSHAP: superpixels, batched sampling and a weighted
    linear fit per image (:mod:`xaiscope.explain.surrogate`)."""

    family, library = "perturbation", "xaiscope"
    stochastic = True
    kind = ""
    params = {
        "n_samples": Param(200, int, "perturbed samples per image", low=2),
        "n_segments": Param(50, int, "SLIC superpixels", low=2),
        "compactness": Param(10.0, float, "SLIC compactness", low=0.0),
        "baseline": Param("zero", str, "fill of removed superpixels", choices=REFERENCES),
    }

    def _passes(self, shape, model=None):
        return self.hparams["n_samples"]

    def surrogate(self) -> tuple[str, float]:
        """The linear model fitted and its regularisation strength."""
        return "ols", 0.0

    def _attribute(self, model, x, y):
        from xaiscope.explain.surrogate import explain_one

        h = self.hparams
        surrogate, alpha = self.surrogate()
        base = reference(x, h["baseline"])
        maps = []
        for i, seg in enumerate(segment_ahead(x, h["n_segments"], h["compactness"])):
            maps.append(
                explain_one(
                    model,
                    x[i : i + 1],
                    y[i : i + 1],
                    seg,
                    base[i : i + 1],
                    kind=self.kind,
                    n_samples=h["n_samples"],
                    batch_size=self.batch_size,
                    surrogate=surrogate,
                    alpha=alpha,
                )
            )
        return torch.cat(maps)


def segment_ahead(
    x: torch.Tensor, n_segments: int, compactness: float, ahead: int = 2, workers: int = 1
) -> Iterator[torch.Tensor]:
    """The superpixel ids ``[*spatial]`` of every image of ``x`` in order, each computed in
    ``workers`` background threads up to ``ahead`` images before it is needed: scikit-image's
    SLIC runs without the GIL, so segmenting the next image overlaps the model passes of this
    one (on ``small_cnn3d`` volumes SLIC alone was a fifth of LIME's time), and two workers
    segment two images at once. The caller's context (the voxel spacing of
    :func:`voxel_spacing`) is carried into the threads."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> torch.Tensor:
        return superpixels(x[i : i + 1], n_segments, compactness)[0, 0]

    ahead = max(ahead, workers)
    ctx = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.submit(ctx.copy().run, one, i) for i in range(min(ahead, x.shape[0]))]
        for i in range(x.shape[0]):
            seg = pending.pop(0).result()
            if i + ahead < x.shape[0]:
                pending.append(pool.submit(ctx.copy().run, one, i + ahead))
            yield seg


@register
class LimeExplainer(_SurrogateExplainer):
    """LIME: a weighted linear surrogate fitted on superpixel on/off samples (Ribeiro et al. 2016,
    arXiv:1602.04938), weights ``exp(-d^2 / 2)`` of the cosine distance ``d`` between image and
    sample (Captum's default kernel). The surrogate is ridge regression with ``alpha`` (as in the
    reference ``lime_image`` implementation, alpha 1) or lasso."""

    name, kind = "lime", "lime"
    params = {
        **_SurrogateExplainer.params,
        "surrogate": Param("ridge", str, "interpretable model", choices=("ridge", "lasso")),
        "alpha": Param(1.0, float, "regularisation strength of the surrogate", low=0.0),
    }

    def surrogate(self) -> tuple[str, float]:
        return self.hparams["surrogate"], self.hparams["alpha"]


@register
class KernelShapExplainer(_SurrogateExplainer):
    """KernelSHAP: a linear surrogate with the Shapley kernel (Lundberg & Lee 2017, arXiv:1705.07874):
    Shapley-kernel sampling, the all-kept and all-removed samples weighted 10^6, least squares."""

    name, kind = "kernel_shap", "kernel_shap"
