"""Speed of xaiscope's metrics against Quantus 0.6 on the same inputs, in one process.

Prints per metric: our time, Quantus' time, the speed-up (Quantus / ours), our time over
the model-pass floor, and the geometric mean of the speed-ups.

The floor of a metric is its forward passes per image x the time of one chunked forward
of the N images, plus its explainer passes per image x the time of one chunked
explanation (saliency: forward + backward) of the N images; both are measured in the
same run, with the same images per model call as the metric.

Images per model call (``--batch-size``): ours and Quantus' model calls get the same
number (Quantus' ``batch_size``, which is also the images per model call of its step
loops; metrics that call no model get the whole set). The default per setting is the
size with the best throughput of one forward on this CPU: per-image cost grows once a
call's activations leave the caches (small_cnn at 64x64: ~0.8 ms/image at 8-16 images
per call, ~2 ms/image at 256).

Settings: ``tiny`` (a 2-conv CNN on 1x16x16 images, N=64: framework overhead dominates)
and ``small`` (``small_cnn`` at 1x64x64, N=256; ``--quick`` uses N=64); ``volume``
(``small_cnn3d`` on volumes 1x24x28x24, N=32): the metrics whose passes grow with the number
of voxels and the perturbation methods (occlusion, feature ablation, LIME), each against its
floor only, since Quantus scores 2D images (the floor is run as that many forwards, see
``run_volume``); ``vit`` (a timm ViT with patch 4 on 3x32x32,
N=32): every method that explains it, against its floor (``passes`` forwards, or forward +
backward for gradient methods, timed as one saliency explanation).

    python benchmarks/bench_metrics.py [--quick] [--setting tiny|small|volume|vit|both|all] [--only a,b] [--batch-size B]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch

from xaiscope import evaluate, explain, models
from xaiscope.allocator import keep_heap
from xaiscope.evaluate.base import normalise_max

SAL = explain.get("saliency", batch_size=4096)


def qexplain(model, inputs, targets, **kw):
    xb = torch.as_tensor(np.asarray(inputs)).float()
    yb = torch.as_tensor(np.asarray(targets)).long()
    return explain.pool(SAL(model, xb, yb), "sum").unsqueeze(1).numpy()


def import_quantus():
    """Quantus, imported only by the settings that run it: with it imported, every torch
    forward of the volume and ViT settings ran up to 1.7x slower on this machine, at random."""
    if not hasattr(np, "trapz"):  # Quantus 0.6 calls np.trapz (removed in NumPy 2.4)
        np.trapz = np.trapezoid
    import quantus

    return quantus


def cases(hw: int):
    """(our name, our settings, Quantus class, Quantus init kwargs, Quantus call kwargs)."""
    quantus = import_quantus()
    big = hw >= 64
    k_pf = 64 if big else 4
    fc = dict(nr_runs=50, subset_size=min(224, hw * hw // 4))
    ex = {"explain_func": qexplain}
    return [
        ("relevance_mass_accuracy", {}, "RelevanceMassAccuracy", {}, {"mask": True}),
        ("relevance_rank_accuracy", {}, "RelevanceRankAccuracy", {}, {"mask": True}),
        ("pointing_game", {}, "PointingGame", {}, {"mask": True}),
        ("top_k_intersection", {"k": hw * hw // 4}, "TopKIntersection", {"k": hw * hw // 4}, {"mask": True}),
        ("attribution_localisation", {}, "AttributionLocalisation", {}, {"mask": True}),
        ("auroc", {}, "AUC", {}, {"mask": True}),
        ("sparseness", {}, "Sparseness", {}, {}),
        ("complexity", {}, "Complexity", {}, {}),
        ("effective_complexity", {}, "EffectiveComplexity", {}, {}),
        (
            "pixel_flipping",
            {"features_in_step": k_pf},
            "PixelFlipping",
            {"features_in_step": k_pf, "return_auc_per_sample": True},
            {},
        ),
        (
            "region_perturbation",
            {"patch_size": 8 if big else 4},
            "RegionPerturbation",
            {"patch_size": 8 if big else 4},
            {},
        ),
        ("selectivity", {"patch_size": 8 if big else 4}, "Selectivity", {"patch_size": 8 if big else 4}, {}),
        ("faithfulness_correlation", fc, "FaithfulnessCorrelation", {**fc, "return_aggregate": False}, {}),
        ("faithfulness_estimate", {"features_in_step": k_pf}, "FaithfulnessEstimate", {"features_in_step": k_pf}, {}),
        ("monotonicity", {"features_in_step": k_pf}, "Monotonicity", {"features_in_step": k_pf}, {}),
        (
            "monotonicity_correlation",
            {"features_in_step": k_pf * 4, "nr_samples": 5},
            "MonotonicityCorrelation",
            {"features_in_step": k_pf * 4, "nr_samples": 5},
            {},
        ),
        (
            "sensitivity_n",
            {"features_in_step": k_pf},
            "SensitivityN",
            {"features_in_step": k_pf, "return_aggregate": False},
            {},
        ),
        ("irof", {}, "IROF", {"return_aggregate": False}, {}),
        ("road", {"percentage_step": 10}, "ROAD", {"percentages": list(range(1, 100, 10))}, {}),
        (
            "infidelity",
            {"patch_size": 8 if big else 4},
            "Infidelity",
            {"perturb_patch_sizes": [8 if big else 4], "n_perturb_samples": 1},
            {},
        ),
        ("sufficiency", {}, "Sufficiency", {}, {}),
        ("consistency", {}, "Consistency", {}, {}),
        ("non_sensitivity", {}, "NonSensitivity", {}, {}) if not big else None,
        ("completeness", {"output": "equal", "normalise": True}, "Completeness", {}, {}),
        ("max_sensitivity", {"nr_samples": 10}, "MaxSensitivity", {"nr_samples": 10}, ex),
        ("avg_sensitivity", {"nr_samples": 10}, "AvgSensitivity", {"nr_samples": 10}, ex),
        ("local_lipschitz", {"nr_samples": 10}, "LocalLipschitzEstimate", {"nr_samples": 10}, ex),
        ("relative_input_stability", {"nr_samples": 10}, "RelativeInputStability", {"nr_samples": 10}, ex),
        ("relative_output_stability", {"nr_samples": 10}, "RelativeOutputStability", {"nr_samples": 10}, ex),
        (
            "relative_representation_stability",
            {"nr_samples": 10},
            "RelativeRepresentationStability",
            {"nr_samples": 10},
            ex,
        ),
        ("continuity", {"nr_steps": 10}, "Continuity", {"nr_steps": 10}, ex),
        (
            "model_parameter_randomisation",
            {"summary": "quantus_average"},
            "MPRT",
            {"return_average_correlation": True},
            ex,
        ),
        (
            "smooth_model_parameter_randomisation",
            {"nr_samples": 5, "summary": "quantus_average"},
            "SmoothMPRT",
            {"nr_samples": 5, "return_average_correlation": True},
            {"explain_func": quantus.explain, "explain_func_kwargs": {"method": "Saliency"}, "a_none": True},
        ),
        ("efficient_model_parameter_randomisation", {}, "EfficientMPRT", {}, ex),
        ("random_logit", {"similarity": "ssim_flat", "num_classes": 2}, "RandomLogit", {"num_classes": 2}, ex),
        ("input_invariance", {}, "InputInvariance", {}, ex),
    ]


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 2),
    ).eval()


def small_net():
    torch.manual_seed(0)
    net = models.build("small_cnn", in_channels=1, num_classes=2)
    # Quantus' input invariance shifts the bias of the first named module: put the first conv first
    return torch.nn.Sequential(*net.features, net.pool, net.flatten, net.classifier).eval()


def timed(fn, repeat: int = 3, budget: float = 3.0) -> tuple[float, int]:
    """``(best time, runs)`` over up to ``repeat`` runs of ``fn`` (the machine is shared);
    stops repeating once the runs so far took ``budget`` seconds."""
    best, spent, runs = math.inf, 0.0, 0
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent, runs = min(best, dt), spent + dt, runs + 1
        if spent > budget:
            break
    return best, runs


class _ExplainerCost:
    """Stands in for the explainer when counting passes: one explainer pass = ``e`` forwards."""

    def __init__(self, e: float):
        self.e = e

    def passes(self, shape, model=None):
        return self.e


def passes(metric, shape, explainer, net) -> float:
    """Model passes per image; randomisation metrics also need the model (to count layers)."""
    try:
        return metric.passes(shape, explainer, net)
    except TypeError:
        return metric.passes(shape, explainer=explainer)


def run(setting: str, n: int, hw: int, only: set[str] | None, bs: int):
    net = tiny_net() if setting == "tiny" else small_net()
    SAL.hparams["batch_size"] = bs
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, hw, hw, generator=g)
    y = torch.arange(n) % 2
    a = normalise_max(explain.pool(SAL(net, x, y), "sum") + 1e-6 * torch.rand(n, hw, hw, generator=g))
    mask = torch.zeros(n, hw, hw, dtype=torch.bool)
    mask[:, hw // 4 : hw // 2, hw // 3 : 2 * hw // 3] = True
    models.forward(net, x, batch_size=bs)
    t_fwd = timed(lambda: models.forward(net, x, batch_size=bs), 5)[0]
    t_expl = timed(lambda: SAL(net, x, y), 5)[0]
    e_fwd = t_expl / t_fwd  # one explainer pass in forward-pass units
    print(
        f"\n== {setting}: N={n}, 1x{hw}x{hw}, {bs} images per model call; one forward of the N images = "
        f"{t_fwd * 1e3:.2f} ms, one saliency explanation = {t_expl * 1e3:.2f} ms ({e_fwd:.1f} forwards)"
    )
    print(f"{'metric':40s} {'ours s':>9s} {'quantus s':>10s} {'speed-up':>9s} {'passes':>8s} {'ours/floor':>10s}")
    ratios, floors = [], []
    for case in cases(hw):
        if case is None:
            continue
        name, hp, qname, qinit, qcall = case
        if only and name not in only:
            continue
        qcall = dict(qcall)
        use_mask, a_none = qcall.pop("mask", False), qcall.pop("a_none", False)
        metric = evaluate.get(name, **hp, **({"batch_size": bs} if "batch_size" in evaluate.get(name).hparams else {}))
        with models.count_passes(net) as counted:
            t_ours, runs = timed(lambda metric=metric: metric(net, x, y, a, mask=mask, explainer=SAL))
        p = passes(metric, (1, hw, hw), SAL, net)
        if "explainer" not in metric.needs and p:
            # forward passes only: the floor counts the passes actually made (IROF's depend on
            # the superpixels found, monotonicity stops images early), not the formula's bound
            p = counted.rows / runs / n
        qm = getattr(import_quantus(), qname)(disable_warnings=True, **qinit)
        q_bs = n if p == 0 else min(n, bs)
        kw = dict(
            model=net,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=None if a_none else a.unsqueeze(1).numpy(),
            device="cpu",
            batch_size=q_bs,
            **qcall,
        )
        if use_mask:
            kw["s_batch"] = mask.unsqueeze(1).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_q, _ = timed(lambda qm=qm, kw=kw: qm(**kw))
        floor = (passes(metric, (1, hw, hw), _ExplainerCost(e_fwd), net) if "explainer" in metric.needs else p) * t_fwd
        r = t_q / t_ours
        ratios.append(r)
        fl = f"{t_ours / floor:10.2f}" if p and p == p else f"{'-':>10s}"
        if p and p == p:
            floors.append(t_ours / floor)
        print(f"{name:40s} {t_ours:9.4f} {t_q:10.4f} {r:8.1f}x {p if p == p else float('nan'):8.0f} {fl}", flush=True)
    gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"{'geometric mean speed-up':40s} {gm:.1f}x over {len(ratios)} metrics; slowest ratio {min(ratios):.2f}x")
    if floors:
        print(
            f"{'ours / floor (model-bound metrics)':40s} largest {max(floors):.2f}, "
            f"{sum(f <= 1.3 for f in floors)} of {len(floors)} within 1.3x"
        )


#: the volume setting: (metric, settings) whose passes grow with the voxels, and methods
VOLUME_METRICS = [
    ("pixel_flipping", {"features_in_step": 256}),
    ("region_perturbation", {"patch_size": 4}),
    ("deletion", {"steps": 16}),
    ("insertion", {"steps": 16}),
    ("selectivity", {"patch_size": 4}),
    ("faithfulness_correlation", {"nr_runs": 50, "subset_size": 256}),
    ("faithfulness_estimate", {"features_in_step": 256}),
    ("monotonicity_correlation", {"features_in_step": 256, "nr_samples": 4}),
    ("sensitivity_n", {"features_in_step": 256}),
    ("irof", {}),
    ("road", {}),
    ("infidelity", {}),
    ("non_sensitivity", {"features_in_step": 256}),
    ("completeness", {}),
    ("max_sensitivity", {"nr_samples": 8}),
]
VOLUME_METHODS = [
    ("occlusion", {"window": 8, "stride": 8}),
    ("feature_ablation", {"patch": 8}),
    ("lime", {"n_samples": 64, "n_segments": 24}),
    ("kernel_shap", {"n_samples": 64, "n_segments": 24}),
]


def reference_passes(net, x: torch.Tensor, passes: float, bs: int) -> None:
    """The floor as a run: ``passes`` chunked forwards of the N volumes (the fractional part
    as a forward of that share of them), the work a metric at its floor would do."""
    for _ in range(int(passes)):
        models.forward(net, x, batch_size=bs)
    rest = round((passes - int(passes)) * x.shape[0])
    if rest:
        models.forward(net, x[:rest], batch_size=bs)


def run_volume(n: int, shape: tuple[int, int, int], only: set[str] | None, bs: int):
    """``small_cnn3d`` on volumes: ours against the model-pass floor (Quantus scores 2D images only).

    On this small model one forward of a volume batch takes a few ms, and the best of a few
    short forwards times the pass count underestimates the floor by up to 30% on a shared
    CPU; so the floor is run: the metric's passes as that many chunked forwards of the N
    volumes (explainer passes as forwards of the same cost), timed best-of beside the metric.
    """
    torch.manual_seed(0)
    net = models.build("small_cnn3d", in_channels=1, num_classes=2).eval()
    SAL.hparams["batch_size"] = bs
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, *shape, generator=g)
    y = torch.arange(n) % 2
    a = normalise_max(explain.pool(SAL(net, x, y), "sum") + 1e-6 * torch.rand(n, *shape, generator=g))
    models.forward(net, x, batch_size=bs)
    t_fwd = timed(lambda: models.forward(net, x, batch_size=bs), 5)[0]
    t_expl = timed(lambda: SAL(net, x, y), 5)[0]
    e_fwd = t_expl / t_fwd
    vox = "x".join(str(v) for v in shape)
    print(
        f"\n== volume: small_cnn3d, N={n}, 1x{vox}, {bs} volumes per model call; one forward of the N volumes = "
        f"{t_fwd * 1e3:.2f} ms, one saliency explanation = {t_expl * 1e3:.2f} ms ({e_fwd:.1f} forwards)"
    )
    print(f"{'metric or method':40s} {'ours s':>9s} {'passes':>8s} {'floor s':>9s} {'ours/floor':>10s}")
    floors = []
    for kind, name, hp in [("metric", n_, h) for n_, h in VOLUME_METRICS] + [
        ("method", n_, h) for n_, h in VOLUME_METHODS
    ]:
        if only and name not in only:
            continue
        if kind == "metric":
            takes_bs = "batch_size" in evaluate.get(name).hparams
            metric = evaluate.get(name, **hp, **({"batch_size": bs} if takes_bs else {}))
            metric(net, x[:2], y[:2], a[:2], mask=None, explainer=SAL)  # one-time costs (imports) before timing
            with models.count_passes(net) as counted:
                t_ours, runs = timed(lambda metric=metric: metric(net, x, y, a, mask=None, explainer=SAL))
            p = passes(metric, (1, *shape), SAL, net)
            if "explainer" not in metric.needs:
                p = counted.rows / runs / n  # IROF's passes depend on the supervoxels found
            floor = passes(metric, (1, *shape), _ExplainerCost(e_fwd), net) if "explainer" in metric.needs else p
        else:
            method = explain.get(name, batch_size=bs, **hp)
            method(net, x[:2], y[:2])  # one-time costs (scikit-learn's import: 1.9 s) before timing
            t_ours, _ = timed(lambda method=method: method(net, x, y))
            p = floor = method.passes((1, *shape), net)
        floor_s, _ = timed(lambda floor=floor: reference_passes(net, x, floor, bs))
        floors.append(t_ours / floor_s)
        print(f"{name:40s} {t_ours:9.4f} {p:8.0f} {floor_s:9.4f} {t_ours / floor_s:10.2f}", flush=True)
    print(
        f"{'ours / floor':40s} largest {max(floors):.2f}, {sum(f <= 1.3 for f in floors)} of {len(floors)} within 1.3x"
    )


#: the ViT setting: (method, settings, floor unit) with the unit "forward" or "backward"
VIT_METHODS = [
    ("attention_rollout", {}, "forward"),
    ("generic_attention", {}, "backward"),
    ("attn_lrp", {}, "backward"),
    ("saliency", {}, "backward"),
    ("integrated_gradients", {"n_steps": 16}, "backward"),
    ("gradcam", {}, "backward"),
    ("layercam", {}, "backward"),
    ("eigencam", {}, "forward"),
    ("scorecam", {}, "forward"),
    ("ablationcam", {}, "forward"),
    ("occlusion", {"window": 8, "stride": 8}, "forward"),
]


def run_vit(n: int, only: set[str] | None, bs: int):
    """A small timm ViT: every transformer-capable method against its pass floor."""
    torch.manual_seed(0)
    spec = "timm:vit_tiny_patch16_224,img_size=32,patch_size=4,depth=4,embed_dim=96,num_heads=3"
    net = models.load(spec, num_classes=2, in_channels=3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.arange(n) % 2
    sal = explain.get("saliency", batch_size=bs)
    models.forward(net, x, batch_size=bs)
    t_fwd = timed(lambda: models.forward(net, x, batch_size=bs), 5)[0]
    t_bwd = timed(lambda: sal(net, x, y), 5)[0]
    print(
        f"\n== vit: {spec}, N={n}, 3x32x32, {bs} images per model call; one forward of the N images = "
        f"{t_fwd * 1e3:.2f} ms, one forward + backward = {t_bwd * 1e3:.2f} ms"
    )
    print(f"{'method':40s} {'ours s':>9s} {'passes':>8s} {'floor s':>9s} {'ours/floor':>10s}")
    ratios = []
    for name, hp, unit in VIT_METHODS:
        if only and name not in only:
            continue
        method = explain.get(name, batch_size=bs, **hp)
        t_ours, _ = timed(lambda method=method: method(net, x, y))
        p = method.passes((3, 32, 32), net)
        floor_s = p * (t_fwd if unit == "forward" else t_bwd)
        ratios.append(t_ours / floor_s)
        print(f"{name:40s} {t_ours:9.4f} {p:8.0f} {floor_s:9.4f} {t_ours / floor_s:10.2f}", flush=True)
    print(
        f"{'ours / floor':40s} largest {max(ratios):.2f}, {sum(r <= 1.3 for r in ratios)} of {len(ratios)} within 1.3x"
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="N=64 for the small_cnn setting, N=16 for volumes")
    ap.add_argument("--setting", default="both", choices=("tiny", "small", "volume", "vit", "both", "all"))
    ap.add_argument("--only", default="", help="comma-separated metric names")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = stable timings on a shared machine)")
    ap.add_argument("--batch-size", type=int, default=0, help="images per model call (default: 1024 tiny, 16 small)")
    args = ap.parse_args()
    keep_heap()  # as the xaiscope command does (see xaiscope.allocator)
    torch.set_num_threads(args.threads)
    only = set(filter(None, args.only.split(","))) or None
    if args.setting in ("tiny", "both", "all"):
        run("tiny", 64, 16, only, args.batch_size or 1024)
    if args.setting in ("small", "both", "all"):
        run("small", 64 if args.quick else 256, 64, only, args.batch_size or 16)
    if args.setting in ("volume", "all"):
        run_volume(16 if args.quick else 32, (24, 28, 24), only, args.batch_size or 8)
    if args.setting in ("vit", "all"):
        run_vit(16 if args.quick else 32, only, args.batch_size or 32)


if __name__ == "__main__":
    main()
