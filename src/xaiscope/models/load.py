"""Load a user's model from a spec string.

Spec forms
----------
``small_cnn`` / ``zoo:small_cnn``
    A zoo model (``num_classes``, ``in_channels`` as keyword arguments).
``torchvision:resnet18``
    A torchvision architecture with random weights, ``num_classes`` outputs and its
    first convolution adapted to ``in_channels``.
``torchvision:r3d_18``
    torchvision's video ResNets (``r3d_18``, ``mc3_18``, ``r2plus1d_18``) take volumes
    ``[N, C, D, H, W]``; their stem is adapted to ``in_channels`` the same way.
``monai:DenseNet121`` or ``monai:NAME,key=value,...``
    A MONAI network (``pip install 'xaiscope[monai]'``) with random weights, built with
    ``spatial_dims`` (2 for images, 3 for volumes), ``in_channels`` and ``out_channels``
    (the number of classes) from the data unless given; other keyword arguments as Python
    literals (``monai:DenseNet121,dropout_prob=0.2``).
``timm:vit_tiny_patch16_224`` or ``timm:NAME,key=value,...``
    A timm architecture (``pip install timm``) with random weights, ``in_chans`` and
    ``num_classes`` from the data unless given (e.g. ``timm:vit_tiny_patch16_224,img_size=64,patch_size=8``);
    nothing is downloaded, a local checkpoint comes with ``weights=``.
``package.module:factory``
    ``factory(**kwargs)`` is called, with ``num_classes`` and ``in_channels`` when its
    signature takes them. **This imports and runs the user's code.**
``path/model.pt`` with ``path/model.json`` beside it
    Weights written by ``xaiscope train``: the sidecar names the architecture; the
    weights are read with ``torch.load(weights_only=True)``.
``path/model.ts`` (or any TorchScript file)
    ``torch.jit.load``. **TorchScript is code: loading it runs the author's program.**
A pickled whole model (``torch.save(model)``)
    Refused unless ``trust_model=True``, because unpickling runs arbitrary code.

Weights given with ``weights=`` are always read with ``weights_only=True``.

Random initial weights (zoo, ``torchvision:NAME``, ``timm:NAME`` and factory specs) are drawn under
``seed``: the model is built inside :func:`torch.random.fork_rng` with the CPU generator
seeded, so the same spec and seed give the same weights on the same machine and the
caller's global random state is left as it was. :func:`weights_hash` identifies the
weights a model holds.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xaiscope.data.hashing import state_dict_hash
from xaiscope.errors import ModelError, did_you_mean
from xaiscope.models import zoo

WEIGHT_FILE_SUFFIXES = {".pt", ".pth", ".ts", ".pkl", ".bin"}


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar that ``xaiscope train`` writes beside ``model.pt``."""
    path = Path(path)
    return path.with_suffix(".json")


def read_sidecar(spec: str) -> dict[str, Any] | None:
    """The sidecar of a weights file spec, or None when the spec has none."""
    p = Path(spec)
    if p.suffix and p.exists() and sidecar_path(p).exists():
        try:
            return json.loads(sidecar_path(p).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"The model sidecar {sidecar_path(p)} cannot be read: {e}.") from None
    return None


def load_backbone(model: nn.Module, weights: str | Path, head: str) -> nn.Module:
    """Load a backbone checkpoint (a foundation model saved without a head, e.g. timm's
    ``num_classes=0``) into ``model``: every weight must fit and be present but the head's
    (module ``head``), which keeps its fresh initial values."""
    state = _read_state(Path(weights))
    state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head + ".")]
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has {unexpected[0]}, which the model does not"
        raise ModelError(f"The backbone weights in {weights} do not fit the model: the checkpoint {what}.")
    return model


def _read_state(weights: Path) -> dict:
    if not weights.exists():
        raise ModelError(f"The weights file {weights} does not exist.")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or corrupt file
        raise ModelError(
            f"The weights file {weights} is not a plain state dict that loads with weights_only=True ({type(e).__name__}); "
            "a pickled whole model is loaded only as --model with --trust-model."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"The weights file {weights} does not hold a state dict.")
    return state


def _load_state_dict(model: nn.Module, weights: str | Path) -> nn.Module:
    weights = Path(weights)
    state = _read_state(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelError(f"The weights in {weights} do not fit the model: {first}") from None
    return model


def _adapt_in_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first convolution (2D or 3D) so the model takes ``in_channels`` channels."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            if module.in_channels == in_channels:
                return model
            new = type(module)(
                in_channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                module.groups,
                module.bias is not None,
            )
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return model
    return model


def _torchvision(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError:
        raise ModelError(f"torchvision has no model named {name!r}.") from None
    return _adapt_in_channels(model, in_channels)


def _spec_kwargs(spec: str, defaults: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(NAME, kwargs)`` of ``prefix:NAME,key=value,...``: ``defaults`` updated by the pairs
    (values as Python literals)."""
    import ast

    name, *pairs = [p.strip() for p in spec.split(":", 1)[1].split(",")]
    kwargs = dict(defaults)
    prefix = spec.split(":", 1)[0]
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ModelError(f"The model spec {spec!r} has {pair!r}; write {prefix}:NAME,key=value,... .")
        try:
            kwargs[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ModelError(
                f"The model spec {spec!r} gives {key.strip()} the value {text.strip()!r}, not a Python literal."
            ) from None
    return name, kwargs


def _timm(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    """``timm:NAME`` or ``timm:NAME,key=value,...`` (values as Python literals, e.g.
    ``timm:vit_tiny_patch16_224,img_size=64,patch_size=8``): the architecture with random
    weights (nothing is downloaded), ``in_chans`` and ``num_classes`` from the data unless
    given."""
    name, kwargs = _spec_kwargs(spec, {"num_classes": num_classes, "in_chans": in_channels})
    try:
        import timm
    except ImportError:
        raise ModelError(f"The model spec {spec!r} needs timm; install it with: pip install timm.") from None
    if not timm.is_model(name):
        raise ModelError(f"timm has no model named {name!r}{did_you_mean(name, timm.list_models())}.")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise ModelError(f"timm cannot build {name!r} with {kwargs}: {e}.") from None


def _monai(spec: str, num_classes: int, in_channels: int, spatial_dims: int) -> nn.Module:
    """``monai:NAME`` or ``monai:NAME,key=value,...``: ``monai.networks.nets.NAME`` with random
    weights, ``spatial_dims``, ``in_channels`` and ``out_channels`` from the data unless given."""
    name, kwargs = _spec_kwargs(
        spec, {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": num_classes}
    )
    try:
        from monai.networks import nets
    except ImportError:
        raise ModelError(f"The model spec {spec!r} needs MONAI; install it with: pip install monai.") from None
    names = [n for n in dir(nets) if n[:1].isupper() and isinstance(getattr(nets, n), type)]
    cls = getattr(nets, name, None)
    if name not in names or not issubclass(cls, nn.Module):
        raise ModelError(f"MONAI has no network named {name!r}{did_you_mean(name, names)}.")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        raise ModelError(f"MONAI cannot build {name!r} with {kwargs}: {str(e) or type(e).__name__}.") from None


def _factory(spec: str, kwargs: dict[str, Any]) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(
            f"The model spec {spec!r} names module {module_name!r}, which cannot be imported ({e})."
        ) from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ModelError(f"The module {module_name!r} has no callable {attr!r} (model spec {spec!r}).")
    import inspect

    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    kwargs = {k: v for k, v in kwargs.items() if takes_any or k in accepted}
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"The factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model


class TorchScriptModel(nn.Module):
    """A TorchScript program behind an ordinary module, so forward hooks (pass counting, the
    chunked forward helper's checks) work on it; hooks on layers inside the program do not
    (TorchScript forbids them), so methods that read a layer (CAMs) say so."""

    def __init__(self, script: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.script = script

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.script(x)


def _load_file(path: Path, trust_model: bool) -> nn.Module:
    info = read_sidecar(str(path))
    if info is not None:
        kw = dict(info.get("arch_kwargs", {}))
        if info["arch"] in zoo.ZOO:
            model = zoo.build(info["arch"], **kw)
        else:  # a timm, MONAI or torchvision spec trained by xaiscope train
            size = info.get("input_size") or [kw.get("in_channels", 1), 0, 0]
            model = load(
                info["arch"],
                num_classes=int(kw.get("num_classes", 2)),
                in_channels=int(kw.get("in_channels", size[0])),
                spatial_dims=len(size) - 1,
            )
        return _load_state_dict(model, path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            is_script = any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
        if is_script:
            try:
                return TorchScriptModel(torch.jit.load(str(path), map_location="cpu"))
            except Exception as e:
                raise ModelError(f"The TorchScript file {path} cannot be loaded ({type(e).__name__}).") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        if not trust_model:
            raise ModelError(
                f"The file {path} holds a pickled model, which can run arbitrary code when loaded; "
                "pass --trust-model if you trust its author."
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ModelError(f"The model file {path} cannot be loaded ({type(e).__name__}: {e}).") from None
        if isinstance(obj, nn.Module):
            return obj
    if isinstance(obj, nn.Module):
        return obj
    raise ModelError(
        f"The file {path} holds weights but no architecture; write a sidecar {sidecar_path(path).name} "
        "or use 'package.module:factory' with --weights."
    )


def is_file_spec(spec: str) -> bool:
    """True when ``spec`` names a model file (weights with a sidecar, TorchScript, a pickle)."""
    path = Path(spec)
    return path.suffix in WEIGHT_FILE_SUFFIXES or path.exists()


def random_weights(spec: str, weights: str | Path | None = None) -> bool:
    """True when loading ``spec`` draws random initial weights that no file replaces
    (a zoo, ``torchvision:NAME``, ``timm:NAME``, ``monai:NAME`` or factory spec without ``weights``)."""
    return weights is None and not is_file_spec(spec)


@contextlib.contextmanager
def seeded(seed: int):
    """Draw from torch's CPU generator seeded with ``seed``; restore its state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


def weights_hash(model: nn.Module | dict) -> str:
    """BLAKE2b-128 hex digest of a model's state dict (or of a state dict): every entry in
    sorted key order with its dtype, shape and bytes. One pass over the weights."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    return state_dict_hash(state)


def load(
    spec: str,
    weights: str | Path | None = None,
    *,
    num_classes: int = 2,
    in_channels: int = 1,
    trust_model: bool = False,
    seed: int = 0,
    spatial_dims: int = 2,
    **kwargs: Any,
) -> nn.Module:
    """Load a model from ``spec`` (see the module docstring) in eval mode on the CPU.

    ``spatial_dims`` (2 for images, 3 for volumes) is given to specs that build for either
    (``monai:NAME``).

    ``seed`` fixes the random initial weights of zoo, ``torchvision:NAME`` and factory
    specs (the global random state is untouched); weights read from a file do not
    depend on it.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError("The model spec is empty.")
    path = Path(spec)
    if is_file_spec(spec):
        if not path.exists():
            raise ModelError(f"The model file {path} does not exist.")
        with seeded(seed):
            model = _load_file(path, trust_model)
    elif spec.startswith("torchvision:"):
        with seeded(seed):
            model = _torchvision(spec.split(":", 1)[1], num_classes, in_channels)
    elif spec.startswith("timm:"):
        with seeded(seed):
            model = _timm(spec, num_classes, in_channels)
    elif spec.startswith("monai:"):
        with seeded(seed):
            model = _monai(spec, num_classes, in_channels, spatial_dims)
    elif spec.startswith("zoo:") or spec in zoo.ZOO:
        with seeded(seed):
            model = zoo.build(spec.split(":", 1)[-1], in_channels=in_channels, num_classes=num_classes, **kwargs)
    elif ":" in spec and all(part.isidentifier() for part in spec.split(":", 1)[0].split(".")):
        with seeded(seed):
            model = _factory(spec, {"num_classes": num_classes, "in_channels": in_channels, **kwargs})
    else:
        raise ModelError(
            f"The model spec {spec!r} is not a file, a zoo name ({', '.join(zoo.ZOO)}), "
            "'torchvision:NAME', 'timm:NAME', 'monai:NAME' or 'package.module:factory'."
        )
    if weights is not None:
        model = _load_state_dict(model, weights)
    return model.eval()
