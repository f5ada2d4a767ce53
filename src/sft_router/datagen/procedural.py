"""Procedurally generated tools, so the router learns to read a tool's schema rather than memorise the catalog's.

A tool is an action on an object (`track_package`, `book_table`) with one to four typed parameters drawn from the
ones the catalog's `procedural` section lists for that object (string, integer, number, boolean, enum, array); its
message states the required values and some optional ones, and the call carries exactly those, typed as the schema
says. The message comes as segments, so the generator's noise rules touch the words around the values only.

Usage: tools = ProceduralTools(spec); tool = tools.tool(rng)
       segments, shown, arguments = tools.utterance(rng, tool, lang)
"""

from __future__ import annotations

from sft_router.core.errors import UsageError

JOIN = {"zh": ("、", "和"), "en": (", ", " and ")}
SEPARATOR = {"zh": "，", "en": ", "}
RUN_ON = {"in", "for", "under", "with", "tagged", "at", "by"}  # an English phrase opening with one needs no comma


def check_procedural_spec(path, spec: dict) -> None:
    """The catalog's `procedural` section: leads, verbs, objects (with known verbs and parameters) and parameters
    (with their type, description, both languages and, for strings and arrays not enums, values)."""
    for key in ("leads", "verbs", "objects", "params"):
        if not spec.get(key):
            raise UsageError(f"{path}: `procedural` has no `{key}`; add it (see the published catalog)")
    names = {param.get("name") for param in spec["params"]}
    for obj in spec["objects"]:
        unknown = [verb for verb in obj.get("verbs", []) if verb not in spec["verbs"]]
        if unknown or not all(obj.get(k) for k in ("name", "zh", "en", "desc", "verbs")):
            raise UsageError(f"{path}: procedural object {obj} needs name, zh, en, desc and known verbs")
        if not set(obj.get("params", names)) <= names:
            unknown = sorted(set(obj["params"]) - names)
            raise UsageError(
                f"{path}: procedural object '{obj['name']}' lists unknown parameters {unknown}; use names from "
                "`procedural.params`"
            )
    for param in spec["params"]:
        valued = param.get("type") in ("string", "array") and "enum" not in param
        needs = ("name", "type", "description", *JOIN) + (("values",) if valued else ())  # JOIN: one per language
        if not all(param.get(k) is not None for k in needs):
            raise UsageError(f"{path}: procedural parameter {param.get('name')} needs {', '.join(needs)}")


def join_words(words: list[str], lang: str) -> str:
    comma, last = JOIN[lang]
    return words[0] if len(words) == 1 else comma.join(words[:-1]) + last + words[-1]


class ProceduralTools:
    def __init__(self, spec: dict):
        self.spec = spec
        self.names = [param["name"] for param in spec["params"]]

    def tool(self, rng, obj: dict | None = None, verb: str | None = None) -> dict:
        """A tool: the object's action with a random parameter set (schema, description, and how to say each)."""
        obj = obj or rng.choice(self.spec["objects"])
        verb = verb or rng.choice(obj["verbs"])
        fitting = [param for param in self.spec["params"] if param["name"] in obj.get("params", self.names)]
        params = rng.sample(fitting, rng.randint(1, min(4, len(fitting))))
        required = [p["name"] for p in params[: rng.randint(1, min(2, len(params)))]]
        properties = {p["name"]: self._schema(p, p["name"] in required) for p in params}
        action = self.spec["verbs"][verb]
        return {
            "name": f"{verb}_{obj['name']}",
            "description": f"{action['en']} {obj['desc']}.",
            "parameters": {"type": "object", "properties": properties, "required": required},
            "domain": "procedural",
            "object": obj,
            "verb": verb,
            "params": params,
        }

    @staticmethod
    def _schema(param: dict, required: bool) -> dict:
        schema = {
            "type": param["type"],
            "description": param["description"] + ("" if required else " Omit if not said."),
        }
        if param["type"] == "array":
            schema["items"] = {"type": "string"}
        for key in ("enum", "minimum", "maximum"):
            if key in param:
                schema[key] = param[key]
        return schema

    def siblings(self, rng, tool: dict, count: int) -> list[dict]:
        """Near-misses: the same object with other actions (track vs cancel a package), each with its own parameters."""
        verbs = [v for v in tool["object"]["verbs"] if v != tool["verb"]]
        return [self.tool(rng, tool["object"], verb) for verb in rng.sample(verbs, min(count, len(verbs)))]

    def utterance(self, rng, tool: dict, lang: str) -> tuple[list[list], dict, dict]:
        """(message segments `[text, is_value]`, values as said, arguments): every required value and each optional
        one half the time. English phrases that open with a preposition run on ("book a table for 4 people in
        Paris"), the others follow a comma, the last sometimes after "and"."""
        required = tool["parameters"]["required"]
        stated = [p for p in tool["params"] if p["name"] in required or rng.random() < 0.5]
        rng.shuffle(stated)
        lead = rng.choice(self.spec["leads"][lang])
        action = self.spec["verbs"][tool["verb"]][lang]
        head = f"{lead}{action}{tool['object'][lang]}" if lang == "zh" else f"{lead}{action} {tool['object'][lang]}"
        if lang == "en" and lead:
            head = lead + head[len(lead) :][0].lower() + head[len(lead) + 1 :]
        segments, shown, arguments = [[head, False]], {}, {}
        for number, param in enumerate(stated):
            text, value = self._value(rng, param, lang)
            phrase = param[lang] if isinstance(param[lang], str) else param[lang][text]
            before, _, after = phrase.partition("{v}") if isinstance(param[lang], str) else (phrase, "", "")
            joiner = self._joiner(rng, before, lang, last=number == len(stated) - 1 and number > 0)
            segments += [[joiner + before, False]] + ([[text, True], [after, False]] if "{v}" in phrase else [])
            shown[param["name"]], arguments[param["name"]] = text, value
        order = list(tool["parameters"]["properties"])
        arguments = {name: arguments[name] for name in sorted(arguments, key=order.index)}
        return [segment for segment in segments if segment[0]], shown, arguments

    @staticmethod
    def _joiner(rng, phrase: str, lang: str, last: bool) -> str:
        if lang == "zh":
            return SEPARATOR["zh"]
        if phrase.split(" ", 1)[0] in RUN_ON:
            return " "
        return rng.choice([", and ", " and "]) if last and rng.random() < 0.5 else SEPARATOR["en"]

    def _value(self, rng, param: dict, lang: str) -> tuple[str, object]:
        kind = param["type"]
        if kind == "boolean":
            value = rng.random() < 0.5
            return ("true" if value else "false"), value
        if "enum" in param:
            value = rng.choice(param["enum"])
            return value, value
        if kind == "integer":
            value = rng.randint(param.get("minimum", 1), param.get("maximum", 20))
            return str(value), value
        if kind == "number":
            value = round(rng.uniform(param.get("minimum", 1), param.get("maximum", 500)), rng.choice([0, 1, 2]))
            value = int(value) if value == int(value) else value  # 12, not 12.0: said as written
            return str(value), value
        if kind == "array":
            values = rng.sample(param["values"][lang], rng.randint(1, 3))
            return join_words(values, lang), values
        value = rng.choice(param["values"][lang])
        return value, value
