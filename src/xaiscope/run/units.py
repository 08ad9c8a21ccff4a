"""Work units: a batch of images for one model, method and setting, and how to compute one.

:func:`compute_unit` is a pure function of its inputs (model, images, method, metrics):
the local backend calls it in-process and the Ray backend in a worker; either way the
driver commits the result, so resume and ``--force`` behave the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from xaiscope import evaluate, explain
from xaiscope.evaluate.sharing import shared_passes
from xaiscope.io import safe_name
from xaiscope.run.config import setting_id
from xaiscope.run.store import CURVE_COLUMNS, RESULT_COLUMNS, setting_key


@dataclass(frozen=True)
class Unit:
    """One work unit: images ``[start, stop)`` for (model, method, setting)."""

    model: str
    method: str
    hparams: tuple  # sorted (key, value) pairs
    start: int
    stop: int

    @property
    def setting(self) -> str:
        return setting_id(dict(self.hparams))

    @property
    def key(self) -> str:
        return setting_key(self.model, self.method, self.setting)

    @property
    def id(self) -> str:
        digest = self.key.rsplit("/s", 1)[-1]
        return f"{safe_name(self.model)}__{self.method}__{digest}__{self.start:07d}"


def plan(model_names: list[str], methods: list[tuple[str, dict[str, Any]]], n: int, unit_images: int) -> list[Unit]:
    """All units of the grid models x (method, setting) x image batches."""
    units = []
    for model in model_names:
        for name, hp in methods:
            frozen = tuple(sorted(hp.items(), key=lambda kv: kv[0]))
            for start in range(0, n, unit_images):
                units.append(Unit(model, name, frozen, start, min(n, start + unit_images)))
    return units


class UnitSource(Protocol):
    """All a backend sees of a run (:class:`xaiscope.run.context.RunContext` is one): the
    images, each model and its targets, the metrics, and how to build one unit's inputs."""

    dataset: Any  # xaiscope.data.Dataset: x, y, masks, ids
    device: torch.device
    models: dict[str, torch.nn.Module]
    targets: dict[str, torch.Tensor]
    metrics: list[tuple[str, dict[str, Any]]]

    @property
    def batch_size(self) -> int: ...

    @property
    def seed(self) -> int: ...

    def inputs(self, unit: Unit) -> UnitInputs: ...


@dataclass
class UnitInputs:
    """Everything a unit needs besides the model (tensors on the compute device)."""

    x: torch.Tensor
    y: torch.Tensor
    targets: torch.Tensor
    ids: list[str]
    masks: torch.Tensor | None = None
    extra_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    batch_size: int = 64
    seed: int = 0


def metric_instance(name: str, hp: dict[str, Any], batch_size: int, seed: int):
    """The metric with the run's batch size and seed unless its settings give their own."""
    cls = evaluate.get_class(name)
    extra: dict[str, Any] = {}
    if "model" in cls.needs or "explainer" in cls.needs:
        extra["batch_size"] = batch_size
    if cls.stochastic:
        extra["seed"] = seed
    return evaluate.get(name, **{**extra, **hp})


def passes_per_image(
    method: str,
    hparams: dict[str, Any],
    model: torch.nn.Module,
    shape: tuple[int, ...],
    metrics: list[tuple[str, dict[str, Any]]],
    batch_size: int,
    seed: int,
) -> float:
    """Model passes per image of one (method, setting) with the unit metrics, from the
    declarations: the method's passes + each metric's, given that method and model. Set-level
    metrics are scored after the units from the stored maps and the run's predictions, with
    no pass of their own; NaN where a count needs what is not known."""
    ex = explain.get(method, **{"batch_size": batch_size, **hparams})
    one = tuple(shape) if len(shape) in (3, 4) else None  # (C, H, W) or (C, D, H, W)
    return ex.passes(one, model) + sum(
        metric_instance(n, h, batch_size, seed).passes(one, explainer=ex, model=model)
        for n, h in per_unit_metrics(metrics)
    )


def planned_passes(
    unit: Unit,
    model: torch.nn.Module,
    shape: tuple[int, ...],
    metrics: list[tuple[str, dict[str, Any]]],
    batch_size: int,
    seed: int,
) -> float:
    """Model passes (images through the model) that computing ``unit`` takes: its images x
    :func:`passes_per_image`. :func:`compute_unit` makes this many where every count is
    exact (see :func:`inexact_counts`)."""
    per_image = passes_per_image(unit.method, dict(unit.hparams), model, shape, metrics, batch_size, seed)
    return (unit.stop - unit.start) * per_image


def per_unit_metrics(metrics: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The metrics a unit scores: all but the set-level ones (scored over the whole set
    once every unit is committed, see :func:`xaiscope.run.runner.score_set_level`)."""
    return [(n, h) for n, h in metrics if not evaluate.get_class(n).set_level]


def inexact_counts(metrics: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """The metrics whose pass counts are bounds (``"at most"``) or estimates (``"about"``)."""
    kinds = {name: evaluate.get_class(name).cost.kind for name, _ in metrics}
    return {name: kind for name, kind in kinds.items() if kind != "exact"}


def compute_unit(model: torch.nn.Module, unit: Unit, inp: UnitInputs) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Attributions ``[B, C, H, W]``, score rows and curve rows of one unit.

    The attributions are computed once and shared by all metrics; metrics that need the
    explainer (robustness, randomisation) get the same explainer object.
    """
    hp = dict(unit.hparams)
    ex = explain.get(unit.method, **{"batch_size": inp.batch_size, **hp})
    a = ex(model, inp.x, inp.targets)
    rows: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    base = {"model": unit.model, "method": unit.method, "setting": unit.setting}
    labels = inp.y.tolist()
    targets = inp.targets.tolist()
    unit_metrics = per_unit_metrics(inp.metrics)
    instances = [metric_instance(name, mhp, inp.batch_size, inp.seed) for name, mhp in unit_metrics]
    with shared_passes(instances):
        for metric in instances:
            _score_metric(metric, model, inp, a, ex, base, rows, curve_rows)
    if not unit_metrics:  # keep a row per image so the unit is visible in the results
        for i, id_ in enumerate(inp.ids):
            rows.append(
                {
                    "image_id": id_,
                    "label": labels[i],
                    "target": targets[i],
                    **base,
                    "metric": "none",
                    "value": float("nan"),
                }
            )
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    results["label"] = results["label"].astype("int64")
    results["target"] = results["target"].astype("int64")
    curves = pd.DataFrame(curve_rows, columns=CURVE_COLUMNS)
    return a.detach().cpu().numpy(), results, curves


def _score_metric(metric, model, inp: UnitInputs, a, ex, base: dict, rows: list, curve_rows: list) -> None:
    """Score rows (and curve rows for metrics with a curve) of one metric on a unit."""
    name = metric.name
    labels, targets = inp.y.tolist(), inp.targets.tolist()
    mask = evaluate.mask_for(metric, inp.masks, inp.extra_masks)
    if getattr(metric, "has_curve", False):  # scores and curve from the same model passes
        scores, fractions, values = metric.score_and_curves(model, inp.x, inp.targets, a, mask=mask, explainer=ex)
        fr = fractions.tolist()
        vals = values.detach().cpu().numpy()
        for i, id_ in enumerate(inp.ids):
            for step, f in enumerate(fr):
                curve_rows.append(
                    {
                        "image_id": id_,
                        **base,
                        "metric": name,
                        "step": step,
                        "fraction": float(f),
                        "value": float(vals[i, step]),
                    }
                )
    else:
        scores = metric(model, inp.x, inp.targets, a, mask=mask, explainer=ex)
    for i, (id_, s) in enumerate(zip(inp.ids, scores.detach().cpu().tolist())):
        rows.append(
            {"image_id": id_, "label": labels[i], "target": targets[i], **base, "metric": name, "value": float(s)}
        )
