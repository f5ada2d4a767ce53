"""Release: model and dataset cards, Ollama files, the gguf-my-repo Space and the serving gate."""
