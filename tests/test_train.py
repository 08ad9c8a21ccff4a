"""Training loop: reproducibility, freezing, learning, and the weights + sidecar round trip."""

from __future__ import annotations

import json

import pytest
import torch

from xaiscope import models
from xaiscope.data import Dataset
from xaiscope.errors import ConfigError, ModelError
from xaiscope.models.train import TrainResult, augment_batch, init_model, save, train


def _toy(n: int = 96, size: int = 16, seed: int = 0) -> Dataset:
    """Class 1 has a bright blob in the top half, class 0 in the bottom half."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 1, size, size, generator=g)
    y = torch.arange(n) % 2
    rows = torch.randint(2, size // 2 - 2, (n,), generator=g)
    rows = torch.where(y == 1, rows, rows + size // 2)
    cols = torch.randint(2, size - 2, (n,), generator=g)
    for i in range(n):
        x[i, 0, rows[i] - 1 : rows[i] + 2, cols[i] - 1 : cols[i] + 2] += 2.0
    return Dataset(x=x, y=y, ids=[f"{int(c)}/{i}" for i, c in enumerate(y)], classes=["0", "1"])


def _fit(seed=0, **kw):
    model = init_model("small_cnn", seed=seed, in_channels=1, num_classes=2, width=4)
    return train(model, _toy(), test=_toy(seed=1), epochs=kw.pop("epochs", 2), seed=seed, progress=False, **kw)


def test_same_seed_gives_identical_weights_and_history():
    a, b = _fit(seed=3), _fit(seed=3)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert a.history == b.history


def test_different_seed_gives_different_weights():
    a, b = _fit(seed=0), _fit(seed=1)
    assert not torch.equal(a.model.classifier.weight, b.model.classifier.weight)


def test_result_fields_and_history():
    res = _fit(epochs=3)
    assert isinstance(res, TrainResult)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert set(res.history[0]) == {"epoch", "loss", "train_acc", "test_acc"}
    assert res.test_acc == res.history[-1]["test_acc"]
    assert 0 <= res.train_acc <= 1 and res.seconds > 0
    assert res.settings["epochs"] == 3 and res.settings["seed"] == 0
    assert not res.model.training


def test_learns_an_easy_task():
    res = _fit(epochs=25, lr=3e-3)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert res.test_acc >= 0.9


def test_freeze_keeps_parameters_and_batchnorm_statistics():
    model = init_model("small_vgg", seed=0, in_channels=1, num_classes=2, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, _toy(), epochs=1, freeze=["features.0", "features.1"], progress=False)
    after = model.state_dict()
    for k in before:
        if k.startswith(("features.0.", "features.1.")):
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["features.2.0.weight"], after["features.2.0.weight"])
    assert not torch.equal(before["features.2.1.running_mean"], after["features.2.1.running_mean"])


def test_augment_is_seeded_and_shape_preserving():
    x = torch.randn(8, 1, 6, 6)
    a = augment_batch(x, torch.Generator().manual_seed(0))
    b = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    assert torch.allclose(a.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))
    _fit(augment=True)  # runs


def test_errors():
    model = init_model("small_cnn", in_channels=1, num_classes=2, width=4)
    with pytest.raises(ConfigError, match="no module 'features.9'"):
        train(model, _toy(), freeze=["features.9"], progress=False)
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        train(model, _toy(), epochs=0, progress=False)
    with pytest.raises(ConfigError, match="lr must be positive"):
        train(model, _toy(), lr=0, progress=False)
    ds = _toy()
    ds.y[0] = 4
    ds.classes = ["a", "b", "c", "d", "e"]
    with pytest.raises(ModelError, match="5 classes"):
        train(model, ds, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="Every parameter"):
        train(model, _toy(), freeze=["features", "classifier"], progress=False)


def test_save_and_load_round_trip(tmp_path):
    res = _fit()
    path = save(
        res.model,
        tmp_path / "m.pt",
        arch="small_cnn",
        arch_kwargs={"in_channels": 1, "num_classes": 2, "width": 4},
        classes=["0", "1"],
        input_size=[1, 16, 16],
        normalisation={"mean": [0.5], "std": [0.25]},
        extra={"test_acc": res.test_acc},
    )
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["arch"] == "small_cnn"
    assert side["arch_kwargs"] == {"in_channels": 1, "num_classes": 2, "width": 4}
    assert side["classes"] == ["0", "1"] and side["input_size"] == [1, 16, 16]
    assert side["normalisation"] == {"mean": [0.5], "std": [0.25]}
    assert side["extra"]["test_acc"] == res.test_acc
    loaded = models.load(str(path))
    x = _toy(8).x
    assert torch.allclose(loaded(x), res.model(x))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_save_fills_default_arch_kwargs(tmp_path):
    model = init_model("small_cnn", in_channels=1, num_classes=3)
    path = save(
        model,
        tmp_path / "m.pt",
        arch="small_cnn",
        arch_kwargs={},
        classes=["a", "b", "c"],
        input_size=[1, 8, 8],
        normalisation=None,
    )
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["arch_kwargs"] == {"in_channels": 1, "num_classes": 3, "width": 16}
    assert side["normalisation"] is None
    models.load(str(path))
    with pytest.raises(ModelError, match="Unknown architecture 'small_cn'"):
        save(
            model,
            tmp_path / "x.pt",
            arch="small_cn",
            arch_kwargs={},
            classes=["a"],
            input_size=[1, 8, 8],
            normalisation=None,
        )


def test_cli_train_on_a_benchmark_folder(tmp_path, capsys):
    from xaiscope.cli import main
    from xaiscope.data import load_folder
    from xaiscope.data.benchmark import generate
    from xaiscope.run.inputs import open_inputs

    generate(tmp_path / "bm", n_train=16, n_test=8, size=32, radius=(0.08, 0.14))
    main(
        [
            "train",
            "--data",
            str(tmp_path / "bm"),
            "--out",
            str(tmp_path / "m" / "model.pt"),
            "--epochs",
            "2",
            "--width",
            "4",
            "--seed",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert "train accuracy" in printed and "test accuracy" in printed and "(8 images)" in printed
    side = json.loads((tmp_path / "m" / "model.json").read_text())
    raw = load_folder(tmp_path / "bm" / "train")
    assert side["classes"] == ["0_regular", "1_irregular"] and side["input_size"] == [1, 32, 32]
    assert side["arch_kwargs"] == {"in_channels": 1, "num_classes": 2, "width": 4}
    assert side["normalisation"]["mean"][0] == pytest.approx(float(raw.x.mean()), abs=1e-5)
    assert side["normalisation"]["std"][0] == pytest.approx(float(raw.x.std()), abs=1e-5)
    assert len(side["extra"]["history"]) == 2 and side["extra"]["settings"]["lr"] == 3e-3
    assert side["extra"]["settings"]["schedule"] == "cosine"
    model, ds, _ = open_inputs(
        str(tmp_path / "m" / "model.pt"), tmp_path / "bm" / "test"
    )  # sidecar normalisation applied
    assert ds.mean == side["normalisation"]["mean"]
    acc = float((model(ds.x).argmax(1) == ds.y).float().mean())
    assert acc == pytest.approx(side["extra"]["test_acc"])
    # same seed again: identical weights
    main(
        [
            "train",
            "--data",
            str(tmp_path / "bm"),
            "--out",
            str(tmp_path / "m2.pt"),
            "--epochs",
            "2",
            "--width",
            "4",
            "--seed",
            "1",
        ]
    )
    a = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "m2.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x.pt")])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path / "bm"), "--out", str(tmp_path / "x.json")])


def test_cosine_schedule_anneals_to_zero_and_is_validated():
    model = init_model("small_cnn", seed=0, in_channels=1, num_classes=2, width=4)
    res = train(model, _toy(), epochs=2, schedule="cosine", progress=False)
    assert res.settings["schedule"] == "cosine"
    a = _fit(seed=2, epochs=2)
    b = train(
        init_model("small_cnn", seed=2, in_channels=1, num_classes=2, width=4),
        _toy(),
        test=_toy(seed=1),
        epochs=2,
        seed=2,
        progress=False,
        schedule="cosine",
    )
    assert not torch.equal(a.model.classifier.weight, b.model.classifier.weight)
    with pytest.raises(ConfigError, match="schedule must be"):
        train(model, _toy(), schedule="step", progress=False)


def test_linear_probe_of_a_timm_backbone_trains_the_head_only_and_loads_back(tmp_path, capsys):
    import json

    import numpy as np
    import pytest
    from PIL import Image

    from cli_helpers import assert_user_error, run_cli
    from xaiscope import models

    pytest.importorskip("timm")
    rng = np.random.default_rng(0)
    for c, shift in (("a", 0), ("b", 90)):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(8):
            img = np.clip(rng.normal(80 + shift, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "d" / c / f"{i}.png")
    spec = "timm:vit_tiny_patch16_224,img_size=16,patch_size=4,depth=1,embed_dim=12,num_heads=2"
    backbone = models.load(spec, num_classes=0, in_channels=3, seed=5)  # a foundation model: no head
    torch.save(backbone.state_dict(), tmp_path / "backbone.pt")
    out = tmp_path / "probe.pt"
    args = ["train", "--data", tmp_path / "d", "--out", out, "--arch", spec, "--epochs", "3", "--lr", "0.05"]
    r = run_cli(capsys, *args, "--weights", tmp_path / "backbone.pt", "--freeze-backbone")
    assert r.code == 0, r.out
    trained = torch.load(out, weights_only=True)
    for k, v in backbone.state_dict().items():
        assert torch.equal(trained[k], v), k  # the backbone is untouched
    assert set(trained) - set(backbone.state_dict()) == {"head.weight", "head.bias"}
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["arch"] == spec and info["extra"]["settings"]["freeze_backbone"] is True
    model = models.load(str(out))  # loads like any trained model
    x = torch.rand(2, 3, 16, 16)
    fresh = models.load(spec, num_classes=2, in_channels=3)
    fresh.load_state_dict(trained)
    torch.testing.assert_close(model(x), fresh.eval()(x))
    other = models.load(
        "timm:vit_tiny_patch16_224,img_size=16,patch_size=4,depth=2,embed_dim=12,num_heads=2",
        num_classes=0,
        in_channels=3,
    )
    torch.save(other.state_dict(), tmp_path / "other.pt")
    r = run_cli(capsys, *args, "--weights", tmp_path / "other.pt", "--freeze-backbone")
    assert_user_error(r, r"The backbone weights in .*other.pt do not fit the model: the checkpoint has blocks.1")
