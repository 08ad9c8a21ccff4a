"""The ground-truth lesion benchmark: real backgrounds, shape-coded lesions, exact masks.

``generate(out, **params)`` writes an image folder (``train/``, ``test/``, masks,
``benchmark.json``); ``make_dataset(**params)`` returns the same ``(train, test)``
datasets in memory. Settings: :class:`BenchmarkParams`.
"""

from xaiscope.data.benchmark.backgrounds import BUILTIN as BACKGROUNDS
from xaiscope.data.benchmark.generate import generate, make_dataset, make_split
from xaiscope.data.benchmark.params import RULES, BenchmarkParams

__all__ = ["BACKGROUNDS", "RULES", "BenchmarkParams", "generate", "make_dataset", "make_split"]
