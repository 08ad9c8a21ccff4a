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
from xaiscope.data.summaries import Moments
from xaiscope.data.volumes import is_volume_file, read_volume, resize_volume
from xaiscope.errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
#: an image stored as an OME-Zarr folder (``<id>.ome.zarr`` or ``<id>.zarr``)
ZARR_IMAGE_SUFFIX = ".zarr"
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


def _ome_zarr_array(path: Path, limit: int) -> np.ndarray:
    """The full-resolution level of an OME-Zarr image (OME-NGFF ``multiscales``, 0.4 and 0.5
    layouts) as ``H x W`` or ``H x W x C``; a time or z axis must have length 1."""
    try:
        import zarr

        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
        ms = (attrs.get("ome") or attrs).get("multiscales")
        level = ms[0]["datasets"][0]["path"]
        axes = [a["name"] if isinstance(a, dict) else str(a) for a in ms[0].get("axes", [])]
        arr = group[level]
    except Exception as e:
        raise DataError(f"The image {path} is not a readable OME-Zarr image ({type(e).__name__}).") from None
    shape = tuple(arr.shape)
    axes = axes or ["t", "c", "z", "y", "x"][-len(shape) :]
    if len(axes) != len(shape) or not {"y", "x"} <= set(axes):
        raise DataError(f"The image {path} has axes {axes} for shape {list(shape)}; expected y and x among them.")
    for extra in ("t", "z"):
        if extra in axes and shape[axes.index(extra)] != 1:
            raise DataError(
                f"The image {path} has {shape[axes.index(extra)]} planes along {extra!r}; "
                "xaiscope reads 2D images (one plane)."
            )
    pixels = shape[axes.index("y")] * shape[axes.index("x")]
    if pixels > limit:
        raise _too_large(path, pixels, limit)
    a = np.asarray(arr[...])
    keep = [i for i, n in enumerate(axes) if n in ("y", "x", "c")]
    a = a.reshape([shape[i] for i in keep])
    names = [axes[i] for i in keep]
    order = [names.index("y"), names.index("x")] + ([names.index("c")] if "c" in names else [])
    return np.ascontiguousarray(a.transpose(order))


def read_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read one image as float32 ``[C, H, W]`` scaled to ``[0, 1]`` (C is 1 or 3), or one
    volume (NIfTI, DICOM series folder, TIFF stack) as ``[C, D, H, W]``
    (:func:`xaiscope.data.volumes.read_volume`, which also gives its affine).

    Images with more than ``max_pixels`` pixels (voxels) (default: the current limit, see
    :func:`max_image_pixels`) are refused before they are decoded.
    """
    path = Path(path)
    limit = _MAX_PIXELS.get() if max_pixels is None else int(max_pixels)
    if is_volume_file(path):
        return read_volume(path, limit)[0]
    if path.suffix.lower() == ".zarr":
        return _to_chw(_ome_zarr_array(path, limit), path)
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
    """Read a binary mask as bool ``[H, W]`` (``[D, H, W]`` from a volume file); any value
    other than 0 and the maximum is an error."""
    path = Path(path)
    arr = read_image(path)
    if arr.shape[0] != 1:
        arr = arr.max(axis=0, keepdims=True)
    arr = arr[0]
    values = np.unique(arr)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        raise DataError(f"The mask {path} is not binary; it has {values.size} distinct values.")
    return arr > 0


def _resize(arr: np.ndarray, size: tuple[int, ...], order: int) -> np.ndarray:
    """``[C, H, W]`` or ``[H, W]`` resized to ``size`` (H, W); ``[C, D, H, W]`` to (D, H, W)."""
    from skimage.transform import resize as sk_resize

    if len(size) == 3:
        return resize_volume(arr, tuple(size), order)
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


def normalise_dataset(ds: Dataset, normalise: str | tuple[Sequence[float], Sequence[float]] | None) -> Dataset:
    """Apply per-channel ``(x - mean) / std`` in place: ``"dataset"`` computes them, a pair gives them."""
    if normalise in (None, "none"):
        return ds
    if normalise == "dataset":
        mom = Moments(ds.x.shape[1])
        x = ds.x.detach().cpu().numpy()
        for start in range(0, len(x), 256):  # the streamed sources' batches: the same float64 sums
            mom.update(x[start : start + 256])
        mean, std = (torch.tensor(v, dtype=torch.float32) for v in mom.mean_std())
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
    ones = [1] * (ds.x.dim() - 2)
    ds.x = (ds.x - mean.view(1, -1, *ones)) / std.view(1, -1, *ones)
    ds.mean, ds.std = mean.tolist(), std.tolist()
    return ds
