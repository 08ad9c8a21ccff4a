"""The one pixel rule of every reader: integers to ``[0, 1]``, floats kept."""

from __future__ import annotations

import numpy as np

from xaiscope.errors import DataError


def scale_pixels(x: np.ndarray, where: str) -> np.ndarray:
    """Pixels as float32: unsigned 8-bit / 255, 16-bit / 65535, bool as 0/1, floats as they are."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype == np.uint16:
        return x.astype(np.float32) / 65535.0
    if x.dtype == bool:
        return x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise DataError(f"The images in {where} have unsupported type {x.dtype}.")
    return x.astype(np.float32)
