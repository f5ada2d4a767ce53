"""The catalog and row formats every stage shares: the tool catalog (read and checked) and the dataset stage's saved
splits. How tools and calls are written into a prompt is `sft_router.core.router_format`.

Usage: from sft_router.datagen.catalog import load_catalog, load_split
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import jsonschema

from sft_router.core.errors import UsageError, read_yaml
from sft_router.datagen.catalog_format import LANGS, check_catalog_format
from sft_router.datagen.english_lint import english_lint
from sft_router.datagen.noise import check_noise_tables
from sft_router.datagen.procedural import check_procedural_spec

# The kinds of call arguments the dataset card counts; `enum`: a string from the schema's enum.
ARGUMENT_TYPES = ("string", "enum", "integer", "number", "boolean", "array", "object")
# test_unseen: only the catalog's `unseen_tools` are called; test_procedural: only functions of held-out domains
SPLITS = ("train", "validation", "test", "test_unseen", "test_procedural")
LANG_DRAW = ("zh", "zh", "en")  # Chinese first: two rows in three are Chinese


CALL_KINDS = ("call", "image_call")


NO_CALL_KINDS = ("chat", "out_of_scope", "missing_tool", "image", "clarify", "how_to")


KINDS = CALL_KINDS + NO_CALL_KINDS


MIN_FAMILIES = 3  # one each for train, validation and test


SLOT = re.compile(r"\{(\w+)\}")


NO_CALL_FIELDS = {
    "chat": ("reply_zh", "reply_en"),
    "out_of_scope": ("topic_zh", "topic_en"),
    "image": (),
    "how_to": (),
}


MIN_NO_CALL_ITEMS = 5  # one in five items is validation-only, one in five test-only


REPLIES = ("missing_tool", "out_of_scope", "image", "features")


ITEM_SPLIT_EVERY = 5


def item_split(index: int) -> str:
    """Lists of items (no-call items, clarify templates): one in five test-only, one in five validation-only."""
    return {ITEM_SPLIT_EVERY - 1: "test", ITEM_SPLIT_EVERY - 2: "validation"}.get(index % ITEM_SPLIT_EVERY, "train")


@dataclass(frozen=True)
class Catalog:
    path: Path
    tools: dict[str, dict]
    slots: dict[str, dict[str, list]]
    no_call: dict[str, list[dict]]
    image_marker: str
    replies: dict[str, dict[str, str]]
    confusable: list[list[str]]
    unseen_tools: list[str]
    procedural: dict
    noise: dict

    def pool_name(self, tool: dict, slot: str) -> str:
        """A slot draws from the pool the tool maps it to, else from the pool named like the argument."""
        return (tool.get("pools") or {}).get(slot, slot)

    def pool(self, tool: dict, slot: str, lang: str) -> list:
        return (self.slots.get(self.pool_name(tool, slot)) or {}).get(lang) or []

    def tool_of_family(self) -> dict[str, str]:
        return {family["id"]: name for name, tool in self.tools.items() for family in tool["families"]}

    def confusable_with(self, name: str) -> list[str]:
        """The tools declared confusable with `name` (in any group that holds it), in catalog order."""
        near = {other for group in self.confusable if name in group for other in group if other != name}
        return [other for other in self.tools if other in near]

    def features(self, lang: str) -> dict[str, str]:
        """Each feature word a reply may name, with the tools that serve it: a reply names it only beside them."""
        return {tool["feature"][lang]: name for name, tool in self.tools.items()}


def load_catalog(path: str | Path) -> Catalog:
    """Read and check a catalog; a broken tool or template fails naming the file, tool and template."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"catalog {path} does not exist: set `catalog` in the recipe to an existing YAML file")
    raw = read_yaml(path)
    check_catalog_format(path, raw)
    for section in ("tools", "slots", "no_call", "replies", "noise"):
        if not raw.get(section):
            raise UsageError(f"{path}: no `{section}` section; see recipes/gemma-3-270m-it/catalog.yaml")
    catalog = Catalog(
        path,
        _tools_by_name(path, raw["tools"]),
        raw["slots"],
        raw["no_call"],
        raw.get("image_marker", "<start_of_image>"),
        raw["replies"],
        raw.get("confusable") or [],
        raw.get("unseen_tools") or [],
        raw.get("procedural") or {},
        raw["noise"],
    )
    for tool in catalog.tools.values():
        _check_tool(catalog, tool)
    _check_templates_unique(catalog)
    _check_no_call(catalog)
    _check_groups(catalog)
    _check_generated(catalog)
    for tool in catalog.tools.values():
        for where, template, _ in english_templates(catalog, tool):
            _lint_template(catalog, tool, template, f"{catalog.path}: tool '{tool['name']}', {where} '{template}'")
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
    for key in ("domain", "description", "parameters", "feature", "how"):
        if not tool.get(key):
            raise UsageError(f"{where}: no `{key}`; add it")
    for key in ("feature", "how"):
        if not all(isinstance(tool[key].get(lang), str) for lang in LANGS):
            raise UsageError(f"{where}: `{key}` needs a `zh` and an `en` text; add them")
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
    _check_clarify(catalog, tool, where, pools_checked)
    _check_image(catalog, tool, where, pools_checked)


def missing_required(tool: dict, template: str) -> list[str]:
    """The required arguments a template does not state, in schema order."""
    slots = set(SLOT.findall(template))
    return [
        arg
        for arg in tool["parameters"].get("properties", {})
        if arg in tool["parameters"].get("required", []) and arg not in slots
    ]


def _check_clarify(catalog: Catalog, tool: dict, where: str, pools_checked: set) -> None:
    """Templates that leave a required argument out (rule 6) and the question that asks for it."""
    clarify = tool.get("clarify")
    if not clarify:
        return
    for lang in LANGS:
        for template in _split_templates(tool, "clarify", lang, where):
            at = f"{where}, clarify template '{template}'"
            missing = missing_required(tool, template)
            if not missing:
                raise UsageError(f"{at}: states every required argument; a clarify template leaves one out")
            question = (tool.get("ask") or {}).get(missing[0]) or {}
            if not question.get(lang):
                raise UsageError(f"{at}: no `ask.{missing[0]}.{lang}` question; add the question that asks for it")
            _check_template(catalog, tool, template, lang, at, pools_checked, clarify=True)


def _check_image(catalog: Catalog, tool: dict, where: str, pools_checked: set) -> None:
    """Requests that use an attached image ("send this to {recipient}: {content}"): full calls, split like clarify."""
    if not tool.get("image"):
        return
    for lang in LANGS:
        for template in _split_templates(tool, "image", lang, where):
            _check_template(catalog, tool, template, lang, f"{where}, image template '{template}'", pools_checked)


def _split_templates(tool: dict, key: str, lang: str, where: str) -> list[str]:
    """A tool's `clarify` or `image` templates in one language, enough for item_split to give every split its own."""
    templates = (tool.get(key) or {}).get(lang) or []
    if len(templates) < ITEM_SPLIT_EVERY:
        raise UsageError(
            f"{where}: `{key}.{lang}` has {len(templates)} templates; add at least {ITEM_SPLIT_EVERY} "
            "so that validation and test get their own"
        )
    return templates


def _check_template(
    catalog: Catalog, tool: dict, template: str, lang: str, where: str, pools_checked: set, clarify: bool = False
) -> None:
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
            validator = jsonschema.Draft202012Validator(properties[slot])
            for entry in catalog.pool(tool, slot, lang):
                _check_entry(entry, slot, validator, f"{where}, pool '{catalog.pool_name(tool, slot)}'")
    missing = missing_required(tool, template)
    if missing and not clarify:
        raise UsageError(f"{where}: required argument {missing[0]} is never stated; add its slot to the template")


def entry_text_value(entry, slot: str) -> tuple[str, object]:
    """What a pool entry puts in the message and in the call: a plain entry is both; {text, value} maps; a record
    ({song: ..., artist: ...}, one entry filling several slots so that they agree) gives its field for the slot."""
    if isinstance(entry, dict) and "text" in entry:
        return entry["text"], entry["value"]
    if isinstance(entry, dict):
        return entry_text_value(entry[slot], slot)
    return str(entry), entry


def _check_entry(entry, slot: str, validator, where: str) -> None:
    """A plain entry is copied as written; {text, value} maps a wording to an enum or number value, or keeps the part
    of a time phrase that rule 2 keeps (the value is inside the text); a record has a field for the slot."""
    if isinstance(entry, dict) and "text" not in entry:
        if slot not in entry:
            raise UsageError(f"{where}: record entry {entry} has no `{slot}` field; add it")
        entry = entry[slot]
    if isinstance(entry, dict):
        if set(entry) != {"text", "value"}:
            raise UsageError(f"{where}: entry {entry} must be a plain value or have exactly `text` and `value`")
        schema = validator.schema
        copied = "enum" not in schema and schema.get("type") not in ("integer", "number")
        if copied and not (isinstance(entry["value"], str) and entry["value"] in entry["text"]):
            raise UsageError(
                f"{where}: entry {entry} maps text to a different value for a free-text argument; "
                "values are copied as written, so use a plain entry (or a value that is part of the text)"
            )
    _, value = entry_text_value(entry, slot)
    error = next(iter(validator.iter_errors(value)), None)
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
        if len(items) < MIN_NO_CALL_ITEMS:
            raise UsageError(
                f"{catalog.path}: `no_call.{kind}` has {len(items)} items; add at least {MIN_NO_CALL_ITEMS} "
                "so that train, validation and test get different ones"
            )
        for item in items:
            missing = [key for key in (*LANGS, *fields) if not item.get(key)]
            if missing:
                raise UsageError(f"{catalog.path}: `no_call.{kind}` item {item} has no `{missing[0]}`; add it")
            if item.get("offer") and item["offer"] not in catalog.tools:
                raise UsageError(f"{catalog.path}: `no_call.{kind}` item offers unknown tool '{item['offer']}'")
    for name in REPLIES:
        if not all((catalog.replies.get(name) or {}).get(lang) for lang in LANGS):
            raise UsageError(f"{catalog.path}: `replies.{name}` needs a `zh` and an `en` reply; add them")


def _check_groups(catalog: Catalog) -> None:
    """Confusable groups and unseen tools name catalog tools; enough tools stay unseen to score them on their own."""
    for group in catalog.confusable:
        unknown = [name for name in group if name not in catalog.tools]
        if unknown or len(group) < 2:
            raise UsageError(f"{catalog.path}: confusable group {group} needs two or more catalog tools; fix it")
    unknown = [name for name in catalog.unseen_tools if name not in catalog.tools]
    if unknown or len(set(catalog.unseen_tools)) >= len(catalog.tools):
        raise UsageError(
            f"{catalog.path}: `unseen_tools` must name catalog tools and leave some seen (unknown: {unknown}); "
            "fix the list"
        )


def _check_generated(catalog: Catalog) -> None:
    """The word tables of the noise rules and the parts procedural tools are made of."""
    check_noise_tables(catalog.path, catalog.noise)
    if catalog.procedural:
        check_procedural_spec(catalog.path, catalog.procedural)


def english_templates(catalog: Catalog, tool: dict):
    """(where, template, clarify?) for every English template of a tool."""
    for family in tool["families"]:
        for template in family["en"]:
            yield f"family '{family['id']}' template", template, False
    for template in (tool.get("clarify") or {}).get("en", []):
        yield "clarify template", template, True
    for template in (tool.get("image") or {}).get("en", []):
        yield "image template", template, False


def _lint_template(catalog: Catalog, tool: dict, template: str, where: str) -> None:
    """Every value of every slot in place (the other slots at their pools' first values), plus no article before a
    slot whose pool holds bare names."""
    slots = SLOT.findall(template)
    first = {slot: entry_text_value(catalog.pool(tool, slot, "en")[0], slot)[0] for slot in slots}
    for slot in slots:
        pool = catalog.slots.get(catalog.pool_name(tool, slot)) or {}
        if pool.get("names") and re.search(r"\b(a|an|the)\s+\{" + slot + r"\}", template, re.IGNORECASE):
            raise UsageError(f"{where}: an article before {{{slot}}}, whose values are names; drop the article")
        before, after = template.split("{" + slot + "}", 1)
        for other in slots:
            before, after = (part.replace("{" + other + "}", first[other]) for part in (before, after))
        before, after = re.search(r"\S*\s*$", before).group(), re.match(r"\s*\S*", after).group()
        for entry in pool.get("en", []):
            text = entry_text_value(entry, slot)[0]
            slip = english_lint(before + text + after)  # the value with the words on either side of it
            if slip:
                raise UsageError(f"{where}: with {slot}='{text}' it reads {slip}; fix the template or the value")


def labelling_rules(path: str | Path) -> str:
    """The labelling rules written at the top of a catalog (its LABELLING RULES comment), for the dataset card."""
    lines, keep = [], False
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if text.startswith("LABELLING RULES"):
            keep = True
        elif text.startswith("FORMAT"):
            break
        if keep:
            lines.append(line[2:] if line.startswith("# ") else line[1:])
    if not lines:
        raise UsageError(f"{path}: no LABELLING RULES comment at the top; write the rules the rows follow there")
    return "\n".join(lines).strip()


def _brief(exc: Exception) -> str:
    return str(exc).splitlines()[0]


def load_split(recipe, split: str):
    from datasets import load_from_disk

    path = recipe.stage_dir("dataset") / "hf"
    if not path.is_dir():
        raise UsageError(f"no dataset at {path}: run `make data RECIPE={recipe.path}` first")
    return load_from_disk(str(path))[split]
