"""The pass plan: what a suite of methods x metrics costs, before it runs.

For every (method, metric) cell, :func:`pass_plan` gives

- ``passes``: model passes per image of the metric alone (its declared count with the
  method's ``E``; images through the model, forward or forward and backward);
- ``saved``: of those, the passes per image another metric of the same shared-passes
  block pays for (:mod:`~xaiscope.evaluate.sharing`), the metrics taken in order:
  perturbation pairs from a dry run on the probe images (the pairs' identities are worked
  out, nothing is sent to the model), robustness groups from their share keys (each
  member costs what it adds to the group, :func:`~xaiscope.evaluate.robustness.shared_cost`),
  randomisation from the maps already explained (``explained_maps``);
- ``seconds``: an estimate for ``n_images`` images from a timing probe on the probe images:
  ``t_f``, the seconds per image of the model's forward in full calls (``batch_size``
  images, the probe images repeated), and ``t_E``, of the method's explanation (of about one
  call's worth of passes); the cell's count is evaluated with ``E = t_E / t_f`` forwards, the saved
  passes are taken off and the work besides the model (superpixels, imputation, the
  metric's own arithmetic), timed by the dry run, is added:
  ``seconds = n (t_f (count(E = t_E / t_f) - saved_f) + overhead)``;
- ``drivers``: the settings the count grows with (the metric's and the method's, read
  from their pass formulas), e.g. ``max_sensitivity.nr_samples x integrated_gradients.n_steps``.

A cell is ``marked`` when it takes at least ``mark`` (default 0.2) of the suite's estimated
time. The work besides the model is timed on the probe images, a few per call, so it
errs long where that work has a fixed cost per call.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass

import torch

from xaiscope import explain, models
from xaiscope.evaluate import perturbation, randomisation, robustness
from xaiscope.evaluate.base import Metric, n_layers
from xaiscope.evaluate.cost import Env
from xaiscope.evaluate.sharing import current, shared_passes


@dataclass
class PlanCell:
    """One (method, metric) cell of the plan (see the module docstring)."""

    method: str
    metric: str
    passes: float
    saved: float
    seconds: float
    drivers: str
    marked: bool = False
    #: seconds of the cell's model passes alone (its count with E = t_E / t_f, times t_f,
    #: for all images) and after sharing: the floors of ``benchmarks/bench_suite.py``
    floor: float = 0.0
    shared_floor: float = 0.0


@dataclass
class PassPlan:
    """The cells, each method's own passes and time, and what the probe measured."""

    cells: list[PlanCell]
    method_passes: dict[str, float]
    method_seconds: dict[str, float]
    n_images: int
    forward_seconds: float
    probe_seconds: float

    @property
    def passes(self) -> float:
        """Passes per image of the whole suite without sharing."""
        return sum(self.method_passes.values()) + sum(c.passes for c in self.cells)

    @property
    def saved(self) -> float:
        """Passes per image sharing saves."""
        return sum(c.saved for c in self.cells)

    @property
    def seconds(self) -> float:
        """Estimated seconds of the whole suite."""
        return sum(self.method_seconds.values()) + sum(c.seconds for c in self.cells)


def drivers_of(metric: Metric) -> list[str]:
    """The settings of ``metric`` named in its pass formula."""
    return [f"{metric.name}.{p}" for p in metric.params if re.search(rf"\b{re.escape(p)}\b", metric.passes_formula)]


def method_drivers(ex, shape, model) -> list[str]:
    """The numeric settings of explainer ``ex`` whose doubling changes its passes per image."""
    base, out = ex.passes(shape, model), []
    for p, v in ex.hparams.items():
        if p in ("batch_size", "seed") or isinstance(v, bool) or not isinstance(v, (int, float)) or v == 0:
            continue
        try:
            more = explain.get(ex.name, **{**ex.hparams, p: type(v)(2 * v)}).passes(shape, model)
        except Exception:  # a doubled value the method refuses says nothing about its count
            continue
        if more != base:
            out.append(f"{ex.name}.{p}")
    return out


def _rows(t: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` rows of ``t`` repeated as often as needed."""
    return t.repeat(math.ceil(k / t.shape[0]), *[1] * (t.dim() - 1))[:k]


def _seconds(fn, repeats: int = 3) -> float:
    fn()  # warm-up: first calls allocate and compile kernels
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def pass_plan(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    explainers: list,
    metrics: list[Metric],
    *,
    n_images: int,
    masks: torch.Tensor | None = None,
    mask_of=None,
    across_methods: bool = True,
    batch_size: int = 64,
    mark: float = 0.2,
) -> PassPlan:
    """The :class:`PassPlan` of ``explainers`` x ``metrics`` on ``n_images`` images like the
    probe images ``x`` (a few, with targets ``y``). ``mask_of(metric)`` gives a metric's
    masks of the probe images (default: ``masks``); ``across_methods``: one shared-passes
    block spans every method (``evaluate``) or one per method (the run's units)."""
    t_probe = time.perf_counter()
    n, shape = x.shape[0], tuple(x.shape[1:])
    layers = float(n_layers(model))
    mask_of = mask_of or (lambda m: masks)
    rows = max(n, min(batch_size, 64))  # full calls, as the run makes them
    with models.eval_mode(model), torch.no_grad():
        t_f = _seconds(lambda: models.forward(model, _rows(x, rows), batch_size=batch_size), repeats=5) / rows
    cells: list[PlanCell] = []
    method_passes, method_seconds = {}, {}
    dry_block = shared_passes(metrics, dry=True) if across_methods else contextlib.nullcontext()
    with dry_block:
        for ex in explainers:
            e = float(ex.passes(shape, model))
            a = ex(model, x, y)
            k = max(n, min(64, math.ceil(batch_size / e))) if math.isfinite(e) and e > 0 else n
            xk, yk = _rows(x, k), _rows(y, k)  # about one full call of the method's passes
            t_e = _seconds(lambda ex=ex, xk=xk, yk=yk: ex(model, xk, yk), repeats=2) / k
            e_f = t_e / t_f if t_f > 0 else e
            label = ex.name if ex.name not in method_passes else f"{ex.name}#{len(method_passes) + 1}"
            method_passes[label], method_seconds[label] = e, n_images * t_e
            block = shared_passes(metrics, dry=True) if not across_methods else contextlib.nullcontext()
            with block:
                cells += _cells(model, x, y, a, ex, label, metrics, mask_of, shape, (e, e_f, t_f, layers, n_images))
    plan = PassPlan(cells, method_passes, method_seconds, n_images, t_f, time.perf_counter() - t_probe)
    total = plan.seconds
    for c in cells:
        c.marked = total > 0 and c.seconds >= mark * total
    return plan


def _cells(model, x, y, a, ex, label, metrics, mask_of, shape, numbers) -> list[PlanCell]:
    """The cells of one method: each metric's count, its share of sharing, its time."""
    e, e_f, t_f, layers, n_images = numbers
    n = x.shape[0]
    out = []
    seen_maps: set = set()
    groups: dict[tuple, list] = {}
    scope = current()
    for m in metrics:
        with m.sized(shape):
            hp = dict(m.hparams)
            passes = m.cost(Env(hp, shape, e, layers))
            count_f = m.cost(Env(hp, shape, e_f, layers))
            saved = saved_f = overhead = 0.0
            if isinstance(m, robustness.Robustness):
                group = groups.setdefault(m.share_key(), [])
                before, group = [*group], group.append(m) or group
                if before:
                    saved = passes - (robustness.shared_cost(group, e) - robustness.shared_cost(before, e))
                    saved_f = count_f - (robustness.shared_cost(group, e_f) - robustness.shared_cost(before, e_f))
            elif isinstance(m, randomisation._Randomisation):
                maps = m.explained_maps(model)
                per_map = hp[m.spec.smooth] if m.spec.smooth else 1
                again = sum(1 for k in maps if k in seen_maps)
                seen_maps.update(maps)
                saved, saved_f = again * per_map * e, again * per_map * e_f
        if isinstance(m, perturbation.PerturbationMetric) or not m.needs & {"model", "explainer"}:
            before_saved = scope.saved if scope is not None else 0
            t0 = time.perf_counter()
            m(model, x, y, a, mask=mask_of(m), explainer=ex)
            overhead = (time.perf_counter() - t0) / n
            if scope is not None:
                saved = saved_f = (scope.saved - before_saved) / n
        seconds = n_images * (t_f * max(0.0, count_f - saved_f) + overhead)
        uses_e = re.search(r"\bE\b", m.passes_formula)
        drivers = drivers_of(m) + (method_drivers(ex, shape, model) if uses_e else [])
        floor = n_images * t_f * count_f
        shared = n_images * t_f * max(0.0, count_f - saved_f)
        out.append(
            PlanCell(label, m.name, passes, saved, seconds, " x ".join(drivers), floor=floor, shared_floor=shared)
        )
    return out


def duration(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 05 s``, ``12.5 s``."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"


def summary_lines(plan: PassPlan) -> list[str]:
    """The plan's first lines: totals, what sharing saves, the estimate, the marked cells."""
    share = plan.saved / plan.passes if plan.passes > 0 else 0.0
    lines = [
        f"plan: {len(plan.method_passes)} method(s) x {len({c.metric for c in plan.cells})} metric(s) on "
        f"{plan.n_images} image(s): {plan.passes:,.0f} model passes per image, {plan.saved:,.0f} of them "
        f"shared ({share:.0%}); estimated {duration(plan.seconds)} "
        f"(timing probe {duration(plan.probe_seconds)}, {1000 * plan.forward_seconds:.2f} ms per forward)"
    ]
    for c in sorted((c for c in plan.cells if c.marked), key=lambda c: -c.seconds):
        part = c.seconds / plan.seconds if plan.seconds > 0 else 0.0
        driver = f", grows with {c.drivers}" if c.drivers else ""
        lines.append(
            f"  ! {c.method} x {c.metric}: {c.passes - c.saved:,.0f} passes per image, "
            f"{duration(c.seconds)} ({part:.0%} of the time{driver})"
        )
    return lines


def table_lines(plan: PassPlan) -> list[str]:
    """Every cell: passes per image alone, shared, estimated time, drivers (``!`` marks the
    cells that take at least the marked share of the time)."""
    head = ("", "method", "metric", "passes/image", "shared/image", "estimated", "grows with")
    rows = [
        ("", m, "(explanation)", f"{p:,.0f}", "", duration(plan.method_seconds[m]), "")
        for m, p in plan.method_passes.items()
    ]
    rows += [
        (
            "!" if c.marked else "",
            c.method,
            c.metric,
            f"{c.passes:,.0f}",
            f"{c.saved:,.0f}",
            duration(c.seconds),
            c.drivers,
        )
        for c in plan.cells
    ]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return [*summary_lines(plan), "", fmt(head), *map(fmt, rows)]
