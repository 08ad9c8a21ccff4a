"""The ground-truth lesion benchmark: real backgrounds, shape-coded lesions, exact masks.

``generate(out, **params)`` writes an image folder (``train/``, ``test/``, masks,
``benchmark.json``); ``make_dataset(**params)`` returns the same ``(train, test)``
datasets in memory. Settings: :class:`BenchmarkParams`.

The 3D benchmark (lesions of two shapes in the MNI152 brain, NIfTI volumes):
``generate_3d(out, **params)`` and ``make_dataset_3d(**params)``; settings: :class:`VolumeParams`.
nilearn, which holds the template, is imported only when a 3D benchmark is made.
"""

from xaiscope.data.benchmark.backgrounds import BUILTIN as BACKGROUNDS
from xaiscope.data.benchmark.generate import generate, make_dataset, make_split
from xaiscope.data.benchmark.generate3d import generate_3d
from xaiscope.data.benchmark.params import RULES, BenchmarkParams, VolumeParams
from xaiscope.data.benchmark.volumes import make_dataset_3d

__all__ = [
    "BACKGROUNDS",
    "RULES",
    "BenchmarkParams",
    "VolumeParams",
    "generate",
    "generate_3d",
    "make_dataset",
    "make_dataset_3d",
    "make_split",
]
