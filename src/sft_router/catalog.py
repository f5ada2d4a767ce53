"""The catalog and row formats every stage shares: the tool catalog (read and checked), the router's tool-list
and call text, and the dataset stage's saved splits.

Usage: from sft_router.catalog import load_catalog, load_split, render_system_prompt
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from sft_router.errors import UsageError

SPLITS = ("train", "validation", "test")


LANGS = ("zh", "en")


LANG_DRAW = ("zh", "zh", "en")  # Chinese first: two rows in three are Chinese


CALL_KINDS = ("call", "image_call")


NO_CALL_KINDS = ("chat", "out_of_scope", "missing_tool", "image")


KINDS = CALL_KINDS + NO_CALL_KINDS


MIN_FAMILIES = 3  # one each for train, validation and test


SLOT = re.compile(r"\{(\w+)\}")


NO_CALL_FIELDS = {"chat": ("reply_zh", "reply_en"), "out_of_scope": ("topic_zh", "topic_en"), "image": ()}


@dataclass(frozen=True)
class Catalog:
    path: Path
    tools: dict[str, dict]
    slots: dict[str, dict[str, list]]
    no_call: dict[str, list[dict]]
    image_marker: str

    def pool_name(self, tool: dict, slot: str) -> str:
        """A slot draws from the pool the tool maps it to, else from the pool named like the argument."""
        return (tool.get("pools") or {}).get(slot, slot)

    def pool(self, tool: dict, slot: str, lang: str) -> list:
        return (self.slots.get(self.pool_name(tool, slot)) or {}).get(lang) or []

    def tool_of_family(self) -> dict[str, str]:
        return {family["id"]: name for name, tool in self.tools.items() for family in tool["families"]}


def load_catalog(path: str | Path) -> Catalog:
    """Read and check a catalog; a broken tool or template fails naming the file, tool and template."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"catalog {path} does not exist: set `catalog` in the recipe to an existing YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({_brief(exc)}); fix the syntax") from exc
    for section in ("tools", "slots", "no_call"):
        if not raw.get(section):
            raise UsageError(f"{path}: no `{section}` section; see recipes/gemma-3-270m-it/catalog.yaml")
    catalog = Catalog(path, _tools_by_name(path, raw["tools"]), raw["slots"], raw["no_call"],
                      raw.get("image_marker", "<start_of_image>"))  # fmt: skip
    for tool in catalog.tools.values():
        _check_tool(catalog, tool)
    _check_templates_unique(catalog)
    _check_no_call(catalog)
    return catalog


def _tools_by_name(path: Path, tools: list[dict]) -> dict[str, dict]:
    by_name: dict[str, dict] = {}
    for tool in tools:
        name = tool.get("name")
        if not name or name in by_name:
            raise UsageError(f"{path}: tool name '{name}' is missing or used twice; give every tool a unique name")
        by_name[name] = tool
    return by_name


def _check_tool(catalog: Catalog, tool: dict) -> None:
    where = f"{catalog.path}: tool '{tool['name']}'"
    for key in ("domain", "description", "parameters"):
        if not tool.get(key):
            raise UsageError(f"{where}: no `{key}`; add it")
    try:
        jsonschema.Draft202012Validator.check_schema(tool["parameters"])
    except jsonschema.SchemaError as exc:
        raise UsageError(f"{where}: `parameters` is not a valid JSON schema ({_brief(exc)}); fix the schema") from exc
    if tool["parameters"].get("type") != "object":
        raise UsageError(f"{where}: `parameters` must be a JSON schema with `type: object`; fix the schema")
    families = tool.get("families") or []
    if len(families) < MIN_FAMILIES:
        raise UsageError(
            f"{where}: {len(families)} paraphrase families; add at least {MIN_FAMILIES} "
            "so that train, validation and test each get their own"
        )
    if len({family.get("id") for family in families}) != len(families) or not all(f.get("id") for f in families):
        raise UsageError(f"{where}: every family needs an `id`, unique within the tool; fix the ids")
    pools_checked: set[tuple[str, str]] = set()
    for family in families:
        for lang in LANGS:
            if not family.get(lang):
                raise UsageError(f"{where}, family '{family['id']}': no `{lang}` templates; add at least one")
            for template in family[lang]:
                _check_template(catalog, tool, template, lang, f"{where}, template '{template}'", pools_checked)


def _check_template(catalog: Catalog, tool: dict, template: str, lang: str, where: str, pools_checked: set) -> None:
    properties = tool["parameters"].get("properties", {})
    slots = SLOT.findall(template)
    if len(set(slots)) != len(slots):
        raise UsageError(f"{where}: a slot appears twice; state each argument once")
    for slot in slots:
        if slot not in properties:
            raise UsageError(
                f"{where}: slot {slot} is not an argument of the tool; add it to `parameters.properties` or fix the name"
            )
        if not catalog.pool(tool, slot, lang):
            raise UsageError(
                f"{where}: slot {slot} has no {lang} value pool '{catalog.pool_name(tool, slot)}'; add it under `slots`"
            )
        if (slot, lang) not in pools_checked:
            pools_checked.add((slot, lang))
            for entry in catalog.pool(tool, slot, lang):
                _check_entry(entry, properties[slot], f"{where}, pool '{catalog.pool_name(tool, slot)}'")
    missing = set(tool["parameters"].get("required", [])) - set(slots)
    if missing:
        raise UsageError(
            f"{where}: required argument {sorted(missing)[0]} is never stated; add its slot to the template"
        )


def _check_entry(entry, schema: dict, where: str) -> None:
    """A plain entry is copied as written; a {text, value} entry is allowed only where copying cannot work."""
    value = entry
    if isinstance(entry, dict):
        if set(entry) != {"text", "value"}:
            raise UsageError(f"{where}: entry {entry} must be a plain value or have exactly `text` and `value`")
        if "enum" not in schema and schema.get("type") not in ("integer", "number"):
            raise UsageError(
                f"{where}: entry {entry} maps text to a different value for a free-text argument; "
                "values are copied as written, so use a plain entry"
            )
        value = entry["value"]
    error = next(iter(jsonschema.Draft202012Validator(schema).iter_errors(value)), None)
    if error is not None:
        raise UsageError(f"{where}: value {value!r} breaks the argument's schema ({error.message}); fix the entry")


def _check_templates_unique(catalog: Catalog) -> None:
    """One template in two families would put the same utterances on both sides of a split."""
    seen: dict[str, str] = {}
    for name, tool in catalog.tools.items():
        for family in tool["families"]:
            for template in (t for lang in LANGS for t in family[lang]):
                owner = f"tool '{name}' family '{family['id']}'"
                if template in seen and seen[template] != owner:
                    raise UsageError(
                        f"{catalog.path}: template '{template}' is in {seen[template]} and {owner}; "
                        "keep each template in one family"
                    )
                seen[template] = owner


def _check_no_call(catalog: Catalog) -> None:
    for kind, fields in NO_CALL_FIELDS.items():
        items = catalog.no_call.get(kind) or []
        if len(items) < MIN_FAMILIES:
            raise UsageError(
                f"{catalog.path}: `no_call.{kind}` has {len(items)} items; add at least {MIN_FAMILIES} "
                "so that train and evaluation get different ones"
            )
        for item in items:
            missing = [key for key in (*LANGS, *fields) if not item.get(key)]
            if missing:
                raise UsageError(f"{catalog.path}: `no_call.{kind}` item {item} has no `{missing[0]}`; add it")


def _brief(exc: Exception) -> str:
    return str(exc).splitlines()[0]


def render_tool(tool: dict) -> str:
    """One tool in the seed's tool-list format."""
    entry = {"tool_name": tool["name"], "tool_description": tool["description"], "arguments": tool["parameters"]}
    return json.dumps(entry, ensure_ascii=False)


def render_system_prompt(template: str, tools: list[dict]) -> str:
    return template.replace("{tools}", " ".join(render_tool(tool) for tool in tools))


def published_system_prompt(data_args) -> str:
    """The recipe's system prompt listing every catalog tool: `system_prompt.txt` in the repos, Ollama's `system`."""
    template = Path(data_args.system_prompt).read_text()
    return render_system_prompt(template, list(load_catalog(data_args.catalog).tools.values()))


def render_call(tool_name: str, arguments: dict) -> str:
    return json.dumps({"tool_name": tool_name, "arguments": arguments}, ensure_ascii=False)


def load_split(recipe, split: str):
    from datasets import load_from_disk

    path = recipe.stage_dir("dataset") / "hf"
    if not path.is_dir():
        raise UsageError(f"no dataset at {path}: run `make data RECIPE={recipe.path}` first")
    return load_from_disk(str(path))[split]
