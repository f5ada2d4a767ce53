"""Procedurally generated tools, so the router learns to read a tool's schema rather than memorise the catalog's.

A tool is an action on an object (`track_package`, `book_table`) with one to four typed parameters drawn from the
catalog's `procedural` section (string, integer, number, boolean, enum, array); its message states the required
values and some optional ones, and the call carries exactly those, typed as the schema says.

Usage: from sft_router.procedural import ProceduralTools; tool, said = ProceduralTools(spec).draw(rng, lang)
"""

from __future__ import annotations

JOIN = {"zh": ("、", "和"), "en": (", ", " and ")}
SEPARATOR = {"zh": "，", "en": ", "}


def join_words(words: list[str], lang: str) -> str:
    comma, last = JOIN[lang]
    return words[0] if len(words) == 1 else comma.join(words[:-1]) + last + words[-1]


class ProceduralTools:
    def __init__(self, spec: dict):
        self.spec = spec

    def tool(self, rng, obj: dict | None = None, verb: str | None = None) -> dict:
        """A tool: the object's action with a random parameter set (schema, description, and how to say each)."""
        obj = obj or rng.choice(self.spec["objects"])
        verb = verb or rng.choice(obj["verbs"])
        params = rng.sample(self.spec["params"], rng.randint(1, min(4, len(self.spec["params"]))))
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

    def utterance(self, rng, tool: dict, lang: str) -> tuple[str, dict, dict]:
        """(message, values as said, arguments): every required value and each optional one half the time."""
        required = tool["parameters"]["required"]
        stated = [p for p in tool["params"] if p["name"] in required or rng.random() < 0.5]
        rng.shuffle(stated)
        phrases, shown, arguments = [], {}, {}
        for param in stated:
            text, value = self._value(rng, param, lang)
            phrases.append(param[lang].replace("{v}", text) if isinstance(param[lang], str) else param[lang][text])
            shown[param["name"]], arguments[param["name"]] = text, value
        lead = rng.choice(self.spec["leads"][lang])
        action = self.spec["verbs"][tool["verb"]][lang]
        head = f"{lead}{action}{tool['object'][lang]}" if lang == "zh" else f"{lead}{action} {tool['object'][lang]}"
        if lang == "en" and lead:
            head = lead + head[len(lead) :][0].lower() + head[len(lead) + 1 :]
        order = list(tool["parameters"]["properties"])
        arguments = {name: arguments[name] for name in sorted(arguments, key=order.index)}
        return SEPARATOR[lang].join([head, *phrases]), shown, arguments

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
