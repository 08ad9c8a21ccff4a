"""Global label-wise explanations for aligned images.

Only meaningful when every pixel position is the same place on the imaged object
(retina, registered MRI, the ``--aligned`` benchmark).

Per image ``i`` a pooled map ``a_i`` ``[H, W]`` (``[D, H, W]`` for volumes) is turned into ``m_i``:
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


def per_image_maps(
    maps: torch.Tensor, *, normalise: str = "sum_to_one", signed: bool = False, spatial_dims: int | None = None
) -> torch.Tensor:
    """``m_i``: pool channels (sum) when raw ``[N, C, *spatial]``, ``|.|`` unless signed, then
    normalise. ``spatial_dims`` 2 or 3 (None: 3 for a 5-D tensor, else 2), so a volume map
    ``[N, D, H, W]`` is told from raw 2D attributions."""
    if normalise not in GLOBAL_NORMALISATIONS:
        raise ConfigError(
            f"Unknown normalisation {normalise!r} for global maps; choose one of {', '.join(GLOBAL_NORMALISATIONS)}."
        )
    dims = spatial_dims if spatial_dims is not None else (3 if maps.dim() == 5 else 2)
    if maps.dim() not in (dims + 1, dims + 2):
        raise DataError(
            f"Maps must be [N, H, W] or [N, C, H, W] (volumes [N, D, H, W] or [N, C, D, H, W]); "
            f"got shape {list(maps.shape)}."
        )
    m = _pool(maps.float(), "sum", dims)
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
    spatial_dims: int | None = None,
) -> GlobalMaps:
    """Label-wise global maps ``G_l``, the overall map and per-pixel SDs (module docstring).

    Parameters
    ----------
    maps : Tensor ``[N, H, W]`` (pooled) or ``[N, C, H, W]`` (raw; channels summed); volumes
        ``[N, D, H, W]`` or ``[N, C, D, H, W]`` (``spatial_dims=3`` tells a volume map apart)
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
    spatial_dims : 2 or 3, optional (default: 3 for 5-D ``maps``, else 2)

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
    n_labels = int(num_classes if num_classes is not None else max(int(groups.max()), int(labels.max())) + 1)
    dims = spatial_dims if spatial_dims is not None else (3 if maps.dim() == 5 else 2)
    acc = GlobalMapsAccumulator(n_labels, tuple(maps.shape[-dims:]), normalise=normalise, signed=signed, by=by)
    acc.update(maps, groups)
    return acc.result()


class GlobalMapsAccumulator:
    """:func:`global_maps` fed one batch of maps at a time (update), the result at the end:
    per label and overall, the count, the running mean and the sum of squared deviations of
    the per-image maps ``m_i`` (Chan, Golub & LeVeque 1979 pairwise update, float64), so the
    memory holds ``O(L H W)`` numbers whatever the number of images."""

    def __init__(
        self, n_labels: int, shape: tuple[int, ...], *, normalise: str = "sum_to_one", signed: bool = False, by="true"
    ) -> None:
        if by not in GROUPINGS:
            raise ConfigError(f"by must be 'true' or 'pred', got {by!r}.")
        per_image_maps(torch.zeros(1, *shape), normalise=normalise, signed=signed, spatial_dims=len(shape))
        self.settings = {"normalise": normalise, "signed": signed, "by": by}
        self.n_labels, self.shape = int(n_labels), tuple(shape)
        self.count = torch.zeros(self.n_labels, dtype=torch.float64)
        self.mean = torch.zeros(self.n_labels, *shape, dtype=torch.float64)
        self.m2 = torch.zeros(self.n_labels, *shape, dtype=torch.float64)
        self.all = [0.0, torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)]
        self.groups: list[torch.Tensor] = []

    def update(self, maps: torch.Tensor, groups: torch.Tensor) -> None:
        """Add the maps ``[B, *shape]`` or raw ``[B, C, *shape]`` of images grouped under ``groups`` ``[B]``."""
        groups = torch.as_tensor(groups).long().view(-1).cpu()
        if groups.shape[0] != maps.shape[0]:
            raise DataError(f"There are {maps.shape[0]} maps but {groups.shape[0]} labels.")
        if len(groups) and int(groups.min()) < 0:
            raise DataError("Labels must be non-negative class indices.")
        if len(groups) and int(groups.max()) >= self.n_labels:
            raise DataError(f"Label {int(groups.max())} is not below num_classes={self.n_labels}.")
        settings = {k: self.settings[k] for k in ("normalise", "signed")}
        m = per_image_maps(maps, **settings, spatial_dims=len(self.shape)).double().cpu()
        for lab in groups.unique().tolist():
            sub = m[groups == lab]
            self.count[lab], self.mean[lab], self.m2[lab] = _merge(
                float(self.count[lab]), self.mean[lab], self.m2[lab], sub
            )
        self.all = list(_merge(self.all[0], self.all[1], self.all[2], m))
        self.groups.append(groups)

    def result(self) -> GlobalMaps:
        if self.all[0] == 0:
            raise DataError("Global maps need at least one map.")
        counts = self.count
        sd = (self.m2 / counts.clamp_min(1).view(-1, *([1] * len(self.shape)))).sqrt()
        present = counts > 0
        overall = self.mean[present].mean(0)
        overall_sd = (self.all[2] / self.all[0]).sqrt() if self.all[0] > 1 else torch.zeros(self.shape)
        return GlobalMaps(
            label_maps=self.mean.float(),
            label_sd=sd.float(),
            overall=overall.float(),
            overall_sd=overall_sd.float(),
            counts=counts.long(),
            groups=torch.cat(self.groups).long(),
            settings=dict(self.settings),
        )


def _merge(n: float, mean: torch.Tensor, m2: torch.Tensor, sub: torch.Tensor):
    """``(n, mean, M2)`` after adding the rows of ``sub`` (pairwise update)."""
    nb = sub.shape[0]
    if nb == 0:
        return n, mean, m2
    mb = sub.mean(0)
    m2b = (sub - mb).square().sum(0)
    total = n + nb
    delta = mb - mean
    return total, mean + delta * (nb / total), m2 + m2b + delta.square() * (n * nb / total)
