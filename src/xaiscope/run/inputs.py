"""Open a user's model and data together, checking that they fit each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from xaiscope import data as xdata
from xaiscope import explain, models
from xaiscope.data.hashing import derive_seed
from xaiscope.errors import ConfigError, DataError, ModelError


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or auto.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"Device {device!r} was requested but CUDA is not available on this machine.")
    return dev


def model_seed(seed: int, name: str) -> int:
    """The seed of a model's random initial weights: derived from the command's (or run's)
    ``seed`` and the model's ``name`` (its name in a run, its spec on the command line),
    so models of one run draw independent weights and the same seed and name always give
    the same ones (:func:`xaiscope.data.hashing.derive_seed`)."""
    return derive_seed(seed, name)


@dataclass(frozen=True)
class DataOptions:
    """How a data path is read (see :func:`xaiscope.data.open_source`): decoding processes for
    image folders, what a bad image does (``stop`` or ``skip``), the MedMNIST split, and the
    array names in HDF5 / Zarr / NPZ files."""

    workers: int = 0
    on_bad_image: str = "stop"
    split: str | None = None
    x_key: str = "x"
    y_key: str = "y"
    mask_key: str = "masks"
    #: (H, W) or (D, H, W) a folder's images are resampled to (None: as they are)
    resize: tuple[int, ...] | None = None
    #: the images' normalisation: None (the model's, else none), "none", "dataset" or (mean, std)
    normalise: Any = None

    def source_kwargs(self) -> dict[str, Any]:
        """These options (but ``resize`` and ``normalise``, passed on their own) as keyword
        arguments of :func:`xaiscope.data.open_source`."""
        return {k: v for k, v in self.__dict__.items() if k not in ("resize", "normalise")}


def open_source(
    data,
    *,
    weights=None,
    model_spec: str | None = None,
    resize=None,
    normalise=None,
    masks: str = "auto",
    options: DataOptions = DataOptions(),
) -> xdata.Source:
    """A lazy source of ``data`` (a path or a Python object); a model trained by ``xaiscope
    train`` brings its normalisation, input size and classes.

    Normalisation: the caller's ``normalise`` (or ``options.normalise``) wins; else a trained
    model's sidecar; else, for a ``timm:NAME`` spec, :func:`timm_normalisation`; else none."""
    normalise = normalise if normalise is not None else options.normalise
    info = models.read_sidecar(model_spec) if model_spec else None
    if info is not None and normalise is None and info.get("normalisation"):
        norm = info["normalisation"]
        normalise = (norm["mean"], norm["std"])
    is_path = isinstance(data, (str, Path))
    is_folder = is_path and Path(data).suffix.lower() not in xdata.ARRAY_SUFFIXES
    resize = resize if resize is not None else options.resize
    if info is not None and resize is None and info.get("input_size") and is_folder:
        resize = tuple(info["input_size"][1:])
    classes = info.get("classes") if info is not None and is_folder else None
    src = xdata.open_source(
        data, normalise=normalise, resize=resize, masks=masks, classes=classes, **options.source_kwargs()
    )
    if normalise is None and info is None and model_spec and str(model_spec).startswith("timm:"):
        src.set_normalisation(timm_normalisation(str(model_spec), weights, src.shape[0]))
    return src


def timm_normalisation(spec: str, weights, channels: int):
    """The normalisation of a ``timm:NAME`` model: with a checkpoint (``weights``), the mean and
    std of the architecture's pretrained configuration (``timm.get_pretrained_cfg``; what its
    published weights were trained with) when it has one value per channel of the data; else
    (random weights, or other channels) the data's own statistics (``"dataset"``)."""
    if weights is not None:
        try:
            import timm

            cfg = timm.get_pretrained_cfg(spec.split(":", 1)[1].split(",")[0].strip())
        except Exception:  # timm missing or an unknown name: the model's loading says so
            cfg = None
        mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
        if mean is not None and std is not None and len(mean) == channels == len(std):
            return (list(mean), list(std))
    return "dataset"


def spacing_of(src: xdata.Source) -> tuple[float, float, float] | None:
    """Voxel size ``(dd, dh, dw)`` in mm of a source of volumes, from its first volume's affine
    (the lengths of the affine's columns); None for 2D images and volumes without geometry."""
    if len(src.shape) != 4 or not len(src):
        return None
    aff = src.affine(0)
    if aff is None:
        return None
    import numpy as np

    return tuple(float(v) for v in np.linalg.norm(np.asarray(aff)[:3, :3], axis=0))


def open_data(
    path: str | Path, *, model_spec: str | None = None, resize=None, normalise=None, masks: str = "auto"
) -> xdata.Dataset:
    """Read data into memory (:func:`open_source` read whole)."""
    return open_source(path, model_spec=model_spec, resize=resize, normalise=normalise, masks=masks).to_dataset()


def check_model_fits(model: torch.nn.Module, ds: xdata.Dataset | xdata.Source, device: torch.device) -> int:
    """Run one image through the model; return its number of outputs; clear errors otherwise."""
    src = xdata.open_source(ds)
    x = next(src.batches(1)).x.to(device)
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as e:
        raise ModelError(
            f"The model cannot process images of shape {list(src.shape)} from {src.source}: {str(e).splitlines()[0]}"
        ) from None
    from xaiscope.models.forward import check_output  # models.forward is the function, not the module

    check_output(out, 1)
    n_out = out.shape[1]
    top = int(src.labels.max())
    if top >= n_out:
        raise DataError(
            f"The data in {src.source} has label {top} ({src.classes[top]!r}) but the model has only {n_out} outputs."
        )
    return n_out


def open_model_for(
    model_spec: str,
    src: xdata.Source,
    *,
    weights: str | None = None,
    device: str = "cpu",
    trust_model: bool = False,
    seed: int = 0,
    init_seed: int | None = None,
) -> tuple[torch.nn.Module, torch.device]:
    """``(model on device, device)`` for the images of ``src``, after checking that they fit.

    Random initial weights are drawn under ``init_seed``, by default :func:`model_seed` of
    ``seed`` and the spec."""
    model = models.load(
        model_spec,
        weights,
        num_classes=max(2, src.num_classes),
        in_channels=src.shape[0],
        spatial_dims=len(src.shape) - 1,
        trust_model=trust_model,
        seed=model_seed(seed, model_spec) if init_seed is None else init_seed,
    )
    dev = resolve_device(device)
    model = model.to(dev)
    check_model_fits(model, src, dev)
    return model, dev


def open_inputs(
    model_spec: str,
    data_path: str | Path,
    *,
    weights: str | None = None,
    device: str = "cpu",
    resize=None,
    normalise=None,
    masks: str = "auto",
    trust_model: bool = False,
    seed: int = 0,
    init_seed: int | None = None,
) -> tuple[torch.nn.Module, xdata.Dataset, torch.device]:
    """``(model on device, dataset in memory, device)`` after checking that they fit."""
    ds = open_data(data_path, model_spec=model_spec, resize=resize, normalise=normalise, masks=masks)
    model, dev = open_model_for(
        model_spec,
        xdata.open_source(ds),
        weights=weights,
        device=device,
        trust_model=trust_model,
        seed=seed,
        init_seed=init_seed,
    )
    return model, ds, dev


def applicable_explainers(explainers: list, requested: list[str], model: torch.nn.Module, console=None) -> list:
    """The ``explainers`` that can explain ``model`` (:func:`xaiscope.explain.applicable` of the
    ``requested`` names): those reached through a group or ``all`` that cannot are left out and
    said on ``console``; one named on its own that cannot is one sentence."""
    kept, left_out = explain.applicable(requested, model)
    if left_out and console is not None:
        name, why = next(iter(left_out.items()))
        more = f" and {len(left_out) - 1} more" if len(left_out) > 1 else ""
        console.print(f"left out {', '.join(left_out)}: they cannot explain this model ({name}: {why}){more}.")
    out = [e for e in explainers if e.name in kept]
    if not out:
        raise ConfigError(f"None of the methods asked for can explain this model ({', '.join(left_out)}).")
    return out


def provisional_batch_size(value: int | str) -> int:
    """A number to validate settings with before ``"auto"`` is settled (see :func:`settle_batch_size`)."""
    return 64 if value == "auto" else int(value)


def build_explainers(methods: list[str], params: dict[str, dict[str, Any]], batch_size: int | str) -> list:
    """Explainers by name with their ``-p`` settings; a ``batch_size`` given per method wins
    over the command's (``"auto"`` is settled later by :func:`settle_batch_size`)."""
    return [explain.get(m, **{"batch_size": provisional_batch_size(batch_size), **params.get(m, {})}) for m in methods]


def settle_batch_size(
    value: int | str,
    model: torch.nn.Module,
    ds: xdata.Dataset | xdata.Source,
    device: torch.device,
    objs: list,
    params: dict[str, dict[str, Any]],
) -> tuple[int, list]:
    """``(batch size, objs)``. A number is kept as it is. For ``"auto"`` the images per call
    with the best forward throughput of ``model`` on (up to 64 of) the dataset's images
    (:func:`xaiscope.models.tune.best_batch_size`), and the explainers or metrics ``objs``
    rebuilt with it, except those given their own ``batch_size`` in ``params``."""
    if value != "auto":
        return int(value), objs
    from xaiscope.models.tune import best_batch_size

    bs = best_batch_size(model, next(xdata.open_source(ds).batches(64)).x.to(device))
    return bs, [
        type(o)(**{**o.hparams, "batch_size": bs})
        if "batch_size" in o.hparams and "batch_size" not in params.get(o.name, {})
        else o
        for o in objs
    ]


@dataclass(frozen=True)
class ModelAndImages:
    """What a per-image command (``explain``, ``evaluate``) is pointed at: a model spec and
    its weights, the images, the device and images per call, which class to explain
    (``"true"``, ``"pred"`` or a class index) and the seed of random initial weights."""

    model: str
    data: Path
    weights: str | None = None
    batch_size: int | str = 64
    device: str = "cpu"
    target: str | int = "true"
    trust_model: bool = False
    seed: int = 0
    options: DataOptions = DataOptions()


class Opened(NamedTuple):
    """The opened inputs of :class:`ModelAndImages`: the model on ``device``, the dataset,
    the settled images per call, the explainers or metrics rebuilt with it, and the
    class explained per image (on ``device``)."""

    model: torch.nn.Module
    dataset: xdata.Dataset
    device: torch.device
    batch_size: int
    objects: list
    targets: torch.Tensor


def open_model_and_images(what: ModelAndImages, objects: list, params: dict[str, dict[str, Any]]) -> Opened:
    """Open the model and images of ``what``, settle ``"auto"`` images per call for
    ``objects`` (see :func:`settle_batch_size`) and choose each image's target class."""
    net, ds, dev = open_inputs(
        what.model, what.data, weights=what.weights, device=what.device, trust_model=what.trust_model, seed=what.seed
    )
    batch_size, objects = settle_batch_size(what.batch_size, net, ds, dev, objects, params)
    targets = choose_targets(net, ds.x.to(dev), ds.y.to(dev), what.target, batch_size)
    return Opened(net, ds, dev, batch_size, objects, targets)


class OpenedSource(NamedTuple):
    """The opened inputs of :class:`ModelAndImages` for a job that streams: the model on
    ``device``, the lazy source, the settled images per call and the explainers or metrics
    rebuilt with it (targets are chosen per batch, :func:`choose_targets`)."""

    model: torch.nn.Module
    source: xdata.Source
    device: torch.device
    batch_size: int
    objects: list


def open_model_and_source(what: ModelAndImages, objects: list, params: dict[str, dict[str, Any]]) -> OpenedSource:
    """Open the model and a lazy source of the images of ``what``; settle ``"auto"`` images
    per call for ``objects`` (see :func:`settle_batch_size`)."""
    src = open_source(what.data, model_spec=what.model, weights=what.weights, options=what.options)
    net, dev = open_model_for(
        what.model, src, weights=what.weights, device=what.device, trust_model=what.trust_model, seed=what.seed
    )
    batch_size, objects = settle_batch_size(what.batch_size, net, src, dev, objects, params)
    return OpenedSource(net, src, dev, batch_size, objects)


def choose_targets(model, x: torch.Tensor, y: torch.Tensor, target: str | int, batch_size: int) -> torch.Tensor:
    """Targets: the true labels, the predicted labels, or one fixed class."""
    if target == "true":
        return y
    if target == "pred":
        return models.forward(model, x, batch_size=batch_size).argmax(dim=1)
    k, n_out = int(target), model(x[:1]).shape[1]
    if not 0 <= k < n_out:
        raise ConfigError(f"--target {k} is not a class of the model (it has {n_out} outputs).")
    return torch.full_like(y, k)
