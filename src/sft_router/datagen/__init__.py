"""Data generation: the tool catalog, the row generator and every check a row must pass (rules, scenes, leaks, BFCL
contamination).
"""
