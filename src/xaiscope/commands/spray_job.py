"""The ``xaiscope spray`` job: spectral relevance analysis per class, written atomically.

For each analysed class ``K`` (one with ``--class``, else every class with at least 3
images) the images labelled ``K`` are explained for target ``K`` and clustered by
:func:`xaiscope.analyses.spray.spray`. Writes into ``out``:

- ``spray_<class>.parquet``: one row per image: ``image_id, label, prediction, correct,
  cluster, x, y`` (2-D embedding) and ``share_<mask>`` (share of the image's ``|a|`` in each
  mask, ``share_outside`` outside every mask);
- ``clusters_<class>.csv``: one row per cluster: ``cluster, size, accuracy, share_<mask>...,
  share_outside, flag`` (``shortcut`` or empty), ``prototypes`` (image ids, most typical first);
- ``eigenvalues_<class>.png``: the smallest eigenvalues of the normalised Laplacian and the proposed k;
- ``embedding_<class>.png``: the 2-D embedding coloured by cluster and by correctness;
- ``clusters_<class>.png``: one row per cluster: its mean map over the mean image, then
  its prototypes with their maps;
- ``summary.json``: settings, and per class k, the eigengap proposal, eigenvalues and the
  clusters (sizes, shares, flags, accuracy, prototype ids).

Default method: ``lrp_epsilon_plus_flat`` when the model's layers all have LRP rules
(:func:`xaiscope.explain.lrp.supports_lrp`), else ``gradcam``.
Passes: ``N`` for the predictions and ``E N_K`` for the explainer per analysed class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiscope import models
from xaiscope.analyses.spray import SHORTCUT, SprayResult, spray
from xaiscope.errors import ConfigError, DataError, did_you_mean
from xaiscope.io import ensure_dir, safe_name, write_csv, write_json, write_parquet
from xaiscope.run.inputs import build_explainers, open_inputs, settle_batch_size

MIN_IMAGES = 3
LRP_DEFAULT, CAM_DEFAULT = "lrp_epsilon_plus_flat", "gradcam"


def default_method(model: torch.nn.Module) -> str:
    """An LRP composite when the model allows it, else Grad-CAM."""
    from xaiscope.explain.lrp import supports_lrp

    return LRP_DEFAULT if supports_lrp(model) else CAM_DEFAULT


def resolve_class(value: str | int, classes: list[str]) -> int:
    """A class given by name or by label index -> its label index; one sentence otherwise."""
    text = str(value).strip()
    if text in classes:
        return classes.index(text)
    if text.lstrip("-").isdigit():
        k = int(text)
        if 0 <= k < len(classes):
            return k
        raise ConfigError(f"--class {k} is not a label index of the data (0 to {len(classes) - 1}).")
    raise ConfigError(
        f"Unknown class {text!r}{did_you_mean(text, classes)}; the data has classes {', '.join(classes)}."
    )


def class_masks(ds, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """The masks of images ``idx``: ``mask`` (the expert masks) and every extra mask by name."""
    out = {} if ds.masks is None else {"mask": ds.masks[idx]}
    for name, m in ds.extra_masks.items():
        if name in ("mask", "outside"):
            raise DataError(f"The extra mask name {name!r} in {ds.source} is reserved; rename that mask set.")
        out[name] = m[idx]
    return out


# --------------------------------------------------------------------------- figures
def _eigen_figure(res: SprayResult, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    from xaiscope.plotting import save_figure

    ev = res.eigenvalues
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    ax.plot(np.arange(1, ev.size + 1), ev, "o-", color="C0")
    if 1 <= res.k_proposed < ev.size:
        ax.axvspan(res.k_proposed + 0.1, res.k_proposed + 0.9, color="C3", alpha=0.15, label="largest gap")
    ax.set_xlabel("index j", fontsize=8)
    ax.set_ylabel("eigenvalue of the normalised Laplacian", fontsize=8)
    ax.set_title(f"{title}: proposed k = {res.k_proposed}, used k = {res.k}", fontsize=9)
    ax.set_xticks(np.arange(1, ev.size + 1))
    if 1 <= res.k_proposed < ev.size:
        ax.legend(fontsize=7)
    save_figure(fig, path)


def _embedding_figure(res: SprayResult, correct: np.ndarray, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    from xaiscope.plotting import save_figure

    e = res.embedding
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.6))
    for c in res.clusters:
        pts = e[c.members]
        label = f"cluster {c.index} (n={c.size})" + (f" {SHORTCUT}" if c.flag else "")
        axes[0].scatter(pts[:, 0], pts[:, 1], s=12, color=f"C{c.index % 10}", label=label)
    axes[0].set_title(f"{title}: clusters", fontsize=9)
    axes[0].legend(fontsize=6, loc="best")
    for ok, colour, label in ((True, "C2", "correct"), (False, "C3", "wrong")):
        pts = e[correct == ok]
        axes[1].scatter(pts[:, 0], pts[:, 1], s=12, color=colour, label=f"{label} ({len(pts)})")
    axes[1].set_title(f"{title}: prediction", fontsize=9)
    axes[1].legend(fontsize=6, loc="best")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, path)


def _cards_figure(res: SprayResult, x: torch.Tensor, maps: torch.Tensor, ids: list[str], title, path) -> None:
    import matplotlib.pyplot as plt

    from xaiscope.plotting import overlay, save_figure

    cols = 1 + max([len(c.prototypes) for c in res.clusters] + [1])
    rows = len(res.clusters)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for c in res.clusters:
        head = f"cluster {c.index}, n={c.size}" + (f", {SHORTCUT}" if c.flag else "")
        overlay(axes[c.index, 0], x[c.members].mean(0), c.mean_map, title=head)
        for j, i in enumerate(c.prototypes):
            overlay(axes[c.index, 1 + j], x[i], maps[i], title=ids[i][-18:])
    fig.suptitle(f"{title}: mean map and most typical members per cluster", fontsize=9)
    save_figure(fig, path)


# --------------------------------------------------------------------------- the job
def spray_class(
    net: torch.nn.Module,
    ds,
    label: int,
    explainer,
    *,
    device: torch.device,
    preds: torch.Tensor,
    out: Path,
    **settings: Any,
) -> dict[str, Any]:
    """Explain, cluster and write the results of one class; return its summary entry."""
    name = ds.classes[label]
    idx = (ds.y == label).nonzero().flatten()
    x = ds.x[idx]
    step = max(1, int(explainer.batch_size))
    maps = []  # channel-summed on the way, so only [N, H, W] maps are kept (on the CPU)
    for s in range(0, len(idx), step):
        a = explainer(net, x[s : s + step].to(device), ds.y[idx[s : s + step]].to(device)).detach()
        maps.append((a.sum(1) if a.dim() == 4 else a).cpu())
    maps = torch.cat(maps)
    correct = (preds[idx] == label).numpy()
    masks = class_masks(ds, idx)
    res = spray(maps, masks=masks, correct=correct, **settings)
    ids = [ds.ids[i] for i in idx.tolist()]
    from xaiscope.analyses.spray import shares as per_image_shares

    _, sh = per_image_shares(maps, masks)
    import pandas as pd

    table = pd.DataFrame(
        {
            "image_id": ids,
            "label": name,
            "prediction": [ds.classes[p] if 0 <= p < len(ds.classes) else str(p) for p in preds[idx].tolist()],
            "correct": correct.astype(bool),
            "cluster": res.labels,
            "x": res.embedding[:, 0] if res.embedding is not None else np.nan,
            "y": res.embedding[:, 1] if res.embedding is not None else np.nan,
            **{f"share_{k}": v for k, v in sh.items()},
        }
    )
    stem = safe_name(name)
    write_parquet(out / f"spray_{stem}.parquet", table)
    share_cols = [f"share_{k}" for k in sh]
    rows = [
        {
            "cluster": c.index,
            "size": c.size,
            "accuracy": c.accuracy,
            **{f"share_{k}": v for k, v in c.shares.items()},
            "flag": c.flag,
            "prototypes": ";".join(ids[i] for i in c.prototypes),
        }
        for c in res.clusters
    ]
    write_csv(out / f"clusters_{stem}.csv", rows, ["cluster", "size", "accuracy", *share_cols, "flag", "prototypes"])
    _eigen_figure(res, name, out / f"eigenvalues_{stem}.png")
    if res.embedding is not None:
        _embedding_figure(res, correct, name, out / f"embedding_{stem}.png")
    _cards_figure(res, x, maps, ids, name, out / f"clusters_{stem}.png")
    return {
        "images": int(idx.numel()),
        "accuracy": float(correct.mean()),
        "k": res.k,
        "k_proposed": res.k_proposed,
        "eigenvalues": res.eigenvalues.tolist(),
        "flagged": res.flagged,
        "clusters": [
            {
                "cluster": c.index,
                "size": c.size,
                "accuracy": c.accuracy,
                "shares": c.shares,
                "flag": c.flag,
                "prototypes": [ids[i] for i in c.prototypes],
            }
            for c in res.clusters
        ],
        "settings": res.settings,
    }


def run_spray(
    *,
    model: str,
    data: Path,
    out: Path,
    klass: str | int | list | None = None,
    method: str | None = None,
    weights: str | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    k: int | None = None,
    grid: int = 32,
    signed: bool = False,
    n_neighbors: int | None = None,
    embedding: str = "tsne",
    confounders: tuple[str, ...] = ("confounder",),
    seed: int = 0,
    batch_size: int | str = 64,
    device: str = "cpu",
    trust_model: bool = False,
    init_seed: int | None = None,
) -> dict[str, Any]:
    """Run SpRAy on one class or every class and write the results (module docstring); return the summary."""
    params = params or {}
    if method is not None:
        unknown = [m for m in params if m != method]
        if unknown:
            raise ConfigError(f"--param names method {unknown[0]!r}, but --method is {method!r}.")
    if k is not None and k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}.")
    if grid < 1:
        raise ConfigError(f"--grid must be at least 1, got {grid}.")
    if method is not None:
        build_explainers([method], params, batch_size)  # a bad name or setting fails before the data is read
    net, ds, dev = open_inputs(
        model, data, weights=weights, device=device, trust_model=trust_model, seed=seed, init_seed=init_seed
    )
    if klass is None:
        labels = list(range(len(ds.classes)))
    else:
        asked = klass if isinstance(klass, (list, tuple)) else [klass]
        labels = list(dict.fromkeys(resolve_class(c, list(ds.classes)) for c in asked))
        for label in labels:
            n = int((ds.y == label).sum())
            if n < MIN_IMAGES:
                raise DataError(
                    f"Class {ds.classes[label]!r} has {n} images in {ds.source}; SpRAy needs at least {MIN_IMAGES}."
                )
    method = method or default_method(net)
    if params and method not in params:
        raise ConfigError(f"--param names method {next(iter(params))!r}, but the method is {method!r}.")
    (explainer,) = build_explainers([method], params, batch_size)
    batch_size, (explainer,) = settle_batch_size(batch_size, net, ds, dev, [explainer], params)
    ensure_dir(out)
    with models.count_passes(net) as count:
        preds = models.forward(net, ds.x.to(dev), batch_size=batch_size).argmax(dim=1).cpu()
        per_class: dict[str, Any] = {}
        for label in labels:
            n = int((ds.y == label).sum())
            if n < MIN_IMAGES:
                per_class[ds.classes[label]] = {"images": n, "skipped": f"fewer than {MIN_IMAGES} images"}
                continue
            per_class[ds.classes[label]] = spray_class(
                net,
                ds,
                label,
                explainer,
                device=dev,
                preds=preds,
                out=out,
                k=k,
                grid=grid,
                signed=signed,
                n_neighbors=n_neighbors,
                embedding=embedding,
                confounders=confounders,
                seed=seed,
            )
    summary = {
        "settings": {
            "model": model,
            "data": str(data),
            "method": method,
            "hparams": explainer.hparams,
            "k": k,
            "grid": grid,
            "signed": signed,
            "n_neighbors": n_neighbors,
            "embedding": embedding,
            "confounders": list(confounders),
            "seed": seed,
            "batch_size": batch_size,
        },
        "classes": list(ds.classes),
        "masks": (["mask"] if ds.masks is not None else []) + list(ds.extra_masks),
        "passes": count.rows,
        "per_class": per_class,
    }
    write_json(out / "summary.json", summary)
    return summary
