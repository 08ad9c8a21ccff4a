"""The run configuration: a YAML file validated by pydantic.

Unknown keys and bad values are reported with their path in the file, e.g.
``methods.1.hparams.n_steps: Input should be a valid integer``. YAML is parsed with
``yaml.safe_load`` (no object construction).

Example::

    out: runs/lesions
    seed: 0
    device: cpu
    batch_size: 64
    data: {path: bench/test, max_images: 64}
    models:
      - {name: cnn, spec: model.pt}
    methods:
      - saliency
      - name: integrated_gradients
        grid: {n_steps: [8, 32]}        # swept; the default setting is always included
      - cams                            # a family: every CAM method ('all': every method)
    metrics:
      - relevance_mass_accuracy
      - {name: deletion, hparams: {steps: 10}}
      - robustness                      # a category ('all': every metric the data allow)

Group names (``all``, a method family, a metric category) stand for their members with
default settings; a member also listed on its own keeps its own entry. Without masks,
``all`` and ``localisation`` leave the localisation metrics out.
    analyses:
      ranking: {draws: 10000}
      sensitivity: {}
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xaiscope.errors import ConfigError, XaiscopeError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    path: str
    normalise: Union[Literal["none", "dataset"], dict[str, list[float]], None] = None
    resize: Optional[tuple[int, int]] = None
    masks: Literal["auto", "required", "none"] = "auto"
    max_images: Optional[int] = Field(None, ge=1)
    target: Union[Literal["true", "pred"], int] = "true"
    workers: int = Field(0, ge=0)
    on_bad_image: Literal["stop", "skip"] = "stop"


class ModelConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    spec: str
    weights: Optional[str] = None
    trust_model: bool = False


class MethodConfig(_Strict):
    name: str
    hparams: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}

    def settings(self) -> list[dict[str, Any]]:
        """The default setting first, then every combination of the grid (without repeats)."""
        out = [dict(self.hparams)]
        if self.grid:
            keys = list(self.grid)
            for combo in itertools.product(*(self.grid[k] for k in keys)):
                s = {**self.hparams, **dict(zip(keys, combo))}
                if s not in out:
                    out.append(s)
        return out


class MetricConfig(_Strict):
    name: str
    hparams: dict[str, Any] = {}


class RankingConfig(_Strict):
    """The ranking and the statistics of the aggregates (``analyses/significance.py``).

    ``draws``: Dirichlet metric weightings (robustness view); ``resamples``: bootstrap
    resamples of the images for each mean's 95% interval; ``rank_resamples``: for the spread
    of the overall rank; ``alpha``: level of the Wilcoxon-Holm, Friedman and Nemenyi tests;
    ``w_floor``: smallest Kendall's W of a discriminative metric;
    ``keep_non_discriminative``: rank with the flagged metrics too.
    """

    draws: int = Field(10_000, ge=1)
    baselines: list[str] = ["random", "sobel", "input"]
    resamples: int = Field(2000, ge=100)
    rank_resamples: int = Field(1000, ge=100)
    alpha: float = Field(0.05, gt=0, lt=1)
    w_floor: float = Field(0.1, ge=0, le=1)
    keep_non_discriminative: bool = False


class SensitivityConfig(_Strict):
    top_k: float = Field(0.1, gt=0, le=1)


class GlobalConfig(_Strict):
    """Global label-wise maps + PEPPR (aligned images only); model/data default to the run's first."""

    method: str = "gradcam"
    hparams: dict[str, Any] = {}
    model: Optional[str] = None
    data: Optional[str] = None
    by: Literal["true", "pred"] = "true"
    fill: Literal["black", "mean", "blur"] = "black"
    unit: str = "pixel"
    random_orders: int = Field(5, ge=1)
    step: float = Field(0.05, gt=0, le=1)


class VariabilityConfig(_Strict):
    """Explanation variability over a collection of models (a folder of trained models)."""

    collection: str
    methods: list[str] = ["gradcam"]
    data: Optional[str] = None
    pair_images: int = Field(64, ge=2)
    n_boot: int = Field(1000, ge=10)


class SISConfig(_Strict):
    """Sufficient input subsets for the decision "class ``target`` with probability >= ``tau``"."""

    target: int = Field(1, ge=0)
    images: int = Field(4, ge=1)
    tau: float = Field(0.7, gt=0, le=1)
    unit: str = "patch:4"
    model: Optional[str] = None
    data: Optional[str] = None


class SprayConfig(_Strict):
    """Spectral relevance analysis per class (as ``xaiscope spray``); model/data default to the run's first."""

    method: Optional[str] = None  # None: lrp_epsilon_plus_flat where the model allows LRP, else gradcam
    hparams: dict[str, Any] = {}
    model: Optional[str] = None
    data: Optional[str] = None
    classes: Optional[list[Union[int, str]]] = None  # None: every class
    k: Optional[int] = Field(None, ge=1)
    grid: int = Field(32, ge=1)
    signed: bool = False
    neighbors: Optional[int] = Field(None, ge=1)
    embedding: Literal["tsne", "umap", "none"] = "tsne"
    confounders: list[str] = ["confounder"]


class MetaConfig(_Strict):
    """Meta-evaluation of ``metrics`` (MetaQuantus protocol, as ``xaiscope meta-evaluate``) on
    the run's first model and images, with the run's methods at their default settings."""

    metrics: list[str]
    iterations: int = Field(3, ge=1)
    perturbations: int = Field(5, ge=1)
    max_images: Optional[int] = Field(32, ge=2)


class AnnotatorsConfig(_Strict):
    """Several annotators (as ``xaiscope annotators``) on the run's first model and images
    (which must hold masks from several annotators), with the run's methods at their
    default settings."""

    metrics: list[str] = ["relevance_mass_accuracy", "pointing_game", "auroc"]
    top_k: Optional[float] = Field(None, gt=0, le=1)
    staple: Literal["auto", "simpleitk", "em"] = "auto"


class AnalysesConfig(_Strict):
    ranking: Optional[RankingConfig] = RankingConfig()
    sensitivity: Optional[SensitivityConfig] = SensitivityConfig()
    global_maps: Optional[GlobalConfig] = Field(None, alias="global")
    variability: Optional[VariabilityConfig] = None
    sis: Optional[SISConfig] = None
    spray: Optional[SprayConfig] = None
    meta: Optional[MetaConfig] = None
    annotators: Optional[AnnotatorsConfig] = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ReportConfig(_Strict):
    examples: int = Field(6, ge=0)
    title: str = "xaiscope report"


class RunConfig(_Strict):
    out: Optional[str] = None
    seed: int = Field(0, ge=0)
    device: str = "cpu"
    batch_size: int = Field(64, ge=1)
    unit_images: int = Field(32, ge=1, description="images per work unit")
    backend: Literal["local", "ray"] = "local"
    ray_address: Optional[str] = None
    ray_max_retries: int = Field(3, ge=0)
    data: DataConfig
    models: list[ModelConfig] = Field(min_length=1)
    methods: list[MethodConfig] = Field(min_length=1)
    metrics: list[MetricConfig] = []
    analyses: AnalysesConfig = AnalysesConfig()
    report: ReportConfig = ReportConfig()

    @field_validator("methods", "metrics", mode="before")
    @classmethod
    def _names_as_strings(cls, v):
        if isinstance(v, list):
            return [{"name": item} if isinstance(item, str) else item for item in v]
        return v

    @field_validator("models", mode="before")
    @classmethod
    def _model_shorthand(cls, v):
        if isinstance(v, (str, dict)):
            v = [v]
        if isinstance(v, list):
            out = []
            for i, item in enumerate(v):
                if isinstance(item, str):
                    item = {"name": Path(item).stem or f"model{i}", "spec": item}
                out.append(item)
            return out
        return v

    @model_validator(mode="after")
    def _unique_names(self):
        for kind, items in (("model", self.models), ("method", self.methods), ("metric", self.metrics)):
            names = [i.name for i in items]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"{kind} name {sorted(dup)[0]!r} appears twice")
        return self

    def method_entries(self) -> list[MethodConfig]:
        """The methods to run, group names replaced by their members (see the module docstring)."""
        from xaiscope import explain

        return _expand(self.methods, explain.expand)

    def metric_entries(self, masks: bool = True, extra_masks=None) -> list[MetricConfig]:
        """The metrics to run; without ``masks`` (or without the extra mask a metric reads, when
        the names ``extra_masks`` are given), those that need them and only a group named are left out."""
        from xaiscope import evaluate

        out = _expand(self.metrics, evaluate.expand)
        extra = None if extra_masks is None else set(extra_masks)
        named = {m.name for m in self.metrics}
        return [m for m in out if m.name in named or evaluate.has_masks_for(evaluate.get_class(m.name), masks, extra)]

    def check_names(self, source: str = "config") -> None:
        """Unknown methods, metrics or hyperparameters, as ConfigError naming the place in the file."""
        from xaiscope import evaluate, explain

        for kind, items, expand in (
            ("methods", self.methods, explain.expand),
            ("metrics", self.metrics, evaluate.expand),
        ):
            for i, m in enumerate(items):
                if _is_group(m.name, expand) and (m.hparams or getattr(m, "grid", None)):
                    raise ConfigError(
                        f"{source}: {kind}.{i} ({m.name}): a group takes no hparams or grid; "
                        "list its members by name to set them."
                    )
        try:
            methods, metrics = self.method_entries(), self.metric_entries()
        except XaiscopeError as e:
            raise ConfigError(f"{source}: {e}") from None
        for m in methods:
            for s in m.settings():
                try:
                    explain.get(m.name, **s)
                except XaiscopeError as e:
                    raise ConfigError(f"{source}: methods.{_index(self.methods, m)} ({m.name}): {e}") from None
        for m in metrics:
            try:
                evaluate.get(m.name, **m.hparams)
            except XaiscopeError as e:
                raise ConfigError(f"{source}: metrics.{_index(self.metrics, m)} ({m.name}): {e}") from None


def _is_group(name: str, expand) -> bool:
    try:
        return expand([name]) != [name]
    except XaiscopeError:
        return False


def _expand(entries: list, expand) -> list:
    """Entries with group names (and ``all``) replaced by default-setting entries of their
    members; an entry given by its own name keeps its place and settings."""
    named = {e.name for e in entries if not _is_group(e.name, expand)}
    out, seen = [], set()
    for e in entries:
        members = [e] if e.name in named else [type(e)(name=n) for n in expand([e.name]) if n not in named]
        for m in members:
            if m.name not in seen:
                out.append(m)
                seen.add(m.name)
    return out


def _index(entries: list, entry) -> int:
    return next((i for i, e in enumerate(entries) if e.name == entry.name), 0)


def setting_id(hparams: dict[str, Any]) -> str:
    """A stable, readable id of a hyperparameter setting: ``default`` or ``n_steps=8,baseline=mean``."""
    if not hparams:
        return "default"
    return ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(hparams.items()))


def _format_error(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    return f"{source}: {loc}: {msg}."


def parse_config(obj: Any, source: str = "config") -> RunConfig:
    """Validate a dict into a :class:`RunConfig` (ConfigError with the key path on failure)."""
    if not isinstance(obj, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping of keys to values.")
    try:
        cfg = RunConfig.model_validate(obj)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None
    cfg.check_names(source)
    return cfg


def load_config(path: str | Path, **overrides: Any) -> RunConfig:
    """Read and validate a YAML config file; ``overrides`` (e.g. ``methods=["all"]``) replace
    top-level keys before validation (``None`` values are ignored)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"The config file {path} does not exist.")
    try:
        obj = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"The config file {path} is not valid YAML{where}.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"The config file {path} cannot be read ({e}).") from None
    if isinstance(obj, dict):
        obj = {**obj, **{k: v for k, v in overrides.items() if v is not None}}
    return parse_config(obj, str(path))


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what the run directory keeps)."""
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
