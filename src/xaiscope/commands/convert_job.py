"""The ``xaiscope convert`` job: any source into a chunked Zarr group, the fast path for
large studies (row slices read straight from disk, no decoding, no whole-file reads).

Written arrays: ``x`` ``[N, C, H, W]`` (``uint8`` holding ``round(255 x)`` or ``float32``
holding the pixels in ``[0, 1]``), ``y`` ``[N]``, ``ids``, ``classes``, and ``masks``
``[N, H, W]`` (or ``[N, A, H, W]`` with ``annotators``) when the source has expert masks;
chunks hold whole images, about 16 MiB each. One pass, one step of images in memory.
``dtype="auto"`` takes ``uint8`` when the pixels of the first step are exactly ``k / 255``
(8-bit data) and ``float32`` otherwise.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from xaiscope.errors import ConfigError, DataError
from xaiscope.io import ensure_dir

DTYPES = ("auto", "uint8", "float32")


def _as_uint8(x: np.ndarray) -> np.ndarray | None:
    """``round(255 x)`` as uint8 when that gives back ``x`` exactly, else None."""
    q = np.round(x * 255.0)
    if q.min(initial=0) < 0 or q.max(initial=0) > 255 or not np.array_equal((q / 255.0).astype(np.float32), x):
        return None
    return q.astype(np.uint8)


def convert(src, out: Path, *, dtype: str = "auto", images_per_step: int = 256, console=None) -> Path:
    """Write the images of ``src`` (a lazy source, not normalised) into the Zarr group ``out``."""
    import zarr

    from xaiscope.run.progress import ImageProgress

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be auto, uint8 or float32; got {dtype!r}.")
    if Path(out).suffix.lower() != ".zarr":
        raise ConfigError(f"The output {out} must end in .zarr.")
    if Path(out).exists():
        raise ConfigError(f"The output {out} exists already; remove it or choose another name.")
    n, shape = len(src), tuple(src.shape)
    per_chunk = max(1, min(n, (16 << 20) // (4 * int(np.prod(shape)))))
    tmp = ensure_dir(Path(out).parent) / f".{Path(out).name}.{os.getpid()}.tmp"
    try:  # a failed conversion leaves no half-written store
        g = zarr.open_group(str(tmp), mode="w")
        x_arr = masks_arr = None
        done, ids, ys = 0, [], []
        with ImageProgress(console, n, "converting") as progress:
            for b in src.batches(images_per_step):
                x = b.x.numpy()
                if x_arr is None:
                    kind = dtype if dtype != "auto" else ("uint8" if _as_uint8(x) is not None else "float32")
                    x_arr = g.create_array("x", shape=(n, *shape), chunks=(per_chunk, *shape), dtype=kind)
                if x_arr.dtype == np.uint8:
                    q = _as_uint8(x)
                    if q is None:
                        raise DataError(
                            f"The image {b.ids[0]!r} of {src.source} and its step are not 8-bit pixels; "
                            "pass --dtype float32."
                        )
                    x = q
                x_arr[done : done + len(b)] = x
                m = b.annotator_masks if b.annotator_masks is not None else b.masks
                if m is not None:
                    if masks_arr is None:
                        masks_arr = g.create_array(
                            "masks", shape=(n, *m.shape[1:]), chunks=(per_chunk, *m.shape[1:]), dtype=bool
                        )
                    masks_arr[done : done + len(b)] = m.numpy()
                ids += b.ids
                ys.append(b.y.numpy())
                done += len(b)
                progress.advance(len(b))
        if done == 0:
            raise DataError(f"No image of {src.source} could be read.")
        if done != n:
            for arr in (x_arr, masks_arr):
                if arr is not None:
                    arr.resize((done, *arr.shape[1:]))
        g.create_array("y", data=np.concatenate(ys).astype(np.int64))
        for key, values in (("ids", ids), ("classes", src.classes), ("annotators", src.annotators)):
            if values is not None and (key != "annotators" or masks_arr is not None):
                g.create_array(key, shape=(len(values),), dtype=str)[:] = np.array(values, dtype=object)
        g.attrs["source"] = src.source
        g.attrs["skipped"] = dict(sorted(src.skipped.items()))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Path(out)
