"""Activation maximisation (Yosinski et al. 2015) on the trained digit classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sis_helpers import digits_model, one_thread  # noqa: F401  (autouse fixture)
from xaiscope.analyses.actmax import visualize
from xaiscope.cli import main
from xaiscope.errors import ConfigError
from xaiscope.models import count_passes


@pytest.fixture(scope="module")
def model():
    return digits_model()[0]


@pytest.mark.parametrize("target", [0, 3, 8])
def test_raises_class_score_and_stays_in_range(model, target):
    with count_passes(model) as count:
        r = visualize(model, target, shape=(1, 8, 8), steps=120, seed=0)
    assert count.rows == 121 == r.passes  # steps forward+backward, + 1 final forward
    assert len(r.objective) == 121 and len(r.probability) == 121
    assert r.final > r.start + 5.0  # logit raised well above its start
    assert r.probability[-1] > 0.95 > r.probability[0]
    assert r.image.min() >= 0.0 and r.image.max() <= 1.0
    with torch.no_grad():
        logits = model(r.image[None])
    assert int(logits.argmax()) == target
    assert float(logits[0, target]) == pytest.approx(r.final, abs=1e-4)


def test_same_seed_same_image_other_seed_other_image(model):
    a = visualize(model, 5, shape=(1, 8, 8), steps=30, seed=3)
    b = visualize(model, 5, shape=(1, 8, 8), steps=30, seed=3)
    c = visualize(model, 5, shape=(1, 8, 8), steps=30, seed=4)
    assert torch.equal(a.image, b.image) and a.objective == b.objective
    assert not torch.equal(a.image, c.image)


def test_layer_channel_objective(model):
    r = visualize(model, None, shape=(1, 8, 8), steps=60, layer="features.6", channel=2, seed=1)
    assert r.final > r.start + 1.0
    acts = {}
    h = model.features[6].register_forward_hook(lambda m, a, o: acts.update(a=o))
    with torch.no_grad():
        model(r.image[None])
    h.remove()
    assert float(acts["a"][0, 2].mean()) == pytest.approx(r.final, abs=1e-4)
    assert r.probability is None


def test_regularisers(model):
    # Small-norm clipping at the 50th percentile blanks (sets to the center 0) at least half the pixels.
    r = visualize(model, 2, shape=(1, 8, 8), steps=20, norm_clip_pct=50, blur_every=0)
    assert (r.image == 0).float().mean() >= 0.5
    r = visualize(model, 2, shape=(1, 8, 8), steps=20, contrib_clip_pct=75, blur_every=0)
    assert (r.image == 0).float().mean() >= 0.75
    # Per-channel range and center: values stay inside [-1, 0.5].
    r = visualize(model, 2, shape=(1, 8, 8), steps=20, clip_range=(-1.0, 0.5), center=-0.2)
    assert r.image.min() >= -1.0 and r.image.max() <= 0.5
    # Strong decay with no ascent pulls everything to the center.
    r = visualize(model, 2, shape=(1, 8, 8), steps=5, lr=1e-9, l2_decay=0.999, blur_every=0, center=0.25)
    assert torch.allclose(r.image, torch.full_like(r.image, 0.25), atol=1e-3)
    # The model is left as it was found.
    assert not model.training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": 10}, "Class 10 is out of range: the model has 10 outputs"),
        ({"target": -1}, "non-negative integer"),
        ({"target": 1, "steps": 0}, "steps must be a positive integer"),
        ({"target": 1, "l2_decay": 1.0}, "l2_decay must lie in [0, 1)"),
        ({"target": 1, "norm_clip_pct": 100}, "norm_clip_pct must be a percentile"),
        ({"target": 1, "clip_range": (1.0, 0.0)}, "low < high"),
        ({"target": None, "layer": "features.66"}, "no layer 'features.66' (did you mean 'features.6'?)"),
        ({"target": None, "layer": "features.6", "channel": 99}, "channel 99 is out of range"),
        ({"target": 1, "shape": (1, 8)}, "shape must be three positive integers"),
    ],
)
def test_bad_settings(model, kwargs, message):
    kw = {"shape": (1, 8, 8), "steps": 2, **kwargs}
    target = kw.pop("target")
    with pytest.raises(ConfigError) as e:
        visualize(model, target, **kw)
    assert message in str(e.value)


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    from xaiscope.models.train import save

    root = tmp_path_factory.mktemp("actmax")
    save(
        model,
        root / "cnn.pt",
        arch="small_cnn",
        arch_kwargs={"width": 8, "num_classes": 10, "in_channels": 1},
        classes=[str(i) for i in range(10)],
        input_size=[1, 8, 8],
        normalisation=None,
    )
    return root


def test_cli_actmax(weights):
    out = weights / "out"
    main(["actmax", "--model", str(weights / "cnn.pt"), "--class", "4", "--out", str(out), "--steps", "80"])
    img = np.load(out / "class_4.npy")
    rec = json.loads((out / "class_4.json").read_text())
    assert img.shape == (1, 8, 8) and img.min() >= 0 and img.max() <= 1
    assert len(rec["objective"]) == 81 and rec["final"] > rec["start"] + 5 and rec["passes"] == 81
    assert rec["params"]["shape"] == [1, 8, 8] and rec["params"]["seed"] == 0
    assert (out / "class_4.png").exists() and (out / "class_4_trajectory.png").exists()
    # --shape overrides the sidecar; same seed, same image.
    main(
        [
            "actmax",
            "--model",
            str(weights / "cnn.pt"),
            "--class",
            "4",
            "--out",
            str(weights / "out2"),
            "--steps",
            "80",
            "--shape",
            "1,8,8",
        ]
    )
    assert np.array_equal(np.load(weights / "out2" / "class_4.npy"), img)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--class", "10"], "--class 10 is out of range"),
        (["--class", "1", "--shape", "1,8"], "--shape must be 3 comma-separated"),
        (["--class", "1", "--range", "1,0"], "--range must have LOW < HIGH"),
        (["--class", "1", "--norm-clip-pct", "150"], "norm_clip_pct must be a percentile"),
        ([], "Give --class K"),
    ],
)
def test_cli_actmax_bad_input_exits_2(weights, args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["actmax", "--model", str(weights / "cnn.pt"), "--out", str(weights / "bad"), "--steps", "2", *args])
    assert e.value.code == 2
    assert message in " ".join(capsys.readouterr().err.split())
