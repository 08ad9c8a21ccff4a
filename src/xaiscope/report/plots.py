"""Matplotlib figures that the HTML report embeds, returned as PNG bytes.

Every function takes tidy tables or arrays that the report has read from the run
folder and returns the PNG of one figure (Agg backend, no display needed). Text drawn
into a figure goes through :func:`mpl_text` so that a ``$`` in a label or method name is
shown literally instead of being parsed as mathtext.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

from xaiscope.plotting import display_image, plt  # Agg backend is selected there

BASELINE_COLOUR = "#9e9e9e"
METHOD_COLOUR = "#3b6ea8"
CMAP = "inferno"


def mpl_text(s: object) -> str:
    """A string safe to draw with matplotlib (``$`` would start mathtext)."""
    return str(s).replace("$", r"\$")


def png_bytes(fig, dpi: int = 90) -> bytes:
    """Render and close ``fig``; return its PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _tile(img: np.ndarray, size: int) -> np.ndarray:
    """Resize an ``[H, W]`` or ``[H, W, 3]`` tile to ``size`` pixels high (nearest upscaling,
    area-averaging downscaling), keeping the aspect ratio."""
    from skimage.transform import resize

    h, w = img.shape[:2]
    if h == size:
        return img
    if size % h == 0:
        f = size // h
        return np.repeat(np.repeat(img, f, axis=0), f, axis=1)
    shape = (size, max(1, round(w * size / h))) + img.shape[2:]
    return resize(img, shape, order=0 if size > h else 1, anti_aliasing=size < h, preserve_range=True)


def _outline(mask: np.ndarray) -> np.ndarray:
    """The boundary band of a bool mask, two pixels wide (mask minus its double erosion)."""
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, iterations=2, border_value=0)


def example_grid(
    images: np.ndarray | Sequence,
    masks: np.ndarray | None,
    maps: dict[str, np.ndarray],
    row_labels: Sequence[str],
    *,
    title: str = "",
    tile: int = 96,
) -> bytes:
    """Rows = example images, columns = the input (mask outline in cyan) then one map per method.

    ``images``: ``[K, C, H, W]`` tensors or arrays (or lists of ``[C, h, w]`` views of differing
    shapes, e.g. of volumes, rows padded to one width); ``maps``: method -> ``[K, H, W]`` already
    normalised to [0, 1] (drawn on one fixed colour scale, 0 to 1, so the normalisation
    shows); ``masks``: ``[K, H, W]`` bool or None. The panels are composed into one mosaic
    image (``tile`` pixels high each) drawn on a single axis, which keeps this fast for many
    methods.
    """
    import torch
    from matplotlib import colormaps

    cmap = colormaps[CMAP]
    names = list(maps)
    h0 = int(np.asarray(images[0]).shape[-2])
    size = tile if h0 < tile else min(h0, 2 * tile)
    gap = 2
    grid = []
    for r in range(len(row_labels)):
        x = images[r] if isinstance(images[r], torch.Tensor) else torch.as_tensor(np.asarray(images[r]))
        img = display_image(x)
        rgb = _tile(np.stack([img] * 3, axis=-1) if img.ndim == 2 else img, size)
        if masks is not None:
            edge = _outline(_tile(np.asarray(masks[r]).astype(float), size) > 0.5)
            rgb = rgb.copy()
            rgb[edge] = (0.0, 1.0, 1.0)
        grid.append([rgb] + [_tile(cmap(np.clip(np.asarray(maps[n][r], float), 0, 1))[..., :3], size) for n in names])
    cell = max(t.shape[1] for row in grid for t in row)  # views of a volume differ in aspect: one cell width

    def centred(t):
        left = (cell - t.shape[1]) // 2
        return np.pad(t, ((0, 0), (left, cell - t.shape[1] - left), (0, 0)), constant_values=1.0)

    sep = np.ones((size, gap, 3))
    rows = [np.concatenate([t for tl in row for t in (centred(tl), sep)][:-1], axis=1) for row in grid]
    width = rows[0].shape[1]
    hsep = np.ones((gap, width, 3))
    mosaic = np.concatenate([t for row in rows for t in (row, hsep)][:-1], axis=0)
    tw = (width + gap) / (1 + len(names))
    dpi = 100
    fig_w = mosaic.shape[1] / dpi + 1.6
    fig_h = mosaic.shape[0] / dpi + 0.9
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((1.2 / fig_w, 0.1 / fig_h, mosaic.shape[1] / dpi / fig_w, mosaic.shape[0] / dpi / fig_h))
    ax.imshow(mosaic, interpolation="nearest", aspect="equal")
    ax.set_xticks([tw * (i + 0.5) - gap / 2 for i in range(1 + len(names))])
    ax.set_xticklabels(["image"] + [mpl_text(n) for n in names], fontsize=8, rotation=30, ha="left")
    ax.xaxis.tick_top()
    ax.set_yticks([(size + gap) * (i + 0.5) - gap / 2 for i in range(len(row_labels))])
    ax.set_yticklabels([mpl_text(s) for s in row_labels], fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    cax = fig.add_axes(
        ((1.3 + mosaic.shape[1] / dpi) / fig_w, 0.1 / fig_h, 0.12 / fig_w, min(1.5, mosaic.shape[0] / dpi) / fig_h)
    )
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1)), cax=cax)
    cax.tick_params(labelsize=7)
    if title:
        fig.suptitle(mpl_text(title), fontsize=9)
    return png_bytes(fig, dpi=dpi)


def metric_distributions(
    scores: pd.DataFrame,
    metrics: Sequence[str],
    methods: Sequence[str],
    baselines: Sequence[str] = (),
    directions: dict[str, str] | None = None,
) -> bytes:
    """One box plot per metric: the per-image scores of each method (baselines grey).

    ``scores`` has columns method, metric, value (NaN values are left out).
    """
    directions = directions or {}
    n = len(metrics)
    ncol = min(3, n)
    nrow = int(np.ceil(n / ncol))
    height = max(2.4, 0.32 * len(methods) + 0.8)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, height * nrow), squeeze=False)
    for i, metric in enumerate(metrics):
        ax = axes[i // ncol, i % ncol]
        sub = scores[scores["metric"] == metric]
        data = [sub.loc[sub["method"] == m, "value"].dropna().to_numpy(float) for m in methods]
        data = [d if d.size else np.array([np.nan]) for d in data]
        bp = ax.boxplot(data, vert=False, patch_artist=True, widths=0.6, showfliers=True, flierprops={"markersize": 2})
        for patch, m in zip(bp["boxes"], methods):
            patch.set_facecolor(BASELINE_COLOUR if m in baselines else METHOD_COLOUR)
            patch.set_alpha(0.75)
        ax.set_yticks(range(1, len(methods) + 1))
        ax.set_yticklabels([mpl_text(m) for m in methods], fontsize=7)
        ax.invert_yaxis()
        arrow = {"higher": " (higher is better)", "lower": " (lower is better)"}.get(directions.get(metric, ""), "")
        ax.set_title(mpl_text(metric) + arrow, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for j in range(n, nrow * ncol):
        axes[j // ncol, j % ncol].set_visible(False)
    fig.tight_layout()
    return png_bytes(fig)


def mean_curves(curves: pd.DataFrame, metric: str, baselines: Sequence[str] = ()) -> bytes:
    """Mean curve (value against fraction changed) per method, with a band of +- 1 SE.

    ``curves`` has columns method, fraction, value for one model, setting per method and metric.
    """
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    dashes = iter(["--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))] * 100)
    for method, sub in curves.groupby("method", sort=True):
        g = sub.groupby("fraction")["value"]
        mean, se = g.mean(), g.sem().fillna(0.0)
        style = {"color": BASELINE_COLOUR, "linestyle": next(dashes)} if method in baselines else {}
        (line,) = ax.plot(mean.index.to_numpy(float), mean.to_numpy(float), label=mpl_text(method), lw=1.4, **style)
        ax.fill_between(
            mean.index.to_numpy(float),
            (mean - se).to_numpy(float),
            (mean + se).to_numpy(float),
            color=line.get_color(),
            alpha=0.15,
        )
    ax.set_xlabel("fraction of features changed", fontsize=8)
    ax.set_ylabel("model score", fontsize=8)
    ax.set_title(mpl_text(metric), fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return png_bytes(fig)


def mean_ranks(table: pd.DataFrame) -> bytes:
    """Horizontal bars of each method's mean rank (baselines grey), best at the top.

    ``table`` has columns method, mean_rank, is_baseline for one model.
    """
    t = table.sort_values("mean_rank")
    fig, ax = plt.subplots(figsize=(4.8, 0.3 * len(t) + 0.9))
    colours = [BASELINE_COLOUR if b else METHOD_COLOUR for b in t["is_baseline"]]
    ax.barh(range(len(t)), t["mean_rank"].to_numpy(float), color=colours)
    ax.set_yticks(range(len(t)))
    ax.set_yticklabels([mpl_text(m) for m in t["method"]], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("mean rank over random metric weightings (1 = best)", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def sensitivity_maps(df: pd.DataFrame, title: str = "") -> bytes:
    """Per setting, the spread over images of Spearman, SSIM and top-k overlap against the default.

    ``df`` has columns setting, spearman, ssim, top_k_overlap for one model and method.
    """
    measures = [c for c in ("spearman", "ssim", "top_k_overlap") if c in df.columns]
    settings = list(dict.fromkeys(df["setting"]))
    fig, axes = plt.subplots(1, len(measures), figsize=(3.2 * len(measures), 0.35 * len(settings) + 1.3), squeeze=False)
    for ax, col in zip(axes[0], measures):
        data = [df.loc[df["setting"] == s, col].dropna().to_numpy(float) for s in settings]
        data = [d if d.size else np.array([np.nan]) for d in data]
        ax.boxplot(data, vert=False, widths=0.6, flierprops={"markersize": 2})
        ax.set_yticks(range(1, len(settings) + 1))
        ax.set_yticklabels([mpl_text(s) for s in settings], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(min(-0.05, np.nanmin([np.nanmin(d) for d in data] + [0.0]) - 0.05), 1.05)
        ax.set_title(col, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(mpl_text(title), fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)


def sensitivity_scores(df: pd.DataFrame, title: str = "") -> bytes:
    """Change of each metric's mean score from the default setting, per setting (grouped bars).

    ``df`` has columns setting, metric, change_from_default for one model and method.
    """
    settings = list(dict.fromkeys(df["setting"]))
    metrics = list(dict.fromkeys(df["metric"]))
    fig, ax = plt.subplots(figsize=(max(3.6, 0.9 * len(metrics) * max(1, len(settings)) * 0.5 + 1.5), 2.8))
    width = 0.8 / max(1, len(settings))
    xs = np.arange(len(metrics))
    for i, s in enumerate(settings):
        sub = df[df["setting"] == s].set_index("metric")["change_from_default"].reindex(metrics)
        ax.bar(xs + i * width - 0.4 + width / 2, sub.to_numpy(float), width, label=mpl_text(s))
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(xs)
    ax.set_xticklabels([mpl_text(m) for m in metrics], fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("mean score - default", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=6)
    if title:
        ax.set_title(mpl_text(title), fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)


def cliques(ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs ``(i, j)`` (indices into ``ranks`` sorted ascending) whose mean ranks differ
    by less than ``cd``: the methods Nemenyi's test does not tell apart."""
    r = np.asarray(ranks, float)
    out: list[tuple[int, int]] = []
    for i in range(len(r)):
        j = int(np.searchsorted(r, r[i] + cd, side="left")) - 1
        if j > i and (not out or j > out[-1][1]):
            out.append((i, j))
    return out


def cd_diagram(
    methods: Sequence[str], mean_ranks: Sequence[float], cd: float, baselines: Sequence[str] = (), title: str = ""
) -> bytes:
    """Critical-difference diagram (Demsar 2006): methods on their mean-rank axis (1 = best, left),
    the critical difference as a bar, and a thick line joining methods whose mean ranks differ by
    less than it (not significantly different)."""
    order = np.argsort(np.asarray(mean_ranks, float), kind="stable")
    names = [methods[i] for i in order]
    r = np.asarray(mean_ranks, float)[order]
    k = len(names)
    lo, hi = 1.0, float(max(k, np.ceil(np.nanmax(r)) if k else 1))
    half = (k + 1) // 2
    rows = max(half, k - half)
    groups = cliques(r, cd) if np.isfinite(cd) else []
    fig_h = 1.1 + 0.22 * rows + 0.12 * len(groups)
    fig, ax = plt.subplots(figsize=(6.4, fig_h))
    ax.set_xlim(lo - 0.6 * (hi - lo + 1) / 2, hi + 0.6 * (hi - lo + 1) / 2)
    top = 0.0
    ax.set_ylim(-(0.6 + 0.12 * len(groups) + 0.22 * rows + 0.2), 0.55)
    ax.plot([lo, hi], [top, top], color="k", lw=1)
    for t in range(int(lo), int(hi) + 1):
        ax.plot([t, t], [top, top + 0.06], color="k", lw=1)
        ax.text(t, top + 0.1, str(t), ha="center", va="bottom", fontsize=7)
    if np.isfinite(cd):
        ax.plot([lo, lo + cd], [top + 0.38, top + 0.38], color="k", lw=1.2)
        for x in (lo, lo + cd):
            ax.plot([x, x], [top + 0.33, top + 0.43], color="k", lw=1)
        ax.text(lo + cd / 2, top + 0.45, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=7)
    for g, (i, j) in enumerate(groups):
        y = -(0.12 + 0.12 * g)
        ax.plot([r[i] - 0.03, r[j] + 0.03], [y, y], color="k", lw=3, solid_capstyle="round")
    base_y = -(0.3 + 0.12 * len(groups))
    for idx, (name, rank) in enumerate(zip(names, r)):
        left = idx < half
        row = idx if left else k - 1 - idx
        y = base_y - 0.22 * row
        x_end = ax.get_xlim()[0] + 0.1 if left else ax.get_xlim()[1] - 0.1
        colour = BASELINE_COLOUR if name in baselines else "k"
        ax.plot([rank, rank, x_end], [top, y, y], color=colour, lw=0.8)
        ax.text(
            x_end + (-0.05 if left else 0.05),
            y,
            f"{mpl_text(name)} ({rank:.2f})" if left else f"({rank:.2f}) {mpl_text(name)}",
            ha="right" if left else "left",
            va="center",
            fontsize=7,
            color=colour,
        )
    ax.axis("off")
    if title:
        ax.set_title(mpl_text(title), fontsize=8)
    return png_bytes(fig)


def agreement_heatmap(tau: pd.DataFrame, title: str = "") -> bytes:
    """Kendall's tau between metrics (rows and columns in the given, clustered order); NaN grey."""
    from matplotlib import colormaps

    m = tau.to_numpy(float)
    n = len(tau)
    size = min(14.0, max(4.0, 1.6 + 0.28 * n))
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    cmap = colormaps["RdBu_r"].with_extremes(bad="#d0d0d0")
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    labels = [mpl_text(c) for c in tau.columns]
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels([mpl_text(c) for c in tau.index], fontsize=7)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if np.isfinite(m[i, j]):
                    colour = "w" if abs(m[i, j]) > 0.6 else "k"
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6, color=colour)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
    if title:
        ax.set_title(mpl_text(title), fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def significance_matrices(pairs: pd.DataFrame, methods: list[str], title: str = "") -> bytes:
    """One small methods x methods matrix per metric from the paired tests: a cell is +1
    (green) where the row's method is significantly better than the column's after Holm,
    -1 (red) where it is worse, 0 (pale yellow) where they do not differ; grey where untested."""
    from matplotlib import colormaps

    metrics = list(dict.fromkeys(pairs["metric"]))
    k = len(methods)
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    side = max(1.8, 0.32 * k + 0.9)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows + 0.3), squeeze=False)
    cmap = colormaps["RdYlGn"].with_extremes(bad="#d0d0d0")
    index = {m: i for i, m in enumerate(methods)}
    for ax in axes.flat:
        ax.set_axis_off()
    for n, metric in enumerate(metrics):
        ax = axes.flat[n]
        m = np.full((k, k), np.nan)
        np.fill_diagonal(m, 0.0)
        for r in pairs[pairs["metric"] == metric].itertuples(index=False):
            if r.method_a not in index or r.method_b not in index:
                continue
            i, j = index[r.method_a], index[r.method_b]
            sign = 0.0 if not bool(r.significant) else (1.0 if r.better == r.method_a else -1.0)
            m[i, j], m[j, i] = sign, -sign
        ax.set_axis_on()
        ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=-1.5, vmax=1.5, interpolation="nearest")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        labels = [mpl_text(x) for x in methods]
        ax.set_xticklabels(labels, rotation=90, fontsize=5)
        ax.set_yticklabels(labels, fontsize=5)
        ax.set_title(mpl_text(metric), fontsize=7)
    if title:
        fig.suptitle(mpl_text(title), fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)
