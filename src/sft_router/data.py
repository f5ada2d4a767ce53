"""Build the router dataset from a recipe's tool catalog: prompts like production, exact targets, leak-free splits.

Each row is a TRL conversational prompt-completion pair: the system prompt listing the shown tools
(the seed's format) and the user message, then the target, either one JSON tool call or a reply.

Usage: python -m sft_router.data --config recipes/tiny/router.yaml   (writes runs/<name>/dataset/)
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from sft_router.config import parse_recipe
from sft_router.errors import UsageError, one_line_errors
from sft_router.run import stage_output

SPLITS = ("train", "validation", "test")
SLOT = re.compile(r"\{(\w+)\}")
NO_TOOL_REPLY = {
    "zh": "抱歉，我现在没有可以完成这个请求的工具。",
    "en": "Sorry, none of my current tools can do that.",
}
OUT_OF_SCOPE_REPLY = {"zh": "抱歉，我无法提供{topic}。", "en": "Sorry, I can't help with {topic}."}
IMAGE_REPLY = {"zh": "这张图片展示了[此处为图片内容的描述]。", "en": "This image shows [a description of the image]."}


@dataclass(frozen=True)
class Catalog:
    path: Path
    tools: dict[str, dict]
    slots: dict[str, dict[str, list]]
    no_call: dict[str, list[dict]]
    image_marker: str


def load_catalog(path: str | Path) -> Catalog:
    """Read and check a catalog; a broken tool or template fails naming the file, tool and template."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"catalog {path} does not exist: set `catalog` in the recipe to an existing YAML file")
    raw = yaml.safe_load(path.read_text())
    tools = {tool["name"]: tool for tool in raw["tools"]}
    catalog = Catalog(path, tools, raw["slots"], raw["no_call"], raw.get("image_marker", "<start_of_image>"))
    for tool in tools.values():
        _check_tool(catalog, tool)
    return catalog


def _check_tool(catalog: Catalog, tool: dict) -> None:
    where = f"{catalog.path}: tool '{tool.get('name')}'"
    try:
        jsonschema.Draft202012Validator.check_schema(tool["parameters"])
    except (KeyError, jsonschema.SchemaError) as exc:
        raise UsageError(f"{where}: `parameters` is not a valid JSON schema ({_brief(exc)}); fix the schema") from exc
    properties = tool["parameters"].get("properties", {})
    for family in tool.get("families") or []:
        for lang in ("zh", "en"):
            for template in family.get(lang, []):
                slots = set(SLOT.findall(template))
                unknown = slots - properties.keys() or slots - catalog.slots.keys()
                missing = set(tool["parameters"].get("required", [])) - slots
                if unknown:
                    raise UsageError(
                        f"{where}, template '{template}': slot {sorted(unknown)[0]} is not an argument "
                        "with a value pool; add it to `properties` and `slots` or fix the name"
                    )
                if missing:
                    raise UsageError(
                        f"{where}, template '{template}': required argument {sorted(missing)[0]} "
                        "is never stated; add its slot to the template"
                    )
    if not tool.get("families"):
        raise UsageError(f"{where}: no `families` of utterance templates; add at least one")


def _brief(exc: Exception) -> str:
    return str(exc).splitlines()[0]


def render_tool(tool: dict) -> str:
    """One tool in the seed's tool-list format."""
    entry = {"tool_name": tool["name"], "tool_description": tool["description"], "arguments": tool["parameters"]}
    return json.dumps(entry, ensure_ascii=False)


def render_system_prompt(template: str, tools: list[dict]) -> str:
    return template.replace("{tools}", " ".join(render_tool(tool) for tool in tools))


def render_call(tool_name: str, arguments: dict) -> str:
    return json.dumps({"tool_name": tool_name, "arguments": arguments}, ensure_ascii=False)


def _held_out(value: object, seed: int) -> bool:
    """About one slot value in five is kept out of train, so the test split has values the model never saw."""
    digest = hashlib.sha256(f"{seed}:{json.dumps(value, ensure_ascii=False)}".encode()).digest()
    return digest[0] % 5 == 0


def _family_split(index: int, count: int) -> str:
    if count >= 3:
        return "test" if index == count - 1 else "validation" if index == count - 2 else "train"
    return "train" if index == 0 else "test"  # too few families for three splits: validation shares test's


class Generator:
    def __init__(self, catalog: Catalog, system_prompt: str, args, split: str):
        self.catalog, self.system_prompt, self.args, self.split = catalog, system_prompt, args, split
        self.rng = random.Random(f"{args.dataset_seed}:{split}")
        self.families = self._families_for_split()

    def _families_for_split(self) -> list[tuple[dict, dict]]:
        chosen = []
        for tool in self.catalog.tools.values():
            families = sorted(tool["families"], key=lambda f: f["id"])
            chosen += [(tool, f) for i, f in enumerate(families) if self._family_in_split(i, len(families))]
        return chosen

    def _family_in_split(self, index: int, count: int) -> bool:
        split = _family_split(index, count)
        return split == self.split or (split == "test" and self.split == "validation" and count < 3)

    def _value(self, slot: str, lang: str):
        pool = self.catalog.slots[slot][lang]
        if self.split == "train":
            pool = [v for v in pool if not _held_out(v, self.args.dataset_seed)] or pool
        return self.rng.choice(pool)

    def _prompt_tools(self, target: str | None, exclude: str | None = None) -> list[dict]:
        others = [t for name, t in self.catalog.tools.items() if name not in (target, exclude)]
        near = [t for t in others if target and t["domain"] == self.catalog.tools[target]["domain"]]
        count = self.rng.randint(0 if target else 1, self.args.max_distractors)
        picked = self.rng.sample(near, min(len(near), self.rng.randint(0, count))) if near else []
        rest = [t for t in others if t not in picked]
        picked += self.rng.sample(rest, max(0, min(len(rest), count - len(picked))))
        tools = picked + ([self.catalog.tools[target]] if target else [])
        self.rng.shuffle(tools)
        return tools

    def call(self, image: bool = False) -> dict:
        tool, family = self.rng.choice(self.families)
        lang = self.rng.choice(["zh", "zh", "en"]) if family.get("en") else "zh"
        template = self.rng.choice(family[lang])
        arguments, text = {}, template
        for slot in SLOT.findall(template):
            value = self._value(slot, lang)
            shown, arg = (value["text"], value["value"]) if isinstance(value, dict) else (value, value)
            text, arguments[slot] = text.replace("{" + slot + "}", shown, 1), arg
        if image:
            text = f"{self.catalog.image_marker}{text}"
        tools = self._prompt_tools(tool["name"])
        return self._row("image_call" if image else "call", lang, family["id"], text, tools, tool["name"], arguments)

    def no_call(self) -> dict:
        kind = self.rng.choice(["chat", "out_of_scope", "missing_tool", "image"])
        lang = self.rng.choice(["zh", "zh", "en"])
        if kind == "missing_tool":
            row = self.call()
            absent = row["tool_name"]
            text, lang, family = row["user"], row["lang"], row["family"]
            return self._row(
                kind, lang, family, text, self._prompt_tools(None, exclude=absent), None, NO_TOOL_REPLY[lang]
            )
        items = self.catalog.no_call[kind]
        index = self._item_index(len(items))
        item = items[index]
        text = item[lang]
        if kind == "chat":
            reply = item[f"reply_{lang}"]
        elif kind == "out_of_scope":
            reply = OUT_OF_SCOPE_REPLY[lang].format(topic=item[f"topic_{lang}"])
        else:
            text, reply = f"{self.catalog.image_marker}{text}", IMAGE_REPLY[lang]
        return self._row(kind, lang, f"{kind}_{index}", text, self._prompt_tools(None), None, reply)

    def _item_index(self, count: int) -> int:
        indices = [i for i in range(count) if _family_split(i, count) in self._splits_seen()]
        return self.rng.choice(indices or list(range(count)))

    def _splits_seen(self) -> set[str]:
        return {"train"} if self.split == "train" else {"validation", "test"}

    def _row(self, kind, lang, family, text, tools, tool_name, target) -> dict:
        completion = render_call(tool_name, target) if tool_name else target
        return {
            "prompt": [
                {"role": "system", "content": render_system_prompt(self.system_prompt, tools)},
                {"role": "user", "content": text},
            ],
            "completion": [{"role": "assistant", "content": completion}],
            "kind": kind,
            "lang": lang,
            "family": family,
            "user": text,
            "tools": [t["name"] for t in tools],
            "tool_name": tool_name or "",
            "arguments": json.dumps(target, ensure_ascii=False) if tool_name else "",
        }

    def rows(self, count: int) -> list[dict]:
        no_calls = round(count * self.args.no_call_share)
        image_calls = max(1, count // 20)
        kinds = ["no_call"] * no_calls + ["image_call"] * image_calls + ["call"] * (count - no_calls - image_calls)
        rows = [self.no_call() if k == "no_call" else self.call(image=k == "image_call") for k in kinds]
        self.rng.shuffle(rows)
        for i, row in enumerate(rows):
            row["id"] = f"{self.split}-{i:06d}"
        return rows


def validate_row(row: dict, catalog: Catalog) -> None:
    """A call must name a tool shown in its own prompt and satisfy that tool's schema."""
    if not row["tool_name"]:
        return
    where = f"row {row.get('id', '?')} (family '{row['family']}')"
    if row["tool_name"] not in row["tools"] or row["tool_name"] not in catalog.tools:
        raise UsageError(
            f"{where}: target tool '{row['tool_name']}' is not in its prompt's tool list; fix the generator"
        )
    schema = {**catalog.tools[row["tool_name"]]["parameters"], "additionalProperties": False}
    try:
        jsonschema.validate(json.loads(row["arguments"]), schema)
    except jsonschema.ValidationError as exc:
        raise UsageError(
            f"{where}: arguments break the schema of '{row['tool_name']}' ({exc.message}); "
            "fix the template or the slot pool"
        ) from exc


def check_leaks(splits: dict[str, list[dict]]) -> list[str]:
    """User messages of validation/test that also occur in train (the build fails if any)."""
    seen = {row["user"] for row in splits["train"]}
    return sorted({row["user"] for name in ("validation", "test") for row in splits[name] if row["user"] in seen})


def build_splits(recipe) -> dict[str, list[dict]]:
    args = recipe.data
    catalog = load_catalog(args.catalog)
    system_prompt = Path(args.system_prompt).read_text()
    sizes = {"train": args.num_train, "validation": args.num_validation, "test": args.num_test}
    splits = {name: Generator(catalog, system_prompt, args, name).rows(sizes[name]) for name in SPLITS}
    for rows in splits.values():
        for row in rows:
            validate_row(row, catalog)
    leaks = check_leaks(splits)
    if leaks:
        raise UsageError(
            f"{len(leaks)} evaluation user messages also occur in train (e.g. '{leaks[0]}'); "
            "give the tool more paraphrase families or larger slot pools"
        )
    return splits


def content_hash(splits: dict[str, list[dict]]) -> str:
    digest = hashlib.sha256()
    for name in SPLITS:
        for row in splits[name]:
            digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()


def write_dataset(splits: dict[str, list[dict]], out: Path) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(out / "hf")
    for name, rows in splits.items():
        lines = (json.dumps(row, ensure_ascii=False, sort_keys=True) for row in rows)
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


def load_split(recipe, split: str):
    from datasets import load_from_disk

    path = recipe.stage_dir("dataset") / "hf"
    if not path.is_dir():
        raise UsageError(f"no dataset at {path}: run `make data RECIPE={recipe.path}` first")
    return load_from_disk(str(path))[split]


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    (recipe,) = parse_recipe(argv)
    splits = build_splits(recipe)
    counts = {name: len(rows) for name, rows in splits.items()}
    with stage_output(recipe, "dataset", rows=counts, content_sha256=content_hash(splits)) as (out, _):
        write_dataset(splits, out)
    print(f"dataset: {counts} -> {recipe.stage_dir('dataset')}")


if __name__ == "__main__":
    main()
