"""Property-based tests: readers, the config loader, postprocess and metrics on random input.

The one property everywhere: the only exception a user's input may cause is an
``XaiscopeError`` (which the CLI turns into one sentence). Where the input is accepted,
the result has the documented form (readers: finite float32 ``[C, H, W]``; postprocess:
``[N, H, W]``; metrics: one float per image, NaN allowed). For metrics, one bad map
(NaN, inf, all zero) in a batch never raises and never changes the other images' scores.

Examples are derandomised (the same examples on every run) and kept few, for speed.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from torch import nn

from xaiscope import data, evaluate, explain
from xaiscope.cli import parse_params
from xaiscope.errors import XaiscopeError
from xaiscope.explain.postprocess import NORMALISATIONS, POOLS
from xaiscope.run.config import dump_config, load_config, parse_config, setting_id

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

PNG_SIG = b"\x89PNG\r\n\x1a\n"
HEADERS = [b"", PNG_SIG, PNG_SIG + b"\x00\x00\x00\rIHDR", b"II*\x00", b"MM\x00*", b"\xff\xd8\xff\xe0", b"PK\x03\x04"]


def _in_tmp(name: str, payload: bytes):
    d = tempfile.TemporaryDirectory()
    p = Path(d.name) / name
    p.write_bytes(payload)
    return d, p


def _check_image(arr) -> None:
    # a 2D image [C, H, W], or a stack of several pages read as a volume [C, D, H, W]
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.ndim in (3, 4) and arr.shape[0] in (1, 3)
    assert np.isfinite(arr).all()


# ------------------------------------------------------------------ readers


@FUZZ
@given(
    header=st.sampled_from(HEADERS),
    body=st.binary(max_size=600),
    suffix=st.sampled_from([".png", ".tif", ".tiff", ".jpg", ".jpeg"]),
)
def test_read_image_on_random_bytes(header, body, suffix):
    d, p = _in_tmp("img" + suffix, header + body)
    with d:
        try:
            _check_image(data.read_image(p))
        except XaiscopeError:
            pass


def _valid_file(kind: str, arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if kind == "tif":
        import tifffile

        tifffile.imwrite(buf, arr)
    else:
        Image.fromarray(arr).save(buf, format=kind.upper())
    return buf.getvalue()


@FUZZ
@given(
    kind=st.sampled_from(["png", "tif", "jpeg"]),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    rgb=st.booleans(),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
    seed=st.integers(0, 2**16),
)
def test_read_image_on_truncated_or_corrupted_files(kind, h, w, rgb, cut, flips, seed):
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
    raw = bytearray(_valid_file(kind, arr))
    for where, value in flips:
        raw[int(where * (len(raw) - 1))] = value
    raw = bytes(raw[: max(1, int(cut * len(raw)))]) if cut < 0.98 else bytes(raw)
    d, p = _in_tmp("img." + ("tif" if kind == "tif" else "png" if kind == "png" else "jpg"), raw)
    with d:
        try:
            _check_image(data.read_image(p))
        except XaiscopeError:
            pass


TIFF_DTYPES = [
    np.uint8,
    np.int8,
    np.uint16,
    np.int16,
    np.uint32,
    np.int32,
    np.float16,
    np.float32,
    np.float64,
    np.bool_,
    np.complex64,
]


@FUZZ
@given(
    st.sampled_from(TIFF_DTYPES).flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
    )
)
def test_read_image_on_random_tiff_arrays(arr):
    import tifffile

    d = tempfile.TemporaryDirectory()
    with d:
        p = Path(d.name) / "x.tif"
        try:
            tifffile.imwrite(p, arr)
        except Exception:
            assume(False)  # tifffile itself cannot write it
        try:
            out = data.read_image(p)
        except XaiscopeError:
            return
        _check_image(out)


NPZ_DTYPES = [
    np.uint8,
    np.int8,
    np.int32,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.bool_,
    np.complex64,
    np.dtype("U3"),
    np.dtype("S2"),
]


def _load_npz(arrays: dict, normalise):
    """``data.load`` of ``arrays`` saved as an NPZ file; None when it refuses them with a user error."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "d.npz"
        np.savez(p, **arrays)
        try:
            return data.load(p, normalise=normalise)
        except XaiscopeError:
            return None


def _any_array(max_dims=5):
    return st.sampled_from(NPZ_DTYPES).flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=4))
    )


@FUZZ
@given(
    x=_any_array(),
    y=st.one_of(st.none(), _any_array(2)),
    masks=st.one_of(st.none(), _any_array(4)),
    ids=st.one_of(st.none(), _any_array(1)),
    classes=st.one_of(st.none(), _any_array(1)),
    normalise=st.sampled_from([None, "dataset"]),
)
def test_load_npz_on_random_arrays(x, y, masks, ids, classes, normalise):
    arrays = {"x": x}
    for k, v in (("y", y), ("masks", masks), ("ids", ids), ("classes", classes)):
        if v is not None:
            arrays[k] = v
    ds = _load_npz(arrays, normalise)
    if ds is None:
        return
    assert ds.x.dtype == torch.float32 and ds.x.dim() == 4 and torch.isfinite(ds.x).all()
    assert ds.y.dtype == torch.int64 and len(ds.y) == len(ds.ids) == ds.x.shape[0]
    assert len(ds) == 0 or (int(ds.y.min()) >= 0 and int(ds.y.max()) < len(ds.classes))


@st.composite
def near_valid_npz(draw):
    """Mostly well-formed NPZ contents: small (possibly empty) images, odd values and labels."""
    n, c, h, w = (draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    dt = draw(st.sampled_from(FLOAT_DTYPES + [np.uint8, np.uint16, np.int16]))
    x = draw(hnp.arrays(dt, (n, c, h, w) if draw(st.booleans()) else (n, h, w)))
    length = draw(st.sampled_from([n, n, max(0, n - 1), n + 1]))
    y = np.array(draw(st.lists(st.integers(-1, 3), min_size=length, max_size=length)))
    y = y.astype(draw(st.sampled_from([np.int64, np.int8, np.float32])))
    arrays = {"x": x, "y": y}
    if draw(st.booleans()):
        arrays["masks"] = draw(hnp.arrays(draw(st.sampled_from([np.bool_, np.uint8, np.float32])), (n, h, w)))
    return arrays, draw(st.sampled_from([None, "dataset", ([0.5], [0.25])]))


@FUZZ
@example(({"x": np.zeros((0, 1, 4, 4), np.float32), "y": np.zeros(0, np.int64)}, None))  # no images
@example(({"x": np.zeros((2, 1, 0, 4), np.float32), "y": np.zeros(2, np.int64)}, None))  # 0-pixel images
@example(({"x": np.full((1, 1, 1, 1), 0.3, np.float32), "y": np.zeros(1, np.int64)}, "dataset"))  # std of one pixel
@given(near_valid_npz())
def test_load_npz_on_near_valid_arrays(case):
    arrays, normalise = case
    ds = _load_npz(arrays, normalise)
    if ds is None:
        return
    assert ds.x.dtype == torch.float32 and ds.x.dim() == 4 and ds.x.numel() > 0 and torch.isfinite(ds.x).all()
    assert int(ds.y.min()) >= 0 and int(ds.y.max()) < len(ds.classes)
    assert ds.masks is None or ds.masks.shape == (len(ds), *ds.x.shape[2:])


@FUZZ
@given(header=st.sampled_from([b"", b"PK\x03\x04", b"\x93NUMPY"]), body=st.binary(max_size=400))
def test_load_npz_on_random_bytes(header, body):
    d, p = _in_tmp("d.npz", header + body)
    with d:
        try:
            data.load(p)
        except XaiscopeError:
            pass


@FUZZ
@given(st.data())
def test_load_folder_on_random_image_sets(draw):
    """Class folders of random sizes, modes and masks (present, missing, odd)."""
    rng_seed = draw.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(rng_seed)
    d = tempfile.TemporaryDirectory()
    with d:
        root = Path(d.name)
        for c in draw.draw(
            st.lists(st.sampled_from(["a", "b", "masks", ".hidden", "c d"]), min_size=0, max_size=3, unique=True)
        ):
            for i in range(draw.draw(st.integers(0, 3))):
                h, w = draw.draw(st.sampled_from([(4, 4), (4, 4), (5, 4), (1, 1)]))
                mode = draw.draw(st.sampled_from(["L", "RGB", "I;16", "1"]))
                if mode == "RGB":
                    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                elif mode == "I;16":
                    arr = rng.integers(0, 65535, (h, w), dtype=np.uint16)
                else:
                    arr = rng.integers(0, 2, (h, w), dtype=np.uint8) * 255
                sub = root / c / ("a" if c == "masks" else "")
                sub.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(sub / f"{i}.png")
        resize = draw.draw(st.sampled_from([None, (3, 3)]))
        masks = draw.draw(st.sampled_from(["auto", "required", "none"]))
        try:
            ds = data.load_folder(
                root, resize=resize, masks=masks, normalise=draw.draw(st.sampled_from([None, "dataset"]))
            )
        except XaiscopeError:
            return
    assert ds.x.dim() == 4 and torch.isfinite(ds.x).all() and len(ds) > 0


# ------------------------------------------------------------------ configs

VALID = {
    "out": "runs/x",
    "seed": 0,
    "batch_size": 8,
    "unit_images": 4,
    "data": {"path": "data", "max_images": 8},
    "models": [{"name": "m", "spec": "small_cnn"}],
    "methods": ["saliency", {"name": "integrated_gradients", "grid": {"n_steps": [4, 8]}}],
    "metrics": ["sparseness", {"name": "deletion", "hparams": {"steps": 4}}],
    "analyses": {"ranking": {"draws": 10}},
}
PATHS = [
    ("out",),
    ("seed",),
    ("batch_size",),
    ("unit_images",),
    ("backend",),
    ("data",),
    ("data", "path"),
    ("data", "resize"),
    ("data", "normalise"),
    ("data", "masks"),
    ("data", "max_images"),
    ("data", "target"),
    ("models",),
    ("models", 0),
    ("models", 0, "name"),
    ("models", 0, "spec"),
    ("models", 0, "trust_model"),
    ("methods",),
    ("methods", 0),
    ("methods", 1, "name"),
    ("methods", 1, "hparams"),
    ("methods", 1, "grid"),
    ("methods", 1, "grid", "n_steps"),
    ("metrics", 0),
    ("metrics", 1, "hparams"),
    ("metrics", 1, "hparams", "steps"),
    ("analyses",),
    ("analyses", "ranking"),
    ("analyses", "ranking", "draws"),
    ("analyses", "global"),
    ("analyses", "sis"),
    ("report",),
    ("report", "examples"),
    ("extra_key",),
    ("data", "extra_key"),
]
KEYS = st.sampled_from(
    [
        "name",
        "spec",
        "path",
        "hparams",
        "grid",
        "n_steps",
        "steps",
        "abs",
        "window",
        "draws",
        "seed",
        "method",
        "target",
        "tau",
        "unit",
        "x",
    ]
) | st.text(max_size=6)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "saliency",
            "gradcam",
            "deletion",
            "small_cnn",
            "auto",
            "true",
            "pred",
            "patch:4",
            "pixel",
            "dataset",
            "none",
            "required",
        ]
    )
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3), max_leaves=8
)


def _set(obj, path, value):
    for k in path[:-1]:
        try:
            obj = obj[k]
        except (KeyError, IndexError, TypeError):
            return
    try:
        obj[path[-1]] = value
    except (IndexError, TypeError):
        pass


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=3))
def test_parse_config_on_mutated_configs(mutations):
    import copy

    cfg = copy.deepcopy(VALID)
    for path, value in mutations:
        _set(cfg, path, value)
    try:
        rc = parse_config(cfg, "fuzz.yaml")
    except XaiscopeError:
        return
    dump_config(rc)
    for m in rc.methods:
        for s in m.settings():
            setting_id(s)


@FUZZ
@given(obj=VALUES)
def test_parse_config_on_random_values(obj):
    try:
        parse_config(obj, "fuzz.yaml")
    except XaiscopeError:
        pass


YAML_BITS = [
    "out: x\n",
    "data: {path: d}\n",
    "models: [small_cnn]\n",
    "methods: [saliency]\n",
    "seed: 0\n",
    "- a\n",
    ": :\n",
    "{",
    "[",
    "!!python/object/apply:os.system ['true']\n",
    "&a [*a]\n",
    "x: *b\n",
    "\t",
    "\x00",
    "---\n",
    "...\n",
    "key: 'unterminated\n",
    "%YAML 9.9\n",
    "? complex\n",
    "methods:\n  - name: gradcam\n    hparams: {layer: 3}\n",
]


@FUZZ
@given(parts=st.lists(st.sampled_from(YAML_BITS) | st.text(max_size=20), max_size=8), raw=st.binary(max_size=30))
def test_load_config_on_random_text(parts, raw):
    d, p = _in_tmp("c.yaml", "".join(parts).encode("utf-8", "surrogatepass") + raw)
    with d:
        try:
            load_config(p)
        except XaiscopeError:
            pass


@FUZZ
@given(
    items=st.lists(
        st.text(max_size=30) | st.sampled_from(["saliency.abs=true", "a.b=[1", "x=1", ".=", "a.=3", "m.k=!!binary x"]),
        max_size=4,
    )
)
def test_parse_params_on_random_text(items):
    try:
        out = parse_params(items)
    except XaiscopeError:
        return
    assert all(isinstance(v, dict) for v in out.values())


# ------------------------------------------------------------------ postprocess and metrics

FLOAT_DTYPES = [np.float16, np.float32, np.float64]


def _attr(min_dims=2, max_dims=5, min_side=0):
    return st.sampled_from(FLOAT_DTYPES + [np.int32, np.uint8, np.bool_]).flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=4))
    )


@FUZZ
@given(
    a=_attr(),
    pool=st.sampled_from(list(POOLS) + ["median"]),
    norm=st.sampled_from(list(NORMALISATIONS) + ["zscore"]),
    signed=st.booleans(),
)
def test_postprocess_on_random_arrays(a, pool, norm, signed):
    t = torch.from_numpy(np.ascontiguousarray(a))
    try:
        m = explain.postprocess(t, pool=pool, normalise=norm, signed=signed)
    except XaiscopeError:
        return
    spatial = 3 if t.dim() == 5 else 2  # raw volume attributions [N, C, D, H, W] give [N, D, H, W]
    assert m.dim() == spatial + 1 and m.shape[0] == t.shape[0] and tuple(m.shape[1:]) == tuple(t.shape[-spatial:])
    if np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() and np.abs(a).max(initial=0) < 1e3:
        assert torch.isfinite(m).all()


class TinyNet(nn.Module):
    """Accepts any image size (1x1 included) and channel count ``c``."""

    def __init__(self, c: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(c, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


METRICS = {
    "relevance_mass_accuracy": {},
    "pointing_game": {},
    "auroc": {},
    "top_k_intersection": {"k": 3},
    "sparseness": {},
    "complexity": {},
    "deletion": {"steps": 3},
    "insertion": {"steps": 3, "fill": "blur"},
    "faithfulness_estimate": {"features_in_step": 1},
    "max_sensitivity": {"nr_samples": 2},
    "random_logit": {},
    "completeness": {},
}
BAD_VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": -float("inf"), "zero": 0.0, "huge": 3e38}


@st.composite
def metric_inputs(draw):
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 3))
    h, w = draw(st.sampled_from([(1, 1), (1, 5), (2, 2), (5, 3), (6, 6)]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g)
    a = torch.randn(n, c, h, w, generator=g)
    if draw(st.booleans()):
        a = a.sum(1)  # maps [N, H, W]
    a = a.to(draw(st.sampled_from([torch.float16, torch.float32, torch.float64])))
    bad = draw(st.sampled_from(sorted(BAD_VALUES)))
    where = draw(st.sampled_from(["image", "pixel"]))
    mask = torch.rand(n, h, w, generator=g) > draw(st.sampled_from([0.0, 0.5, 1.0]))
    return x, a, mask, bad, where


@FUZZ
@given(inp=metric_inputs(), name=st.sampled_from(sorted(METRICS)))
def test_metrics_survive_one_bad_map(inp, name):
    """Image 0 gets a bad map (all NaN / inf / zero / huge, or one such pixel): no exception;
    the other images score exactly as they do without image 0 (deterministic metrics)."""
    x, a, mask, bad, where = inp
    a = a.clone()
    if where == "image":
        a[0] = BAD_VALUES[bad]
    else:
        a[0].view(-1)[0] = BAD_VALUES[bad]
    y = torch.arange(x.shape[0]) % 2
    net = TinyNet(x.shape[1]).eval()
    metric = evaluate.get(name, **METRICS[name])
    ex = explain.get("saliency")
    try:
        s = metric(net, x, y, a, mask=mask, explainer=ex)
    except XaiscopeError:
        return  # e.g. an image too small for the metric's settings: the same for every image
    assert s.shape == (x.shape[0],) and s.dtype == torch.float32
    if x.shape[0] > 1 and not metric.stochastic and not metric.set_level:
        rest = metric(net, x[1:], y[1:], a[1:], mask=mask[1:], explainer=ex)
        torch.testing.assert_close(s[1:], rest, equal_nan=True, atol=1e-5, rtol=1e-5)


def test_postprocess_edge_shapes():
    """Zero images give zero maps (e.g. no overlays asked for); zero pixels is a MethodError."""
    for norm in NORMALISATIONS:
        assert explain.postprocess(torch.zeros(0, 2, 5, 4), normalise=norm).shape == (0, 5, 4)
        with pytest.raises(XaiscopeError, match=r"Attributions of shape \[2, 1, 0, 4\] have no pixels"):
            explain.postprocess(torch.zeros(2, 1, 0, 4), normalise=norm)
    one = explain.postprocess(torch.full((1, 1, 1, 1), -2.0), normalise="max")
    assert one.tolist() == [[[1.0]]]
