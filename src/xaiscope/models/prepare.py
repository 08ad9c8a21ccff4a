"""Make a model safe for hook-based attribution methods (DeepLIFT, guided backprop).

Captum's DeepLIFT stores each nonlinearity's input and output on the module, so a ReLU
module that is called twice (torchvision's ResNet blocks) or works in place breaks it.
:func:`unique_activations` traces the model with ``torch.fx`` and returns a copy in which
every activation call site has its own non-in-place module, functional ``relu`` calls
included. Parameters are shared with the original (nothing is copied). When the model
cannot be traced, a shallow copy with in-place flags switched off is returned.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import fx, nn

_ACTIVATIONS = (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.Softplus)
_FUNCTIONAL_RELU = {F.relu, torch.relu, torch.relu_, F.relu_}


def _not_inplace(module: nn.Module) -> nn.Module:
    module = copy.deepcopy(module)  # a shallow copy would share the hook dicts
    if hasattr(module, "inplace"):
        module.inplace = False
    return module


def unique_activations(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with one non-in-place activation module per call site."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception:
        return _fallback(model)
    used: set[str] = set()
    counter = 0
    for node in list(gm.graph.nodes):
        new_module = None
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, _ACTIVATIONS):
                if node.target in used or getattr(mod, "inplace", False):
                    new_module = _not_inplace(mod)
                used.add(node.target)
        elif node.op == "call_function" and node.target in _FUNCTIONAL_RELU:
            new_module = nn.ReLU()
        elif node.op == "call_method" and node.target in ("relu", "relu_"):
            new_module = nn.ReLU()
        if new_module is None:
            continue
        name = f"xaiscope_act_{counter}"
        counter += 1
        gm.add_submodule(name, new_module)
        with gm.graph.inserting_after(node):
            new_node = gm.graph.call_module(name, args=(node.args[0],))
        node.replace_all_uses_with(new_node)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    gm.train(model.training)
    return gm


def _fallback(model: nn.Module) -> nn.Module:
    clone = copy.copy(model)
    clone._modules = dict(model._modules)
    for name, child in list(clone._modules.items()):
        if child is None:
            continue
        if isinstance(child, _ACTIVATIONS):
            clone._modules[name] = _not_inplace(child)
        elif list(child.children()):
            clone._modules[name] = _fallback(child)
    return clone
