"""A llama.cpp GBNF grammar per prompt: a call of one of the prompt's tools with schema-valid arguments, or a reply.

The tools are read back from the system prompt itself (`router_format.tools_in_prompt`: the seed's
`{"tool_name", "tool_description", "arguments": <JSON schema>}` entries), so the grammar constrains exactly what the
model was shown.
A call is the training format, `{"tool_name": "<name>", "arguments": {...}}`. Its rules come from llama.cpp's own
JSON-schema converter (llama_cpp.llama_grammar.SchemaConverter, one rule per tool as it writes an `anyOf`), which
admits json.dumps spacing (`space` is an optional single blank), checks types, enums, nested objects with their own
required keys and array items, and rejects keys a schema does not list (tests/test_gguf_grammar.py checks every row of
the tiny recipe against its own prompt's grammar). Where the converter falls short, `RouterSchemaConverter` steps in,
each case measured by a test:
- key order: targets list arguments in `properties` order, but the converter writes an object's required keys
  first, so `{"time", "level" (optional), "options" (required)}` was rejected; objects are written in `properties`
  order, each optional key skippable;
- integer `minimum`/`maximum` (and the exclusive forms): the converter ignores them (its TODO), so a `level`
  of 250 passed a 0-100 schema; `integer_range` writes the digit ranges instead, as llama.cpp's C++ converter does;
- enum, const and key literals: the converter leaves json.dumps' backslashes unescaped for GBNF, so an enum value
  with a quote (`say "hi"`) did not parse and one with a backslash or newline was rejected; and GBNF reads each of
  its \\u escapes as one code point, so an emoji's surrogate pair never matched (enum "好😀" was rejected). They are
  written as UTF-8 text, GBNF-escaped;
- a tool's arguments without `additionalProperties` get `false`, so a tool with no properties takes exactly `{}`
  (the converter gives such a schema any object); nested property-less objects stay free;
- a property schema with no type the converter knows (only a description, or "type": "float") is any JSON value
  (the converter would assert); a pattern without `^...$` is dropped, leaving a string (the converter asserted);
- `$ref`s resolve within their own tool's schema, each rule named by its whole reference: the converter names it by
  its last part, so two tools' different `#/$defs/Item` shared one rule;
- numbers in json.dumps' forms: its 17 to 20 decimal digits (0.30000000000000004) and zero-padded exponent (1e-05)
  were rejected (the converter allows 16 decimal digits and an exponent without leading zero); `NUMBER` admits both.
Number `minimum`/`maximum` are not enforced (the converter ignores them and decimals have no cheap digit-range form).
A reply is text that starts with a visible character and contains no `{`, so no call, of a listed tool or any other,
can hide in it.

Usage: grammar_text = build_grammar(row["prompt"][0]["content"])   # pass to llama_cpp.LlamaGrammar.from_string
"""

from __future__ import annotations

import json
import math

from llama_cpp.llama_grammar import INVALID_RULE_CHARS_RE, PRIMITIVE_RULES, BuiltinRule, SchemaConverter

from sft_router.core.router_format import tools_in_prompt

REPLY = r"reply ::= [^{ \t\r\n] [^{]*"
STRUCTURE_KEYS = {
    "type",
    "$ref",
    "oneOf",
    "anyOf",
    "allOf",
    "const",
    "enum",
    "properties",
    "additionalProperties",
    "items",
    "prefixItems",
    "pattern",
    "format",
}
# json.dumps (repr) writes up to 20 decimals: 17 significant digits after up to 3 zeros (0.00012345678901234567).
NUMBER = BuiltinRule('("-"? integral-part) ("." [0-9]{1,20})? ([eE] [-+]? [0-9]{1,3})? space', ["integral-part"])
BOUND_KEYS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}


def same_length_digits(low: str, high: str) -> str:
    """GBNF for the digit strings of one length from `low` to `high` (low <= high), leading digit by leading digit."""
    if low == high:
        return f'"{low}"'
    rest = len(low) - 1
    if rest == 0:
        return f"[{low}-{high}]"
    if low[0] == high[0]:
        return f'"{low[0]}" ({same_length_digits(low[1:], high[1:])})'
    if low[1:] == "0" * rest and high[1:] == "9" * rest:
        return f"[{low[0]}-{high[0]}] [0-9]{{{rest}}}"
    parts = [f'"{low[0]}" ({same_length_digits(low[1:], "9" * rest)})']
    if int(low[0]) + 1 <= int(high[0]) - 1:
        parts.append(f"[{int(low[0]) + 1}-{int(high[0]) - 1}] [0-9]{{{rest}}}")
    parts.append(f'"{high[0]}" ({same_length_digits("0" * rest, high[1:])})')
    return " | ".join(parts)


def natural_range(low: int, high: int | None) -> list[str]:
    """GBNF alternatives for the integers from `low` (>= 0) to `high` (None: unbounded), written without leading 0s."""
    parts, shortest = [], len(str(low))
    for length in range(shortest, len(str(high)) + 1 if high is not None else shortest + 1):
        first = max(low, 10 ** (length - 1) if length > 1 else 0)
        last = 10**length - 1 if high is None else min(high, 10**length - 1)
        if first <= last:
            parts.append(same_length_digits(str(first), str(last)))
    if high is None:
        parts.append(f"[1-9] [0-9]{{{shortest},}}")
    return parts


def integer_range(low: int | None, high: int | None) -> str:
    """A GBNF expression admitting exactly the integers in [low, high] as json.dumps writes them (None: unbounded)."""
    parts = []
    if low is None or low < 0:
        magnitude_low = 1 if high is None or high >= 0 else -high
        parts += [f'"-" ({p})' for p in natural_range(magnitude_low, None if low is None else -low)]
    if high is None or high >= 0:
        parts += natural_range(max(low or 0, 0), high)
    if not parts:
        raise ValueError(f"integer schema has minimum {low} above maximum {high}: fix the tool's schema")
    return "(" + " | ".join(parts) + ")"


def integer_bounds(schema: dict) -> tuple[int | None, int | None]:
    """The smallest and largest integer a schema's minimum/maximum (inclusive or exclusive) allow."""
    low = high = None
    if isinstance(schema.get("minimum"), (int, float)):
        low = math.ceil(schema["minimum"])
    if isinstance(schema.get("exclusiveMinimum"), (int, float)) and not isinstance(schema["exclusiveMinimum"], bool):
        low = max(x for x in (low, math.floor(schema["exclusiveMinimum"]) + 1) if x is not None)
    if isinstance(schema.get("maximum"), (int, float)):
        high = math.floor(schema["maximum"])
    if isinstance(schema.get("exclusiveMaximum"), (int, float)) and not isinstance(schema["exclusiveMaximum"], bool):
        high = min(x for x in (high, math.ceil(schema["exclusiveMaximum"]) - 1) if x is not None)
    return low, high


class RouterSchemaConverter(SchemaConverter):
    """llama.cpp's converter with the fixes the module docstring lists (integer bounds, UTF-8 literals, any value)."""

    def __init__(self):
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)

    def visit(self, schema, name):
        if not isinstance(schema, dict) or not STRUCTURE_KEYS & schema.keys() or unknown_type(schema):
            return self._add_primitive("value", PRIMITIVE_RULES["value"])
        if "pattern" in schema and not anchored(schema["pattern"]):  # the converter asserts on it: a plain string
            return self.visit({key: value for key, value in schema.items() if key != "pattern"}, name)
        if schema.get("type") == "integer" and BOUND_KEYS & schema.keys() and not {"enum", "const"} & schema.keys():
            return self._add_rule(name, integer_range(*integer_bounds(schema)) + " space")
        return super().visit(schema, name)

    def _add_primitive(self, name, rule):
        return super()._add_primitive(name, NUMBER if name == "number" else rule)

    def _resolve_ref(self, ref):
        """A rule named by the whole reference (`tool1#/$defs/Item`): the converter names it by the last part, so two
        tools' different `Item`s shared the first one's rule (test_gguf_grammar)."""
        name = "ref-" + INVALID_RULE_CHARS_RE.sub("-", ref)
        if name not in self._rules and ref not in self._refs_being_resolved:
            self._refs_being_resolved.add(ref)
            rule = self.visit(self._refs[ref], name)  # a rule of that name, or a primitive's (`string`)
            if rule != name:
                self._rules[name] = rule
            self._refs_being_resolved.remove(ref)
        return name

    def _build_object_rule(self, properties, required, name, additional_properties):
        """Keys in `properties` order, optional ones skippable, nothing else; the converter's own rule writes required
        keys first, which rejected a target whose optional key comes before a required one (test_gguf_grammar)."""
        if additional_properties is True or isinstance(additional_properties, dict):
            return super()._build_object_rule(properties, required, name, additional_properties)
        kvs = [self.key_value_rule(key, schema, f"{name}{'-' if name else ''}{key}") for key, schema in properties]
        needed = [key in required for key, _ in properties]
        first_required = needed.index(True) if True in needed else None
        tails = [f'"," space {kv}' if need else f'( "," space {kv} )?' for kv, need in zip(kvs, needed)]
        stop = len(kvs) if first_required is None else first_required + 1  # the first key written comes by then
        firsts = [" ".join([kvs[i], *tails[i + 1 :]]) for i in range(stop)]
        body = f"( {' | '.join(firsts)} ){'?' if first_required is None else ''} " if firsts else ""
        return f'"{{" space {body}"}}" space'

    def key_value_rule(self, key: str, schema: dict, name: str) -> str:
        value = self.visit(schema, name)
        return self._add_rule(f"{name}-kv", f'{self._format_literal(json.dumps(key))} space ":" space {value}')

    def _format_literal(self, literal):
        """A GBNF literal for an enum, const or key's json.dumps text (or a single character), see the docstring."""
        try:
            value = json.loads(literal)
        except ValueError:
            value = None
        if value is not None and json.dumps(value) == literal:
            literal = json.dumps(value, ensure_ascii=False)
        return gbnf_literal(literal)


def gbnf_literal(text: str) -> str:
    """A GBNF string literal for `text` (quotes, backslashes and control characters escaped)."""
    escaped = "".join(f"\\x{ord(c):02X}" if ord(c) < 0x20 else c for c in text.replace("\\", "\\\\"))
    return '"' + escaped.replace('"', '\\"') + '"'


def anchored(pattern) -> bool:
    """Whether the converter can translate a pattern: it takes only `^...$` ones (JSON Schema's are unanchored)."""
    return isinstance(pattern, str) and pattern.startswith("^") and pattern.endswith("$")


def unknown_type(schema: dict) -> bool:
    """Whether a schema names a type the converter has no rule for (it would assert): "float", "any", ..."""
    return isinstance(schema.get("type"), str) and schema["type"] not in PRIMITIVE_RULES


def call_schema(tool: dict) -> dict:
    """The JSON schema of one call of `tool`: its name as a constant, then its arguments (no other key)."""
    arguments = tool["arguments"] if isinstance(tool["arguments"], dict) else {}
    arguments = {"type": "object", "additionalProperties": False, **arguments}
    return {
        "type": "object",
        "properties": {"tool_name": {"const": tool["tool_name"]}, "arguments": arguments},
        "required": ["tool_name", "arguments"],
    }


def call_rules(tools: list[dict]) -> str:
    """GBNF rules whose `call` rule admits a call of any of `tools` (llama.cpp's converter, rules sorted by name)."""
    converter = RouterSchemaConverter()
    calls = [tool_rule(converter, tool, f"call-{i}") for i, tool in enumerate(tools)]
    converter._add_rule("call", " | ".join(calls))  # as the converter writes an `anyOf` over the calls
    return converter.format_grammar()


def tool_rule(converter: RouterSchemaConverter, tool: dict, name: str) -> str:
    """The rule (`name`, its sub-rules prefixed by it) for one call of `tool`; its `#/$defs/...` refer to its own
    arguments schema. A schema the converter cannot read fails naming the tool, not with the converter's assert."""
    schema = call_schema(tool)
    try:
        converter.resolve_refs(schema["properties"]["arguments"], name)
        return converter.visit(schema, name)
    except (AssertionError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"tool '{tool['tool_name']}': llama.cpp's grammar converter cannot read its arguments schema "
            f"({exc}); give it plain JSON Schema"
        ) from exc


def build_grammar(system_prompt: str, calls_only: bool = False) -> str:
    """GBNF text whose root admits a call of a tool listed in `system_prompt` or (unless `calls_only`) a reply."""
    tools = tools_in_prompt(system_prompt)
    if not tools:
        return f"root ::= reply\n{REPLY}\n"
    root = "root ::= call" if calls_only else "root ::= reply | call"
    return "\n".join([root, REPLY, call_rules(tools)]) + "\n"
