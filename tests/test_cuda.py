"""The whole streaming pipeline on a GPU: the same scores as on the CPU within 1e-5 (relative).
Skipped on a machine without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

METHODS = ["saliency", "integrated_gradients", "gradcam", "occlusion"]
METRICS = ["sparseness", "deletion", "pointing_game", "relevance_mass_accuracy", "sufficiency", "max_sensitivity"]


def test_evaluate_on_cuda_equals_the_cpu(tmp_path):
    from test_sources import Net, make_arrays, write_folder
    from xaiscope.api import evaluate_images

    x, y, masks = make_arrays()
    folder = write_folder(tmp_path / "f", x, y, masks)
    kw = dict(methods=METHODS, metrics=METRICS, params={"deletion": {"steps": 8}}, images_per_step=5)
    cpu = evaluate_images(Net(), str(folder), device="cpu", **kw)
    gpu = evaluate_images(Net(), str(folder), device="cuda", **kw)
    assert list(cpu["image_id"]) == list(gpu["image_id"]) and list(cpu["metric"]) == list(gpu["metric"])
    a, b = cpu["value"].to_numpy(), gpu["value"].to_numpy()
    same_nan = np.isnan(a) == np.isnan(b)
    assert same_nan.all()
    ok = ~np.isnan(a)
    # max_sensitivity draws its noise on the device: other numbers, the same order of magnitude
    det = ok & (cpu["metric"] != "max_sensitivity").to_numpy()
    np.testing.assert_allclose(b[det], a[det], rtol=1e-5, atol=1e-6)
