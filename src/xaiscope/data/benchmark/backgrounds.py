"""Backgrounds for the ground-truth benchmark: real images that ship with packages.

Sources (nothing is downloaded)
-------------------------------
``retina``  scikit-image ``data.retina()`` (fundus photograph); foreground = the retinal disc.
``cell``    scikit-image ``data.cell()``; foreground = the whole frame.
``ihc``     scikit-image ``data.immunohistochemistry()``; foreground = the whole frame.
``mri``     matplotlib's sample MRI slice ``s1045.ima.gz``; foreground = the head.
``noise``   smooth synthetic noise (white noise low-pass filtered in Fourier space).
``folder:PATH``  every PNG/JPEG/TIFF under PATH (recursively); foreground = the whole frame.

Every source is converted to grey, and its foreground intensities are mapped so the 1st
and 99th percentiles land on 0.1 and 0.7 (bright lesions then stand out on every source).
Not aligned: each image is a random ``size x size`` crop of a source resized so its
shorter side is ``zoom * size`` pixels, only where at least ``min_foreground`` of the
crop is tissue, randomly flipped. Aligned: the whole source (centre square) resized to
``size x size``, never flipped, so every pixel shows the same place in every image.

Alongside each background comes ``dist``: the Euclidean distance of every pixel to the
nearest pixel that is outside the foreground or outside the image, so a lesion of
radius ``R`` centred where ``dist >= R`` lies entirely on tissue.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from xaiscope.errors import ConfigError, DataError

BUILTIN = ("retina", "cell", "ihc", "mri", "noise")
DEFAULT_ZOOM = {"retina": 4.0, "cell": 3.0, "ihc": 3.0, "mri": 2.0, "noise": 1.0, "folder": 3.0}


@dataclass(frozen=True)
class Source:
    """Grey source images at working scale with their foreground and distance maps."""

    name: str
    images: tuple[np.ndarray, ...]  # float32 [H, W] in [0, 1]
    foreground: tuple[np.ndarray, ...]  # bool [H, W]
    dist: tuple[np.ndarray, ...]  # float32 [H, W]: distance to non-foreground
    valid: tuple[np.ndarray, ...]  # int64 flat indices of crop top-left corners with enough tissue


def _grey(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    arr = (
        rgb2gray(rgb[..., :3])
        if rgb.ndim == 3
        else rgb.astype(np.float64) / (255.0 if rgb.dtype == np.uint8 else max(1.0, float(rgb.max())))
    )
    return arr.astype(np.float32)


def _largest_filled(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
    return ndimage.binary_fill_holes(lab == 1 + int(np.argmax(sizes)))


def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Grey image in [0, 1] and its foreground at native resolution."""
    from skimage import data as skdata

    if name == "retina":
        img = _grey(skdata.retina())
        fg = _largest_filled(ndimage.gaussian_filter(img, 3) > 0.08)
        fg = ndimage.binary_erosion(fg, iterations=8)
    elif name == "cell":
        img = _grey(skdata.cell())
        fg = np.ones_like(img, dtype=bool)
    elif name == "ihc":
        img = _grey(skdata.immunohistochemistry())
        fg = np.ones_like(img, dtype=bool)
    elif name == "mri":
        from matplotlib import cbook

        with cbook.get_sample_data("s1045.ima.gz") as f:
            raw = f.read()
        img = (np.frombuffer(raw, np.dtype(">u2")).reshape(256, 256).astype(np.float32) / 255.0).clip(0, 1)
        fg = _largest_filled(ndimage.gaussian_filter(img, 2) > 0.1)
        fg = ndimage.binary_erosion(fg, iterations=2)
    else:  # pragma: no cover - guarded by parse_background
        raise ConfigError(f"Unknown background {name!r}.")
    return img, fg


def _stretch(img: np.ndarray, fg: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img[fg], [1, 99]) if fg.any() else (0.0, 1.0)
    return np.clip(0.1 + 0.6 * (img - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def _resize(img: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    from skimage.transform import resize

    if img.shape == shape:
        return img
    out = resize(img.astype(np.float32), shape, order=order, anti_aliasing=order > 0, preserve_range=True)
    return out.astype(np.float32)


def _centre_square(a: np.ndarray) -> np.ndarray:
    h, w = a.shape
    s = min(h, w)
    return a[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]


def _edt(fg: np.ndarray) -> np.ndarray:
    """Distance to the nearest pixel outside ``fg`` or outside the image."""
    return ndimage.distance_transform_edt(np.pad(fg, 1, constant_values=False))[1:-1, 1:-1].astype(np.float32)


def _prepare(
    name: str, pairs: list[tuple[np.ndarray, np.ndarray]], size: int, aligned: bool, zoom: float, min_foreground: float
) -> Source:
    images, fgs, dists, valids = [], [], [], []
    for img, fg in pairs:
        img = _stretch(img, fg)
        if aligned:
            img, fg = _centre_square(img), _centre_square(fg)
            shape = (size, size)
        else:
            h, w = img.shape
            f = zoom * size / min(h, w)
            shape = (max(size, round(h * f)), max(size, round(w * f)))
        img = _resize(img, shape, order=1)
        fg = _resize(fg.astype(np.float32), shape, order=0) > 0.5
        # fraction of tissue in every size x size window (top-left indexed)
        ii = np.pad(fg.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        frac = (ii[size:, size:] - ii[:-size, size:] - ii[size:, :-size] + ii[:-size, :-size]) / (size * size)
        ok = np.flatnonzero(frac.ravel() >= (min_foreground if not aligned else 0.0))
        if ok.size == 0:
            continue
        images.append(img)
        fgs.append(fg)
        dists.append(_edt(fg))
        valids.append(ok)
    if not images:
        raise DataError(f"No background image of {name!r} has a {size}x{size} region with enough foreground.")
    return Source(name, tuple(images), tuple(fgs), tuple(dists), tuple(valids))


@functools.lru_cache(maxsize=16)
def _builtin(name: str, size: int, aligned: bool, zoom: float, min_foreground: float) -> Source:
    return _prepare(name, [_raw(name)], size, aligned, zoom, min_foreground)


def _folder_pairs(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    from xaiscope.data.readers import IMAGE_EXTENSIONS, read_image

    if not path.is_dir():
        raise DataError(f"The background folder {path} does not exist or is not a folder.")
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise DataError(f"The background folder {path} contains no PNG, JPEG or TIFF images.")
    pairs = []
    for p in files:
        arr = read_image(p)  # [C, H, W] in [0, 1]
        grey = arr.mean(axis=0) if arr.shape[0] == 3 else arr[0]
        pairs.append((grey.astype(np.float32), np.ones(grey.shape, dtype=bool)))
    return pairs


def parse_background(spec: str) -> tuple[str, Path | None]:
    """``"retina"`` -> ``("retina", None)``; ``"folder:PATH"`` -> ``("folder", PATH)``."""
    if spec.startswith("folder:"):
        path = spec.split(":", 1)[1]
        if not path:
            raise ConfigError("The background 'folder:' needs a path, e.g. folder:/data/grain_photos.")
        return "folder", Path(path).expanduser()
    if spec not in BUILTIN:
        from xaiscope.errors import did_you_mean

        raise ConfigError(
            f"Unknown background {spec!r}{did_you_mean(spec, BUILTIN)}; choose one of {', '.join(BUILTIN)} or folder:PATH."
        )
    return spec, None


def load_source(
    spec: str, size: int, *, aligned: bool = False, zoom: float | None = None, min_foreground: float = 0.6
) -> Source | None:
    """The prepared source for ``spec``; ``None`` for ``noise`` (drawn per image instead)."""
    name, path = parse_background(spec)
    zoom = float(DEFAULT_ZOOM[name] if zoom is None else zoom)
    if zoom < 1:
        raise ConfigError(f"zoom must be at least 1 (the source's shorter side in multiples of size), got {zoom}.")
    if name == "noise":
        return None
    if name == "folder":
        return _prepare(f"folder:{path}", _folder_pairs(path), size, aligned, zoom, min_foreground)
    return _builtin(name, size, aligned, zoom, min_foreground)


def smooth_noise(n: int, size: int, rng: np.random.Generator, *, sigma: float | None = None) -> np.ndarray:
    """``n`` fields of low-pass filtered white noise, each scaled to mean 0.4 and SD 0.1, ``[n, size, size]``.

    The filter is a Gaussian of ``sigma`` pixels (default ``size / 16``) applied in Fourier space.
    """
    sigma = size / 16 if sigma is None else sigma
    white = rng.standard_normal((n, size, size)).astype(np.float32)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2)).astype(np.float32)
    field = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=(size, size)).astype(np.float32)
    field -= field.mean(axis=(1, 2), keepdims=True)
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-8
    return np.clip(0.4 + 0.1 * field, 0, 1).astype(np.float32)


def border_distance(size: int) -> np.ndarray:
    """Distance of each pixel of a ``size x size`` image to the nearest pixel outside it."""
    i = np.arange(size, dtype=np.float32)
    d = np.minimum(i + 1, size - i)
    return np.minimum(d[:, None], d[None, :])


def sample(
    source: Source | None, n: int, size: int, rng: np.random.Generator, *, aligned: bool = False
) -> dict[str, np.ndarray]:
    """Draw ``n`` backgrounds: ``image`` float32 ``[n,H,W]``, ``foreground`` bool, ``dist`` float32, and provenance.

    Provenance arrays: ``source_index``, ``crop_y``, ``crop_x``, ``flip_h``, ``flip_v`` (``[n]``).
    """
    zeros = np.zeros(n, dtype=np.int64)
    if source is None:  # synthetic noise
        fields = smooth_noise(1 if aligned else n, size, rng)
        image = np.broadcast_to(fields, (n, size, size)).copy()
        fg = np.ones((n, size, size), dtype=bool)
        dist = np.broadcast_to(border_distance(size), (n, size, size)).copy()
        return {
            "image": image,
            "foreground": fg,
            "dist": dist,
            "source_index": zeros,
            "crop_y": zeros,
            "crop_x": zeros,
            "flip_h": zeros.astype(bool),
            "flip_v": zeros.astype(bool),
        }
    k = len(source.images)
    src = rng.integers(0, k, size=n)
    image = np.empty((n, size, size), dtype=np.float32)
    fg = np.empty((n, size, size), dtype=bool)
    dist = np.empty((n, size, size), dtype=np.float32)
    cy, cx = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    u = rng.random(n)
    bd = border_distance(size)
    for j in range(k):
        sel = np.flatnonzero(src == j)
        if sel.size == 0:
            continue
        w = source.images[j].shape[1] - size + 1
        pos = source.valid[j][np.minimum((u[sel] * source.valid[j].size).astype(np.int64), source.valid[j].size - 1)]
        ys, xs = pos // w, pos % w
        cy[sel], cx[sel] = ys, xs
        win = lambda a, ys=ys, xs=xs: np.lib.stride_tricks.sliding_window_view(a, (size, size))[ys, xs]
        image[sel] = win(source.images[j])
        fg[sel] = win(source.foreground[j])
        dist[sel] = np.minimum(win(source.dist[j]), bd)
    flips = rng.random((n, 2)) < 0.5
    if aligned:
        flips[:] = False
    fh, fv = flips[:, 0], flips[:, 1]
    for arr in (image, fg, dist):
        arr[fh] = arr[fh][:, :, ::-1]
        arr[fv] = arr[fv][:, ::-1, :]
    return {
        "image": image,
        "foreground": fg,
        "dist": dist,
        "source_index": src.astype(np.int64),
        "crop_y": cy,
        "crop_x": cx,
        "flip_h": fh,
        "flip_v": fv,
    }
