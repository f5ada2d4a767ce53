"""Evaluation: scoring, the no-model lookup, the variants that answer, GGUF decoding, BFCL and the markdown tables
reports are made of.
"""
