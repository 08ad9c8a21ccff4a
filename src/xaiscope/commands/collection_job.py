"""The ``xaiscope collection`` job: M models that differ only by seed, resumable; and reading collections.

Layout of a collection folder::

    out/manifest.json        kind, arch, arch_kwargs, data, fingerprints, image hashes, training settings,
                             models (with weights hashes)
    out/seed_0000.pt/.json   weights + sidecar per seed (``xaiscope.models.load`` reads them)

Resuming: a seed whose weights and sidecar both exist is kept (not retrained), provided
the manifest's architecture, data fingerprints and training settings equal the requested
ones and the weights file still holds the weights the manifest recorded (its weights
hash); otherwise the job refuses with one sentence naming the change (how many training
images changed, with an example id; which model file), so one collection never mixes
settings or data. ``--refresh`` retrains just the stale models, ``--force`` every one.
The manifest keeps per training image its label and pixel hash, and per model its
weights hash; it is rewritten (atomically) after every model, so an interrupted run
keeps what it finished.

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


def _file_hash(path: Path) -> str | None:
    """Weights hash of a saved state dict (as :func:`xaiscope.models.weights_hash` of the loaded model)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return models.weights_hash(state) if isinstance(state, dict) else None


def _identity_changes(old: dict, identity: dict, images: dict) -> list[tuple[str, str]]:
    """What differs between an existing collection and the requested one, as ``(what, detail)`` pairs."""
    from xaiscope.data.hashing import short
    from xaiscope.run.fingerprints import plural

    changes = []
    if old.get("fingerprint") != identity["fingerprint"]:
        before = old.get("images") or {}
        changed = [i for i, v in images.items() if i in before and before[i] != v]
        added = [i for i in images if before and i not in before]
        removed = [i for i in before if i not in images]
        parts = [f"{plural(len(changed), 'image')} changed"] if changed else []
        parts += [f"{len(added)} added"] if added else []
        parts += [f"{len(removed)} removed"] if removed else []
        example = (changed or added or removed or [None])[0]
        detail = (
            f"{', '.join(parts)}, e.g. {example}"
            if parts
            else f"fingerprint {short(old.get('fingerprint'))} -> {short(identity['fingerprint'])}"
        )
        changes.append(("training data", detail))
    if old.get("test_fingerprint") != identity["test_fingerprint"]:
        changes.append(
            ("test data", f"fingerprint {short(old.get('test_fingerprint'))} -> {short(identity['test_fingerprint'])}")
        )
    before = old.get("training") or {}
    diff = [k for k in identity["training"] if before.get(k) != identity["training"][k]]
    if diff:
        changes.append(
            ("training settings", ", ".join(f"{k} {before.get(k)!r} -> {identity['training'][k]!r}" for k in diff))
        )
    if old.get("arch") != identity["arch"] or old.get("arch_kwargs") != identity["arch_kwargs"]:
        changes.append(
            (
                "architecture",
                f"{old.get('arch')} {old.get('arch_kwargs')} -> {identity['arch']} {identity['arch_kwargs']}",
            )
        )
    return changes


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
    force: bool = False,
    refresh: bool = False,
    console=None,
) -> dict:
    """Train (or keep) one model per seed and write the manifest; return the manifest dict.

    A finished model is kept when the collection's architecture, data fingerprints and
    training settings equal the requested ones and its weights file still has the weights
    hash the manifest recorded. Otherwise the job stops with one sentence naming the
    change (:class:`~xaiscope.errors.StaleResultsError`) before anything is written;
    ``refresh=True`` retrains just the stale models, ``force=True`` every requested one.
    Models of a changed collection that are not requested again are dropped.
    """
    from xaiscope.commands.train_job import read_pair, train_and_save
    from xaiscope.data.hashing import short
    from xaiscope.errors import StaleResultsError
    from xaiscope.models.train import SPEC_PREFIXES
    from xaiscope.run.fingerprints import plural, stale_sentence
    from xaiscope.run.inputs import resolve_device

    seed_list = parse_seeds(seeds)
    if arch not in models.ZOO and not arch.startswith(SPEC_PREFIXES):
        from xaiscope.errors import did_you_mean

        raise ModelError(
            f"Unknown architecture {arch!r}{did_you_mean(arch, models.ZOO)}; choose one of {', '.join(models.ZOO)} "
            f"or a {', '.join(p + 'NAME' for p in SPEC_PREFIXES)} spec."
        )
    dev = resolve_device(device)
    out = ensure_dir(out)
    train_ds, test_ds = read_pair(Path(data), Path(test) if test else None)
    arch_kwargs = {"in_channels": train_ds.shape[0], "num_classes": train_ds.num_classes}
    if arch in models.ZOO:
        arch_kwargs["width"] = width
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
    images = {i: [int(y), h] for i, y, h in zip(train_ds.ids, train_ds.y.tolist(), train_ds.image_hashes())}
    old = _read_manifest(out)
    entries: dict[int, dict] = {}
    stale: set[int] = set()
    hashes: dict[int, str | None] = {}
    if old is not None:
        entries = {int(e["seed"]): e for e in old.get("models", [])}
        changes = _identity_changes(old, identity, images)
        if changes:
            stale = set(entries)
            if not (force or refresh):
                what = " and ".join(w for w, _ in changes)
                detail = "; ".join(d for _, d in changes)
                raise StaleResultsError(
                    f"The collection in {out} was made with different {what} ({detail}); use --refresh to retrain "
                    f"the {plural(len(stale), 'stale model')} or --force to retrain everything, or choose a new --out."
                )
        else:
            reasons = []
            for seed, e in sorted(entries.items()):
                path = out / e["file"]
                if not e.get("weights_hash") or not path.exists():
                    continue
                hashes[seed] = _file_hash(path)
                if hashes[seed] != e["weights_hash"]:
                    stale.add(seed)
                    reasons.append(
                        (f"model {e['file']}", f"weights hash {short(e['weights_hash'])} -> {short(hashes[seed])}")
                    )
            if reasons and not (force or refresh):
                raise StaleResultsError(
                    stale_sentence(reasons, f"the collection {out}", len(stale), thing="model", redo="retrain")
                )
    retrain = set(seed_list) if force else stale & set(seed_list)
    for seed in sorted(stale - set(seed_list)):  # a stale model not requested again leaves the collection
        e = entries.pop(seed)
        for f in (out / e["file"], (out / e["file"]).with_suffix(".json")):
            f.unlink(missing_ok=True)
    manifest = {
        "kind": "xaiscope-collection",
        **identity,
        "data": str(train_ds.source),
        "test": None if test_ds is None else str(test_ds.source),
        "normalisation": {"mean": train_ds.mean, "std": train_ds.std},
        "classes": train_ds.classes,
        "input_size": list(train_ds.shape),
        "images": images,
        "models": [],
    }
    for seed in seed_list:
        path = model_path(out, seed)
        if seed not in retrain and path.exists() and path.with_suffix(".json").exists():
            info = models.read_sidecar(str(path)) or {}
            extra = info.get("extra", {})
            entry = entries.get(seed) or {
                "seed": seed,
                "file": path.name,
                "train_acc": extra.get("train_acc"),
                "test_acc": extra.get("test_acc"),
                "seconds": extra.get("seconds"),
            }
            if not entry.get("weights_hash"):  # finished before its manifest entry was written
                entry["weights_hash"] = hashes.get(seed) or _file_hash(path)
            entry["status"] = "kept"
            if console is not None:
                console.print(f"seed {seed}: kept {path.name}")
        else:
            res = train_and_save(
                arch,
                arch_kwargs,
                train_ds,
                test_ds,
                path,
                seed=seed,
                extra={"collection": str(out)},
                device=dev,
                progress=progress,
                **{k: v for k, v in training.items() if k not in ("optimizer", "loss")},  # recorded, fixed
            )
            net = res.model
            entry = {
                "seed": seed,
                "file": path.name,
                "train_acc": res.train_acc,
                "test_acc": res.test_acc,
                "seconds": round(res.seconds, 3),
                "weights_hash": models.weights_hash(net),
                "status": "retrained" if seed in stale else "trained",
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
