"""The explainer mechanism: declared hyperparameters, a registry, and a safe call.

An explainer is declared as a subclass of :class:`Explainer` with a ``name``, a
``family``, the ``library`` that computes it, a dict of :class:`Param` (the
hyperparameters with defaults, types and ranges), a ``passes`` formula (model passes
per image, one pass = one image forward, with its backward when gradients are taken;
``_passes(shape, model)``, where the count may depend on the input shape and on the model,
e.g. the channels of the layer a CAM perturbs) and an ``_attribute(model, x, y)`` that
returns raw attributions ``[N, C, H, W]``. Methods with ``volumes = True`` (all but a few
that are defined for 2D images only) also explain volumes ``[N, C, D, H, W]`` and return
``[N, C, D, H, W]``.

Calling ``explainer(model, x, y)`` validates the inputs, puts the model in eval mode
(restoring train/eval mode and ``requires_grad`` flags afterwards, also on errors),
seeds stochastic methods from their ``seed`` hyperparameter without touching the
global random state, and checks the result.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch

from xaiscope.errors import MethodError, did_you_mean
from xaiscope.models.forward import check_targets, friendly_model_errors
from xaiscope.models.state import eval_mode
from xaiscope.registry import Registry


@dataclass(frozen=True)
class Param:
    """A hyperparameter: default, accepted type(s), optional bounds or choices, doc; ``auto``
    makes ``'auto'`` a value too, resolved per input size by :func:`settle` as
    ``auto(spatial sides, settings resolved so far)``."""

    default: Any
    type: type | tuple[type, ...]
    doc: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    auto: Callable[[tuple[int, ...], dict], Any] | None = None

    def check(self, method: str, name: str, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        if value == "auto" and self.auto is not None:
            return value
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        want = _tname(types) + (" or 'auto'" if self.auto is not None else "")
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in types:
            raise MethodError(f"Hyperparameter {name!r} of {method} must be {want}, got {value!r}.")
        if not isinstance(value, types):
            raise MethodError(f"Hyperparameter {name!r} of {method} must be {want}, got {value!r}.")
        if self.choices is not None and value not in self.choices:
            raise MethodError(
                f"Hyperparameter {name!r} of {method} must be one of {', '.join(map(str, self.choices))}; got {value!r}."
            )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.low is not None and value < self.low:
                raise MethodError(f"Hyperparameter {name!r} of {method} must be >= {self.low}, got {value!r}.")
            if self.high is not None and value > self.high:
                raise MethodError(f"Hyperparameter {name!r} of {method} must be <= {self.high}, got {value!r}.")
        return value


def _tname(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def settle(params: dict[str, Param], hparams: dict, shape: Sequence[int] | None) -> dict:
    """``hparams`` for inputs of ``shape`` (C, H, W) or (C, D, H, W): every ``'auto'`` value of a
    parameter with an ``auto`` rule resolved in the order of ``params`` (a rule sees the values
    resolved before it, e.g. occlusion's stride the window); without a shape they stay ``'auto'``."""
    out = dict(hparams)
    if shape is not None:
        spatial = tuple(int(n) for n in shape[1:])
        for k, p in params.items():
            if out.get(k) == "auto" and p.auto is not None:
                out[k] = p.auto(spatial, out)
    return out


def mean_side(spatial: Sequence[int]) -> float:
    """The geometric mean of the spatial sides, the one length the ``auto`` size rules read."""
    return math.prod(spatial) ** (1 / len(spatial))


BATCH = Param(64, int, "most images (incl. steps/samples/perturbations) per model call", low=1)
SEED = Param(0, int, "seed of the random draws", low=0)
LAYER = Param("auto", str, "module name of the CAM layer; 'auto' = last Conv2d or Conv3d")


class Explainer:
    """Base class of all attribution methods (see the module docstring)."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    library: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    stochastic: ClassVar[bool] = False
    #: whether the method also explains volumes [N, C, D, H, W] (3D models); False for those
    #: that explain 2D images only (they say so in one sentence on a volume or a 3D model)
    volumes: ClassVar[bool] = True
    #: model passes per image as a function of the hyperparameters, the input shape (C, H, W)
    #: and, where the count depends on it, the model (e.g. ``K`` = channels of a CAM's layer)
    passes_formula: ClassVar[str] = "1"

    def __init__(self, **hparams: Any) -> None:
        allowed = {**self.params, "batch_size": BATCH}
        if self.stochastic:
            allowed["seed"] = SEED
        for key in hparams:
            if key not in allowed:
                raise MethodError(
                    f"{self.name} has no hyperparameter {key!r}{did_you_mean(key, allowed)}; "
                    f"it takes {', '.join(sorted(allowed)) or 'none'}."
                )
        self.hparams = {k: p.check(self.name, k, hparams.get(k, p.default)) for k, p in allowed.items()}
        self._validate()

    def _validate(self) -> None:
        """Cross-parameter checks; subclasses raise :class:`MethodError`."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{self.name}({args})"

    @classmethod
    def applies_to(cls, model: torch.nn.Module) -> str | None:
        """None when the method can explain ``model``, else the sentence saying why not (e.g.
        attention methods on a CNN, or a method without ``volumes`` on a model with 3D
        convolutions); see :func:`applicable`."""
        if not cls.volumes and any(isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) for m in model.modules()):
            return _not_volumes(cls.name, "this model has 3D convolutions")
        return None

    def passes(self, shape: tuple[int, ...] | None = None, model: torch.nn.Module | None = None) -> float:
        """Model passes per image for these settings (``shape`` = (C, H, W) where it matters,
        ``model`` where the count depends on it); NaN where it needs what is not given."""
        return float(self._passes(shape, model))

    def _passes(self, shape, model=None) -> float:
        return 1.0

    def settled(self, shape: Sequence[int] | None) -> dict:
        """The hyperparameters as they apply to inputs of ``shape`` (C, H, W) or (C, D, H, W):
        sizes given as ``auto`` resolved (:func:`settle`); what jobs record with the maps."""
        return settle(self.params, self.hparams, shape)

    @property
    def batch_size(self) -> int:
        return int(self.hparams["batch_size"])

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Raw attributions ``[N, C, H, W]`` (float32, on ``x.device``) of ``model`` for targets ``y``
        (``[N, C, D, H, W]`` for volumes, where the method explains them)."""
        if isinstance(x, torch.Tensor) and x.dim() == 5 and not self.volumes:
            raise MethodError(_not_volumes(self.name, "not volumes [N, C, D, H, W]"))
        if not isinstance(x, torch.Tensor) or x.dim() not in ((4, 5) if self.volumes else (4,)):
            want = "images [N, C, H, W] or volumes [N, C, D, H, W]" if self.volumes else "images [N, C, H, W]"
            raise MethodError(f"{self.name} needs {want}; got {getattr(x, 'shape', type(x).__name__)}.")
        y = torch.as_tensor(y, device=x.device).long().view(-1)
        if y.shape[0] != x.shape[0]:
            raise MethodError(f"{self.name} got {x.shape[0]} images but {y.shape[0]} targets.")
        check_targets(y)
        x = x.detach().float()
        with eval_mode(model), self._seeded(x.device), friendly_model_errors(x, y), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Captum's notes on hooks and requires_grad
            a = self._attribute(model, x, y)
        if a.dim() == x.dim() - 1:
            a = a.unsqueeze(1)
        if a.shape[1] == 1 and x.shape[1] != 1:  # CAM-type maps: the same map on every channel
            a = a.expand(-1, x.shape[1], *x.shape[2:])
        return a.detach().to(dtype=torch.float32, device=x.device).contiguous()

    def _seeded(self, device: torch.device):
        if not self.stochastic:
            return contextlib.nullcontext()
        return _fork_seed(self.hparams["seed"], device)

    def _attribute(self, model, x, y) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _not_volumes(method: str, why: str) -> str:
    """The sentence for a method that explains images only, naming the other such methods."""
    images_only = ", ".join(n for n in names() if not get_class(n).volumes and n != method)
    return f"{method} explains images [N, C, H, W] only, {why}; every method but {images_only} explains volumes."


@contextlib.contextmanager
def _fork_seed(seed: int, device: torch.device):
    """Seed torch and NumPy (Captum's GradientShap draws from NumPy) and restore both afterwards."""
    import numpy as np

    devices = [device] if device.type == "cuda" else []
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)


_METHODS: Registry[Explainer] = Registry("method", MethodError, "xaiscope methods")
register, names, get_class, get = _METHODS.register, _METHODS.names, _METHODS.get_class, _METHODS.get
groups, expand = _METHODS.groups, _METHODS.expand


def applicable(items, model: torch.nn.Module) -> tuple[list[str], dict[str, str]]:
    """``(names, left_out)``: the methods ``items`` name (groups and ``all`` expanded) that can
    explain ``model``, and those reached through a group or ``all`` that cannot, with the
    reason (:meth:`Explainer.applies_to`); a method named on its own that cannot is one
    :class:`MethodError` sentence."""
    items = list(items)
    by_group = _METHODS.by_group(items)
    kept, left_out = [], {}
    for n in expand(items):
        why = get_class(n).applies_to(model)
        if why is None:
            kept.append(n)
        elif n in by_group:
            left_out[n] = why
        else:
            raise MethodError(why)
    return kept, left_out


def target_score(model: Callable, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> model(x)[i, y_i]`` for a batch whose rows follow ``y``."""

    def f(x: torch.Tensor) -> torch.Tensor:
        return model(x).gather(1, y.view(-1, 1)).squeeze(1)

    return f
