"""The ``xaiscope annotators`` job: how much the experts agree, and where each method stands among them.

Writes to ``out``:

- ``agreement.parquet``: Dice and IoU of every pair of annotators on every image;
- ``kappa.json``: Fleiss' kappa over all pixels (and per image), the pairwise Dice range,
  how the consensus is formed;
- ``staple.parquet``: STAPLE's sensitivity, specificity and weight per annotator;
- ``methods_vs_annotators.parquet``: per method, reference (each annotator, ``consensus``
  (the majority vote), ``staple`` (STAPLE's consensus) and ``truth`` where the data has true
  masks) and metric, the mean over images, the
  experts' range of the same metric and the verdict ``inside``, ``below`` or ``above``.

The metrics are the registered localisation metrics asked for plus ``dice`` and ``iou`` of
each map's top pixels (as many as the consensus marks on the image, or ``top_k`` of them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiscope import evaluate, explain
from xaiscope.analyses import annotators as ann
from xaiscope.errors import ConfigError, DataError, MetricError
from xaiscope.io import ensure_dir, write_json, write_parquet
from xaiscope.run.inputs import ModelAndImages, build_explainers, open_model_and_images

DEFAULT_METRICS = ["relevance_mass_accuracy", "pointing_game", "auroc"]
OVERLAP = ("dice", "iou")


def localisation_metrics(names: list[str], params: dict[str, dict[str, Any]]) -> list[evaluate.Metric]:
    """Registered metrics that compare a map with a mask alone; groups (``all``, ``localisation``)
    keep those of their members, a metric named on its own must be one."""
    asked = [n for n in names if n not in OVERLAP]
    out = []
    for n in evaluate.expand(asked) if asked else []:
        cls = evaluate.get_class(n)
        if cls.needs == frozenset({"mask"}):
            out.append(cls(**params.get(n, {})))
        elif n in asked:
            raise MetricError(
                f"Metric {n} does not compare a map with a mask alone; give localisation metrics such as "
                f"{', '.join(DEFAULT_METRICS)}."
            )
    return out


def _overlap_scores(top_k: float | None, consensus: torch.Tensor) -> dict[str, ann.Score]:
    """``dice`` and ``iou`` of a map's top pixels (channels summed; the largest values, as the
    localisation metrics rank them) with a mask; a mask given as the map is used as it is."""
    area = consensus.flatten(1).sum(1) if top_k is None else top_k

    def binary(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return m
        return ann.top_fraction(m.sum(1) if m.dim() == 4 else m, area)

    return {
        "dice": lambda m, ref: ann.dice_iou(binary(m), ref)[0],
        "iou": lambda m, ref: ann.dice_iou(binary(m), ref)[1],
    }


def _number(v) -> float | None:
    """A float for JSON; None where undefined (NaN)."""
    v = float(v)
    return None if math.isnan(v) else v


def _kappa_summary(masks: torch.Tensor, agreement, annotators: list[str], staple_backend: str) -> dict:
    per_image = [ann.pixel_kappa(masks[i : i + 1]) for i in range(masks.shape[0])]
    finite = [k for k in per_image if not math.isnan(k)]
    pair_means = agreement.groupby(["annotator_a", "annotator_b"])[["dice", "iou"]].mean()
    return {
        "fleiss_kappa_pixels": _number(ann.pixel_kappa(masks)),
        "fleiss_kappa_per_image": {
            "mean": float(np.mean(finite)) if finite else None,
            "min": float(np.min(finite)) if finite else None,
            "max": float(np.max(finite)) if finite else None,
            "images": len(finite),
        },
        "annotators": annotators,
        "images": int(masks.shape[0]),
        "pixels": int(masks[:, 0].numel()),
        "pairwise_dice": {"low": _number(pair_means["dice"].min()), "high": _number(pair_means["dice"].max())},
        "pairwise_iou": {"low": _number(pair_means["iou"].min()), "high": _number(pair_means["iou"].max())},
        "consensus": "majority vote: a pixel is foreground when at least half of the annotators mark it",
        "staple_backend": staple_backend,
        "reference": "Fleiss 1971, Psychological Bulletin 76(5):378-382",
    }


def run_annotators(
    what: ModelAndImages,
    *,
    methods: list[str],
    out: Path,
    metrics: list[str] | None = None,
    top_k: float | None = None,
    staple_backend: str = "auto",
    params: dict[str, dict[str, Any]] | None = None,
    console=None,
) -> dict[str, Path]:
    """Compare the annotators with each other and each method with them; write the four tables to ``out``."""
    params = params or {}
    if not methods:
        raise ConfigError("No methods were given; pass --methods with names from 'xaiscope methods'.")
    if top_k is not None and not 0 < top_k <= 1:
        raise ConfigError(f"--top-k must be a share of the pixels in (0, 1], got {top_k}.")
    if staple_backend not in ("auto", "simpleitk", "em"):
        raise ConfigError(f"--staple must be 'auto', 'simpleitk' or 'em', got {staple_backend!r}.")
    metric_names = list(DEFAULT_METRICS if metrics is None else metrics)
    mets = localisation_metrics(metric_names, params)
    methods = explain.expand(methods)
    unknown = [k for k in params if k not in methods and k not in [m.name for m in mets]]
    if unknown:
        raise ConfigError(f"--param names {unknown[0]!r}, which is neither in --methods nor in --metrics.")
    explainers = build_explainers(methods, params, what.batch_size)
    out = ensure_dir(out)  # an unwritable output fails now, not after all the work
    net, ds, dev, _, explainers, t = open_model_and_images(what, explainers, params)
    return write_annotator_tables(
        out, net, ds, explainers, t, mets, top_k=top_k, staple_backend=staple_backend, device=dev, console=console
    )


def write_annotator_tables(
    out: Path,
    net: torch.nn.Module,
    ds,
    explainers: list,
    targets: torch.Tensor,
    mets: list,
    *,
    top_k: float | None = None,
    staple_backend: str = "auto",
    device: torch.device | None = None,
    console=None,
) -> dict[str, Path]:
    """The four tables (module docstring) for the opened model and images ``ds``, the
    explainers and the localisation metrics ``mets``; written into ``out``."""
    if ds.annotator_masks is None:
        raise DataError(
            f"The data in {ds.source} has no masks from several annotators; give masks/<annotator>/<class>/<id>.png "
            "or an NPZ or Zarr array 'masks' of shape [N, annotators, H, W]."
        )
    masks, names = ds.annotator_masks, list(ds.annotators or [])
    if masks.shape[1] < 2:
        raise DataError(f"The data in {ds.source} has masks from 1 annotator; comparing annotators needs at least 2.")

    agreement = ann.pairwise_agreement(masks, names, ds.ids)
    result = ann.staple(masks, backend=staple_backend)
    staple_table = result.table(names)
    consensus = ds.masks
    truth = ds.extra_masks.get("truth")
    if truth is not None:
        staple_table["dice_with_truth"] = [
            float(ann.dice_iou(masks[:, j], truth)[0].nanmean()) for j in range(len(names))
        ]

    x = ds.x.to(device or torch.device("cpu"))
    t = targets.to(x.device)
    maps = {}
    for ex in explainers:
        if console is not None:
            console.print(f"{ex.name}: explaining {len(ds)} images")
        maps[ex.name] = ex(net, x, t).detach().cpu()
    x, t = x.cpu(), t.cpu()
    scores: dict[str, ann.Score] = {m.name: (lambda a, ref, m=m: m(None, x, t, a.float(), mask=ref)) for m in mets}
    scores.update(_overlap_scores(top_k, consensus))
    extra = {"staple": result.consensus, **({"truth": truth} if truth is not None else {})}
    table = ann.methods_vs_annotators(maps, masks, names, consensus, scores, extra=extra)
    table["top_k"] = "consensus area" if top_k is None else str(top_k)

    kappa = _kappa_summary(masks, agreement, names, result.backend)
    out = ensure_dir(out)
    paths = {
        "agreement": out / "agreement.parquet",
        "kappa": out / "kappa.json",
        "staple": out / "staple.parquet",
        "methods_vs_annotators": out / "methods_vs_annotators.parquet",
    }
    write_parquet(paths["agreement"], agreement)
    write_json(paths["kappa"], kappa)
    write_parquet(paths["staple"], staple_table)
    write_parquet(paths["methods_vs_annotators"], table)
    if console is not None:
        _summary(console, kappa, staple_table, table)
    return paths


def _summary(console, kappa: dict, staple_table, table) -> None:
    d, k = kappa["pairwise_dice"], kappa["fleiss_kappa_pixels"]
    fmt = lambda v: "undefined" if v is None or math.isnan(v) else f"{v:.3f}"  # noqa: E731
    console.print(
        f"{len(kappa['annotators'])} annotators, {kappa['images']} images: Fleiss' kappa {fmt(k)}; "
        f"pairwise Dice {fmt(d['low'])} to {fmt(d['high'])}"
    )
    weights = ", ".join(f"{r.annotator} {r.weight:.3f}" for r in staple_table.itertuples())
    console.print(f"STAPLE weight (sensitivity + specificity): {weights}")
    rows = table[(table.metric == "dice") & (table.reference == "consensus")]
    for r in rows.itertuples():
        where = (
            f"{r.verdict} the experts' [{r.expert_low:.3f}, {r.expert_high:.3f}]"
            if r.verdict != "undefined"
            else "the experts' range is undefined"
        )
        console.print(f"{r.method}: Dice with the consensus {fmt(r.mean)}, {where}")
    counts = table.verdict.value_counts()
    console.print("verdicts over all references and metrics: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
