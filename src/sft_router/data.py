"""Build the router dataset from a recipe's tool catalog: prompts like production, exact targets, leak-free splits.

Each row is a TRL conversational prompt-completion pair: the system prompt listing the shown tools
(the seed's format) and the user message, then the target, either one JSON tool call or a reply.
Train, validation and test use disjoint paraphrase families (the last family of each tool is test, the one
before it validation), and about one copied slot value in five never appears in train, so evaluation
measures routing and argument copying on wordings and values the model has not seen. Every row is checked
(schema, tool in prompt, no leak) before anything is written, and the same recipe and seed give the same bytes.

Usage: python -m sft_router.data --config recipes/gemma-3-270m-it/router.yaml   (writes runs/<name>/dataset/)
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jsonschema

from sft_router.catalog import (
    CALL_KINDS,
    KINDS,
    LANG_DRAW,
    LANGS,
    NO_CALL_KINDS,
    SLOT,
    SPLITS,
    Catalog,
    load_catalog,
    render_call,
    render_tool,
)
from sft_router.config import parse_recipe
from sft_router.errors import UsageError, one_line_errors
from sft_router.run import stage_output

IMAGE_CALL_SHARE = 0.05
HELD_OUT_ONE_IN = 5
GRAM, NEAR_DUPLICATE = 5, 0.8  # an evaluation message this close to a train message is a leak
NO_TOOL_REPLY = {
    "zh": "抱歉，我现在没有可以完成这个请求的工具。",
    "en": "Sorry, none of my current tools can do that.",
}
OUT_OF_SCOPE_REPLY = {"zh": "抱歉，我无法提供{topic}。", "en": "Sorry, I can't help with {topic}."}
IMAGE_REPLY = {"zh": "这张图片展示了[此处为图片内容的描述]。", "en": "This image shows [a description of the image]."}


def held_out(entry, seed: int) -> bool:
    """About one copied value in five is kept out of train, so evaluation has values the model never saw.

    A mapped entry ({text, value}) is never held out: the model cannot copy it, so it must see the mapping.
    """
    if isinstance(entry, dict):
        return False
    digest = hashlib.sha256(f"{seed}:{json.dumps(entry, ensure_ascii=False)}".encode()).digest()
    return digest[0] % HELD_OUT_ONE_IN == 0


def family_split(index: int, count: int) -> str:
    return "test" if index == count - 1 else "validation" if index == count - 2 else "train"


@dataclass(frozen=True)
class Utterance:
    tool: dict
    lang: str
    family: str
    template: str
    text: str
    shown: dict
    arguments: dict


class Generator:
    """Rows of one split, drawn from a random stream seeded by the recipe's seed and the split's name."""

    def __init__(self, catalog: Catalog, system_prompt: str, args, split: str):
        self.catalog, self.system_prompt, self.args, self.split = catalog, system_prompt, args, split
        self.rng = random.Random(f"{args.dataset_seed}:{split}")
        self.families = {
            name: [f for i, f in enumerate(tool["families"]) if family_split(i, len(tool["families"])) == split]
            for name, tool in catalog.tools.items()
        }
        self.rendered = {name: render_tool(tool) for name, tool in catalog.tools.items()}
        self._tool_queue: list[str] = []

    def _next_tool(self) -> dict:
        """Tools in shuffled rounds, so every tool appears once the split has as many calls as tools."""
        if not self._tool_queue:
            self._tool_queue = list(self.catalog.tools)
            self.rng.shuffle(self._tool_queue)
        return self.catalog.tools[self._tool_queue.pop()]

    def _entry(self, tool: dict, slot: str, lang: str):
        pool = self.catalog.pool(tool, slot, lang)
        if self.split == "train":
            pool = [e for e in pool if not held_out(e, self.args.dataset_seed)] or pool
        return self.rng.choice(pool)

    def utterance(self, tool: dict) -> Utterance:
        family = self.rng.choice(self.families[tool["name"]])
        lang = self.rng.choice(LANG_DRAW)
        template = self.rng.choice(family[lang])
        text, shown, values = template, {}, {}
        for slot in SLOT.findall(template):
            entry = self._entry(tool, slot, lang)
            shown[slot], values[slot] = (
                (entry["text"], entry["value"]) if isinstance(entry, dict) else (str(entry), entry)
            )
            text = text.replace("{" + slot + "}", shown[slot], 1)
        order = list(tool["parameters"].get("properties", {}))  # arguments in schema order: one target per request
        arguments = {slot: values[slot] for slot in sorted(values, key=order.index)}
        return Utterance(tool, lang, family["id"], template, text, shown, arguments)

    def _prompt_tools(self, target: dict | None, absent: dict | None = None) -> list[dict]:
        """Distractors in shuffled order, often near-misses: tools of the same domain (create vs query vs delete)."""
        anchor = target or absent
        names = {t["name"] for t in (target, absent) if t}
        others = [t for t in self.catalog.tools.values() if t["name"] not in names]
        most = min(self.args.max_distractors, len(others))
        count = self.rng.randint(min(most, 0 if target else 1), most)  # a no-call prompt shows a tool when it may
        near = [t for t in others if anchor and t["domain"] == anchor["domain"]]
        picked = self.rng.sample(near, min(len(near), self.rng.randint(0, count)))
        rest = [t for t in others if t not in picked]
        picked += self.rng.sample(rest, count - len(picked))
        tools = picked + ([target] if target else [])
        self.rng.shuffle(tools)
        return tools

    def call(self, image: bool = False) -> dict:
        said = self.utterance(self._next_tool())
        text = f"{self.catalog.image_marker}{said.text}" if image else said.text
        tools = self._prompt_tools(said.tool)
        completion = render_call(said.tool["name"], said.arguments)
        return self._row("image_call" if image else "call", said, text, tools, completion, said.tool["name"])

    def no_call(self, kind: str) -> dict:
        if kind == "missing_tool":  # a real request whose tool is not shown (its near-misses may be)
            said = self.utterance(self._next_tool())
            return self._row(kind, said, said.text, self._prompt_tools(None, said.tool), NO_TOOL_REPLY[said.lang])
        items = self.catalog.no_call[kind]
        index = self.rng.choice(self._item_indices(len(items)))
        item, lang = items[index], self.rng.choice(LANG_DRAW)
        said = Utterance({}, lang, f"{kind}_{index}", item[lang], item[lang], {}, {})
        if kind == "chat":
            return self._row(kind, said, item[lang], self._prompt_tools(None), item[f"reply_{lang}"])
        if kind == "out_of_scope":
            reply = OUT_OF_SCOPE_REPLY[lang].format(topic=item[f"topic_{lang}"])
            return self._row(kind, said, item[lang], self._prompt_tools(None), reply)
        return self._row(
            kind, said, f"{self.catalog.image_marker}{item[lang]}", self._prompt_tools(None), IMAGE_REPLY[lang]
        )

    def _item_indices(self, count: int) -> list[int]:
        """No-call items split like families; validation and test share theirs (too few items to split three ways)."""
        allowed = {"train"} if self.split == "train" else {"validation", "test"}
        return [i for i in range(count) if family_split(i, count) in allowed]

    def _row(self, kind: str, said: Utterance, text: str, tools: list[dict], completion: str, tool_name: str = ""):
        system = self.system_prompt.replace("{tools}", " ".join(self.rendered[t["name"]] for t in tools))
        return {
            "prompt": [{"role": "system", "content": system}, {"role": "user", "content": text}],
            "completion": [{"role": "assistant", "content": completion}],
            "kind": kind,
            "lang": said.lang,
            "family": said.family,
            "user": text,
            "tools": [t["name"] for t in tools],
            "tool_name": tool_name,
            "arguments": json.dumps(said.arguments, ensure_ascii=False) if tool_name else "",
            "template": said.template,
            "values": json.dumps(said.shown, ensure_ascii=False),
        }

    def rows(self, count: int) -> list[dict]:
        no_calls = round(count * self.args.no_call_share)
        image_calls = min(count - no_calls, round(count * IMAGE_CALL_SHARE))
        rows = [self.call() for _ in range(count - no_calls - image_calls)]  # calls first: they cover every tool
        rows += [self.call(image=True) for _ in range(image_calls)]
        rows += [self.no_call(NO_CALL_KINDS[i % len(NO_CALL_KINDS)]) for i in range(no_calls)]
        self.rng.shuffle(rows)
        for i, row in enumerate(rows):
            row["id"] = f"{self.split}-{i:06d}"
        return rows


class RowValidator:
    """Checks one generated row: a call names a tool shown in its own prompt and satisfies that tool's schema."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.rendered = {name: render_tool(tool) for name, tool in catalog.tools.items()}
        self.validators = {
            name: jsonschema.Draft202012Validator({**tool["parameters"], "additionalProperties": False})
            for name, tool in catalog.tools.items()
        }
        self.tool_of_family = catalog.tool_of_family()

    def check(self, row: dict) -> None:
        where = f"row {row.get('id', '?')} (family '{row['family']}', template '{row['template']}')"
        if row["kind"] not in KINDS:
            raise UsageError(f"{where}: unknown kind '{row['kind']}'; use one of {', '.join(KINDS)}")
        if row["kind"] in CALL_KINDS:
            self._check_call(row, where)
        elif row["tool_name"]:
            raise UsageError(f"{where}: a {row['kind']} row names tool '{row['tool_name']}'; fix the generator")
        elif row["kind"] == "missing_tool" and self.tool_of_family[row["family"]] in row["tools"]:
            raise UsageError(
                f"{where}: tool '{self.tool_of_family[row['family']]}' is in the prompt of a missing_tool row; "
                "fix the generator"
            )

    def _check_call(self, row: dict, where: str) -> None:
        name = row["tool_name"]
        system = row["prompt"][0]["content"]
        if name not in self.rendered or name not in row["tools"] or self.rendered[name] not in system:
            raise UsageError(f"{where}: target tool '{name}' is not in its prompt's tool list; fix the generator")
        arguments = json.loads(row["arguments"])
        error = next(iter(self.validators[name].iter_errors(arguments)), None)
        if error is not None:
            raise UsageError(
                f"{where}: arguments {row['arguments']} break the schema of '{name}' ({error.message}); "
                "fix the template or the slot pool"
            )
        if row["completion"][0]["content"] != render_call(name, arguments):
            raise UsageError(f"{where}: completion does not match its target call to '{name}'; fix the generator")


def check_rows(splits: dict[str, list[dict]], catalog: Catalog) -> None:
    validator = RowValidator(catalog)
    for rows in splits.values():
        for row in rows:
            validator.check(row)


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
    train_users: dict[str, str] = {}
    for row in splits["train"]:
        train_users.setdefault(normalise(row["user"]), row["user"])
    pairs = {(row["template"], row["values"]) for row in splits["train"]}
    near = NearDuplicates(train_users)
    leaks = set()
    for name in (split for split in splits if split != "train"):
        for row in splits[name]:
            user, key = row["user"], normalise(row["user"])
            if key in train_users:
                same = "" if train_users[key] == user else f" as '{train_users[key]}' once normalised"
                leaks.add(f"{name} user message '{user}' is in train{same}")
            elif (row["template"], row["values"]) in pairs:
                leaks.add(f"{name} template '{row['template']}' with values {row['values']} is in train")
            elif found := near.nearest(key):
                leaks.add(
                    f"{name} user message '{user}' nearly duplicates train's '{train_users[found[1]]}' "
                    f"(character {GRAM}-gram Jaccard {found[0]:.2f} >= {NEAR_DUPLICATE})"
                )
    return sorted(leaks)


def assert_no_leaks(splits: dict[str, list[dict]]) -> None:
    leaks = check_leaks(splits)
    if leaks:
        raise UsageError(
            f"{len(leaks)} leaks from train into evaluation (e.g. {leaks[0]}); "
            "reword that family's templates so no train family can produce the same or a near-identical message"
        )


def _check_mix(args) -> None:
    if not 0 <= args.no_call_share <= 1:
        raise UsageError(f"no_call_share is {args.no_call_share}; set it between 0 and 1 (default 0.25)")
    for name in ("num_train", "num_validation", "num_test", "max_distractors"):
        if getattr(args, name) < 0:
            raise UsageError(f"{name} is {getattr(args, name)}; set it to 0 or more")


def _read_system_prompt(path: str) -> str:
    if not Path(path).is_file():
        raise UsageError(f"system prompt {path} does not exist: set `system_prompt` in the recipe to a text file")
    text = Path(path).read_text()
    if "{tools}" not in text:
        raise UsageError(f"{path}: no `{{tools}}` placeholder; add it where the tool list goes")
    return text


def build_splits(recipe, catalog: Catalog | None = None) -> dict[str, list[dict]]:
    """Generate all three splits and check every row and every split boundary; raises before anything is written."""
    args = recipe.data
    _check_mix(args)
    catalog = catalog or load_catalog(args.catalog)
    system_prompt = _read_system_prompt(args.system_prompt)
    sizes = {"train": args.num_train, "validation": args.num_validation, "test": args.num_test}
    splits = {name: Generator(catalog, system_prompt, args, name).rows(sizes[name]) for name in SPLITS}
    check_rows(splits, catalog)
    assert_no_leaks(splits)
    return splits


def content_hash(splits: dict[str, list[dict]]) -> str:
    digest = hashlib.sha256()
    for name in SPLITS:
        for row in splits[name]:
            digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()


def split_mix(rows: list[dict], catalog: Catalog, train_values: set[str]) -> dict:
    """What one split holds: counts per kind, language and tool, the no-call share, rows with unseen values."""
    kinds = Counter(row["kind"] for row in rows)
    tools = Counter(row["tool_name"] for row in rows if row["tool_name"])
    unseen = sum(any(v not in train_values for v in json.loads(row["values"]).values()) for row in rows)
    return {
        "kind": {kind: kinds[kind] for kind in KINDS},
        "lang": {lang: sum(row["lang"] == lang for row in rows) for lang in LANGS},
        "tool": {name: tools[name] for name in catalog.tools},
        "no_call_share": round(sum(kinds[k] for k in NO_CALL_KINDS) / len(rows), 4) if rows else 0.0,
        "rows_with_unseen_values": unseen,
        "longest_prompt_chars": max((sum(len(m["content"]) for m in row["prompt"]) for row in rows), default=0),
    }


def dataset_facts(splits: dict[str, list[dict]], catalog: Catalog, recipe) -> dict:
    """The manifest's account of the data; the dataset card reads its numbers from here."""
    train_values = {v for row in splits["train"] for v in json.loads(row["values"]).values()}
    return {
        "rows": {name: len(rows) for name, rows in splits.items()},
        "mix": {name: split_mix(rows, catalog, train_values) for name, rows in splits.items()},
        "no_call_share": recipe.data.no_call_share,
        "dataset_seed": recipe.data.dataset_seed,
        "catalog": str(catalog.path),
        "catalog_sha256": hashlib.sha256(catalog.path.read_bytes()).hexdigest(),
        "tools": len(catalog.tools),
        "domains": sorted({tool["domain"] for tool in catalog.tools.values()}),
        "image_marker": catalog.image_marker,
        "leaks": len(check_leaks(splits)),
        "content_sha256": content_hash(splits),
    }


def _dataset(rows: list[dict], fingerprint: str):
    from datasets import Dataset

    # save_to_disk records the fingerprint in state.json: derive it from the content hash, so the saved bytes
    # are stable by construction rather than by how the library happens to hash an in-memory table
    table = Dataset.from_list(rows)
    return Dataset(table.data, info=table.info, split=table.split, fingerprint=fingerprint)


def write_dataset(splits: dict[str, list[dict]], out: Path) -> None:
    from datasets import DatasetDict

    digest = content_hash(splits)
    fingerprints = {name: hashlib.sha256(f"{digest}:{name}".encode()).hexdigest()[:16] for name in splits}
    DatasetDict({name: _dataset(rows, fingerprints[name]) for name, rows in splits.items()}).save_to_disk(out / "hf")
    for name, rows in splits.items():
        lines = (json.dumps(row, ensure_ascii=False, sort_keys=True) for row in rows)
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    (recipe,) = parse_recipe(argv)
    catalog = load_catalog(recipe.data.catalog)
    splits = build_splits(recipe, catalog)
    facts = dataset_facts(splits, catalog, recipe)
    with stage_output(recipe, "dataset", **facts) as (out, _):
        write_dataset(splits, out)
    print(f"dataset: {facts['rows']}, {facts['leaks']} leaks -> {recipe.stage_dir('dataset')}")


if __name__ == "__main__":
    main()
