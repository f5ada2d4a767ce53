"""sft-router: fine-tune Gemma 3 270M into an agent tool-call router, reproducibly, from one recipe."""

__version__ = "0.1.0"
