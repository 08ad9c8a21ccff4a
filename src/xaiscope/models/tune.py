"""Choosing the number of images per model call by timing the model on the user's images.

On a GPU throughput usually grows with the batch until memory runs out; on a CPU it often
peaks at a few images per call, once a call's activations no longer fit in the caches
(``small_cnn`` at 64x64 on a 2-core test machine: ~0.8 ms per image at 16 per call,
~2 ms at 256). :func:`best_batch_size` measures instead of guessing.
"""

from __future__ import annotations

import math
import time

import torch

from xaiscope.models.forward import forward
from xaiscope.models.state import eval_mode

CANDIDATES = (4, 8, 16, 32, 64, 128, 256)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_batch_size(
    model: torch.nn.Module, x: torch.Tensor, candidates: tuple[int, ...] = CANDIDATES, images: int = 256
) -> int:
    """The candidate with the highest forward throughput (images per second) on ``x``.

    Each candidate forwards ``images`` images (``x`` repeated as needed; at least one
    call) after one warm-up call, in eval mode without gradients; cost about
    ``len(candidates) * images`` forward passes. Candidates stop at the first one that
    runs out of memory, and once two in a row are more than 10% slower than the best.
    """
    if not candidates:
        raise ValueError("best_batch_size needs at least one candidate.")
    dev = x.device
    pool = x.repeat(math.ceil(max(images, max(candidates)) / x.shape[0]), 1, 1, 1)
    best, best_rate, worse = min(candidates), 0.0, 0
    with eval_mode(model):
        for bs in sorted(candidates):
            n = max(bs, images // bs * bs)
            try:
                forward(model, pool[:bs], batch_size=bs)  # warm-up (allocations, kernel choice)
                _sync(dev)
                t = time.perf_counter()
                forward(model, pool[:n], batch_size=bs)
                _sync(dev)
            except torch.OutOfMemoryError:
                break
            rate = n / max(time.perf_counter() - t, 1e-9)
            if rate > best_rate:
                best, best_rate, worse = bs, rate, 0
            elif rate < 0.9 * best_rate:
                worse += 1
                if worse == 2:
                    break
    return best
