"""Shared passes: metrics scored together pay once for the model passes they have in common.

Inside ``with shared_passes(metrics):`` (the run's unit computation and ``evaluate`` enter
it around the metrics of one step), each family's mechanism looks up work another metric of
the block has done on the same model, images, targets and explainer:

- **faithfulness and axiomatic** (:mod:`~xaiscope.evaluate.perturbation`): a perturbed
  input is identified by its image, the set of pixels it changes and what they become (the
  fill: ``black``, ``zero``, ``mean``, ``blur`` with its sigma; fills drawn per step or
  solved per mask are never shared). The set is coded by two sums of random 40-bit codes,
  one per pixel (a collision needs two sets with equal sums in both, about ``T^2 / 2^80``
  for ``T`` sets), so the code of a cumulative step is a difference of prefix sums along the
  order. The model's readouts of each pair (softmax and logit of the target, predicted
  class) are kept, and a later metric sends to the model only the pairs not seen yet: the
  unperturbed image is read once for every metric with a base pass; ``pixel_flipping``
  and ``sensitivity_n`` share the steps their orders and fills have in common;
  ``faithfulness_estimate`` and ``non_sensitivity`` with ``features_in_step = 1`` remove
  the same single pixels (in different orders).
- **robustness** (:mod:`~xaiscope.evaluate.robustness`): metrics whose declarations draw
  the same perturbed inputs (sampler and its settings, number of draws, seed, batch size)
  are computed together on one set of re-explanations; each extra forward they need
  (logits, layer activations) is run once per kind.
- **randomisation** (:mod:`~xaiscope.evaluate.randomisation`): a re-initialised layer is
  reset from ``seed + 1`` whatever the order, so a randomised model is determined by the
  seed and the set of randomised layers; its maps (and the unrandomised model's, with the
  same smoothing) are explained once.

Scores are bit-identical to each metric run alone (``tests/test_shared_passes.py``): the
shared work is the same computation on the same inputs, and the perturbation runner never
sends a one-row call to the model (a batch of one can take another kernel). ``saved``
counts the images that did not go through the model thanks to sharing.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

_SCOPE: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("xaiscope_shared_passes", default=None)


@dataclass
class Scope:
    """What the metrics of one block share: their instances (``metrics``), the memo of each
    family (``memo``, keyed by family and by what the shared work depends on) and the images
    the block did not send to the model (``saved``)."""

    metrics: list[Any]
    memo: dict[Any, Any] = field(default_factory=dict)
    saved: int = 0
    #: a dry block (the pass plan's): perturbation pairs are identified and counted but
    #: never sent to the model (their readouts are NaN)
    dry: bool = False
    _alive: dict[tuple, Any] = field(default_factory=dict)

    def key(self, obj: Any) -> Any:
        """A hashable identity of a tensor (its storage, view and version), a module or an
        explainer (the object), or a value. The object is kept alive for the block, so its
        identity cannot be taken by another object meanwhile."""
        if obj is None or isinstance(obj, (int, float, str, bool, tuple)):
            return obj
        if isinstance(obj, torch.Tensor):
            k = (
                "tensor",
                obj.data_ptr(),
                obj.storage_offset(),
                tuple(obj.shape),
                tuple(obj.stride()),
                obj.dtype,
                str(obj.device),
                obj._version,
            )
        else:
            k = ("object", id(obj))
        self._alive.setdefault(k, obj)
        return k

    def table(self, family: str, *parts: Any) -> dict:
        """The memo of ``family`` for the objects ``parts`` (created empty on first use)."""
        return self.memo.setdefault((family, *(self.key(p) for p in parts)), {})


@contextlib.contextmanager
def shared_passes(metrics: list[Any], *, dry: bool = False) -> Iterator[Scope]:
    """Within the block, the metrics ``metrics`` (instances) share their model passes; yields
    the :class:`Scope` (``scope.saved``: images not sent to the model thanks to sharing).
    ``dry``: perturbation metrics only count their pairs (see :class:`Scope`)."""
    scope = Scope(list(metrics), dry=dry)
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def current() -> Scope | None:
    """The innermost :func:`shared_passes` block's scope, or None outside one."""
    return _SCOPE.get()
