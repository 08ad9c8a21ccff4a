"""Run work units as Ray tasks; the driver commits every result, as the local backend does.

The models and the images go to Ray's object store once (``ray.put``) and every task
receives references, so nothing is re-pickled per task. Each task asks for one CPU (and
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


def _run_unit(
    model,
    x,
    y,
    targets,
    masks,
    ids,
    unit: Unit,
    metrics,
    batch_size: int,
    seed: int,
    device: str,
    threads: int,
    extra_masks=None,
):
    """The body of one Ray task (a module-level function so workers can import it)."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    sl = slice(unit.start, unit.stop)
    inp = UnitInputs(
        x=torch.from_numpy(np.array(x[sl])).to(dev),
        y=torch.from_numpy(np.array(y[sl])),
        targets=torch.from_numpy(np.array(targets[sl])).to(dev),
        ids=list(ids[sl]),
        masks=None if masks is None else torch.from_numpy(np.array(masks[sl])).to(dev),
        extra_masks={k: torch.from_numpy(np.array(v[sl])).to(dev) for k, v in (extra_masks or {}).items()},
        metrics=metrics,
        batch_size=batch_size,
        seed=seed,
    )
    return compute_unit(model.to(dev), unit, inp)


def ray_backend(
    ctx: UnitSource,
    units: list[Unit],
    on_result: Callable[[Unit, Any], None],
    *,
    address: str | None = None,
    max_retries: int = 3,
    threads_per_task: int = 1,
) -> None:
    """Compute ``units`` as Ray tasks and hand each result to ``on_result`` in this process."""
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
    ds = ctx.dataset
    gpu = 1 if ctx.device.type == "cuda" else 0
    remote = ray.remote(num_cpus=threads_per_task, num_gpus=gpu, max_retries=max_retries)(_run_unit)
    x_ref = ray.put(ds.x.numpy())
    y_ref = ray.put(ds.y.numpy())
    m_ref = ray.put(ds.masks.numpy()) if ds.masks is not None else None
    extra_ref = ray.put({k: v.numpy() for k, v in ds.extra_masks.items()}) if ds.extra_masks else None
    ids_ref = ray.put(list(ds.ids))
    model_refs = {name: ray.put(net.cpu()) for name, net in ctx.models.items()}
    target_refs = {name: ray.put(t.numpy()) for name, t in ctx.targets.items()}
    device = str(ctx.device)
    pending = {
        remote.remote(
            model_refs[u.model],
            x_ref,
            y_ref,
            target_refs[u.model],
            m_ref,
            ids_ref,
            u,
            ctx.metrics,
            ctx.batch_size,
            ctx.seed,
            device,
            threads_per_task,
            extra_ref,
        ): u
        for u in units
    }
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
                    continue
                on_result(unit, result)
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
