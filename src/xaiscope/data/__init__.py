"""Data: images, labels, masks and ids; readers; the ground-truth benchmark generator."""

from xaiscope.data.dataset import Dataset
from xaiscope.data.lazy import ARRAY_SUFFIXES, load, load_folder, load_hdf5, load_npz, load_zarr, open_source
from xaiscope.data.readers import DEFAULT_MAX_IMAGE_PIXELS, max_image_pixels, normalise_dataset, read_image, read_mask
from xaiscope.data.sources import Batch, Source

__all__ = [
    "ARRAY_SUFFIXES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "Batch",
    "Dataset",
    "Source",
    "open_source",
    "load_hdf5",
    "load",
    "load_folder",
    "load_npz",
    "load_zarr",
    "max_image_pixels",
    "normalise_dataset",
    "read_image",
    "read_mask",
]
