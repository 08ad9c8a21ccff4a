"""The metric mechanism: declared hyperparameters, a registry, and a safe call.

A metric is declared as a subclass of :class:`Metric` with a ``name``, a ``category``,
a ``direction`` ("higher" or "lower" is better), what it ``needs`` (a subset of
``{"model", "mask", "explainer"}``), a ``reference``, a dict of
:class:`~xaiscope.explain.base.Param` (hyperparameters with defaults, types and
ranges; the same class the explain layer uses), a ``cost`` (model passes per image, a
:class:`~xaiscope.evaluate.cost.Count` expression of the settings, the image size, the
explainer's passes E and the model's layers L, which also gives the ``passes_formula``
text), and a ``_score`` that returns one float per image. Metrics of one family are
declarations (class attribute ``spec``) of that family's mechanism
(``perturbation.py``, ``robustness.py``, ``randomisation.py``), from which their
``cost`` follows.

Calling ``metric(model, x, y, a, mask=None, explainer=None)`` validates the inputs,
puts the model in eval mode (restoring it afterwards, also on errors), and returns a
float tensor ``[N]`` on ``x.device``; NaN marks images where the score is undefined
(for example an all-zero map or an empty mask); one bad image never raises.

Images ``x`` are ``[N, C, H, W]`` and volumes ``[N, C, D, H, W]``: with ``S`` = 2 or 3
spatial dims, attributions ``a`` are raw when they have ``S + 2`` dims (``[N, C, H, W]``,
``[N, C, D, H, W]``) and maps when they have ``S + 1`` (``[N, H, W]``, ``[N, D, H, W]``),
decided from ``x``, never from ``a`` alone (a 4-D tensor is a raw image attribution or a
volume's map); masks are ``[N, *spatial]`` (several annotators' ``[N, A, *spatial]``,
reduced to their union). Where a metric needs a map, channels are pooled by **sum**
(:func:`pooled`); the
Quantus defaults ``abs`` (take ``|a|``) and ``normalise`` (divide each map by its
largest magnitude) are hyperparameters of each metric. Quantus normalises by the
maximum over the whole batch it is given; we normalise each image by its own maximum,
so scores never depend on which other images share a batch (identical to Quantus for
maps that already have maximum magnitude 1, and for Quantus run with ``batch_size=1``).
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterator

import torch

from xaiscope.errors import MethodError, MetricError, did_you_mean
from xaiscope.evaluate import stats
from xaiscope.evaluate.cost import Count, Env, number
from xaiscope.explain.base import Param, settle
from xaiscope.models.forward import check_targets, friendly_model_errors
from xaiscope.models.state import eval_mode
from xaiscope.registry import Registry

CATEGORIES = ("localisation", "faithfulness", "robustness", "randomisation", "complexity", "axiomatic")
NEEDS = frozenset({"model", "mask", "explainer"})

BATCH = Param(64, int, "most images (incl. perturbed copies) per model call", low=1)
SEED = Param(0, int, "seed of the random draws", low=0)
ABS = Param(False, bool, "take |a| before scoring")
ABS_T = Param(True, bool, "take |a| before scoring")
NORM = Param(True, bool, "divide each map by its largest magnitude")
NORM_F = Param(False, bool, "divide each map by its largest magnitude")
OUTPUT_P = Param("softmax", str, "model score: softmax probability or logit", choices=("softmax", "logit"))
OUTPUT_L = Param("logit", str, "model score: softmax probability or logit", choices=("softmax", "logit"))


class Metric:
    """Base class of all metrics (see the module docstring)."""

    name: ClassVar[str] = ""
    category: ClassVar[str] = ""
    direction: ClassVar[str] = "higher"
    needs: ClassVar[frozenset] = frozenset()
    reference: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    stochastic: ClassVar[bool] = False
    #: the declaration of the family's mechanism the metric uses (``Perturbation``,
    #: ``Reexplanation``, ``Randomisation``), or None
    spec: ClassVar[Any] = None
    #: model passes per image (E = explainer passes, L = layers with parameters); by default
    #: ``spec.cost()``
    cost: ClassVar[Count] = number(0)
    #: ``str(cost)``, set for every subclass
    passes_formula: ClassVar[str] = "0"
    #: the score is computed from a whole set of images together (e.g. sufficiency): such a
    #: metric also gives ``set_scores(a, predicted)`` from the maps and predicted classes alone
    set_level: ClassVar[bool] = False

    def set_pairs(self, a: torch.Tensor, dims: int = 2) -> torch.Tensor:
        """``[N, N]`` bool: which pairs of images of the set a set-level metric compares (maps
        ``a`` of the whole set; e.g. maps close to each other for sufficiency). ``dims``: the
        spatial dims of the images (3 for volumes: ``a`` raw ``[N, C, D, H, W]`` or maps
        ``[N, D, H, W]``)."""
        return self._set_pairs(self.map(torch.as_tensor(a).float(), dims=dims))

    def set_scores(self, a: torch.Tensor, predicted: torch.Tensor, dims: int = 2) -> torch.Tensor:
        """Per-image scores ``[N]`` of a set-level metric from the maps ``a`` of the whole set and
        the model's predicted classes, without a model pass: for image i, the share of the
        images paired with it (:meth:`set_pairs`) predicted as the same class; 0 if none.
        ``dims`` as in :meth:`set_pairs`."""
        return self.set_scores_of_maps(self.map(torch.as_tensor(a).float(), dims=dims), predicted)

    def set_scores_of_maps(self, m: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """:meth:`set_scores` from the maps ``m`` (already through :meth:`map`)."""
        pairs = self._set_pairs(m)
        return stats.agreement(torch.as_tensor(predicted).to(pairs.device), pairs)

    def set_agreement_blocks(self, read, n: int, predicted: torch.Tensor, block: int) -> torch.Tensor:
        """:meth:`set_scores_of_maps` of ``n`` maps read in row blocks (``read(s, e)`` gives maps
        ``s:e`` flattened); set-level metrics whose pairs can be built by blocks override this
        to hold ``block`` rows at a time (see :mod:`xaiscope.evaluate.setlevel`)."""
        return self.set_scores_of_maps(read(0, n), predicted)

    def _set_pairs(self, m: torch.Tensor) -> torch.Tensor:
        raise MetricError(f"{self.name} is not a set-level metric.")

    #: the setting that names the extra mask (``Dataset.extra_masks``) a metric with
    #: ``"mask"`` in ``needs`` reads instead of the expert masks; None: the expert masks
    mask_param: ClassVar[str | None] = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "spec" in cls.__dict__ and "cost" not in cls.__dict__:
            cls.cost = cls.spec.cost()
        cls.passes_formula = str(cls.cost)

    def __init__(self, **hparams: Any) -> None:
        allowed = dict(self.params)
        if "model" in self.needs or "explainer" in self.needs:
            allowed["batch_size"] = BATCH
        if self.stochastic:
            allowed.setdefault("seed", SEED)
        for key in hparams:
            if key not in allowed:
                raise MetricError(
                    f"Metric {self.name} has no setting {key!r}{did_you_mean(key, allowed)}; "
                    f"it takes {', '.join(sorted(allowed)) or 'none'}."
                )
        try:
            self.hparams = {k: p.check(self.name, k, hparams.get(k, p.default)) for k, p in allowed.items()}
        except MethodError as e:
            raise MetricError(str(e).replace("Hyperparameter", "Setting")) from None
        self._validate()

    def _validate(self) -> None:
        """Cross-setting checks; subclasses raise :class:`MetricError`."""

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.hparams.items())})"

    def mask_name(self) -> str | None:
        """The extra mask this metric reads (its ``mask_param`` setting), or None for the expert masks."""
        return None if self.mask_param is None else str(self.hparams[self.mask_param])

    @classmethod
    def default_mask_name(cls) -> str | None:
        """:meth:`mask_name` with default settings."""
        return None if cls.mask_param is None else str(cls.params[cls.mask_param].default)

    @property
    def batch_size(self) -> int:
        return int(self.hparams.get("batch_size", BATCH.default))

    def settled(self, shape: tuple[int, ...] | None) -> dict:
        """The settings for inputs of ``shape`` (C, H, W) or (C, D, H, W): ``'auto'`` values
        resolved by their parameter's rule (:func:`xaiscope.explain.base.settle`); without a
        shape they stay ``'auto'`` (their counts are then NaN)."""
        return settle(self.params, self.hparams, shape)

    @contextlib.contextmanager
    def sized(self, shape: tuple[int, ...] | None) -> Iterator[None]:
        """Within the block ``self.hparams`` are :meth:`settled` for inputs of ``shape``."""
        given, self.hparams = self.hparams, self.settled(shape)
        try:
            yield
        finally:
            self.hparams = given

    def passes(self, shape: tuple[int, ...] | None = None, explainer=None, model=None) -> float:
        """Model passes per image for these settings (``cost``; NaN where it needs what is not given).

        ``shape`` = (C, H, W), or (C, D, H, W) for volumes, where the count depends on the
        image size (features of a volume are voxels and cubes); ``explainer``
        gives E (its passes per image) for explainer-based metrics; ``model`` gives L
        (its layers with parameters) for randomisation metrics.
        """
        e = float(explainer.passes(shape, model)) if explainer is not None else float("nan")
        layers = float(n_layers(model)) if model is not None else float("nan")
        return self.cost(Env(self.settled(shape), shape, e, layers))

    # ------------------------------------------------------------------ call
    def __call__(
        self, model, x: torch.Tensor, y, a: torch.Tensor | None, mask: torch.Tensor | None = None, explainer=None
    ) -> torch.Tensor:
        """Scores ``[N]`` (float32, on ``x.device``); NaN where undefined."""
        x, y, a, mask = self._check(model, x, y, a, mask, explainer)
        with self.sized(tuple(x.shape[1:])):
            if model is None or not self.needs & {"model", "explainer"}:
                out = self._score(None, x, y, a, mask, explainer)
            else:
                with eval_mode(model), friendly_model_errors(x, y):
                    out = self._score(model, x, y, a, mask, explainer)
        return out.detach().to(device=x.device, dtype=torch.float32).reshape(-1)

    def _check(self, model, x, y, a, mask, explainer):
        if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
            raise MetricError(
                f"{self.name} needs images [N, C, H, W] or volumes [N, C, D, H, W]; "
                f"got {list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}."
            )
        x = x.detach().float()
        n, spatial = x.shape[0], tuple(x.shape[2:])
        dims, sp = len(spatial), "D, H, W" if len(spatial) == 3 else "H, W"
        y = torch.as_tensor(y, device=x.device).long().view(-1)
        if y.shape[0] != n:
            raise MetricError(f"{self.name} got {n} images but {y.shape[0]} targets.")
        check_targets(y)
        if a is not None:
            a = torch.as_tensor(a).detach().to(x.device).float()
            raw = a.dim() == dims + 2 and tuple(a.shape[2:]) == spatial
            if not (raw or (a.dim() == dims + 1 and tuple(a.shape[1:]) == spatial)) or a.shape[0] != n:
                kind = "volumes" if dims == 3 else "images"
                raise MetricError(
                    f"{self.name} needs attributions [N, C, {sp}] or maps [N, {sp}] matching {kind} "
                    f"{list(x.shape)}; got {list(a.shape)}."
                )
        elif not self._explains_itself():
            raise MetricError(f"{self.name} needs attributions a; got None.")
        if "mask" in self.needs:
            if mask is None:
                raise MetricError(f"{self.name} is a localisation metric and needs masks, but none were given.")
            mask = torch.as_tensor(mask).to(x.device)
            if mask.dim() == dims + 2:  # several annotators' masks: their union
                mask = mask.any(dim=1)
            if tuple(mask.shape) != (n, *spatial):
                raise MetricError(
                    f"{self.name} needs masks [N, {sp}] = {[n, *spatial]} (or [N, A, {sp}] from several "
                    f"annotators); got {list(mask.shape)}."
                )
            mask = mask.bool()
        if "model" in self.needs and model is None:
            raise MetricError(f"{self.name} needs the model; got None.")
        if "explainer" in self.needs and explainer is None:
            raise MetricError(f"{self.name} needs an explainer to re-explain perturbed inputs or models; got None.")
        return x, y, a, mask

    def _explains_itself(self) -> bool:
        return False

    def _score(self, model, x, y, a, mask, explainer) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # --------------------------------------------------------------- helpers
    def map(self, a: torch.Tensor, abs_key: str = "abs", norm_key: str = "normalise", *, dims: int) -> torch.Tensor:
        """Maps ``[N, *spatial]``: channels pooled by sum (:func:`pooled`; ``dims`` = number of
        spatial dims, ``x.dim() - 2``), then the ``abs`` and ``normalise`` settings."""
        m = pooled(a, dims)
        if self.hparams.get(norm_key, False):
            m = normalise_max(m)
        if self.hparams.get(abs_key, False):
            m = m.abs()
        return m


def mask_for(metric: Metric, masks, extra_masks=None, source: str = "the data"):
    """The masks ``metric`` reads: None when it needs none, the expert ``masks``, or the extra
    mask it names (``extra_masks[metric.mask_name()]``); a :class:`MetricError` sentence when
    the data has no such extra mask."""
    if "mask" not in metric.needs:
        return None
    name = metric.mask_name()
    if name is None:
        return masks
    extra = extra_masks or {}
    if name not in extra:
        have = ", ".join(sorted(extra)) or "none"
        raise MetricError(
            f"Metric {metric.name} reads the extra mask {name!r}, but {source} has no such mask (extra masks: {have})."
        )
    return extra[name]


def has_masks_for(cls: type[Metric], masks: bool, extra: "set[str] | None") -> bool:
    """Whether data with (``masks``) or without expert masks and the extra masks ``extra``
    (None: not known, present exactly when ``masks`` is) has what metric class ``cls`` reads
    with default settings."""
    if "mask" not in cls.needs:
        return True
    name = cls.default_mask_name()
    if name is None or extra is None:
        return masks
    return name in extra


def pooled(a: torch.Tensor, dims: int) -> torch.Tensor:
    """Maps ``[N, *spatial]`` from attributions with ``dims`` spatial dims: raw attributions
    ``[N, C, *spatial]`` (``dims + 2`` dims) summed over channels, maps (``dims + 1``) as they are."""
    if a.dim() == dims + 2:
        return a.sum(dim=1)
    if a.dim() != dims + 1:
        sp = "D, H, W" if dims == 3 else "H, W"
        raise MetricError(f"Attributions must be [N, C, {sp}] or maps [N, {sp}]; got shape {list(a.shape)}.")
    return a


def normalise_max(m: torch.Tensor) -> torch.Tensor:
    """Divide each image's map by its largest magnitude (all-zero maps stay zero)."""
    d = m.abs().flatten(1).amax(dim=1).view(-1, *([1] * (m.dim() - 1)))
    return torch.where(d > 0, m / torch.where(d > 0, d, torch.ones_like(d)), m)


def randomisable_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The layers a randomisation test re-initialises, in forward order: every module with
    ``reset_parameters``; in a transformer (a model with attention modules, ``qkv`` and
    ``num_heads``) the normalisation layers are kept, so its blocks are randomised by their
    attention and MLP weights (Adebayo et al. 2018 randomise learned weights; a layer norm
    re-initialised to ones and zeros would only rescale the tokens)."""
    mods = [(n, m) for n, m in model.named_modules() if hasattr(m, "reset_parameters")]
    if any(hasattr(m, "qkv") and hasattr(m, "num_heads") for m in model.modules()):
        norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._NormBase)
        mods = [(n, m) for n, m in mods if not isinstance(m, norms)]
    return mods


def n_layers(model: torch.nn.Module) -> int:
    """The number of :func:`randomisable_layers` (L of the randomisation metrics' pass counts)."""
    return len(randomisable_layers(model))


def _check_declaration(cls: type[Metric]) -> None:
    assert cls.category in CATEGORIES, cls.category
    assert cls.direction in ("higher", "lower"), cls.direction
    assert set(cls.needs) <= NEEDS, cls.needs


_METRICS: Registry[Metric] = Registry("metric", MetricError, "xaiscope metrics", _check_declaration, "category")
register, names, get_class, get = _METRICS.register, _METRICS.names, _METRICS.get_class, _METRICS.get
groups, expand, by_group = _METRICS.groups, _METRICS.expand, _METRICS.by_group
