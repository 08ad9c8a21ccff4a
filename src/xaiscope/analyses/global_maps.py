"""Global label-wise explanations for aligned images.

Only meaningful when every pixel position is the same place on the imaged object
(retina, registered MRI, the ``--aligned`` benchmark).

Per image ``i`` a pooled map ``a_i`` ``[H, W]`` is turned into ``m_i``:
``|a_i|`` unless ``signed=True``, then normalised (``sum_to_one`` by default: divide by
``sum |a_i|`` so each image weighs the same; ``max`` and ``none`` optional; all-zero
maps stay zero). For label ``l`` with image set ``I_l`` (true labels by default, the
model's predictions with ``by="pred"``)::

    G_l    = 1/|I_l| sum_{i in I_l} m_i
    SD_l   = sqrt(1/|I_l| sum_{i in I_l} (m_i - G_l)^2)        (population SD, ddof = 0)
    G      = 1/L' sum_l G_l                                   (labels with images; each weighs the same)

No model passes: the maps are computed beforehand (cost of the explainer, ``E`` passes
per image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xaiscope.errors import ConfigError, DataError
from xaiscope.explain.postprocess import normalise as _normalise
from xaiscope.explain.postprocess import pool as _pool

GLOBAL_NORMALISATIONS = ("sum_to_one", "max", "none")
GROUPINGS = ("true", "pred")


@dataclass
class GlobalMaps:
    """Result of :func:`global_maps`.

    Attributes
    ----------
    label_maps : Tensor ``[L, H, W]``, ``G_l`` (zeros for a label without images)
    label_sd : Tensor ``[L, H, W]``, per-pixel population SD over the images of label ``l``
    overall : Tensor ``[H, W]``, mean of ``G_l`` over labels that have images
    overall_sd : Tensor ``[H, W]``, per-pixel population SD over all images
    counts : Tensor ``[L]`` int64, images per label
    groups : Tensor ``[N]`` int64, the label each image was grouped under
    settings : dict with ``normalise``, ``signed``, ``by``
    """

    label_maps: torch.Tensor
    label_sd: torch.Tensor
    overall: torch.Tensor
    overall_sd: torch.Tensor
    counts: torch.Tensor
    groups: torch.Tensor
    settings: dict

    def mass_in(self, region: torch.Tensor, label: int | None = None) -> float:
        """Share of the (absolute) mass of ``G_label`` (overall map when None) inside ``region`` ``[H, W]``."""
        g = (self.overall if label is None else self.label_maps[label]).abs()
        total = g.sum()
        return float((g * region.to(g.device, g.dtype)).sum() / total) if total > 0 else float("nan")


def per_image_maps(maps: torch.Tensor, *, normalise: str = "sum_to_one", signed: bool = False) -> torch.Tensor:
    """``m_i``: pool channels (sum) when ``[N, C, H, W]``, ``|.|`` unless signed, then normalise."""
    if normalise not in GLOBAL_NORMALISATIONS:
        raise ConfigError(
            f"Unknown normalisation {normalise!r} for global maps; choose one of {', '.join(GLOBAL_NORMALISATIONS)}."
        )
    if maps.dim() not in (3, 4):
        raise DataError(f"Maps must be [N, H, W] or [N, C, H, W]; got shape {list(maps.shape)}.")
    m = _pool(maps.float(), "sum") if maps.dim() == 4 else maps.float()
    if not signed:
        m = m.abs()
    return _normalise(m, normalise)


def global_maps(
    maps: torch.Tensor,
    labels: torch.Tensor,
    *,
    normalise: str = "sum_to_one",
    signed: bool = False,
    by: str = "true",
    preds: torch.Tensor | None = None,
    num_classes: int | None = None,
) -> GlobalMaps:
    """Label-wise global maps ``G_l``, the overall map and per-pixel SDs (module docstring).

    Parameters
    ----------
    maps : Tensor ``[N, H, W]`` (pooled) or ``[N, C, H, W]`` (raw; channels summed)
    labels : Tensor ``[N]`` int64, true labels
    normalise : "sum_to_one" (default) | "max" | "none"
        Per-image normalisation before averaging.
    signed : bool, default False
        Keep signs (default takes ``|a|``).
    by : "true" (default) | "pred"
        Group images by their true label or by the model's prediction ``preds``.
    preds : Tensor ``[N]`` int64, required when ``by="pred"``
    num_classes : int, optional
        Number of labels ``L`` (default: the largest label seen + 1).

    Returns
    -------
    GlobalMaps
    """
    if by not in GROUPINGS:
        raise ConfigError(f"by must be 'true' or 'pred', got {by!r}.")
    labels = torch.as_tensor(labels).long().view(-1)
    if by == "pred":
        if preds is None:
            raise ConfigError("Global maps grouped by='pred' need the model's predictions (preds=...).")
        groups = torch.as_tensor(preds).long().view(-1)
    else:
        groups = labels
    if groups.shape[0] != maps.shape[0]:
        raise DataError(f"There are {maps.shape[0]} maps but {groups.shape[0]} labels.")
    if maps.shape[0] == 0:
        raise DataError("Global maps need at least one map.")
    if (groups < 0).any():
        raise DataError("Labels must be non-negative class indices.")
    m = per_image_maps(maps, normalise=normalise, signed=signed).double()
    groups = groups.to(m.device)
    n_labels = int(num_classes if num_classes is not None else max(int(groups.max()), int(labels.max())) + 1)
    if int(groups.max()) >= n_labels:
        raise DataError(f"Label {int(groups.max())} is not below num_classes={n_labels}.")
    onehot = torch.nn.functional.one_hot(groups, n_labels).to(m.dtype)  # [N, L]
    counts = onehot.sum(0)  # [L]
    denom = counts.clamp_min(1).view(-1, 1, 1)
    flat = m.flatten(1)
    g = (onehot.T @ flat).view(n_labels, *m.shape[1:]) / denom
    resid = m - g[groups]
    sd = ((onehot.T @ resid.flatten(1).pow(2)).view(n_labels, *m.shape[1:]) / denom).sqrt()
    present = counts > 0
    overall = g[present].mean(0)
    overall_sd = m.std(0, unbiased=False) if m.shape[0] > 1 else torch.zeros_like(m[0])
    return GlobalMaps(
        label_maps=g.float(),
        label_sd=sd.float(),
        overall=overall.float(),
        overall_sd=overall_sd.float(),
        counts=counts.long(),
        groups=groups.long(),
        settings={"normalise": normalise, "signed": signed, "by": by},
    )
