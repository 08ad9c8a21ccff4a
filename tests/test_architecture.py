"""ARCHITECTURE.md stays true: imports point down the layers, and its examples run."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from xaiscope import evaluate, explain
from xaiscope.evaluate.base import _METRICS
from xaiscope.explain.base import _METHODS

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "xaiscope"

# ARCHITECTURE.md's layer table: a module may import layers of lower rank only.
RANK = {
    "errors": 0,
    "io": 1,
    "registry": 1,
    "allocator": 1,
    "plotting": 2,
    "data": 3,
    "models": 4,
    "explain": 5,
    "evaluate": 6,
    "analyses": 7,
    "run": 8,
    "report": 9,
    "commands": 10,
    "cli": 11,
    "api": 11,
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # "xaiscope" itself holds only the version


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("xaiscope"):
            names = [f"xaiscope.{a.name}" for a in node.names] if node.module == "xaiscope" else [node.module]
            out += [(node.lineno, n) for n in names if n != "xaiscope.__version__"]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("xaiscope")]
    return out


def test_every_module_belongs_to_a_layer():
    layers = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or p.is_dir()}
    layers -= {"__init__", "__pycache__"}
    assert layers == set(RANK), "add the new layer to ARCHITECTURE.md and to RANK"


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        own = _layer(".".join(path.relative_to(SRC.parent).with_suffix("").parts))
        if own is None or own == "__init__":
            continue
        for line, target in _imports(path):
            other = _layer(target)
            if other is not None and other != own and RANK[other] >= RANK[own]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({own} -> {other})")
    assert not wrong, "\n".join(wrong)


def _module_graph() -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports (anywhere in the file,
    including imports inside functions and under TYPE_CHECKING)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("xaiscope"):
                # "from xaiscope.models import zoo" imports the module xaiscope.models.zoo
                found = [f"{node.module}.{a.name}" for a in node.names]
                found = [t for t in found if t in modules] or [node.module]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names if a.name.startswith("xaiscope")]
            else:
                continue
            for target in found:
                while target and target not in modules:  # "xaiscope.run.units.Unit" -> "xaiscope.run.units"
                    target = target.rpartition(".")[0]
                if target and target != name and target != "xaiscope":
                    targets.add(target)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_round_a_circle():
    """No import circles, not even through function-level imports (the runner and its
    analyses, the runner and the Ray backend once were one)."""
    assert _cycles(_module_graph()) == []


def test_the_ray_backend_sees_units_only():
    graph = _module_graph()
    assert {t for t in graph["xaiscope.run.ray_backend"] if t.startswith("xaiscope.run")} == {"xaiscope.run.units"}


def _examples() -> list[str]:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.fixture
def registered():
    """Run ARCHITECTURE.md's examples, then take what they registered out again."""
    before = set(explain.names()), set(evaluate.names())
    for code in _examples():
        exec(compile(code, "ARCHITECTURE.md", "exec"), {})
    yield
    for reg, names in ((_METHODS, before[0]), (_METRICS, before[1])):
        for n in set(reg.names()) - names:
            del reg._classes[n]


def test_the_documented_examples_register_and_compute(registered, small_cnn, gray_batch):
    x, y = gray_batch
    assert "gradient_norm" in explain.expand(["gradient"])
    assert "mass_in_top_k" in evaluate.expand(["category:complexity"])
    a = explain.get("gradient_norm", batch_size=3)(small_cnn, x, y)
    assert a.shape == (4, 1, 32, 32) and (a >= 0).all()
    sal = explain.get("saliency")(small_cnn, x, y)  # |grad| on one channel: the 2-norm is the same
    torch.testing.assert_close(a, sal)
    m = torch.zeros(2, 8, 8)
    m[0, 0, :4] = 1.0
    scores = evaluate.get("mass_in_top_k", k=4 / 64)(None, torch.zeros(2, 1, 8, 8), torch.zeros(2).long(), m)
    assert scores[0] == 1.0 and torch.isnan(scores[1])


def test_the_documented_faithfulness_declaration_counts_its_passes_and_matches_its_twin(registered, small_cnn):
    aopc = evaluate.get("aopc", batch_size=5)
    assert aopc.passes((1, 32, 32)) == 1 + min(16, 10)
    assert aopc.passes((1, 16, 16)) == 1 + 4
    assert "min" in aopc.passes_formula and "patch_size" in aopc.passes_formula
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 1, 32, 32, generator=g), torch.tensor([0, 1, 1])
    a = torch.randn(3, 1, 32, 32, generator=g)
    twin = evaluate.get("region_perturbation", patch_size=8, regions_evaluation=10, fill="mean", batch_size=7)
    _, drops = twin.curves(small_cnn, x, y, a)
    torch.testing.assert_close(aopc(small_cnn, x, y, a).double(), drops.double().mean(1), rtol=1e-5, atol=1e-6)
