"""A whole evaluation suite against its floors: what sharing passes across metrics buys.

The suite is every metric that applies without masks (no localisation, no set-level
metric) for saliency, integrated gradients and Grad-CAM, scored as ``xaiscope evaluate``
scores a step: the three maps first, then every metric of every method in one
shared-passes block (:mod:`xaiscope.evaluate.sharing`). Two settings:

- ``small``: ``small_cnn`` (random weights) on 3x64x64 images, N = 8;
- ``digits``: a LeNet-sized CNN (conv 6@5x5, pool, conv 16@5x5, pool, 120, 84, 10;
  random weights) on scikit-learn's 8x8 digits upsampled to 1x28x28, N = 16.

Printed per setting: the sum of the per-metric floors (each metric alone: its model
passes with ``E`` in forwards, ``E = t_E / t_f``, times ``t_f``, the seconds per image of
one forward in full calls), the suite's own floor after sharing (the passes another
metric pays for taken off), the measured suite time, and the pass plan's estimate
(:func:`xaiscope.evaluate.plan.pass_plan`, probed on 4 images) against the measured time.
The explanations themselves are computed before the timing and are in none of the numbers.

Settings are the defaults except the sample counts, scaled down so a setting takes
minutes on two cores: the robustness metrics ``nr_samples`` 50 (default 200), smooth MPRT
``nr_samples`` 10 (50), ``monotonicity_correlation`` ``nr_samples`` 5 (100; at
``features_in_step`` 1 a 64x64 image needs 409,600 passes with the default).

    python benchmarks/bench_suite.py [--setting small|digits|both] [--images N] [--batch-size B]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from xaiscope import evaluate, explain
from xaiscope.allocator import keep_heap
from xaiscope.evaluate.plan import duration, pass_plan
from xaiscope.evaluate.sharing import shared_passes
from xaiscope.models import build
from xaiscope.run.units import metric_instance

METHODS = {"saliency": {}, "integrated_gradients": {}, "gradcam": {}}
LIGHT = {
    **{
        n: {"nr_samples": 50}
        for n in (
            "max_sensitivity",
            "avg_sensitivity",
            "local_lipschitz",
            "relative_input_stability",
            "relative_output_stability",
            "relative_representation_stability",
        )
    },
    "smooth_model_parameter_randomisation": {"nr_samples": 10},
    "monotonicity_correlation": {"nr_samples": 5},
}


class LeNet(nn.Module):
    """LeCun et al. 1998's layout for 1x28x28 inputs (padding 2 on the first convolution)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def setting(name: str, n: int):
    """``(model, images, targets)`` of a setting."""
    torch.manual_seed(0)
    if name == "small":
        g = torch.Generator().manual_seed(0)
        return (
            build("small_cnn", in_channels=3, num_classes=2).eval(),
            torch.rand(n, 3, 64, 64, generator=g),
            torch.arange(n) % 2,
        )
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    return LeNet().eval(), x, torch.as_tensor(d.target[:n]).long()


def suite(batch_size: int):
    names = [
        n for n in evaluate.names() if "mask" not in evaluate.get_class(n).needs and not evaluate.get_class(n).set_level
    ]
    return [metric_instance(n, LIGHT.get(n, {}), batch_size, 0) for n in names]


def run_setting(name: str, n: int, batch_size: int) -> dict:
    model, x, y = setting(name, n)
    metrics = suite(batch_size)
    explainers = [explain.get(m, batch_size=batch_size, **hp) for m, hp in METHODS.items()]
    plan = pass_plan(model, x[:4], y[:4], explainers, metrics, n_images=n, batch_size=batch_size)
    maps = [ex(model, x, y) for ex in explainers]
    t0 = time.perf_counter()
    with shared_passes(metrics) as scope:
        for ex, a in zip(explainers, maps):
            for m in metrics:
                m(model, x, y, a, explainer=ex)
    measured = time.perf_counter() - t0
    floors = sum(c.floor for c in plan.cells)
    shared = sum(c.shared_floor for c in plan.cells)
    estimate = sum(c.seconds for c in plan.cells)
    print(f"\n{name}: {len(explainers)} methods x {len(metrics)} metrics on {n} images of {tuple(x.shape[1:])}")
    print(f"  passes per image: {plan.passes - sum(plan.method_passes.values()):,.0f} alone, {plan.saved:,.0f} shared")
    print(f"  images not sent to the model by sharing (counted): {scope.saved:,}")
    print(f"  sum of per-metric floors   {duration(floors):>12}")
    print(f"  suite floor after sharing  {duration(shared):>12}  ({shared / floors:.2f} of the sum)")
    print(
        f"  measured suite             {duration(measured):>12}  ({measured / floors:.2f} of the sum, {measured / shared:.2f} of its floor)"
    )
    print(f"  plan's estimate            {duration(estimate):>12}  (estimate / measured = {estimate / measured:.2f})")
    return {"floors": floors, "shared": shared, "measured": measured, "estimate": estimate}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="both", choices=("small", "digits", "both"))
    p.add_argument("--images", type=int, default=0, help="images (default: 8 for small, 16 for digits)")
    p.add_argument("--batch-size", type=int, default=16, help="images per model call")
    args = p.parse_args()
    keep_heap()
    torch.set_num_threads(1)
    for name in ("small", "digits") if args.setting == "both" else (args.setting,):
        run_setting(name, args.images or {"small": 8, "digits": 16}[name], args.batch_size)


if __name__ == "__main__":
    main()
