"""``xaiscope run``: plan the grid, compute missing work units, commit them, analyse.

Steps: validate and record the config; open data and models (random initial weights
drawn under a seed derived from the run's seed and the model's name); drop images whose
model outputs are not finite (reported by id); plan units (model x method x setting x
image batch); compare the committed units' input records with the current inputs
(:mod:`xaiscope.pipeline.fingerprints`); compute each unit not yet committed (locally or
on Ray) and commit it, with its record, from this process; consolidate the tidy tables;
run the analyses (ranking, sensitivity, global maps + PEPPR, variability, SIS); write the
manifest. Running the same command again skips committed units whose inputs are
unchanged; committed units whose model, images or settings changed stop the run with one
sentence naming the change, unless ``refresh=True`` (recompute just those) or
``force=True`` (recompute everything).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import xaiscope
from xaiscope import evaluate, explain, models
from xaiscope.data.hashing import hash_json
from xaiscope.errors import ConfigError, StaleResultsError
from xaiscope.pipeline import fingerprints
from xaiscope.pipeline.config import RunConfig, dump_config, setting_id
from xaiscope.pipeline.inputs import check_model_fits, model_seed, open_data, resolve_device
from xaiscope.pipeline.store import RunStore
from xaiscope.pipeline.units import Unit, UnitInputs, compute_unit, metric_instance, plan


class RunContext:
    """What every unit of a run shares: the data, the models, targets and metric settings."""

    def __init__(self, cfg: RunConfig, console=None):
        self.cfg = cfg
        self.console = console
        self.device = resolve_device(cfg.device)
        ds = open_run_data(cfg)
        metrics = cfg.metric_entries(masks=ds.masks is not None)
        need_masks = [m.name for m in metrics if "mask" in evaluate.get_class(m.name).needs]
        if need_masks and ds.masks is None:
            raise ConfigError(
                f"metrics: {need_masks[0]} is a localisation metric and needs masks, but {ds.source} has none."
            )
        self.models: dict[str, torch.nn.Module] = {}
        self.model_info: dict[str, dict[str, Any]] = {}
        for m in cfg.models:
            seed = model_seed(cfg.seed, m.name)
            net = models.load(
                m.spec,
                m.weights,
                num_classes=max(2, ds.num_classes),
                in_channels=ds.shape[0],
                trust_model=m.trust_model,
                seed=seed,
            )
            self.model_info[m.name] = {
                "spec": m.spec,
                "weights": m.weights,
                "init_seed": seed if models.random_weights(m.spec, m.weights) else None,
                "weights_hash": models.weights_hash(net),  # one pass over the weights as loaded
            }
            net = net.to(self.device)
            check_model_fits(net, ds, self.device)
            self.models[m.name] = net
        self.dataset, self.skipped = self._drop_non_finite(ds)
        self.targets = {name: self._targets(net) for name, net in self.models.items()}
        self.metrics = [(m.name, dict(m.hparams)) for m in metrics]
        self.methods = [(m.name, s) for m in cfg.method_entries() for s in m.settings()]
        self.images = fingerprints.image_entries(self.dataset)
        self.normalisation = fingerprints.normalisation_of(self.dataset)
        resolved_metrics = [[n, metric_instance(n, h, cfg.batch_size, cfg.seed).hparams] for n, h in self.metrics]
        self._settings = {
            (n, setting_id(s)): hash_json(
                {
                    "method": n,
                    "hparams": explain.get(n, **{"batch_size": cfg.batch_size, **s}).hparams,
                    "metrics": resolved_metrics,
                    "target": cfg.data.target,
                    "seed": cfg.seed,
                }
            )
            for n, s in self.methods
        }
        self._records: dict[str, dict[str, Any]] = {}

    def unit_record(self, unit: Unit) -> dict[str, Any]:
        """The record of the inputs ``unit`` is computed from (see :mod:`xaiscope.pipeline.fingerprints`)."""
        rec = self._records.get(unit.id)
        if rec is None:
            rec = fingerprints.unit_record(
                self.model_info[unit.model]["weights_hash"],
                self._settings[(unit.method, unit.setting)],
                self.normalisation,
                self.images[unit.start : unit.stop],
            )
            self._records[unit.id] = rec
        return rec

    def model_label(self, name: str) -> str:
        """How a message names a model: ``cnn (runs/model.pt)``."""
        info = self.model_info[name]
        with_weights = f" with weights {info['weights']}" if info["weights"] else ""
        return f"{name} ({info['spec']}{with_weights})"

    def _drop_non_finite(self, ds):
        bad = torch.zeros(len(ds), dtype=torch.bool)
        skipped: dict[str, list[str]] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        for name, net in self.models.items():
            out = models.forward(net, ds.x.to(self.device), batch_size=self.cfg.batch_size).cpu()
            nf = ~torch.isfinite(out).all(dim=1)
            if nf.any():
                skipped[name] = [ds.ids[i] for i in nf.nonzero().flatten().tolist()]
            bad |= nf
            self.outputs[name] = out
        if bad.all():
            raise ConfigError(f"Every image gives non-finite model outputs; nothing can be explained ({ds.source}).")
        if bad.any():
            keep = (~bad).nonzero().flatten()
            self.outputs = {k: v[keep] for k, v in self.outputs.items()}
            ds = ds.subset(keep)
        return ds, skipped

    def _targets(self, net) -> torch.Tensor:
        t = self.cfg.data.target
        name = next(k for k, v in self.models.items() if v is net)
        if t == "true":
            return self.dataset.y.clone()
        if t == "pred":
            return self.outputs[name].argmax(dim=1)
        n_out = self.outputs[name].shape[1]
        if not 0 <= int(t) < n_out:
            raise ConfigError(f"data.target: class {t} is not an output of model {name!r} ({n_out} outputs).")
        return torch.full_like(self.dataset.y, int(t))

    def inputs(self, unit: Unit) -> UnitInputs:
        sl = slice(unit.start, unit.stop)
        ds = self.dataset
        return UnitInputs(
            x=ds.x[sl].to(self.device),
            y=ds.y[sl],
            targets=self.targets[unit.model][sl].to(self.device),
            ids=ds.ids[sl],
            masks=None if ds.masks is None else ds.masks[sl].to(self.device),
            metrics=self.metrics,
            batch_size=self.cfg.batch_size,
            seed=self.cfg.seed,
        )

    def units(self) -> list[Unit]:
        return plan(list(self.models), self.methods, len(self.dataset), self.cfg.unit_images)


def open_run_data(cfg: RunConfig):
    """The run's images as configured (``data`` section), before images with non-finite model
    outputs are dropped; the report reuses it for its example panels."""
    norm = cfg.data.normalise
    if isinstance(norm, dict):
        norm = (norm.get("mean"), norm.get("std"))
    ds = open_data(
        cfg.data.path, model_spec=cfg.models[0].spec, resize=cfg.data.resize, normalise=norm, masks=cfg.data.masks
    )
    if cfg.data.max_images is not None and cfg.data.max_images < len(ds):
        ds = ds.subset(_stratified(ds.y, cfg.data.max_images))
    return ds


def _stratified(y: torch.Tensor, n: int) -> list[int]:
    """The first ``n`` images taken round-robin over classes (deterministic)."""
    per_class = [(y == c).nonzero().flatten().tolist() for c in sorted(set(y.tolist()))]
    out: list[int] = []
    i = 0
    while len(out) < n:
        for idx in per_class:
            if i < len(idx) and len(out) < n:
                out.append(idx[i])
        i += 1
    return sorted(out)


def commit(store: RunStore, ctx: RunContext, unit: Unit, result) -> None:
    a, rows, curves = result
    ds = ctx.dataset
    store.commit_unit(
        unit.id,
        key=unit.key,
        shape=(len(ds), *ds.shape),
        chunk=ctx.cfg.unit_images,
        start=unit.start,
        attributions=a,
        rows=rows,
        curves=curves,
        attrs={"model": unit.model, "method": unit.method, "setting": unit.setting, "hparams": dict(unit.hparams)},
        record=ctx.unit_record(unit),
    )


def compare_units(store: RunStore, ctx: RunContext, units: list[Unit]) -> fingerprints.Comparison:
    """Committed units against the planned ``units``: which are stale, which no longer belong, and why."""
    planned = {u.id: u for u in units}
    stored = {uid: store.unit_record(uid) for uid in sorted(store.unit_ids())}
    current = {u.id: ctx.unit_record(u) for u in units}
    return fingerprints.compare(
        stored,
        planned,
        current,
        {u.id: u.model for u in units},
        {name: ctx.model_label(name) for name in ctx.models},
    )


def local_backend(ctx: RunContext, units: list[Unit], on_result: Callable[[Unit, Any], None]) -> None:
    """Compute units one after the other in this process."""
    for unit in units:
        on_result(unit, compute_unit(ctx.models[unit.model], unit, ctx.inputs(unit)))


def run_folder(cfg: RunConfig, out: str | Path | None = None) -> Path:
    return Path(out or cfg.out or "xaiscope-run")


def resolved_config(cfg: RunConfig, root: Path) -> str:
    """The config text a run folder keeps (its ``out`` set to the folder)."""
    return dump_config(cfg.model_copy(update={"out": str(root)}))


def config_changed(cfg: RunConfig, out: str | Path | None = None) -> bool:
    """True when the run folder holds a run of a different configuration."""
    p = run_folder(cfg, out) / "config.yaml"
    return p.exists() and p.read_text() != resolved_config(cfg, run_folder(cfg, out))


def run(
    cfg: RunConfig,
    *,
    out: str | Path | None = None,
    force: bool = False,
    refresh: bool = False,
    console=None,
    backend: str | None = None,
    address: str | None = None,
) -> Path:
    """Run (or resume) the configured grid; return the run folder.

    Committed units whose inputs changed (model weights, images, masks, labels,
    normalisation, resolved settings) raise :class:`~xaiscope.errors.StaleResultsError`
    naming the change, and nothing is written; ``refresh=True`` recomputes exactly those
    units (and drops units that no longer belong to the plan), ``force=True`` everything.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    root = run_folder(cfg, out)
    store = RunStore(root, create=True)
    resolved = resolved_config(cfg, root)
    previous = store.read_config_text()
    if not force and previous is not None and previous != resolved:
        raise ConfigError(
            f"The run folder {root} holds a run with a different configuration; use --force to recompute or choose another --out."
        )
    t0 = time.time()
    ctx = RunContext(cfg, console)  # bad data or models fail here, before anything is cleared or written
    units = ctx.units()
    changes = fingerprints.Comparison() if force else compare_units(store, ctx, units)
    if changes:
        sentence = fingerprints.stale_sentence(
            changes.reasons,
            f"the run folder {root}",
            len(changes.stale),
            n_gone=len(changes.gone),
            unrecorded=changes.unrecorded,
        )
        if not refresh:
            raise StaleResultsError(sentence)
        if console is not None:
            console.print(f"[yellow]refreshing: {sentence.split('; use --refresh')[0]}[/]", highlight=False)
    if force:
        store.clear()
    store.write_config(resolved)
    for uid in changes.gone:
        store.remove_unit(uid)
    stale = {u.id for u in changes.stale}
    todo = [u for u in units if u.id in stale or not store.is_done(u.id)]
    if ctx.skipped and console is not None:
        for name, ids in ctx.skipped.items():
            console.print(
                f"[yellow]model {name}: {len(ids)} image(s) give non-finite outputs and are skipped: {', '.join(ids[:10])}[/]"
            )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=console is None,
    ) as progress:
        task = progress.add_task(
            f"work units ({len(units) - len(todo)} already done)", total=len(units), completed=len(units) - len(todo)
        )

        def on_result(unit, result):
            commit(store, ctx, unit, result)
            progress.advance(task)

        which = backend or cfg.backend
        if which == "ray":
            from xaiscope.pipeline.ray_backend import ray_backend

            ray_backend(ctx, todo, on_result, address=address or cfg.ray_address, max_retries=cfg.ray_max_retries)
        else:
            local_backend(ctx, todo, on_result)
    t_units = time.time() - t0
    results = store.consolidate()
    from xaiscope.pipeline.analyses_job import run_analyses

    timings = run_analyses(store, ctx, results, console=console)
    store.write_manifest(
        manifest(
            ctx,
            units,
            todo,
            {"units_s": round(t_units, 3), **timings, "total_s": round(time.time() - t0, 3)},
            n_stale=len(stale),
        )
    )
    return root


def manifest(
    ctx: RunContext, units: list[Unit], todo: list[Unit], timings: dict[str, float], n_stale: int = 0
) -> dict[str, Any]:
    """Versions, seeds, device, dataset fingerprint, per model its initial-weights seed and
    weights hash, per unit the fingerprints it was computed from, timings and skipped images."""
    import captum
    import zennit

    ds = ctx.dataset
    return {
        "xaiscope": xaiscope.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "captum": captum.__version__,
        "zennit": getattr(zennit, "__version__", "unknown"),
        "numpy": np.__version__,
        "seed": ctx.cfg.seed,
        "device": str(ctx.device),
        "dataset": {
            "source": ds.source,
            "images": len(ds),
            "classes": ds.classes,
            "shape": list(ds.shape),
            "fingerprint": ds.fingerprint(),
            "masks": ds.masks is not None,
        },
        "models": ctx.model_info,
        "methods": [{"method": n, "setting": setting_id(s)} for n, s in ctx.methods],
        "metrics": [{"metric": n, "hparams": h} for n, h in ctx.metrics],
        "units": {"total": len(units), "computed_this_time": len(todo)},
        "fingerprints": {
            "stale_recomputed": n_stale,
            "units": {u.id: fingerprints.summary(ctx.unit_record(u)) for u in units},
        },
        "skipped_images": ctx.skipped,
        "timings_s": timings,
    }
