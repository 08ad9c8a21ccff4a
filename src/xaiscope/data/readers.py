"""Readers for user data: class-per-folder images (PNG, JPEG, TIFF) and NPZ files.

Folder layout::

    root/<class>/<id>.png              images (8/16-bit, gray or RGB; also .jpg, .tif)
    root/masks/<class>/<id>.png        optional expert masks (binary), same size
    root/masks/<annotator>/<class>/<id>.png
                                       or one mask set per annotator (several experts)
    root/confounder_masks/<class>/...  optional second mask set (benchmark confounders)
    root/true_masks/<class>/...        optional true masks beside annotators' (benchmark)

The annotator layout is recognised when the folders under ``masks/`` hold no mask files
themselves but class folders; then every annotator needs a mask for every image, and
:attr:`Dataset.masks` is their majority vote (:func:`~xaiscope.data.dataset.majority_vote`).
NPZ files, Zarr groups (``.zarr``) and HDF5 files (``.h5``, ``.hdf5``) give several annotators as ``masks`` of shape
``[N, A, H, W]`` with optional names in ``annotators``.

``masks``, ``confounder_masks`` and ``true_masks`` are reserved names, never classes. Pixel values
are scaled to ``[0, 1]`` (8-bit / 255, 16-bit / 65535; float TIFF kept as is).

Decoding is guarded: an image whose header announces more than the pixel limit
(:data:`DEFAULT_MAX_IMAGE_PIXELS`, Pillow's own default; raised with
:func:`max_image_pixels` or the readers' ``max_pixels``) is refused before it is
decoded, because a small compressed file can expand to gigabytes (a decompression
bomb). Any decoder failure is a :class:`~xaiscope.errors.DataError` naming the file.

Every reader records per image a hash of its pixels as decoded (after resizing, before
normalisation) in :attr:`Dataset.pixel_hashes`, so a changed image can be recognised.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from xaiscope.data.dataset import Dataset
from xaiscope.data.hashing import array_hash
from xaiscope.errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
RESERVED = {"masks": "masks", "confounder_masks": "confounder", "true_masks": "truth"}

#: most pixels (height x width) an image may have to be decoded: Pillow's default guard
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_MAX_PIXELS: contextvars.ContextVar[int] = contextvars.ContextVar("max_image_pixels", default=DEFAULT_MAX_IMAGE_PIXELS)


@contextlib.contextmanager
def max_image_pixels(limit: int | None) -> Iterator[int]:
    """Within the block, images of up to ``limit`` pixels are decoded (None keeps the current limit)."""
    if limit is None:
        yield _MAX_PIXELS.get()
        return
    if int(limit) < 1:
        raise DataError(f"The image pixel limit must be at least 1, got {limit}.")
    token = _MAX_PIXELS.set(int(limit))
    try:
        yield int(limit)
    finally:
        _MAX_PIXELS.reset(token)


def _too_large(path: Path, pixels: int | None, limit: int) -> DataError:
    have = f"has {pixels:,} pixels" if pixels else "has too many pixels"
    need = f"{pixels}" if pixels else "N"
    return DataError(
        f"The image {path} {have}, more than the limit of {limit:,} that guards against decompression bombs; "
        f"pass --max-image-pixels {need} (or more) if you trust it."
    )


@contextlib.contextmanager
def _pillow_limit(limit: int) -> Iterator[None]:
    """Pillow's own guard set to ``limit`` (its warning silenced: :func:`read_image` checks the size itself)."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _tiff_array(path: Path, limit: int) -> np.ndarray:
    import tifffile

    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.ERROR)  # its warnings about a damaged file become our one sentence
    try:
        with tifffile.TiffFile(path) as tf:
            shape = tuple(tf.series[0].shape) if tf.series else ()
            if not shape or 0 in shape:
                raise DataError(f"The image {path} cannot be read; it holds no image data (a damaged TIFF file?).")
            spatial = shape[:-1] if len(shape) == 3 and shape[-1] in (1, 3, 4) else shape
            pixels = int(np.prod(spatial, dtype=np.int64))
            if pixels > limit:
                raise _too_large(path, pixels, limit)
            return tf.asarray()
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"The image {path} cannot be decoded: it does not fit in memory.") from None
    except Exception as e:
        raise DataError(f"The image {path} cannot be read ({type(e).__name__}).") from None
    finally:
        log.setLevel(level)


def _pillow_array(path: Path, limit: int) -> np.ndarray:
    try:
        with _pillow_limit(limit), Image.open(path) as im:
            pixels = im.size[0] * im.size[1]
            if pixels > limit:
                raise _too_large(path, pixels, limit)
            im.load()
            if im.mode in ("P", "LA", "PA", "CMYK", "YCbCr", "HSV", "1"):
                im = im.convert("RGBA" if im.mode in ("P", "PA") else "RGB" if im.mode != "1" else "L")
            return np.asarray(im)
    except DataError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's guard (a size found while decoding)
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(path, int(found.group(1)) if found else None, limit) from None
    except MemoryError:
        raise DataError(f"The image {path} cannot be decoded: it does not fit in memory.") from None
    except Exception as e:  # any decoder failure: not an image, truncated, corrupt data
        raise DataError(
            f"The image {path} cannot be read; it is not a valid image or it is truncated ({str(e) or type(e).__name__})."
        ) from None


def read_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read one image as float32 ``[C, H, W]`` scaled to ``[0, 1]`` (C is 1 or 3).

    Images with more than ``max_pixels`` pixels (default: the current limit, see
    :func:`max_image_pixels`) are refused before they are decoded.
    """
    path = Path(path)
    limit = _MAX_PIXELS.get() if max_pixels is None else int(max_pixels)
    if path.suffix.lower() in {".tif", ".tiff"}:
        arr = _tiff_array(path, limit)
    else:
        arr = _pillow_array(path, limit)
    return _to_chw(arr, path)


def _to_chw(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype in (np.uint16, np.dtype(">u2"), np.dtype("<u2")):
        out = arr.astype(np.float32) / 65535.0
    elif (
        arr.dtype == np.int32
        and arr.max(initial=0) <= 65535
        and arr.min(initial=0) >= 0
        and path.suffix.lower() == ".png"
    ):
        out = arr.astype(np.float32) / 65535.0  # PIL reads 16-bit PNG as mode "I"
    elif arr.dtype == np.float32:
        out = arr.astype(np.float32)
    elif arr.dtype == bool:
        out = arr.astype(np.float32)
    else:
        raise DataError(
            f"The image {path} has unsupported pixel type {arr.dtype}; use 8- or 16-bit unsigned integers or float32."
        )
    if out.ndim == 2:
        out = out[None]
    elif out.ndim == 3 and out.shape[-1] in (1, 3, 4):
        out = out[..., :3].transpose(2, 0, 1) if out.shape[-1] != 1 else out.transpose(2, 0, 1)
    else:
        raise DataError(f"The image {path} has shape {list(arr.shape)}; expected H x W or H x W x 1/3/4 channels.")
    if not np.isfinite(out).all():
        raise DataError(f"The image {path} contains NaN or infinite values.")
    return np.ascontiguousarray(out)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary mask as bool ``[H, W]``; any value other than 0 and the maximum is an error."""
    path = Path(path)
    arr = read_image(path)
    if arr.shape[0] != 1:
        arr = arr.max(axis=0, keepdims=True)
    arr = arr[0]
    values = np.unique(arr)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        raise DataError(f"The mask {path} is not binary; it has {values.size} distinct values.")
    return arr > 0


def _resize(arr: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    from skimage.transform import resize as sk_resize

    if arr.shape[-2:] == tuple(size):
        return arr
    out = sk_resize(
        arr.transpose(1, 2, 0) if arr.ndim == 3 else arr,
        size,
        order=order,
        preserve_range=True,
        anti_aliasing=order > 0,
    )
    return (out.transpose(2, 0, 1) if arr.ndim == 3 else out).astype(arr.dtype)


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def normalise_dataset(ds: Dataset, normalise: str | tuple[Sequence[float], Sequence[float]] | None) -> Dataset:
    """Apply per-channel ``(x - mean) / std`` in place: ``"dataset"`` computes them, a pair gives them."""
    if normalise in (None, "none"):
        return ds
    if normalise == "dataset":
        mean = ds.x.mean(dim=(0, 2, 3))
        std = ds.x.std(dim=(0, 2, 3)).nan_to_num(1.0).clamp_min(1e-6)  # one pixel per channel: no spread, keep scale
    elif isinstance(normalise, (tuple, list)) and len(normalise) == 2:
        mean = torch.as_tensor(normalise[0], dtype=torch.float32).flatten()
        std = torch.as_tensor(normalise[1], dtype=torch.float32).flatten()
        if mean.numel() not in (1, ds.x.shape[1]) or std.numel() not in (1, ds.x.shape[1]):
            raise DataError(f"Normalisation mean/std need 1 or {ds.x.shape[1]} values.")
        if (std <= 0).any():
            raise DataError("Normalisation std values must be positive.")
        mean = mean.expand(ds.x.shape[1]).clone()
        std = std.expand(ds.x.shape[1]).clone()
    else:
        raise DataError(f"normalise must be 'none', 'dataset' or (mean, std); got {normalise!r}.")
    ds.image_hashes()  # of the pixels as read, before they are normalised
    ds.x = (ds.x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    ds.mean, ds.std = mean.tolist(), std.tolist()
    return ds


def load_folder(
    root: str | Path,
    *,
    resize: tuple[int, int] | None = None,
    normalise: str | tuple | None = None,
    masks: str = "auto",
    classes: Sequence[str] | None = None,
    max_pixels: int | None = None,
) -> Dataset:
    """Read ``root/<class>/<id>.<ext>`` images (and masks) into a :class:`Dataset`.

    Parameters
    ----------
    root : path of the folder.
    resize : (H, W) or None, default None
        Resize every image (bilinear) and mask (nearest); without it, all images must
        have the same size.
    normalise : "none" | "dataset" | (mean, std), default None
    masks : "auto" | "required" | "none", default "auto"
        "auto" reads masks when ``root/masks`` exists (then every image needs one);
        "required" fails without them; "none" ignores them.
    classes : class names in label order; default: sorted subfolder names.
    max_pixels : int or None
        Most pixels an image may have to be decoded (default: the current limit,
        :data:`DEFAULT_MAX_IMAGE_PIXELS` unless raised with :func:`max_image_pixels`).
    """
    with max_image_pixels(max_pixels):
        return _load_folder(root, resize=resize, normalise=normalise, masks=masks, classes=classes)


def _load_folder(root, *, resize, normalise, masks, classes) -> Dataset:
    root = Path(root)
    if not root.exists():
        raise DataError(f"The data folder {root} does not exist.")
    if not root.is_dir():
        raise DataError(f"The data path {root} is not a folder.")
    found = sorted(
        p.name for p in root.iterdir() if p.is_dir() and p.name not in RESERVED and not p.name.startswith(".")
    )
    if classes is None:
        classes = found
    else:
        missing = [c for c in classes if c not in found]
        if missing:
            raise DataError(f"The data folder {root} has no class folder {missing[0]!r}.")
    files = [(k, c, p) for k, c in enumerate(classes) for p in _list_images(root / c)]
    if not files:
        raise DataError(f"The data folder {root} contains no images (expected {root}/<class>/<id>.png).")
    arrays, ids, labels, hashes = [], [], [], []
    first = None
    for k, c, p in files:
        arr = read_image(p)
        if resize is not None:
            arr = _resize(arr, tuple(resize), order=1)
        if first is None:
            first = (arr.shape, p)
        elif arr.shape[1:] != first[0][1:]:
            raise DataError(
                f"The image {p} is {arr.shape[2]}x{arr.shape[1]} but {first[1]} is {first[0][2]}x{first[0][1]}; "
                "pass a resize option to use images of different sizes."
            )
        elif arr.shape[0] != first[0][0]:
            raise DataError(
                f"The image {p} has {arr.shape[0]} channel(s) but {first[1]} has {first[0][0]}; convert them to one colour mode."
            )
        arrays.append(arr)
        hashes.append(array_hash(arr))
        ids.append(f"{c}/{p.stem}")
        labels.append(k)
    x = torch.from_numpy(np.stack(arrays))
    mask_sets = {}
    annotators, annotator_masks = None, None
    for folder, key in RESERVED.items():
        if masks == "none" or not (root / folder).is_dir():
            continue
        names = _annotator_folders(root / folder, classes) if key == "masks" else None
        if names:
            annotators = names
            annotator_masks = torch.stack(
                [_read_masks(root / folder / a, files, ids, x.shape[2:], resize, images=root) for a in names], dim=1
            )
            continue
        mask_sets[key] = _read_masks(root / folder, files, ids, x.shape[2:], resize)
    if masks == "required" and "masks" not in mask_sets and annotator_masks is None:
        raise DataError(f"Masks are required but {root}/masks does not exist.")
    if masks not in ("auto", "required", "none"):
        raise DataError(f"masks must be 'auto', 'required' or 'none', got {masks!r}.")
    ds = Dataset(
        x=x,
        y=torch.tensor(labels, dtype=torch.long),
        ids=ids,
        classes=list(classes),
        masks=mask_sets.pop("masks", None),
        extra_masks=mask_sets,
        source=str(root),
        pixel_hashes=hashes,
        annotator_masks=annotator_masks,
        annotators=annotators,
    )
    return normalise_dataset(ds, normalise)


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


def _read_masks(folder: Path, files, ids, hw, resize, images: Path | None = None) -> torch.Tensor:
    wanted = {id_: p for (_, _, p), id_ in zip(files, ids)}
    present = {}
    for cdir in sorted(d for d in folder.iterdir() if d.is_dir()):
        for mp in _list_images(cdir):
            key = f"{cdir.name}/{mp.stem}"
            if key not in wanted:
                raise DataError(
                    f"The mask {mp} has no matching image {(images or folder.parent) / cdir.name / mp.stem}.*."
                )
            present[key] = mp
    out = np.zeros((len(ids), *hw), dtype=bool)
    for i, id_ in enumerate(ids):
        if id_ not in present:
            raise DataError(f"The image {wanted[id_]} has no mask in {folder}; every image needs one.")
        m = read_mask(present[id_])
        if resize is not None:
            m = _resize(m[None].astype(np.float32), tuple(resize), order=0)[0] > 0.5
        if m.shape != tuple(hw):
            raise DataError(f"The mask {present[id_]} is {m.shape[1]}x{m.shape[0]} but its image is {hw[1]}x{hw[0]}.")
        out[i] = m
    return torch.from_numpy(out)


def load_npz(path: str | Path, *, normalise: str | tuple | None = None) -> Dataset:
    """Read an NPZ with ``x`` ([N,C,H,W] or [N,H,W]), ``y`` ([N]) and optional ``masks``, ``ids``, ``classes``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"The data file {path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise DataError(f"The data file {path} is not a readable NPZ file ({type(e).__name__}).") from None
    return _from_arrays(arrays, path, normalise)


def load_zarr(path: str | Path, *, normalise: str | tuple | None = None) -> Dataset:
    """Read a Zarr group holding the arrays of :func:`load_npz` (``x``, ``y``, optional ``masks``
    ``[N, H, W]`` or ``[N, A, H, W]``, ``annotators``, ``ids``, ``classes``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"The data file {path} does not exist.")
    try:
        import zarr

        group = zarr.open_group(str(path), mode="r")
        arrays = {k: np.asarray(group[k][...]) for k in group.array_keys()}
    except Exception as e:
        raise DataError(f"The data path {path} is not a readable Zarr group ({type(e).__name__}).") from None
    if any(a.dtype == object for a in arrays.values()):
        arrays = {k: a.astype(str) if a.dtype == object else a for k, a in arrays.items()}
    return _from_arrays(arrays, path, normalise)


def load_hdf5(path: str | Path, *, normalise: str | tuple | None = None) -> Dataset:
    """Read an HDF5 file (``.h5``, ``.hdf5``) whose root datasets are the arrays of
    :func:`load_npz` (``x``, ``y``, optional ``masks`` ``[N, H, W]`` or ``[N, A, H, W]``,
    ``annotators``, ``ids``, ``classes``; strings as byte or variable-length strings).
    Needs h5py (``pip install 'xaiscope[hdf5]'``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"The data file {path} does not exist.")
    try:
        import h5py
    except ImportError:
        raise DataError(f"Reading {path} needs h5py; install it with: pip install 'xaiscope[hdf5]'.") from None
    try:
        with h5py.File(path, "r") as f:
            arrays = {k: np.asarray(f[k][()]) for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    except Exception as e:
        raise DataError(f"The data file {path} is not a readable HDF5 file ({type(e).__name__}).") from None
    for k, a in arrays.items():
        if a.dtype == object or a.dtype.kind == "S":
            arrays[k] = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in a.reshape(-1)])
    return _from_arrays(arrays, path, normalise)


def _from_arrays(arrays: dict[str, np.ndarray], path: Path, normalise) -> Dataset:
    """The dataset of the named arrays of an NPZ file, a Zarr group or an HDF5 file."""
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"The data file {path} has no array {key!r}.")
    x = arrays["x"]
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(
            f"The array 'x' in {path} has shape {list(arrays['x'].shape)}; expected [N, C, H, W] or [N, H, W]."
        )
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise DataError(f"The array 'x' in {path} has unsupported type {x.dtype}.")
    if x.size == 0:
        raise DataError(f"The array 'x' in {path} has shape {list(arrays['x'].shape)}; it holds no image pixels.")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    ids = [str(i) for i in arrays["ids"]] if "ids" in arrays else [str(i) for i in range(len(x))]
    if bad.any():
        raise DataError(f"The image {ids[int(np.argmax(bad))]!r} in {path} contains NaN or infinite values.")
    y = arrays["y"]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(x):
        raise DataError(f"The array 'y' in {path} must hold {len(x)} integer labels.")
    if (y < 0).any():
        raise DataError(f"The array 'y' in {path} has negative labels.")
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else [str(c) for c in range(int(y.max()) + 1)]
    if y.max() >= len(classes):
        raise DataError(f"The array 'y' in {path} has label {int(y.max())} but only {len(classes)} classes.")
    masks, annotator_masks, annotators = None, None, None
    if "masks" in arrays and arrays["masks"].ndim == 4:
        annotator_masks, annotators = _annotator_arrays(arrays, x.shape, path)
    elif "annotators" in arrays:
        raise DataError(f"The data file {path} names annotators but its 'masks' array is not [N, A, H, W].")
    elif "masks" in arrays:
        m = arrays["masks"]
        if m.shape != (x.shape[0], *x.shape[2:]):
            raise DataError(
                f"The array 'masks' in {path} has shape {list(m.shape)} but the images need {[x.shape[0], *x.shape[2:]]}."
            )
        if m.dtype != bool and not np.isin(np.unique(m), [0, 1]).all():
            raise DataError(f"The array 'masks' in {path} is not binary.")
        masks = torch.from_numpy(m.astype(bool))
    ds = Dataset(
        x=torch.from_numpy(x),
        y=torch.from_numpy(y.astype(np.int64)),
        ids=ids,
        classes=classes,
        masks=masks,
        source=str(path),
        pixel_hashes=[array_hash(x[i]) for i in range(len(x))],
        annotator_masks=annotator_masks,
        annotators=annotators,
    )
    return normalise_dataset(ds, normalise)


def _annotator_arrays(arrays: dict, shape: tuple, path: Path) -> tuple[torch.Tensor, list[str] | None]:
    """``masks`` ``[N, A, H, W]`` (binary) and the optional ``annotators`` names ``[A]``."""
    m = arrays["masks"]
    n, h, w = shape[0], shape[2], shape[3]
    if m.shape[0] != n or tuple(m.shape[2:]) != (h, w):
        raise DataError(
            f"The array 'masks' in {path} has shape {list(m.shape)} but the images need [{n}, annotators, {h}, {w}]."
        )
    if m.dtype != bool and not np.isin(np.unique(m), [0, 1]).all():
        raise DataError(f"The array 'masks' in {path} is not binary.")
    names = None
    if "annotators" in arrays:
        names = [str(a) for a in np.asarray(arrays["annotators"]).reshape(-1)]
        if len(names) != m.shape[1]:
            raise DataError(
                f"The array 'annotators' in {path} names {len(names)} annotators but 'masks' holds {m.shape[1]}."
            )
    return torch.from_numpy(m.astype(bool)), names


ARRAY_READERS = {".npz": load_npz, ".zarr": load_zarr, ".h5": load_hdf5, ".hdf5": load_hdf5}


def load(path: str | Path, **kwargs) -> Dataset:
    """Read a folder (:func:`load_folder`), an ``.npz`` file (:func:`load_npz`), a ``.zarr``
    group (:func:`load_zarr`) or an HDF5 file (:func:`load_hdf5`)."""
    p = Path(path)
    if p.suffix.lower() in ARRAY_READERS:
        kwargs.pop("resize", None)
        kwargs.pop("masks", None)
        kwargs.pop("classes", None)
        kwargs.pop("max_pixels", None)
        return ARRAY_READERS[p.suffix.lower()](p, **kwargs)
    return load_folder(p, **kwargs)
