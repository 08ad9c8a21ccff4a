"""Run work units as Ray tasks; the driver commits every result, as the local backend does.

The models go to Ray's object store once (``ray.put``). The images go there one range of
images at a time: the units of a run share image ranges (every model and method explains
the same ``unit_images`` images), so the driver reads a range's inputs from the run's
source once, puts them in the store, submits every unit of that range with a reference to
them, and drops the reference when the last of those units has returned. At most
``ranges_in_flight`` ranges are in the store at once (default: twice the cluster's CPUs), so
the store holds a bounded part of a dataset of any size, and nothing is re-pickled per
task. Each task asks for one CPU (and
one GPU when the run's device is CUDA), computes one unit with :func:`compute_unit`
and returns its arrays; the driver commits results as they arrive, so a unit is never
stored twice, resume and ``--force`` behave as in the local backend, and a task whose
worker dies is retried ``max_retries`` times. Units that still fail are listed in one
error at the end, after every other unit has been committed.

Install with ``pip install 'xaiscope[ray]'``. ``address=None`` starts a local cluster
(or reuses the one this process already joined); ``"auto"`` or ``"HOST:PORT"`` joins an
existing cluster.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch

from xaiscope.errors import ConfigError, XaiscopeError
from xaiscope.run.units import Unit, UnitInputs, UnitSource, compute_unit


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("The ray backend needs Ray; install it with: pip install 'xaiscope[ray]'.") from None
    return ray


def _run_unit(model, inputs: dict, unit: Unit, metrics, batch_size: int, seed: int, device: str, threads: int):
    """The body of one Ray task (a module-level function so workers can import it); ``inputs``
    holds the images of the unit's range (:func:`_range_inputs`)."""
    from xaiscope.allocator import keep_heap

    keep_heap()  # once per worker process, as the xaiscope command does for itself
    torch.set_num_threads(threads)
    dev = torch.device(device)

    def t(a):
        return torch.from_numpy(np.array(a)).to(dev)

    inp = UnitInputs(
        x=t(inputs["x"]),
        y=torch.from_numpy(np.array(inputs["y"])),
        targets=t(inputs["targets"][unit.model]),
        ids=list(inputs["ids"]),
        masks=None if inputs["masks"] is None else t(inputs["masks"]),
        extra_masks={k: t(v) for k, v in inputs["extra_masks"].items()},
        metrics=metrics,
        batch_size=batch_size,
        seed=seed,
    )
    return compute_unit(model.to(dev), unit, inp)


def _range_inputs(ctx: UnitSource, unit: Unit) -> dict:
    """The inputs of ``unit``'s image range as NumPy arrays, with every model's targets."""
    inp = ctx.inputs(unit)
    sl = slice(unit.start, unit.stop)
    return {
        "x": inp.x.cpu().numpy(),
        "y": inp.y.cpu().numpy(),
        "ids": list(inp.ids),
        "masks": None if inp.masks is None else inp.masks.cpu().numpy(),
        "extra_masks": {k: v.cpu().numpy() for k, v in inp.extra_masks.items()},
        "targets": {name: t[sl].cpu().numpy() for name, t in ctx.targets.items()},
    }


def ray_backend(
    ctx: UnitSource,
    units: list[Unit],
    on_result: Callable[[Unit, Any], None],
    *,
    address: str | None = None,
    max_retries: int = 3,
    threads_per_task: int = 1,
    ranges_in_flight: int | None = None,
) -> None:
    """Compute ``units`` as Ray tasks and hand each result to ``on_result`` in this process;
    at most ``ranges_in_flight`` image ranges are in the object store at once (module docstring)."""
    ray = _import_ray()
    if not units:
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"Cannot connect to the Ray cluster at {address!r}: {str(e).splitlines()[0]}") from None
    gpu = 1 if ctx.device.type == "cuda" else 0
    remote = ray.remote(num_cpus=threads_per_task, num_gpus=gpu, max_retries=max_retries)(_run_unit)
    model_refs = {name: ray.put(net.cpu()) for name, net in ctx.models.items()}
    device = str(ctx.device)
    by_range: dict[tuple[int, int], list[Unit]] = {}
    for u in units:
        by_range.setdefault((u.start, u.stop), []).append(u)
    ranges = iter(by_range.items())
    window = ranges_in_flight or max(2, 2 * int(ray.available_resources().get("CPU", 1)))
    in_store: dict[tuple[int, int], Any] = {}  # range -> reference to its inputs
    left: dict[tuple[int, int], int] = {}  # range -> units not returned yet
    pending: dict[Any, Unit] = {}

    def open_range() -> bool:
        key, todo = next(ranges, (None, None))
        if key is None:
            return False
        ref = ray.put(_range_inputs(ctx, todo[0]))
        in_store[key], left[key] = ref, len(todo)
        for u in todo:
            args = (model_refs[u.model], ref, u, ctx.metrics, ctx.batch_size, ctx.seed, device, threads_per_task)
            pending[remote.remote(*args)] = u
        return True

    def returned(unit: Unit) -> None:
        key = (unit.start, unit.stop)
        left[key] -= 1
        if left[key] == 0:
            del in_store[key], left[key]  # the store frees the range once no task holds it
            open_range()

    while len(in_store) < window and open_range():
        pass
    failed: list[tuple[Unit, str]] = []
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                unit = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except XaiscopeError:
                    raise
                except Exception as e:  # worker died for good, or the task raised
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, XaiscopeError):
                        raise cause from None
                    failed.append((unit, type(e).__name__))
                    returned(unit)
                    continue
                on_result(unit, result)
                returned(unit)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        for net in ctx.models.values():
            net.to(ctx.device)
    if failed:
        ids = ", ".join(u.id for u, _ in failed[:5])
        raise XaiscopeError(
            f"{len(failed)} work unit(s) failed after {max_retries} retries ({failed[0][1]}): {ids}; "
            "every other unit is committed, run the same command again to retry the rest."
        )
