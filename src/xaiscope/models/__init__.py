"""Models: loading user models, a small zoo, the chunked forward helper, training."""

from xaiscope.models.forward import count_passes, forward, scores
from xaiscope.models.load import load, random_weights, read_sidecar, seeded, weights_hash
from xaiscope.models.state import eval_mode, model_device
from xaiscope.models.zoo import ZOO, build

__all__ = [
    "ZOO",
    "build",
    "count_passes",
    "eval_mode",
    "forward",
    "load",
    "model_device",
    "random_weights",
    "read_sidecar",
    "scores",
    "seeded",
    "weights_hash",
]
