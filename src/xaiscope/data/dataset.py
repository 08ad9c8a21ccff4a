"""The in-memory dataset every layer above ``data`` works on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from xaiscope.data.hashing import array_hash
from xaiscope.data.summaries import Fingerprint
from xaiscope.errors import DataError


@dataclass
class Dataset:
    """Images with labels, ids and optional expert masks.

    Attributes
    ----------
    x : Tensor ``[N, C, H, W]`` (images) or ``[N, C, D, H, W]`` (volumes) float32 (normalised
        when ``mean``/``std`` are set); "spatial" below means ``H, W`` or ``D, H, W``
    y : Tensor ``[N]`` int64, indices into ``classes``
    ids : list of str, unique image ids (``<class>/<stem>`` for folders)
    classes : list of str, class names (label ``k`` is ``classes[k]``)
    masks : Tensor ``[N, *spatial]`` bool or None, expert masks (ground truth); with several
        annotators, their consensus by majority vote (:func:`majority_vote`: a pixel is
        foreground when at least half of the annotators mark it, so ties count as foreground)
    extra_masks : dict of name -> Tensor ``[N, *spatial]`` bool (e.g. ``confounder``)
    mean, std : per-channel normalisation applied to ``x`` (None when not normalised)
    source : where the data came from (a path), for messages and the manifest
    pixel_hashes : list of str or None, per image a hash of its pixels as decoded (before
        normalisation), set by the readers; see :meth:`image_hashes`
    annotator_masks : Tensor ``[N, A, *spatial]`` bool or None, one mask per annotator and image
    annotators : list of str or None, the ``A`` annotator names (default ``"0"``, ``"1"``, ...)
    affines : array ``[N, 4, 4]`` float64 or None, per volume the voxel-to-world matrix (RAS, mm)
        of its index order ``(d, h, w)``, as read from NIfTI / DICOM (see :mod:`xaiscope.data.volumes`)
    """

    x: torch.Tensor
    y: torch.Tensor
    ids: list[str]
    classes: list[str]
    masks: torch.Tensor | None = None
    extra_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None
    source: str = ""
    pixel_hashes: list[str] | None = None
    annotator_masks: torch.Tensor | None = None
    annotators: list[str] | None = None
    affines: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.annotator_masks is not None:
            self._check_annotators(n)
        if self.x.dim() not in (4, 5):
            raise DataError(
                f"Images must be [N, C, H, W] (or volumes [N, C, D, H, W]); got shape {list(self.x.shape)} "
                f"from {self.source or 'input'}."
            )
        if self.affines is not None:
            self.affines = np.asarray(self.affines, dtype=np.float64)
            if self.affines.shape != (n, 4, 4):
                raise DataError(
                    f"{self.source or 'The dataset'} has {n} images but affines of shape {list(self.affines.shape)}."
                )
        if self.y.shape != (n,) or len(self.ids) != n:
            raise DataError(
                f"{self.source or 'The dataset'} has {n} images but {self.y.shape[0]} labels and {len(self.ids)} ids."
            )
        if len(set(self.ids)) != n:
            raise DataError(f"Image ids in {self.source or 'the dataset'} are not unique.")
        if self.pixel_hashes is not None and len(self.pixel_hashes) != n:
            raise DataError(f"{self.source or 'The dataset'} has {n} images but {len(self.pixel_hashes)} pixel hashes.")
        if self.masks is not None and self.masks.shape != (n, *self.x.shape[2:]):
            raise DataError(
                f"Masks in {self.source or 'the dataset'} have shape {list(self.masks.shape)} but the images need {[n, *self.x.shape[2:]]}."
            )

    def _check_annotators(self, n: int) -> None:
        am, where = self.annotator_masks, self.source or "the dataset"
        if am.dim() != self.x.dim() or am.shape[0] != n or tuple(am.shape[2:]) != tuple(self.x.shape[2:]):
            raise DataError(
                f"Annotator masks in {where} have shape {list(am.shape)} but the images need "
                f"[{n}, annotators, {', '.join(str(s) for s in self.x.shape[2:])}]."
            )
        if am.shape[1] < 1:
            raise DataError(f"Annotator masks in {where} hold no annotator.")
        self.annotator_masks = am.bool()
        names = [str(a) for a in range(am.shape[1])] if self.annotators is None else [str(a) for a in self.annotators]
        if len(names) != am.shape[1]:
            raise DataError(f"{where} names {len(names)} annotators but its masks hold {am.shape[1]}.")
        if len(set(names)) != len(names):
            raise DataError(f"Annotator names in {where} are not unique.")
        self.annotators = names
        if self.masks is None:
            self.masks = majority_vote(self.annotator_masks)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int):
        """Item ``i`` as ``(id, x [C, *spatial], y, mask [*spatial] or None)``."""
        mask = None if self.masks is None else self.masks[i]
        return self.ids[i], self.x[i], int(self.y[i]), mask

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one image, ``(C, D, H, W)`` of one volume."""
        return tuple(self.x.shape[1:])

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return self.x.dim() - 2

    def subset(self, index: Sequence[int] | torch.Tensor) -> "Dataset":
        """A new dataset with the items at ``index`` (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return Dataset(
            x=self.x[idx],
            y=self.y[idx],
            ids=[self.ids[i] for i in idx.tolist()],
            classes=list(self.classes),
            masks=None if self.masks is None else self.masks[idx],
            extra_masks={k: v[idx] for k, v in self.extra_masks.items()},
            mean=self.mean,
            std=self.std,
            source=self.source,
            pixel_hashes=None if self.pixel_hashes is None else [self.pixel_hashes[i] for i in idx.tolist()],
            annotator_masks=None if self.annotator_masks is None else self.annotator_masks[idx],
            annotators=None if self.annotators is None else list(self.annotators),
            affines=None if self.affines is None else self.affines[idx.numpy()],
        )

    def batches(self, batch_size: int) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """``(slice, x, y)`` for consecutive batches."""
        for start in range(0, len(self), batch_size):
            sl = slice(start, min(len(self), start + batch_size))
            yield sl, self.x[sl], self.y[sl]

    def fill_value(self) -> torch.Tensor:
        """Per-channel value of a "blank" pixel: the dataset mean in the stored scale, ``[C, 1, 1]``
        (``[C, 1, 1, 1]`` for volumes)."""
        dims = (0, *range(2, self.x.dim()))
        return self.x.mean(dim=dims).view(-1, *([1] * self.spatial_dims))

    def image_hashes(self) -> list[str]:
        """Per image, a hash of its pixels as read (before normalisation): the readers' hashes,
        else (a dataset built in memory) a hash of ``x[i]`` as it is now. One pass over the
        images the first time; kept in ``pixel_hashes``."""
        if self.pixel_hashes is None:
            x = self.x.detach().cpu().contiguous().numpy()
            self.pixel_hashes = [array_hash(x[i]) for i in range(len(x))]
        return self.pixel_hashes

    def mask_hashes(self, extra: Sequence[str] = ()) -> list[str | None]:
        """Per image, a hash of its expert mask (None without masks); with ``extra`` (names of
        extra masks) a hash of the expert mask's hash and those extra masks (:func:`mask_hashes`)."""
        return mask_hashes(self.masks, self.extra_masks, extra, len(self))

    def fingerprint(self) -> str:
        """Identity of the exact data of a run: :class:`~xaiscope.data.summaries.Fingerprint` of
        images, labels, ids and masks (the same value as the streamed source of these images)."""
        f = Fingerprint()
        f.update(self.x, self.y, self.ids, self.masks, self.annotator_masks)
        return f.hexdigest(self.annotators)


def majority_vote(annotator_masks: torch.Tensor) -> torch.Tensor:
    """Consensus ``[N, *spatial]`` bool of masks ``[N, A, *spatial]``: a pixel is foreground when at
    least half of the ``A`` annotators mark it (a tie, possible for even ``A``, counts as
    foreground, so two annotators give their union)."""
    am = annotator_masks.bool()
    return 2 * am.sum(dim=1) >= am.shape[1]


def mask_hashes(masks, extra_masks: dict, extra: Sequence[str] = (), n: int | None = None) -> list[str | None]:
    """Per image of a batch, a hash of its expert mask ``masks[i]`` (None without masks); with
    ``extra`` (names of extra masks) a SHA-256 of the expert mask's hash and those extra masks
    of the image (the names not in ``extra_masks`` ignored)."""
    if masks is None:
        out: list[str | None] = [None] * int(n if n is not None else len(next(iter(extra_masks.values()))))
    else:
        m = masks.detach().cpu().contiguous().numpy()
        out = [array_hash(m[i]) for i in range(len(m))]
    names = [k for k in sorted(set(extra)) if k in extra_masks]
    if not names:
        return out
    arrays = {k: extra_masks[k].detach().cpu().contiguous().numpy() for k in names}
    h = hashlib.sha256
    return [
        h(repr([out[i], [(k, array_hash(arrays[k][i])) for k in names]]).encode()).hexdigest()[:32]
        for i in range(len(out))
    ]
