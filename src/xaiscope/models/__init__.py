"""Models: loading user models, a small zoo, the chunked forward helper, training."""

from xaiscope.models.forward import count_passes, forward, scores
from xaiscope.models.load import load, read_sidecar
from xaiscope.models.state import eval_mode, model_device
from xaiscope.models.zoo import ZOO, build

__all__ = ["ZOO", "build", "count_passes", "eval_mode", "forward", "load", "model_device", "read_sidecar", "scores"]
