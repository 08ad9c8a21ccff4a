"""The ``xaiscope global`` job: label-wise global maps and PEPPR curves, written atomically.

Writes into ``out``:

- ``global_maps.npz``: ``label_maps [L,H,W]``, ``label_sd``, ``overall [H,W]``, ``overall_sd``,
  ``counts``, ``classes``, ``method``, ``settings`` (JSON);
- ``maps/<class>.png`` (global map over the mean image of the label, and its SD) and
  ``maps/overall.png``;
- ``peppr_curves.csv``: one row per (label, order, curve, metric, fraction);
- ``peppr_<class>.png``: erasing and restoration curves (AUROC, accuracy) of the map,
  the reversed order and the other labels' maps against the random band (mean +- SD);
- ``summary.csv`` / ``summary.json``: areas per label and order, and the summary score.

Passes: ``E N`` for the explainer, ``N`` for the predictions, and per label with images
``2 N + (2 + R + L - 1) * 2 * T_inner * N`` for PEPPR (``R`` random orders, ``T_inner``
fractions strictly between 0 and 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiscope import explain, models
from xaiscope.analyses.global_maps import GlobalMapsAccumulator
from xaiscope.analyses.peppr import default_fractions, peppr
from xaiscope.analyses.units import parse_unit
from xaiscope.errors import ConfigError
from xaiscope.io import ensure_dir, safe_name, write_bytes, write_csv, write_json, write_npz
from xaiscope.run.inputs import DataOptions, build_explainers, open_model_for, open_source, settle_batch_size
from xaiscope.run.steps import to_device


def _map_figure(
    mean_image: torch.Tensor, g: torch.Tensor, sd: torch.Tensor, title: str, path: Path, signed: bool
) -> None:
    import matplotlib.pyplot as plt

    from xaiscope.plotting import overlay, save_figure

    if g.dim() == 3:
        from xaiscope.plotting import save_volume_map_and_sd

        save_volume_map_and_sd(mean_image, g, sd, path, f"{title}: global map", "per-voxel SD over images", signed)
        return
    fig, axes = plt.subplots(1, 2, figsize=(5.0, 2.6))
    overlay(axes[0], mean_image, g, signed=signed, title=f"{title}: global map")
    im = axes[1].imshow(sd.numpy(), cmap="viridis")
    axes[1].set_axis_off()
    axes[1].set_title("per-pixel SD over images", fontsize=8)
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    save_figure(fig, path)


def _peppr_figure(result, class_names: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    from xaiscope.plotting import save_figure

    fr = result.fractions.numpy()
    fig, axes = plt.subplots(2, 2, figsize=(8, 6), sharex=True)
    for row, metric in enumerate(("auroc", "accuracy")):
        for col, curve in enumerate(("erasing", "restoration")):
            ax = axes[row, col]
            mean = result.random["curves"]["mean"][curve][metric].numpy()
            sd = result.random["curves"]["sd"][curve][metric].numpy()
            if np.isfinite(mean).all():
                ax.fill_between(fr, mean - sd, mean + sd, color="0.8", label="random (mean ± SD)")
                ax.plot(fr, mean, color="0.5", lw=1)
            ax.plot(
                fr,
                result.curves["map"][curve][metric].numpy(),
                color="C3",
                lw=2,
                label=f"global map of {class_names[result.label]}",
            )
            ax.plot(fr, result.curves["reversed"][curve][metric].numpy(), color="C0", ls="--", label="reversed order")
            for i, nm in enumerate(o for o in result.orders if o.startswith("other:")):
                other = class_names[int(nm.split(":", 1)[1])]
                ax.plot(
                    fr, result.curves[nm][curve][metric].numpy(), color=f"C{4 + i}", ls=":", label=f"map of {other}"
                )
            ax.set_title(f"progressive {curve}", fontsize=9)
            ax.set_ylabel(
                f"{metric} ({class_names[result.label]} vs rest)" if metric == "auroc" else "accuracy", fontsize=8
            )
            ax.set_ylim(-0.02, 1.02)
            if row == 1:
                ax.set_xlabel("fraction of units " + ("erased" if curve == "erasing" else "restored"), fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"PEPPR for {class_names[result.label]}: score (AUROC) = {result.score['auroc']:.3f}", fontsize=10)
    save_figure(fig, path)


def run_global(
    *,
    model: str,
    data: Path,
    method: str,
    out: Path,
    weights: str | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    by: str = "true",
    normalise: str = "sum_to_one",
    signed: bool = False,
    fill: str = "black",
    unit: str = "pixel",
    step: float = 0.05,
    random_orders: int = 5,
    seed: int = 0,
    blur_sigma: float = 4.0,
    batch_size: int | str = 64,
    device: str = "cpu",
    trust_model: bool = False,
    peppr_enabled: bool = True,
    init_seed: int | None = None,
    images_per_step: int = 256,
    options: DataOptions = DataOptions(),
) -> dict[str, Any]:
    """Compute and write global maps and PEPPR results (module docstring); return the summary dict.

    ``data`` is a path or any source (:func:`xaiscope.data.open_source`); the images are read
    ``images_per_step`` at a time (global maps accumulate per label; PEPPR reads the images
    again for each of its passes), so they need not fit in memory.

    ``seed`` seeds the random orders and, unless ``init_seed`` is given, the random initial
    weights of a zoo, torchvision or factory spec (:func:`~xaiscope.run.inputs.model_seed`).
    """
    params = params or {}
    unknown = [m for m in params if m != method]
    if unknown:
        raise ConfigError(f"--param names method {unknown[0]!r}, but --method is {method!r}.")
    if by not in ("true", "pred"):
        raise ConfigError(f"--by must be 'true' or 'pred', got {by!r}.")
    fractions = default_fractions(step)
    parse_unit(unit)
    (explainer,) = build_explainers([method], params, batch_size)
    src = open_source(data, model_spec=model, options=options)
    net, dev = open_model_for(
        model, src, weights=weights, device=device, trust_model=trust_model, seed=seed, init_seed=init_seed
    )
    batch_size, (explainer,) = settle_batch_size(batch_size, net, src, dev, [explainer], params)
    ensure_dir(out)
    n_labels = src.num_classes
    acc = GlobalMapsAccumulator(n_labels, tuple(src.shape[1:]), normalise=normalise, signed=signed, by=by)
    image_sums = torch.zeros(n_labels, *src.shape, dtype=torch.float64)  # per group, for the figures
    with models.count_passes(net) as count:
        for b in src.batches(images_per_step):
            x, y = to_device(b.x, dev), to_device(b.y, dev)
            preds = models.forward(net, x, batch_size=batch_size).argmax(dim=1)
            groups = y if by == "true" else preds
            acc.update(explain.pool(explainer(net, x, groups), "sum").cpu(), groups.cpu())
            image_sums.index_add_(0, groups.cpu(), b.x.double())
    explain_passes = count.rows
    g = acc.result()
    classes = list(src.classes)
    settings = {
        "model": model,
        "data": str(data),
        "method": method,
        "hparams": explainer.hparams,
        "by": by,
        "normalise": normalise,
        "signed": signed,
        "fill": fill,
        "unit": unit,
        "step": step,
        "random_orders": random_orders,
        "seed": seed,
        "blur_sigma": blur_sigma,
        "batch_size": batch_size,
    }
    write_npz(
        out / "global_maps.npz",
        label_maps=g.label_maps.numpy(),
        label_sd=g.label_sd.numpy(),
        overall=g.overall.numpy(),
        overall_sd=g.overall_sd.numpy(),
        counts=g.counts.numpy(),
        classes=np.array(classes),
        method=np.array(method),
        settings=np.array(repr(settings)),
    )
    for lab, name in enumerate(classes):
        if int(g.counts[lab]) == 0:
            continue
        mean_img = (image_sums[lab] / g.counts[lab]).float()
        _map_figure(mean_img, g.label_maps[lab], g.label_sd[lab], name, out / "maps" / f"{safe_name(name)}.png", signed)
    overall_img = (image_sums.sum(0) / g.counts.sum()).float()
    _map_figure(overall_img, g.overall, g.overall_sd, "all labels", out / "maps" / "overall.png", signed)
    affine = src.affine(0) if len(src.shape) == 4 else None
    if affine is not None:  # aligned volumes (e.g. MNI-registered): the maps open over the template
        from xaiscope.data.volumes import write_nifti

        for name, gmap in [
            *((c, g.label_maps[k]) for k, c in enumerate(classes) if int(g.counts[k])),
            ("overall", g.overall),
        ]:
            path = out / "maps" / f"{safe_name(name)}.nii.gz"
            write_bytes(path, write_nifti(path, gmap.numpy(), affine))

    curves: list[dict] = []
    table: list[dict] = []
    per_label: dict[str, Any] = {}
    peppr_passes = 0
    if peppr_enabled:
        present = [lab for lab in range(len(classes)) if int(g.counts[lab]) > 0]
        labels = src.labels[[p for p in range(len(src)) if src.ids[p] not in src.skipped]]
        for lab in range(len(classes)):
            name = classes[lab]
            n_pos = int((labels == lab).sum())
            if int(g.counts[lab]) == 0 or n_pos in (0, len(labels)):
                per_label[name] = {"skipped": "no images of this label or of the other labels"}
                continue
            others = {o: g.label_maps[o] for o in present if o != lab}
            r = peppr(
                net,
                src,
                g.label_maps[lab],
                lab,
                fractions=fractions,
                fill=fill,
                unit=unit,
                random_orders=random_orders,
                seed=seed,
                other_maps=others,
                batch_size=batch_size,
                blur_sigma=blur_sigma,
                step_images=images_per_step,
            )
            peppr_passes += r.passes
            curves += [{**row, "class": name} for row in r.table()]
            table += [{**row, "class": name} for row in r.summary()]
            per_label[name] = {
                "score_auroc": r.score["auroc"],
                "score_accuracy": r.score["accuracy"],
                "areas": r.areas,
                "random_areas": r.random["areas"],
                "passes": r.passes,
            }
            _peppr_figure(r, classes, out / f"peppr_{safe_name(name)}.png")
        write_csv(out / "peppr_curves.csv", curves)
        write_csv(out / "summary.csv", table)
    summary = {
        "settings": settings,
        "classes": classes,
        "counts": g.counts.tolist(),
        "passes": {"explain_and_predict": explain_passes, "peppr": peppr_passes},
        "peppr": per_label,
        "table": table,
    }
    write_json(out / "summary.json", summary)
    return summary
