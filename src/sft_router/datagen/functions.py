"""BFCL-style function rows: English requests with values and units in the prose, against Python-style function
declarations of one domain, the router's other source of typed arguments.

The spec (recipe key `functions`, e.g. recipes/gemma-3-270m-it/functions.yaml) lists domains of dotted functions
(`fleet.schedule_maintenance`), each with a docstring-like description and parameters of a kind: `string` (copied
from `values`), `enum`, `integer` and `number` (drawn from `range`, said with a `unit`), `minutes` and `count`
(integers that the spec's `said` table may state in words: "two hours" -> 120, "a dozen" -> 12), `fraction` (said
as a percentage, "5%" -> 0.05), `numbers` (an array), `boolean` (said by a phrase) and `object` (nested properties,
all required). A parameter with a `default` is optional: its description ends "Default: ..." and the call holds it
only when the request states it. A scene shows 2 to 6 functions of one domain (rendered by
router_format.router_tool, as bfcl.py renders BFCL's), with their names masked as `func_xx` at the recipe's
`function_mask_rate` so that the model reads descriptions; its irrelevance rows ask for a function of the domain
that the scene does not show and get the catalog's missing-tool reply. `held_out_domains` are drawn only by the
`test_procedural` split: functions no other split ever shows, called in every row (like test_unseen, it measures
whether the router reads functions it never trained on).

Usage: spec = load_functions(path); rows = FunctionRows(spec, rng, mask_rate).scene(size, domains)
"""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass, field

from sft_router.core.errors import UsageError, read_yaml
from sft_router.core.router_format import router_tool

FAMILY = "function:"  # a row's family: FAMILY + the real name of the function it asks for
HELD_OUT_SPLIT = "test_procedural"
IRRELEVANT_SHARE = 0.15  # of a split's function rows, requests for a function of the domain its scene leaves out
OPTIONAL_STATED = 0.35  # a request states an optional parameter this often; else the call leaves it out
SAID_IN_WORDS = 0.35  # a `minutes` or `count` value is said from the `said` table this often
FEWEST, MOST = 2, 6  # functions a scene shows
MIN_FUNCTIONS = 4  # of a domain: a scene shows some and leaves one out for its irrelevance requests
SLOT = re.compile(r"\{(\w+)\}")
TYPES = {
    "string": "string",
    "enum": "string",
    "integer": "integer",
    "minutes": "integer",
    "count": "integer",
    "number": "number",
    "fraction": "number",
    "numbers": "array",
    "boolean": "boolean",
    "object": "object",
}


@dataclass
class Request:
    """One request: the message, its template (values as {slot}), the values as said and the call's arguments."""

    function: dict
    text: str
    template: str
    shown: dict
    arguments: dict = field(default_factory=dict)


@functools.cache
def load_functions(path: str) -> FunctionSpec:
    return FunctionSpec(path, read_yaml(path))


def _default_text(value) -> str:
    return {True: "True", False: "False"}.get(value, repr(value)) if isinstance(value, bool | str) else str(value)


class FunctionSpec:
    """The domains and functions of a spec file, checked, with their declarations."""

    def __init__(self, path: str, spec: dict):
        self.path = path
        self.leads, self.tails, self.said = spec["leads"], spec["tails"], spec["said"]
        self.domains, self.held_out = spec["domains"], spec["held_out_domains"]
        if set(self.domains) & set(self.held_out):
            raise UsageError(
                f"{path}: domains {sorted(set(self.domains) & set(self.held_out))} are also held out; "
                "keep `held_out_domains` disjoint from `domains`"
            )
        self.functions = {f["name"]: f for fs in (*self.domains.values(), *self.held_out.values()) for f in fs}
        for name, function in self.functions.items():
            self._check(name, function)
        thin = [domain for domain, fs in (*self.domains.items(), *self.held_out.items()) if len(fs) < MIN_FUNCTIONS]
        if thin:
            raise UsageError(f"{path}: domain '{thin[0]}' has fewer than {MIN_FUNCTIONS} functions; add some")

    def _check(self, name: str, function: dict) -> None:
        for param, spec in function["params"].items():
            if spec["kind"] not in TYPES:
                raise UsageError(
                    f"{self.path}: {name}.{param} has kind '{spec['kind']}'; use one of {', '.join(TYPES)}"
                )
        for ask in function["ask"]:
            unknown = set(SLOT.findall(ask)) - set(function["params"])
            required = {p for p, s in function["params"].items() if "default" not in s}
            if unknown or not required <= set(SLOT.findall(ask)):
                raise UsageError(
                    f"{self.path}: {name} ask '{ask}' must name every required parameter and no other "
                    f"(unknown {sorted(unknown)}); fix the template"
                )

    def domains_for(self, split: str) -> dict[str, list[dict]]:
        return self.held_out if split == HELD_OUT_SPLIT else self.domains

    def description(self, name: str) -> str:
        return self.functions[name]["doc"]

    def declaration(self, function: dict, name: str | None = None) -> dict:
        """The function as a tool entry (router_format.router_tool), under `name` when masked."""
        params = function["params"]
        parameters = {
            "type": "object",
            "properties": {p: self._schema(s) for p, s in params.items()},
            "required": [p for p, s in params.items() if "default" not in s],
        }
        return router_tool(
            {"name": name or function["name"], "description": function["doc"], "parameters": parameters}
        )

    def _schema(self, spec: dict) -> dict:
        doc = spec["doc"] + (f" Default: {_default_text(spec['default'])}." if "default" in spec else "")
        schema = {"type": TYPES[spec["kind"]], "description": doc}
        if spec["kind"] == "enum":
            schema["enum"] = list(spec["values"])
        if spec["kind"] == "numbers":
            schema["items"] = {"type": "integer" if spec.get("whole") else "number"}
        if spec["kind"] == "object":
            schema["properties"] = {p: self._schema(s) for p, s in spec["properties"].items()}
            schema["required"] = list(spec["properties"])
        return schema


class FunctionRows:
    """Scenes of function requests drawn from one split's random stream."""

    def __init__(self, spec: FunctionSpec, rng, mask_rate: float, most: int = MOST):
        self.spec, self.rng, self.mask_rate = spec, rng, mask_rate
        self.most = min(MOST, most)  # the recipe's tools a prompt (max_distractors + 1), 6 at most
        self.fewest = min(FEWEST, self.most)

    def value(self, spec: dict) -> tuple[str, object]:
        """(text as said, value in the call) of one parameter, normalised as its description says."""
        kind, rng = spec["kind"], self.rng
        if kind in ("minutes", "count") and rng.random() < SAID_IN_WORDS:
            return rng.choice(sorted(self.spec.said[kind].items()))
        if kind in ("string", "enum"):
            text = rng.choice(spec["values"])
            return text, text
        if kind == "minutes":
            minutes = rng.randrange(5, 240, 5)
            return f"{minutes} minutes", minutes
        if kind == "fraction":
            percent = rng.choice([1, 2, 2.5, 3, 4, 5, 6, 7.5, 8, 10, 12, 12.5, 15, 18, 20, 25, 30, 35, 40])
            return f"{percent:g}{rng.choice(['%', ' percent'])}", round(percent / 100, 4)
        if kind == "boolean":
            said = rng.choice([True, False]) if "default" not in spec else not spec["default"]
            return spec["say_true" if said else "say_false"], said
        low, high = spec.get("range", (2, 60))
        if kind == "numbers":
            draw = rng.randint if spec.get("whole") else lambda a, b: round(rng.uniform(a, b), 1)
            values = list(dict.fromkeys(draw(low, high) for _ in range(rng.randint(3, 5))))
            return f"{', '.join(map(str, values[:-1]))} and {values[-1]}", values
        number = rng.randint(low, high) if kind in ("integer", "count") else round(rng.uniform(low, high), 1)
        return f"{number} {spec.get('unit', '')}".strip(), number

    def stated(self, name: str, spec: dict) -> tuple[str, str, dict, object]:
        """(phrase with the value, phrase with {name}, values as said, value) of one parameter."""
        if spec["kind"] == "object":
            parts = {sub: self.value(s) for sub, s in spec["properties"].items()}
            filled = SLOT.sub(lambda m: parts[m.group(1)][0], spec["say"])
            marked = SLOT.sub(lambda m: "{" + f"{name}.{m.group(1)}" + "}", spec["say"])
            return (
                filled,
                marked,
                {f"{name}.{sub}": text for sub, (text, _) in parts.items()},
                {sub: value for sub, (_, value) in parts.items()},
            )
        text, value = self.value(spec)
        if spec["kind"] == "boolean":
            return text, text, {}, value
        say = spec.get("say", "{}")
        return say.replace("{}", text), say.replace("{}", "{" + name + "}"), {name: text}, value

    def request(self, function: dict) -> Request:
        """A request for `function`: a lead, one of its `ask` phrasings with the required parameters, the optional
        ones it states, a tail; the call's arguments in declaration order, distinct string values."""
        params = function["params"]
        ask = self.rng.choice(function["ask"])
        optional = [p for p, s in params.items() if "default" in s and p not in SLOT.findall(ask)]
        extra = [p for p in optional if self.rng.random() < OPTIONAL_STATED]
        named = [*SLOT.findall(ask), *extra]
        parts = {p: self.stated(p, params[p]) for p in named}
        text = SLOT.sub(lambda m: parts[m.group(1)][0], ask)
        template = SLOT.sub(lambda m: parts[m.group(1)][1], ask)
        for p in extra:
            text, template = f"{text} {parts[p][0]}", f"{template} {parts[p][1]}"
        lead, tail = self.rng.choice(self.spec.leads), self.rng.choice(self.spec.tails)
        if ask.startswith("we "):  # a statement ("we need 40 reams") takes no request lead ("can you we need")
            lead = ""
        if "please" in lead and "please" in tail:  # not "please ... please"
            tail = ""
        shown = {k: v for p in named for k, v in parts[p][2].items()}
        arguments = {p: parts[p][3] for p in params if p in parts}
        return Request(function, f"{lead}{text}{tail}", f"{lead}{template}{tail}", shown, arguments)

    def masked(self, count: int) -> list[str] | None:
        """Neutral names for a scene's functions (func_a3), or None when the scene keeps the real ones."""
        if self.rng.random() >= self.mask_rate:
            return None
        names: list[str] = []
        while len(names) < count:
            name = "func_" + "".join(self.rng.choice(string.ascii_lowercase + string.digits) for _ in range(2))
            names += [name] if name not in names else []
        return names

    def scene(self, calls: int, irrelevant: int, domains: dict[str, list[dict]]):
        """(tool entries shown, real name -> shown name, planned requests): 2 to 6 functions of one domain, `calls`
        requests for them and `irrelevant` requests for functions of the domain left out (not in the names)."""
        functions = domains[self.rng.choice(sorted(domains))]
        most = min(self.most, len(functions) - (irrelevant > 0))
        shown = self.rng.sample(functions, self.rng.randint(min(self.fewest, most), most))
        names = self.masked(len(shown)) or [f["name"] for f in shown]
        absent = [f for f in functions if f not in shown]
        asked = [self.rng.choice(absent) for _ in range(irrelevant)]
        asked += [shown[i % len(shown)] for i in range(calls)]
        self.rng.shuffle(asked)
        tools = [self.spec.declaration(f, name) for f, name in zip(shown, names)]
        return tools, {f["name"]: name for f, name in zip(shown, names)}, asked


def check_irrelevance(spec: FunctionSpec | None, row: dict, where: str) -> None:
    """An irrelevance row's prompt shows no function that serves its request: not the asked function's description."""
    name = row["family"].removeprefix(FAMILY)
    if spec is None:
        raise UsageError(f"{where}: a function row, but no `functions` spec to check it; pass the recipe's spec")
    if name not in spec.functions:
        raise UsageError(f"{where}: function '{name}' is not in {spec.path}; fix the generator")
    if spec.description(name) in row["prompt"][0]["content"]:
        raise UsageError(
            f"{where}: the prompt of an irrelevance row shows '{name}', which serves it; fix the generator"
        )
