"""Readers for volumes: NIfTI files, DICOM series and multi-page TIFF stacks.

Convention
----------
A volume is ``[C, D, H, W]`` float32 with a 4x4 ``affine`` mapping its voxel indices
``(d, h, w, 1)`` to world coordinates in millimetres (RAS+: x to the right, y to the front,
z up, as NIfTI's scanner space). On reading, a volume is turned to nibabel's closest
canonical orientation (RAS, :func:`nibabel.as_closest_canonical`) and stored with axes
``(D, H, W) = (k, j, i)``: ``D`` runs inferior to superior (axial slices), ``H`` posterior to
anterior, ``W`` left to right. The affine always describes the array as stored, so
``nibabel.Nifti1Image(volume[c], affine)`` opens aligned with the scan in any viewer
(:func:`write_nifti`).

Intensities
-----------
NIfTI and DICOM hold physical values: NIfTI's ``scl_slope``/``scl_inter`` and DICOM's
``RescaleSlope``/``RescaleIntercept`` are applied (CT in Hounsfield units) and the values kept
as float32, unscaled (normalise them with ``normalise="dataset"``). TIFF stacks follow the
pixel rule of 2D images (8-bit / 255, 16-bit / 65535).

Privacy
-------
Only geometry (orientation, position, spacing) and pixel data are read from DICOM headers;
fields that identify a patient never reach ids, manifests, tables or the report: ids come
from file and folder names.

Layouts: ``<id>.nii`` / ``<id>.nii.gz``; a DICOM series is one folder ``<id>/`` of slice
files (``.dcm`` or without extension), ordered by their position along the slice normal;
``<id>.tif`` with several pages (an axis ``Z``, ``Q`` or ``I`` longer than 1 in tifffile's series) is a stack,
its voxel size from ImageJ metadata (``spacing``) and the resolution tags when present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xaiscope.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")

#: (d, h, w, 1) -> (i, j, k, 1) of the canonical image: i = w, j = h, k = d
_DHW_TO_IJK = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(NIFTI_SUFFIXES)


def _is_dicom_file(p: Path) -> bool:
    if p.suffix.lower() == ".dcm":
        return True
    if p.suffix:
        return False
    try:
        with open(p, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM slice files of a series folder (``.dcm``, or extensionless files with the DICM preamble)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _is_dicom_file(p))


def is_dicom_series(path: Path) -> bool:
    """A folder (not ``.zarr``) whose files are DICOM slices."""
    return path.is_dir() and path.suffix.lower() != ".zarr" and bool(dicom_files(path))


def nifti_stem(name: str) -> str:
    lower = name.lower()
    for s in (".nii.gz", ".nii"):
        if lower.endswith(s):
            return name[: -len(s)]
    return name


# ------------------------------------------------------------------ orientation
def canonical_shape(affine: np.ndarray, shape_ijk) -> tuple[int, int, int]:
    """``(D, H, W)`` of an ``[i, j, k]`` array once turned canonical (see :func:`canonical`)."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(affine)
    ras = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt):
        ras[int(target)] = int(shape_ijk[axis])
    return ras[2], ras[1], ras[0]


def canonical(data_ijk: np.ndarray | None, affine: np.ndarray, shape_ijk) -> tuple[np.ndarray | None, np.ndarray]:
    """``(volume [C, D, H, W], affine of (d, h, w))`` of an array ``[i, j, k(, c)]`` with its
    voxel-to-RAS ``affine``: flipped and permuted to the closest canonical RAS orientation,
    then stored ``(k, j, i)``. With ``data_ijk`` None, only the affine (no pixels read)."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(affine)
    aff_ras = np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(ornt, tuple(shape_ijk[:3]))
    aff_dhw = aff_ras @ _DHW_TO_IJK
    if data_ijk is None:
        return None, aff_dhw
    ras = apply_orientation(data_ijk, ornt)
    vol = ras[..., None] if ras.ndim == 3 else ras
    return np.ascontiguousarray(vol.transpose(3, 2, 1, 0).astype(np.float32, copy=False)), aff_dhw


def _check(vol: np.ndarray, path: Path) -> np.ndarray:
    if not np.isfinite(vol).all():
        raise DataError(f"The volume {path} contains NaN or infinite values.")
    return vol


def _too_many(path: Path, voxels: int, limit: int) -> DataError:
    return DataError(
        f"The volume {path} has {voxels:,} voxels, more than the limit of {limit:,}; "
        f"pass --max-image-pixels {voxels} (or more) if you trust it."
    )


# ------------------------------------------------------------------ NIfTI
def _nifti(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as e:
        raise DataError(f"The volume {path} is not a readable NIfTI file ({type(e).__name__}).") from None


def _nifti_shape(img, path: Path) -> tuple[int, ...]:
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 3:
        raise DataError(f"The file {path} holds a 2D image of shape {list(shape)}, not a volume.")
    if len(shape) > 4:
        raise DataError(f"The volume {path} has shape {list(shape)}; expected i x j x k or i x j x k x channels.")
    return shape


def read_nifti(path: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """``(volume [C, D, H, W] float32, affine)`` of a NIfTI file (a 4th axis is channels)."""
    img = _nifti(path)
    shape = _nifti_shape(img, path)
    voxels = int(np.prod(shape[:3], dtype=np.int64))
    if voxels > limit:
        raise _too_many(path, voxels, limit)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as e:
        raise DataError(f"The volume {path} cannot be read; it is truncated or damaged ({type(e).__name__}).") from None
    vol, aff = canonical(data, img.affine, shape)
    return _check(vol, path), aff


def nifti_geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """``((D, H, W), affine)`` of a NIfTI volume as read (header only)."""
    img = _nifti(path)
    shape = _nifti_shape(img, path)
    return canonical_shape(img.affine, shape), canonical(None, img.affine, shape)[1]


# ------------------------------------------------------------------ DICOM
def _dicom_headers(folder: Path, pixels: bool):
    import pydicom

    files = dicom_files(folder)
    out = []
    for f in files:
        try:
            out.append(pydicom.dcmread(str(f), stop_before_pixels=not pixels))
        except Exception as e:
            raise DataError(f"The DICOM file {f} cannot be read ({type(e).__name__}).") from None
    return files, out


def _geometry(files, slices, folder: Path):
    """Slices sorted along their normal; the affine (LPS -> RAS) of ``[i=col, j=row, k=slice]``."""
    try:
        iop = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
        ipp = np.asarray([s.ImagePositionPatient for s in slices], dtype=np.float64)
        dr, dc = (float(v) for v in slices[0].PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        raise DataError(
            f"The DICOM series {folder} lacks ImageOrientationPatient, ImagePositionPatient or PixelSpacing; "
            "its slices cannot be placed in space."
        ) from None
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    pos = ipp @ normal
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    if len(slices) < 2:
        raise DataError(f"The DICOM series {folder} holds a single slice, a 2D image, not a volume.")
    gaps = np.diff(pos)
    if (gaps <= 1e-6).any():
        k = int(np.argmin(gaps))
        raise DataError(f"The DICOM series {folder} has two slices at the same position ({files[order[k]].name}).")
    step = float(np.median(gaps))
    if (np.abs(gaps - step) > 0.1 * step).any():
        k = int(np.argmax(np.abs(gaps - step)))
        raise DataError(
            f"The DICOM series {folder} has missing slices: {gaps[k]:.3g} mm between {files[order[k]].name} and "
            f"{files[order[k + 1]].name}, where the other slices are {step:.3g} mm apart."
        )
    lps = np.eye(4)
    lps[:3, 0] = row * dc  # i: along a row (columns index)
    lps[:3, 1] = col * dr  # j: down the rows
    lps[:3, 2] = normal * step
    lps[:3, 3] = ipp[order[0]]
    to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    return order, to_ras @ lps


def read_dicom_series(folder: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """``(volume [1, D, H, W] float32, affine)`` of a series folder; slope/intercept applied."""
    files, slices = _dicom_headers(folder, pixels=False)
    order, affine = _geometry(files, slices, folder)
    rows, cols = int(slices[0].Rows), int(slices[0].Columns)
    voxels = rows * cols * len(slices)
    if voxels > limit:
        raise _too_many(folder, voxels, limit)
    import pydicom

    planes = []
    for k in order.tolist():
        try:
            ds = pydicom.dcmread(str(files[k]))
            a = ds.pixel_array.astype(np.float32)
        except Exception as e:
            raise DataError(f"The DICOM file {files[k]} has no readable pixel data ({type(e).__name__}).") from None
        if a.shape != (rows, cols):
            raise DataError(f"The DICOM file {files[k]} is {a.shape[1]}x{a.shape[0]} but its series is {cols}x{rows}.")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        planes.append(a * slope + float(getattr(ds, "RescaleIntercept", 0.0) or 0.0))
    data_ijk = np.stack(planes, axis=-1).transpose(1, 0, 2)  # [row, col, k] -> [i=col, j=row, k]
    vol, aff = canonical(data_ijk, affine, data_ijk.shape)
    return _check(vol, folder), aff


def dicom_geometry(folder: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """``((D, H, W), affine)`` of a DICOM series as read (headers only)."""
    files, slices = _dicom_headers(folder, pixels=False)
    _, affine = _geometry(files, slices, folder)
    shape = (int(slices[0].Columns), int(slices[0].Rows), len(slices))
    return canonical_shape(affine, shape), canonical(None, affine, shape)[1]


# ------------------------------------------------------------------ TIFF stacks
def tiff_stack_info(path: Path):
    """``(is_stack, axes, shape)`` of a TIFF's first series (no pixels read)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            s = tf.series[0]
            slices = [n for a, n in zip(s.axes, s.shape) if a in "ZQI"]
            return any(n > 1 for n in slices) and len(s.shape) >= 3, s.axes, tuple(s.shape)
    except Exception:
        return False, "", ()


def tiff_spacing(path: Path) -> tuple[float, float, float]:
    """Voxel size ``(dz, dy, dx)`` from ImageJ metadata and resolution tags; 1 where absent."""
    import tifffile

    dz = dy = dx = 1.0
    try:
        with tifffile.TiffFile(path) as tf:
            ij = tf.imagej_metadata or {}
            dz = float(ij.get("spacing", 1.0) or 1.0)
            tags = tf.pages[0].tags
            for name, setter in (("XResolution", "x"), ("YResolution", "y")):
                if name in tags:
                    num, den = tags[name].value
                    if num and den:
                        size = den / num
                        dx, dy = (size, dy) if setter == "x" else (dx, size)
    except Exception:
        pass
    return dz, dy, dx


def stack_to_volume(arr: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """A TIFF stack array with tifffile ``axes`` as ``[C, D, H, W]`` (channels from ``C``/``S``)."""
    keep = {"Z": "D", "Q": "D", "I": "D", "Y": "H", "X": "W", "C": "C", "S": "C"}
    names = [keep.get(a) for a in axes]
    for a, n, s in zip(axes, names, arr.shape):
        if n is None and s != 1:
            raise DataError(f"The TIFF stack {path} has an axis {a!r} of length {s}; expected Z, Y, X and channels.")
    arr = arr.reshape([s for n, s in zip(names, arr.shape) if n is not None])
    names = [n for n in names if n is not None]
    if names.count("D") != 1 or "C" in names and names.count("C") != 1:
        raise DataError(
            f"The TIFF stack {path} has axes {axes!r}; expected one slice axis (Z) and at most one channel axis."
        )
    if "C" not in names:
        arr, names = arr[None], ["C", *names]
    vol = arr.transpose([names.index(a) for a in "CDHW"])
    if vol.shape[0] not in (1, 3, 4):
        raise DataError(f"The TIFF stack {path} has {vol.shape[0]} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA).")
    return np.ascontiguousarray(vol[:3])  # RGBA: the alpha channel is dropped, as for images


def tiff_geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """``((D, H, W), affine)`` of a TIFF stack (header only)."""
    _, axes, shape = tiff_stack_info(path)
    size = {"D": 1, "H": 1, "W": 1}
    for a, n in zip(axes, shape):
        key = {"Z": "D", "Q": "D", "I": "D", "Y": "H", "X": "W"}.get(a)
        if key:
            size[key] = int(n)
    return (size["D"], size["H"], size["W"]), _diag_affine(*tiff_spacing(path))


def _diag_affine(dz: float, dy: float, dx: float) -> np.ndarray:
    """Affine of a stack with no orientation: (d, h, w) -> (x = w dx, y = h dy, z = d dz)."""
    a = np.zeros((4, 4))
    a[0, 2], a[1, 1], a[2, 0], a[3, 3] = dx, dy, dz, 1.0
    return a


# ------------------------------------------------------------------ resizing
def resize_volume(arr: np.ndarray, size: tuple[int, int, int], order: int) -> np.ndarray:
    """``[C, D, H, W]`` (or ``[D, H, W]``) resampled to ``size`` (linear with ``order=1``,
    nearest with ``order=0``)."""
    from skimage.transform import resize as sk_resize

    if tuple(arr.shape[-3:]) == tuple(size):
        return arr
    lead = arr.shape[:-3]
    flat = arr.reshape(-1, *arr.shape[-3:])
    out = np.stack(
        [sk_resize(v, size, order=order, preserve_range=True, anti_aliasing=order > 0) for v in flat]
    ).astype(arr.dtype)
    return out.reshape(*lead, *size)


def resized_affine(affine: np.ndarray, old: tuple[int, ...], new: tuple[int, ...]) -> np.ndarray:
    """The affine after resampling axes of ``old`` voxels to ``new``: new index ``v'`` sits at
    old continuous index ``(v' + 1/2) n / m - 1/2``, so voxel centres keep their places."""
    s = np.asarray(old, dtype=np.float64) / np.asarray(new, dtype=np.float64)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(s)
    scale[:3, 3] = 0.5 * s - 0.5
    return np.asarray(affine, dtype=np.float64) @ scale


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> bytes:
    """The bytes of a NIfTI-1 file (gzipped when ``path`` ends in ``.gz``) of a ``[D, H, W]``
    map with the volume's ``affine``; written by the caller through :mod:`xaiscope.io`."""
    import gzip

    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=4, mtime=0) if str(path).endswith(".gz") else raw


# ------------------------------------------------------------------ dispatch
def is_volume_file(path: Path) -> bool:
    """A NIfTI file, a DICOM series folder or a TIFF stack (several pages along Z)."""
    if is_nifti(path):
        return True
    if path.is_dir():
        return is_dicom_series(path)
    return path.suffix.lower() in (".tif", ".tiff") and tiff_stack_info(path)[0]


def read_volume(path: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """``(volume [C, D, H, W] float32, affine [4, 4])`` of any volume layout above."""
    if is_nifti(path):
        return read_nifti(path, limit)
    if path.is_dir():
        return read_dicom_series(path, limit)
    return read_tiff_stack(path, limit)


def volume_geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """``((D, H, W), affine)`` of a volume as :func:`read_volume` gives it, from its header only."""
    if is_nifti(path):
        return nifti_geometry(path)
    if path.is_dir():
        return dicom_geometry(path)
    return tiff_geometry(path)


def read_tiff_stack(path: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    from xaiscope.data.pixels import scale_pixels

    stack, axes, shape = tiff_stack_info(path)
    if not stack:
        raise DataError(f"The file {path} holds a 2D image, not a volume (a TIFF stack needs several pages).")
    voxels = int(np.prod([s for a, s in zip(axes, shape) if a not in "CS"], dtype=np.int64))
    if voxels > limit:
        raise _too_many(path, voxels, limit)
    try:
        arr = tifffile.imread(path)
    except Exception as e:
        raise DataError(f"The TIFF stack {path} cannot be read ({type(e).__name__}).") from None
    vol = stack_to_volume(scale_pixels(np.asarray(arr), str(path)), axes, path)
    return _check(vol.astype(np.float32, copy=False), path), tiff_geometry(path)[1]
