"""Set-level metrics over a stream of batches: update per batch, compute once (the
torchmetrics pattern).

A set-level metric (``Metric.set_level``: sufficiency, consistency) scores each image against
all the other images of the set, so it cannot be scored batch by batch. :class:`SetLevelScores`
keeps, per image, the metric's map (``Metric.map``: the only thing the score needs besides the
predicted class) at the image's position in the source, in memory up to ``budget_bytes`` and in
a temporary file beyond; :meth:`SetLevelScores.compute` then scores the whole set:

- when the set is small (its pairwise matrix and maps fit the budget), with the metric's own
  ``set_scores`` on all maps at once, so the scores are exactly those of one call on the whole
  set, whatever the batches, their size and their order;
- else row block by row block (``Metric.set_agreement_blocks``), holding two blocks of maps
  and one block of the pairwise matrix at a time.

No model pass: the predicted classes come with the updates.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from xaiscope.errors import MetricError

#: bytes of maps kept in memory before they go to a temporary file, and the size of the
#: set up to which the pairs are computed at once
DEFAULT_BUDGET = 1 << 30


class SetLevelScores:
    """Accumulates the maps of one set-level ``metric`` for ``n`` images of map shape
    ``map_shape`` (update/compute; see the module docstring)."""

    def __init__(self, metric, n: int, map_shape: tuple[int, ...], *, budget_bytes: int = DEFAULT_BUDGET) -> None:
        if not metric.set_level:
            raise MetricError(f"{metric.name} is not a set-level metric.")
        self.metric, self.n, self.budget = metric, int(n), int(budget_bytes)
        self.features = int(np.prod(map_shape))
        self.map_shape = tuple(map_shape)
        self.seen = np.zeros(self.n, dtype=bool)
        self.predicted = np.full(self.n, -1, dtype=np.int64)
        self._tmp = None
        size = self.n * self.features * 4
        if size <= self.budget:
            self.maps = np.zeros((self.n, self.features), dtype=np.float32)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="xaiscope-setlevel-")
            self.maps = np.lib.format.open_memmap(
                Path(self._tmp.name) / "maps.npy", mode="w+", dtype=np.float32, shape=(self.n, self.features)
            )

    def update(self, index: torch.Tensor, a: torch.Tensor, predicted: torch.Tensor) -> None:
        """Add the attributions ``a`` (``[B, C, *map_shape]`` or maps ``[B, *map_shape]``: images
        ``(H, W)``, volumes ``(D, H, W)``) of the images at positions ``index`` and their
        predicted classes."""
        pos = torch.as_tensor(index).cpu().numpy().astype(np.int64)
        m = self.metric.map(torch.as_tensor(a).detach().float(), dims=len(self.map_shape)).reshape(len(pos), -1)
        self.maps[pos] = m.cpu().numpy()
        self.predicted[pos] = torch.as_tensor(predicted).cpu().numpy()
        self.seen[pos] = True

    def compute(self, block: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """``(positions, scores)``: the images updated, in position order, and their scores."""
        pos = np.flatnonzero(self.seen)
        n = len(pos)
        if n == 0:
            return pos, torch.zeros(0)
        pred = torch.from_numpy(self.predicted[pos])
        whole = n * n * 9 + n * self.features * 12 <= self.budget  # pairs (bool + double) and maps (float + double)
        if whole and block is None:
            maps = torch.from_numpy(np.ascontiguousarray(self.maps[pos])).view(n, *self.map_shape)
            return pos, self.metric.set_scores_of_maps(maps, pred).float()
        rows = block or max(1, min(n, self.budget // max(1, 24 * (self.features + n))))
        every = bool(self.seen.all())

        def read(s: int, e: int) -> torch.Tensor:
            part = self.maps[s:e] if every else self.maps[pos[s:e]]
            return torch.from_numpy(np.array(part, dtype=np.float32))

        return pos, self.metric.set_agreement_blocks(read, n, pred, rows).float()

    def close(self) -> None:
        """Remove the temporary file, if any."""
        if self._tmp is not None:
            del self.maps
            self._tmp.cleanup()
            self._tmp = None


def block_agreement(
    label: torch.Tensor, n: int, block: int, pairs: Callable[[int, int, int, int], torch.Tensor]
) -> torch.Tensor:
    """:func:`~xaiscope.evaluate.stats.agreement` of ``label`` ``[n]`` under the pair relation
    ``pairs(s, e, s2, e2)`` (``[e - s, e2 - s2]`` bool for rows ``s:e`` against ``s2:e2``),
    built one block of rows and columns at a time; the diagonal (an image with itself) left out."""
    same_cnt = torch.zeros(n, dtype=torch.float64)
    cnt = torch.zeros(n, dtype=torch.float64)
    for s in range(0, n, block):
        e = min(n, s + block)
        for s2 in range(0, n, block):
            e2 = min(n, s2 + block)
            close = pairs(s, e, s2, e2).clone()
            if s2 < e and s < e2:  # this block holds part of the diagonal
                r = torch.arange(max(s, s2), min(e, e2))
                close[r - s, r - s2] = False
            same = label[s:e].view(-1, 1) == label[s2:e2].view(1, -1)
            cnt[s:e] += close.sum(1)
            same_cnt[s:e] += (close & same).sum(1)
    share = same_cnt / cnt.clamp_min(1)
    return torch.where(cnt > 0, share, torch.zeros_like(share))
