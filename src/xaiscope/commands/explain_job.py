"""The ``xaiscope explain`` job: attributions per method, streamed to disk as they are made.

Formats (``--format``): ``npz`` writes ``<method>.npz`` (``attributions`` ``[N, C, H, W]``,
``ids``, ``targets``, ``labels``, ``hparams``) at the end, holding one method's attributions
in memory; ``zarr`` writes ``attributions.zarr`` (one array ``<method>`` ``[N, C, H, W]`` per
method, chunked by image, and ``ids``, ``targets``, ``labels``), one step of images at a time,
so memory does not grow with the number of images; ``auto`` (default) takes ``npz`` when all
methods' attributions fit :data:`NPZ_BUDGET` and ``zarr`` beyond, and says which it chose.
Volumes are ``[N, C, D, H, W]``; volumes read with an affine (NIfTI, DICOM) also get every
map (channels summed) as ``nifti/<method>/<id>.nii.gz`` carrying the input's affine, so it
opens aligned with the scan in any viewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiscope import explain
from xaiscope.errors import ConfigError
from xaiscope.io import ensure_dir, safe_name, write_bytes, write_npz
from xaiscope.run.inputs import (
    ModelAndImages,
    applicable_explainers,
    build_explainers,
    choose_targets,
    open_model_and_source,
    spacing_of,
)

#: bytes of attributions (all methods) up to which ``--format auto`` writes ``.npz`` files
NPZ_BUDGET = 2 << 30
FORMATS = ("auto", "npz", "zarr")


def choose_format(fmt: str, n: int, shape: tuple, methods: int) -> str:
    """``npz`` or ``zarr`` for ``fmt`` and ``n`` images of ``shape`` explained by ``methods`` methods."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be auto, npz or zarr; got {fmt!r}.")
    if fmt != "auto":
        return fmt
    return "npz" if n * int(np.prod(shape)) * 4 * methods <= NPZ_BUDGET else "zarr"


class _NpzSink:
    """Collects one method's attributions in memory; writes ``<method>.npz`` at the end."""

    def __init__(self, out: Path, name: str, hparams: dict) -> None:
        self.path, self.hparams, self.parts = out / f"{name}.npz", hparams, []

    def add(self, a: torch.Tensor) -> None:
        self.parts.append(a.cpu())

    def close(self, ids, targets, labels) -> Path:
        write_npz(
            self.path,
            attributions=torch.cat(self.parts).numpy(),
            ids=np.array(ids),
            targets=targets,
            labels=labels,
            hparams=np.array(repr(self.hparams)),
        )
        return self.path


class _ZarrSink:
    """Writes one method's attributions into ``attributions.zarr/<method>`` step by step."""

    def __init__(self, group, path: Path, name: str, hparams: dict, n: int, shape: tuple) -> None:
        chunk = (max(1, min(n, max(1, (16 << 20) // (4 * int(np.prod(shape)))))), *shape)
        self.array = group.create_array(name, shape=(n, *shape), chunks=chunk, dtype="float32", overwrite=True)
        self.array.attrs["hparams"] = repr(hparams)
        self.path, self.done = path / name, 0

    def add(self, a: torch.Tensor) -> None:
        self.array[self.done : self.done + len(a)] = a.cpu().numpy()
        self.done += len(a)

    def close(self, ids, targets, labels) -> Path:
        if self.done != self.array.shape[0]:
            self.array.resize((self.done, *self.array.shape[1:]))  # skipped images leave no row
        return self.path


def run_explain(
    what: ModelAndImages,
    *,
    methods: list[str],
    out: Path,
    params: dict[str, dict[str, Any]] | None = None,
    overlays: int = 8,
    fmt: str = "auto",
    images_per_step: int = 256,
    console=None,
) -> list[Path]:
    """Compute and write the attributions of every method (see the module docstring) and
    overlays of the first ``overlays`` images.

    ``what.seed`` fixes the random initial weights of a zoo, torchvision or factory spec
    (:func:`~xaiscope.run.inputs.model_seed`)."""
    from xaiscope.plotting import save_overlay
    from xaiscope.run.progress import ImageProgress
    from xaiscope.run.steps import each_step, to_device

    params = params or {}
    requested, methods = list(methods), explain.expand(methods)
    unknown = [m for m in params if m not in methods]
    if unknown:
        raise ConfigError(f"--param names method {unknown[0]!r}, which is not in --methods.")
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be auto, npz or zarr; got {fmt!r}.")
    explainers = build_explainers(methods, params, what.batch_size)
    net, src, dev, batch_size, explainers = open_model_and_source(what, explainers, params)
    explainers = applicable_explainers(explainers, requested, net, console)
    fmt = choose_format(fmt, len(src), src.shape, len(explainers))
    if console is not None:
        size = len(src) * int(np.prod(src.shape)) * 4 * len(explainers) / 2**30
        console.print(f"attributions: {size:.2f} GiB in all; writing {fmt} (--format)")
    ensure_dir(out)
    if fmt == "zarr":
        import zarr

        group = zarr.open_group(str(out / "attributions.zarr"), mode="w")
        sinks = [
            _ZarrSink(group, out / "attributions.zarr", ex.name, ex.settled(src.shape), len(src), src.shape)
            for ex in explainers
        ]
    else:
        sinks = [_NpzSink(out, ex.name, ex.settled(src.shape)) for ex in explainers]
    ids, targets, labels, shown = [], [], [], []

    def step(b):
        x = to_device(b.x, dev)
        t = choose_targets(net, x, to_device(b.y, dev), what.target, batch_size)
        return t.cpu(), [ex(net, x, t).cpu() for ex in explainers]

    spacing = spacing_of(src)
    with ImageProgress(console, len(src), "explaining") as progress, explain.voxel_spacing(spacing):
        for b, (t, maps) in each_step(src.batches(images_per_step), step):
            keep = min(len(b), max(0, overlays - len(shown)))
            affines = src.affines_of(b.index.tolist()) if spacing is not None else None
            for ex, sink, a in zip(explainers, sinks, maps):
                sink.add(a)
                if keep:
                    _overlays(save_overlay, out, ex.name, b.x[:keep], b.ids[:keep], a[:keep], b.masks)
                if affines is not None:
                    _nifti_maps(out, ex.name, b.ids, a, affines)
            shown += b.ids[:keep]
            ids += b.ids
            targets.append(t.numpy())
            labels.append(b.y.numpy())
            progress.advance(len(b))
    if not ids:
        raise ConfigError(f"No image of {src.source} could be read.")
    targets_a, labels_a = np.concatenate(targets), np.concatenate(labels)
    written = [sink.close(ids, targets_a, labels_a) for sink in sinks]
    if fmt == "zarr":
        group.create_array("ids", shape=(len(ids),), dtype=str, overwrite=True)[:] = np.array(ids, dtype=object)
        for key, arr in (("targets", targets_a), ("labels", labels_a)):
            group.create_array(key, data=arr, overwrite=True)
        group.attrs["skipped"] = dict(sorted(src.skipped.items()))
        written = [out / "attributions.zarr"]
    if src.skipped and console is not None:
        console.print(f"left out {len(src.skipped)} unreadable image(s): {', '.join(sorted(src.skipped))}")
    return written


def _overlays(save_overlay, out: Path, method: str, x, ids, a, masks=None) -> None:
    maps = explain.postprocess(a, pool="sum", normalise="max")
    for i, id_ in enumerate(ids):
        save_overlay(
            x[i],
            maps[i],
            out / "overlays" / method / f"{safe_name(id_)}.png",
            title=f"{method}: {id_}",
            mask=None if masks is None else masks[i],
        )


def _nifti_maps(out: Path, method: str, ids, a: torch.Tensor, affines: np.ndarray) -> None:
    """Each volume's map (channels summed, unnormalised) as ``nifti/<method>/<id>.nii.gz``."""
    from xaiscope.data.volumes import write_nifti

    maps = explain.pool(a, "sum").numpy()
    for i, id_ in enumerate(ids):
        path = out / "nifti" / method / f"{safe_name(id_)}.nii.gz"
        write_bytes(path, write_nifti(path, maps[i], affines[i]))
