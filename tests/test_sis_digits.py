"""SIS end to end on a trained digit classifier (scikit-learn's 8x8 digits): every SIS
is sufficient, the SIS of an image are disjoint, pass counts match the docs, and the
``xaiscope sis`` command writes what it promises."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from sis_helpers import digits_model, one_thread  # noqa: F401  (autouse fixture)
from xaiscope.analyses.sis import class_score, cluster, sis_collection
from xaiscope.cli import main
from xaiscope.models import count_passes

TAU = 0.7


@pytest.fixture(scope="module")
def setup():
    model, train_ds, test_ds, acc = digits_model()
    assert acc > 0.75
    mv = train_ds.fill_value()
    with torch.no_grad():
        probs = model(test_ds.x).softmax(1)
    target = int((probs >= TAU).sum(0).argmax())  # the class with the most confident decisions
    idx = (probs[:, target] >= TAU).nonzero().flatten()[:6]
    return model, test_ds, mv, target, idx


def check_collection(f, x, mv, col, tau):
    used = torch.zeros(x.shape[1:], dtype=torch.bool)
    for s in col:
        assert not (s.mask & used).any(), "SIS of one image are disjoint"
        alone = torch.where(s.mask, x, mv)
        assert float(f(alone[None])) >= tau, "each SIS alone is sufficient"
        used |= s.mask
    rest = torch.where(used, mv, x)
    assert float(f(rest[None])) < tau, "the collection stops when the rest is insufficient"


def test_pixel_sis_on_digits_sufficient_disjoint_one_minimal(setup):
    model, ds, mv, target, idx = setup
    f = class_score(model, target)
    sizes = []
    for i in idx.tolist():
        x = ds.x[i]
        with count_passes(model) as count:
            col = sis_collection(f, x, TAU, mv, unit="pixel", batch_size=128)
        assert len(col) >= 1
        check_collection(f, x, mv, col, TAU)
        for s in col:  # 1-minimal: dropping any one pixel of the SIS falls below tau
            drops = s.mask.expand(s.size, 8, 8).clone()
            drops.view(s.size, -1)[torch.arange(s.size), s.units] = False
            assert (f(torch.where(drops[:, None], x, mv)) < TAU).all()
            sizes.append(s.size)
        # documented cost: 2 + sum_i (U_i (U_i + 1) / 2 + 2), U_i = pixels left for SIS i
        left, expected = 64, 2
        for s in col:
            expected += left * (left + 1) // 2 + 2
            left -= s.size
        assert count.rows == expected
    assert 1 <= min(sizes) and max(sizes) < 32


def test_patch_and_gradient_sis_on_digits(setup):
    model, ds, mv, target, idx = setup
    f = class_score(model, target)
    x = ds.x[int(idx[0])]
    col = sis_collection(f, x, TAU, mv, unit="patch:2")
    assert col and all(s.n_pixels == 4 * s.size for s in col)
    check_collection(f, x, mv, col, TAU)
    with count_passes(model) as count:
        col_g = sis_collection(f, x, TAU, mv, method="gradient", k=4)
    assert col_g
    check_collection(f, x, mv, col_g, TAU)
    left, expected = 64, 2  # per SIS: f(x_rest) + (ceil(U_i / k) + 1) + re-evaluation
    for s in col_g:
        expected += -(-left // 4) + 1 + 2
        left -= s.size
    assert count.rows == expected


def test_clustering_sis_of_digits(setup):
    model, ds, mv, target, idx = setup
    f = class_score(model, target)
    all_sis = []
    for i in idx.tolist():
        for s in sis_collection(f, ds.x[i], TAU, mv):
            s.source = "a" if i % 2 else "b"
            all_sis.append(s)
    res = cluster(all_sis, eps="auto", min_samples=2)
    assert len(res.labels) == len(all_sis) and res.eps > 0
    assert sum(c.size for c in res.clusters) + len(res.noise) == len(all_sis)
    for c in res.clusters:
        assert sum(c.counts.values()) == c.size and sum(c.shares.values()) == pytest.approx(1.0)
        assert c.mean_image.shape == (1, 8, 8)
        members = torch.stack([all_sis[m].image for m in c.members])
        assert torch.allclose(c.mean_image, members.mean(0))


@pytest.fixture(scope="module")
def files(setup, tmp_path_factory):
    from xaiscope.models.train import save

    model, ds, mv, target, idx = setup
    root = tmp_path_factory.mktemp("sis_cli")
    save(
        model,
        root / "cnn_a.pt",
        arch="small_cnn",
        arch_kwargs={"width": 8, "num_classes": 10, "in_channels": 1},
        classes=ds.classes,
        input_size=[1, 8, 8],
        normalisation=None,
    )
    shutil.copy(root / "cnn_a.pt", root / "cnn_b.pt")
    shutil.copy(root / "cnn_a.json", root / "cnn_b.json")
    sub = ds.subset(range(120))
    np.savez(root / "digits.npz", x=sub.x.numpy(), y=sub.y.numpy(), ids=np.array(sub.ids))
    return root, target


def test_cli_sis_end_to_end_two_models(files):
    root, target = files
    out = root / "out"
    main(
        [
            "sis",
            "--model",
            str(root / "cnn_a.pt"),
            "--model",
            str(root / "cnn_b.pt"),
            "--data",
            str(root / "digits.npz"),
            "--class",
            str(target),
            "--tau",
            str(TAU),
            "--out",
            str(out),
            "--max-images",
            "3",
            "--min-samples",
            "2",
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert [m["source"] for m in summary["models"]] == ["cnn_a", "cnn_b"]
    assert summary["models"][0]["n_explained"] == 3 and summary["eps"] > 0
    table = pd.read_csv(out / "sis.csv")
    assert len(table) == summary["n_sis"] == 2 * summary["models"][0]["n_sis"]
    from xaiscope import models as xm

    net = xm.load(str(root / "cnn_a.pt"))
    for npz in sorted((out / "sis" / "cnn_a").glob("*.npz")):
        z = np.load(npz)
        assert (out / "sis" / "cnn_a" / (npz.stem + ".png")).exists()
        assert z["masks"].shape[1:] == (8, 8) and int(z["target"]) == target
        assert not (z["masks"].sum(0) > 1).any()  # disjoint
        with torch.no_grad():
            p = net(torch.from_numpy(z["sis_images"])).softmax(1)[:, target]
        assert (p >= TAU).all() and np.allclose(p.numpy(), z["values"], atol=1e-5)
    clusters = json.loads((out / "clusters.json").read_text())
    assert len(clusters["members"]) == summary["n_sis"]
    # Two copies of one model give identical SIS, so every cluster is shared half and half.
    for c in clusters["clusters"]:
        assert c["shares"] == {"cnn_a": 0.5, "cnn_b": 0.5}
    assert (out / "cluster_means.png").stat().st_size > 0
    assert (out / "clusters.csv").exists() and (out / "cluster_means.npz").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tau", "1.5"], "tau must lie in (0, 1]"),
        (["--tau", "0"], "tau must lie in (0, 1]"),
        (["--unit", "hex"], "Unknown unit 'hex'"),
        (["--unit", "patch:20"], "larger than the 8x8 image"),
        (["--class", "12"], "--class 12 is out of range: the model"),
        (["--eps", "-1"], "--eps must be a positive number or 'auto'"),
        (["--method", "random"], "Unknown --method 'random'"),
    ],
)
def test_cli_sis_bad_input_exits_2(files, args, message, capsys):
    root, target = files
    base = {
        "--model": str(root / "cnn_a.pt"),
        "--data": str(root / "digits.npz"),
        "--class": str(target),
        "--out": str(root / "bad"),
        "--max-images": "1",
    }
    for a, v in zip(args[::2], args[1::2]):
        base[a] = v
    with pytest.raises(SystemExit) as e:
        main(["sis", *[t for kv in base.items() for t in kv]])
    assert e.value.code == 2
    assert message in " ".join(capsys.readouterr().err.split())
