"""Sanity baselines: an explanation method must beat these to mean anything.

None of them calls the model (0 passes): ``random`` is seeded uniform noise, ``sobel``
the Sobel gradient magnitude of each channel, ``laplace`` the absolute Laplacian of each
channel (edge detectors, Adebayo et al. 2018, arXiv:1810.03292), ``input`` the image itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xaiscope.explain.base import Explainer, register

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = kernel.to(x).view(1, 1, 3, 3).repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)


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
    """Sobel gradient magnitude sqrt(Gx^2 + Gy^2) per channel (replicate padding)."""

    name = "sobel"

    def _attribute(self, model, x, y):
        gx = _filter(x, _SOBEL_X)
        gy = _filter(x, _SOBEL_X.t())
        return torch.sqrt(gx**2 + gy**2)


@register
class LaplaceExplainer(_Baseline):
    """Absolute 4-neighbour Laplacian per channel (replicate padding)."""

    name = "laplace"

    def _attribute(self, model, x, y):
        return _filter(x, _LAPLACE).abs()


@register
class InputExplainer(_Baseline):
    """The input itself."""

    name = "input"

    def _attribute(self, model, x, y):
        return x.clone()
