"""Spectral relevance analysis (SpRAy): clusters, eigengap, flags, the confounder metric and the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from cli_helpers import assert_user_error, run_cli
from xaiscope import evaluate
from xaiscope.analyses.spray import SHORTCUT, eigengap_k, features, flag, spray
from xaiscope.errors import ConfigError, MetricError


def two_patterns(n: int = 80, *, two: bool = True, noise: float = 1.0, seed: int = 0):
    """Maps ``[n, 48, 48]``: pattern A (a square top left) or B (a bar bottom right) plus uniform noise."""
    g = torch.Generator().manual_seed(seed)
    p = torch.zeros(2, 48, 48)
    p[0, 4:16, 4:16] = 1.0
    p[1, 30:44, 20:44] = 1.0
    truth = (torch.arange(n) % 2) if two else torch.zeros(n, dtype=torch.long)
    return p[truth] + noise * torch.rand(n, 48, 48, generator=g), truth.numpy()


# --------------------------------------------------------------------------- analysis
def test_two_patterns_are_recovered_and_the_eigengap_proposes_two():
    maps, truth = two_patterns()
    res = spray(maps, seed=0)
    assert res.k_proposed == 2 and res.k == 2
    assert adjusted_rand_score(truth, res.labels) >= 0.9
    assert res.eigenvalues.shape == (10,) and np.all(np.diff(res.eigenvalues) >= -1e-12)
    assert [c.size for c in res.clusters] == [40, 40]
    assert res.embedding.shape == (80, 2) and res.spectral.shape[0] == 80
    for c in res.clusters:  # prototypes are members, most typical first, and the mean map sums to one
        assert set(c.prototypes.tolist()) <= set(c.members.tolist()) and len(c.prototypes) == 4
        assert math.isclose(float(c.mean_map.sum()), 1.0, rel_tol=1e-5)


def test_one_pattern_gives_one_cluster():
    maps, _ = two_patterns(two=False)
    res = spray(maps, seed=0)
    assert res.k_proposed == 1 and res.k == 1 and (res.labels == 0).all()


def test_k_can_be_fixed_and_channels_are_summed():
    maps, truth = two_patterns(60)
    res = spray(maps.unsqueeze(1).expand(-1, 3, -1, -1) / 3, k=3, embedding="none", seed=0)
    assert res.k == 3 and res.k_proposed == 2 and res.embedding is None
    assert len(np.unique(res.labels)) == 3


def test_same_seed_same_result():
    maps, _ = two_patterns(60, noise=2.0, seed=3)
    a, b = spray(maps, seed=5), spray(maps, seed=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.embedding, b.embedding)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    assert [c.prototypes.tolist() for c in a.clusters] == [c.prototypes.tolist() for c in b.clusters]


def test_features_are_pooled_absolute_and_sum_to_one():
    m = torch.zeros(2, 1, 8, 8)
    m[0, 0, :4, :4] = -2.0  # all in the top-left cell of a 2 x 2 grid
    f = features(m, grid=2)
    assert f.shape == (2, 2, 2)
    torch.testing.assert_close(f[0], torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    assert f[1].abs().sum() == 0  # an all-zero map stays zero
    assert features(m, grid=2, signed=True)[0, 0, 0] == -1.0


def test_sparse_and_dense_eigenvalues_agree(monkeypatch):
    from xaiscope.analyses import spray as sp

    maps, _ = two_patterns(120, noise=3.0)
    a = sp.affinity(features(maps, grid=8).flatten(1).numpy(), 10)
    dense = sp.laplacian_eigenvalues(a, 6)
    monkeypatch.setattr(sp, "DENSE_LIMIT", 10)
    np.testing.assert_allclose(sp.laplacian_eigenvalues(a, 6), dense, atol=1e-8)


def test_eigengap_rule_closed_form():
    assert eigengap_k([0.0, 0.0, 0.0, 0.6, 0.62, 0.65]) == 3  # three disconnected groups
    assert eigengap_k([0.0, 0.01, 0.02, 0.6, 0.62, 0.65]) == 3
    assert eigengap_k([0.0, 0.55, 0.6, 0.62, 0.65]) == 1  # no bottleneck: l_2 > 0.2
    assert eigengap_k([0.0, 0.02, 0.04, 0.06, 0.08, 0.1]) == 1  # no jump of 3x and 0.05
    # the largest relative jump wins over a larger absolute one: 0.16 / 0.023 > 0.61 / 0.16
    assert eigengap_k([0.0, 0.023, 0.161, 0.607, 0.708]) == 2
    # a jump after an eigenvalue above 0.2 (inside one well-connected group) does not count
    assert eigengap_k([0.0, 0.1, 0.25, 0.9, 0.95]) == 1


def test_flag_rule_on_hand_made_shares():
    assert flag({"mask": 0.1, "confounder": 0.3, "outside": 0.6}) == SHORTCUT
    assert flag({"mask": 0.1, "confounder": 0.15, "outside": 0.75}) == ""  # not above 0.2
    assert flag({"mask": 0.45, "confounder": 0.3, "outside": 0.25}) == ""  # more on the finding
    assert flag({"mask": 0.1, "outside": 0.9}) == ""  # no confounder mask
    assert flag({"ruler": 0.5, "outside": 0.5}, confounders=("ruler",)) == SHORTCUT


def test_flag_rule_on_hand_made_clusters():
    maps, truth = two_patterns(40, noise=0.2)
    conf = torch.zeros(40, 48, 48, dtype=torch.bool)
    conf[truth == 0, 4:16, 4:16] = True  # pattern A is a confounder (e.g. a marker)
    lesion = torch.zeros(40, 48, 48, dtype=torch.bool)
    lesion[:, 30:44, 20:44] = True
    res = spray(maps, masks={"mask": lesion, "confounder": conf}, correct=truth == 1, embedding="none")
    (a,) = [c for c in res.clusters if (truth[c.members] == 0).all()]
    (b,) = [c for c in res.clusters if (truth[c.members] == 1).all()]
    assert a.flag == SHORTCUT and b.flag == "" and res.flagged == [a.index]
    assert a.shares["confounder"] > 0.2 and b.shares["confounder"] == 0.0
    assert a.accuracy == 0.0 and b.accuracy == 1.0
    for c in (a, b):
        assert math.isclose(c.shares["mask"] + c.shares["confounder"] + c.shares["outside"], 1.0, rel_tol=1e-9)


def test_bad_settings_are_one_sentence():
    maps, _ = two_patterns(10)
    with pytest.raises(ConfigError, match="between 1 and 9"):
        spray(maps, k=10)
    with pytest.raises(ConfigError, match="Unknown SpRAy embedding"):
        spray(maps, embedding="pca")


# --------------------------------------------------------------------------- metric
def test_confounder_relevance_closed_form():
    x = torch.zeros(3, 1, 4, 4)
    a = torch.zeros(3, 1, 4, 4)
    a[:, 0, 0, 0] = 3.0  # on the marker
    a[:, 0, 2, 2] = 1.0
    a[:, 0, 3, 3] = -4.0  # negative: left out unless abs
    conf = torch.zeros(3, 4, 4, dtype=torch.bool)
    conf[:2, 0, :2] = True
    m = evaluate.get("confounder_relevance")
    assert m.mask_name() == "confounder" and m.direction == "lower" and m.category == "localisation"
    s = m(None, x, torch.zeros(3, dtype=torch.long), a, mask=conf)
    assert s[:2].tolist() == [0.75, 0.75] and math.isnan(s[2])  # 3 / (3 + 1); no marker in image 3
    s_abs = evaluate.get("confounder_relevance", abs=True)(None, x, torch.zeros(3, dtype=torch.long), a, mask=conf)
    assert s_abs[0].item() == pytest.approx(3 / 8)


def test_confounder_relevance_reads_the_named_extra_mask_or_says_it_is_missing():
    m = evaluate.get("confounder_relevance", mask="ruler")
    lesion, ruler = torch.zeros(1, 2, 2, dtype=torch.bool), torch.ones(1, 2, 2, dtype=torch.bool)
    assert evaluate.mask_for(m, lesion, {"ruler": ruler}) is ruler
    assert evaluate.mask_for(evaluate.get("pointing_game"), lesion, {"ruler": ruler}) is lesion
    with pytest.raises(MetricError, match=r"reads the extra mask 'ruler', but the data has no such mask"):
        evaluate.mask_for(m, lesion, {"confounder": ruler})
    # implicit selection leaves it out when the data lacks the mask; named on its own it stays
    kept, left = evaluate.select(["localisation"], masks=True, extra_masks=set())
    assert left == ["confounder_relevance"] and "confounder_relevance" not in kept
    assert evaluate.select(["localisation"], masks=True, extra_masks={"confounder"})[1] == []
    assert evaluate.select(["confounder_relevance"], masks=True, extra_masks=set())[0] == ["confounder_relevance"]


def test_a_run_unit_scores_the_extra_mask(small_cnn):
    from xaiscope.run.units import Unit, UnitInputs, compute_unit

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 16, generator=g)
    conf = torch.zeros(2, 16, 16, dtype=torch.bool)
    conf[:, :4, :4] = True
    inp = UnitInputs(
        x=x,
        y=torch.tensor([0, 1]),
        targets=torch.tensor([0, 1]),
        ids=["a", "b"],
        masks=~conf,
        extra_masks={"confounder": conf},
        metrics=[("confounder_relevance", {}), ("relevance_mass_accuracy", {})],
    )
    _, rows, _ = compute_unit(small_cnn, Unit("m", "input", (), 0, 2), inp)
    got = rows.pivot(index="image_id", columns="metric", values="value")
    want = x[:, 0, :4, :4].sum((1, 2)) / x[:, 0].sum((1, 2))  # input x input: the marker's share of the image
    np.testing.assert_allclose(got["confounder_relevance"].to_numpy(), want.numpy(), rtol=1e-5)
    np.testing.assert_allclose(got["relevance_mass_accuracy"].to_numpy(), 1 - want.numpy(), rtol=1e-5)


# --------------------------------------------------------------------------- command
@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from xaiscope.data.benchmark import generate

    root = tmp_path_factory.mktemp("spray")
    generate(root / "bm", n_train=24, n_test=2, size=32, confounder_rate=0.5, seed=0)
    return root / "bm"


def test_spray_command_writes_every_output(bench, tmp_path, capsys):
    out = tmp_path / "sp"
    r = run_cli(capsys, "spray", "--model", "small_cnn", "--data", bench / "train", "--class", "1", "--out", out)
    assert r.code == 0, r.err
    assert "1_irregular: k = " in r.out
    for name in ("spray_1_irregular.parquet", "clusters_1_irregular.csv", "summary.json"):
        assert (out / name).is_file()
    for name in ("eigenvalues", "embedding", "clusters"):
        assert (out / f"{name}_1_irregular.png").stat().st_size > 1000
    assert not (out / "spray_0_regular.parquet").exists()
    df = pd.read_parquet(out / "spray_1_irregular.parquet")
    assert list(df.columns[:7]) == ["image_id", "label", "prediction", "correct", "cluster", "x", "y"]
    assert {"share_mask", "share_confounder", "share_outside"} <= set(df.columns) and len(df) == 12
    clusters = pd.read_csv(out / "clusters_1_irregular.csv")
    assert clusters["size"].sum() == 12 and "flag" in clusters.columns
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["method"] == "lrp_epsilon_plus_flat"  # small_cnn allows LRP
    assert summary["masks"] == ["mask", "confounder"]


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--class", "irregular"], r"Unknown class 'irregular'.*the data has classes 0_regular, 1_irregular\."),
        (["--class", "7"], r"--class 7 is not a label index of the data \(0 to 1\)\."),
        (["--method", "gradcamm"], r"Unknown method 'gradcamm'"),
        (["--embedding", "pca"], r"Unknown SpRAy embedding 'pca'"),
    ],
)
def test_spray_bad_input_is_one_sentence(bench, tmp_path, capsys, args, pattern):
    r = run_cli(capsys, "spray", "--model", "small_cnn", "--data", bench / "train", "--out", tmp_path / "o", *args)
    assert_user_error(r, pattern)


def test_default_method_is_lrp_where_the_model_allows_it():
    from xaiscope.commands.spray_job import default_method
    from xaiscope.models import build

    assert default_method(build("small_resnet")) == "lrp_epsilon_plus_flat"
    odd = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GELU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    assert default_method(odd) == "gradcam"


# --------------------------------------------------------------------------- planted shortcut
@pytest.mark.slow
def test_spray_isolates_and_flags_a_planted_shortcut():
    """Half of class 1 carries a corner marker; a small CNN learns it as a shortcut. SpRAy on
    class 1 (LRP) puts the marked images in one cluster and flags it."""
    from xaiscope import explain
    from xaiscope.data.benchmark import make_dataset
    from xaiscope.models.train import init_model, train

    tr, te = make_dataset(n_train=400, n_test=200, size=32, confounder_rate=0.5, seed=0)
    net = init_model("small_cnn", seed=0, in_channels=1, num_classes=2, width=8)
    train(net, tr, test=te, epochs=15, lr=3e-3, batch_size=32, progress=False, seed=0)
    idx = (te.y == 1).nonzero().flatten()
    marked = te.extra_masks["confounder"][idx].flatten(1).any(1).numpy()
    a = explain.get("lrp_epsilon_plus_flat")(net, te.x[idx], te.y[idx])
    res = spray(a, masks={"mask": te.masks[idx], "confounder": te.extra_masks["confounder"][idx]}, embedding="none")
    best = max(res.clusters, key=lambda c: marked[c.members].sum())
    purity = marked[best.members].mean()
    recall = marked[best.members].sum() / marked.sum()
    assert purity >= 0.9 and recall >= 0.8, (purity, recall, res.k)
    assert res.flagged == [best.index]


@pytest.mark.slow
def test_a_run_scores_confounder_relevance_and_writes_its_spray_analysis(bench, tmp_path):
    from xaiscope.commands.run_job import run
    from xaiscope.run.config import parse_config
    from xaiscope.run.store import RunStore

    cfg = parse_config(
        {
            "out": str(tmp_path / "run"),
            "data": {"path": str(bench / "train")},
            "models": [{"name": "m", "spec": "small_cnn"}],
            "methods": ["input"],
            "metrics": ["confounder_relevance", "relevance_mass_accuracy"],
            "analyses": {"ranking": None, "sensitivity": None, "spray": {"classes": ["1_irregular"], "k": 2}},
        }
    )
    root = run(cfg)
    res = RunStore(root).results()
    conf = res[res.metric == "confounder_relevance"].set_index("image_id")["value"]
    assert len(conf) == 24 and conf.notna().sum() == 6  # half of class 1 carries the marker
    assert (conf.dropna() > 0).all()
    summary = json.loads((root / "analyses" / "spray" / "summary.json").read_text())
    assert list(summary["per_class"]) == ["1_irregular"] and summary["per_class"]["1_irregular"]["k"] == 2
    assert (root / "analyses" / "spray" / "clusters_1_irregular.csv").is_file()
    from xaiscope.report.html import write_report

    html = write_report(root).read_text()
    assert 'id="spray"' in html and "clusters_1_irregular.csv" in html


def test_a_run_naming_confounder_relevance_on_data_without_the_mask_is_refused(tmp_path):
    from xaiscope.run.config import parse_config
    from xaiscope.run.context import RunContext

    x = np.random.default_rng(0).random((4, 1, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1]), masks=np.ones((4, 16, 16), bool))
    cfg = parse_config(
        {
            "data": {"path": str(tmp_path / "d.npz")},
            "models": [{"name": "m", "spec": "small_cnn"}],
            "methods": ["input"],
            "metrics": ["confounder_relevance"],
        }
    )
    with pytest.raises(ConfigError, match=r"^metrics: Metric confounder_relevance reads the extra mask 'confounder'"):
        RunContext(cfg)


def test_graph_and_spectrum_match_corelay():
    """Oracle: CoRelAy (the SpRAy authors' pipeline) builds the same symmetrised kNN graph and,
    through its symmetric normalised affinity, the same Laplacian spectrum."""
    affinity_mod = pytest.importorskip("corelay.processor.affinity")
    laplacian_mod = pytest.importorskip("corelay.processor.laplacian")
    from scipy.spatial.distance import cdist

    from xaiscope.analyses.spray import affinity, laplacian_eigenvalues

    maps, _ = two_patterns(50, noise=3.0, seed=1)
    v = features(maps, grid=16).flatten(1).numpy()
    ours = affinity(v, 7)
    theirs = affinity_mod.SparseKNN(n_neighbors=7, symmetric=True).function(cdist(v, v))
    np.testing.assert_allclose(ours.toarray(), theirs.toarray())
    normal = laplacian_mod.SymmetricNormalLaplacian().function(theirs)  # D^-1/2 A D^-1/2
    want = np.sort(1.0 - np.linalg.eigvalsh(np.asarray(normal.todense())))[:10]
    np.testing.assert_allclose(laplacian_eigenvalues(ours, 10), want, atol=1e-10)


def test_evaluate_scores_confounder_relevance_and_refuses_data_without_the_mask(bench, tmp_path, capsys):
    out = tmp_path / "res.parquet"
    base = ["evaluate", "--model", "small_cnn", "--methods", "input", "--out", out]
    r = run_cli(capsys, *base, "--data", bench / "train", "--metrics", "confounder_relevance,relevance_mass_accuracy")
    assert r.code == 0, r.err
    df = pd.read_parquet(out)
    conf = df[df.metric == "confounder_relevance"]
    assert len(conf) == 24 and conf["value"].notna().sum() == 6 and (conf["value"].dropna() > 0).all()
    r = run_cli(
        capsys,
        *base,
        "--data",
        bench / "train",
        "--metrics",
        "confounder_relevance",
        "-p",
        "confounder_relevance.mask=ruler",
    )
    assert_user_error(
        r, r"Metric confounder_relevance reads the extra mask 'ruler', but the data in .* has no such mask"
    )


@pytest.mark.slow
def test_an_edited_confounder_mask_makes_confounder_relevance_stale_and_nothing_else(bench, tmp_path):
    import shutil

    from PIL import Image

    from xaiscope.commands.run_job import run
    from xaiscope.errors import StaleResultsError
    from xaiscope.run.config import parse_config

    data = tmp_path / "train"
    shutil.copytree(bench / "train", data)

    def config(metric, out):
        return parse_config(
            {
                "out": str(tmp_path / out),
                "data": {"path": str(data)},
                "models": [{"name": "m", "spec": "small_cnn"}],
                "methods": ["input"],
                "metrics": [metric],
                "analyses": {"ranking": None, "sensitivity": None},
                "report": {"examples": 0},
            }
        )

    run(config("confounder_relevance", "conf"))
    run(config("relevance_mass_accuracy", "rma"))
    path = sorted((data / "confounder_masks" / "1_irregular").glob("*.png"))[0]
    arr = np.array(Image.open(path))
    arr[-1, -1] = 255  # one more marked pixel, far from the marker
    Image.fromarray(arr).save(path)
    with pytest.raises(StaleResultsError, match=r"1 mask changed"):
        run(config("confounder_relevance", "conf"))
    run(config("relevance_mass_accuracy", "rma"))  # a run that reads no confounder mask stays fresh
