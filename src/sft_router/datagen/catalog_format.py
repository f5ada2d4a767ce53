"""The catalog file's own format: a JSON schema of every field's type, checked before anything reads the file, so a
wrong type fails in one line naming its place. What the fields mean, and the checks across them, are
`sft_router.datagen.catalog`.

Usage: from sft_router.datagen.catalog_format import check_catalog_format
"""

from __future__ import annotations

from pathlib import Path

import jsonschema

from sft_router.core.errors import UsageError

LANGS = ("zh", "en")

TEXTS = {"type": "array", "items": {"type": "string", "minLength": 1}}
SCALAR = {"type": ["string", "number", "integer", "boolean"]}
BY_LANG = {"type": "object", "properties": {lang: {"type": "string", "minLength": 1} for lang in LANGS}}
# A pool entry: a value copied as written, a {text, value} pair, or a record ({song, artist}) filling several slots.
POOL = {
    "type": "array",
    "items": {"anyOf": [SCALAR, {"type": "object", "minProperties": 1, "properties": {"text": {"type": "string"}}}]},
}
# The catalog file's own format, checked before anything reads it: every field's type, so that a wrong one fails in
# one line naming its place (`zh` given as a string would otherwise be read character by character). Unknown keys are
# allowed, so that a new catalog key needs only a line here; extend this dict as the format grows.
CATALOG_SCHEMA = {
    "type": "object",
    "required": ["tools", "slots", "no_call"],
    "properties": {
        "image_marker": {"type": "string", "minLength": 1},
        "tools": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "domain", "description", "parameters", "families"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_.-]*$"},
                    "domain": {"type": "string", "minLength": 1},
                    "description": {"type": "string", "minLength": 1},
                    "parameters": {"type": "object"},
                    "pools": {"type": "object", "additionalProperties": {"type": "string"}},
                    "feature": BY_LANG,
                    "how": BY_LANG,
                    "ask": {"type": ["object", "null"], "additionalProperties": BY_LANG},
                    "clarify": {"type": ["object", "null"], "properties": {lang: TEXTS for lang in LANGS}},
                    "image": {"type": ["object", "null"], "properties": {lang: TEXTS for lang in LANGS}},
                    "families": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["id", *LANGS],
                            "properties": {
                                "id": {"type": "string", "minLength": 1},
                                **{lang: TEXTS for lang in LANGS},
                            },
                        },
                    },
                },
            },
        },
        "slots": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {"names": {"type": "boolean"}, "correctable": {"type": "boolean"}},
                "additionalProperties": POOL,
            },
        },
        "no_call": {
            "type": "object",
            "additionalProperties": {
                "type": "array",
                "items": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "replies": {"type": "object", "additionalProperties": BY_LANG},
        "confusable": {"type": "array", "items": {"type": "array", "minItems": 2, "items": {"type": "string"}}},
        "unseen_tools": {"type": "array", "items": {"type": "string"}},
        "procedural": {
            "type": "object",
            "properties": {
                "leads": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
                "objects": {"type": "array"},
                "params": {"type": "array"},
                "verbs": {"type": "object"},
            },
        },
        "noise": {"type": "object", "additionalProperties": {"type": ["object", "array"]}},
    },
}


def check_catalog_format(path: Path, raw) -> None:
    """The file against CATALOG_SCHEMA; the first misfit fails naming its place, e.g. `tools[3].families[0].zh`."""
    errors = jsonschema.Draft202012Validator(CATALOG_SCHEMA).iter_errors(raw)
    error = min(errors, key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))), default=None)
    if error is None:
        return
    place = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    where = f"`{place}`" if place else "the catalog"
    raise UsageError(f"{path}: {where} {_misfit(error)}; see the format in recipes/gemma-3-270m-it/catalog.yaml")


JSON_WORDS = {
    "array": "a list",
    "object": "a mapping",
    "string": "a string",
    "number": "a number",
    "integer": "a whole number",
    "boolean": "true or false",
    "null": "empty",
}


def _misfit(error) -> str:
    """What is wrong with one value, in words (jsonschema's messages repeat the whole value)."""
    shown = repr(error.instance) if len(repr(error.instance)) <= 60 else f"{repr(error.instance)[:57]}..."
    if error.validator == "type":
        wanted = [error.validator_value] if isinstance(error.validator_value, str) else error.validator_value
        return f"is {shown}, {_json_type(error.instance)}; it must be {' or '.join(JSON_WORDS[w] for w in wanted)}"
    if error.validator == "required":
        return f"has no `{error.message.split(chr(39))[1]}`; add it"
    if error.validator == "oneOf":
        return f"is {shown}; it must be a plain value or have `text` and `value`"
    return f"is {shown}: {error.message.splitlines()[0][:120]}"


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
    return JSON_WORDS.get("null" if value is None else names.get(type(value), ""), type(value).__name__)
