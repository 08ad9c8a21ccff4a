"""The ``xaiscope sis`` job: sufficient input subsets of one class decision, clustered.

For each model (``--model`` may be repeated) and each image on which the model's softmax
probability of class ``K`` reaches ``tau`` (the first ``max_images`` of them, in data
order), the disjoint SIS collection is computed with the dataset mean per channel as the
mask value; then all SIS of all models are clustered together (energy distance, DBSCAN).

Writes into ``out``:

- ``sis/<image id>.npz`` (``sis/<model>/<image id>.npz`` with several models): ``image``
  ``[C,H,W]``, ``masks [n,H,W]`` bool, ``sis_images [n,C,H,W]``, ``values [n]``,
  ``sizes [n]`` (units), ``unit_labels [H,W]``, the first backward selection's
  ``order`` and ``curve``, ``tau``, ``target``, ``label``, ``probability``;
  ``sis/<image id>.png``: the image and each SIS;
- ``sis.csv``: one row per SIS (model, image, label, probability, index, units,
  pixels, value, cluster);
- ``clusters.json`` / ``clusters.csv``: DBSCAN clusters with members, sizes, medoid and
  per-model counts and shares; ``cluster_means.npz`` and ``cluster_means.png``;
- ``summary.json``: settings, counts, SIS sizes, passes and seconds per image.

Passes per image (exact backward selection, ``U`` units; measured and written to
``summary.json``): ``2 + sum over its SIS of (U_i (U_i + 1) / 2 + 2)`` where ``U_i`` is the number of units left when SIS ``i``
is searched; plus ``N`` passes to find the images where the decision holds.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from xaiscope import models
from xaiscope.analyses.sis import check_probability_tau, class_score, cluster, make_units, parse_unit, sis_collection
from xaiscope.analyses.sis.cluster import check_eps
from xaiscope.analyses.sis.collection import METHODS
from xaiscope.data.summaries import Moments
from xaiscope.errors import ConfigError
from xaiscope.io import ensure_dir, safe_name, write_csv, write_json, write_npz
from xaiscope.run.inputs import open_model_for, open_source

SIS_COLUMNS = ["model", "image_id", "label", "probability", "sis_index", "n_units", "n_pixels", "value", "cluster"]


def _source_names(specs: list[str]) -> list[str]:
    names = [safe_name(Path(s).stem if Path(s).suffix else s.replace(":", "_")) for s in specs]
    if len(set(names)) < len(names):
        names = [f"{i}_{n}" for i, n in enumerate(names)]
    return names


def _image_figure(image: torch.Tensor, sis_list, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    from xaiscope.plotting import display_image, overlay, save_figure

    n = len(sis_list)
    fig, axes = plt.subplots(1, n + 1, figsize=(2.0 * (n + 1), 2.3), squeeze=False)
    img = display_image(image)
    axes[0, 0].imshow(img, cmap="gray" if img.ndim == 2 else None)
    axes[0, 0].set_axis_off()
    axes[0, 0].set_title(title, fontsize=8)
    for i, s in enumerate(sis_list):
        overlay(
            axes[0, i + 1],
            image,
            s.mask.float().cpu(),
            alpha=0.55,
            title=f"SIS {i + 1}: {s.size} units, f={s.value:.2f}",
        )
    save_figure(fig, path)


def _cluster_figure(res, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    from xaiscope.plotting import display_image, save_figure

    k = len(res.clusters)
    if k == 0:
        fig, ax = plt.subplots(figsize=(4, 1.5))
        ax.text(
            0.5,
            0.5,
            f"No cluster: all {len(res.labels)} SIS are noise\n(eps={res.eps:g}, min_samples={res.min_samples})",
            ha="center",
            va="center",
            fontsize=9,
        )
        ax.set_axis_off()
        save_figure(fig, path)
        return
    fig, axes = plt.subplots(2, k, figsize=(2.1 * k, 4.4), squeeze=False)
    for j, c in enumerate(res.clusters):
        img = display_image(c.mean_image)
        axes[0, j].imshow(img, cmap="gray" if img.ndim == 2 else None)
        shares = ", ".join(f"{s}: {v:.0%}" for s, v in c.shares.items()) if len(c.shares) > 1 else ""
        axes[0, j].set_title(f"cluster {c.label} (n={c.size})" + (f"\n{shares}" if shares else ""), fontsize=7)
        axes[1, j].imshow(c.mean_mask.numpy(), cmap="magma", vmin=0, vmax=1)
        axes[1, j].set_title("pixel frequency", fontsize=7)
        for ax in axes[:, j]:
            ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def run_sis(
    *,
    model: list[str] | str,
    data: Path,
    target: int,
    tau: float = 0.7,
    unit: str = "pixel",
    out: Path,
    max_images: int = 50,
    batch_size: int = 256,
    eps: float | str = "auto",
    min_samples: int = 3,
    method: str = "backselect",
    k: int = 1,
    weights: list[str] | None = None,
    device: str = "cpu",
    trust_model: bool = False,
    seed: int = 0,
    init_seed: int | None = None,
    images_per_step: int = 256,
    console=None,
) -> dict:
    """Compute, write and cluster the SIS of the decision "class ``target`` with probability >= ``tau``".

    The images are read ``images_per_step`` at a time to find those where the decision holds
    (and the per-channel mean that fills removed pixels); only the (at most ``max_images``)
    images explained are held in memory.

    Random initial weights (zoo, torchvision or factory specs) are drawn under ``init_seed``,
    by default :func:`~xaiscope.run.inputs.model_seed` of ``seed`` and each spec."""
    from rich.progress import Progress

    specs = [model] if isinstance(model, str) else list(model)
    if not specs:
        raise ConfigError("Give at least one --model.")
    weights = list(weights or [])
    if weights and len(weights) != len(specs):
        raise ConfigError(f"{len(weights)} --weights were given for {len(specs)} --model; give one per model or none.")
    tau = check_probability_tau(tau)
    parse_unit(unit)
    if method not in METHODS:
        raise ConfigError(f"Unknown --method {method!r}; choose one of {', '.join(METHODS)}.")
    for name, v in (
        ("--max-images", max_images),
        ("--batch-size", batch_size),
        ("--min-samples", min_samples),
        ("--k", k),
    ):
        if v < 1:
            raise ConfigError(f"{name} must be at least 1, got {v}.")
    eps = check_eps(eps, "--eps")
    if target < 0:
        raise ConfigError(f"--class must be a class index >= 0, got {target}.")
    sources = _source_names(specs)
    ensure_dir(out)
    all_sis, rows, per_model = [], [], []
    start_all = time.perf_counter()
    for spec, w, source in zip(specs, weights or [None] * len(specs), sources):
        src = open_source(data, model_spec=spec)
        net, dev = open_model_for(
            spec, src, weights=w, device=device, trust_model=trust_model, seed=seed, init_seed=init_seed
        )
        n_out = models.forward(net, next(src.batches(1)).x.to(dev)).shape[1]
        if target >= n_out:
            raise ConfigError(
                f"--class {target} is out of range: the model {spec} has {n_out} outputs (classes 0..{n_out - 1})."
            )
        make_units(unit, *src.shape[1:])
        f = class_score(net, target, batch_size=batch_size)
        # one pass over the images: the class probabilities and the per-channel mean (the fill value)
        parts, mom = [], Moments(src.shape[0])
        with torch.no_grad():
            for b in src.batches(images_per_step):
                parts.append(f(b.x.to(dev)).cpu())
                mom.update(b.x.numpy())
        all_probs = probs = torch.cat(parts)
        mv = torch.tensor(mom.mean, dtype=torch.float32).view(-1, 1, 1).to(dev)
        chosen = (probs >= tau).nonzero().flatten()[:max_images].tolist()
        ds = src.take(chosen) if chosen else None  # only the images explained are held
        probs = probs[chosen]
        sis_dir = out / "sis" if len(specs) == 1 else out / "sis" / source
        units = make_units(unit, *src.shape[1:])
        seconds, passes, n_sis = [], [], []
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"SIS {source}", total=len(chosen))
            for i in range(len(chosen)):
                t0 = time.perf_counter()
                x = ds.x[i].to(dev)
                with models.count_passes(net) as count:
                    col = sis_collection(f, x, tau, mv, unit=unit, batch_size=batch_size, method=method, k=k)
                seconds.append(time.perf_counter() - t0)
                passes.append(count.rows)
                n_sis.append(len(col))
                image_id = ds.ids[i]
                for j, s in enumerate(col):
                    s.source, s.image_id = source, image_id
                    all_sis.append(s)
                    rows.append(
                        {
                            "model": source,
                            "image_id": image_id,
                            "label": int(ds.y[i]),
                            "probability": float(probs[i]),
                            "sis_index": j,
                            "n_units": s.size,
                            "n_pixels": s.n_pixels,
                            "value": s.value,
                        }
                    )
                bs = col[0].backselect if col else None
                write_npz(
                    sis_dir / f"{safe_name(image_id)}.npz",
                    image=x.cpu().numpy(),
                    masks=np.stack([s.mask.cpu().numpy() for s in col]) if col else np.zeros((0, *src.shape[1:]), bool),
                    sis_images=np.stack([s.image.cpu().numpy() for s in col])
                    if col
                    else np.zeros((0, *src.shape), np.float32),
                    values=np.array([s.value for s in col]),
                    sizes=np.array([s.size for s in col]),
                    unit_labels=units.labels.numpy(),
                    order=bs.order.cpu().numpy() if bs else np.zeros(0, int),
                    curve=bs.curve.cpu().numpy() if bs else np.zeros(0),
                    tau=tau,
                    target=target,
                    label=int(ds.y[i]),
                    probability=float(probs[i]),
                    unit=unit,
                    id=image_id,
                )
                _image_figure(
                    x.cpu(), col, f"{image_id} p={float(probs[i]):.2f}", sis_dir / f"{safe_name(image_id)}.png"
                )
                progress.advance(task)
        sizes = [r["n_units"] for r in rows if r["model"] == source]
        per_model.append(
            {
                "model": spec,
                "source": source,
                "n_images": len(all_probs),
                "n_decision": int((all_probs >= tau).sum()),
                "n_explained": len(chosen),
                "n_sis": len(sizes),
                "sis_per_image_mean": float(np.mean(n_sis)) if n_sis else None,
                "sis_size_units": _describe(sizes),
                "seconds_per_image": float(np.mean(seconds)) if seconds else None,
                "passes_per_image_mean": float(np.mean(passes)) if passes else None,
            }
        )
    result = None
    if all_sis:
        result = cluster(all_sis, eps=eps, min_samples=min_samples, sources=[s.source for s in all_sis])
        for r, lab in zip(rows, result.labels):
            r["cluster"] = lab
        summary = result.summary()
        summary["members"] = [
            {"model": s.source, "image_id": s.image_id, "sis_index": r["sis_index"]} for s, r in zip(all_sis, rows)
        ]
        write_json(out / "clusters.json", summary)
        write_csv(
            out / "clusters.csv",
            [
                {
                    "cluster": c.label,
                    "size": c.size,
                    "medoid_image": all_sis[c.medoid].image_id,
                    "mean_sis_pixels": float(np.mean([all_sis[m].n_pixels for m in c.members])),
                    **{f"share_{s}": v for s, v in c.shares.items()},
                    **{f"fraction_of_{s}": v for s, v in c.source_fraction.items()},
                }
                for c in result.clusters
            ],
            ["cluster", "size", "medoid_image", "mean_sis_pixels"],
        )
        write_npz(
            out / "cluster_means.npz",
            labels=np.array([c.label for c in result.clusters], dtype=np.int64),
            mean_images=np.stack([c.mean_image.numpy() for c in result.clusters])
            if result.clusters
            else np.zeros((0, *src.shape), np.float32),
            mean_masks=np.stack([c.mean_mask.numpy() for c in result.clusters])
            if result.clusters
            else np.zeros((0, *src.shape[1:])),
        )
        _cluster_figure(result, out / "cluster_means.png", f"SIS clusters for class {target} (tau={tau:g})")
    write_csv(out / "sis.csv", rows, SIS_COLUMNS)
    summary = {
        "target": target,
        "tau": tau,
        "unit": unit,
        "method": method,
        "k": k,
        "batch_size": batch_size,
        "eps": eps if result is None else result.eps,
        "eps_setting": eps,
        "min_samples": min_samples,
        "distance": "energy distance D = sqrt(D^2) between SIS pixel sets",
        "mask_value": "dataset mean per channel",
        "models": per_model,
        "n_sis": len(all_sis),
        "n_clusters": None if result is None else len(result.clusters),
        "n_noise": None if result is None else len(result.noise),
        "seconds": time.perf_counter() - start_all,
    }
    write_json(out / "summary.json", summary)
    return summary


def _describe(values: list[int]) -> dict | None:
    if not values:
        return None
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "min": int(a.min()), "max": int(a.max())}
