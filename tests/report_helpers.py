"""A tiny real run for the report tests, built once per test session.

``base_run``: what ``xaiscope run`` writes for 8 random 16x16 grey images (one constant,
so some maps are all zero and some metrics return NaN), masks, two classes whose second
name is ``<script>alert(1)</script>``, image ids carrying HTML, four methods plus
integrated gradients with a two-point grid, three metrics, ranking and sensitivity.

``rich_run``: a copy of it with what later analyses add: deletion curves, a skipped image
in the manifest, PNG figures and JSON / CSV / Parquet summaries for global maps, PEPPR,
variability and SIS.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

XSS_CLASS = "<script>alert(1)</script>"
XSS_ID = '<img src=x onerror="window.__xss=1">'
XSS_SKIPPED = "<b>gone</b>"
XSS_FILE = "<i id=xssfile>q"  # HTML in a file name (no '/')


def _png(colour: tuple[float, float, float]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.5, 1.5))
    ax.imshow(np.ones((4, 4, 3)) * np.array(colour))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def build_base(root: Path) -> Path:
    from xaiscope.commands.run_job import run
    from xaiscope.run.config import parse_config

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 16, 16)).astype("float32")
    x[7] = 0.5  # constant image: sobel/input maps are flat -> NaN for some metrics
    masks = np.zeros((8, 16, 16), bool)
    masks[:, 4:10, 4:10] = True
    ids = np.array([f"img{i}" for i in range(7)] + [XSS_ID])
    np.savez(root / "d.npz", x=x, y=np.arange(8) % 2, masks=masks, ids=ids, classes=np.array(["healthy", XSS_CLASS]))
    cfg = parse_config(
        {
            "out": str(root / "run"),
            "data": {"path": str(root / "d.npz")},
            "models": ["small_cnn"],
            "unit_images": 8,
            "methods": [
                "saliency",
                "random",
                "sobel",
                "input",
                {"name": "integrated_gradients", "hparams": {"n_steps": 4}, "grid": {"n_steps": [2]}},
            ],
            "metrics": ["relevance_mass_accuracy", {"name": "deletion", "hparams": {"steps": 4}}, "sparseness"],
            "analyses": {"ranking": {"draws": 200}},
            "report": {"examples": 4, "title": "report test"},
        }
    )
    return run(cfg)


def add_analyses(run: Path) -> Path:
    """Add curves, a skipped image and the optional analyses' outputs to a copy of a run."""
    res = pd.read_parquet(run / "results.parquet")
    rows = []
    for (model, method, setting, image_id), _ in res.groupby(["model", "method", "setting", "image_id"]):
        for step, frac in enumerate(np.linspace(0, 1, 5)):
            rows.append(
                {
                    "image_id": image_id,
                    "model": model,
                    "method": method,
                    "setting": setting,
                    "metric": "deletion",
                    "step": step,
                    "fraction": frac,
                    "value": float(np.exp(-3 * frac) + 0.01 * len(method)),
                }
            )
    pd.DataFrame(rows).to_parquet(run / "curves.parquet", index=False)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["skipped_images"] = {"small_cnn": ["gone-1", XSS_SKIPPED]}  # not in the data: skipped before
    (run / "manifest.json").write_text(json.dumps(manifest))
    fig, an = run / "figures", run / "analyses"
    (an / "global" / "maps").mkdir(parents=True)
    (an / "global" / "maps" / "overall.png").write_bytes(_png((1, 0, 0)))
    (an / "global" / f"peppr_{XSS_FILE}.png").write_bytes(_png((0, 1, 0)))
    pd.DataFrame({"label": ["healthy", XSS_CLASS], "order": ["map", "map"], "area": [0.4, 0.6]}).to_csv(
        an / "global" / "peppr_curves.csv", index=False
    )
    (an / "global" / "summary.json").write_text(
        json.dumps({"score": {"healthy": 0.1, XSS_CLASS: 0.2}, "method": "saliency"})
    )
    fig.mkdir(exist_ok=True)
    (fig / "variability_saliency.png").write_bytes(_png((0, 0, 1)))
    (fig / "variability_broken.png").write_bytes(b"not a png")
    (an / "variability_fits.json").write_text(
        json.dumps({"saliency": {"quadratic": {"r2": 0.5, "coefficients": [1, 2, 3]}}})
    )
    pd.DataFrame({"image_id": ["img0", XSS_ID], "sd": [0.1, 0.2]}).to_parquet(an / "variability.parquet", index=False)
    (an / "sis").mkdir()
    (an / "sis" / "cluster_means.png").write_bytes(_png((1, 1, 0)))
    (an / "sis" / "clusters.json").write_text(json.dumps([{"cluster": 0, "size": 3}, {"cluster": 1, "size": 2}]))
    return run


_CACHE: dict[str, Path] = {}


def runs(tmp_path_factory) -> tuple[Path, Path]:
    """``(base_run, rich_run)``, built once per session (shared by all report test files)."""
    if "base" not in _CACHE:
        root = tmp_path_factory.mktemp("report")
        base = build_base(root)
        rich = root / "rich"
        shutil.copytree(base, rich)
        for stale in ("report.html",):
            (rich / stale).unlink(missing_ok=True)
        _CACHE["base"], _CACHE["rich"] = base, add_analyses(rich)
    return _CACHE["base"], _CACHE["rich"]
