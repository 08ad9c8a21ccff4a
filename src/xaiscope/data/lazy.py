"""Sources on disk, read lazily: image folders, HDF5, Zarr, NPZ and MedMNIST files.

:func:`open_source` opens a path (or a Python object, see :mod:`xaiscope.data.sources`).

Layouts
-------
- **Image folder** ``root/<class>/<id>.<ext>`` with optional masks (see
  :mod:`xaiscope.data.readers`): listed when opened, each image decoded when its batch is
  asked for, by ``workers`` processes of a ``torch.utils.data.DataLoader`` (0: in this
  process).
- **HDF5** (``.h5``, ``.hdf5``; h5py) and **Zarr** groups (``.zarr``): named arrays ``x``,
  ``y`` and optional ``masks`` (other names with ``x_key``, ``y_key``, ``mask_key``), ``ids``,
  ``classes``, ``annotators``; slices are read from disk per batch.
  PatchCamelyon stores images and labels in two files (``..._x.h5`` holding ``x``,
  ``..._y.h5`` holding ``y`` of shape ``[N, 1, 1, 1]``): pointed at the images' file, the
  labels' file beside it is found.
- **NPZ**: the same named arrays; or the **MedMNIST** layout (``train_images``,
  ``train_labels``, ``val_*``, ``test_*``; ``split`` picks one, default ``test``; labels
  ``[N, 1]`` squeezed; multi-label sets such as ChestMNIST and the 3D sets refused). NumPy
  cannot memory-map the members of an ``.npz``, so the split is read whole:
  ``xaiscope convert`` turns any source into a chunked Zarr store, the fast path for large
  studies.

Images may be ``[N, C, H, W]``, ``[N, H, W]`` or channels-last ``[N, H, W, C]`` (C of 1, 3
or 4 and H, W larger, as PatchCamelyon and MedMNIST store them); unsigned 8/16-bit pixels are
scaled to ``[0, 1]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from xaiscope.data.dataset import Dataset, majority_vote
from xaiscope.data.pixels import scale_pixels
from xaiscope.data.readers import (
    _MAX_PIXELS,
    IMAGE_EXTENSIONS,
    RESERVED,
    ZARR_IMAGE_SUFFIX,
    _resize,
    read_image,
    read_mask,
)
from xaiscope.data.sources import MemorySource, Raw, Source, TorchSource, from_tensors
from xaiscope.data.volumes import is_dicom_series, is_nifti, nifti_stem, resized_affine, volume_geometry
from xaiscope.errors import DataError

MEDMNIST_SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------ folders
def _list_images(folder: Path) -> list[Path]:
    """Image files (PNG, JPEG, TIFF), OME-Zarr image folders (``<id>.ome.zarr``) and volumes
    (NIfTI ``<id>.nii[.gz]``, DICOM series folders ``<id>/``) in ``folder``."""
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and (
            (p.is_file() and (p.suffix.lower() in IMAGE_EXTENSIONS or is_nifti(p)))
            or (p.is_dir() and (p.suffix.lower() == ZARR_IMAGE_SUFFIX or is_dicom_series(p)))
        )
    )


def _stem(p: Path) -> str:
    """The id part of an image file name (``img.png``, ``img.ome.zarr``, ``img.nii.gz`` and a
    DICOM series folder ``img/`` give ``img``)."""
    if is_nifti(p):
        return nifti_stem(p.name)
    if p.is_dir() and p.suffix.lower() != ZARR_IMAGE_SUFFIX:
        return p.name
    name = p.name[: -len(p.suffix)] if p.suffix else p.name
    return name[:-4] if p.suffix.lower() == ZARR_IMAGE_SUFFIX and name.lower().endswith(".ome") else name


def _annotator_folders(folder: Path, classes: Sequence[str]) -> list[str] | None:
    """The annotator names when ``folder`` (``root/masks``) is laid out ``<annotator>/<class>/<id>.png``,
    None when it is ``<class>/<id>.png``; a mixture of the two is an error."""
    subs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = [d for d in subs if d.name in classes or _list_images(d)]
    per_annotator = [
        d for d in subs if d not in per_class and any(c.is_dir() and c.name in classes for c in d.iterdir())
    ]
    if not per_annotator:
        return None
    if per_class:
        raise DataError(
            f"The mask folder {folder} mixes class folders ({per_class[0].name}) and annotator folders "
            f"({per_annotator[0].name}); use masks/<class>/<id>.png or masks/<annotator>/<class>/<id>.png."
        )
    return [d.name for d in per_annotator]


def _mask_files(folder: Path, files: list[Path], ids: list[str], images: Path) -> list[Path | str]:
    """Per image (in order) its mask file in ``folder`` (``<class>/<stem>.<ext>``); every mask
    needs an image (else one sentence now); an image without a mask gets the sentence saying
    so in place of the path, raised when that image is read (after the image itself)."""
    wanted = dict(zip(ids, files))
    present = {}
    for cdir in sorted(d for d in folder.iterdir() if d.is_dir()):
        for mp in _list_images(cdir):
            key = f"{cdir.name}/{_stem(mp)}"
            if key not in wanted:
                raise DataError(f"The mask {mp} has no matching image {images / cdir.name / _stem(mp)}.*.")
            present[key] = mp
    return [present.get(i, f"The image {wanted[i]} has no mask in {folder}; every image needs one.") for i in ids]


class _FolderItems(torch.utils.data.Dataset):
    """Decodes one image (and its masks) per position; a failure becomes a sentence, not an
    exception, so a worker process never dies on a bad file."""

    def __init__(self, src: "FolderSource") -> None:
        self.files, self.mask_files, self.resize = src.files, src.mask_files, src.resize
        self.shape, self.first, self.limit = src.shape, src.first_file, src.limit

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, p: int):
        try:
            arr = read_image(self.files[p], max_pixels=self.limit)
            if self.resize is not None:
                if len(self.resize) != arr.ndim - 1:
                    kind, need = ("volume", "D,H,W") if arr.ndim == 4 else ("2D image", "H,W")
                    raise DataError(
                        f"The image {self.files[p]} is a {kind}; resizing it needs {need}, "
                        f"got {','.join(str(v) for v in self.resize)}."
                    )
                arr = _resize(arr, tuple(self.resize), order=1)
            if self.shape is not None and arr.shape != self.shape:
                raise DataError(self._mismatch(self.files[p], arr.shape))
            masks = {}
            for name, paths in self.mask_files.items():
                masks[name] = np.stack([self._mask(mp, arr.shape[1:]) for mp in paths[p]])
            return p, arr, masks, None
        except DataError as e:
            return p, None, None, str(e)

    def _mismatch(self, path: Path, shape) -> str:
        if len(shape) != len(self.shape):
            kinds = {3: "a 2D image", 4: "a volume"}
            return (
                f"The image {path} is {kinds.get(len(shape), 'an image')} but {self.first} is "
                f"{kinds.get(len(self.shape), 'an image')}; a folder holds either 2D images or volumes."
            )
        c = self.shape[0]
        if shape[0] != c:
            return (
                f"The image {path} has {shape[0]} channel(s) but {self.first} has {c}; convert them to one colour mode."
            )
        have, want = ("x".join(str(v) for v in t[1:][::-1]) for t in (shape, self.shape))
        return (
            f"The image {path} is {have} but {self.first} is {want}; "
            "pass a resize option to use images of different sizes."
        )

    def _mask(self, path: Path | str, hw) -> np.ndarray:
        if isinstance(path, str):
            raise DataError(path)
        m = read_mask(path)
        if self.resize is not None:
            m = _resize(m[None].astype(np.float32), tuple(self.resize), order=0)[0] > 0.5
        if m.shape != tuple(hw):
            have, want = ("x".join(str(v) for v in t[::-1]) for t in (m.shape, tuple(hw)))
            raise DataError(f"The mask {path} is {have} but its image is {want}.")
        return m


def _collate(items):
    return items


class FolderSource(Source):
    """``root/<class>/<id>.<ext>`` images with optional masks, decoded per batch.

    ``masks``: ``"auto"`` reads masks when ``root/masks`` exists, ``"required"`` fails
    without them, ``"none"`` ignores them. ``classes`` in label order (default: the sorted
    subfolder names). ``resize`` (H, W) resizes images (bilinear) and masks (nearest).
    ``workers`` decoding processes (0: in this process). ``max_pixels`` guards against
    decompression bombs (default: the current limit).
    """

    contiguous_reads = False

    def __init__(
        self,
        root,
        *,
        resize=None,
        normalise=None,
        masks: str = "auto",
        classes: Sequence[str] | None = None,
        workers: int = 0,
        max_pixels: int | None = None,
        on_bad_image: str = "stop",
    ) -> None:
        super().__init__(normalise=normalise, on_bad_image=on_bad_image)
        root = Path(root)
        if masks not in ("auto", "required", "none"):
            raise DataError(f"masks must be 'auto', 'required' or 'none', got {masks!r}.")
        if int(workers) < 0:
            raise DataError(f"workers must be 0 or more, got {workers}.")
        if not root.exists():
            raise DataError(f"The data folder {root} does not exist.")
        if not root.is_dir():
            raise DataError(f"The data path {root} is not a folder.")
        self.root, self.location, self.resize, self.workers = root, str(root), resize, int(workers)
        self.limit = _MAX_PIXELS.get() if max_pixels is None else int(max_pixels)
        found = sorted(
            p.name for p in root.iterdir() if p.is_dir() and p.name not in RESERVED and not p.name.startswith(".")
        )
        if classes is None:
            classes = found
        missing = [c for c in classes if c not in found]
        if missing:
            raise DataError(f"The data folder {root} has no class folder {missing[0]!r}.")
        listed = [(k, c, p) for k, c in enumerate(classes) for p in _list_images(root / c)]
        if not listed:
            raise DataError(f"The data folder {root} contains no images (expected {root}/<class>/<id>.png).")
        self.classes = list(classes)
        self.files = [p for _, _, p in listed]
        self.ids = [f"{c}/{_stem(p)}" for _, c, p in listed]
        self.labels = torch.tensor([k for k, _, _ in listed], dtype=torch.long)
        self.mask_files: dict[str, list[list[Path]]] = {}
        for folder, key in RESERVED.items():
            if masks == "none" or not (root / folder).is_dir():
                continue
            names = _annotator_folders(root / folder, classes) if key == "masks" else None
            if names:
                self.annotators = names
                per = [_mask_files(root / folder / a, self.files, self.ids, root) for a in names]
                self.mask_files["annotators"] = [list(ms) for ms in zip(*per)]
            else:
                self.mask_files[key] = [[p] for p in _mask_files(root / folder, self.files, self.ids, root)]
        has_expert = "masks" in self.mask_files or "annotators" in self.mask_files
        if masks == "required" and not has_expert:
            raise DataError(f"Masks are required but {root}/masks does not exist.")
        self.mask_names = (("masks",) if has_expert else ()) + tuple(
            sorted(k for k in self.mask_files if k not in ("masks", "annotators"))
        )
        self.shape, self.first_file = None, self.files[0]
        _, first, _, why = _FolderItems(self)[0]
        if why is not None:
            raise DataError(why)
        self.shape = first.shape
        self._affines: dict[int, np.ndarray] = {}

    def affine(self, position: int) -> np.ndarray | None:
        """The affine of a volume (header only; updated for ``resize``); None for 2D images."""
        if len(self.shape) != 4:
            return None
        if position not in self._affines:
            native, aff = volume_geometry(self.files[position])
            if self.resize is not None:
                aff = resized_affine(aff, native, tuple(self.resize))
            self._affines[position] = aff
        return self._affines[position]

    def _raw_batches(self, batch_size: int, positions: Sequence[int] | None) -> Iterator[Raw]:
        pos = np.arange(len(self)) if positions is None else np.asarray(positions, dtype=np.int64).reshape(-1)
        if self.skipped:
            pos = np.asarray([p for p in pos.tolist() if self.ids[p] not in self.skipped], dtype=np.int64)
        if not len(pos):
            return
        loader = torch.utils.data.DataLoader(
            _FolderItems(self),
            batch_size=max(1, int(batch_size)),
            sampler=pos.tolist(),
            num_workers=self.workers,
            collate_fn=_collate,
        )
        for items in loader:
            raw = self._assemble(items)
            if raw.bad:
                raw = self._drop_bad(raw)
            if len(raw.positions):
                yield raw

    def _assemble(self, items) -> Raw:
        """The decoded items of one batch, in order; a bad item holds zeros and its sentence."""
        x = np.zeros((len(items), *self.shape), np.float32)
        masks = {k: np.zeros((len(items), len(v[0]), *self.shape[1:]), bool) for k, v in self.mask_files.items()}
        bad = {}
        for k, (p, arr, ms, why) in enumerate(items):
            if why is not None:
                bad[p] = why
                continue
            x[k] = arr
            for name, m in ms.items():
                masks[name][k] = m
        ann = masks.pop("annotators", None)
        expert = masks.pop("masks", None)
        expert = (
            expert[:, 0]
            if expert is not None
            else None
            if ann is None
            else majority_vote(torch.from_numpy(ann)).numpy()
        )
        return Raw(
            positions=np.asarray([it[0] for it in items], dtype=np.int64),
            x=x,
            masks=expert,
            extra_masks={k: v[:, 0] for k, v in masks.items()},
            annotator_masks=ann,
            bad=bad,
        )


# ------------------------------------------------------------------ arrays
def _is_channels_last(shape: tuple) -> bool:
    return len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4)


def _read_rows(arr, positions: np.ndarray) -> np.ndarray:
    """Rows ``positions`` of an array on disk (h5py, Zarr) or in memory: one slice when they
    are consecutive, else the sorted rows gathered and put back in the order asked."""
    if len(positions) and np.all(np.diff(positions) == 1):
        return np.asarray(arr[int(positions[0]) : int(positions[-1]) + 1])
    order = np.argsort(positions, kind="stable")
    uniq, inverse = np.unique(positions[order], return_inverse=True)
    if isinstance(arr, np.ndarray):
        rows = arr[uniq]
    elif hasattr(arr, "oindex"):
        rows = np.asarray(arr.oindex[uniq])
    else:
        rows = np.asarray(arr[uniq.tolist()])
    out = np.empty((len(positions), *rows.shape[1:]), rows.dtype)
    out[order] = rows[inverse]
    return out


def _strings(a) -> list[str]:
    arr = np.asarray(a[()] if hasattr(a, "shape") and not isinstance(a, np.ndarray) else a).reshape(-1)
    return [v.decode() if isinstance(v, bytes) else str(v) for v in arr.tolist()]


def _labels(y: np.ndarray, n: int, where: str, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim > 1 and y.shape[0] == n and int(np.prod(y.shape[1:])) == 1:
        y = y.reshape(n)
    elif y.ndim == 2 and y.shape[0] == n:
        raise DataError(
            f"The labels {name!r} in {where} have {y.shape[1]} columns: a multi-label set, which needs "
            "multi-label targets that xaiscope does not support yet; use a single-label set."
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != n:
        raise DataError(f"The array {name!r} in {where} must hold {n} integer labels.")
    if len(y) and (y < 0).any():
        raise DataError(f"The array {name!r} in {where} has negative labels.")
    return y.astype(np.int64)


class ArraySource(Source):
    """Images, labels and masks in named arrays (on disk or in memory), read in row slices.

    ``arrays`` maps names to array-likes (NumPy, h5py datasets, Zarr arrays); ``x``, ``y``
    and ``masks`` are read under ``x_key``, ``y_key``, ``mask_key``. ``keep`` holds open
    files until the source is dropped.
    """

    def __init__(
        self,
        arrays: dict[str, Any],
        where: str,
        *,
        x_key: str = "x",
        y_key: str = "y",
        mask_key: str = "masks",
        normalise=None,
        on_bad_image: str = "stop",
        keep: Any = None,
    ) -> None:
        super().__init__(normalise=normalise, on_bad_image=on_bad_image)
        self.location, self._keep = where, keep
        for key in (x_key, y_key):
            if key not in arrays:
                raise DataError(f"The data file {where} has no array {key!r}.")
        self.x_arr, shape = arrays[x_key], tuple(arrays[x_key].shape)
        self.channels_last = _is_channels_last(shape)
        if len(shape) == 3:
            shape = (shape[0], 1, *shape[1:])
        elif self.channels_last:
            shape = (shape[0], shape[3], shape[1], shape[2])
        if len(shape) != 4:
            raise DataError(
                f"The array {x_key!r} in {where} has shape {list(arrays[x_key].shape)}; "
                "expected [N, C, H, W], [N, H, W] or [N, H, W, C]."
            )
        dtype = np.dtype(self.x_arr.dtype)
        if not np.issubdtype(dtype, np.number) and dtype.kind != "b" or np.issubdtype(dtype, np.complexfloating):
            raise DataError(f"The array {x_key!r} in {where} has unsupported type {dtype}.")
        if 0 in shape:
            raise DataError(f"The array {x_key!r} in {where} has shape {list(shape)}; it holds no image pixels.")
        n, self.shape, self.x_key = shape[0], tuple(shape[1:]), x_key
        self.ids = _strings(arrays["ids"]) if "ids" in arrays else [str(i) for i in range(n)]
        if len(self.ids) != n or len(set(self.ids)) != n:
            raise DataError(f"The array 'ids' in {where} must hold {n} unique ids.")
        y = _labels(
            np.asarray(arrays[y_key][()] if not isinstance(arrays[y_key], np.ndarray) else arrays[y_key]),
            n,
            where,
            y_key,
        )
        self.labels = torch.from_numpy(y)
        top = int(y.max()) if len(y) else 0
        self.classes = _strings(arrays["classes"]) if "classes" in arrays else [str(c) for c in range(top + 1)]
        if top >= len(self.classes):
            raise DataError(f"The array {y_key!r} in {where} has label {top} but only {len(self.classes)} classes.")
        self.mask_arr, self.mask_key = arrays.get(mask_key), mask_key
        if self.mask_arr is not None:
            self._check_masks(tuple(self.mask_arr.shape), arrays)
            self.mask_names = ("masks",)
        elif "annotators" in arrays:
            raise DataError(f"The data file {where} names annotators but its {mask_key!r} array is not [N, A, H, W].")

    def _check_masks(self, ms: tuple, arrays) -> None:
        n, (_, h, w) = len(self.ids), self.shape
        self.per_annotator = len(ms) == 4
        if self.per_annotator:
            if ms[0] != n or ms[2:] != (h, w):
                raise DataError(
                    f"The array {self.mask_key!r} in {self.location} has shape {list(ms)} but the images need "
                    f"[{n}, annotators, {h}, {w}]."
                )
            names = _strings(arrays["annotators"]) if "annotators" in arrays else [str(a) for a in range(ms[1])]
            if len(names) != ms[1]:
                raise DataError(
                    f"The array 'annotators' in {self.location} names {len(names)} annotators but "
                    f"{self.mask_key!r} holds {ms[1]}."
                )
            self.annotators = names
        elif "annotators" in arrays:
            raise DataError(
                f"The data file {self.location} names annotators but its {self.mask_key!r} array is not [N, A, H, W]."
            )
        elif ms != (n, h, w):
            raise DataError(
                f"The array {self.mask_key!r} in {self.location} has shape {list(ms)} but the images need {[n, h, w]}."
            )

    def _rows(self, arr, positions: np.ndarray, bad: dict[int, str]) -> np.ndarray:
        """Rows ``positions`` of ``arr``; when the slice cannot be read (a corrupt chunk), row by
        row, each unreadable row zeros and its sentence in ``bad``."""
        try:
            return _read_rows(arr, positions)
        except Exception:
            pass
        rows, first = [], None
        for p in positions.tolist():
            try:
                rows.append(np.asarray(arr[p : p + 1]))
                first = rows[-1] if first is None else first
            except Exception as e:
                bad[p] = (
                    f"The image at index {p} ({self.ids[p]!r}) of {self.location} cannot be read ({type(e).__name__})."
                )
                rows.append(None)
        if first is None:
            first = np.zeros((1, *arr.shape[1:]), dtype=arr.dtype)
        return np.concatenate([np.zeros_like(first) if r is None else r for r in rows])

    def _read(self, positions: np.ndarray) -> Raw:
        bad: dict[int, str] = {}
        x = self._rows(self.x_arr, positions, bad)
        if x.ndim == 3:
            x = x[:, None]
        elif self.channels_last:
            x = x.transpose(0, 3, 1, 2)
        x = scale_pixels(x, self.location)
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        for k in np.flatnonzero(~finite).tolist():
            bad.setdefault(
                int(positions[k]),
                f"The image {self.ids[positions[k]]!r} in {self.location} contains NaN or infinite values",
            )
        masks = ann = None
        if self.mask_arr is not None:
            m = self._rows(self.mask_arr, positions, bad)
            if m.dtype != bool and not np.isin(np.unique(m), [0, 1]).all():
                raise DataError(f"The array {self.mask_key!r} in {self.location} is not binary.")
            m = m.astype(bool)
            ann, masks = (m, majority_vote(torch.from_numpy(m)).numpy()) if self.per_annotator else (None, m)
        return Raw(positions=positions, x=x, masks=masks, annotator_masks=ann, bad=bad)


def _medmnist(z, path: Path, split: str | None) -> dict[str, np.ndarray] | None:
    """The arrays of one MedMNIST split as ``x``/``y`` (None when ``z`` is not that layout)."""
    if not any(f"{s}_images" in z.files for s in MEDMNIST_SPLITS):
        return None
    split = split or "test"
    if split not in MEDMNIST_SPLITS or f"{split}_images" not in z.files:
        have = [s for s in MEDMNIST_SPLITS if f"{s}_images" in z.files]
        raise DataError(f"The MedMNIST file {path} has no split {split!r}; it has {', '.join(have)}.")
    x = z[f"{split}_images"]
    if x.ndim == 4 and x.shape[-1] not in (1, 3):
        raise DataError(
            f"The MedMNIST file {path} holds volumes {list(x.shape[1:])} (a 3D set), which xaiscope does not read yet."
        )
    return {"x": x, "y": z[f"{split}_labels"]}


def _open_npz(path: Path, split: str | None, keys: dict, **kw) -> Source:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = _medmnist(z, path, split)
            if arrays is None:
                if split is not None:
                    raise DataError(f"--split applies to MedMNIST files; {path} is not one (no '<split>_images').")
                arrays = {k: z[k] for k in z.files}
            else:
                keys = {}
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"The data file {path} is not a readable NPZ file ({type(e).__name__}).") from None
    return ArraySource(arrays, str(path), **keys, **kw)


def _open_zarr(path: Path, keys: dict, **kw) -> Source:
    try:
        import zarr

        group = zarr.open_group(str(path), mode="r")
        arrays = {k: group[k] for k in group.array_keys()}
    except Exception as e:
        raise DataError(f"The data path {path} is not a readable Zarr group ({type(e).__name__}).") from None
    for k in ("ids", "classes", "annotators"):
        if k in arrays:
            arrays[k] = np.asarray([str(v) for v in np.asarray(arrays[k][...]).reshape(-1).tolist()])
    return ArraySource(arrays, str(path), **keys, **kw)


def _open_hdf5(path: Path, keys: dict, **kw) -> Source:
    try:
        import h5py
    except ImportError:
        raise DataError(f"Reading {path} needs h5py; install it with: pip install 'xaiscope[hdf5]'.") from None
    try:
        f = h5py.File(path, "r")
        arrays = {k: f[k] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        keep = [f]
        y_key = keys.get("y_key", "y")
        if y_key not in arrays and path.stem.endswith("_x"):  # PatchCamelyon: labels in ..._y.h5
            ypath = path.with_name(path.stem[:-2] + "_y" + path.suffix)
            if ypath.exists():
                fy = h5py.File(ypath, "r")
                keep.append(fy)
                arrays[y_key] = fy[y_key if y_key in fy else next(iter(fy.keys()))][()]
    except Exception as e:
        raise DataError(f"The data file {path} is not a readable HDF5 file ({type(e).__name__}).") from None
    for k in ("ids", "classes", "annotators"):
        if k in arrays:
            arrays[k] = np.asarray(_strings(arrays[k]))
    return ArraySource(arrays, str(path), keep=keep, **keys, **kw)


ARRAY_SUFFIXES = (".npz", ".zarr", ".h5", ".hdf5")


def open_source(
    data,
    *,
    normalise=None,
    resize=None,
    masks: str = "auto",
    classes: Sequence[str] | None = None,
    workers: int = 0,
    split: str | None = None,
    x_key: str = "x",
    y_key: str = "y",
    mask_key: str = "masks",
    max_pixels: int | None = None,
    on_bad_image: str = "stop",
) -> Source:
    """A :class:`~xaiscope.data.sources.Source` of ``data``: a folder or file path (see the
    module docstring), a :class:`~xaiscope.data.dataset.Dataset`, a torch ``Dataset`` or
    ``DataLoader``, a source (returned as is), or a pair ``(x, y)`` / triple ``(x, y, masks)``
    of tensors or arrays."""
    if isinstance(data, Source):
        return data
    if isinstance(data, Dataset):
        return MemorySource(data)
    if isinstance(data, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
        return TorchSource(data, classes=classes, normalise=normalise, on_bad_image=on_bad_image)
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and not isinstance(data[0], (str, Path)):
        return from_tensors(*data, classes=classes, normalise=normalise)
    path = Path(data)
    suffix = path.suffix.lower()
    keys = {"x_key": x_key, "y_key": y_key, "mask_key": mask_key}
    kw = {"normalise": normalise, "on_bad_image": on_bad_image}
    if suffix not in ARRAY_SUFFIXES:
        if split is not None:
            raise DataError(f"--split applies to MedMNIST .npz files, not to the folder {path}.")
        return FolderSource(
            path, resize=resize, masks=masks, classes=classes, workers=workers, max_pixels=max_pixels, **kw
        )
    if resize is not None:
        raise DataError(f"--resize applies to image folders; the arrays in {path} are used at their stored size.")
    if not path.exists():
        raise DataError(f"The data file {path} does not exist.")
    if suffix == ".npz":
        return _open_npz(path, split, keys, **kw)
    if split is not None:
        raise DataError(f"--split applies to MedMNIST .npz files, not to {path}.")
    return _open_zarr(path, keys, **kw) if suffix == ".zarr" else _open_hdf5(path, keys, **kw)


# ------------------------------------------------------------- in memory
def load_folder(
    root,
    *,
    resize: tuple[int, int] | None = None,
    normalise: str | tuple | None = None,
    masks: str = "auto",
    classes: Sequence[str] | None = None,
    max_pixels: int | None = None,
) -> Dataset:
    """Read ``root/<class>/<id>.<ext>`` images (and masks) into a :class:`Dataset` (all of them
    in memory; :class:`FolderSource` for the settings).

    ``normalise``: ``"none"`` | ``"dataset"`` | ``(mean, std)``; without ``resize`` all images
    must have the same size."""
    src = FolderSource(root, resize=resize, normalise=normalise, masks=masks, classes=classes, max_pixels=max_pixels)
    return src.to_dataset()


def load_npz(path, *, normalise: str | tuple | None = None, split: str | None = None) -> Dataset:
    """Read an NPZ with ``x`` ([N,C,H,W], [N,H,W] or [N,H,W,C]), ``y`` ([N]) and optional
    ``masks``, ``ids``, ``classes``, or a MedMNIST split, into memory."""
    return open_source(Path(path), normalise=normalise, split=split).to_dataset()


def load_zarr(path, *, normalise: str | tuple | None = None) -> Dataset:
    """Read a Zarr group holding the arrays of :func:`load_npz` (``masks`` ``[N, H, W]`` or
    ``[N, A, H, W]`` with optional ``annotators``) into memory."""
    return open_source(Path(path), normalise=normalise).to_dataset()


def load_hdf5(path, *, normalise: str | tuple | None = None) -> Dataset:
    """Read an HDF5 file (``.h5``, ``.hdf5``) whose root datasets are the arrays of
    :func:`load_npz` into memory. Needs h5py (``pip install 'xaiscope[hdf5]'``)."""
    return open_source(Path(path), normalise=normalise).to_dataset()


def load(path, **kwargs) -> Dataset:
    """Read a folder, an ``.npz``, a ``.zarr`` group or an HDF5 file into memory (settings of
    :func:`open_source`; those of folders are ignored for array files)."""
    if Path(path).suffix.lower() in ARRAY_SUFFIXES:
        for key in ("resize", "masks", "classes", "max_pixels", "workers"):
            kwargs.pop(key, None)
    return open_source(Path(path), **kwargs).to_dataset()
