"""Steps of a streaming job: a batch of images moved to the device once, its work done, and a
CUDA out-of-memory error answered by halving the step instead of ending the job."""

from __future__ import annotations

import ctypes
import functools
from typing import Callable, Iterable, TypeVar

import torch

from xaiscope.data.sources import Batch
from xaiscope.errors import ModelError

T = TypeVar("T")


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; to a GPU through pinned memory, asynchronously."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def split(b: Batch) -> tuple[Batch, Batch]:
    """The two halves of a batch."""
    k = len(b) // 2

    def part(sl: slice) -> Batch:
        return Batch(
            index=b.index[sl],
            ids=b.ids[sl],
            x=b.x[sl],
            y=b.y[sl],
            masks=None if b.masks is None else b.masks[sl],
            extra_masks={n: v[sl] for n, v in b.extra_masks.items()},
            annotator_masks=None if b.annotator_masks is None else b.annotator_masks[sl],
            pixel_hashes=b.pixel_hashes[sl],
        )

    return part(slice(0, k)), part(slice(k, None))


def each_step(batches: Iterable[Batch], work: Callable[[Batch], T]) -> Iterable[tuple[Batch, T]]:
    """``(batch, work(batch))`` for every batch; when ``work`` runs out of GPU memory the
    batch is halved and each half done on its own (recursively, down to one image). ``work``
    must leave nothing behind when it fails: a job keeps what a step returns. After each
    step the C heap's free memory goes back to the system (:func:`release_memory`), so the
    resident size stays flat over thousands of steps."""
    for b in batches:
        yield from _halving(b, work)
        release_memory()


def release_memory() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``; nothing
    elsewhere). A step allocates and frees tens of megabytes of tensors of varying sizes;
    without this the freed heap stays resident and grows with fragmentation."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _halving(b: Batch, work: Callable[[Batch], T]) -> Iterable[tuple[Batch, T]]:
    try:
        out = work(b)
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(b) <= 1:
            raise ModelError(
                f"The device ran out of memory on the single image {b.ids[0]!r}; lower --batch-size "
                "(images per model call) or use a smaller model."
            ) from None
        first, second = split(b)
        yield from _halving(first, work)
        yield from _halving(second, work)
        return
    yield b, out
