"""The pre-training study: does pre-training change how well explanations localise?

Design. For each pre-training source ``s`` (``none`` = from scratch, or a dataset of a
different task: another background family, another lesion rule), each seed and - for
pre-trained sources - each number ``L`` of frozen pre-trained blocks:

1. pre-train the architecture on ``s`` (once per source and seed, ``pretrain_epochs``;
   Adam with a cosine-annealed learning rate, as in every training run here);
2. build a fresh model (seeded), copy the pre-trained ``features`` weights, freeze the
   first ``L`` blocks of ``features`` (its children with parameters, see
   :func:`feature_blocks`; parameters and BatchNorm statistics) and fine-tune on the
   target data (``epochs``). Volumes ``[N, C, D, H, W]`` work alike with ``small_cnn3d``;
3. test accuracy; for every method, explain the correctly classified test images (at
   most ``max_images``, true class as target) and score the maps against the lesion
   masks with every metric (default ``relevance_rank_accuracy``,
   ``relevance_mass_accuracy``, ``emd_score``); one row per run, method and metric
   holds the mean score.

Effect after regressing out accuracy. Per method and metric, ordinary least squares
over the runs::

    score = b0 + b_acc * accuracy + sum_s b_s [source = s] + b_L * L + e

(``L = 0`` for scratch runs), coefficients with ``ci`` confidence intervals from the
t distribution with ``n - p`` degrees of freedom (classical OLS standard errors). ``b_s``
is the change in explanation score from pre-training on ``s`` at equal accuracy and
``L = 0``; ``b_L`` the change per additional frozen block.

Cost (model passes): training ``epochs * N_train`` per run (+ ``pretrain_epochs * N_pre``
per source and seed), evaluation ``N_test`` per run, and per run and method
``E * n_explained`` passes for the explainer's ``E`` (localisation metrics need none).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from xaiscope import evaluate, explain
from xaiscope.data import Dataset
from xaiscope.errors import ConfigError, DataError
from xaiscope.models.forward import forward
from xaiscope.models.state import eval_mode
from xaiscope.models.train import init_model, train

DEFAULT_METRICS = ("relevance_rank_accuracy", "relevance_mass_accuracy", "emd_score")


@dataclass
class TransferResult:
    """``runs``: one row per source, L, seed, method and metric; ``effects``: the regression per method and metric."""

    runs: "object"  # pandas.DataFrame
    effects: "object"  # pandas.DataFrame
    settings: dict = field(default_factory=dict)


def feature_blocks(model: torch.nn.Module) -> list[str]:
    """Names of the blocks of ``model.features``: its children that hold parameters, in order.

    ``small_vgg``'s four conv-BN-relu-pool blocks are ``features.0`` .. ``features.3``; in a
    flat sequence such as ``small_cnn``/``small_cnn3d`` every convolution is a block
    (``features.0``, ``features.3``, ``features.6``) and the activations and pooling after it
    belong to it. Freezing ``L`` blocks freezes the first ``L`` names.
    """
    feats = getattr(model, "features", None)
    if not isinstance(feats, torch.nn.Sequential):
        return []
    return [f"features.{name}" for name, child in feats.named_children() if any(True for _ in child.parameters())]


def check_blocks(arch: str, levels: Sequence[int], width: int) -> list[str]:
    """The block names of ``arch`` (see :func:`feature_blocks`); one sentence when it has none or a level is out of range."""
    blocks = feature_blocks(init_model(arch, in_channels=1, num_classes=2, width=width))
    if not blocks:
        raise ConfigError(
            f"The transfer study needs an architecture with a 'features' sequence of blocks; {arch!r} has none."
        )
    bad = [L for L in levels if not 0 <= L <= len(blocks)]
    if bad:
        raise ConfigError(
            f"--freeze {bad[0]} is not between 0 and {len(blocks)} (the number of blocks in {arch}.features)."
        )
    return blocks


def _explain_scores(
    model, test: Dataset, methods, metrics, *, max_images: int, batch_size: int, device
) -> tuple[float, list[dict]]:
    x_all, y_all = test.x.to(device), test.y.to(device)
    with eval_mode(model):
        pred = forward(model, x_all, batch_size=256).argmax(1)
    correct = (pred == y_all).cpu()
    acc = float(correct.float().mean())
    idx = torch.nonzero(correct & test.masks.flatten(1).any(1)).flatten()[:max_images]
    rows = []
    if idx.numel() == 0:
        return acc, rows
    x, y, s = x_all[idx], y_all[idx], test.masks[idx].to(device)
    for method in methods:
        parts = [method(model, x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(idx), batch_size)]
        a = torch.cat(parts)
        for metric in metrics:
            score = metric(model, x, y, a, mask=s).double().cpu()
            finite = score[torch.isfinite(score)]
            rows.append(
                {
                    "method": method.name,
                    "metric": metric.name,
                    "score": float(finite.mean()) if finite.numel() else float("nan"),
                    "n_images": int(finite.numel()),
                }
            )
    return acc, rows


def transfer_study(
    train_ds: Dataset,
    test_ds: Dataset,
    pretrain: dict[str, Dataset],
    *,
    arch: str = "small_vgg",
    freeze: Sequence[int] | None = None,
    seeds: int = 3,
    methods: Sequence[str] = ("saliency", "integrated_gradients", "gradcam"),
    metrics: Sequence[str] = DEFAULT_METRICS,
    epochs: int = 10,
    pretrain_epochs: int = 10,
    lr: float = 3e-3,
    batch_size: int = 32,
    width: int = 16,
    max_images: int = 100,
    ci: float = 0.95,
    device: str | torch.device = "cpu",
    progress=None,
) -> TransferResult:
    """Run the study (see the module docstring); ``progress(step_text)`` is called before each training run.

    ``freeze``: the numbers ``L`` of frozen blocks (default every ``L`` from 0 to the number of blocks).
    """
    import pandas as pd

    if test_ds.masks is None:
        raise DataError(
            f"The test data {test_ds.source} has no lesion masks; the transfer study scores maps against them."
        )
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}.")
    if "none" in pretrain:
        raise ConfigError("'none' is reserved for training from scratch; name the pre-training source differently.")
    levels = sorted(set(int(L) for L in freeze)) if freeze is not None else None
    blocks = check_blocks(arch, levels or [], width)
    levels = levels if levels is not None else list(range(len(blocks) + 1))
    explainers = [explain.get(m) for m in methods]
    scorers = [evaluate.get(m) for m in metrics]
    need_model = [m.name for m in scorers if "model" in m.needs or "explainer" in m.needs]
    if need_model:
        raise ConfigError(
            f"The transfer study scores localisation against masks; {need_model[0]} needs more than a mask."
        )
    dev = torch.device(device)
    kw = {"in_channels": train_ds.shape[0], "width": width}
    rows: list[dict] = []
    plan = [("none", None, 0)] + [(name, ds, L) for name, ds in pretrain.items() for L in levels]
    total = seeds * (len(plan) + len(pretrain))
    step = 0

    def tick(text: str) -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(f"[{step}/{total}] {text}")

    for seed in range(seeds):
        pretrained: dict[str, dict] = {}
        for name, ds in pretrain.items():
            if ds.shape[0] != train_ds.shape[0]:
                raise DataError(
                    f"The pre-training data {name!r} has {ds.shape[0]} channel(s) but the target data has {train_ds.shape[0]}."
                )
            tick(f"pre-train on {name}, seed {seed}")
            pre = init_model(arch, seed=seed, num_classes=ds.num_classes, **kw)
            train(
                pre,
                ds,
                epochs=pretrain_epochs,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                device=dev,
                progress=False,
                schedule="cosine",
            )
            pretrained[name] = {
                k: v.detach().cpu().clone() for k, v in pre.state_dict().items() if k.startswith("features.")
            }
        for name, _, L in plan:
            tick(f"fine-tune from {name}, L={L}, seed {seed}")
            model = init_model(arch, seed=seed + 1000, num_classes=train_ds.num_classes, **kw)
            if name != "none":
                model.load_state_dict({**model.state_dict(), **copy.deepcopy(pretrained[name])})
            res = train(
                model,
                train_ds,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                device=dev,
                freeze=blocks[:L],
                progress=False,
                schedule="cosine",
            )
            acc, scores = _explain_scores(
                res.model, test_ds, explainers, scorers, max_images=max_images, batch_size=batch_size, device=dev
            )
            base = {
                "source": name,
                "pretrained": name != "none",
                "frozen_blocks": L,
                "seed": seed,
                "train_acc": res.train_acc,
                "test_acc": acc,
            }
            rows += [{**base, **r} for r in scores] or [
                {**base, "method": None, "metric": None, "score": float("nan"), "n_images": 0}
            ]
    runs = pd.DataFrame(rows)
    effects = regress_effects(runs, list(pretrain), ci=ci)
    settings = {
        "arch": arch,
        "freeze": levels,
        "seeds": seeds,
        "methods": list(methods),
        "metrics": list(metrics),
        "epochs": epochs,
        "pretrain_epochs": pretrain_epochs,
        "lr": lr,
        "batch_size": batch_size,
        "width": width,
        "max_images": max_images,
        "ci": ci,
        "sources": ["none", *pretrain],
    }
    return TransferResult(runs=runs, effects=effects, settings=settings)


def ols(X: np.ndarray, y: np.ndarray, *, ci: float = 0.95) -> dict[str, np.ndarray]:
    """Least squares ``y = X b``: coefficients, standard errors and t-based ``ci`` intervals (NaN when ``n <= p``)."""
    from scipy import stats

    n, p = X.shape
    b, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ b
    df = n - rank
    if df > 0 and rank == p:
        sigma2 = float(resid @ resid) / df
        se = np.sqrt(np.diag(sigma2 * np.linalg.inv(X.T @ X)))
        q = stats.t.ppf(0.5 + ci / 2, df)
        low, high = b - q * se, b + q * se
    else:
        se = low = high = np.full(p, np.nan)
    return {"coef": b, "se": se, "low": low, "high": high, "df": df}


def regress_effects(runs, sources: Sequence[str], *, ci: float = 0.95):
    """Per method and metric: ``score ~ 1 + test_acc + [source = s] ... + frozen_blocks`` (see the module docstring)."""
    import pandas as pd

    out = []
    valid = runs.dropna(subset=["method", "score"])
    for (method, metric), g in valid.groupby(["method", "metric"], sort=True):
        cols = {"intercept": np.ones(len(g)), "test_acc": g["test_acc"].to_numpy(float)}
        for s in sources:
            cols[f"source={s}"] = (g["source"] == s).to_numpy(float)
        cols["frozen_blocks"] = g["frozen_blocks"].to_numpy(float)
        X = np.column_stack(list(cols.values()))
        # drop terms that do not vary (e.g. one level of L only), so the fit stays identifiable
        keep = [i for i, k in enumerate(cols) if k == "intercept" or np.ptp(X[:, i]) > 0]
        names = [list(cols)[i] for i in keep]
        fit = ols(X[:, keep], g["score"].to_numpy(float), ci=ci)
        for i, term in enumerate(names):
            out.append(
                {
                    "method": method,
                    "metric": metric,
                    "term": term,
                    "coef": fit["coef"][i],
                    "se": fit["se"][i],
                    "ci_low": fit["low"][i],
                    "ci_high": fit["high"][i],
                    "df": fit["df"],
                    "n_runs": len(g),
                    "ci": ci,
                }
            )
    return pd.DataFrame(
        out, columns=["method", "metric", "term", "coef", "se", "ci_low", "ci_high", "df", "n_runs", "ci"]
    )


def plot_transfer(result: TransferResult):
    """Figure: per metric, score against test accuracy (colour = source, label = L); right column, the effects with CIs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    runs = result.runs.dropna(subset=["metric"])
    metrics = list(dict.fromkeys(runs["metric"]))
    fig, axes = plt.subplots(max(1, len(metrics)), 2, figsize=(11, 3.2 * max(1, len(metrics))), squeeze=False)
    sources = list(dict.fromkeys(result.runs["source"]))
    colours = {s: plt.cm.tab10(i) for i, s in enumerate(sources)}
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    methods = list(dict.fromkeys(runs["method"]))
    for r, metric in enumerate(metrics):
        ax = axes[r, 0]
        for (source, method), g in runs[runs["metric"] == metric].groupby(["source", "method"], sort=False):
            ax.scatter(
                g["test_acc"],
                g["score"],
                color=colours[source],
                marker=markers[methods.index(method) % len(markers)],
                label=f"{source} / {method}",
                alpha=0.8,
            )
            for _, row in g.iterrows():
                ax.annotate(
                    str(row["frozen_blocks"]),
                    (row["test_acc"], row["score"]),
                    fontsize=6,
                    xytext=(2, 2),
                    textcoords="offset points",
                )
        ax.set_xlabel("test accuracy")
        ax.set_ylabel(metric)
        if r == 0:
            ax.legend(fontsize=6, loc="best")
        ax = axes[r, 1]
        eff = result.effects[
            (result.effects["metric"] == metric) & ~result.effects["term"].isin(["intercept", "test_acc"])
        ]
        labels = [f"{m}: {t}" for m, t in zip(eff["method"], eff["term"])]
        yy = np.arange(len(eff))
        ax.errorbar(eff["coef"], yy, xerr=[eff["coef"] - eff["ci_low"], eff["ci_high"] - eff["coef"]], fmt="o", ms=3)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(yy, labels, fontsize=6)
        ax.set_xlabel(f"effect on {metric} at equal accuracy ({int(100 * result.settings.get('ci', 0.95))}% CI)")
    fig.tight_layout()
    return fig
