"""Bounded summaries of a dataset fed one batch at a time: per-channel moments for the
normalisation statistics, and the dataset fingerprint. The in-memory dataset and every
streamed source use these, so both give the same numbers."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch


class Moments:
    """Per-channel running mean and sum of squared deviations over images ``[B, C, *spatial]``
    (Chan, Golub & LeVeque 1979, pairwise update), float64.

    ``M2_ab = M2_a + M2_b + delta^2 n_a n_b / (n_a + n_b)``, ``delta = mean_b - mean_a``.
    """

    def __init__(self, channels: int) -> None:
        self.n = 0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)

    def update(self, x: np.ndarray) -> None:
        xb = np.moveaxis(np.asarray(x, dtype=np.float64), 1, 0).reshape(x.shape[1], -1)
        nb = xb.shape[1]
        if nb == 0:
            return
        mb = xb.mean(axis=1)
        m2b = np.square(xb - mb[:, None]).sum(axis=1)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + m2b + delta**2 * self.n * nb / n
        self.n = n

    def mean_std(self) -> tuple[list[float], list[float]]:
        """``(mean, std)`` per channel as float32 values; one pixel per channel: std 1 (no spread,
        keep the scale); std at least 1e-6."""
        std = np.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else np.ones_like(self.m2)
        std = np.maximum(np.nan_to_num(std, nan=1.0), 1e-6)
        return self.mean.astype(np.float32).tolist(), std.astype(np.float32).tolist()


class Fingerprint:
    """SHA-256 identity of a dataset's exact data, fed one batch at a time in image order:
    the bytes of the (normalised) images, of the masks and of the annotator masks each go to
    their own hash; the result hashes those digests with the labels, ids and annotator names
    (first 16 hex digits). Streamed and in-memory give the same value."""

    def __init__(self) -> None:
        self._x, self._m, self._a = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
        self._y: list[int] = []
        self._ids: list[str] = []

    def update(self, x: torch.Tensor, y, ids: Sequence[str], masks=None, annotator_masks=None) -> None:
        self._x.update(x.detach().cpu().float().contiguous().numpy().tobytes())
        self._y.extend(int(v) for v in torch.as_tensor(y).reshape(-1).tolist())
        self._ids.extend(ids)
        if masks is not None:
            self._m.update(torch.as_tensor(masks).cpu().numpy().astype(bool).tobytes())
        if annotator_masks is not None:
            self._a.update(torch.as_tensor(annotator_masks).cpu().numpy().astype(bool).tobytes())

    def hexdigest(self, annotators: Sequence[str] | None = None) -> str:
        h = hashlib.sha256()
        for part in (
            self._x.digest(),
            np.asarray(self._y, dtype=np.int64).tobytes(),
            "\n".join(self._ids).encode(),
            self._m.digest(),
            "\n".join(annotators or []).encode(),
            self._a.digest(),
        ):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.hexdigest()[:16]
