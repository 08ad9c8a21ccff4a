"""Data: images, labels, masks and ids; readers; the ground-truth benchmark generator."""

from xaiscope.data.dataset import Dataset
from xaiscope.data.readers import load, load_folder, load_npz, normalise_dataset, read_image, read_mask

__all__ = ["Dataset", "load", "load_folder", "load_npz", "normalise_dataset", "read_image", "read_mask"]
