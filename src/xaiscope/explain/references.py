"""Reference ("baseline") inputs for path and perturbation methods."""

from __future__ import annotations

import torch

from xaiscope.errors import MethodError

REFERENCES = ("zero", "mean", "blur")


def reference(x: torch.Tensor, kind: str, *, sigma: float = 4.0) -> torch.Tensor:
    """The reference input for ``x`` ``[N, C, H, W]``.

    ``zero``: all zeros (black for unnormalised data, the dataset mean for normalised data);
    ``mean``: each image's per-channel mean; ``blur``: each image Gaussian-blurred with
    standard deviation ``sigma`` pixels (Fong & Vedaldi 2017).
    """
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
    if kind == "blur":
        return gaussian_blur(x, sigma)
    raise MethodError(f"Unknown reference {kind!r}; choose one of {', '.join(REFERENCES)}.")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` with reflect padding (radius 3 sigma)."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, int(round(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    out = torch.nn.functional.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = torch.nn.functional.conv2d(out, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = torch.nn.functional.pad(out, (0, 0, radius, radius), mode="reflect")
    return torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
