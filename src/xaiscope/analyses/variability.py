"""How explanations vary across a collection of models trained alike.

For models ``k = 1..M`` (same data, architecture and schedule; different seeds) and
test image ``i`` with true label ``y_i``:

- correctness ``c_ki = [argmax f_k(x_i) = y_i]`` and true-class probability
  ``p_ki = softmax(f_k(x_i))_{y_i}``: mean and SD over models;
- maps ``m_ki``: the explainer's attribution for ``y_i``, channels summed, ``|.|``
  (``signed=False``), normalised (``sum_to_one`` by default, so each map has mass 1);
  pixel-wise mean ``mu_i`` and SD ``sigma_i`` over models;
- aggregated attention SD ``s_i = mean_pixels sigma_i`` (and, with a foreground mask
  ``F_i``, ``sum(sigma_i F_i) / sum(F_i)``);
- pairwise similarity: Spearman rank correlation of ``m_ai`` and ``m_bi`` for every pair
  of models ``a < b`` (NaN when a map is constant).

All SDs are population SDs (``ddof = 0``, divide by ``M``), so for 0/1 correctness
``SD = sqrt(mu (1 - mu))``.

Streaming and memory
--------------------
Models are consumed one at a time (pass a generator that loads each model lazily, and
no two models are held at once). Each model's maps are computed once, batch by batch,
and folded into running float64 sums with Welford's update
(``mean += (v - mean)/k; M2 += (v - mean_old)(v - mean_new)``), which is numerically
stable and gives mean and SD in one pass: ``2 N H W`` float64 for the maps (in a
memory-mapped temporary file beyond :data:`MAPS_BUDGET`) plus one step of images, read from
any source (:func:`xaiscope.data.open_source`), so the images need not fit in memory.
The Spearman correlations need two models' maps at once; we keep the standardised ranks
of a bounded subset of ``pair_images`` images (the first ones in dataset order) for every
model: memory ``M * pair_images * H W`` float32 (10 models, 64 images of 64x64: 10 MB).
``pair_images=None`` uses all images (``M N H W``).

Passes: per model ``N`` forward passes (probabilities) plus ``E N`` for the explainer
(``E = explainer.passes(shape)``): ``M (1 + E) N`` in all.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from xaiscope import models as xmodels
from xaiscope.data import Dataset, Source, open_source
from xaiscope.errors import ConfigError, DataError
from xaiscope.evaluate.stats import rank as average_ranks
from xaiscope.explain.postprocess import normalise as _normalise
from xaiscope.explain.postprocess import pool as _pool
from xaiscope.models.state import eval_mode, model_device

NORMALISATIONS = ("sum_to_one", "max", "none")
#: bytes of the per-image running sums of the maps (mean and M2, float64) kept in memory;
#: beyond, they live in a memory-mapped temporary file
MAPS_BUDGET = 2 << 30


class RunningStats:
    """Welford's running mean and population SD of a stream of equally shaped tensors (float64).

    ``update(v, index)`` folds values for the rows ``index`` of the current item; call
    :meth:`next_item` before each new item (model). Rows may arrive in batches.
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device | str = "cpu", budget_bytes: int | None = None):
        self.count = 0
        self._tmp = None
        size = 16 * int(np.prod(shape))
        if budget_bytes is not None and size > budget_bytes and torch.device(device).type == "cpu":
            # beyond the budget the sums live in a temporary file (memory-mapped; rows are updated a batch at a time)
            self._tmp = tempfile.TemporaryDirectory(prefix="xaiscope-variability-")
            arrays = [
                np.lib.format.open_memmap(Path(self._tmp.name) / f"{k}.npy", mode="w+", dtype=np.float64, shape=shape)
                for k in ("mean", "m2")
            ]
            self.mean, self.m2 = (torch.from_numpy(a) for a in arrays)
        else:
            self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
            self.m2 = torch.zeros(shape, dtype=torch.float64, device=device)

    def next_item(self) -> None:
        self.count += 1

    def update(self, v: torch.Tensor, index=slice(None)) -> None:
        if self.count < 1:
            raise RuntimeError("call next_item() before update()")
        v = v.to(self.mean.device, torch.float64)
        old = self.mean[index]
        delta = v - old
        new = old + delta / self.count
        self.mean[index] = new
        self.m2[index] += delta * (v - new)

    def sd(self) -> torch.Tensor:
        """Population SD (divide by the count); zeros before any item."""
        if self.count == 0:
            return torch.zeros_like(self.m2)
        return (self.m2.clamp_min(0) / self.count).sqrt()


def standardised_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Average ranks of each flattened map, centred and scaled to unit population SD (NaN if constant)."""
    r = average_ranks(maps.flatten(1))
    r = r - r.mean(dim=1, keepdim=True)
    sd = r.pow(2).mean(dim=1, keepdim=True).sqrt()
    return torch.where(
        sd > 0, r / torch.where(sd > 0, sd, torch.ones_like(sd)), torch.full_like(r, float("nan"))
    ).float()


@dataclass
class VariabilityResult:
    """Per-image statistics over the models (see the module docstring); population SDs.

    ``correct_mean/sd``, ``prob_mean/sd``, ``attention_sd``, ``attention_sd_fg`` (NaN
    without a foreground), ``spearman_mean`` (mean over model pairs, NaN for images
    outside the pair subset): ``[N]``. ``mean_map``, ``sd_map``: ``[N, H, W]`` (``[N, D, H, W]``).
    ``pairwise``: ``[M, M]`` mean Spearman over the pair-subset images (1 on the diagonal).
    ``model_accuracy``: ``[M]``. ``pair_index``: image indices used for pairs.
    """

    ids: list[str]
    labels: torch.Tensor
    correct_mean: torch.Tensor
    correct_sd: torch.Tensor
    prob_mean: torch.Tensor
    prob_sd: torch.Tensor
    mean_map: torch.Tensor
    sd_map: torch.Tensor
    attention_sd: torch.Tensor
    attention_sd_fg: torch.Tensor
    spearman_mean: torch.Tensor
    pairwise: torch.Tensor
    pair_index: torch.Tensor
    model_accuracy: torch.Tensor
    n_models: int
    passes: int
    settings: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        """One row per image."""
        cols = {
            "correct_mean": self.correct_mean,
            "correct_sd": self.correct_sd,
            "prob_mean": self.prob_mean,
            "prob_sd": self.prob_sd,
            "attention_sd": self.attention_sd,
            "attention_sd_fg": self.attention_sd_fg,
            "spearman_mean": self.spearman_mean,
        }
        lists = {k: v.tolist() for k, v in cols.items()}
        labels = self.labels.tolist()
        return [{"id": self.ids[i], "label": labels[i], **{k: lists[k][i] for k in cols}} for i in range(len(self.ids))]


class VariabilityAccumulator:
    """Streams models into running statistics; :meth:`result` gives a :class:`VariabilityResult`."""

    def __init__(
        self,
        dataset: Dataset | Source,
        explainer,
        *,
        normalise: str = "sum_to_one",
        signed: bool = False,
        foreground: torch.Tensor | str | None = None,
        batch_size: int = 64,
        pair_images: int | None = 64,
        step_images: int = 256,
    ):
        if normalise not in NORMALISATIONS:
            raise ConfigError(f"Unknown normalisation {normalise!r}; choose one of {', '.join(NORMALISATIONS)}.")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        src = open_source(dataset)
        if len(src) == 0:
            raise DataError(f"The data {src.source or ''} is empty.".replace("  ", " "))
        n, spatial = len(src), tuple(src.shape[1:])
        if isinstance(foreground, str):
            if foreground != "masks" or not src.has_masks:
                raise DataError(
                    f"The foreground {foreground!r} needs the expert masks of {src.source}, which has none."
                )
        elif foreground is not None:
            foreground = torch.as_tensor(foreground).bool()
            if tuple(foreground.shape) == spatial:
                foreground = foreground.expand(n, *spatial)
            if tuple(foreground.shape) != (n, *spatial):
                raise DataError(
                    f"The foreground mask has shape {list(foreground.shape)}; it needs {[n, *spatial]} or {list(spatial)}."
                )
        self.src, self.explainer, self.normalise, self.signed = src, explainer, normalise, signed
        self.foreground, self.batch_size, self.step = foreground, batch_size, max(int(step_images), batch_size)
        k = n if pair_images is None else max(0, min(int(pair_images), n))
        self.pair_index = torch.arange(k)
        self.maps = RunningStats((n, *spatial), budget_bytes=MAPS_BUDGET)
        self.correct = RunningStats((n,))
        self.prob = RunningStats((n,))
        self.ranks: list[torch.Tensor] = []
        self.accuracy: list[float] = []
        self.passes = 0

    def update(self, model: torch.nn.Module) -> None:
        """Explain and score the whole set with ``model``, a step of images at a time, and fold
        the results in."""
        dev = model_device(model)
        for stats in (self.maps, self.correct, self.prob):
            stats.next_item()
        ranks = []
        n_pair = self.pair_index.numel()
        correct_total, start = 0.0, 0
        with xmodels.count_passes(model) as count:
            for b in self.src.batches(self.step):
                sl = slice(start, start + len(b))
                start += len(b)
                xb, yb = b.x.to(dev), b.y.to(dev)
                with eval_mode(model):
                    prob = xmodels.forward(model, xb, batch_size=self.batch_size).softmax(dim=1)
                c = (prob.argmax(dim=1) == yb).double()
                correct_total += float(c.sum())
                self.correct.update(c, sl)
                self.prob.update(prob.gather(1, yb.view(-1, 1)).squeeze(1), sl)
                a = self.explainer(model, xb, yb)
                m = _pool(a, "sum", len(self.src.shape) - 1)
                m = _normalise(m if self.signed else m.abs(), self.normalise)
                self.maps.update(m, sl)
                if sl.start < n_pair:
                    ranks.append(standardised_ranks(m[: n_pair - sl.start]).cpu())
        self.passes += count.rows
        if n_pair:
            self.ranks.append(torch.cat(ranks))
        self.accuracy.append(correct_total / len(self.src))

    def _foreground_sd(self, sd_map: torch.Tensor) -> torch.Tensor:
        """``sum(sigma_i F_i) / sum(F_i)`` per image (NaN without foreground pixels)."""

        def part(sd, fg):
            fg = fg.to(sd.dtype).flatten(1)
            s = fg.sum(1)
            return torch.where(s > 0, (sd.flatten(1) * fg).sum(1) / s.clamp_min(1), torch.full_like(s, float("nan")))

        if isinstance(self.foreground, torch.Tensor):
            return part(sd_map, self.foreground)
        out, start = [], 0
        for b in self.src.batches(self.step):
            out.append(part(sd_map[start : start + len(b)], b.masks))
            start += len(b)
        return torch.cat(out)

    def result(self) -> VariabilityResult:
        m = self.maps.count
        if m == 0:
            raise DataError("The model collection is empty; variability needs at least one model.")
        sd_map = self.maps.sd()
        att = sd_map.flatten(1).mean(1)
        if self.foreground is not None:
            att_fg = self._foreground_sd(sd_map)
        else:
            att_fg = torch.full_like(att, float("nan"))
        n = len(self.src)
        n_pair = self.pair_index.numel()
        pairwise = torch.eye(m, dtype=torch.float64)
        per_image = torch.zeros(n_pair, dtype=torch.float64)
        n_ok = torch.zeros(n_pair, dtype=torch.float64)
        for a in range(m):
            for b in range(a + 1, m):
                rho = (self.ranks[a].double() * self.ranks[b].double()).mean(1)  # [n_pair]
                ok = torch.isfinite(rho)
                pairwise[a, b] = pairwise[b, a] = rho[ok].mean() if ok.any() else float("nan")
                per_image += torch.where(ok, rho, torch.zeros_like(rho))
                n_ok += ok.double()
        spearman = torch.full((n,), float("nan"), dtype=torch.float64)
        if n_pair and m > 1:
            spearman[:n_pair] = torch.where(
                n_ok > 0, per_image / n_ok.clamp_min(1), torch.full_like(per_image, float("nan"))
            )
        return VariabilityResult(
            ids=list(self.src.ids),
            labels=self.src.labels.clone(),
            correct_mean=self.correct.mean.clone(),
            correct_sd=self.correct.sd(),
            prob_mean=self.prob.mean.clone(),
            prob_sd=self.prob.sd(),
            mean_map=self.maps.mean.float(),
            sd_map=sd_map.float(),
            attention_sd=att,
            attention_sd_fg=att_fg,
            spearman_mean=spearman,
            pairwise=pairwise,
            pair_index=self.pair_index.clone(),
            model_accuracy=torch.tensor(self.accuracy, dtype=torch.float64),
            n_models=m,
            passes=self.passes,
            settings={
                "method": getattr(self.explainer, "name", str(self.explainer)),
                "hparams": dict(getattr(self.explainer, "hparams", {})),
                "normalise": self.normalise,
                "signed": self.signed,
                "foreground": self.foreground is not None,
                "pair_images": n_pair,
                "ddof": 0,
            },
        )


def variability(
    models: Iterable[torch.nn.Module],
    dataset: Dataset | Source,
    explainer,
    *,
    normalise: str = "sum_to_one",
    signed: bool = False,
    foreground: torch.Tensor | str | None = None,
    batch_size: int = 64,
    pair_images: int | None = 64,
) -> VariabilityResult:
    """Statistics over the models of a collection for every image of ``dataset`` (module docstring).

    Parameters
    ----------
    models : iterable of nn.Module, consumed once, one model at a time (a generator may load lazily)
    dataset : Dataset or Source, the test images with true labels
    explainer : an :mod:`xaiscope.explain` explainer; maps explain the true label
    normalise : "sum_to_one" (default) | "max" | "none", per map before the statistics
    signed : bool, default False, keep signs instead of ``|a|``
    foreground : bool Tensor ``[N, H, W]`` or ``[H, W]``, or ``"masks"`` (the data's expert
        masks, read a step at a time), optional region for ``attention_sd_fg``
    batch_size : int, default 64, images per explainer / model call
    pair_images : int or None, default 64, images (first in order) used for pairwise Spearman

    Returns
    -------
    VariabilityResult
    """
    acc = VariabilityAccumulator(
        dataset,
        explainer,
        normalise=normalise,
        signed=signed,
        foreground=foreground,
        batch_size=batch_size,
        pair_images=pair_images,
    )
    for model in models:
        acc.update(model)
    return acc.result()
