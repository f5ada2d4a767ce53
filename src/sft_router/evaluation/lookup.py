"""The lookup router: the no-model control a sceptic builds first, scored by `make eval` as the `lookup` variant.

Built from the train split only. The tool: a character n-gram (1-3) TF-IDF nearest-neighbour vote over the train user
messages: of the 10 nearest train rows, those the prompt allows (a request for a tool shown in this prompt, or a
reply) vote with their similarity; the winner is a call of that tool or a reply (the nearest voter's text). The arguments: a dictionary of the slot values train rows stated (the text as said, and the
value the call carried), matched in the message, longest first, no two arguments on the same characters; a text
that fits two arguments (an origin and a destination) goes to the one whose train messages had the same two
characters before it. No model and no weights: seconds on a CPU. Where it scores near the fine-tuned model, the
split measures recall of train, not routing.

Usage: python -m sft_router.evaluation.lookup --config recipes/gemma-3-270m-it/router.yaml   (its metrics on each eval
split)
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

NGRAMS = (1, 2, 3)
CONTEXT_CHARS = 2
NEIGHBOURS = 10  # chosen on the validation split (5, 10, 20, 30 tried), never on a test split
IMAGE_CHAR = "\ue000"  # the image marker as one character, so its n-grams do not swamp the message's
FALLBACK_REPLY = "Sorry, none of my current tools can do that."


@dataclass(frozen=True)
class SlotText:
    """One way train users stated an argument: the text (lower case) and the value the call carried."""

    slot: str
    text: str
    value: object


def _is_word_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _ngrams(text: str) -> Counter:
    padded = f" {text} "
    return Counter(padded[i : i + n] for n in NGRAMS for i in range(len(padded) - n + 1))


class LookupRouter:
    """Nearest train neighbour for the tool, a dictionary of train slot values for the arguments."""

    def __init__(
        self,
        train_rows,
        image_marker: str = "<start_of_image>",
        tool_of_family: dict | None = None,
        neighbours: int = NEIGHBOURS,
    ):
        self.image_marker, self.neighbours = image_marker, neighbours
        rows = list(train_rows)
        self.labels = [_intent(row, tool_of_family or {}) for row in rows]
        self.answers = [row["completion"][0]["content"] for row in rows]
        self._index([self._normal(row["user"]) for row in rows])
        self.slot_texts, self.contexts, self.argument_order = self._dictionary(rows)

    def _normal(self, message: str) -> str:
        return message.replace(self.image_marker, IMAGE_CHAR).lower()

    def _index(self, messages: list[str]) -> None:
        """Inverted index of L2-normalised TF-IDF (sublinear tf) character n-gram vectors."""
        counts = [_ngrams(message) for message in messages]
        document_frequency = Counter(gram for row in counts for gram in row)
        total = len(messages)
        self.idf = {gram: math.log((total + 1) / (df + 1)) + 1 for gram, df in document_frequency.items()}
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for index, row in enumerate(counts):
            for gram, weight in self._weights(row).items():
                entry = postings.setdefault(gram, ([], []))
                entry[0].append(index)
                entry[1].append(weight)
        self.postings = {gram: (np.array(ids), np.array(ws)) for gram, (ids, ws) in postings.items()}

    def _weights(self, counts: Counter) -> dict[str, float]:
        weights = {g: (1 + math.log(c)) * self.idf[g] for g, c in counts.items() if g in self.idf}
        norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        return {gram: weight / norm for gram, weight in weights.items()}

    def _dictionary(self, rows):
        """Per tool, every (slot, text) a train call stated with its value; per (tool, slot), the characters train
        messages put before the argument; per tool, its arguments in the order calls gave them."""
        found: dict[tuple[str, str, str], object] = {}
        contexts: dict[tuple[str, str], set[str]] = {}
        order: dict[str, list[str]] = {}
        for row in rows:
            if not row["tool_name"]:
                continue
            tool, message = row["tool_name"], self._normal(row["user"])
            arguments, said = json.loads(row["arguments"]), json.loads(row.get("values") or "{}")
            order.setdefault(tool, [])
            order[tool] += [slot for slot in arguments if slot not in order[tool]]
            for slot, text in said.items():
                if slot not in arguments or not str(text).strip():
                    continue
                text = str(text).lower()
                found.setdefault((tool, slot, text), arguments[slot])
                start = message.find(text)
                if start >= 0:
                    contexts.setdefault((tool, slot), set()).add(message[max(0, start - CONTEXT_CHARS) : start])
        texts: dict[str, list[SlotText]] = {}
        for (tool, slot, text), value in found.items():
            texts.setdefault(tool, []).append(SlotText(slot, text, value))
        return texts, contexts, order

    def similarities(self, message: str) -> np.ndarray:
        scores = np.zeros(len(self.labels))
        for gram, weight in self._weights(_ngrams(self._normal(message))).items():
            ids, values = self.postings[gram]
            scores[ids] += weight * values
        return scores

    def route(self, message: str, shown_tools: list[str]) -> str:
        """The router's answer text: among the NEIGHBOURS nearest train rows that ask for a shown tool or got a
        reply, the label with the most similarity wins; a call of that tool, or the nearest such row's reply."""
        scores = self.similarities(message)
        nearest = np.argsort(-scores, kind="stable")[: self.neighbours]
        votes: dict[str, float] = {}
        for index in nearest:
            label = self.labels[index]
            if not label or label in shown_tools:
                votes[label] = votes.get(label, 0.0) + float(scores[index])
        tool = max(votes, key=votes.get) if votes else ""
        if not tool:
            replies = [self.answers[i] for i in nearest if not self.labels[i]]
            return replies[0] if replies else FALLBACK_REPLY
        arguments = self.arguments(tool, message)
        return json.dumps({"tool_name": tool, "arguments": arguments}, ensure_ascii=False)

    def arguments(self, tool: str, message: str) -> dict:
        """Train slot texts found in the message: longest first, then the one train introduced the same way."""
        text = self._normal(message)
        matches = []
        for entry in self.slot_texts.get(tool, []):
            for start in _occurrences(text, entry.text):
                context = text[max(0, start - CONTEXT_CHARS) : start] in self.contexts.get((tool, entry.slot), ())
                matches.append((-len(entry.text), not context, start, entry))
        filled: dict[str, object] = {}
        taken: list[tuple[int, int]] = []
        for length, _, start, entry in sorted(matches, key=lambda m: m[:3]):
            end = start - length
            if entry.slot in filled or any(start < b and a < end for a, b in taken):
                continue
            filled[entry.slot] = entry.value
            taken.append((start, end))
        return {slot: filled[slot] for slot in self.argument_order.get(tool, []) if slot in filled}

    def route_rows(self, rows) -> list[str]:
        return [self.route(row["user"], list(row["tools"])) for row in rows]


def _intent(row, tool_of_family: dict[str, str]) -> str:
    """The tool a train row asks for: its call's, or for a request whose tool the prompt lacked, that tool."""
    if row["tool_name"]:
        return row["tool_name"]
    return tool_of_family.get(row.get("family", ""), "") if row["kind"] == "missing_tool" else ""


def _occurrences(text: str, needle: str):
    """Start positions of `needle` in `text`, not inside a Latin word or number ("on" is not in "phone")."""
    start = text.find(needle)
    while start >= 0:
        end = start + len(needle)
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if not (_is_word_char(needle[0]) and _is_word_char(before)) and not (
            _is_word_char(needle[-1]) and _is_word_char(after)
        ):
            yield start
        start = text.find(needle, start + 1)


def build_lookup(recipe) -> LookupRouter:
    """The router built from the recipe's train split (and its catalog's image marker)."""
    from sft_router.datagen.catalog import load_catalog, load_split

    catalog = load_catalog(recipe.data.catalog)
    return LookupRouter(load_split(recipe, "train"), catalog.image_marker, catalog.tool_of_family())


def main(argv: list[str] | None = None) -> None:
    from sft_router.core.config import parse_recipe
    from sft_router.core.router_format import target_text
    from sft_router.evaluation.eval_data import load_eval_splits
    from sft_router.evaluation.scoring import interval, score

    (recipe,) = parse_recipe(list(sys.argv[1:] if argv is None else argv))
    start = time.time()
    router = build_lookup(recipe)
    print(f"lookup: built from {len(router.labels)} train rows in {time.time() - start:.1f} s")
    for name, rows in load_eval_splits(recipe).items():
        start = time.time()
        metrics, _ = score(router.route_rows(rows), [target_text(row) for row in rows])
        low, high = interval(metrics, "exact_match_rate")
        print(
            f"lookup {name}: exact_match={metrics['exact_match_rate']:.3f} [{low:.3f}, {high:.3f}] "
            f"tool_name_accuracy={metrics['tool_name_accuracy']:.3f} "
            f"no_call_accuracy={metrics['no_call_accuracy']:.3f} ({len(rows)} rows, {time.time() - start:.1f} s)"
        )


if __name__ == "__main__":
    from sft_router.core.errors import one_line_errors

    one_line_errors(main)()
