"""What every work unit of a run shares: the data, the models, their targets and the metric settings.

:class:`RunContext` opens the configured data and models once (random initial weights
drawn under a seed derived from the run's seed and the model's name), drops images
whose model outputs are not finite (reported by id), resolves each image's target and
keeps the records the fingerprints compare (:mod:`xaiscope.run.fingerprints`). It
satisfies :class:`xaiscope.run.units.UnitSource`, all a backend sees of a run.
"""

from __future__ import annotations

from typing import Any

import torch

from xaiscope import evaluate, explain, models
from xaiscope.data.hashing import hash_json
from xaiscope.errors import ConfigError, XaiscopeError
from xaiscope.run import fingerprints
from xaiscope.run.config import RunConfig, setting_id
from xaiscope.run.inputs import check_model_fits, model_seed, open_data, resolve_device
from xaiscope.run.units import Unit, UnitInputs, metric_instance, passes_per_image, plan


class RunContext:
    """What every unit of a run shares: the data, the models, targets and metric settings."""

    def __init__(self, cfg: RunConfig, console=None):
        self.cfg = cfg
        self.console = console
        self.device = resolve_device(cfg.device)
        ds = open_run_data(cfg)
        metrics = cfg.metric_entries(masks=ds.masks is not None, extra_masks=set(ds.extra_masks))
        need_masks = [m for m in metrics if "mask" in evaluate.get_class(m.name).needs]
        for m in need_masks:
            metric = evaluate.get(m.name, **m.hparams)
            if metric.mask_name() is None and ds.masks is None:
                raise ConfigError(
                    f"metrics: {m.name} is a localisation metric and needs masks, but {ds.source} has none."
                )
            try:
                evaluate.mask_for(metric, ds.masks, ds.extra_masks, ds.source)
            except XaiscopeError as e:
                raise ConfigError(f"metrics: {e}") from None
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
        read = {evaluate.get(n, **h).mask_name() for n, h in self.metrics if "mask" in evaluate.get_class(n).needs}
        self.images = fingerprints.image_entries(self.dataset, sorted(n for n in read if n is not None))
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

    @property
    def batch_size(self) -> int:
        return self.cfg.batch_size

    @property
    def seed(self) -> int:
        return self.cfg.seed

    def unit_record(self, unit: Unit) -> dict[str, Any]:
        """The record of the inputs ``unit`` is computed from (see :mod:`xaiscope.run.fingerprints`)."""
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
            extra_masks={k: v[sl].to(self.device) for k, v in ds.extra_masks.items()},
            metrics=self.metrics,
            batch_size=self.cfg.batch_size,
            seed=self.cfg.seed,
        )

    def units(self) -> list[Unit]:
        return plan(list(self.models), self.methods, len(self.dataset), self.cfg.unit_images)

    def planned_passes(self, units: list[Unit]) -> dict[str, float]:
        """Model passes the ``units`` take, per method (see :func:`xaiscope.run.units.planned_passes`);
        the count per image is worked out once per (model, method, setting)."""
        per_image: dict[tuple, float] = {}
        out: dict[str, float] = {}
        for u in units:
            key = (u.model, u.method, u.hparams)
            if key not in per_image:
                net = self.models[u.model]
                per_image[key] = passes_per_image(
                    u.method, dict(u.hparams), net, self.dataset.shape, self.metrics, self.batch_size, self.seed
                )
            out[u.method] = out.get(u.method, 0.0) + (u.stop - u.start) * per_image[key]
        return out


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
        ds = ds.subset(stratified(ds.y, cfg.data.max_images))
    return ds


def stratified(y: torch.Tensor, n: int) -> list[int]:
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
