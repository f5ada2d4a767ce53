"""The package's layering: no import cycles, no stage borrowing from another stage, every module importable alone."""

import ast
import importlib
import sys
from pathlib import Path

import pytest

from sft_router.stages import STAGES as PIPELINE

PACKAGE = Path(__file__).parents[1] / "src" / "sft_router"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
# The pipeline stages' modules (sft_router.stages); a stage's own helpers (gguf_eval, gguf_space, modelfile) may be
# imported by it.
STAGES = {stage.module for stage in PIPELINE.values()}


def imports_of(module: str) -> set[str]:
    """Every sft_router module `module` imports, at the top or inside a function."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sft_router."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "sft_router":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("sft_router."))
    return found - {module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_package_imports_form_no_cycle():
    graph = {module: imports_of(module) for module in MODULES}
    assert find_cycle(graph) is None


def test_no_stage_imports_another_stage():
    borrowed = {(m, i) for m in MODULES for i in imports_of(m) if i in STAGES and m != i}
    assert not borrowed, f"a stage borrows from another stage (move the helper down a layer): {sorted(borrowed)}"


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_on_its_own(module):
    """With no other sft_router module loaded (third-party ones stay: re-importing torch is not possible). Afterwards
    sys.modules holds exactly the sft_router modules it held before: no fresh copy stays behind, or a later test's
    `from sft_router.errors import UsageError` would not be the class a module imported earlier raises."""
    ours = lambda name: name == "sft_router" or name.startswith("sft_router.")  # noqa: E731
    before = {name: m for name, m in sys.modules.items() if ours(name)}
    try:
        for name in before:
            del sys.modules[name]
        importlib.import_module(f"sft_router.{module}")
    finally:
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(before)
