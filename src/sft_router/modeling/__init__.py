"""Models: built-in base models and their families, loading, prompt rendering, scene packing, the context length and
the llama.cpp runtime.
"""
