"""The ``xaiscope collection`` job: M models that differ only by seed, resumable; and reading collections.

Layout of a collection folder::

    out/manifest.json        kind, arch, arch_kwargs, data, fingerprint, training settings, models
    out/seed_0000.pt/.json   weights + sidecar per seed (``xaiscope.models.load`` reads them)

Resuming: a seed whose weights and sidecar both exist is kept (not retrained), provided
the manifest's architecture, data fingerprint and training settings equal the requested
ones; otherwise the job refuses, so one collection never mixes settings. The manifest is
rewritten (atomically) after every model, so an interrupted run keeps what it finished.

A folder of the user's own trained models needs no manifest: :func:`model_files` lists
every ``.pt``, ``.pth`` or ``.ts`` file in it, each loaded with
:func:`xaiscope.models.load` (with a sidecar, or TorchScript).

Cost: ``M * epochs * N_train`` training passes (plus the accuracy passes of
:func:`xaiscope.models.train.train`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

from xaiscope import models
from xaiscope.errors import ConfigError, DataError, ModelError
from xaiscope.io import ensure_dir, write_json

MODEL_SUFFIXES = (".pt", ".pth", ".ts")
MANIFEST = "manifest.json"


def parse_seeds(seeds: str | int | list[int]) -> list[int]:
    """``10`` -> seeds 0..9; ``"3,7,11"`` -> [3, 7, 11]; ``"0-4"`` -> 0..4."""
    if isinstance(seeds, int):
        vals = list(range(seeds))
    elif isinstance(seeds, (list, tuple)):
        vals = [int(s) for s in seeds]
    else:
        text = str(seeds).strip()
        try:
            if "," in text:
                vals = [int(s) for s in text.split(",") if s.strip()]
            elif "-" in text.lstrip("-"):
                lo, hi = text.split("-", 1)
                vals = list(range(int(lo), int(hi) + 1))
            else:
                vals = list(range(int(text)))
        except ValueError:
            raise ConfigError(
                f"--seeds must be a count (10), a list (3,7,11) or a range (0-9); got {seeds!r}."
            ) from None
    if not vals or any(s < 0 for s in vals) or len(set(vals)) != len(vals):
        raise ConfigError(f"--seeds must give at least one distinct non-negative seed; got {seeds!r}.")
    return vals


def model_path(out: Path, seed: int) -> Path:
    return Path(out) / f"seed_{seed:04d}.pt"


def _read_manifest(out: Path) -> dict | None:
    p = Path(out) / MANIFEST
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"The collection manifest {p} cannot be read ({e}).") from None


def run_collection(
    *,
    data: Path,
    out: Path,
    arch: str = "small_cnn",
    seeds: str | int | list[int] = 10,
    epochs: int = 15,
    test: Path | None = None,
    lr: float = 3e-3,
    batch_size: int = 32,
    width: int = 16,
    weight_decay: float = 0.0,
    augment: bool = False,
    schedule: str = "cosine",
    device: str = "cpu",
    progress: bool = True,
    console=None,
) -> dict:
    """Train (or keep) one model per seed and write the manifest; return the manifest dict."""
    from xaiscope.models.train import init_model, save, train
    from xaiscope.pipeline.inputs import resolve_device
    from xaiscope.pipeline.train_job import read_pair

    seed_list = parse_seeds(seeds)
    if arch not in models.ZOO:
        from xaiscope.errors import did_you_mean

        raise ModelError(
            f"Unknown architecture {arch!r}{did_you_mean(arch, models.ZOO)}; choose one of {', '.join(models.ZOO)}."
        )
    dev = resolve_device(device)
    out = ensure_dir(out)
    train_ds, test_ds = read_pair(Path(data), Path(test) if test else None)
    arch_kwargs = {"in_channels": train_ds.shape[0], "num_classes": train_ds.num_classes, "width": width}
    training = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "augment": augment,
        "schedule": schedule,
        "optimizer": "adam",
        "loss": "cross_entropy",
    }
    identity = {
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "fingerprint": train_ds.fingerprint(),
        "test_fingerprint": None if test_ds is None else test_ds.fingerprint(),
        "training": training,
    }
    old = _read_manifest(out)
    entries: dict[int, dict] = {}
    if old is not None:
        for key, value in identity.items():
            if old.get(key) != value:
                raise ConfigError(
                    f"The collection in {out} was made with a different {key} ({old.get(key)!r}); "
                    "use the same settings and data to resume, or a new --out."
                )
        entries = {int(e["seed"]): e for e in old.get("models", [])}
    manifest = {
        "kind": "xaiscope-collection",
        **identity,
        "data": str(train_ds.source),
        "test": None if test_ds is None else str(test_ds.source),
        "normalisation": {"mean": train_ds.mean, "std": train_ds.std},
        "classes": train_ds.classes,
        "input_size": list(train_ds.shape),
        "models": [],
    }
    for seed in seed_list:
        path = model_path(out, seed)
        if path.exists() and path.with_suffix(".json").exists():
            info = models.read_sidecar(str(path)) or {}
            extra = info.get("extra", {})
            entry = entries.get(seed) or {
                "seed": seed,
                "file": path.name,
                "train_acc": extra.get("train_acc"),
                "test_acc": extra.get("test_acc"),
                "seconds": extra.get("seconds"),
            }
            entry["status"] = "kept"
            if console is not None:
                console.print(f"seed {seed}: kept {path.name}")
        else:
            model = init_model(arch, seed=seed, **arch_kwargs)
            res = train(
                model,
                train_ds,
                test=test_ds,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                weight_decay=weight_decay,
                device=dev,
                augment=augment,
                schedule=schedule,
                progress=progress,
            )
            extra = {
                "train_acc": res.train_acc,
                "test_acc": res.test_acc,
                "seconds": round(res.seconds, 3),
                "history": res.history,
                "settings": res.settings,
                "collection": str(out),
            }
            save(
                res.model.cpu(),
                path,
                arch=arch,
                arch_kwargs=arch_kwargs,
                classes=train_ds.classes,
                input_size=list(train_ds.shape),
                normalisation={"mean": train_ds.mean, "std": train_ds.std},
                extra=extra,
            )
            entry = {
                "seed": seed,
                "file": path.name,
                "train_acc": res.train_acc,
                "test_acc": res.test_acc,
                "seconds": round(res.seconds, 3),
                "status": "trained",
            }
            if console is not None:
                acc = "" if res.test_acc is None else f", test accuracy {res.test_acc:.4f}"
                console.print(f"seed {seed}: train accuracy {res.train_acc:.4f}{acc} ({res.seconds:.1f} s)")
        entries[seed] = entry
        manifest["models"] = [entries[s] for s in sorted(entries)]
        write_json(out / MANIFEST, manifest)
    return manifest


def model_files(collection: str | Path) -> list[Path]:
    """The weights files of a collection: from its manifest, else every model file in the folder (sorted)."""
    root = Path(collection)
    if not root.exists():
        raise ModelError(f"The collection folder {root} does not exist.")
    if root.is_file():
        raise ModelError(f"--collection {root} must be a folder of models, not a file.")
    manifest = _read_manifest(root)
    if manifest is not None:
        files = [root / e["file"] for e in manifest.get("models", [])]
        missing = [f for f in files if not f.exists()]
        if missing:
            raise ModelError(f"The collection manifest lists {missing[0].name}, which is missing from {root}.")
    else:
        files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in MODEL_SUFFIXES)
    if not files:
        raise ModelError(f"The folder {root} holds no models (.pt, .pth or .ts files, or a manifest.json).")
    return files


def iter_models(
    files: list[Path], device: torch.device, *, trust_model: bool = False, num_classes: int = 2, in_channels: int = 1
) -> Iterator[torch.nn.Module]:
    """Load the models one at a time (only one is held by this generator at once)."""
    for f in files:
        yield models.load(str(f), num_classes=num_classes, in_channels=in_channels, trust_model=trust_model).to(device)
