"""Readers, model loading and the chunked forward helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xaiscope import data, models
from xaiscope.errors import DataError, ModelError


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("healthy", "sick"):
        for i in range(3):
            _write(tmp_path / c / f"{c}{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
            m = np.zeros((16, 16), np.uint8)
            m[4:8, 4:8] = 255
            _write(tmp_path / "masks" / c / f"{c}{i}.png", m)
    return tmp_path


def test_load_folder_reads_images_labels_ids_and_masks(folder):
    ds = data.load_folder(folder)
    assert ds.classes == ["healthy", "sick"]
    assert ds.x.shape == (6, 1, 16, 16) and ds.x.dtype == torch.float32
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    assert ds.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.ids[0] == "healthy/healthy0"
    assert ds.masks is not None and ds.masks.dtype == torch.bool and int(ds.masks[0].sum()) == 16
    raw = np.asarray(Image.open(folder / "sick" / "sick1.png"))
    np.testing.assert_allclose(ds.x[4, 0].numpy(), raw / 255.0, atol=1e-7)
    ident, x, y, m = ds[4]
    assert ident == "sick/sick1" and y == 1 and m.shape == (16, 16)


def test_sixteen_bit_rgb_and_tiff_images_are_scaled(tmp_path):
    arr16 = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    Image.fromarray(arr16).save(tmp_path / "a16.png")
    x = data.read_image(tmp_path / "a16.png")
    np.testing.assert_allclose(x[0], arr16 / 65535.0, atol=1e-6)
    rgb = np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=100)
    assert data.read_image(tmp_path / "rgb.jpg").shape == (3, 8, 8)
    import tifffile

    tifffile.imwrite(tmp_path / "t.tif", arr16)
    np.testing.assert_allclose(data.read_image(tmp_path / "t.tif")[0], arr16 / 65535.0, atol=1e-6)
    tifffile.imwrite(tmp_path / "bad.tif", np.zeros((8, 8), np.complex64))
    with pytest.raises(DataError, match="bad.tif has unsupported pixel type complex64"):
        data.read_image(tmp_path / "bad.tif")


def test_normalisation_and_resize(folder):
    ds = data.load_folder(folder, normalise="dataset", resize=(8, 8))
    assert ds.x.shape == (6, 1, 8, 8) and ds.masks.shape == (6, 8, 8)
    assert abs(float(ds.x.mean())) < 1e-5 and abs(float(ds.x.std()) - 1) < 1e-2
    assert ds.mean is not None and ds.std is not None


def test_npz_round_trip(tmp_path):
    x = np.random.default_rng(0).random((5, 2, 6, 6)).astype(np.float32)
    np.savez(
        tmp_path / "d.npz",
        x=x,
        y=np.array([0, 1, 2, 1, 0]),
        ids=np.array(list("abcde")),
        masks=np.ones((5, 6, 6), bool),
    )
    ds = data.load(tmp_path / "d.npz")
    assert ds.ids == list("abcde") and ds.classes == ["0", "1", "2"] and ds.masks.all()
    np.testing.assert_array_equal(ds.x.numpy(), x)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "contains no images"),
        (
            lambda p: (
                _write(p / "a" / "1.png", np.zeros((8, 8), np.uint8)),
                _write(p / "a" / "2.png", np.zeros((9, 8), np.uint8)),
            ),
            "2.png is 8x9 but .*1.png is 8x8; pass a resize option",
        ),
        (
            lambda p: ((p / "a").mkdir(parents=True), (p / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")),
            "1.png cannot be read; it is not a valid image or it is truncated",
        ),
        (
            lambda p: (
                _write(p / "a" / "1.png", np.zeros((8, 8), np.uint8)),
                _write(p / "masks" / "a" / "1.png", np.full((8, 8), 7, np.uint8)),
                _write(p / "masks" / "a" / "1.png", np.arange(64, dtype=np.uint8).reshape(8, 8)),
            ),
            "mask .*1.png is not binary",
        ),
        (
            lambda p: (
                _write(p / "a" / "1.png", np.zeros((8, 8), np.uint8)),
                _write(p / "masks" / "a" / "2.png", np.zeros((8, 8), np.uint8)),
            ),
            "mask .*2.png has no matching image",
        ),
        (
            lambda p: (
                _write(p / "a" / "1.png", np.zeros((8, 8), np.uint8)),
                _write(p / "a" / "3.png", np.zeros((8, 8), np.uint8)),
                _write(p / "masks" / "a" / "1.png", np.zeros((8, 8), np.uint8)),
            ),
            "3.png has no mask",
        ),
        (
            lambda p: (
                _write(p / "a" / "1.png", np.zeros((8, 8), np.uint8)),
                _write(p / "masks" / "a" / "1.png", np.zeros((4, 4), np.uint8)),
            ),
            "mask .*1.png is 4x4 but its image is 8x8",
        ),
    ],
)
def test_folder_errors_name_the_file(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message):
        data.load_folder(root)


def test_npz_with_nan_names_the_image(tmp_path):
    x = np.zeros((3, 1, 4, 4), np.float32)
    x[1, 0, 2, 2] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0]), ids=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match="image 'b' in .*d.npz contains NaN or infinite values"):
        data.load(tmp_path / "d.npz")


def test_model_specs_and_errors(tmp_path):
    assert isinstance(models.load("small_cnn", num_classes=3, in_channels=3), torch.nn.Module)
    m = models.load("torchvision:resnet18", num_classes=4, in_channels=1)
    assert m(torch.rand(2, 1, 32, 32)).shape == (2, 4)
    assert models.load("xaiscope.models.zoo:small_cnn", num_classes=5)(torch.rand(1, 1, 16, 16)).shape == (1, 5)
    with pytest.raises(ModelError, match="is not a file, a zoo name"):
        models.load("not a spec")
    with pytest.raises(ModelError, match="does not exist"):
        models.load(str(tmp_path / "missing.pt"))
    with pytest.raises(ModelError, match="cannot be imported"):
        models.load("no_such_pkg.mod:factory")
    with pytest.raises(ModelError, match="torchvision has no model named 'resnet999'"):
        models.load("torchvision:resnet999")


def test_pickled_model_is_refused_unless_trusted_and_torchscript_loads(tmp_path):
    net = models.build("small_cnn", width=4)
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(ModelError, match="holds a pickled model.*--trust-model"):
        models.load(str(tmp_path / "whole.pt"))
    assert isinstance(models.load(str(tmp_path / "whole.pt"), trust_model=True), torch.nn.Module)
    scripted = torch.jit.script(net)
    scripted.save(str(tmp_path / "net.ts"))
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(models.load(str(tmp_path / "net.ts"))(x), net.eval()(x))


def test_weights_load_with_weights_only(tmp_path):
    net = models.build("small_cnn", width=4).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    other = models.load("small_cnn", weights=tmp_path / "w.pt", width=4)
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(other(x), net(x))
    with pytest.raises(ModelError, match="do not fit the model"):
        models.load("small_cnn", weights=tmp_path / "w.pt", width=8)


def test_forward_is_chunked_and_checks_output():
    net = models.build("small_cnn", width=4).eval()
    x = torch.rand(10, 1, 16, 16)
    with models.count_passes(net) as c:
        out = models.forward(net, x, batch_size=3)
    assert c.rows == 10 and c.calls == 4 and c.largest_call == 3
    torch.testing.assert_close(out, net(x))
    with pytest.raises(ModelError, match="returned a tuple"):
        models.forward(lambda z: (z, z), x)
    with pytest.raises(ModelError, match="returned shape \\[3\\]"):
        models.forward(lambda z: z.sum(dim=(1, 2, 3)), x[:3])


def test_timm_spec_builds_the_architecture_for_the_data_without_downloading():
    pytest.importorskip("timm")
    spec = "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2"
    net = models.load(spec, num_classes=3, in_channels=1, seed=4)
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 3) and not net.training
    again = models.load(spec, num_classes=3, in_channels=1, seed=4)
    assert models.weights_hash(net) == models.weights_hash(again)  # seeded random weights
    assert models.weights_hash(models.load(spec, num_classes=3, in_channels=1, seed=5)) != models.weights_hash(net)


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "timm:vit_tiny_patch16_22",
            r"timm has no model named 'vit_tiny_patch16_22' \(did you mean 'vit_tiny_patch16_224'\?\)\.",
        ),
        ("timm:resnet18,depth", r"has 'depth'; write timm:NAME,key=value"),
        ("timm:resnet18,drop_rate=fast", r"gives drop_rate the value 'fast', not a Python literal"),
    ],
)
def test_bad_timm_specs_are_one_sentence(spec, message):
    pytest.importorskip("timm")
    with pytest.raises(ModelError, match=message):
        models.load(spec)


def test_explain_runs_on_a_timm_vision_transformer(tmp_path, capsys):
    pytest.importorskip("timm")
    from cli_helpers import run_cli

    x = np.random.default_rng(0).random((4, 1, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1]))
    spec = "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2"
    args = ["explain", "--model", spec, "--data", tmp_path / "d.npz", "--methods", "saliency,integrated_gradients"]
    r = run_cli(capsys, *args, "--out", tmp_path / "out", "--overlays", "0", "-p", "integrated_gradients.n_steps=4")
    assert r.code == 0, r.err
    a = np.load(tmp_path / "out" / "saliency.npz")["attributions"]
    assert a.shape == (4, 1, 32, 32) and np.isfinite(a).all() and a.std() > 0
