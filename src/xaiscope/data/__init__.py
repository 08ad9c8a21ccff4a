"""Data: images, labels, masks and ids; readers; the ground-truth benchmark generator."""

from xaiscope.data.dataset import Dataset
from xaiscope.data.readers import (
    DEFAULT_MAX_IMAGE_PIXELS,
    load,
    load_folder,
    load_npz,
    load_zarr,
    max_image_pixels,
    normalise_dataset,
    read_image,
    read_mask,
)

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "Dataset",
    "load",
    "load_folder",
    "load_npz",
    "load_zarr",
    "max_image_pixels",
    "normalise_dataset",
    "read_image",
    "read_mask",
]
