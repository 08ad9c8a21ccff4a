"""Sanity baselines: an explanation method must beat these to mean anything.

None of them calls the model (0 passes): ``random`` is seeded uniform noise, ``sobel``
the Sobel gradient magnitude of each channel, ``laplace`` the absolute Laplacian of each
channel (edge detectors, Adebayo et al. 2018, arXiv:1810.03292), ``input`` the image itself.
Sobel and Laplace work in 2D and 3D: the Sobel derivative along one axis is ``[-1, 0, 1]``
smoothed by ``[1, 2, 1]`` along every other axis, the magnitude the root of the summed
squares over the ``S`` spatial axes; the Laplacian is the ``2S``-neighbour stencil
``sum_axis (x[+1] + x[-1]) - 2 S x``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xaiscope.explain.base import Explainer, register

_DERIVATIVE = torch.tensor([-1.0, 0.0, 1.0])
_SMOOTH = torch.tensor([1.0, 2.0, 1.0])


def _outer(vectors: list[torch.Tensor]) -> torch.Tensor:
    k = vectors[0]
    for v in vectors[1:]:
        k = k[..., None] * v
    return k


def sobel_kernels(dims: int) -> list[torch.Tensor]:
    """The ``dims`` Sobel kernels ``3 x ... x 3``: the derivative along one axis, smoothing along the others."""
    return [_outer([_DERIVATIVE if a == axis else _SMOOTH for a in range(dims)]) for axis in range(dims)]


def laplace_kernel(dims: int) -> torch.Tensor:
    """The ``2 dims``-neighbour Laplacian stencil ``3 x ... x 3``."""
    k = torch.zeros((3,) * dims)
    centre = (1,) * dims
    k[centre] = -2.0 * dims
    for axis in range(dims):
        for side in (0, 2):
            at = list(centre)
            at[axis] = side
            k[tuple(at)] = 1.0
    return k


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Each channel of ``x`` ``[N, C, *spatial]`` filtered by ``kernel`` (replicate padding)."""
    c, dims = x.shape[1], x.dim() - 2
    k = kernel.to(x).view(1, 1, *kernel.shape).repeat(c, *([1] * (dims + 1)))
    conv = F.conv2d if dims == 2 else F.conv3d
    return conv(F.pad(x, (1, 1) * dims, mode="replicate"), k, groups=c)


class _Baseline(Explainer):
    family, library = "baseline", "xaiscope"
    params = {}

    def _passes(self, shape, model=None):
        return 0


@register
class RandomExplainer(_Baseline):
    """Uniform random values in [0, 1), drawn from ``seed``."""

    name = "random"
    stochastic = True

    def _attribute(self, model, x, y):
        g = torch.Generator(device="cpu").manual_seed(self.hparams["seed"])
        return torch.rand(x.shape, generator=g).to(x.device)


@register
class SobelExplainer(_Baseline):
    """Sobel gradient magnitude sqrt(Gx^2 + Gy^2 (+ Gz^2)) per channel (replicate padding)."""

    name = "sobel"

    def _attribute(self, model, x, y):
        return torch.sqrt(sum(_filter(x, k) ** 2 for k in sobel_kernels(x.dim() - 2)))


@register
class LaplaceExplainer(_Baseline):
    """Absolute 4-neighbour (6 in 3D) Laplacian per channel (replicate padding)."""

    name = "laplace"

    def _attribute(self, model, x, y):
        return _filter(x, laplace_kernel(x.dim() - 2)).abs()


@register
class InputExplainer(_Baseline):
    """The input itself."""

    name = "input"

    def _attribute(self, model, x, y):
        return x.clone()
