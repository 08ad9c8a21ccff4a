"""The ``xaiscope transfer`` job: the pre-training study, written as tables and a plot."""

from __future__ import annotations

import json
from pathlib import Path

from xaiscope import data as xdata
from xaiscope.commands.train_job import read_pair, resolve_splits
from xaiscope.errors import ConfigError, DataError
from xaiscope.io import ensure_dir, write_json, write_parquet, write_text


def parse_pretrain(items: list[str] | None) -> list[tuple[str, Path]]:
    """``["rule=DIR", "DIR2"]`` -> ``[("rule", DIR), ("DIR2's name", DIR2)]``."""
    out = []
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        if not name or not path:
            raise ConfigError(f"--pretrain-data {item!r} must be DIR or NAME=DIR.")
        out.append((name, Path(path)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"--pretrain-data names must be unique; got {', '.join(names)}.")
    return out


def auto_sources(data: Path) -> dict[str, dict]:
    """Settings of two pre-training tasks derived from the target benchmark.

    Images: another background family and another lesion rule. Volumes (a ``--3d``
    benchmark): lesions placed in another tissue (``gm_wm`` instead of ``wm`` or back), and
    a shortcut task where every class-1 volume carries the corner confounder, so the study
    asks whether pre-training on a confounded cohort spoils localisation after fine-tuning.
    """
    info_path = Path(data) / "benchmark.json"
    if not info_path.exists():
        raise ConfigError(f"{data} is not a benchmark folder (no benchmark.json); give --pretrain-data DIR.")
    params = dict(json.loads(info_path.read_text())["params"])
    params["n_test"] = 0
    if is_volume_benchmark(params):
        other_tissue = "gm_wm" if params["tissue"] == "wm" else "wm"
        return {
            f"tissue_{other_tissue}": {**params, "tissue": other_tissue, "seed": params["seed"] + 101},
            "confounded": {**params, "confounder_rate": 1.0, "seed": params["seed"] + 202},
        }
    params["annotators"] = 0  # pre-training needs no synthetic annotators
    other_bg = "cell" if params["background"] != "cell" else "retina"
    other_rule = "size" if params["rule"] == "shape" else "shape"
    return {
        f"background_{other_bg}": {**params, "background": other_bg, "seed": params["seed"] + 101},
        f"rule_{other_rule}": {**params, "rule": other_rule, "seed": params["seed"] + 202},
    }


def is_volume_benchmark(params: dict) -> bool:
    """Whether benchmark settings describe the 3D benchmark (they name a tissue, not a background)."""
    return "tissue" in params and "background" not in params


def _read_source(path: Path) -> xdata.Dataset:
    path, _ = resolve_splits(path, None)
    return (
        xdata.load_folder(path, normalise="dataset", masks="none")
        if path.suffix != ".npz"
        else xdata.load_npz(path, normalise="dataset")
    )


def run_transfer(
    *,
    data: Path,
    out: Path,
    pretrain_data: list[str] | None = None,
    arch: str = "small_vgg",
    freeze: list[int] | None = None,
    seeds: int = 3,
    methods: list[str] = ("saliency", "integrated_gradients", "gradcam"),
    metrics: list[str] | None = None,
    epochs: int = 10,
    pretrain_epochs: int = 10,
    lr: float = 3e-3,
    batch_size: int = 32,
    width: int = 16,
    max_images: int = 100,
    test: Path | None = None,
    device: str = "cpu",
    console=None,
) -> dict:
    """Run the study and write ``runs.csv``/``runs.parquet``, ``effects.csv``/``effects.parquet``, ``transfer.png``, ``summary.json``."""
    from xaiscope.analyses.transfer import DEFAULT_METRICS, check_blocks, plot_transfer, transfer_study
    from xaiscope.plotting import save_figure
    from xaiscope.run.inputs import resolve_device

    check_blocks(arch, freeze or [], width)  # before any data is read or generated
    dev = resolve_device(device)
    train_ds, test_ds = read_pair(Path(data), test, masks="auto")
    if test_ds is None:
        raise DataError(f"No test data: give --test DIR or a benchmark folder with test/ as --data ({data}).")
    sources: dict[str, xdata.Dataset] = {}
    described: dict[str, str] = {}
    pairs = parse_pretrain(pretrain_data)
    if pairs:
        for name, path in pairs:
            sources[name] = _read_source(path)
            described[name] = str(path)
    else:
        from xaiscope.data.benchmark import make_dataset, make_dataset_3d
        from xaiscope.data.readers import normalise_dataset

        for name, params in auto_sources(Path(data)).items():
            volumes = is_volume_benchmark(params)
            ds, _ = (make_dataset_3d if volumes else make_dataset)(**params)
            sources[name] = normalise_dataset(ds, "dataset")
            keys = ("tissue", "confounder_rate") if volumes else ("background", "rule")
            described[name] = f"generated: {json.dumps({k: params[k] for k in (*keys, 'seed', 'n_train')})}"

    ensure_dir(out)
    say = (lambda text: console.print(text)) if console is not None else None
    res = transfer_study(
        train_ds,
        test_ds,
        sources,
        arch=arch,
        freeze=freeze,
        seeds=seeds,
        methods=methods,
        metrics=metrics or DEFAULT_METRICS,
        epochs=epochs,
        pretrain_epochs=pretrain_epochs,
        lr=lr,
        batch_size=batch_size,
        width=width,
        max_images=max_images,
        device=dev,
        progress=say,
    )
    for name, df in (("runs", res.runs), ("effects", res.effects)):
        write_text(out / f"{name}.csv", df.to_csv(index=False))
        write_parquet(out / f"{name}.parquet", df)
    fig = plot_transfer(res)
    save_figure(fig, out / "transfer.png", dpi=120)
    summary = {
        "settings": res.settings,
        "data": str(train_ds.source),
        "test": str(test_ds.source),
        "sources": described,
        "fingerprints": {
            "data": train_ds.fingerprint(),
            "test": test_ds.fingerprint(),
            "sources": {name: ds.fingerprint() for name, ds in sources.items()},
        },
        "n_runs": int(res.runs[["source", "frozen_blocks", "seed"]].drop_duplicates().shape[0]),
        "files": ["runs.csv", "runs.parquet", "effects.csv", "effects.parquet", "transfer.png"],
    }
    write_json(out / "summary.json", summary)
    if console is not None:
        acc = res.runs.groupby(["source", "frozen_blocks"])["test_acc"].mean()
        for (source, L), a in acc.items():
            console.print(f"{source:>24} L={L}: mean test accuracy {a:.3f}")
        eff = res.effects[~res.effects["term"].isin(["intercept", "test_acc"])]
        for _, r in eff.iterrows():
            console.print(
                f"{r['method']} / {r['metric']}: {r['term']} {r['coef']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
            )
        console.print(f"wrote {out}")
    return summary
