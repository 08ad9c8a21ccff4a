"""What every work unit of a run shares: the data, the models, their targets and the metric settings.

:class:`RunContext` opens the configured data and models once (random initial weights
drawn under a seed derived from the run's seed and the model's name), drops images
whose model outputs are not finite (reported by id), resolves each image's target and
keeps the records the fingerprints compare (:mod:`xaiscope.run.fingerprints`). It
satisfies :class:`xaiscope.run.units.UnitSource`, all a backend sees of a run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xaiscope import evaluate, explain, models
from xaiscope.data.dataset import mask_hashes
from xaiscope.data.hashing import hash_json
from xaiscope.data.sources import MemorySource, dataset_of
from xaiscope.data.summaries import Fingerprint
from xaiscope.errors import ConfigError, DataError, XaiscopeError
from xaiscope.evaluate.plan import PassPlan, pass_plan
from xaiscope.run import fingerprints
from xaiscope.run.config import RunConfig, setting_id
from xaiscope.run.inputs import DataOptions, check_model_fits, model_seed, open_source, resolve_device
from xaiscope.run.units import Unit, UnitInputs, metric_instance, passes_per_image, per_unit_metrics, plan

#: bytes of images up to which a run holds its images in memory (every unit reads them from
#: there); beyond, each unit reads its images from the source on disk when it runs
RUN_MEMORY_BUDGET = 2 << 30
#: images per step of the run's first pass over its data
SCAN_STEP = 256


class RunContext:
    """What every unit of a run shares: the data, the models, targets and metric settings.

    The images are read once when the run opens (model outputs, pixel and mask hashes); a
    run whose images fit :data:`RUN_MEMORY_BUDGET` keeps them in memory, a larger one keeps
    only their positions in the source and each unit reads its own images
    (:meth:`inputs`), so memory does not grow with the dataset. :attr:`dataset` holds all
    the run's images in memory for the analyses that need them at once (global maps,
    variability, SIS, SpRAy, annotators, meta-evaluation) and for the Ray backend."""

    def __init__(self, cfg: RunConfig, console=None):
        self.cfg = cfg
        self.console = console
        self.device = resolve_device(cfg.device)
        src, positions = open_run_source(cfg)
        metrics = cfg.metric_entries(masks=src.has_masks, extra_masks=src.extra_mask_names)
        extra_present = {n: True for n in src.extra_mask_names}
        for m in [m for m in metrics if "mask" in evaluate.get_class(m.name).needs]:
            metric = evaluate.get(m.name, **m.hparams)
            if metric.mask_name() is None and not src.has_masks:
                raise ConfigError(
                    f"metrics: {m.name} is a localisation metric and needs masks, but {src.source} has none."
                )
            try:
                evaluate.mask_for(metric, src.has_masks, extra_present, src.source)
            except XaiscopeError as e:
                raise ConfigError(f"metrics: {e}") from None
        self.models: dict[str, torch.nn.Module] = {}
        self.model_info: dict[str, dict[str, Any]] = {}
        for m in cfg.models:
            seed = model_seed(cfg.seed, m.name)
            net = models.load(
                m.spec,
                m.weights,
                num_classes=max(2, src.num_classes),
                in_channels=src.shape[0],
                spatial_dims=len(src.shape) - 1,
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
            check_model_fits(net, src, self.device)
            self.models[m.name] = net
        self.metrics = [(m.name, dict(m.hparams)) for m in metrics]
        read = {evaluate.get(n, **h).mask_name() for n, h in self.metrics if "mask" in evaluate.get_class(n).needs}
        self._scan(src, positions, sorted(n for n in read if n is not None))
        self.targets = {name: self._targets(net) for name, net in self.models.items()}
        self.method_entries = self._applicable_methods(cfg)
        self.methods = [(m.name, s) for m in self.method_entries for s in m.settings()]
        self.normalisation = None if src.mean is None else {"mean": list(src.mean), "std": list(src.std)}
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

    def _applicable_methods(self, cfg: RunConfig) -> list:
        """The configured methods that can explain every model of the run
        (:meth:`xaiscope.explain.Explainer.applies_to`): one reached through a group or ``all``
        that cannot is left out (said on the console), one named on its own is a sentence."""
        named = {m.name for m in cfg.methods}
        kept, left_out = [], []
        for m in cfg.method_entries():
            cls = explain.get_class(m.name)
            why = next((w for w in (cls.applies_to(net) for net in self.models.values()) if w), None)
            if why is None:
                kept.append(m)
            elif m.name in named:
                raise ConfigError(f"methods: {why}")
            else:
                left_out.append(m.name)
        if left_out and self.console is not None:
            self.console.print(f"left out {', '.join(left_out)}: they cannot explain the run's models.")
        if not kept:
            raise ConfigError("methods: none of the methods can explain the run's models.")
        return kept

    # ------------------------------------------------------------------ images
    def _scan(self, src, positions: list[int], extra: list[str]) -> None:
        """One pass over the run's images: every model's outputs, the pixel and mask hashes
        the fingerprints compare, the unreadable images (``data.on_bad_image: skip``) and
        the images whose outputs are not finite (both left out and reported by id); the
        images themselves are kept when they fit :data:`RUN_MEMORY_BUDGET`."""
        keep_pixels = len(positions) * int(np.prod(src.shape)) * 4 <= RUN_MEMORY_BUDGET
        outs: dict[str, list[torch.Tensor]] = {name: [] for name in self.models}
        seen, entries, parts, fp = [], [], [], Fingerprint()
        for b in src.batches(SCAN_STEP, positions):
            fp.update(b.x, b.y, b.ids, b.masks, b.annotator_masks)
            x = b.x.to(self.device)
            for name, net in self.models.items():
                outs[name].append(models.forward(net, x, batch_size=self.cfg.batch_size).cpu())
            masks = mask_hashes(b.masks, b.extra_masks, extra, len(b))
            entries += [[str(i), int(y), px, m] for i, y, px, m in zip(b.ids, b.y.tolist(), b.pixel_hashes, masks)]
            seen += b.index.tolist()
            if keep_pixels:
                parts.append(b)
        if not seen:
            raise ConfigError(f"No image of {src.source} could be read.")
        self.outputs = {k: torch.cat(v) for k, v in outs.items()}
        self.skipped: dict[str, list[str]] = {}
        if src.skipped:
            self.skipped["unreadable"] = sorted(src.skipped)
        bad = torch.zeros(len(seen), dtype=torch.bool)
        for name, out in self.outputs.items():
            nf = ~torch.isfinite(out).all(dim=1)
            if nf.any():
                self.skipped[name] = [entries[i][0] for i in nf.nonzero().flatten().tolist()]
            bad |= nf
        if bad.all():
            raise ConfigError(f"Every image gives non-finite model outputs; nothing can be explained ({src.source}).")
        keep = (~bad).nonzero().flatten()
        self.outputs = {k: v[keep] for k, v in self.outputs.items()}
        self.images = [entries[i] for i in keep.tolist()]
        self.ids = [e[0] for e in self.images]
        self.labels = torch.tensor([e[1] for e in self.images], dtype=torch.long)
        self.classes, self.shape, self.has_masks = list(src.classes), tuple(src.shape), src.has_masks
        self.extra_mask_names = src.extra_mask_names
        self.data_source = src.source
        self._dataset = None
        self._fingerprint = None if bad.any() else fp.hexdigest(src.annotators)  # else: of the kept images, later
        if keep_pixels:
            self._dataset = dataset_of(parts, src)
            if bad.any():
                self._dataset = self._dataset.subset(keep)
            self.source, self.positions = MemorySource(self._dataset), list(range(len(keep)))
        else:
            self.source, self.positions = src, [seen[i] for i in keep.tolist()]

    @property
    def n_images(self) -> int:
        return len(self.ids)

    @property
    def dataset(self):
        """All the run's images in memory (read from the source the first time for a run
        larger than :data:`RUN_MEMORY_BUDGET`)."""
        if self._dataset is None:
            self._dataset = self.source.take(self.positions)
        return self._dataset

    def fingerprint(self) -> str:
        """The dataset fingerprint of the run's images (:class:`xaiscope.data.summaries.Fingerprint`)."""
        if self._fingerprint is None:
            self._fingerprint = self.source.fingerprint(positions=self.positions)
        return self._fingerprint

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

    def _targets(self, net) -> torch.Tensor:
        t = self.cfg.data.target
        name = next(k for k, v in self.models.items() if v is net)
        if t == "true":
            return self.labels.clone()
        if t == "pred":
            return self.outputs[name].argmax(dim=1)
        n_out = self.outputs[name].shape[1]
        if not 0 <= int(t) < n_out:
            raise ConfigError(f"data.target: class {t} is not an output of model {name!r} ({n_out} outputs).")
        return torch.full_like(self.labels, int(t))

    def inputs(self, unit: Unit) -> UnitInputs:
        sl = slice(unit.start, unit.stop)
        pos = self.positions[sl]
        b = next(self.source.batches(len(pos), pos))
        if b.ids != self.ids[sl]:
            raise DataError(f"The images of {self.data_source} changed while the run was reading them ({unit.id}).")
        return UnitInputs(
            x=b.x.to(self.device),
            y=b.y,
            targets=self.targets[unit.model][sl].to(self.device),
            ids=b.ids,
            masks=None if b.masks is None else b.masks.to(self.device),
            extra_masks={k: v.to(self.device) for k, v in b.extra_masks.items()},
            metrics=self.metrics,
            batch_size=self.cfg.batch_size,
            seed=self.cfg.seed,
        )

    def units(self) -> list[Unit]:
        return plan(list(self.models), self.methods, self.n_images, self.cfg.unit_images)

    def pass_plans(self, probe: int = 4) -> dict[str, PassPlan]:
        """Per model, the :class:`~xaiscope.evaluate.plan.PassPlan` of the run's methods and unit
        metrics on all its images, probed on the first ``probe`` images (one shared-passes block
        per method, as the units are computed)."""
        metrics = [metric_instance(n, h, self.batch_size, self.seed) for n, h in per_unit_metrics(self.metrics)]
        explainers = [explain.get(m, **{"batch_size": self.batch_size, **hp}) for m, hp in self.methods]
        plans = {}
        for name, net in self.models.items():
            inp = self.inputs(Unit(name, "probe", (), 0, min(probe, self.n_images)))
            plans[name] = pass_plan(
                net,
                inp.x,
                inp.targets,
                explainers,
                metrics,
                n_images=self.n_images,
                mask_of=lambda m, inp=inp: evaluate.mask_for(m, inp.masks, inp.extra_masks),
                across_methods=False,
                batch_size=self.batch_size,
            )
        return plans

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
                    u.method, dict(u.hparams), net, self.shape, self.metrics, self.batch_size, self.seed
                )
            out[u.method] = out.get(u.method, 0.0) + (u.stop - u.start) * per_image[key]
        return out


def open_run_source(cfg: RunConfig):
    """``(source, positions)``: the run's images as configured (``data`` section) and the
    positions of those it uses (``max_images``), before unreadable images and images with
    non-finite model outputs are left out; the report reuses it for its example panels."""
    norm = cfg.data.normalise
    if isinstance(norm, dict):
        norm = (norm.get("mean"), norm.get("std"))
    src = open_source(
        cfg.data.path,
        model_spec=cfg.models[0].spec,
        resize=cfg.data.resize,
        normalise=norm,
        masks=cfg.data.masks,
        options=DataOptions(workers=cfg.data.workers, on_bad_image=cfg.data.on_bad_image),
    )
    positions = list(range(len(src)))
    if cfg.data.max_images is not None and cfg.data.max_images < len(src):
        positions = stratified(src.labels, cfg.data.max_images)
    return src, positions


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
