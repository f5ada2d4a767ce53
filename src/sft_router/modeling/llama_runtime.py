"""The llama.cpp runtime (llama-cpp-python, pinned): built once into the project's wheel cache, then greedy decoding.

Why our own wheel cache: llama-cpp-python ships only an sdist, and its default build compiles with
-march=native, which dies with an illegal instruction on machines whose CPU flags the compiler
misreads (these ones). We build the pinned sdist once with GGML_NATIVE=OFF plus the AVX-512 extensions
the CPU reports (`build_flags`, AMX off) into ~/.cache/sft-router/wheels/<flags hash>/ and install that file; pip's own cache keys wheels by version only, so it
could hand back a wheel built with other flags, and is bypassed. CI keeps ~/.cache/sft-router and so
reuses the wheel instead of spending ~10 minutes rebuilding it.

Usage: python -m sft_router.modeling.llama_runtime install   (builds the wheel once, ~10 min on 2 cores; later runs
take seconds)
       python -m sft_router.modeling.llama_runtime check     (exit status 0 when the installed runtime is the cached
       build)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from sft_router.core.config import cpu_flags
from sft_router.core.errors import UsageError, one_line_errors
from sft_router.modeling.base_models import cache_root
from sft_router.modeling.context_length import gguf_context_length

LLAMA_CPP_PYTHON = "0.3.36"
LLAMA_CPP_PYTHON_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
# The same pins as the `runtime` extra in pyproject.toml (tests/test_gguf_runtime.py holds them equal).
RUNTIME_PINS = (
    f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
    "diskcache==5.6.3",
    "fastapi==0.165.0",
    "uvicorn==0.54.0",
    "sse-starlette==3.7.0",
    "starlette-context==0.3.6",
    "pydantic-settings==2.16.3",
)  # + `make serve`
PORTABLE = "-DGGML_NATIVE=OFF"  # llama.cpp's portable x86 build: AVX2/FMA/F16C, what every machine here has
# AVX-512 extensions llama.cpp can use, by the /proc/cpuinfo flag that says the CPU has them. AMX stays off: the
# native build's crash on these machines was AMX (-march=native misread), and Q8_0 routing gains nothing from it.
AVX512_FLAGS = (("avx512_vnni", "-DGGML_AVX512_VNNI=ON"), ("avx512_bf16", "-DGGML_AVX512_BF16=ON"))
LIBRARY = "llama_cpp/lib/libllama.so"
INSTALL_HINT = "run `make runtime` (builds the pinned llama.cpp runtime once, ~10 min on 2 cores)"


def build_flags(flags: set[str] | None = None) -> str:
    """CMake flags for this CPU, chosen from its flags at run time: AVX-512 (with VNNI/BF16 where present) when
    the CPU has it, else the portable build. The wheel cache is keyed by these, so each kind of CPU gets its own."""
    flags = cpu_flags() if flags is None else flags
    if not {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"} <= flags:  # what GGML_AVX512 compiles for
        return PORTABLE
    extra = [cmake for flag, cmake in AVX512_FLAGS if flag in flags]
    return " ".join([PORTABLE, "-DGGML_AVX512=ON", *extra, "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF"])


def wheel_dir() -> Path:
    flags = hashlib.sha256(build_flags().encode()).hexdigest()[:8]
    return cache_root() / "wheels" / f"llama-cpp-python-{LLAMA_CPP_PYTHON}-{flags}"


def cached_wheel() -> Path | None:
    wheels = sorted(wheel_dir().glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}-*.whl"))
    return wheels[0] if wheels else None


def build_wheel() -> Path:
    """Compile the pinned sdist with portable CPU flags into the wheel cache (atomically: no half wheel)."""
    target = wheel_dir()
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    env = {**os.environ, "CMAKE_ARGS": build_flags(), "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", str(fetch_sdist()), "-w", str(tmp)]
    print(f"runtime: building llama-cpp-python {LLAMA_CPP_PYTHON} with {build_flags()} (once; ~10 min on 2 cores)")
    if subprocess.run(command, env=env).returncode != 0:
        raise UsageError("building llama-cpp-python failed (see above): install cmake and a C++ compiler, then rerun")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(target)
    return cached_wheel()


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def installed_library() -> Path | None:
    """libllama.so of the llama_cpp package importable by this interpreter, found without importing it."""
    from importlib.util import find_spec

    spec = find_spec("llama_cpp")
    if spec is None or not spec.origin:
        return None
    library = Path(spec.origin).parent / "lib" / "libllama.so"
    return library if library.is_file() else None


def installed_is_cached_build() -> bool:
    wheel, library = cached_wheel(), installed_library()
    if wheel is None or library is None:
        return False
    with zipfile.ZipFile(wheel) as archive:
        return _sha256_bytes(archive.read(LIBRARY)) == _sha256_bytes(library.read_bytes())


def install_runtime() -> Path:
    """Install the cached wheel (built first when missing) and its pinned dependencies into this environment."""
    wheel = cached_wheel() or build_wheel()
    if not installed_is_cached_build():
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-cache-dir",
            "--force-reinstall",
            "--no-deps",
            str(wheel),
        ]
        dependencies = [sys.executable, "-m", "pip", "install", "--quiet", *RUNTIME_PINS[1:]]
        if subprocess.run(command).returncode or subprocess.run(dependencies).returncode:
            raise UsageError(f"installing {wheel.name} failed (see above); delete {wheel_dir()} and rerun")
    return wheel


def require_runtime():
    """The llama_cpp module, or a one-line error naming the install command."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise UsageError(f"the llama.cpp runtime (llama_cpp) is not installed: {INSTALL_HINT}") from exc
    if llama_cpp.__version__ != LLAMA_CPP_PYTHON:
        raise UsageError(
            f"llama_cpp {llama_cpp.__version__} is installed, the project pins {LLAMA_CPP_PYTHON}: {INSTALL_HINT}"
        )
    return llama_cpp


# How a GGUF is loaded for routing, by `make eval` and `make serve` alike: the same batch split and attention kernel
# give the same greedy answers. Flash attention and 1024-token batches halve prompt time on CPU (a routed prompt is
# ~800 tokens).
GGUF_SETTINGS = {"n_batch": 1024, "n_ubatch": 1024, "flash_attn": True}


def load_gguf(
    path: Path, n_ctx: int | None = None, logits_all: bool = False, n_threads: int | None = None, **settings
):
    """A llama.cpp model for greedy routing (`settings`: more Llama arguments, e.g. the server's chat_format), with
    the context `make gguf` chose (context_length.gguf_context_length) unless given `n_ctx`.

    swa_full: Llama.generate reuses the longest prefix the next prompt shares with the cached one by removing the
    cache past it (llama_memory_seq_rm) and never checks what Gemma 3's sliding-window layers still hold. Without
    swa_full their cache is a ring of about window + n_ubatch cells that the last prompt's tail overwrote, so a
    reused prefix would silently lose its window (tests/test_gguf_runtime.py shows the answers change); with it,
    every position is kept and reuse is exact."""
    llama_cpp = require_runtime()
    if not Path(path).is_file():
        raise UsageError(f"no GGUF at {path}: run `make gguf` first")
    threads = n_threads or os.cpu_count()  # prompts too: Llama's n_threads_batch would default to every core
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx or gguf_context_length(path),
        **GGUF_SETTINGS,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=logits_all,
        swa_full=True,
        seed=0,
        verbose=False,
        **settings,
    )


def prompt_ids(llm, rendered_prompt: str) -> list[int]:
    """Token ids of a prompt already rendered by the chat template (it carries <bos> as text)."""
    return llm.tokenize(rendered_prompt.encode("utf-8"), add_bos=False, special=True)


def greedy_ids(llm, ids: list[int], max_new_tokens: int, grammar=None, reuse_prefix: bool = True) -> list[int]:
    """Greedy continuation of `ids`, stopping at an end-of-generation token (Gemma: <end_of_turn>, <eos>)."""
    llama_cpp = require_runtime()
    vocab = llm._model.vocab  # llama-cpp-python exposes the vocabulary only through its model wrapper
    if not reuse_prefix:
        llm.reset()
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, grammar=grammar):
        if llama_cpp.llama_vocab_is_eog(vocab, token) or len(out) >= max_new_tokens:
            break
        out.append(token)
    return out


def complete(llm, rendered_prompt: str, max_new_tokens: int, grammar=None, reuse_prefix: bool = True) -> str:
    """The model's answer text, special tokens dropped, as `make eval` decodes transformers' output."""
    new_ids = greedy_ids(llm, prompt_ids(llm, rendered_prompt), max_new_tokens, grammar, reuse_prefix)
    return llm.detokenize(new_ids, special=False).decode("utf-8", errors="replace").strip()


def complete_by_scene(
    llm, prompts: list[str], scenes: list[list[int]], max_new_tokens: int, grammars=None, desc: str = "llama.cpp"
) -> list[str]:
    """Answers in the prompts' order, decoded scene after scene (`scenes`: prompt indices, see prompts.scenes), so
    that each prompt follows one that shares its system prompt and tools: llama.cpp then evaluates only the request
    (Llama.generate keeps what the last prompt shares with the next). `grammars`: one per scene, or None."""
    from tqdm.auto import tqdm

    outputs = [""] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="prompt") as progress:
        for scene, grammar in zip(scenes, grammars or [None] * len(scenes)):
            for index in scene:
                outputs[index] = complete(llm, prompts[index], max_new_tokens, grammar)
                progress.update()
    return outputs


def gguf_family(llm):
    """The model family (sft_router.modeling.families) of a loaded GGUF, by the architecture llama.cpp wrote into
    it."""
    from sft_router.modeling.families import family_of

    return family_of(llm.metadata["general.architecture"])


def stop_token_id(llm) -> int:
    return prompt_ids(llm, gguf_family(llm).stop_token)[0]


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    command = (sys.argv[1:] if argv is None else argv) or ["install"]
    if command[0] == "install":
        wheel = install_runtime()
        print(f"runtime: llama-cpp-python {LLAMA_CPP_PYTHON} installed from {wheel}")
    elif command[0] == "check":
        if not installed_is_cached_build():
            raise UsageError(f"the installed llama_cpp is not the cached portable build: {INSTALL_HINT}")
        print(f"runtime: llama-cpp-python {LLAMA_CPP_PYTHON} from {cached_wheel()}")
    else:
        raise UsageError(f"unknown command '{command[0]}': use `install` or `check`")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist() -> Path:
    """The pinned llama-cpp-python sdist (llama.cpp's converter and runtime sources), downloaded once."""
    sdist_dir = cache_root() / "sdist"
    sdist = sdist_dir / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.is_file():
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-binary",
            ":all:",
            "--no-deps",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
            "-d",
            str(sdist_dir),
        ]
        if subprocess.run(command).returncode != 0:
            raise UsageError(
                f"cannot download llama-cpp-python=={LLAMA_CPP_PYTHON} from PyPI; check the network "
                "or point LLAMA_CPP_DIR at a llama.cpp checkout"
            )
    if _sha256(sdist) != LLAMA_CPP_PYTHON_SHA256:
        sdist.unlink()
        raise UsageError(f"{sdist.name} does not match its pinned sha256; it was deleted, run again to refetch")
    return sdist


def fetch_converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py (and its gguf-py) at the pinned commit; extracted once."""
    if os.environ.get("LLAMA_CPP_DIR"):
        return Path(os.environ["LLAMA_CPP_DIR"])
    root = cache_root() / "llama.cpp" / LLAMA_CPP_PYTHON
    if (root / "convert_hf_to_gguf.py").is_file():
        return root
    sdist = fetch_sdist()
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
    with tarfile.open(sdist) as archive:
        members = [
            m
            for m in archive.getmembers()
            if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(CONVERTER_PARTS)
        ]
        for member in members:
            member.name = member.name[len(prefix) :]
        archive.extractall(tmp, members=members, filter="data")
    tmp.rename(root)
    return root


def llama_cpp_commit() -> str | None:
    """The llama.cpp commit the pinned sdist vendors (its git submodule HEAD); None for an LLAMA_CPP_DIR checkout."""
    if os.environ.get("LLAMA_CPP_DIR"):
        return None
    with tarfile.open(fetch_sdist()) as archive:
        head = archive.extractfile(f"llama_cpp_python-{LLAMA_CPP_PYTHON}/.git/modules/vendor/llama.cpp/HEAD")
        return head.read().decode().strip()


def run_pinned(converter: Path, script: str, args: list[str], what: str) -> None:
    """One of the pinned checkout's scripts (`script`, relative to it), run with its own gguf-py."""
    run_with_pinned_gguf(converter, [str(converter / script), *args], what)


def run_with_pinned_gguf(converter: Path, argv: list[str], what: str) -> None:
    """`python <argv>` with the pinned gguf-py importable; a failure is one line, its last line of output."""
    env = {**os.environ, "PYTHONPATH": str(converter / "gguf-py")}  # the pinned gguf-py, not the installed one
    result = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UsageError(f"llama.cpp {what} failed: {tail[0]}")


if __name__ == "__main__":
    main()
