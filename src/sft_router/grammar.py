"""A llama.cpp GBNF grammar per prompt: a call of one of the prompt's tools with schema-valid arguments, or a reply.

The tools are read back from the system prompt itself (`router_format.tools_in_prompt`: the seed's
`{"tool_name", "tool_description", "arguments": <JSON schema>}` entries), so the grammar constrains exactly what the
model was shown.
A call is the training format, `{"tool_name": "<name>", "arguments": {...}}` with json.dumps spacing;
its arguments hold only the schema's properties, each at most once, in any order (targets follow the
order of the user's words), with every required one present; values match the property's type and
enum. Constraints GBNF cannot state cheaply (pattern, minimum, nested object schemas) fall back to
the property's JSON type. A reply is text that starts with a visible character and contains no `{`,
so no call, of a listed tool or any other, can hide in it.

Usage: grammar_text = build_grammar(row["prompt"][0]["content"])   # pass to llama_cpp.LlamaGrammar.from_string
"""

from __future__ import annotations

import json
from itertools import count

from sft_router.router_format import tools_in_prompt

CALL_PREFIX = '{"tool_name": "'
REPLY = r"reply ::= [^{ \t\r\n] [^{]*"
JSON_RULES = r"""string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\""
integer ::= "-"? ( "0" | [1-9] [0-9]* )
number ::= integer ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
boolean ::= "true" | "false"
null ::= "null"
value ::= object | array | string | number | boolean | null
object ::= "{" ( string ": " value ( ", " string ": " value )* )? "}"
array ::= "[" ( value ( ", " value )* )? "]"
""".strip()
JSON_TYPES = ("string", "integer", "number", "boolean", "null", "array", "object")  # each is a rule of JSON_RULES


def literal(text: str) -> str:
    """A GBNF string literal for `text` (quotes, backslashes and control characters escaped)."""
    escaped = "".join(f"\\x{ord(c):02X}" if ord(c) < 0x20 else c for c in text.replace("\\", "\\\\"))
    return '"' + escaped.replace('"', '\\"') + '"'


def value_rule(schema: dict) -> str:
    """The GBNF expression for one property's value."""
    if "enum" in schema or "const" in schema:
        options = schema.get("enum", [schema.get("const")])
        return "( " + " | ".join(literal(json.dumps(v, ensure_ascii=False)) for v in options) + " )"
    types = schema.get("type", "value")
    types = [t for t in ([types] if isinstance(types, str) else types) if t in JSON_TYPES]
    return "( " + " | ".join(types) + " )" if types else "value"


def arguments_rules(prefix: str, schema: dict) -> list[str]:
    """Rules for an arguments object: every subset order of the properties that contains the required ones.

    One rule per set of keys already written (at most 2^n for n properties: a handful for tool schemas).
    """
    properties = list((schema.get("properties") or {}).items())
    required = {i for i, (name, _) in enumerate(properties) if name in set(schema.get("required", []))}
    rules = [f"{prefix}-kv{i} ::= {literal(json.dumps(name, ensure_ascii=False) + ': ')} {value_rule(prop)}"
             for i, (name, prop) in enumerate(properties)]  # fmt: skip

    def after(used: frozenset) -> str | None:
        """The rule for what may follow once the keys in `used` are written (None: only the closing brace)."""
        name = f"{prefix}-s" + "".join("1" if i in used else "0" for i in range(len(properties)))
        if len(used) == len(properties) or name in seen:
            return name if name in seen else None
        seen.add(name)
        options = [f'", " {prefix}-kv{i}' + (f" {rest}" if (rest := after(used | {i})) else "")
                   for i in range(len(properties)) if i not in used]  # fmt: skip
        rules.append(f"{name} ::= ( {' | '.join(options)} )" + ("?" if required <= used else ""))
        return name

    seen: set[str] = set()
    first = [
        f"{prefix}-kv{i}" + (f" {rest}" if (rest := after(frozenset({i}))) else "") for i in range(len(properties))
    ]
    body = " | ".join(f'"{{" {option} "}}"' for option in first)
    if not required:
        body = '"{}"' + (f" | {body}" if body else "")
    rules.append(f"{prefix} ::= {body}")
    return rules


def build_grammar(system_prompt: str, calls_only: bool = False) -> str:
    """GBNF text whose root admits a call of a tool listed in `system_prompt` or (unless `calls_only`) a reply."""
    tools = tools_in_prompt(system_prompt)
    ids = count()
    rules, calls = [], []
    for tool in tools:
        prefix = f"tool{next(ids)}"
        head = literal(tool["tool_name"] + '", "arguments": ')
        calls.append(f"{head} {prefix}-args")
        rules += arguments_rules(f"{prefix}-args", tool["arguments"])
    root = ("root ::= call" if calls_only and calls else "root ::= reply") + (
        f'{"" if calls_only else " | call"}\ncall ::= {literal(CALL_PREFIX)} ( {" | ".join(calls)} ) "}}"'
        if calls
        else ""
    )
    return "\n".join([root, REPLY, *rules, JSON_RULES]) + "\n"
