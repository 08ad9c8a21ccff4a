"""``xaiscope demo``: the whole product on built-in data, start to finish.

1. generate the ground-truth lesion benchmark on scikit-image's retina image, and an
   aligned variant (lesions in class-specific regions);
2. train ``small_cnn`` with three seeds (a model collection; seed 0 is the main model) and
   one model on the aligned variant;
3. run every attribution method with small settings, a metric set covering every
   category, hyperparameter grids for the sensitivity study, the ranking, global maps +
   PEPPR on the aligned variant, the variability study over the three seeds and SIS on
   a few images;
4. (the CLI) write the report and print its path.

``quick=True`` shrinks every size so the whole demo takes well under a minute. Running
the demo again keeps what is finished and recomputes whatever no longer matches its
inputs (``refresh``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xaiscope.io import ensure_dir, write_text


@dataclass(frozen=True)
class DemoSize:
    size: int  # image side
    n_train: int
    n_test: int
    epochs: int  # per seed of the collection (seed 0 is the main model)
    aligned_epochs: int
    images: int  # test images explained and scored
    seeds: int
    sis_images: int
    sis_unit: str
    draws: int  # Dirichlet weightings of the ranking


# The demo's two sizes, one row each (columns in DemoSize's order):
#            size n_train n_test epochs aligned images seeds sis_images sis_unit draws
FULL = DemoSize(64, 2000, 150, 15, 8, 32, 3, 2, "patch:8", 10_000)
QUICK = DemoSize(32, 400, 40, 6, 4, 8, 2, 1, "patch:8", 1_000)  # --quick: the same steps in about a minute


#: small but meaningful settings per method; the first setting is the default of the grid
DEMO_METHODS: list[Any] = [
    "saliency",
    "input_x_gradient",
    {"name": "integrated_gradients", "hparams": {"n_steps": 16}, "grid": {"n_steps": [4, 64]}},
    {"name": "smoothgrad", "hparams": {"n_samples": 8, "sigma": 0.15}, "grid": {"sigma": [0.05, 0.5]}},
    {"name": "vargrad", "hparams": {"n_samples": 8}},
    "deeplift",
    {"name": "deeplift_shap", "hparams": {"n_baselines": 4}},
    {"name": "gradient_shap", "hparams": {"n_samples": 8}},
    "guided_backprop",
    "deconvnet",
    "cam",
    "gradcam",
    "gradcam_plus_plus",
    "guided_gradcam",
    "hirescam",
    "xgradcam",
    "layercam",
    "eigencam",
    "scorecam",
    "ablationcam",
    "fullgrad",
    "lrp_epsilon_plus_flat",
    "lrp_epsilon_gamma_box",
    "lrp_alpha2_beta1_flat",
    {"name": "occlusion", "hparams": {"window": 8, "stride": 8}, "grid": {"window": [16]}},
    {"name": "feature_ablation", "hparams": {"patch": 8}},
    {"name": "lime", "hparams": {"n_samples": 64, "n_segments": 30}},
    {"name": "kernel_shap", "hparams": {"n_samples": 64, "n_segments": 30}},
    "random",
    "sobel",
    "laplace",
    "input",
]

#: at least one metric per category
DEMO_METRICS: list[Any] = [
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "pointing_game",
    "auroc",
    {"name": "deletion", "hparams": {"steps": 10}},
    {"name": "insertion", "hparams": {"steps": 10}},
    {"name": "faithfulness_correlation", "hparams": {"nr_runs": 20, "subset_size": 64}},
    {"name": "max_sensitivity", "hparams": {"nr_samples": 3}},
    "random_logit",
    "sparseness",
    "complexity",
    "completeness",
]


#: the quick demo keeps one metric of each category among the cheap ones
QUICK_METRICS: list[Any] = [
    "relevance_mass_accuracy",
    "pointing_game",
    {"name": "deletion", "hparams": {"steps": 5}},
    {"name": "insertion", "hparams": {"steps": 5}},
    "random_logit",
    "sparseness",
    "completeness",
]


def demo_config(root: Path, size: DemoSize, quick: bool = False) -> dict[str, Any]:
    """The run configuration the demo writes to ``root/config.yaml``."""
    from xaiscope.commands.collection_job import model_path

    model = str(model_path(root / "collection", 0))
    return {
        "out": str(root / "run"),
        "seed": 0,
        "device": "cpu",
        "batch_size": 128,
        "unit_images": 16,
        "data": {"path": str(root / "data" / "test"), "max_images": size.images},
        "models": [{"name": "small_cnn_seed0", "spec": model}],
        "methods": DEMO_METHODS,
        "metrics": QUICK_METRICS if quick else DEMO_METRICS,
        "analyses": {
            "ranking": {"draws": size.draws},
            "sensitivity": {"top_k": 0.1},
            "global": {
                "method": "gradcam",
                "model": str(root / "aligned-model.pt"),
                "data": str(root / "data-aligned" / "test"),
                "fill": "black",
                "random_orders": 3,
                "step": 0.1,
            },
            "variability": {
                "collection": str(root / "collection"),
                "methods": ["gradcam", "lrp_epsilon_plus_flat"],
                "n_boot": 200,
                "pair_images": 32,
            },
            "sis": {"target": 1, "images": size.sis_images, "tau": 0.7, "unit": size.sis_unit},
        },
        "report": {"examples": 6, "title": "xaiscope demo: lesion shape benchmark on a retina background"},
    }


def _model_exists(path: Path) -> bool:
    return path.exists() and path.with_suffix(".json").exists()


def run_demo(out: Path, *, quick: bool = False, console=None) -> Path:
    """Run the demo into ``out``; return the run folder (the CLI then writes its report).
    Finished steps are kept."""
    from xaiscope.commands.benchmark_job import run_benchmark
    from xaiscope.commands.collection_job import run_collection
    from xaiscope.commands.run_job import run
    from xaiscope.commands.train_job import run_train
    from xaiscope.run.config import parse_config
    from xaiscope.run.runner import config_changed

    size = QUICK if quick else FULL
    root = ensure_dir(out)
    say = console.print if console is not None else (lambda *a, **k: None)
    bench = {"n_train": size.n_train, "n_test": size.n_test, "size": size.size, "background": "retina", "seed": 0}
    if not (root / "data" / "benchmark.json").exists():
        say("[bold]1/4[/] generating the lesion benchmark (retina background)")
        run_benchmark(out=root / "data", **bench)
    if not (root / "data-aligned" / "benchmark.json").exists():
        run_benchmark(out=root / "data-aligned", aligned=True, **bench)
    say(f"[bold]2/4[/] training small_cnn with {size.seeds} seeds")
    run_collection(
        data=root / "data" / "train",
        test=root / "data" / "test",
        out=root / "collection",
        arch="small_cnn",
        seeds=list(range(size.seeds)),
        epochs=size.epochs,
        refresh=True,
        console=console,
    )
    aligned_model = root / "aligned-model.pt"
    if not _model_exists(aligned_model):
        run_train(
            data=root / "data-aligned" / "train",
            test=root / "data-aligned" / "test",
            out=aligned_model,
            arch="small_cnn",
            epochs=size.aligned_epochs,
            console=console,
        )
    say("[bold]3/4[/] explaining, scoring and analysing")
    cfg_dict = demo_config(root, size, quick)
    write_text(root / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
    cfg = parse_config(cfg_dict, str(root / "config.yaml"))
    changed = config_changed(cfg)
    run_dir = run(cfg, console=console, force=changed, refresh=not changed)
    return run_dir
