"""A seeded, reproducible training loop and the weights + sidecar writer.

The same seed on the same machine gives identical weights: the seed fixes torch's
global generator (dropout, anything the model draws during training), a dedicated
``torch.Generator`` for the epoch shuffles and the augmentation draws, and - through
:func:`init_model` - the initial weights. A model passed to :func:`train` keeps the
weights it has (so pre-trained weights survive); build it with :func:`init_model` (or
under ``torch.manual_seed``) to make its initialisation part of the seed too.

Loss: cross-entropy; optimiser: Adam (``lr``, ``weight_decay`` as L2 penalty); learning
rate constant or cosine-annealed per step.
Cost: ``epochs * N_train`` forward+backward passes, plus one forward pass per test
image per epoch and one per training image at the end (final train accuracy).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from xaiscope.data import Dataset
from xaiscope.errors import ConfigError, DataError, ModelError, did_you_mean
from xaiscope.io import atomic_path, write_json
from xaiscope.models import zoo
from xaiscope.models.forward import forward
from xaiscope.models.state import eval_mode


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model : the trained model (same object as passed in), in eval mode.
    history : one dict per epoch: ``epoch`` (1-based), ``loss`` (mean training loss),
        ``train_acc`` (running accuracy over the epoch's batches, train mode),
        ``test_acc`` (eval mode, None without a test set).
    train_acc : accuracy on the whole training set after training (eval mode).
    test_acc : accuracy on the test set after training, or None.
    seconds : wall-clock time of the training loop.
    settings : every setting of the run (for sidecars and manifests).
    """

    model: nn.Module
    history: list[dict]
    train_acc: float
    test_acc: float | None
    seconds: float
    settings: dict = field(default_factory=dict)


def init_model(arch: str, *, seed: int = 0, spatial_dims: int = 2, **kwargs: Any) -> nn.Module:
    """Build ``arch`` with initial weights fixed by ``seed``: a zoo name (``kwargs`` its
    arguments), or a ``timm:``, ``monai:`` or ``torchvision:`` spec (``in_channels`` and
    ``num_classes`` from ``kwargs``; :func:`xaiscope.models.load`)."""
    from xaiscope.models.load import load, seeded

    if not arch.startswith(SPEC_PREFIXES):  # a zoo name (an unknown one: its sentence, with a suggestion)
        with seeded(seed):
            return zoo.build(arch, **kwargs)
    model = load(
        arch,
        num_classes=int(kwargs.get("num_classes", 2)),
        in_channels=int(kwargs.get("in_channels", 1)),
        seed=seed,
        spatial_dims=spatial_dims,
    )
    return model


def head_name(model: nn.Module) -> str:
    """The module name of the classifier head: timm's ``get_classifier()`` where it is a real
    layer, else the last ``nn.Linear``."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    named = {id(m): n for n, m in model.named_modules() if n}
    if not isinstance(head, nn.Linear) or id(head) not in named:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    if head is None or id(head) not in named:
        raise ConfigError("The model has no linear classifier head, so its backbone cannot be frozen for a probe.")
    return named[id(head)]


def backbone_names(model: nn.Module) -> list[str]:
    """The top-level modules that hold no part of the head (:func:`head_name`)."""
    top = head_name(model).split(".")[0]
    return [n for n, _ in model.named_children() if n != top]


def freeze_modules(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """Set ``requires_grad=False`` on every parameter of the named submodules; return the modules.

    Names are dotted module paths as in ``model.named_modules()`` (e.g. ``features.0``).
    """
    known = [n for n, _ in model.named_modules() if n]
    modules = []
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"The model has no module {name!r} to freeze{did_you_mean(name, known)}.") from None
        for p in module.parameters():
            p.requires_grad_(False)
        modules.append(module)
    return modules


def accuracy(model: nn.Module, ds: Dataset, *, batch_size: int = 256, device: str | torch.device = "cpu") -> float:
    """Share of ``ds`` that ``model`` classifies correctly (eval mode, chunked forward)."""
    dev = torch.device(device)
    correct = 0
    with eval_mode(model):
        for _, xb, yb in ds.batches(batch_size):
            pred = forward(model, xb.to(dev), batch_size=batch_size).argmax(dim=1)
            correct += int((pred == yb.to(dev)).sum())
    return correct / max(1, len(ds))


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips per image: images ``[N, C, H, W]`` horizontally and vertically (and a
    transpose, a 90-degree turn with the flips, for square images); volumes
    ``[N, C, D, H, W]`` along ``W`` only. ``W`` is the left-right axis of volumes in the
    closest-canonical RAS convention of :class:`~xaiscope.data.Dataset`, and a brain (an
    MNI152 background) is close to mirror-symmetric across it, while flips or turns of the
    other axes would give anatomy that does not occur (upside-down heads)."""
    n = x.shape[0]
    if x.dim() == 5:
        draws = torch.rand(n, generator=generator).to(x.device)
        return torch.where((draws < 0.5).view(-1, 1, 1, 1, 1), x.flip(-1), x)
    draws = torch.rand(n, 3, generator=generator).to(x.device)
    x = torch.where((draws[:, 0] < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
    x = torch.where((draws[:, 1] < 0.5).view(-1, 1, 1, 1), x.flip(-2), x)
    if x.shape[-1] == x.shape[-2]:
        x = torch.where((draws[:, 2] < 0.5).view(-1, 1, 1, 1), x.transpose(-1, -2), x)
    return x


def stratified_order(y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random order of ``0..N-1`` in which every class is spread evenly, so each run of
    ``B`` consecutive items holds about ``B * N_c / N`` items of class ``c`` (within one).

    Each class's items are shuffled and item ``r`` of class ``c`` gets the key
    ``(r + u) / N_c`` with ``u ~ U(0, 1)``; the order sorts the keys.
    """
    keys = torch.empty(y.shape[0], dtype=torch.float64)
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        u = torch.rand(idx.numel(), generator=generator, dtype=torch.float64)
        keys[idx] = (torch.arange(idx.numel(), dtype=torch.float64) + u) / idx.numel()
    return torch.argsort(keys, stable=True)


def _check(model: nn.Module, train: Dataset, epochs: int, lr: float, batch_size: int) -> None:
    if not isinstance(model, nn.Module):
        raise ModelError(f"train() needs a torch.nn.Module, got a {type(model).__name__}.")
    if len(train) == 0:
        raise DataError(f"The training data {train.source or ''} is empty.".replace("  ", " "))
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {epochs}.")
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")


def train(
    model: nn.Module,
    train: Dataset,
    *,
    test: Dataset | None = None,
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    device: str | torch.device = "cpu",
    freeze: Sequence[str] = (),
    augment: bool = False,
    progress: bool = True,
    schedule: str = "constant",
    freeze_backbone: bool = False,
    balance: bool | None = None,
) -> TrainResult:
    """Train ``model`` on ``train`` with Adam and cross-entropy; seeded and reproducible.

    Parameters
    ----------
    model : nn.Module, trained in place (moved to ``device``).
    train, test : datasets (already normalised as the model expects).
    epochs, lr, batch_size, weight_decay : the optimisation settings.
    seed : int, fixes shuffling, augmentation and torch's global generator.
    device : where to train.
    freeze : module names (``features.0``) whose parameters stay fixed; frozen modules
        are also kept in eval mode, so BatchNorm running statistics stay fixed too.
    augment : random flips / 90-degree turns per image and epoch (volumes: left-right flips;
        see :func:`augment_batch`).
    freeze_backbone : linear probing: every parameter but the classifier head's
        (:func:`head_name`; the model's own tokens and embeddings included) stays fixed and
        the backbone stays in eval mode, so only the head is trained.
    progress : show a Rich progress bar.
    schedule : ``"constant"`` learning rate, or ``"cosine"``: per step
        ``lr * (1 + cos(pi * t / T)) / 2`` over the ``T`` steps (settles the last epochs).
    balance : class-balanced batches (:func:`stratified_order`) instead of a plain shuffle;
        None (default): balanced for volumes ``[N, C, D, H, W]``, shuffled for images. On
        registered volumes (the same anatomy in every volume, as in the 3D benchmark) the
        label's signal is a small share of the pooled features, and the gradient of a batch
        with more images of one class than the other is dominated by the shared anatomy;
        balanced batches cancel it (on the 3D benchmark, training otherwise stays at chance).
    """
    _check(model, train, epochs, lr, batch_size)
    if schedule not in ("constant", "cosine"):
        raise ConfigError(f"schedule must be 'constant' or 'cosine', got {schedule!r}.")
    dev = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(dev)
    if freeze_backbone:
        freeze = [*freeze, *backbone_names(model)]
        head = head_name(model)
        for name, p in model.named_parameters():
            if not name.startswith(head + "."):
                p.requires_grad_(False)  # root parameters (class token, position embedding) too
    frozen = freeze_modules(model, freeze)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("Every parameter of the model is frozen; nothing would be trained.")
    top = int(train.y.max())
    if balance is None:
        balance = train.x.dim() == 5
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict] = []
    n = len(train)
    steps = (n + batch_size - 1) // batch_size
    total_steps = epochs * steps
    sched = None
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total_steps) / total_steps))
        )
    start = time.perf_counter()
    bar = _progress(progress)
    with bar:
        task = bar.add_task("training", total=epochs * steps) if progress else None
        for epoch in range(1, epochs + 1):
            model.train()
            for m in frozen:
                m.eval()
            order = stratified_order(train.y, gen) if balance else torch.randperm(n, generator=gen)
            total_loss, correct = 0.0, 0
            for s in range(steps):
                idx = order[s * batch_size : (s + 1) * batch_size]
                xb, yb = train.x[idx].to(dev), train.y[idx].to(dev)
                if augment:
                    xb = augment_batch(xb, gen)
                out = model(xb)
                if s == 0 and epoch == 1 and (out.dim() != 2 or out.shape[1] <= top):
                    raise ModelError(
                        f"The model returns shape {list(out.shape)} but the training data has {top + 1} classes."
                    )
                loss = loss_fn(out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total_loss += float(loss.detach()) * len(idx)
                correct += int((out.detach().argmax(1) == yb).sum())
                if task is not None:
                    bar.update(task, advance=1, description=f"epoch {epoch}/{epochs} loss {loss.item():.3f}")
            if not torch.isfinite(torch.tensor(total_loss)):
                from xaiscope.errors import NumericalError

                raise NumericalError(
                    f"The training loss became non-finite in epoch {epoch}; lower the learning rate (lr={lr})."
                )
            test_acc = accuracy(model, test, device=dev) if test is not None else None
            history.append({"epoch": epoch, "loss": total_loss / n, "train_acc": correct / n, "test_acc": test_acc})
    seconds = time.perf_counter() - start
    model.eval()
    settings = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "weight_decay": weight_decay,
        "freeze": list(freeze),
        "freeze_backbone": freeze_backbone,
        "augment": augment,
        "balance": balance,
        "device": str(dev),
        "optimizer": "adam",
        "schedule": schedule,
        "loss": "cross_entropy",
        "n_train": n,
        "n_test": None if test is None else len(test),
    }
    return TrainResult(
        model=model,
        history=history,
        train_acc=accuracy(model, train, device=dev),
        test_acc=history[-1]["test_acc"],
        seconds=seconds,
        settings=settings,
    )


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _progress(show: bool):
    if not show:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    )


def _default_width(arch: str) -> int | None:
    factory = zoo.ZOO.get(arch)
    if factory is None:
        return None
    p = inspect.signature(factory).parameters.get("width")
    return None if p is None else p.default


#: the model specs (besides zoo names) a sidecar can name: rebuilt by :func:`xaiscope.models.load`
SPEC_PREFIXES = ("timm:", "monai:", "torchvision:")


def save(
    model: nn.Module,
    path: str | Path,
    *,
    arch: str,
    arch_kwargs: dict,
    classes: list[str],
    input_size: list[int],
    normalisation: dict | None,
    extra: dict | None = None,
) -> Path:
    """Write ``model``'s state dict to ``path`` and its sidecar to ``path.with_suffix('.json')``.

    Both files are written atomically. The sidecar holds ``arch``, ``arch_kwargs``
    (``in_channels``, ``num_classes``, ``width``), ``classes``, ``input_size``
    ``[C, H, W]`` (``[C, D, H, W]`` for volumes), ``normalisation`` (``{"mean": [...], "std": [...]}`` or null), the
    xaiscope version and, under ``extra``, anything else given; :func:`xaiscope.models.load`
    restores the model from ``path`` alone.
    """
    from xaiscope import __version__

    path = Path(path)
    if path.suffix == ".json":
        raise ConfigError(f"The weights path {path} must not end in .json (that is the sidecar's name).")
    if arch not in zoo.ZOO and not arch.startswith(SPEC_PREFIXES):
        raise ModelError(
            f"Unknown architecture {arch!r}{did_you_mean(arch, zoo.ZOO)}; the sidecar needs a zoo name "
            f"or a {', '.join(p + 'NAME' for p in SPEC_PREFIXES)} spec."
        )
    if len(input_size) not in (3, 4):
        raise ConfigError(f"input_size must be [C, H, W] or [C, D, H, W], got {list(input_size)}.")
    kw = dict(arch_kwargs)
    kw.setdefault("in_channels", int(input_size[0]))
    kw.setdefault("num_classes", len(classes))
    if "width" not in kw and _default_width(arch) is not None:
        kw["width"] = _default_width(arch)
    if normalisation is not None:
        if set(normalisation) < {"mean", "std"}:
            raise ConfigError("normalisation must have 'mean' and 'std' (or be None).")
        normalisation = {
            "mean": [float(v) for v in normalisation["mean"]],
            "std": [float(v) for v in normalisation["std"]],
        }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    sidecar = {
        "arch": arch,
        "arch_kwargs": kw,
        "classes": [str(c) for c in classes],
        "input_size": [int(v) for v in input_size],
        "normalisation": normalisation,
        "format": "xaiscope-weights-1",
        "xaiscope_version": __version__,
        "extra": extra or {},
    }
    write_json(path.with_suffix(".json"), sidecar)
    return path
