"""The package's layering, read from the imports: the folders are layers (core at the bottom; datagen and modeling
above it, side by side; evaluation; release), the stage commands sit on top, each layer imports only from layers
below it (or itself), no stage borrows from another, no import cycles, no module over 500 lines, every module
importable alone."""

import ast
import importlib
import sys
from pathlib import Path

import pytest

from sft_router.core.stages import STAGES

PACKAGE = Path(__file__).parents[1] / "src" / "sft_router"
LAYERS = {"core": 0, "datagen": 1, "modeling": 1, "evaluation": 2, "release": 3}
COMMANDS = 4  # the top-level modules: one per stage (python -m sft_router.<stage>), plus results
MODULES = sorted(
    ".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py") if p.stem != "__init__"
)
STAGE_MODULES = {stage.module for stage in STAGES.values()}
MAX_LINES = 500


def layer(module: str) -> int:
    return LAYERS[module.split(".")[0]] if "." in module else COMMANDS


def imports_of(module: str) -> set[str]:
    """Every sft_router module `module` imports (as `pkg.mod` or a top-level `mod`), at the top or in a function."""
    tree = ast.parse((PACKAGE / f"{module.replace('.', '/')}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sft_router"):
            base = node.module.removeprefix("sft_router").lstrip(".")
            if base in LAYERS or not base:  # from sft_router.core import errors / from sft_router import data
                found.update(f"{base}.{a.name}".lstrip(".") for a in node.names)
            else:
                found.add(base)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("sft_router.") for a in node.names if a.name.startswith("sft_router."))
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


def test_every_module_sits_in_a_layer_or_is_a_command():
    stray = [m for m in MODULES if "." in m and m.split(".")[0] not in LAYERS]
    assert not stray, f"a module in a folder that is not a layer (add it to LAYERS or move it): {stray}"
    assert STAGE_MODULES <= set(MODULES), STAGE_MODULES - set(MODULES)


def test_every_import_points_down_or_within_its_layer():
    wrong = []
    for module in MODULES:
        for target in imports_of(module):
            assert target in MODULES, f"{module} imports sft_router.{target}, which does not exist"
            same_folder = "." in module and module.split(".")[0] == target.split(".")[0]
            if layer(target) > layer(module) or (layer(target) == layer(module) and "." in module and not same_folder):
                wrong.append(f"{module} -> {target}")
    assert not wrong, f"imports that go up or sideways (move the helper down a layer): {wrong}"


def test_package_imports_form_no_cycle():
    graph = {module: imports_of(module) for module in MODULES}
    assert find_cycle(graph) is None


def test_no_stage_imports_another_stage():
    borrowed = {(m, i) for m in MODULES for i in imports_of(m) if i in STAGE_MODULES and m != i}
    assert not borrowed, f"a stage borrows from another stage (move the helper down a layer): {sorted(borrowed)}"


def test_no_module_over_the_line_limit():
    long = {
        m: n
        for m in MODULES
        if (n := len((PACKAGE / f"{m.replace('.', '/')}.py").read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_on_its_own(module):
    """With no other sft_router module loaded (third-party ones stay: re-importing torch is not possible). Afterwards
    sys.modules holds exactly the sft_router modules it held before: no fresh copy stays behind, or a later test's
    `from sft_router.core.errors import UsageError` would not be the class a module imported earlier raises."""
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
