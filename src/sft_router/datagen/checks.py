"""Every check on generated rows before anything is written: each row against the written rules (RowValidator: the call
names a shown tool and fits its schema, a reply names no tool the prompt lacks), scenes kept together, and no leak
from train into an evaluation split (equal once normalised, near-duplicate by character 5-gram Jaccard, or the same
template with the same values). The same kind of check against BFCL's cases (contamination: its questions and function names
in no generated row).

Usage: from sft_router.datagen.checks import check_rows, assert_no_leaks
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter

import jsonschema

from sft_router.core.errors import UsageError
from sft_router.core.router_format import (
    render_call,
    render_tool,
    tools_in_prompt,
)
from sft_router.datagen.catalog import (
    CALL_KINDS,
    KINDS,
    LANGS,
    Catalog,
    entry_text_value,
)
from sft_router.datagen.functions import FAMILY as FUNCTION_FAMILY
from sft_router.datagen.functions import check_irrelevance
from sft_router.datagen.noise import NoiseRules, number_words

GRAM, NEAR_DUPLICATE = 5, 0.8  # an evaluation message this close to a train message is a leak


class TrainMessages:
    """Train's messages and (template, values) pairs: whether an evaluation message leaks from train (check_leaks's
    rules), asked by check_leaks and by the generator, which draws a function request again when it would."""

    def __init__(self, rows: list[dict]):
        self.users: dict[str, str] = {}
        for row in rows:
            self.users.setdefault(normalise(row["user"]), row["user"])
        self.pairs = {(row["template"], row["values"]) for row in rows}
        self.near = NearDuplicates(self.users)

    def leak(self, user: str, template: str, values: str) -> str | None:
        """How `user` (with its template and values as JSON) leaks from train, or None."""
        key = normalise(user)
        if key in self.users:
            same = "" if self.users[key] == user else f" as '{self.users[key]}' once normalised"
            return f"user message '{user}' is in train{same}"
        if (template, values) in self.pairs:
            return f"template '{template}' with values {values} is in train"
        if found := self.near.nearest(key):
            return (
                f"user message '{user}' nearly duplicates train's '{self.users[found[1]]}' "
                f"(character {GRAM}-gram Jaccard {found[0]:.2f} >= {NEAR_DUPLICATE})"
            )
        return None


class RowValidator:
    """Checks one generated row against the written rules: a call names a tool shown in its own prompt and satisfies
    the schema shown there, no two arguments repeat one value, and a reply names no tool or feature the prompt
    does not show."""

    def __init__(self, catalog: Catalog, functions=None):
        self.catalog, self.functions = catalog, functions
        self.rendered = {name: render_tool(tool) for name, tool in catalog.tools.items()}
        self.tool_of_family = catalog.tool_of_family()
        self.noise = NoiseRules(catalog.noise, {})
        self.features = {lang: self._features(lang) for lang in LANGS}
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}

    def _features(self, lang: str) -> list[tuple[re.Pattern, set[str]]]:
        by_word: dict[str, set[str]] = {}
        for name, tool in self.catalog.tools.items():
            by_word.setdefault(tool["feature"][lang], set()).add(name)
        bound = r"\b" if lang == "en" else ""
        return [(re.compile(bound + re.escape(word) + bound, re.IGNORECASE), names) for word, names in by_word.items()]

    def check(self, row: dict) -> None:
        where = f"row {row.get('id', '?')} (family '{row['family']}', template '{row['template']}')"
        if row["kind"] not in KINDS:
            raise UsageError(f"{where}: unknown kind '{row['kind']}'; use one of {', '.join(KINDS)}")
        if row["kind"] in CALL_KINDS:
            self._check_call(row, where)
            return
        if row["tool_name"]:
            raise UsageError(f"{where}: a {row['kind']} row names tool '{row['tool_name']}'; fix the generator")
        if row["kind"] == "missing_tool" and row["family"].startswith(FUNCTION_FAMILY):
            check_irrelevance(self.functions, row, where)
        elif row["kind"] == "missing_tool" and self.tool_of_family[row["family"]] in row["tools"]:
            raise UsageError(
                f"{where}: tool '{self.tool_of_family[row['family']]}' is in the prompt of a missing_tool row; "
                "fix the generator"
            )
        self._check_reply(row, where)

    def _check_reply(self, row: dict, where: str) -> None:
        """Rule 11: a reply offers only what the prompt shows."""
        reply, shown = row["completion"][0]["content"], set(row["tools"])
        named = [name for name in self.catalog.tools if name in reply and name not in shown]
        named += [
            pattern.pattern
            for pattern, names in self.features[row["lang"]]
            if not names & shown and pattern.search(reply)
        ]
        if named:
            raise UsageError(
                f"{where}: reply '{reply}' names '{named[0]}', which no tool in its prompt does; "
                "condition the reply on the shown tools (rule 11)"
            )

    def _validator(self, schema: dict):
        key = json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            self._validators[key] = jsonschema.Draft202012Validator({**schema, "additionalProperties": False})
        return self._validators[key]

    def _check_call(self, row: dict, where: str) -> None:
        name = row["tool_name"]
        system = row["prompt"][0]["content"]
        tools = {entry["tool_name"]: entry for entry in tools_in_prompt(system)}
        known = name not in self.rendered or self.rendered[name] in system
        if name not in tools or name not in row["tools"] or not known:
            raise UsageError(f"{where}: target tool '{name}' is not in its prompt's tool list; fix the generator")
        arguments = json.loads(row["arguments"])
        error = next(iter(self._validator(tools[name]["arguments"]).iter_errors(arguments)), None)
        if error is not None:
            raise UsageError(
                f"{where}: arguments {row['arguments']} break the schema of '{name}' ({error.message}); "
                "fix the template or the slot pool"
            )
        values = [v for v in arguments.values() if isinstance(v, str)]  # flags and counts may well agree
        if len(set(values)) != len(values):
            raise UsageError(f"{where}: two arguments of {row['arguments']} repeat one value (rule 14); fix the pools")
        if row["completion"][0]["content"] != render_call(name, arguments):
            raise UsageError(f"{where}: completion does not match its target call to '{name}'; fix the generator")
        if name in self.catalog.tools and row["family"] in self.tool_of_family:
            self._check_values(row, self.catalog.tools[name], arguments, where)

    def _check_values(self, row: dict, tool: dict, arguments: dict, where: str) -> None:
        """Rule 1 on a catalog call: a copied value stands in the message as it is in the call, and is an entry of
        its pool, that entry said in words, or that entry with one slip (as typed); a mapped value is a pool value."""
        properties = tool["parameters"]["properties"]
        for slot, value in arguments.items():
            pool = [entry_text_value(e, slot)[1] for e in self.catalog.pool(tool, slot, row["lang"])]
            copied = properties[slot].get("type") == "string" and "enum" not in properties[slot]
            if copied and value not in row["user"]:
                raise UsageError(
                    f"{where}: argument {slot}={value!r} is not in the message as typed; fix the generator"
                )
            said = {number_words(str(v), row["lang"]) for v in pool} if copied else set()
            if (
                pool
                and value not in pool
                and value not in said
                and not (copied and any(self.noise.is_slip(value, str(v), row["lang"]) for v in pool))
            ):
                raise UsageError(
                    f"{where}: argument {slot}={value!r} is no entry of the '{self.catalog.pool_name(tool, slot)}' "
                    "pool, nor one said in words or typed with a slip; fix the generator or the pool"
                )


def check_rows(splits: dict[str, list[dict]], catalog: Catalog, functions=None) -> None:
    validator = RowValidator(catalog, functions)
    for name, rows in splits.items():
        check_scenes(name, rows)
        for row in rows:
            validator.check(row)


def check_scenes(split: str, rows: list[dict]) -> None:
    """A scene belongs to one split, its rows are adjacent and show one system prompt, byte for byte."""
    first: dict[str, dict] = {}
    for previous, row in zip([None, *rows], rows):
        scene, where = row["scene"], f"row {row['id']} (scene {row['scene']})"
        if not scene.startswith(f"{split}-s"):
            raise UsageError(f"{where}: a {split} row in a scene of another split; fix the generator")
        if scene in first and previous["scene"] != scene:
            raise UsageError(f"{where}: the scene's rows are not together; fix the generator")
        if row["prompt"][0]["content"] != first.setdefault(scene, row)["prompt"][0]["content"]:
            raise UsageError(f"{where}: its system prompt differs from its scene's; fix the generator")


def normalise(text: str) -> str:
    """Text as a reader compares it: full-width folded to half-width (NFKC), case folded, punctuation and
    whitespace dropped. "Set a timer " and "set a timer。" are the same request; the chat template trims the first."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if not ch.isspace() and not unicodedata.category(ch).startswith("P"))


def char_grams(text: str, n: int = GRAM) -> frozenset[str]:
    return frozenset(text[i : i + n] for i in range(max(1, len(text) - n + 1)))


class NearDuplicates:
    """Train messages, indexed for "which one has character 5-gram Jaccard >= threshold with this text?".

    Prefix filtering keeps it fast: with the grams of every message in one order (rarest first), two sets whose
    Jaccard reaches t share a gram among the first |x| - ceil(t |x|) + 1 of each, so only those are indexed.
    """

    def __init__(self, texts, threshold: float = NEAR_DUPLICATE):
        self.threshold = threshold
        self.grams = {text: char_grams(text) for text in texts}
        counts = Counter(gram for grams in self.grams.values() for gram in grams)
        self.order = lambda gram: (counts.get(gram, 0), gram)
        self.index: dict[str, list[str]] = {}
        for text, grams in self.grams.items():
            for gram in self._prefix(grams):
                self.index.setdefault(gram, []).append(text)

    def _prefix(self, grams: frozenset[str]) -> list[str]:
        return sorted(grams, key=self.order)[: len(grams) - math.ceil(self.threshold * len(grams)) + 1]

    def nearest(self, text: str) -> tuple[float, str] | None:
        """(Jaccard, train text) of the most similar train text at or above the threshold, else None."""
        grams = char_grams(text)
        candidates = {other for gram in self._prefix(grams) for other in self.index.get(gram, ())}
        scored = ((len(grams & self.grams[o]) / len(grams | self.grams[o]), o) for o in sorted(candidates))
        best = max(scored, default=None)
        return best if best is not None and best[0] >= self.threshold else None


def check_leaks(splits: dict[str, list[dict]]) -> list[str]:
    """Rows of every split but train whose user message, compared normalised, equals or nearly equals (character
    5-gram Jaccard >= 0.8) a train message, or whose (template, values) pair occurs in train; each names the pair."""
    train = TrainMessages(splits["train"])
    found = (
        f"{name} {leak}"
        for name in splits
        if name != "train"
        for row in splits[name]
        if (leak := train.leak(row["user"], row["template"], row["values"]))
    )
    return sorted(set(found))


def assert_no_leaks(splits: dict[str, list[dict]]) -> None:
    leaks = check_leaks(splits)
    if leaks:
        raise UsageError(
            f"{len(leaks)} leaks from train into evaluation (e.g. {leaks[0]}); "
            "reword that family's templates so no train family can produce the same or a near-identical message"
        )


def identifiers(text: str) -> set[str]:
    """Identifier-like tokens (letters, digits, `_`, `.`) of a text, outer dots dropped."""
    return {token.strip(".") for token in re.findall(r"[\w.]+", text)}


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


class ContaminationCheck:
    """Finds BFCL questions and function names in generated text (see `contamination`)."""

    def __init__(self, cases: list[dict]):
        questions, self.names = set(), set()
        for case in cases:
            # closing punctuation dropped: a message typed without its full stop still holds the question
            questions.update(" ".join(m["content"].split()).lower().rstrip(" .?!") for m in case["question"][0])
            self.names.update(function["name"] for function in case["function"])
        self.compound = {name for name in self.names if re.search(r"[_.]", name)}
        # A question can only occur where its first words do: index the questions by their first three words.
        self.by_start: dict[tuple, list[str]] = {}
        for question in questions:
            self.by_start.setdefault(tuple(words(question)[:3]), []).append(question)
        self.sizes = {len(start) for start in self.by_start}
        self.seen: dict[str, tuple[str, ...]] = {}

    def in_text(self, text: str) -> tuple[str, ...]:
        if text not in self.seen:  # system prompts repeat across rows: each distinct text is searched once
            folded, tokens = " ".join(text.split()).lower(), words(text)
            starts = {tuple(tokens[i : i + n]) for n in self.sizes for i in range(len(tokens) - n + 1)}
            found = [f"question '{q}'" for s in starts & self.by_start.keys() for q in self.by_start[s] if q in folded]
            self.seen[text] = (*found, *(f"function '{n}'" for n in sorted(self.compound & identifiers(text))))
        return self.seen[text]

    def in_row(self, row: dict) -> list[str]:
        tools = {*row["tools"], row["tool_name"]}
        found = [f"function '{name}' as a tool" for name in sorted(self.names & tools)]
        for message in [*row["prompt"], *row["completion"]]:
            found += self.in_text(message["content"])
        return list(dict.fromkeys(found))


def contamination(splits: dict[str, list[dict]], cases: list[dict]) -> list[str]:
    """BFCL questions or function names (of `cases`, sft_router.evaluation.bfcl.load_cases) found in generated rows; []
    when the data is clean.

    A question counts when its text (case and spacing folded) occurs in any message of a row. A function name
    counts when it is the name of a tool a row shows or calls, or, if it is a compound identifier (with `_` or
    `.`, such as `calculate_triangle_area`), when it occurs as an identifier in any message. A one-word name
    (`news`) is an English word, so it is checked as a tool name only.
    """
    check = ContaminationCheck(cases)
    return [
        f"{split} row {row['id']}: BFCL {hit}"
        for split, rows in splits.items()
        for row in rows
        for hit in check.in_row(row)
    ]
