"""Model families live in one registry: family_of finds a family from what each stage holds, and no other module of
the package spells a family's turn tokens or compares against a family's name (docstrings and comments may)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sft_router.core.errors import UsageError
from sft_router.modeling.families import FAMILIES, GEMMA3, QWEN3, family_of

PACKAGE = Path(__file__).parents[1] / "src" / "sft_router"
REGISTRY = {"families", "base_models"}  # the registry and the builders of the tiny models
TOKENS = {token for family in FAMILIES.values() for token in (*family.control_tokens, family.eos_token)} | {"<bos>"}
NAMES = {name for family in FAMILIES.values() for name in (family.name, *family.model_types)}


def family_literals(source: str) -> list[str]:
    """String constants that hold a family's token, and comparisons with a family's name; docstrings skipped."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found += [token for token in TOKENS if token in node.value]
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                found += [side.value] if isinstance(side, ast.Constant) and side.value in NAMES else []
                if isinstance(side, (ast.Tuple, ast.List, ast.Set)):
                    found += [e.value for e in side.elts if isinstance(e, ast.Constant) and e.value in NAMES]
    return found


def test_the_literal_check_sees_a_family_branch():
    source = '"""Stops at <end_of_turn>."""\nif config.model_type == "gemma3":\n    stop = "<|im_end|>"\n'
    assert sorted(family_literals(source)) == ["<|im_end|>", "gemma3"]
    assert family_literals('if arch in ("qwen3", "llama"):\n    pass\n') == ["qwen3"]


@pytest.mark.parametrize(
    "module", sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.stem not in REGISTRY)
)
def test_no_module_outside_the_registry_spells_a_family(module):
    assert family_literals((PACKAGE / module).read_text()) == []


def test_family_of_reads_configs_folders_model_types_and_gguf_architectures(tmp_path):
    from transformers import Gemma3TextConfig, Qwen3Config

    assert family_of(Gemma3TextConfig()) is GEMMA3 and family_of(Qwen3Config()) is QWEN3
    (tmp_path / "config.json").write_text('{"model_type": "qwen3"}')
    assert family_of(tmp_path) is QWEN3 and family_of(str(tmp_path)) is QWEN3
    assert family_of({"model_type": "gemma3"}) is GEMMA3 and family_of("gemma3_text") is GEMMA3
    assert family_of("qwen3") is QWEN3


def test_an_unknown_family_fails_in_one_line_naming_the_registry():
    with pytest.raises(UsageError, match=r"'llama' is no known model family .*register one in .*families.py"):
        family_of({"model_type": "llama"})


def test_each_family_splits_out_the_turn_that_holds_the_system_prompt():
    gemma = "<bos><start_of_turn>user\nTOOLS\n\nhi<end_of_turn>\n<start_of_turn>model\n"
    qwen = "<|im_start|>system\nTOOLS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert GEMMA3.system_turn_text(gemma) == "TOOLS\n\nhi"
    assert QWEN3.system_turn_text(qwen) == "TOOLS"
