"""Lazy sources: images that stay on disk and arrive in batches.

A :class:`Source` knows, without reading any pixel, how many images it holds, their ids,
labels and classes, the shape of one image and which masks exist; its pixels arrive only
through :meth:`Source.batches`, a batch of ``(ids, x, y, masks)`` at a time, so a job that
pulls batches holds one batch in memory whatever the size of the dataset.

Implementations: :class:`MemorySource` (a :class:`~xaiscope.data.dataset.Dataset` already in
memory, or plain tensors), :class:`TorchSource` (any ``torch.utils.data.Dataset`` or
``DataLoader``), and in :mod:`xaiscope.data.lazy` the image folder, HDF5, Zarr and NPZ /
MedMNIST sources. :func:`xaiscope.data.lazy.open_source` opens a path or a Python object.

Every source, whatever its kind, gives the same numbers for the same images:

- integer pixels are scaled to ``[0, 1]`` (8-bit / 255, 16-bit / 65535);
- ``normalise="dataset"`` uses the per-channel mean and standard deviation of all images,
  computed in one streaming pass (:class:`~xaiscope.data.summaries.Moments`), as
  :func:`~xaiscope.data.readers.normalise_dataset` computes them in memory;
- the dataset fingerprint (:class:`~xaiscope.data.summaries.Fingerprint`) is the same streamed
  or in memory.

Bad images: a source that cannot decode an image raises one :class:`DataError` sentence
naming the file or index; with ``on_bad_image="skip"`` it leaves the image out of every batch
(the same images on every pass, so paired comparisons stay paired) and lists it in
:attr:`Source.skipped`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from xaiscope.data.dataset import Dataset
from xaiscope.data.hashing import array_hash
from xaiscope.data.pixels import scale_pixels
from xaiscope.data.readers import normalise_dataset
from xaiscope.data.summaries import Fingerprint, Moments
from xaiscope.errors import DataError

ON_BAD_IMAGE = ("stop", "skip")


@dataclass
class Batch:
    """One batch of a source: positions ``index`` ``[B]`` in the source, ``ids``, images ``x``
    ``[B, C, H, W]`` float32 (normalised when the source normalises), labels ``y`` ``[B]``,
    expert ``masks`` ``[B, H, W]`` bool or None, ``extra_masks`` by name, per-annotator masks
    ``[B, A, H, W]`` or None, and per image the hash of its pixels as decoded (before
    normalisation)."""

    index: torch.Tensor
    ids: list[str]
    x: torch.Tensor
    y: torch.Tensor
    masks: torch.Tensor | None = None
    extra_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    annotator_masks: torch.Tensor | None = None
    pixel_hashes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Raw:
    """What a source's reader gives for some positions: decoded pixels ``x`` ``[B, C, H, W]``
    float32 in ``[0, 1]`` (or the stored floats), masks as NumPy bool arrays, and ``bad``:
    per position left out, the sentence saying why. ``positions`` are those read."""

    positions: np.ndarray
    x: np.ndarray
    masks: np.ndarray | None = None
    extra_masks: dict[str, np.ndarray] = field(default_factory=dict)
    annotator_masks: np.ndarray | None = None
    bad: dict[int, str] = field(default_factory=dict)


class Source:
    """Images with labels, ids and optional masks, read in batches (see the module docstring).

    Subclasses set ``ids``, ``labels`` (``[N]`` int64), ``classes``, ``shape`` (C, H, W),
    ``mask_names`` (``"masks"`` for expert masks, and the extra masks' names), ``annotators``
    and ``location`` (for messages), and implement :meth:`_read`.
    """

    ids: list[str]
    labels: torch.Tensor
    classes: list[str]
    shape: tuple[int, ...]
    mask_names: tuple[str, ...] = ()
    annotators: list[str] | None = None
    location: str = "the data"
    #: reading many positions at once is cheap (arrays) rather than one file per image
    contiguous_reads: bool = True

    def __init__(self, *, normalise=None, on_bad_image: str = "stop") -> None:
        if on_bad_image not in ON_BAD_IMAGE:
            raise DataError(f"on_bad_image must be 'stop' or 'skip', got {on_bad_image!r}.")
        self.on_bad_image = on_bad_image
        self.skipped: dict[str, str] = {}
        self._normalise = normalise
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self._fingerprint: str | None = None

    # -------------------------------------------------------------- description
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def source(self) -> str:
        return self.location

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_masks(self) -> bool:
        return "masks" in self.mask_names

    @property
    def extra_mask_names(self) -> set[str]:
        return {n for n in self.mask_names if n != "masks"}

    def _read(self, positions: np.ndarray) -> Raw:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def spatial_dims(self) -> int:
        """2 for images ``(C, H, W)``, 3 for volumes ``(C, D, H, W)``."""
        return len(self.shape) - 1

    def affine(self, position: int) -> np.ndarray | None:
        """The voxel-to-world matrix (RAS, mm) of the volume at ``position`` as stored (see
        :mod:`xaiscope.data.volumes`); None for 2D images and sources without geometry."""
        return None

    def affines_of(self, positions: Sequence[int]) -> np.ndarray | None:
        """``[B, 4, 4]`` affines of ``positions``, or None when the source has none."""
        found = [self.affine(int(p)) for p in positions]
        return None if not found or any(a is None for a in found) else np.stack(found)

    # ------------------------------------------------------------ normalising
    def settle_normalisation(self) -> None:
        """Fix ``mean``/``std`` from the ``normalise`` setting: ``"dataset"`` takes one pass
        over the images (:class:`Moments`); a pair is checked; None/"none" leaves the pixels."""
        norm, self._normalise = self._normalise, None
        if norm in (None, "none"):
            return
        c = self.shape[0]
        if norm == "dataset":
            mom = Moments(c)
            for raw in self._raw_batches(256, None):
                mom.update(raw.x)
            if mom.n == 0:
                raise DataError(f"{self.location} has no readable image to compute normalisation statistics from.")
            self.mean, self.std = mom.mean_std()
            return
        if not (isinstance(norm, (tuple, list)) and len(norm) == 2):
            raise DataError(f"normalise must be 'none', 'dataset' or (mean, std); got {norm!r}.")
        mean = np.asarray(norm[0], dtype=np.float32).reshape(-1)
        std = np.asarray(norm[1], dtype=np.float32).reshape(-1)
        if mean.size not in (1, c) or std.size not in (1, c):
            raise DataError(f"Normalisation mean/std need 1 or {c} values.")
        if (std <= 0).any():
            raise DataError("Normalisation std values must be positive.")
        self.mean = np.broadcast_to(mean, (c,)).tolist()
        self.std = np.broadcast_to(std, (c,)).tolist()

    def set_normalisation(self, normalise) -> None:
        """Set the normalisation (``"none"``, ``"dataset"`` or ``(mean, std)``) before any batch is
        read; it is settled with the first batch."""
        if self.mean is not None:
            raise DataError(f"The normalisation of {self.location} is already fixed.")
        self._normalise = normalise

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        if self._normalise is not None:
            self.settle_normalisation()
        if self.mean is None:
            return x
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, *([1] * (x.dim() - 2)))
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, *([1] * (x.dim() - 2)))
        return (x - mean) / std

    # --------------------------------------------------------------- batches
    def _raw_batches(self, batch_size: int, positions: Sequence[int] | None) -> Iterator[Raw]:
        pos = np.arange(len(self)) if positions is None else np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= len(self)):
            raise DataError(f"{self.location} has {len(self)} images; position {int(pos.max())} does not exist.")
        skip = {i for i, id_ in enumerate(self.ids) if id_ in self.skipped} if self.skipped else set()
        if skip:
            pos = np.asarray([p for p in pos.tolist() if p not in skip], dtype=np.int64)
        for start in range(0, len(pos), max(1, int(batch_size))):
            raw = self._read(pos[start : start + batch_size])
            if raw.bad:
                raw = self._drop_bad(raw)
            if len(raw.positions):
                yield raw

    def _drop_bad(self, raw: Raw) -> Raw:
        first = min(raw.bad)
        if self.on_bad_image == "stop":
            raise DataError(raw.bad[first] if raw.bad[first].endswith(".") else raw.bad[first] + ".")
        for p, why in raw.bad.items():
            self.skipped[self.ids[p]] = why
        keep = np.asarray([i for i, p in enumerate(raw.positions.tolist()) if p not in raw.bad], dtype=np.int64)
        return Raw(
            positions=raw.positions[keep],
            x=raw.x[keep],
            masks=None if raw.masks is None else raw.masks[keep],
            extra_masks={k: v[keep] for k, v in raw.extra_masks.items()},
            annotator_masks=None if raw.annotator_masks is None else raw.annotator_masks[keep],
        )

    def batches(self, batch_size: int, positions: Sequence[int] | None = None) -> Iterator[Batch]:
        """Batches of up to ``batch_size`` images at ``positions`` (default: all, in order)."""
        for raw in self._raw_batches(batch_size, positions):
            idx = torch.from_numpy(raw.positions.astype(np.int64))
            yield Batch(
                index=idx,
                ids=[self.ids[i] for i in raw.positions.tolist()],
                x=self._normalised(torch.from_numpy(np.ascontiguousarray(raw.x, dtype=np.float32))),
                y=self.labels[idx],
                masks=None if raw.masks is None else torch.from_numpy(raw.masks.astype(bool)),
                extra_masks={k: torch.from_numpy(v.astype(bool)) for k, v in raw.extra_masks.items()},
                annotator_masks=None if raw.annotator_masks is None else torch.from_numpy(raw.annotator_masks),
                pixel_hashes=[array_hash(raw.x[i]) for i in range(len(raw.positions))],
            )

    def take(self, positions: Sequence[int] | None = None, batch_size: int = 256) -> Dataset:
        """The images at ``positions`` (default: all) as an in-memory :class:`Dataset`."""
        return dataset_of(list(self.batches(batch_size, positions)), self)

    def to_dataset(self) -> Dataset:
        """All images in memory (for jobs that need the whole set at once); read once, also when
        the normalisation statistics come from the images."""
        if self._normalise != "dataset":
            return self.take()
        self._normalise = None
        ds = normalise_dataset(self.take(), "dataset")
        self.mean, self.std = ds.mean, ds.std
        return ds

    def fingerprint(self, batch_size: int = 256, positions: Sequence[int] | None = None) -> str:
        """:class:`Fingerprint` of the readable images (at ``positions``), in one streaming pass."""
        if positions is not None:
            return fingerprint_of(self.batches(batch_size, positions), self.annotators)
        if self._fingerprint is None:
            self._fingerprint = fingerprint_of(self.batches(batch_size), self.annotators)
        return self._fingerprint


def fingerprint_of(batches: Iterable[Batch], annotators: Sequence[str] | None = None) -> str:
    """:class:`Fingerprint` of the images of ``batches`` in their order."""
    f = Fingerprint()
    for b in batches:
        f.update(b.x, b.y, b.ids, b.masks, b.annotator_masks)
    return f.hexdigest(annotators)


def dataset_of(parts: list[Batch], src: "Source") -> Dataset:
    """The batches ``parts`` of ``src`` as one in-memory :class:`Dataset`."""
    if not parts:
        raise DataError(f"{src.location} has no readable image at the positions asked for.")

    def cat(get):
        vals = [get(b) for b in parts]
        return None if vals[0] is None else torch.cat(vals)

    return Dataset(
        x=torch.cat([b.x for b in parts]),
        y=torch.cat([b.y for b in parts]),
        ids=[i for b in parts for i in b.ids],
        classes=list(src.classes),
        masks=cat(lambda b: b.masks),
        extra_masks={k: torch.cat([b.extra_masks[k] for b in parts]) for k in parts[0].extra_masks},
        mean=src.mean,
        std=src.std,
        source=src.location,
        pixel_hashes=[h for b in parts for h in b.pixel_hashes],
        annotator_masks=cat(lambda b: b.annotator_masks),
        annotators=None if src.annotators is None else list(src.annotators),
        affines=src.affines_of([int(i) for b in parts for i in b.index.tolist()]),
    )


class MemorySource(Source):
    """A :class:`Dataset` already in memory, served in batches (its normalisation kept)."""

    def __init__(self, ds: Dataset) -> None:
        super().__init__()
        self.dataset = ds
        self.ids, self.labels, self.classes = list(ds.ids), ds.y.long(), list(ds.classes)
        self.shape = tuple(ds.x.shape[1:])
        self.mask_names = (("masks",) if ds.masks is not None else ()) + tuple(sorted(ds.extra_masks))
        self.annotators = ds.annotators
        self.location = ds.source or "the images given"
        self.mean, self.std = ds.mean, ds.std

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        return x  # the dataset's pixels are already as the model sees them

    def affine(self, position: int) -> np.ndarray | None:
        return None if self.dataset.affines is None else self.dataset.affines[int(position)]

    def batches(self, batch_size: int, positions: Sequence[int] | None = None) -> Iterator[Batch]:
        ds = self.dataset
        pos = torch.arange(len(ds)) if positions is None else torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        hashes = ds.image_hashes()
        for start in range(0, len(pos), max(1, int(batch_size))):
            idx = pos[start : start + batch_size]
            yield Batch(
                index=idx,
                ids=[ds.ids[i] for i in idx.tolist()],
                x=ds.x[idx],
                y=ds.y[idx],
                masks=None if ds.masks is None else ds.masks[idx],
                extra_masks={k: v[idx] for k, v in ds.extra_masks.items()},
                annotator_masks=None if ds.annotator_masks is None else ds.annotator_masks[idx],
                pixel_hashes=[hashes[i] for i in idx.tolist()],
            )

    def to_dataset(self) -> Dataset:
        return self.dataset


def _item_parts(item: Any, where: str) -> tuple[Any, Any, Any, Any]:
    """``(x, y, mask, id)`` of one item of a torch dataset: ``(x, y)``, ``(x, y, mask)`` or a
    dict with keys ``x``/``image``, ``y``/``label``, optional ``mask``/``masks`` and ``id``."""
    if isinstance(item, dict):
        x = item.get("x", item.get("image"))
        y = item.get("y", item.get("label"))
        if x is None or y is None:
            raise DataError(f"The items of {where} are dicts without 'x' (or 'image') and 'y' (or 'label') keys.")
        return x, y, item.get("mask", item.get("masks")), item.get("id")
    if isinstance(item, (tuple, list)) and len(item) in (2, 3):
        return item[0], item[1], item[2] if len(item) == 3 else None, None
    raise DataError(f"The items of {where} must be (x, y), (x, y, mask) or a dict; got {type(item).__name__}.")


def _as_images(x: Any, where: str) -> np.ndarray:
    """Images ``[B, C, H, W]`` float32 in [0, 1] (integers scaled) from a tensor or array batch."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise DataError(f"The images of {where} have shape {list(arr.shape)}; expected [C, H, W] per image.")
    out = scale_pixels(arr, where)
    if not np.isfinite(out).all():
        raise DataError(f"The images of {where} contain NaN or infinite values.")
    return out


class TorchSource(Source):
    """Any ``torch.utils.data.Dataset`` (read by position) or ``DataLoader`` (read in its own
    order, each pass) whose items are ``(x, y)``, ``(x, y, mask)`` or dicts with those keys.

    Opening it takes one pass over the items to learn the labels and the image shape (a
    ``DataLoader`` has no random access); ``classes`` default to ``0 .. max(y)``. Ids are the
    items' ``id`` values when given, else their positions.
    """

    def __init__(self, data, *, classes: Sequence[str] | None = None, normalise=None, on_bad_image="stop") -> None:
        super().__init__(normalise=normalise, on_bad_image=on_bad_image)
        self.data = data
        self.is_loader = isinstance(data, torch.utils.data.DataLoader)
        self.location = f"the {'DataLoader' if self.is_loader else 'torch Dataset'} given"
        ys, ids, has_mask, shape = [], [], None, None
        for x, y, m, id_ in self._items():
            ys.append(y)
            ids.extend(id_)
            has_mask = m is not None if has_mask is None else has_mask
            shape = shape or tuple(x.shape[1:])
        if not ys:
            raise DataError(f"{self.location} holds no items.")
        self.labels = torch.cat(ys)
        self.ids = ids
        if len(set(ids)) != len(ids):
            raise DataError(f"The ids of {self.location} are not unique.")
        top = int(self.labels.max())
        if int(self.labels.min()) < 0:
            raise DataError(f"{self.location} has negative labels.")
        self.classes = [str(c) for c in classes] if classes is not None else [str(k) for k in range(top + 1)]
        if top >= len(self.classes):
            raise DataError(f"{self.location} has label {top} but only {len(self.classes)} classes.")
        self.shape = shape
        self.mask_names = ("masks",) if has_mask else ()
        self.contiguous_reads = self.is_loader

    def _items(self) -> Iterator[tuple[np.ndarray, torch.Tensor, np.ndarray | None, list[str]]]:
        """``(x [B,C,H,W], y [B], masks [B,H,W] or None, ids)`` per batch of the loader, or per item."""
        if self.is_loader:
            pos = 0
            for item in self.data:
                x, y, m, id_ = _item_parts(item, self.location)
                xb = _as_images(x, self.location)
                yield xb, self._labels(y, len(xb)), self._masks(m, xb), self._ids(id_, pos, len(xb))
                pos += len(xb)
            return
        for i in range(len(self.data)):
            yield self._item(i)

    def _item(self, i: int):
        x, y, m, id_ = _item_parts(self.data[i], self.location)
        xb = _as_images(torch.as_tensor(x)[None] if torch.as_tensor(x).dim() >= 2 else x, self.location)
        if xb.shape[0] != 1:
            xb = xb[None, 0]
        mb = None if m is None else np.asarray(torch.as_tensor(m).cpu()).astype(bool).reshape(1, *xb.shape[2:])
        return xb, self._labels(y, 1), mb, self._ids(None if id_ is None else [id_], i, 1)

    def _labels(self, y, n: int) -> torch.Tensor:
        t = torch.as_tensor(y).long().reshape(-1)
        if t.numel() != n:
            raise DataError(f"{self.location} gives {t.numel()} labels for {n} images (one class index per image).")
        return t

    def _masks(self, m, xb: np.ndarray) -> np.ndarray | None:
        if m is None:
            return None
        arr = np.asarray(torch.as_tensor(m).cpu()).astype(bool)
        return arr.reshape(len(xb), *xb.shape[2:])

    def _ids(self, id_, start: int, n: int) -> list[str]:
        if id_ is None:
            return [str(start + k) for k in range(n)]
        return [str(v) for v in (id_ if isinstance(id_, (list, tuple)) else [id_])]

    def _read(self, positions: np.ndarray) -> Raw:
        if not self.is_loader:
            parts = [self._item(int(p)) for p in positions]
            masks = [m for _, _, m, _ in parts]
            return Raw(
                positions=positions,
                x=np.concatenate([x for x, _, _, _ in parts]),
                masks=None if masks[0] is None else np.concatenate(masks),
            )
        raise AssertionError("a DataLoader is read through batches()")  # pragma: no cover

    def _raw_batches(self, batch_size: int, positions: Sequence[int] | None) -> Iterator[Raw]:
        if not self.is_loader:
            yield from super()._raw_batches(batch_size, positions)
            return
        want = None if positions is None else set(np.asarray(positions).reshape(-1).tolist())
        if positions is not None and list(positions) != sorted(set(positions)):
            raise DataError("A DataLoader is read in its own order; ask for positions in increasing order.")
        xs, ms, ps, pos = [], [], [], 0
        for xb, _, mb, _ in self._items():
            sel = np.arange(len(xb)) if want is None else np.asarray([k for k in range(len(xb)) if pos + k in want])
            if len(sel):
                xs.append(xb[sel])
                ms.append(None if mb is None else mb[sel])
                ps.append(pos + sel)
            pos += len(xb)
            while sum(len(p) for p in ps) >= batch_size:
                yield self._cut(xs, ms, ps, batch_size)
        while ps and sum(len(p) for p in ps):
            yield self._cut(xs, ms, ps, batch_size)

    @staticmethod
    def _cut(xs: list, ms: list, ps: list, n: int) -> Raw:
        x, p = np.concatenate(xs), np.concatenate(ps)
        m = None if ms[0] is None else np.concatenate(ms)
        xs[:] = [x[n:]] if len(x) > n else []
        ps[:] = [p[n:]] if len(p) > n else []
        ms[:] = [None if m is None else m[n:]] if len(x) > n else []
        return Raw(positions=p[:n], x=x[:n], masks=None if m is None else m[:n])


def from_tensors(x, y, masks=None, *, ids: Iterable[str] | None = None, classes=None, normalise=None) -> Source:
    """A source of plain tensors or arrays: images ``[N, C, H, W]`` (or ``[N, H, W]``; integer
    pixels scaled to [0, 1]), labels ``[N]``, optional masks ``[N, H, W]``."""
    xa = _as_images(x, "the images given")
    y_t = torch.as_tensor(np.asarray(y)).long().reshape(-1)
    n = len(xa)
    ds = Dataset(
        x=torch.from_numpy(xa),
        y=y_t,
        ids=[str(i) for i in ids] if ids is not None else [str(i) for i in range(n)],
        classes=[str(c) for c in classes] if classes is not None else [str(k) for k in range(int(y_t.max()) + 1)],
        masks=None if masks is None else torch.as_tensor(np.asarray(masks)).bool(),
        source="the images given",
    )
    return MemorySource(normalise_dataset(ds, normalise))
