"""Units of backward selection (single pixels or square patches) and masked inputs.

A *unit* is what backward selection keeps or removes as a whole: one pixel (all its
channels together) or one ``K x K`` patch (edge patches are smaller when ``K`` does not
divide the image size). Units are numbered row-major; ``labels[h, w]`` is the unit of
pixel ``(h, w)``, so a unit mask ``keep [..., U]`` becomes a pixel mask with
``keep[..., labels]`` (pure indexing, on any device).

The masked input of a pixel mask ``m`` is ``x`` where ``m`` is True and the mask value
(e.g. the training mean) elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xaiscope.errors import ConfigError


@dataclass(frozen=True)
class Units:
    """The units of an ``H x W`` image.

    Attributes
    ----------
    spec : the unit string (``"pixel"`` or ``"patch:K"``)
    size : patch side ``K`` (1 for pixels)
    labels : LongTensor ``[H, W]``, the unit of each pixel
    count : number of units ``U``
    """

    spec: str
    size: int
    labels: torch.Tensor
    count: int

    def to_pixels(self, keep: torch.Tensor) -> torch.Tensor:
        """Unit mask ``[..., U]`` -> pixel mask ``[..., H, W]``."""
        return keep[..., self.labels]

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel mask ``[H, W]`` -> unit mask ``[U]``: a unit is present when all its pixels are."""
        out = torch.ones(self.count, dtype=torch.bool, device=pixels.device)
        return out.scatter_reduce(
            0, self.labels.reshape(-1).to(pixels.device), pixels.reshape(-1).bool(), reduce="amin"
        )

    def pixel_counts(self) -> torch.Tensor:
        """Number of pixels of each unit ``[U]``."""
        return torch.bincount(self.labels.reshape(-1), minlength=self.count)


UNIT_HELP = "'pixel' or 'patch:K' with K a positive integer"


def parse_unit(unit: str) -> int:
    """``"pixel"`` -> 1, ``"patch:K"`` -> K; a :class:`ConfigError` for anything else."""
    if not isinstance(unit, str):
        raise ConfigError(f"The unit must be {UNIT_HELP}, got {unit!r}.")
    text = unit.strip().lower()
    if text == "pixel":
        return 1
    kind, sep, k = text.partition(":")
    if kind == "patch" and sep and k.isdigit() and int(k) >= 1:
        return int(k)
    raise ConfigError(f"Unknown unit {unit!r}; use {UNIT_HELP}.")


def make_units(unit: str, height: int, width: int, device: torch.device | str = "cpu") -> Units:
    """The units of an ``height x width`` image for ``unit`` (``"pixel"`` or ``"patch:K"``)."""
    k = parse_unit(unit)
    if k > max(height, width):
        raise ConfigError(f"The patch size {k} of unit {unit!r} is larger than the {height}x{width} image.")
    rows = torch.arange(height, device=device) // k
    cols = torch.arange(width, device=device) // k
    per_row = (width + k - 1) // k
    labels = rows.view(-1, 1) * per_row + cols.view(1, -1)
    count = ((height + k - 1) // k) * per_row
    return Units(spec="pixel" if k == 1 else f"patch:{k}", size=k, labels=labels, count=count)


def as_mask_value(mask_value, x: torch.Tensor) -> torch.Tensor:
    """``mask_value`` (scalar, ``[C,1,1]``, ``[C,H,W]`` or ``[C]``) as a tensor broadcastable to ``x`` ``[C,H,W]``."""
    mv = torch.as_tensor(mask_value, dtype=x.dtype, device=x.device)
    if mv.dim() == 1 and mv.numel() == x.shape[0]:
        mv = mv.view(-1, 1, 1)
    try:
        fits = torch.broadcast_shapes(mv.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ConfigError(
            f"The mask value of shape {list(mv.shape)} does not fit images of shape {list(x.shape)}; "
            "give a scalar, [C,1,1] or [C,H,W]."
        )
    if not torch.isfinite(mv).all():
        raise ConfigError("The mask value contains NaN or infinite values.")
    return mv


def as_image(x: torch.Tensor) -> torch.Tensor:
    """One image ``[C, H, W]`` (a leading batch axis of 1 is dropped)."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"The input must be a tensor [C, H, W], got a {type(x).__name__}.")
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3:
        raise ConfigError(f"The input must be one image [C, H, W], got shape {list(x.shape)}.")
    return x


def masked(x: torch.Tensor, pixels: torch.Tensor, mask_value: torch.Tensor) -> torch.Tensor:
    """``x`` where ``pixels`` ``[..., H, W]`` is True, ``mask_value`` elsewhere -> ``[..., C, H, W]``."""
    return torch.where(pixels.unsqueeze(-3), x, mask_value)
