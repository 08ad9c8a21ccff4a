"""Reference ("baseline") inputs for path and perturbation methods."""

from __future__ import annotations

import torch

from xaiscope.errors import MethodError

REFERENCES = ("zero", "mean", "blur")


def reference(x: torch.Tensor, kind: str, *, sigma: float = 4.0) -> torch.Tensor:
    """The reference input for ``x`` ``[N, C, H, W]`` (or volumes ``[N, C, D, H, W]``).

    ``zero``: all zeros (black for unnormalised data, the dataset mean for normalised data);
    ``mean``: each image's per-channel mean; ``blur``: each image Gaussian-blurred with
    standard deviation ``sigma`` pixels (Fong & Vedaldi 2017).
    """
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True).expand_as(x).contiguous()
    if kind == "blur":
        return gaussian_blur(x, sigma)
    raise MethodError(f"Unknown reference {kind!r}; choose one of {', '.join(REFERENCES)}.")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` (or volumes ``[N, C, D, H, W]``) with reflect
    padding, the last axis first; the kernel radius is 3 sigma, cut to one less than the
    axis length on each axis (an axis of length 1 is left as it is)."""
    if sigma <= 0:
        return x.clone()
    dims = x.dim() - 2
    c = x.shape[1]
    conv = torch.nn.functional.conv2d if dims == 2 else torch.nn.functional.conv3d
    out = x
    for axis in reversed(range(dims)):
        radius = min(max(1, int(round(3 * sigma))), x.shape[2 + axis] - 1)
        if radius < 1:
            continue
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        pad = [0] * (2 * dims)
        pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = radius  # F.pad lists the last axis first
        shape = [1] * dims
        shape[axis] = -1
        kernel = k.view(1, 1, *shape).repeat(c, *([1] * (dims + 1)))
        out = conv(torch.nn.functional.pad(out, pad, mode="reflect"), kernel, groups=c)
    return out
