"""The Space route of `make gguf`: ask ggml-org/gguf-my-repo to convert the already-pushed merged model.

The Space is a Gradio app behind Hugging Face OAuth; its `process_model` endpoint is called through
gradio_client with the user's token as both the access token and the OAuth token the function takes.
The Space may hide its API or refuse non-browser sessions: then one line says so and gives the exact
manual steps and the repo the Space will create (`<user>/<model>-Q8_0-GGUF`, next to the model repo).

Usage: make gguf GGUF_BACKEND=space RECIPE=recipes/gemma-3-270m-it/router.yaml   (after `make publish`)
"""

from __future__ import annotations

import os

from sft_router.core.errors import UsageError

SPACE = "ggml-org/gguf-my-repo"
SPACE_URL = f"https://huggingface.co/spaces/{SPACE}"
QUANTIZATION = "Q8_0"


def space_repo_id(model_id: str) -> str:
    """The repo gguf-my-repo creates: under the token's user, the model's name plus the quantization."""
    namespace, name = model_id.split("/", 1)
    return f"{namespace}/{name}-{QUANTIZATION}-GGUF"


def manual_steps(model_id: str) -> str:
    return (
        f"convert by hand: open {SPACE_URL}, sign in with Hugging Face, set Hub Model ID to {model_id}, "
        f"Quantization Method to {QUANTIZATION}, press Submit; it creates {space_repo_id(model_id)}"
    )


def call_process_model(src: str, model_id: str, token: str):
    """One `process_model` call; every failure of the Space or the connection becomes a UsageError."""
    from gradio_client import Client

    try:
        client = Client(src, token=token, oauth_token=token, verbose=False, analytics_enabled=False)
        return client.predict(model_id=model_id, q_method=QUANTIZATION, api_name="/process_model")
    except Exception as exc:  # gradio_client raises bare Exception/ValueError/httpx errors alike
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UsageError(
            f"{SPACE} refused the API call ({type(exc).__name__}: {reason}); {manual_steps(model_id)}"
        ) from exc


def convert_on_space(recipe, src: str | None = None) -> str:
    """Ask the Space (or a Gradio app at `src`) to convert the pushed merged model; returns the GGUF repo id."""
    from sft_router.core.config import repo_ids

    model_id = repo_ids(recipe)["model"]
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise UsageError(
            f"HF_TOKEN is not set: the Space converts {model_id} with your token; export it, or {manual_steps(model_id)}"
        )
    call_process_model(src or os.environ.get("GGUF_SPACE", SPACE), model_id, token)
    print(f"gguf: {SPACE} converted {model_id} into https://huggingface.co/{space_repo_id(model_id)}")
    return space_repo_id(model_id)
