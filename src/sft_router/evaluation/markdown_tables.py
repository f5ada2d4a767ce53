"""Markdown tables and their cells: every table the project writes (comparison pages, cards, results, BFCL) goes
through `markdown_table`, and every figure with a bootstrap interval through `metric_cell`, so they all look alike.

Usage: from sft_router.evaluation.markdown_tables import markdown_table, metric_cell
       markdown_table(["model", "exact match"], [["finetuned", metric_cell(metrics, "exact_match_rate")]])
"""

from __future__ import annotations

from sft_router.evaluation.scoring import interval

ALIGN = {None: "---", "left": ":---", "right": "---:", "center": ":---:"}


def _row(cells) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def markdown_table(header, rows, align=None) -> str:
    """A GitHub markdown table: cells are str()'d and a `|` in one is escaped; `align` gives one of left, right,
    center or None per column. A row of the wrong width is refused rather than drawn shifted."""
    header = list(header)
    align = list(align) if align is not None else [None] * len(header)
    rows = [list(row) for row in rows]
    for row in [align, *rows]:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells for {len(header)} columns: {row!r}")
    separator = "|" + "".join(f"{ALIGN[side]}|" for side in align)
    return "\n".join([_row(header), separator, *map(_row, rows)])


def number_cell(value, digits: int = 3, missing: str = "-") -> str:
    """`0.257`, or `missing` when there is no number."""
    return f"{value:.{digits}f}" if isinstance(value, int | float) else missing


def span_cell(span, digits: int = 3, missing: str = "-") -> str:
    """`[0.210, 0.307]`, or `missing` when there is no interval."""
    return f"[{span[0]:.{digits}f}, {span[1]:.{digits}f}]" if span else missing


def metric_cell(metrics: dict, key: str, digits: int = 3, missing: str = "-", scale: float = 1) -> str:
    """`0.257 [0.210, 0.307]`: the figure and the scorer's 95% interval (`<key>_ci95`), the figure alone when it has
    none; `scale=100` shows a share in %."""
    value = metrics.get(key)
    if not isinstance(value, int | float):
        return missing
    span = interval(metrics, key)
    scaled = [scale * bound for bound in span] if span else None
    return number_cell(scale * value, digits) + (f" {span_cell(scaled, digits)}" if scaled else "")


def percent_cell(metrics: dict, key: str, missing: str = "-") -> str:
    """`61.6 [52.0, 70.1]`: a share in % to one decimal, with its interval when it has one (BFCL's tables)."""
    return metric_cell(metrics, key, digits=1, missing=missing, scale=100)
