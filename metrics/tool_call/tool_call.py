"""`evaluate` module for router outputs: a thin wrapper over sft_router.evaluation.scoring, so every caller scores alike.

Each prediction is a raw model output; each reference is the expected tool call (JSON or Python-dict
text with `tool_name` and `arguments`) or the expected reply (any other text). `compute` returns exactly
what `sft_router.evaluation.scoring.score` returns as metrics: the seed's keys first, then strict/lenient JSON
validity, no-call, false-call and missed-call rates, bootstrap 95% intervals, per-tool scores and the
confusion table. The scoring module's docstring says how each one is computed. Needs `sft_router`
importable (`pip install -e .` in this repository).

Usage: evaluate.load("metrics/tool_call").compute(predictions=[...], references=[...])
"""

import datasets
import evaluate

from sft_router.evaluation import scoring

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str, the raw model outputs.
    references: list of str, the expected call text or reply, paired with predictions by position.
Returns:
    dict: exact_match_rate, tool_name_accuracy, average_argument_precision, average_argument_recall,
    average_argument_f1, total_samples, then the extra metrics of sft_router.evaluation.scoring.aggregate.
Examples:
    >>> tool_call = evaluate.load("metrics/tool_call")
    >>> tool_call.compute(predictions=['output：{"tool_name": "a", "arguments": {}}'],
    ...                   references=['{"tool_name": "a", "arguments": {}}'])["exact_match_rate"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class ToolCall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=__doc__,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        metrics, _ = scoring.score(list(predictions), list(references))
        return metrics
