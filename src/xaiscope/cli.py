"""The ``xaiscope`` command.

Every command turns user mistakes (:class:`~xaiscope.errors.XaiscopeError`) into one
sentence on stderr and exit status 2, with no traceback unless ``--debug`` is given.
Ctrl-C stops with status 130 and says how to resume.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from xaiscope.errors import ConfigError, XaiscopeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Explain image classifiers and measure how good the explanations are.",
)
console = Console()
err_console = Console(stderr=True)
_STATE = {"debug": False}


# Options shared by several commands (one definition each).
DEVICE = typer.Option("cpu", help="cpu, cuda, cuda:N or auto.")
TRUST_MODEL = typer.Option(False, help="Allow loading a pickled whole model (runs its code).")
OUT_DIR = typer.Option(..., help="Output folder.")
WEIGHTS = typer.Option(None, help="State-dict weights (loaded with weights_only=True).")
BATCH_SIZE = typer.Option("64", help="Most images per model call, or 'auto': timed on the data at the start.")
MODEL = typer.Option(..., help="Model spec: file, zoo name, torchvision:NAME or package.module:factory.")
PARAMS = typer.Option(None, "--param", "-p", help="METHOD.NAME=VALUE, repeatable.")
DATA = typer.Option(..., help="Image folder or .npz file.")
METHODS_HELP = "comma-separated method names, families (e.g. cams,lrp) or 'all'; see 'xaiscope methods'."
METRICS_HELP = "comma-separated metric names, categories (e.g. faithfulness) or 'all'; see 'xaiscope metrics'."
METHODS = typer.Option("saliency,integrated_gradients,gradcam", help=METHODS_HELP[0].upper() + METHODS_HELP[1:])
SEED = typer.Option(0, min=0, help="Seed of random initial weights (zoo, torchvision:NAME and factory specs).")
MAX_IMAGE_PIXELS = typer.Option(
    None,
    "--max-image-pixels",
    min=1,
    help="Decode images of up to N pixels (default 89,478,485, Pillow's); larger ones are refused as possible "
    "decompression bombs.",
)
WORKERS = typer.Option(0, min=0, help="Processes decoding images of a folder (0: in this process).")
ON_BAD_IMAGE = typer.Option(
    "stop",
    help="An unreadable image: 'stop' with one sentence naming it, or 'skip' it for every method alike and list it.",
)
SPLIT = typer.Option(None, help="The split of a MedMNIST .npz file: train, val or test (default test).")
X_KEY = typer.Option("x", help="Name of the images' array in an HDF5, Zarr or NPZ file.")
Y_KEY = typer.Option("y", help="Name of the labels' array in an HDF5, Zarr or NPZ file.")
MASK_KEY = typer.Option("masks", help="Name of the masks' array in an HDF5, Zarr or NPZ file.")
RESIZE = typer.Option(
    None,
    help="H,W (images) or D,H,W (volumes): resample a folder's images (linear) and masks (nearest); "
    "a volume's affine follows.",
)
NORMALISE_IMAGES = typer.Option(
    None,
    help="Normalise the images: none, dataset (per-channel mean/std of the data, one streamed pass) or "
    "MEANS/STDS (e.g. 0.5,0.5,0.5/0.25,0.25,0.25). Default: a trained model's own, a timm checkpoint's "
    "configuration (random timm weights: dataset), else none.",
)
IMAGES_PER_STEP = typer.Option(256, min=1, help="Images read from disk and scored together (memory per step).")


def pixel_limited(command):
    """Run ``command`` with images of up to its ``--max-image-pixels`` decoded (the limit ends with it)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from xaiscope.data.readers import max_image_pixels

        with max_image_pixels(kwargs.get("max_image_pixels")):
            return command(*args, **kwargs)

    return wrapper


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _STATE["debug"] = debug


def parse_batch_size(text: str) -> int | str:
    """``--batch-size``: a whole number >= 1, or ``auto``."""
    t = str(text).strip()
    if t == "auto":
        return t
    if t.isdigit() and int(t) >= 1:
        return int(t)
    raise ConfigError(f"--batch-size must be a whole number >= 1 or 'auto'; got {text!r}.")


def parse_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_params(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["integrated_gradients.n_steps=64"]`` -> ``{"integrated_gradients": {"n_steps": 64}}`` (values as YAML)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        name, dot, hp = key.partition(".")
        if not sep or not dot or not name or not hp:
            raise ConfigError(f"The setting {item!r} must look like METHOD.NAME=VALUE.")
        try:
            out.setdefault(name.strip(), {})[hp.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"The value in {item!r} cannot be parsed.") from None
    return out


def check_force_refresh(force: bool, refresh: bool) -> None:
    """``--force`` and ``--refresh`` exclude each other."""
    if force and refresh:
        raise ConfigError("--force recomputes everything and --refresh only what changed; give one of them.")


def parse_target(target: str) -> str | int:
    if target in ("true", "pred"):
        return target
    try:
        return int(target)
    except ValueError:
        raise ConfigError(f"--target must be 'true', 'pred' or a class index, got {target!r}.") from None


def parse_resize(text: str | None) -> tuple[int, ...] | None:
    """``--resize H,W`` or ``D,H,W`` as a tuple of whole numbers >= 1 (None when not given)."""
    if not text:
        return None
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError:
        size = ()
    if len(size) not in (2, 3) or min(size) < 1:
        raise ConfigError(f"--resize must be H,W or D,H,W with whole numbers >= 1; got {text!r}.")
    return size


def parse_normalise(text: str | None):
    """``--normalise-images``: None, ``none``, ``dataset`` or ``MEANS/STDS`` as ``(means, stds)``."""
    if text is None or text in ("none", "dataset"):
        return text
    try:
        means, stds = text.split("/")
        pair = ([float(v) for v in means.split(",")], [float(v) for v in stds.split(",")])
    except ValueError:
        pair = None
    if pair is None or len(pair[0]) != len(pair[1]) or min(pair[1]) <= 0:
        raise ConfigError(
            f"--normalise-images must be none, dataset or MEANS/STDS with as many positive stds as means; got {text!r}."
        )
    return pair


def data_options(options: dict[str, Any]):
    """How a command reads its data, from its parsed options (``--workers``,
    ``--on-bad-image``, ``--split``, ``--x-key``, ``--y-key``, ``--mask-key``, ``--resize``,
    ``--normalise-images``; those it lacks keep their defaults)."""
    from xaiscope.run.inputs import DataOptions

    keys = ("workers", "on_bad_image", "split", "x_key", "y_key", "mask_key")
    return DataOptions(
        **{k: options[k] for k in keys if k in options},
        resize=parse_resize(options.get("resize")),
        normalise=parse_normalise(options.get("normalise_images")),
    )


def model_and_images(options: dict[str, Any]):
    """The model and images a per-image command is pointed at, from its parsed options
    (``--model``, ``--data``, ``--weights``, ``--batch-size``, ``--device``, ``--target``,
    ``--trust-model``, ``--seed``)."""
    from xaiscope.run.inputs import ModelAndImages

    return ModelAndImages(
        options=data_options(options),
        model=options["model"],
        data=options["data"],
        weights=options["weights"],
        batch_size=parse_batch_size(options["batch_size"]),
        device=options["device"],
        target=parse_target(options["target"]),
        trust_model=options["trust_model"],
        seed=options["seed"],
    )


@app.command()
def methods() -> None:
    """List the attribution methods with their hyperparameters and pass counts."""
    from xaiscope import explain

    table = Table(title="Attribution methods")
    for col in ("method", "family", "library", "hyperparameters (defaults)", "passes / image"):
        table.add_column(col)
    for name in explain.names():
        cls = explain.get_class(name)
        inst = cls()
        hp = ", ".join(f"{k}={v!r}" for k, v in inst.hparams.items() if k != "batch_size")
        table.add_row(name, cls.family, cls.library, hp or "-", _passes_text(inst))
    console.print(table)
    _print_groups("--methods", "every method", explain.groups(), "family")


def _passes_text(inst) -> str:
    p = inst.passes((1, 64, 64))
    if p != p:  # the count needs the model (e.g. the channels of a CAM's layer): the formula
        return inst.passes_formula
    return f"{p:g} (64x64)" if inst.passes(None) != inst.passes(None) else f"{p:g}"


@app.command("explain")
@pixel_limited
def explain_cmd(
    model: str = MODEL,
    data: Path = DATA,
    methods: str = METHODS,
    out: Path = OUT_DIR,
    weights: Optional[str] = WEIGHTS,
    param: Optional[list[str]] = PARAMS,
    batch_size: str = BATCH_SIZE,
    device: str = DEVICE,
    target: str = typer.Option("true", help="Explain the true label, the predicted one ('pred') or class K."),
    overlays: int = typer.Option(8, min=0, help="PNG overlays for the first K images per method."),
    trust_model: bool = TRUST_MODEL,
    seed: int = SEED,
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
    format: str = typer.Option(
        "auto", "--format", help="npz (one file per method), zarr (streamed to attributions.zarr) or auto (by size)."
    ),
    workers: int = WORKERS,
    on_bad_image: str = ON_BAD_IMAGE,
    split: Optional[str] = SPLIT,
    x_key: str = X_KEY,
    y_key: str = Y_KEY,
    mask_key: str = MASK_KEY,
    resize: Optional[str] = RESIZE,
    normalise_images: Optional[str] = NORMALISE_IMAGES,
    images_per_step: int = IMAGES_PER_STEP,
) -> None:
    """Compute raw attributions per method; write them (.npz per method or one Zarr store) and PNG overlays."""
    from xaiscope.commands.explain_job import run_explain

    written = run_explain(
        model_and_images(locals()),
        methods=parse_list(methods),
        out=out,
        params=parse_params(param),
        overlays=overlays,
        fmt=format,
        images_per_step=images_per_step,
        console=console,
    )
    for p in written:
        console.print(f"wrote {p}")


@app.command("convert")
@pixel_limited
def convert_cmd(
    data: Path = typer.Argument(..., help="Any data xaiscope reads: image folder, .h5, .zarr, .npz, MedMNIST .npz."),
    out: Path = typer.Argument(..., help="The Zarr store to write (ends in .zarr)."),
    dtype: str = typer.Option("auto", help="uint8 (8-bit pixels), float32, or auto (uint8 when the pixels are 8-bit)."),
    resize: Optional[str] = RESIZE,
    masks: str = typer.Option("auto", help="Masks of a folder: auto, required or none."),
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
    workers: int = WORKERS,
    on_bad_image: str = ON_BAD_IMAGE,
    split: Optional[str] = SPLIT,
    x_key: str = X_KEY,
    y_key: str = Y_KEY,
    mask_key: str = MASK_KEY,
    images_per_step: int = IMAGES_PER_STEP,
) -> None:
    """Turn any data source into a chunked Zarr store, the fast path for large studies."""
    from xaiscope import data as xdata
    from xaiscope.commands.convert_job import convert

    options = data_options(locals())
    src = xdata.open_source(data, resize=options.resize, masks=masks, **options.source_kwargs())
    path = convert(src, out, dtype=dtype, images_per_step=images_per_step, console=console)
    skipped = (
        f"; left out {len(src.skipped)} unreadable image(s): {', '.join(sorted(src.skipped))}" if src.skipped else ""
    )
    console.print(f"wrote {path} ({len(src) - len(src.skipped)} images of {list(src.shape)}){skipped}")


@app.command("global")
@pixel_limited
def global_cmd(
    model: str = MODEL,
    data: Path = typer.Option(..., help="Aligned images: image folder or .npz file."),
    method: str = typer.Option(..., help="Attribution method (see 'xaiscope methods')."),
    out: Path = OUT_DIR,
    weights: Optional[str] = WEIGHTS,
    param: Optional[list[str]] = PARAMS,
    by: str = typer.Option("true", help="Group images by their 'true' or 'pred'icted label."),
    normalise: str = typer.Option("sum_to_one", help="Per-image normalisation: sum_to_one, max or none."),
    signed: bool = typer.Option(False, help="Aggregate signed maps instead of |a|."),
    fill: str = typer.Option("black", help="PEPPR fill: black, mean or blur."),
    unit: str = typer.Option("pixel", help="PEPPR unit: pixel or patch:K."),
    step: float = typer.Option(0.05, help="PEPPR fraction step (0, step, ..., 1)."),
    random_orders: int = typer.Option(5, min=0, help="Random orders (seeds seed..seed+R-1)."),
    seed: int = typer.Option(
        0, min=0, help="Seed of the random orders and of random initial weights (zoo, torchvision, factory specs)."
    ),
    no_peppr: bool = typer.Option(False, "--no-peppr", help="Only write the global maps."),
    batch_size: str = BATCH_SIZE,
    device: str = DEVICE,
    trust_model: bool = TRUST_MODEL,
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
    workers: int = WORKERS,
    on_bad_image: str = ON_BAD_IMAGE,
    split: Optional[str] = SPLIT,
    x_key: str = X_KEY,
    y_key: str = Y_KEY,
    mask_key: str = MASK_KEY,
    resize: Optional[str] = RESIZE,
    normalise_images: Optional[str] = NORMALISE_IMAGES,
    images_per_step: int = IMAGES_PER_STEP,
) -> None:
    """Label-wise global maps (aligned images) and their PEPPR faithfulness curves."""
    from xaiscope.commands.global_job import run_global

    options = data_options(locals())
    summary = run_global(
        model=model,
        data=data,
        method=method,
        out=out,
        weights=weights,
        params=parse_params(param),
        by=by,
        normalise=normalise,
        signed=signed,
        fill=fill,
        unit=unit,
        step=step,
        random_orders=random_orders,
        seed=seed,
        batch_size=parse_batch_size(batch_size),
        device=device,
        trust_model=trust_model,
        peppr_enabled=not no_peppr,
        images_per_step=images_per_step,
        options=options,
    )
    for name, info in summary["peppr"].items():
        if "score_auroc" in info:
            console.print(
                f"{name}: PEPPR score (AUROC) {info['score_auroc']:.3f}, (accuracy) {info['score_accuracy']:.3f}"
            )
    console.print(f"wrote {out}")


@app.command("spray")
@pixel_limited
def spray_cmd(
    model: str = MODEL,
    data: Path = DATA,
    out: Path = OUT_DIR,
    klass: Optional[str] = typer.Option(
        None, "--class", help="Class to analyse: a label index or a class name (default: every class)."
    ),
    method: Optional[str] = typer.Option(
        None, help="Attribution method (default: lrp_epsilon_plus_flat when the model allows LRP, else gradcam)."
    ),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="Number of clusters (default: the eigengap proposal)."),
    grid: int = typer.Option(32, min=1, help="Side of the grid the maps are average-pooled to."),
    signed: bool = typer.Option(False, help="Cluster signed maps instead of |a|."),
    neighbors: Optional[int] = typer.Option(
        None, min=1, help="Neighbours per image in the affinity graph (default max(10, 2 sqrt(N)))."
    ),
    embedding: str = typer.Option("tsne", help="2-D embedding: tsne, umap (needs umap-learn) or none."),
    confounder: Optional[list[str]] = typer.Option(
        None, "--confounder", help="Extra mask name the shortcut flag treats as a confounder (default: confounder)."
    ),
    weights: Optional[str] = WEIGHTS,
    param: Optional[list[str]] = PARAMS,
    seed: int = typer.Option(
        0, min=0, help="Seed of clustering and embedding, and of random initial weights (zoo, torchvision, factory)."
    ),
    batch_size: str = BATCH_SIZE,
    device: str = DEVICE,
    trust_model: bool = TRUST_MODEL,
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
) -> None:
    """Spectral relevance analysis (SpRAy): clusters of explanation strategies per class, shortcut flags."""
    from xaiscope.commands.spray_job import run_spray

    summary = run_spray(
        model=model,
        data=data,
        out=out,
        klass=klass,
        method=method,
        weights=weights,
        params=parse_params(param),
        k=k,
        grid=grid,
        signed=signed,
        n_neighbors=neighbors,
        embedding=embedding,
        confounders=tuple(confounder) if confounder else ("confounder",),
        seed=seed,
        batch_size=parse_batch_size(batch_size),
        device=device,
        trust_model=trust_model,
    )
    for name, info in summary["per_class"].items():
        if "skipped" in info:
            console.print(f"{name}: skipped ({info['skipped']})")
            continue
        flagged = ", ".join(str(c) for c in info["flagged"]) or "none"
        sizes = ", ".join(str(c["size"]) for c in info["clusters"])
        console.print(f"{name}: k = {info['k']} (proposed {info['k_proposed']}), sizes {sizes}; shortcut: {flagged}")
    console.print(f"wrote {out}")


@app.command("sis")
@pixel_limited
def sis_cmd(
    model: list[str] = typer.Option(
        ..., help="Model spec (repeat --model to cluster the SIS of several models together)."
    ),
    data: Path = DATA,
    target: int = typer.Option(..., "--class", help="Class index K of the decision 'softmax probability of K >= tau'."),
    out: Path = OUT_DIR,
    tau: float = typer.Option(0.7, help="Decision threshold on the class probability, in (0, 1]."),
    unit: str = typer.Option("pixel", help="Selection unit: pixel or patch:K."),
    max_images: int = typer.Option(50, help="Explain at most this many images where the decision holds (data order)."),
    batch_size: int = typer.Option(256, help="Most masked candidates per model call."),
    eps: str = typer.Option(
        "auto",
        help="DBSCAN radius on the energy distance D between SIS pixel sets, or 'auto' (median min_samples-distance).",
    ),
    min_samples: int = typer.Option(3, help="DBSCAN core-point threshold."),
    method: str = typer.Option(
        "backselect", help="backselect (exact) or gradient (k units per step, for large images)."
    ),
    k: int = typer.Option(1, help="Units removed per step by --method gradient."),
    weights: Optional[list[str]] = typer.Option(None, help="State-dict weights, one per --model."),
    device: str = DEVICE,
    trust_model: bool = TRUST_MODEL,
    seed: int = SEED,
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
    images_per_step: int = IMAGES_PER_STEP,
) -> None:
    """Sufficient input subsets (Carter et al. 2019) of one class decision, clustered with DBSCAN."""
    from xaiscope.commands.sis_job import run_sis

    summary = run_sis(
        model=model,
        data=data,
        target=target,
        tau=tau,
        unit=unit,
        out=out,
        max_images=max_images,
        batch_size=batch_size,
        eps=eps,
        min_samples=min_samples,
        method=method,
        k=k,
        weights=weights,
        device=device,
        trust_model=trust_model,
        seed=seed,
        images_per_step=images_per_step,
        console=console,
    )
    for m in summary["models"]:
        size = m["sis_size_units"]
        console.print(
            f"{m['source']}: {m['n_decision']} of {m['n_images']} images reach tau; {m['n_explained']} explained, "
            f"{m['n_sis']} SIS" + (f" (median {size['median']:g} units)" if size else "")
        )
    if summary["n_clusters"] is None:
        console.print(
            f"No image reaches tau={summary['tau']:g} for class {summary['target']}; nothing to cluster. Wrote {out}"
        )
    else:
        console.print(
            f"{summary['n_clusters']} clusters, {summary['n_noise']} noise (eps={summary['eps']:.3g}); wrote {out}"
        )


@app.command("benchmark")
@pixel_limited
def benchmark_cmd(
    out: Path = typer.Option(..., help="Output folder (train/, test/, benchmark.json)."),
    three_d: bool = typer.Option(
        False,
        "--3d",
        help="Volumes: lesions of two shapes in the MNI152 brain, written as NIfTI (train/<class>/<id>.nii.gz).",
    ),
    n_train: Optional[int] = typer.Option(None, help="Training images (default 2000; 800 with --3d)."),
    n_test: Optional[int] = typer.Option(None, help="Test images (default 500; 200 with --3d)."),
    size: Optional[str] = typer.Option(
        None, help="Image side in pixels (default 64); with --3d voxels D,H,W (default 32,40,32)."
    ),
    background: Optional[str] = typer.Option(
        None, help="retina, cell, ihc, mri, noise or folder:PATH (default retina; 2D only)."
    ),
    alpha: Optional[float] = typer.Option(
        None, help="Lesion mixing strength (signal) in [0, 1] (default 0.5; 1.0 with --3d)."
    ),
    lesions: str = typer.Option("1-3", help="Lesions per image, MIN-MAX."),
    confounder_rate: float = typer.Option(0.0, help="Share of class-1 images with a corner marker."),
    aligned: Optional[bool] = typer.Option(
        None,
        "--aligned/--no-aligned",
        help="Same anatomy at every pixel; class-specific lesion regions (default no; 2D only).",
    ),
    seed: int = typer.Option(0, help="Random seed (same arguments give identical files)."),
    rule: Optional[str] = typer.Option(
        None, help="What carries the label: shape (regular/irregular) or size (small/large) (default shape; 2D only)."
    ),
    annotators: Optional[int] = typer.Option(
        None,
        help="Synthetic annotators K: masks/<annotator>/<class>/<id>.png as dilated, eroded, shifted and partial "
        "copies of the true masks (then in true_masks/) (default 0: none; 2D only).",
    ),
    tissue: Optional[str] = typer.Option(
        None, help="Where 3D lesion centres lie: wm (white matter) or gm_wm (grey or white) (default wm; --3d only)."
    ),
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
) -> None:
    """Generate the ground-truth lesion benchmark (images or volumes, lesion masks, confounder masks)."""
    from xaiscope.commands.benchmark_job import run_benchmark

    run_benchmark(
        out=out,
        three_d=three_d,
        n_train=n_train,
        n_test=n_test,
        size=size,
        background=background,
        alpha=alpha,
        lesions=lesions,
        confounder_rate=confounder_rate,
        aligned=aligned,
        seed=seed,
        rule=rule,
        annotators=annotators,
        tissue=tissue,
        console=console,
    )


@app.command("train")
@pixel_limited
def train_cmd(
    data: Path = typer.Option(..., help="Training image folder (or a benchmark folder: uses its train/ and test/)."),
    out: Path = typer.Option(..., help="Weights file to write (model.pt); the sidecar model.json goes beside it."),
    arch: str = typer.Option(
        "small_cnn",
        help="Zoo architecture (small_cnn, small_vgg, small_resnet, small_cnn3d for volumes) or a timm:/monai:/torchvision: spec.",
    ),
    test: Optional[Path] = typer.Option(None, help="Test image folder (accuracy printed and stored)."),
    epochs: int = typer.Option(15, help="Epochs."),
    lr: float = typer.Option(3e-3, help="Adam learning rate."),
    batch_size: int = typer.Option(32, help="Images per step."),
    seed: int = typer.Option(0, help="Seed of initial weights, shuffling and augmentation."),
    width: int = typer.Option(16, help="Channels of the first layer."),
    weight_decay: float = typer.Option(0.0, help="L2 penalty."),
    augment: bool = typer.Option(False, help="Random flips and 90-degree turns (volumes: left-right flips)."),
    schedule: str = typer.Option("cosine", help="Learning rate: cosine (annealed per step) or constant."),
    weights: Optional[Path] = typer.Option(
        None, help="A backbone checkpoint (state dict; e.g. a foundation model without its head) loaded first."
    ),
    freeze_backbone: bool = typer.Option(
        False, "--freeze-backbone", help="Train the classifier head only (linear probing)."
    ),
    device: str = DEVICE,
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
) -> None:
    """Train a model (seeded, reproducible); save weights and a sidecar that models.load reads."""
    from xaiscope.commands.train_job import run_train

    run_train(
        data=data,
        out=out,
        arch=arch,
        test=test,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        width=width,
        weight_decay=weight_decay,
        augment=augment,
        schedule=schedule,
        weights=weights,
        freeze_backbone=freeze_backbone,
        device=device,
        console=console,
    )


@app.command("collection")
@pixel_limited
def collection_cmd(
    data: Path = typer.Option(..., help="Training image folder (or a benchmark folder: uses its train/ and test/)."),
    out: Path = typer.Option(..., help="Collection folder (weights, sidecars, manifest.json)."),
    arch: str = typer.Option(
        "small_cnn",
        help="Zoo architecture (small_cnn, small_vgg, small_resnet, ...) or a timm:/monai:/torchvision: spec.",
    ),
    seeds: str = typer.Option("10", help="A count (10: seeds 0..9), a list (3,7,11) or a range (0-9)."),
    epochs: int = typer.Option(15, min=1, help="Epochs per model."),
    test: Optional[Path] = typer.Option(None, help="Test image folder (accuracy stored in the manifest)."),
    lr: float = typer.Option(3e-3, help="Adam learning rate."),
    batch_size: int = typer.Option(32, min=1, help="Images per step."),
    schedule: str = typer.Option("cosine", help="Learning-rate schedule: cosine or constant."),
    width: int = typer.Option(16, min=1, help="Channels of the first layer."),
    weight_decay: float = typer.Option(0.0, help="L2 penalty."),
    augment: bool = typer.Option(False, help="Random flips and 90-degree turns."),
    device: str = DEVICE,
    force: bool = typer.Option(False, "--force", help="Retrain every model instead of keeping finished ones."),
    refresh: bool = typer.Option(
        False, "--refresh", help="Retrain the models whose data, settings or weights changed; keep the rest."
    ),
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
) -> None:
    """Train models that differ only by seed (resumable: finished models are kept)."""
    from xaiscope.commands.collection_job import run_collection

    check_force_refresh(force, refresh)
    manifest = run_collection(
        data=data,
        out=out,
        arch=arch,
        seeds=seeds,
        epochs=epochs,
        test=test,
        lr=lr,
        batch_size=batch_size,
        width=width,
        weight_decay=weight_decay,
        augment=augment,
        schedule=schedule,
        device=device,
        force=force,
        refresh=refresh,
        console=console,
    )
    console.print(f"wrote {len(manifest['models'])} models and {out / 'manifest.json'}")


@app.command("variability")
@pixel_limited
def variability_cmd(
    collection: Path = typer.Option(
        ..., help="Folder of models: from 'xaiscope collection' or your own (.pt with sidecar, .ts)."
    ),
    data: Path = typer.Option(..., help="Test images: folder or .npz file."),
    methods: str = typer.Option("gradcam,lrp_epsilon_plus_flat", help=METHODS_HELP[0].upper() + METHODS_HELP[1:]),
    out: Path = OUT_DIR,
    param: Optional[list[str]] = PARAMS,
    normalise: str = typer.Option("sum_to_one", help="Per-map normalisation: sum_to_one, max or none."),
    signed: bool = typer.Option(False, help="Keep signs instead of |a|."),
    foreground: str = typer.Option("none", help="'masks': also aggregate the SD inside the data's masks."),
    pair_images: int = typer.Option(64, min=0, help="Images used for pairwise Spearman (memory M x K x H x W)."),
    bootstrap: int = typer.Option(1000, min=0, help="Bootstrap resamples for the fits' confidence intervals."),
    seed: int = typer.Option(0, min=0, help="Seed of the bootstrap."),
    top: int = typer.Option(3, min=0, help="PNG maps for the K most and K least stable images."),
    batch_size: str = BATCH_SIZE,
    device: str = DEVICE,
    trust_model: bool = typer.Option(False, help="Allow loading pickled whole models (runs their code)."),
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
    workers: int = WORKERS,
    split: Optional[str] = SPLIT,
    x_key: str = X_KEY,
    y_key: str = Y_KEY,
    mask_key: str = MASK_KEY,
    resize: Optional[str] = RESIZE,
    normalise_images: Optional[str] = NORMALISE_IMAGES,
    images_per_step: int = IMAGES_PER_STEP,
) -> None:
    """How explanations vary across the models of a collection, per image and method."""
    from xaiscope.commands.variability_job import run_variability

    options = data_options(locals())
    summary = run_variability(
        collection=collection,
        data=data,
        methods=parse_list(methods),
        out=out,
        params=parse_params(param),
        normalise=normalise,
        signed=signed,
        foreground=foreground,
        pair_images=pair_images,
        n_boot=bootstrap,
        seed=seed,
        top=top,
        batch_size=parse_batch_size(batch_size),
        device=device,
        trust_model=trust_model,
        images_per_step=images_per_step,
        options=options,
    )
    console.print(f"{len(summary['models'])} models, {summary['n_images']} images; wrote {out}")


@app.command("metrics")
def metrics_cmd() -> None:
    """List the evaluation metrics with category, direction, needs and pass counts."""
    from xaiscope import evaluate

    table = Table(title="Evaluation metrics")
    for col in ("metric", "category", "better", "needs", "passes / image", "reference"):
        table.add_column(col)
    for row in evaluate.table():
        table.add_row(row["name"], row["category"], row["direction"], row["needs"], row["passes"], row["reference"])
    console.print(table)
    _print_groups(
        "--metrics", "every metric the data allow (localisation only with masks)", evaluate.groups(), "category"
    )


def _print_groups(option: str, all_text: str, groups: dict[str, list[str]], prefix: str) -> None:
    console.print(f"Groups for {option} (and run configs): all = {all_text}")
    for group, members in groups.items():
        console.print(f"  {group} = {', '.join(members)}")
    console.print(f"A name that is both a group and a member means the member; {prefix}:NAME always means the group.")


@app.command("evaluate")
@pixel_limited
def evaluate_cmd(
    model: str = MODEL,
    data: Path = DATA,
    methods: str = METHODS,
    metrics: str = typer.Option(..., help=METRICS_HELP[0].upper() + METRICS_HELP[1:]),
    out: Path = typer.Option(..., help="Output Parquet file."),
    weights: Optional[str] = WEIGHTS,
    param: Optional[list[str]] = typer.Option(
        None, "--param", "-p", help="METRIC.NAME=VALUE or METHOD.NAME=VALUE, repeatable."
    ),
    batch_size: str = BATCH_SIZE,
    device: str = DEVICE,
    target: str = typer.Option("true", help="Explain the true label, the predicted one ('pred') or class K."),
    trust_model: bool = TRUST_MODEL,
    seed: int = SEED,
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
    workers: int = WORKERS,
    on_bad_image: str = ON_BAD_IMAGE,
    split: Optional[str] = SPLIT,
    x_key: str = X_KEY,
    y_key: str = Y_KEY,
    mask_key: str = MASK_KEY,
    resize: Optional[str] = RESIZE,
    normalise_images: Optional[str] = NORMALISE_IMAGES,
    images_per_step: int = IMAGES_PER_STEP,
    plan: bool = typer.Option(
        False, "--plan", help="Print the pass plan (passes, sharing, estimated time per method x metric) and stop."
    ),
) -> None:
    """Score attribution methods with evaluation metrics; write one row per image, method and metric.

    The images stream from disk, IMAGES_PER_STEP at a time: memory does not grow with the
    number of images. The first lines are the pass plan, from a timing probe on four images."""
    from xaiscope.commands.evaluate_job import run_evaluate

    path, n = run_evaluate(
        model_and_images(locals()),
        methods=parse_list(methods),
        metrics=parse_list(metrics),
        out=out,
        params=parse_params(param),
        images_per_step=images_per_step,
        console=console,
        plan_only=plan,
    )
    if path is not None:
        console.print(f"wrote {path} ({n} rows)")


@app.command("annotators")
@pixel_limited
def annotators_cmd(
    model: str = MODEL,
    data: Path = typer.Option(..., help="Image folder with masks/<annotator>/<class>/<id>.png, or an .npz file."),
    methods: str = METHODS,
    out: Path = OUT_DIR,
    metrics: str = typer.Option(
        "relevance_mass_accuracy,pointing_game,auroc",
        help="Localisation metrics (names or 'localisation'); dice and iou of the top pixels are always added.",
    ),
    top_k: Optional[float] = typer.Option(
        None, help="Share of pixels kept for dice/iou (default: as many as the consensus marks on each image)."
    ),
    staple: str = typer.Option("auto", help="STAPLE backend: auto (SimpleITK if installed), simpleitk or em."),
    weights: Optional[str] = WEIGHTS,
    param: Optional[list[str]] = typer.Option(
        None, "--param", "-p", help="METRIC.NAME=VALUE or METHOD.NAME=VALUE, repeatable."
    ),
    batch_size: str = BATCH_SIZE,
    device: str = DEVICE,
    target: str = typer.Option("true", help="Explain the true label, the predicted one ('pred') or class K."),
    trust_model: bool = TRUST_MODEL,
    seed: int = SEED,
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
) -> None:
    """Compare several annotators' masks (Dice, IoU, Fleiss' kappa, STAPLE) and place each method among them."""
    from xaiscope.commands.annotators_job import run_annotators

    paths = run_annotators(
        model_and_images(locals()),
        methods=parse_list(methods),
        metrics=parse_list(metrics),
        out=out,
        top_k=top_k,
        staple_backend=staple,
        params=parse_params(param),
        console=console,
    )
    console.print(f"wrote {', '.join(p.name for p in paths.values())} to {out}")


@app.command("meta-evaluate")
@pixel_limited
def meta_evaluate_cmd(
    model: str = MODEL,
    data: Path = DATA,
    methods: str = METHODS,
    metrics: str = typer.Option(..., help=METRICS_HELP[0].upper() + METRICS_HELP[1:]),
    out: Path = OUT_DIR,
    weights: Optional[str] = WEIGHTS,
    param: Optional[list[str]] = typer.Option(
        None, "--param", "-p", help="METRIC.NAME=VALUE or METHOD.NAME=VALUE, repeatable."
    ),
    iterations: int = typer.Option(3, min=1, help="Iterations of each perturbation test (MC spread is over these)."),
    perturbations: int = typer.Option(5, min=1, help="Perturbations per iteration (K)."),
    max_images: Optional[int] = typer.Option(None, min=2, help="At most this many images, round-robin over classes."),
    batch_size: str = BATCH_SIZE,
    device: str = DEVICE,
    trust_model: bool = TRUST_MODEL,
    seed: int = SEED,
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
) -> None:
    """Meta-evaluate metrics (MetaQuantus protocol): noise resilience, adversarial reactivity, meta-consistency."""
    from xaiscope.commands.meta_job import run_meta

    path = run_meta(
        model_and_images({**locals(), "target": "true"}),
        methods=parse_list(methods),
        metrics=parse_list(metrics),
        out=out,
        params=parse_params(param),
        iterations=iterations,
        perturbations=perturbations,
        max_images=max_images,
        console=console,
    )
    table = meta_console_table(path)
    console.print(table)
    console.print(f"wrote {path}")


def meta_console_table(path: Path) -> Table:
    """The meta-consistency table of ``meta.parquet`` for the terminal."""
    import pandas as pd

    df = pd.read_parquet(path)
    table = Table(title="Meta-consistency (higher is more reliable)")
    cols = ["metric", "space", "IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR", "MC", "MC_std"]
    for col in cols:
        table.add_column(col)
    for row in df[cols].itertuples(index=False):
        table.add_row(*[v if isinstance(v, str) else f"{v:.3f}" for v in row])
    return table


@app.command("actmax")
def actmax_cmd(
    model: str = MODEL,
    target: Optional[int] = typer.Option(None, "--class", help="Class index K whose score is maximised."),
    out: Path = OUT_DIR,
    shape: Optional[str] = typer.Option(None, help="Input shape C,H,W (default: from the model's sidecar)."),
    clip_range: Optional[str] = typer.Option(
        None, "--range", help="Valid input range LOW,HIGH (default: sidecar normalisation of [0,1], else 0,1)."
    ),
    layer: Optional[str] = typer.Option(
        None, help="Maximise a channel of this layer (module name) instead of a class."
    ),
    channel: int = typer.Option(0, help="Channel of --layer."),
    steps: int = typer.Option(200, help="Gradient-ascent steps."),
    lr: float = typer.Option(0.05, help="Mean absolute pixel change per step."),
    l2_decay: float = typer.Option(0.01, help="L2 decay towards the blank value per step, in [0, 1)."),
    blur_every: int = typer.Option(4, help="Gaussian blur every N steps (0 = never)."),
    blur_sigma: float = typer.Option(0.5, help="Blur standard deviation in pixels."),
    norm_clip_pct: float = typer.Option(0.0, help="Blank pixels whose norm is below this percentile (0 = off)."),
    contrib_clip_pct: float = typer.Option(
        0.0, help="Blank pixels whose contribution is below this percentile (0 = off)."
    ),
    seed: int = typer.Option(
        0, help="Seed of the random start and of random initial weights (zoo, torchvision, factory specs)."
    ),
    output: str = typer.Option("logit", help="Class score maximised: logit, softmax or log_softmax."),
    weights: Optional[str] = WEIGHTS,
    num_classes: Optional[int] = typer.Option(None, help="Outputs of a zoo/torchvision model without a sidecar."),
    device: str = DEVICE,
    trust_model: bool = TRUST_MODEL,
) -> None:
    """Activation maximisation (Yosinski et al. 2015): an input that maximises a class score."""
    from xaiscope.commands.actmax_job import run_actmax

    if target is None and layer is None:
        raise ConfigError("Give --class K (or --layer NAME with --channel C).")
    rec = run_actmax(
        model=model,
        target=target,
        out=out,
        shape=shape,
        clip_range=clip_range,
        weights=weights,
        num_classes=num_classes,
        layer=layer,
        channel=channel,
        steps=steps,
        lr=lr,
        l2_decay=l2_decay,
        blur_every=blur_every,
        blur_sigma=blur_sigma,
        norm_clip_pct=norm_clip_pct,
        contrib_clip_pct=contrib_clip_pct,
        seed=seed,
        output=output,
        device=device,
        trust_model=trust_model,
    )
    console.print(
        f"{rec['objective_name']}: {rec['start']:.3f} -> {rec['final']:.3f} in {len(rec['objective']) - 1} steps; wrote {out}"
    )


@app.command("run")
@pixel_limited
def run_cmd(
    config: Path = typer.Argument(..., help="YAML run configuration."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default: the config's 'out')."),
    force: bool = typer.Option(False, "--force", help="Recompute everything instead of resuming."),
    refresh: bool = typer.Option(
        False, "--refresh", help="Recompute the units whose model, images or settings changed; keep the rest."
    ),
    backend: Optional[str] = typer.Option(None, help="local or ray (default: the config's 'backend')."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address: auto or HOST:PORT."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html at the end."),
    methods: Optional[str] = typer.Option(None, help="Replace the config's methods: " + METHODS_HELP),
    metrics: Optional[str] = typer.Option(None, help="Replace the config's metrics: " + METRICS_HELP),
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
    keep_non_discriminative: bool = typer.Option(
        False,
        "--keep-non-discriminative",
        help="Rank with the metrics flagged non-discriminative too (analyses.ranking.keep_non_discriminative).",
    ),
    plan: bool = typer.Option(
        False, "--plan", help="Print the pass plan (passes, sharing, estimated time per method x metric) and stop."
    ),
) -> None:
    """Run (or resume) a configured grid of models x methods x settings x metrics, then report.

    The first lines are the pass plan, from a timing probe on four images."""
    from xaiscope.commands.run_job import run
    from xaiscope.run.config import load_config

    if backend not in (None, "local", "ray"):
        raise ConfigError(f"--backend must be 'local' or 'ray', got {backend!r}.")
    check_force_refresh(force, refresh)
    cfg = load_config(
        config,
        methods=parse_list(methods) if methods is not None else None,
        metrics=parse_list(metrics) if metrics is not None else None,
    )
    if keep_non_discriminative and cfg.analyses.ranking is not None:
        ranking = cfg.analyses.ranking.model_copy(update={"keep_non_discriminative": True})
        cfg = cfg.model_copy(update={"analyses": cfg.analyses.model_copy(update={"ranking": ranking})})
    root = run(
        cfg, out=out, force=force, refresh=refresh, console=console, backend=backend, address=address, plan_only=plan
    )
    if plan:
        return
    console.print(f"results: {root / 'results.parquet'}")
    if report:
        from xaiscope.report.html import write_report

        console.print(f"report: {write_report(root)}")


@app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., help="A run folder written by 'xaiscope run'.")) -> None:
    """Write RUN_DIR/report.html: one self-contained HTML file that opens offline."""
    from xaiscope.report.html import write_report

    console.print(f"report: {write_report(run_dir)}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("xaiscope-demo"), help="Folder for the data, models, run and report."),
    quick: bool = typer.Option(False, "--quick", help="A sub-minute version with tiny sizes."),
) -> None:
    """Run everything on built-in data: benchmark, training, all methods and metrics, analyses, report."""
    import time

    from xaiscope.commands.demo_job import run_demo
    from xaiscope.report.html import write_report

    t = time.time()
    run_dir = run_demo(out, quick=quick, console=console)
    console.print("[bold]4/4[/] writing the report")
    path = write_report(run_dir)
    console.print(f"demo finished in {time.time() - t:.0f} s; open the report: {path}")


@app.command("transfer")
@pixel_limited
def transfer_cmd(
    data: Path = typer.Option(
        ..., help="Target data: a benchmark folder (train/ + test/ with masks) or a training folder with --test."
    ),
    out: Path = typer.Option(..., help="Output folder (runs/effects tables, transfer.png, summary.json)."),
    pretrain_data: Optional[list[str]] = typer.Option(
        None, help="Pre-training data DIR or NAME=DIR, repeatable; default: two generated tasks."
    ),
    arch: str = typer.Option(
        "small_vgg", help="Zoo architecture with a 'features' sequence of blocks (small_cnn3d for volumes)."
    ),
    freeze: Optional[str] = typer.Option(
        None, help="Numbers L of frozen pre-trained blocks, e.g. 0,2,4 (default: every L from 0 to all blocks)."
    ),
    seeds: int = typer.Option(3, help="Seeds per setting."),
    methods: str = typer.Option("saliency,integrated_gradients,gradcam", help="Comma-separated attribution methods."),
    metrics: str = typer.Option(
        "relevance_rank_accuracy,relevance_mass_accuracy,emd_score", help="Localisation metrics."
    ),
    epochs: int = typer.Option(10, help="Fine-tuning epochs."),
    pretrain_epochs: int = typer.Option(10, help="Pre-training epochs."),
    lr: float = typer.Option(3e-3, help="Adam learning rate."),
    batch_size: int = typer.Option(32, help="Images per step."),
    width: int = typer.Option(16, help="Channels of the first layer."),
    max_images: int = typer.Option(100, help="Correctly classified test images explained per run."),
    test: Optional[Path] = typer.Option(None, help="Test folder with masks (default: DATA/test of a benchmark)."),
    device: str = DEVICE,
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
) -> None:
    """Pre-training study: localisation of explanations vs source and frozen blocks, with accuracy regressed out."""
    from xaiscope.commands.transfer_job import run_transfer

    try:
        levels = [int(v) for v in parse_list(freeze)] if freeze is not None else None
    except ValueError:
        raise ConfigError(f"--freeze must be comma-separated integers, got {freeze!r}.") from None
    run_transfer(
        data=data,
        out=out,
        pretrain_data=pretrain_data,
        arch=arch,
        freeze=levels,
        seeds=seeds,
        methods=parse_list(methods),
        metrics=parse_list(metrics),
        epochs=epochs,
        pretrain_epochs=pretrain_epochs,
        lr=lr,
        batch_size=batch_size,
        width=width,
        max_images=max_images,
        test=test,
        device=device,
        console=console,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn user errors into one sentence and exit code 2."""
    from xaiscope.allocator import keep_heap

    keep_heap()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = app(args=args, standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into Exit(130), which standalone_mode=False returns
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except XaiscopeError as e:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("Interrupted. Finished work is kept; run the same command again to resume.")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err_console.print("Interrupted. Finished work is kept; run the same command again to resume.")
        sys.exit(130)
    except Exception as e:
        # usage errors (a missing option, a bad value): Click's, or the copy of Click that
        # newer Typer releases carry
        if any(c.__name__ == "ClickException" for c in type(e).__mro__):
            e.show()
            sys.exit(2)
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error:[/] {type(e).__name__}: {e} (run with --debug for the traceback)",
            highlight=False,
        )
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
