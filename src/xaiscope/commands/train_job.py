"""The ``xaiscope train`` job: read data, train a zoo model, save weights + sidecar."""

from __future__ import annotations

from pathlib import Path

from xaiscope import data as xdata
from xaiscope.errors import ConfigError, DataError


def resolve_splits(data: Path, test: Path | None) -> tuple[Path, Path | None]:
    """A benchmark folder (with ``benchmark.json``) means ``data/train`` and, unless given, ``data/test``."""
    data = Path(data)
    if (data / "benchmark.json").exists() and (data / "train").is_dir():
        if test is None and (data / "test").is_dir():
            test = data / "test"
        data = data / "train"
    return data, test


def read_pair(data: Path, test: Path | None, *, masks: str = "none") -> tuple[xdata.Dataset, xdata.Dataset | None]:
    """Training data normalised with its own per-channel mean/SD; test data with the same values and classes."""
    data, test = resolve_splits(data, test)
    train_ds = (
        xdata.load_folder(data, normalise="dataset", masks=masks)
        if data.suffix != ".npz"
        else xdata.load_npz(data, normalise="dataset")
    )
    test_ds = None
    if test is not None:
        norm = (train_ds.mean, train_ds.std)
        if Path(test).suffix == ".npz":
            test_ds = xdata.load_npz(test, normalise=norm)
        else:
            test_ds = xdata.load_folder(
                test, normalise=norm, masks=masks, classes=train_ds.classes, resize=tuple(train_ds.shape[1:])
            )
        if test_ds.shape != train_ds.shape:
            raise DataError(
                f"Test images in {test} have shape {list(test_ds.shape)} but training images have {list(train_ds.shape)}."
            )
    if train_ds.num_classes < 2:
        raise DataError(f"The training data {data} has {train_ds.num_classes} class; training needs at least 2.")
    return train_ds, test_ds


def run_train(
    *,
    data: Path,
    out: Path,
    arch: str = "small_cnn",
    test: Path | None = None,
    epochs: int = 15,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
    width: int = 16,
    weight_decay: float = 0.0,
    augment: bool = False,
    device: str = "cpu",
    progress: bool = True,
    schedule: str = "cosine",
    weights: Path | None = None,
    freeze_backbone: bool = False,
    console=None,
):
    """Train ``arch`` on ``data`` and write ``out`` (state dict) and ``out.with_suffix('.json')`` (sidecar).

    ``arch`` is a zoo name or a ``timm:``/``monai:``/``torchvision:`` spec; ``weights`` a
    backbone checkpoint loaded first (everything but the classifier head must fit);
    ``freeze_backbone`` trains the head alone (linear probing, how foundation models are used)."""
    from xaiscope.run.inputs import resolve_device

    out = Path(out)
    if out.suffix.lower() == ".json":
        raise ConfigError(
            f"--out {out} must be the weights file (e.g. model.pt); the .json sidecar is written beside it."
        )
    from xaiscope.io import ensure_dir

    ensure_dir(out.parent)  # an unwritable output fails now, not after training
    dev = resolve_device(device)
    train_ds, test_ds = read_pair(data, test)
    kwargs = {"in_channels": train_ds.shape[0], "num_classes": train_ds.num_classes}
    from xaiscope.models import zoo

    if arch in zoo.ZOO:
        kwargs["width"] = width
    res = train_and_save(
        arch,
        kwargs,
        train_ds,
        test_ds,
        out,
        seed=seed,
        extra={"data": str(train_ds.source), "test_data": None if test_ds is None else str(test_ds.source)},
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        device=dev,
        augment=augment,
        progress=progress,
        schedule=schedule,
        backbone=weights,
        freeze_backbone=freeze_backbone,
    )
    if console is not None:
        test_txt = "" if res.test_acc is None else f", test accuracy {res.test_acc:.4f} ({len(test_ds)} images)"
        console.print(f"train accuracy {res.train_acc:.4f} ({len(train_ds)} images){test_txt}; {res.seconds:.1f} s")
        console.print(f"wrote {out} and {out.with_suffix('.json')}")
    return res


def train_and_save(
    arch: str,
    arch_kwargs: dict,
    train_ds,
    test_ds,
    path,
    *,
    seed: int,
    extra: dict | None = None,
    backbone: Path | None = None,
    **options,
):
    """Initialise ``arch`` under ``seed`` (and load the ``backbone`` checkpoint into it), train
    it on ``train_ds`` (``options`` are :func:`xaiscope.models.train.train`'s), and write its
    weights and sidecar to ``path`` (accuracies, time, history and settings under ``extra``,
    with the caller's ``extra``). Returns the training result, its model on the CPU."""
    from xaiscope.models.load import load_backbone
    from xaiscope.models.train import head_name, init_model, save, train

    model = init_model(arch, seed=seed, spatial_dims=len(train_ds.shape) - 1, **arch_kwargs)
    if backbone is not None:
        model = load_backbone(model, backbone, head_name(model))
        extra = {**(extra or {}), "backbone": str(backbone)}
    res = train(model, train_ds, test=test_ds, seed=seed, **options)
    res.model = res.model.cpu()
    record = {
        "train_acc": res.train_acc,
        "test_acc": res.test_acc,
        "seconds": round(res.seconds, 3),
        "history": res.history,
        "settings": res.settings,
        **(extra or {}),
    }
    save(
        res.model,
        path,
        arch=arch,
        arch_kwargs=arch_kwargs,
        classes=train_ds.classes,
        input_size=list(train_ds.shape),
        normalisation={"mean": train_ds.mean, "std": train_ds.std},
        extra=record,
    )
    return res
