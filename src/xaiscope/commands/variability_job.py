"""The ``xaiscope variability`` job: statistics over a model collection per image and method.

Writes into ``out``:

- ``variability.parquet``: one row per (method, image): ``method, id, label,
  correct_mean, correct_sd, prob_mean, prob_sd, attention_sd, attention_sd_fg,
  spearman_mean`` (population SDs, ddof = 0);
- ``maps/<method>/{most,least}_stable_<k>_<id>.png``: image, mean map and SD map of the
  ``top`` images with the smallest / largest aggregated attention SD;
- ``maps/<method>.npz``: ``mean_map``, ``sd_map`` ``[N,H,W]``, ``ids``, ``pairwise`` ``[M,M]``;
- ``fits.json``: per method, aggregated SD vs mean accuracy (quadratic) and vs accuracy
  SD (linear): coefficients (ascending), R^2 and bootstrap CIs;
- ``plots/<method>.png``: both scatter plots with the fitted curves;
- ``summary.json``: models, their accuracies, settings and pass counts.

Each model is loaded once and, for every method, its maps are streamed into that
method's running sums (see :mod:`xaiscope.analyses.variability`).
Passes: ``M * sum_methods (1 + E_method) * N``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiscope import explain
from xaiscope.analyses.fits import linear, quadratic
from xaiscope.analyses.variability import VariabilityAccumulator
from xaiscope.commands.collection_job import iter_models, model_files
from xaiscope.errors import ConfigError, DataError
from xaiscope.io import ensure_dir, safe_name, write_json, write_npz, write_parquet
from xaiscope.run.inputs import (
    DataOptions,
    build_explainers,
    check_model_fits,
    open_source,
    resolve_device,
    settle_batch_size,
)


def _fits(res, n_boot: int, seed: int) -> dict[str, Any]:
    x_acc, x_sd, y = res.correct_mean.numpy(), res.correct_sd.numpy(), res.attention_sd.numpy()
    out = {}
    for key, fn, x, xname in (
        ("quadratic_vs_mean_accuracy", quadratic, x_acc, "correct_mean"),
        ("linear_vs_accuracy_sd", linear, x_sd, "correct_sd"),
    ):
        try:
            out[key] = {"x": xname, "y": "attention_sd", **fn(x, y, n_boot=n_boot, seed=seed).to_dict()}
        except DataError as e:
            out[key] = {"x": xname, "y": "attention_sd", "error": str(e)}
    return out


def _plot_fits(res, fits: dict, method: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    from xaiscope.analyses.fits import Fit
    from xaiscope.plotting import save_figure

    y = res.attention_sd.numpy()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
    for ax, key, x, label in (
        (axes[0], "quadratic_vs_mean_accuracy", res.correct_mean.numpy(), "mean accuracy over models"),
        (axes[1], "linear_vs_accuracy_sd", res.correct_sd.numpy(), "accuracy SD over models"),
    ):
        ax.scatter(x, y, s=8, alpha=0.6)
        f = fits[key]
        if "coefficients" in f:
            fit = Fit(**{k: v for k, v in f.items() if k not in ("x", "y")})
            xs = np.linspace(float(np.nanmin(x)), float(np.nanmax(x)), 100)
            ax.plot(xs, fit.predict(xs), color="C3", label=f"fit, R² = {fit.r2:.3f}")
            ax.legend(fontsize=7)
        ax.set_xlabel(label, fontsize=8)
    axes[0].set_ylabel("aggregated attention SD", fontsize=8)
    fig.suptitle(f"{method}: explanation variability vs classification reliability", fontsize=9)
    save_figure(fig, path)


def _stable_images(ds, res, method: str, out: Path, top: int) -> list[Path]:
    import matplotlib.pyplot as plt

    from xaiscope.plotting import display_image, overlay, save_figure

    order = torch.argsort(res.attention_sd, stable=True)
    picks = [("most_stable", k, i) for k, i in enumerate(order[:top].tolist())]
    picks += [("least_stable", k, i) for k, i in enumerate(order.flip(0)[:top].tolist())]
    written = []
    shown = ds.take(sorted({i for _, _, i in picks}))  # only the images shown are read
    at = {p: k for k, p in enumerate(sorted({i for _, _, i in picks}))}
    for kind, rank, i in picks:
        x = shown.x[at[i]]
        path = out / "maps" / safe_name(method) / f"{kind}_{rank}_{safe_name(ds.ids[i])}.png"
        if x.dim() == 4:  # a volume: map and SD in the four views
            from xaiscope.plotting import save_volume_map_and_sd

            title = (
                f"{ds.ids[i]} ({ds.classes[int(ds.labels[i])]}, accuracy {float(res.correct_mean[i]):.2f}): mean map"
            )
            sd_title = f"SD map (mean {float(res.attention_sd[i]):.2e})"
            written.append(save_volume_map_and_sd(x, res.mean_map[i], res.sd_map[i], path, title, sd_title))
            continue
        fig, axes = plt.subplots(1, 3, figsize=(7.2, 2.6))
        img = display_image(x)
        axes[0].imshow(img, cmap="gray" if img.ndim == 2 else None)
        axes[0].set_axis_off()
        axes[0].set_title(
            f"{ds.ids[i]} ({ds.classes[int(ds.labels[i])]}, accuracy {float(res.correct_mean[i]):.2f})", fontsize=8
        )
        overlay(axes[1], x, res.mean_map[i], title="mean map")
        im = axes[2].imshow(res.sd_map[i].numpy(), cmap="viridis")
        axes[2].set_axis_off()
        axes[2].set_title(f"SD map (mean {float(res.attention_sd[i]):.2e})", fontsize=8)
        fig.colorbar(im, ax=axes[2], fraction=0.046)
        written.append(save_figure(fig, path))
    return written


def run_variability(
    *,
    collection: Path,
    data: Path,
    methods: list[str],
    out: Path,
    params: dict[str, dict[str, Any]] | None = None,
    normalise: str = "sum_to_one",
    signed: bool = False,
    foreground: str = "none",
    pair_images: int | None = 64,
    n_boot: int = 1000,
    seed: int = 0,
    top: int = 3,
    batch_size: int | str = 64,
    device: str = "cpu",
    trust_model: bool = False,
    images_per_step: int = 256,
    options: DataOptions = DataOptions(),
) -> dict[str, Any]:
    """Run the variability analysis for every method over the collection (module docstring);
    the images are read a step of ``images_per_step`` at a time."""
    import pandas as pd

    params = params or {}
    methods = explain.expand(methods)
    unknown = [m for m in params if m not in methods]
    if unknown:
        raise ConfigError(f"--param names method {unknown[0]!r}, which is not in --methods.")
    if not methods:
        raise ConfigError("--methods is empty; name at least one attribution method.")
    if foreground not in ("none", "masks"):
        raise ConfigError(f"--foreground must be 'none' or 'masks', got {foreground!r}.")
    explainers = build_explainers(methods, params, batch_size)
    files = model_files(collection)
    dev = resolve_device(device)
    ds = open_source(data, model_spec=str(files[0]), options=options)
    fg = None
    if foreground == "masks":
        if not ds.has_masks:
            raise DataError(f"--foreground masks needs expert masks, but {data} has none.")
        fg = "masks"
    ensure_dir(out)
    n_cls = max(2, ds.num_classes)
    if batch_size == "auto":  # timed on the collection's first model
        first = next(iter_models(files[:1], dev, trust_model=trust_model, num_classes=n_cls, in_channels=ds.shape[0]))
        check_model_fits(first, ds, dev)
        batch_size, explainers = settle_batch_size(batch_size, first, ds, dev, explainers, params)
    accs = {
        ex.name: VariabilityAccumulator(
            ds,
            ex,
            normalise=normalise,
            signed=signed,
            foreground=fg,
            batch_size=batch_size,
            pair_images=pair_images,
            step_images=images_per_step,
        )
        for ex in explainers
    }
    for model in iter_models(files, dev, trust_model=trust_model, num_classes=n_cls, in_channels=ds.shape[0]):
        check_model_fits(model, ds, dev)
        for acc in accs.values():
            acc.update(model)
    tables, fits, passes = [], {}, {}
    for name, acc in accs.items():
        res = acc.result()
        tables.append(pd.DataFrame(res.table()).assign(method=name))
        fits[name] = _fits(res, n_boot, seed)
        passes[name] = res.passes
        path = out / "maps" / f"{safe_name(name)}.npz"
        write_npz(
            path,
            mean_map=res.mean_map.numpy(),
            sd_map=res.sd_map.numpy(),
            ids=np.array(res.ids),
            pairwise=res.pairwise.numpy(),
            model_accuracy=res.model_accuracy.numpy(),
        )
        _stable_images(ds, res, name, out, min(top, len(ds)))
        _plot_fits(res, fits[name], name, out / "plots" / f"{safe_name(name)}.png")
        model_acc = res.model_accuracy.tolist()
    table = pd.concat(tables, ignore_index=True)
    table = table[["method", *[c for c in table.columns if c != "method"]]]
    write_parquet(out / "variability.parquet", table)
    write_json(out / "fits.json", fits)
    summary = {
        "collection": str(collection),
        "models": [f.name for f in files],
        "model_accuracy": model_acc,
        "data": str(data),
        "n_images": len(ds),
        "methods": {ex.name: ex.hparams for ex in explainers},
        "normalise": normalise,
        "signed": signed,
        "foreground": foreground,
        "pair_images": pair_images,
        "n_boot": n_boot,
        "seed": seed,
        "ddof": 0,
        "passes": passes,
    }
    write_json(out / "summary.json", summary)
    return summary
