"""Build the router dataset from a recipe's tool catalog: prompts like production, exact targets, leak-free splits.

Each row is a TRL conversational prompt-completion pair: the system prompt listing the shown tools
(the seed's format) and the user message, then the target, either one JSON tool call or a reply, labelled by the
rules written at the top of the catalog. Rows come in scenes (sft_router.scenes): `scene_size` requests of mixed
kinds against one system prompt and tool list, a scene's rows together and named by their `scene` column. Train,
validation and test use disjoint paraphrase families (the last fifth of each tool's families is test, the one
before them validation) and disjoint no-call items; a third of each value pool beyond its most common entries never
appears in train; the catalog's `unseen_tools` are left out of train, validation and test and make up the
`test_unseen` split; a share of train rows calls procedurally generated tools. `function_share` of train, validation and test rows are
scenes of BFCL-style functions (sft_router.functions: typed arguments in English prose), the other rows keeping
the catalog's mix; the `test_procedural` split calls only functions of domains no other split shows.
Messages get seeded noise (typos, fillers, politeness, curt forms, context, mixed languages, numbers as words,
corrections) at the recipe's rates. Every row is checked (schema, tool in prompt, replies, no leak) before
anything is written, and the same recipe and seed give the same bytes.

Usage: python -m sft_router.data --config recipes/gemma-3-270m-it/router.yaml   (writes runs/<name>/dataset/)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema

from sft_router.catalog import (
    ARGUMENT_TYPES,
    CALL_KINDS,
    KINDS,
    LANG_DRAW,
    LANGS,
    NO_CALL_KINDS,
    SLOT,
    SPLITS,
    Catalog,
    entry_text_value,
    item_split,
    load_catalog,
    missing_required,
)
from sft_router.config import parse_recipe
from sft_router.english_lint import english_lint
from sft_router.errors import UsageError, one_line_errors
from sft_router.functions import FAMILY as FUNCTION_FAMILY
from sft_router.functions import HELD_OUT_SPLIT, FunctionRows, check_irrelevance, load_functions
from sft_router.functions import IRRELEVANT_SHARE as IRRELEVANT
from sft_router.noise import END_PUNCTUATION, RULES, NoiseRules, number_words
from sft_router.procedural import ProceduralTools, join_words
from sft_router.router_format import (
    load_system_prompt,
    render_call,
    render_system_prompt,
    render_tool,
    tools_in_prompt,
)
from sft_router.run import stage_output
from sft_router.scenes import PROCEDURAL, Scene, ToolLists, deal, scene_plans

KEEP_IN_TRAIN = 6  # a pool's first entries are its most common values: always in train
HELD_OUT_OF = (1, 2)  # of the other entries, one in two never appears in train
EVAL_UNSEEN_DRAW = 0.6  # an evaluation row draws a slot's value from the held-out entries this often
HOW_TO_SHOWN = 0.6  # a how-to question asks about a shown tool's feature this often, else about one not shown
CORRECTION = {"zh": ["，不对，", "，不是，是", "，说错了，", "，哦不，"],
              "en": [", no wait, ", ", sorry, I mean ", ", no, ", " - actually "]}  # fmt: skip
NOISE_REQUEST = ("typo", "mixed", "curt", "polite", "filler", "context", "informal", "lowercase")
NOISE_TALK = ("typo", "polite", "informal", "lowercase")
GRAM, NEAR_DUPLICATE = 5, 0.8  # an evaluation message this close to a train message is a leak


def maps_wording(entry) -> bool:
    """Whether an entry, or a field of a record ({label, duration_minutes: {text: 八分钟, value: 8}}), says a value
    its text does not contain (十分钟 -> 10, every day -> daily)."""
    if isinstance(entry, dict) and "text" in entry:
        return str(entry["value"]) not in entry["text"]
    return isinstance(entry, dict) and any(maps_wording(part) for part in entry.values())


def held_out(entry, index: int, seed: int) -> bool:
    """Beyond a pool's KEEP_IN_TRAIN most common entries, one in two is kept out of train, so evaluation has
    values the model never saw; a record is held out whole (a timer's label with its length). An entry that maps its
    wording (maps_wording) is never held out: the model must see the mapping; "25 minutes" -> 25 can be copied."""
    if index < KEEP_IN_TRAIN or maps_wording(entry):
        return False
    digest = hashlib.sha256(f"{seed}:{json.dumps(entry, ensure_ascii=False)}".encode()).digest()
    return digest[0] % HELD_OUT_OF[1] < HELD_OUT_OF[0]


def family_split(index: int, count: int) -> str:
    """The last families of a tool are test (one in five, at least one), the one before them validation."""
    tests = max(1, count // 5)
    return "test" if index >= count - tests else "validation" if index == count - tests - 1 else "train"


@dataclass
class Utterance:
    tool: dict
    lang: str
    family: str
    template: str
    text: str
    shown: dict
    arguments: dict
    noise: list[str] = field(default_factory=list)


class Generator:
    """Rows of one split, drawn from a random stream seeded by the recipe's seed and the split's name."""

    def __init__(self, catalog: Catalog, system_prompt: str, args, split: str, functions=None):
        self.catalog, self.system_prompt, self.args, self.split = catalog, system_prompt, args, split
        self.rng = random.Random(f"{args.dataset_seed}:{split}")
        self.procedural = ProceduralTools(catalog.procedural) if catalog.procedural else None
        self.lists = ToolLists(catalog, args, split, self.rng, self.procedural)
        self.targets = self.lists.targets
        every_family = split == "test_unseen"  # no family of an unseen tool was ever trained on
        self.families = {
            name: [f for i, f in enumerate(tool["families"])
                   if every_family or family_split(i, len(tool["families"])) == split]
            for name, tool in catalog.tools.items()
        }  # fmt: skip
        self.item_split = "test" if split == "test_unseen" else split
        self.noise = NoiseRules(catalog.noise, {rule: getattr(args, f"noise_{rule}") for rule in RULES})
        self.applied: Counter = Counter()
        self._queues: dict[str, list] = {}
        self._messages: set[str] = set()
        self._held: dict[tuple[str, str], list[bool]] = {}
        self.functions = functions  # the `functions` spec (load_functions), read once for all splits
        self.function_rows = self.functions and FunctionRows(self.functions, self.rng, args.function_mask_rate,
                                                             args.max_distractors + 1)  # fmt: skip
        self.avoid: TrainMessages | None = None  # set by build_splits for the evaluation splits

    def _next(self, queue: str, items: list):
        """Items in shuffled rounds, so every item appears once the split has drawn as many as there are items."""
        if not self._queues.get(queue):
            self._queues[queue] = list(items)
            self.rng.shuffle(self._queues[queue])
        return self._queues[queue].pop()

    def _entry(self, tool: dict, slot: str, lang: str):
        """Train draws from the values not held out; evaluation mostly from the held-out ones (values it never saw),
        else from the whole pool."""
        pool = self.catalog.pool(tool, slot, lang)
        key = (self.catalog.pool_name(tool, slot), lang)
        if key not in self._held:
            self._held[key] = [held_out(e, i, self.args.dataset_seed) for i, e in enumerate(pool)]
        held = self._held[key]
        if self.split == "train":
            pool = [e for e, h in zip(pool, held) if not h] or pool
        elif any(held) and self.rng.random() < EVAL_UNSEEN_DRAW:
            pool = [e for e, h in zip(pool, held) if h]
        return self.rng.choice(pool)

    def fill(self, tool: dict, template: str, lang: str, correct: bool = False):
        """Segments of the message (text, is_value), the values as said and the arguments; two arguments never
        share a value (rule 14); a copied time phrase may be said in words; a correction may precede a value."""
        segments, shown, values = [], {}, {}
        records: dict[str, dict] = {}
        slots = SLOT.findall(template)
        correctable = [slot for slot in slots if (self.catalog.slots.get(self.catalog.pool_name(tool, slot)) or {}).get(
            "correctable")]  # fmt: skip
        corrected = self.rng.choice(correctable) if correct and correctable else None
        for literal, slot in zip(re.split(r"\{\w+\}", template), [*slots, None]):
            if literal:
                segments.append([literal, False])
            if slot is None:
                continue
            text, value, entry = self._draw(tool, slot, lang, records, set(map(str, values.values())))
            text, value = self._as_typed(tool["parameters"]["properties"][slot], text, value, lang)
            if slot == corrected:
                wrong = self._wrong(tool, slot, lang, entry)
                if wrong is not None:
                    segments += [[wrong, True], [self.rng.choice(CORRECTION[lang]), False]]
                    self.applied["correction"] += 1
            segments.append([text, True])
            shown[slot], values[slot] = text, value
        order = list((tool.get("parameters") or {}).get("properties", {}))  # schema order: one target per request
        return segments, shown, {slot: values[slot] for slot in sorted(values, key=order.index)}

    def _as_typed(self, schema: dict, text: str, value, lang: str) -> tuple[str, object]:
        """A value as the user may type it: a copied time or date said in words, or a slip inside it. A copied
        value's argument takes the same words (rule 1: as typed); a mapped one ("25 minuts" -> 25) keeps its value."""
        copied = schema.get("type") == "string" and "enum" not in schema
        if copied and self.noise.fires("number_words", self.rng):
            said = number_words(text, lang)
            if said != text:
                self.applied["number_words"] += 1
                return said, number_words(value, lang)
        if (copied and text == value or not copied) and self.noise.fires("value_typo", self.rng):
            slipped = self.noise.slip(text, lang, self.rng)
            if slipped != text:
                self.applied["value_typo"] += 1
                return slipped, slipped if copied else value
        return text, value

    def _draw(self, tool: dict, slot: str, lang: str, records: dict, taken: set):
        pool_name = self.catalog.pool_name(tool, slot)
        for _ in range(20):
            entry = records.get(pool_name) or self._entry(tool, slot, lang)
            text, value = entry_text_value(entry, slot)
            if str(value) not in taken or pool_name in records:
                break
        if isinstance(entry, dict) and "text" not in entry:
            records[pool_name] = entry  # a record fills its other slots too (a song with its own artist)
        return text, value, entry

    def _wrong(self, tool: dict, slot: str, lang: str, right) -> str | None:
        """The value said before a correction: another entry's, for a record another record's field (the corrected
        value is the drawn record's, so it still agrees with the record's other slots)."""
        pool = self.catalog.pool(tool, slot, lang)
        others = [e for e in pool if entry_text_value(e, slot)[1] != entry_text_value(right, slot)[1]]
        if not others:
            return None
        return entry_text_value(self.rng.choice(others), slot)[0]

    def _said(self, tool: dict, family: str, template: str, lang: str, correct: bool = False) -> Utterance:
        """A filled template with noise; in evaluation splits a message already drawn is drawn again (a few tries).
        Small talk and questions get slips, fillers and politeness, not request framing (context, curt forms)."""
        rules = NOISE_REQUEST if tool else NOISE_TALK
        for _ in range(8):
            segments, shown, arguments = self.fill(tool, template, lang, correct)
            text, applied = self.noise.apply(segments, lang, self.rng, rules)
            if self.split == "train" or text not in self._messages:
                break
        self._messages.add(text)
        self.applied.update(applied)
        return Utterance(tool, lang, family, template, text, shown, arguments, applied)

    def utterance(self, tool: dict, correct: bool = False) -> Utterance:
        family = self.rng.choice(self.families[tool["name"]])
        lang = self.rng.choice(LANG_DRAW)
        return self._said(tool, family["id"], self.rng.choice(family[lang]), lang, correct)

    def call(self, scene: Scene, tool: dict, image: bool = False) -> dict:
        """A request to `tool`; with an image, one of the tool's `image` templates (a request that uses the image,
        "send this to Mom: ...") where it has them, else a plain request behind the image marker."""
        correct = self.rng.random() < self.args.correction_rate
        if image and tool.get("image"):
            lang, template = self._split_template(tool["image"])
            said = self._said(tool, f"image_{tool['name']}", template, lang, correct)
        else:
            said = self.utterance(tool, correct=correct)
        text = self._second_request(said, tool)
        text = f"{self.catalog.image_marker}{text}" if image else text
        completion = render_call(tool["name"], said.arguments)
        return self._row("image_call" if image else "call", said, text, scene, completion, tool["name"])

    def _second_request(self, said: Utterance, tool: dict) -> str:
        """Rule 9: another request after this one, at the recipe's rate, for some other tool; the call still serves the
        first (the agent's next turn sends the rest)."""
        others = [r for r in self.catalog.noise.get("second_request", []) if r["tool"] != tool["name"]]
        if not others or not self.noise.fires("second_request", self.rng):
            return said.text
        self.applied["second_request"] += 1
        said.noise.append("second_request")
        joiner = "，" if said.lang == "zh" else ", "
        return said.text.rstrip(END_PUNCTUATION) + joiner + self.rng.choice(others)[said.lang]

    def procedural_call(self, scene: Scene, tool: dict) -> dict:
        """A call to a tool made up for this scene, beside its near-misses and catalog tools (train only)."""
        lang = self.rng.choice(LANG_DRAW)
        segments, shown, arguments = self.procedural.utterance(self.rng, tool, lang)
        written = "".join(text for text, _ in segments)
        slip = english_lint(written) if lang == "en" else None
        if slip:
            raise UsageError(f"procedural tool '{tool['name']}': message '{written}' reads {slip}; fix `procedural`")
        text, applied = self.noise.apply(segments, lang, self.rng, NOISE_REQUEST)
        self.applied.update(applied)
        said = Utterance(tool, lang, "procedural", written, text, shown, arguments, applied)
        return self._row("call", said, text, scene, render_call(tool["name"], arguments), tool["name"])

    def no_call(self, kind: str, scene: Scene) -> dict:
        if kind == "missing_tool":  # a real request for a tool the scene does not show (its near-misses may be)
            said = self.utterance(self._absent(scene))
            return self._row(kind, said, said.text, scene, self.catalog.replies["missing_tool"][said.lang])
        if kind == "clarify":
            return self.clarify(scene)
        if kind == "how_to":
            return self.how_to(scene)
        items = self.catalog.no_call[kind]
        index = self._next(kind, self._item_indices(len(items)))
        item, lang = items[index], self.rng.choice(LANG_DRAW)
        said = self._said({}, f"{kind}_{index}", item[lang], lang)
        text = f"{self.catalog.image_marker}{said.text}" if kind == "image" else said.text
        if kind == "chat":
            return self._row(kind, said, text, scene, self.chat_reply(item, lang, scene.tools))
        if kind == "out_of_scope":
            reply = self.catalog.replies["out_of_scope"][lang].format(topic=item[f"topic_{lang}"])
            return self._row(kind, said, text, scene, reply)
        return self._row(kind, said, text, scene, self.catalog.replies["image"][lang])

    def _absent(self, scene: Scene) -> dict:
        """A tool the scene does not show, most often a near-miss of one it does (the query tool beside delete)."""
        shown = set(scene.names)
        others = [tool for tool in self.targets if tool["name"] not in shown]
        return self.rng.choice(self.lists.near(scene.tools, others) or others)

    def chat_reply(self, item: dict, lang: str, tools: list[dict]) -> str:
        """Rule 11: an offer only when its tool is shown; `{features}` lists what the shown tools do."""
        reply = item[f"reply_{lang}"].replace("{features}", self.features_reply(tools, lang))
        if item.get("offer") and item["offer"] in {t["name"] for t in tools}:
            reply += item[f"offer_{lang}"]
        return reply

    def features_reply(self, tools: list[dict], lang: str) -> str:
        """The `features` reply listing what the shown tools do, each feature once (rule 11)."""
        features = list(dict.fromkeys(t["feature"][lang] for t in tools if "feature" in t))
        return self.catalog.replies["features"][lang].format(features=_join(features, lang))

    def clarify(self, scene: Scene) -> dict:
        """Rule 6/7: a request to a shown tool missing a required argument; the reply asks for the first one missing."""
        tool = self.rng.choice([t for t in scene.tools if t.get("clarify")])
        lang, template = self._split_template(tool["clarify"])
        said = self._said(tool, f"clarify_{tool['name']}", template, lang)
        reply = tool["ask"][missing_required(tool, template)[0]][lang]
        return self._row("clarify", said, said.text, scene, reply)

    def _split_template(self, templates: dict[str, list[str]]) -> tuple[str, str]:
        """A language and one of its templates that belong to this split (item_split: by index, like no-call items)."""
        lang = self.rng.choice(LANG_DRAW)
        return lang, self.rng.choice([t for i, t in enumerate(templates[lang]) if item_split(i) == self.item_split])

    def how_to(self, scene: Scene) -> dict:
        """Rule 10: a question about a feature; how to ask for it when a shown tool has it, else (a feature no shown
        tool has) the missing-tool reply."""
        items = self.catalog.no_call["how_to"]
        index = self._next("how_to", self._item_indices(len(items)))
        lang = self.rng.choice(LANG_DRAW)
        shown = [tool for tool in scene.tools if self.catalog.tools.get(tool["name"]) is tool]
        if "{feature}" not in items[index][lang]:  # a general question ("what features do you have?"): all of them
            said = self._said({}, f"how_to_{index}", items[index][lang], lang)
            return self._row("how_to", said, said.text, scene, self.features_reply(scene.tools, lang))
        features = {tool["feature"][lang] for tool in shown}
        hidden = [tool for tool in self.targets if tool["feature"][lang] not in features]
        if shown and (not hidden or self.rng.random() < HOW_TO_SHOWN):
            tool = self.rng.choice(shown)
            reply = tool["how"][lang]
        else:
            tool = self.rng.choice(hidden)
            reply = self.catalog.replies["missing_tool"][lang]
        said = self._said({}, f"how_to_{index}", items[index][lang].replace("{feature}", tool["feature"][lang]), lang)
        return self._row("how_to", said, said.text, scene, reply)

    def _item_indices(self, count: int) -> list[int]:
        """No-call items split one in five to test, one in five to validation, the rest to train."""
        return [i for i in range(count) if item_split(i) == self.item_split]

    def _row(self, kind: str, said: Utterance, text: str, scene: Scene, completion: str, tool_name: str = ""):
        return {
            "prompt": [{"role": "system", "content": scene.system}, {"role": "user", "content": text}],
            "completion": [{"role": "assistant", "content": completion}],
            "kind": kind,
            "lang": said.lang,
            "family": said.family,
            "user": text,
            "tools": scene.names,
            "tool_name": tool_name,
            "arguments": json.dumps(said.arguments, ensure_ascii=False) if tool_name else "",
            "template": said.template,
            "values": json.dumps(said.shown, ensure_ascii=False),
        }

    def scene(self, tools: int, kinds: list[str]) -> list[dict]:
        """A list of `tools` tools (ToolLists.scene) and a request of each planned kind against it; the scene's calls
        go to its requested tools in turn, its procedural calls to its made-up tools in turn."""
        scene = self.lists.scene(tools, kinds, self.system_prompt)
        if any(kind in CALL_KINDS for kind in kinds) and not scene.requested:
            raise UsageError(
                f"{self.catalog.path}: a scene cannot call a tool and leave one out for a missing_tool request with "
                f"{len(self.targets)} tool(s); add tools to the catalog, or set scene_size: 1"
            )
        called, made_up = itertools.cycle(scene.requested), itertools.cycle(scene.made_up)
        rows = []
        for kind in kinds:
            if kind in CALL_KINDS:
                rows.append(self.call(scene, next(called), image=kind == "image_call"))
            elif kind == PROCEDURAL:
                rows.append(self.procedural_call(scene, next(made_up)))
            else:
                rows.append(self.no_call(kind, scene))
        return rows

    def rows(self, count: int) -> list[dict]:
        """The split's rows, scene by scene: scenes in shuffled order, each scene's rows together in shuffled order;
        `scene` names a row's scene (`<split>-s<number>`), `id` its place in the split."""
        functions = self.function_count(count)
        plans = scene_plans(count - functions, self.args, self.split, self.rng)
        scenes = [self.scene(tools, kinds) for tools, kinds in plans] + self.function_scenes(functions)
        self.rng.shuffle(scenes)
        rows: list[dict] = []
        for number, scene_rows in enumerate(scenes):
            self.rng.shuffle(scene_rows)
            for row in scene_rows:
                row["scene"], row["id"] = f"{self.split}-s{number:05d}", f"{self.split}-{len(rows):06d}"
                rows.append(row)
        return rows

    def function_count(self, count: int) -> int:
        """Rows of the split in function scenes: all of test_procedural, `function_share` of train, validation and
        test, none of test_unseen (its calls are the catalog's unseen tools)."""
        if self.split == HELD_OUT_SPLIT:
            return count
        return round(count * self.args.function_share) if self.split in ("train", "validation", "test") else 0

    def function_scenes(self, count: int) -> list[list[dict]]:
        """Scenes of `scene_size` function requests, each against 2 to 6 functions of one domain (sft_router.functions):
        calls to the shown ones, and (but in test_procedural, calls only) requests for one of the domain left out,
        answered with the missing-tool reply."""
        domains = self.functions.domains_for(self.split) if count else {}
        irrelevant = 0 if self.split == HELD_OUT_SPLIT else round(count * IRRELEVANT)
        scenes = []
        for kinds in deal(["missing_tool"] * irrelevant + ["call"] * (count - irrelevant), self.args.scene_size):
            tools, names, asked = self.function_rows.scene(kinds.count("call"), kinds.count("missing_tool"), domains)
            scene = Scene(tools, [], [], render_system_prompt(self.system_prompt, tools))
            scenes.append([self.function_row(scene, function, names.get(function["name"])) for function in asked])
        return scenes

    def function_row(self, scene: Scene, function: dict, shown_name: str | None) -> dict:
        """A call to the function under its shown name, or (not shown) the missing-tool reply; in evaluation splits a
        message that train holds, or nearly, is drawn again (a few tries)."""
        for _ in range(12):
            request = self.function_rows.request(function)
            fresh = self.split == "train" or request.text not in self._messages
            values = json.dumps(request.shown, ensure_ascii=False)
            if fresh and (self.avoid is None or not self.avoid.leak(request.text, request.template, values)):
                break
        slip = english_lint(request.text)
        if slip:
            raise UsageError(f"function '{function['name']}': message '{request.text}' reads {slip}; fix its `ask`")
        self._messages.add(request.text)
        said = Utterance(function, "en", FUNCTION_FAMILY + function["name"], request.template, request.text,
                         request.shown, request.arguments)  # fmt: skip
        if shown_name is None:
            return self._row("missing_tool", said, request.text, scene, self.catalog.replies["missing_tool"]["en"])
        return self._row("call", said, request.text, scene, render_call(shown_name, request.arguments), shown_name)


class TrainMessages:
    """Train's messages and (template, values) pairs: whether an evaluation message leaks from train (check_leaks's
    rules), asked by check_leaks and by the generator, which draws a function request again when it would."""

    def __init__(self, rows: list[dict]):
        self.users: dict[str, str] = {}
        for row in rows:
            self.users.setdefault(normalise(row["user"]), row["user"])
        self.pairs = {(row["template"], row["values"]) for row in rows}
        self.near = NearDuplicates(self.users)

    def leak(self, user: str, template: str, values: str) -> str | None:
        """How `user` (with its template and values as JSON) leaks from train, or None."""
        key = normalise(user)
        if key in self.users:
            same = "" if self.users[key] == user else f" as '{self.users[key]}' once normalised"
            return f"user message '{user}' is in train{same}"
        if (template, values) in self.pairs:
            return f"template '{template}' with values {values} is in train"
        if found := self.near.nearest(key):
            return (f"user message '{user}' nearly duplicates train's '{self.users[found[1]]}' "
                    f"(character {GRAM}-gram Jaccard {found[0]:.2f} >= {NEAR_DUPLICATE})")  # fmt: skip
        return None


def _join(words: list[str], lang: str) -> str:
    return join_words(words, lang) if words else ""


class RowValidator:
    """Checks one generated row against the written rules: a call names a tool shown in its own prompt and satisfies
    the schema shown there, no two arguments repeat one value, and a reply names no tool or feature the prompt
    does not show."""

    def __init__(self, catalog: Catalog, functions=None):
        self.catalog, self.functions = catalog, functions
        self.rendered = {name: render_tool(tool) for name, tool in catalog.tools.items()}
        self.tool_of_family = catalog.tool_of_family()
        self.noise = NoiseRules(catalog.noise, {})
        self.features = {lang: self._features(lang) for lang in LANGS}
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}

    def _features(self, lang: str) -> list[tuple[re.Pattern, set[str]]]:
        by_word: dict[str, set[str]] = {}
        for name, tool in self.catalog.tools.items():
            by_word.setdefault(tool["feature"][lang], set()).add(name)
        bound = r"\b" if lang == "en" else ""
        return [(re.compile(bound + re.escape(word) + bound, re.IGNORECASE), names) for word, names in by_word.items()]

    def check(self, row: dict) -> None:
        where = f"row {row.get('id', '?')} (family '{row['family']}', template '{row['template']}')"
        if row["kind"] not in KINDS:
            raise UsageError(f"{where}: unknown kind '{row['kind']}'; use one of {', '.join(KINDS)}")
        if row["kind"] in CALL_KINDS:
            self._check_call(row, where)
            return
        if row["tool_name"]:
            raise UsageError(f"{where}: a {row['kind']} row names tool '{row['tool_name']}'; fix the generator")
        if row["kind"] == "missing_tool" and row["family"].startswith(FUNCTION_FAMILY):
            check_irrelevance(self.functions, row, where)
        elif row["kind"] == "missing_tool" and self.tool_of_family[row["family"]] in row["tools"]:
            raise UsageError(
                f"{where}: tool '{self.tool_of_family[row['family']]}' is in the prompt of a missing_tool row; "
                "fix the generator"
            )
        self._check_reply(row, where)

    def _check_reply(self, row: dict, where: str) -> None:
        """Rule 11: a reply offers only what the prompt shows."""
        reply, shown = row["completion"][0]["content"], set(row["tools"])
        named = [name for name in self.catalog.tools if name in reply and name not in shown]
        named += [pattern.pattern for pattern, names in self.features[row["lang"]]
                  if not names & shown and pattern.search(reply)]  # fmt: skip
        if named:
            raise UsageError(
                f"{where}: reply '{reply}' names '{named[0]}', which no tool in its prompt does; "
                "condition the reply on the shown tools (rule 11)"
            )

    def _validator(self, schema: dict):
        key = json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            self._validators[key] = jsonschema.Draft202012Validator({**schema, "additionalProperties": False})
        return self._validators[key]

    def _check_call(self, row: dict, where: str) -> None:
        name = row["tool_name"]
        system = row["prompt"][0]["content"]
        tools = {entry["tool_name"]: entry for entry in tools_in_prompt(system)}
        known = name not in self.rendered or self.rendered[name] in system
        if name not in tools or name not in row["tools"] or not known:
            raise UsageError(f"{where}: target tool '{name}' is not in its prompt's tool list; fix the generator")
        arguments = json.loads(row["arguments"])
        error = next(iter(self._validator(tools[name]["arguments"]).iter_errors(arguments)), None)
        if error is not None:
            raise UsageError(
                f"{where}: arguments {row['arguments']} break the schema of '{name}' ({error.message}); "
                "fix the template or the slot pool"
            )
        values = [v for v in arguments.values() if isinstance(v, str)]  # flags and counts may well agree
        if len(set(values)) != len(values):
            raise UsageError(f"{where}: two arguments of {row['arguments']} repeat one value (rule 14); fix the pools")
        if row["completion"][0]["content"] != render_call(name, arguments):
            raise UsageError(f"{where}: completion does not match its target call to '{name}'; fix the generator")
        if name in self.catalog.tools and row["family"] in self.tool_of_family:
            self._check_values(row, self.catalog.tools[name], arguments, where)

    def _check_values(self, row: dict, tool: dict, arguments: dict, where: str) -> None:
        """Rule 1 on a catalog call: a copied value stands in the message as it is in the call, and is an entry of
        its pool, that entry said in words, or that entry with one slip (as typed); a mapped value is a pool value."""
        properties = tool["parameters"]["properties"]
        for slot, value in arguments.items():
            pool = [entry_text_value(e, slot)[1] for e in self.catalog.pool(tool, slot, row["lang"])]
            copied = properties[slot].get("type") == "string" and "enum" not in properties[slot]
            if copied and value not in row["user"]:
                raise UsageError(
                    f"{where}: argument {slot}={value!r} is not in the message as typed; fix the generator"
                )
            said = {number_words(str(v), row["lang"]) for v in pool} if copied else set()
            if (
                pool
                and value not in pool
                and value not in said
                and not (copied and any(self.noise.is_slip(value, str(v), row["lang"]) for v in pool))
            ):
                raise UsageError(
                    f"{where}: argument {slot}={value!r} is no entry of the '{self.catalog.pool_name(tool, slot)}' "
                    "pool, nor one said in words or typed with a slip; fix the generator or the pool"
                )


def check_rows(splits: dict[str, list[dict]], catalog: Catalog, functions=None) -> None:
    validator = RowValidator(catalog, functions)
    for name, rows in splits.items():
        check_scenes(name, rows)
        for row in rows:
            validator.check(row)


def check_scenes(split: str, rows: list[dict]) -> None:
    """A scene belongs to one split, its rows are adjacent and show one system prompt, byte for byte."""
    first: dict[str, dict] = {}
    for previous, row in zip([None, *rows], rows):
        scene, where = row["scene"], f"row {row['id']} (scene {row['scene']})"
        if not scene.startswith(f"{split}-s"):
            raise UsageError(f"{where}: a {split} row in a scene of another split; fix the generator")
        if scene in first and previous["scene"] != scene:
            raise UsageError(f"{where}: the scene's rows are not together; fix the generator")
        if row["prompt"][0]["content"] != first.setdefault(scene, row)["prompt"][0]["content"]:
            raise UsageError(f"{where}: its system prompt differs from its scene's; fix the generator")


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
    train = TrainMessages(splits["train"])
    found = (f"{name} {leak}" for name in splits if name != "train" for row in splits[name]
             if (leak := train.leak(row["user"], row["template"], row["values"])))  # fmt: skip
    return sorted(set(found))


def assert_no_leaks(splits: dict[str, list[dict]]) -> None:
    leaks = check_leaks(splits)
    if leaks:
        raise UsageError(
            f"{len(leaks)} leaks from train into evaluation (e.g. {leaks[0]}); "
            "reword that family's templates so no train family can produce the same or a near-identical message"
        )


RATES = ("no_call_share", "procedural_share", "correction_rate", "function_share", "function_mask_rate",
         *(f"noise_{rule}" for rule in RULES))  # fmt: skip


def _check_mix(args) -> None:
    for name in RATES:
        if not 0 <= getattr(args, name) <= 1:
            raise UsageError(f"{name} is {getattr(args, name)}; set it between 0 and 1")
    for name in (
        "num_train",
        "num_validation",
        "num_test",
        "num_test_unseen",
        "num_test_procedural",
        "max_distractors",
    ):
        if getattr(args, name) < 0:
            raise UsageError(f"{name} is {getattr(args, name)}; set it to 0 or more")
    if args.min_tools < 1:
        raise UsageError(f"min_tools is {args.min_tools}; set it to 1 or more")
    if args.scene_size < 1:
        raise UsageError(f"scene_size is {args.scene_size}; set it to 1 or more (1: a tool list per row)")


def _check_catalog_for(args, catalog: Catalog) -> None:
    if args.num_test_unseen and not catalog.unseen_tools:
        raise UsageError(f"{catalog.path}: no `unseen_tools` for the {args.num_test_unseen} test_unseen rows; "
                         "list the tools to hold out, or set num_test_unseen: 0")  # fmt: skip
    if args.procedural_share and not catalog.procedural:
        raise UsageError(f"{catalog.path}: no `procedural` section for procedural_share {args.procedural_share}; "
                         "add one, or set procedural_share: 0")  # fmt: skip
    if (args.function_share or args.num_test_procedural) and not args.functions:
        raise UsageError(f"function_share {args.function_share} and num_test_procedural {args.num_test_procedural} "
                         "need a `functions` spec; set `functions`, or set both to 0")  # fmt: skip


def build_splits(recipe, catalog: Catalog | None = None, applied: dict | None = None) -> dict[str, list[dict]]:
    """Generate every split and check every row and every split boundary; raises before anything is written.
    `applied`, if given, receives per split how often each noise rule fired."""
    args = recipe.data
    _check_mix(args)
    catalog = catalog or load_catalog(args.catalog)
    _check_catalog_for(args, catalog)
    system_prompt = load_system_prompt(args.system_prompt)
    sizes = {"train": args.num_train, "validation": args.num_validation, "test": args.num_test,
             "test_unseen": args.num_test_unseen, "test_procedural": args.num_test_procedural}  # fmt: skip
    splits: dict[str, list[dict]] = {}
    avoid = None
    functions = load_functions(args.functions) if args.functions else None
    for name in SPLITS:
        generator = Generator(catalog, system_prompt, args, name, functions)
        if name != "train" and args.functions:  # function requests are drawn so that none leaks
            generator.avoid = avoid = avoid or TrainMessages(splits["train"])
        splits[name] = generator.rows(sizes[name])
        if applied is not None:
            applied[name] = {rule: generator.applied[rule] for rule in (*RULES, "correction")}
    check_rows(splits, catalog, functions)
    assert_no_leaks(splits)
    return splits


def content_hash(splits: dict[str, list[dict]]) -> str:
    digest = hashlib.sha256()
    for name in SPLITS:
        for row in splits[name]:
            digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()


def split_mix(rows: list[dict], catalog: Catalog, train_values: set[str]) -> dict:
    """What one split holds: counts per kind, language and tool, the no-call share, rows with unseen values,
    distinct templates and messages, tool-list sizes, argument kinds, how many prompts show a confusable distractor,
    and its scenes (how many, and how many scenes have each number of rows)."""
    kinds = Counter(row["kind"] for row in rows)
    tools = Counter(row["tool_name"] for row in rows if row["tool_name"])
    calls = [row for row in rows if row["kind"] in CALL_KINDS]
    unseen = sum(any(v not in train_values for v in json.loads(row["values"]).values()) for row in rows)
    unseen_calls = sum(any(v not in train_values for v in json.loads(row["values"]).values()) for row in calls)
    sizes = Counter(len(row["tools"]) for row in rows)
    scenes = Counter(row["scene"] for row in rows)
    confusable = sum(bool(set(catalog.confusable_with(row["tool_name"])) & set(row["tools"])) for row in calls
                     if row["tool_name"] in catalog.tools)  # fmt: skip
    return {
        "kind": {kind: kinds[kind] for kind in KINDS},
        "lang": {lang: sum(row["lang"] == lang for row in rows) for lang in LANGS},
        "tool": {name: tools[name] for name in catalog.tools},
        "procedural_calls": sum(row["family"] == "procedural" for row in rows),
        "function_rows": sum(row["family"].startswith(FUNCTION_FAMILY) for row in rows),
        "no_call_share": round(sum(kinds[k] for k in NO_CALL_KINDS) / len(rows), 4) if rows else 0.0,
        "rows_with_unseen_values": unseen,
        "call_rows_with_unseen_values": unseen_calls,
        "calls_with_confusable_distractor": confusable,
        "distinct_templates": len({row["template"] for row in rows}),
        "distinct_messages": len({row["user"] for row in rows}),
        "tool_list_sizes": {str(size): sizes[size] for size in sorted(sizes)},
        "argument_types": argument_types(rows),
        "scenes": len(scenes),
        "rows_per_scene": {str(size): count for size, count in sorted(Counter(scenes.values()).items())},
        "longest_prompt_chars": max((sum(len(m["content"]) for m in row["prompt"]) for row in rows), default=0),
    }


def argument_type(value, schema: dict) -> str:
    """The kind of one argument value: its JSON type, with a string drawn from an enum counted as `enum`."""
    if isinstance(value, str):
        return "enum" if "enum" in schema else "string"
    kinds = {bool: "boolean", int: "integer", float: "number", list: "array", dict: "object"}
    return kinds.get(type(value), "string")


def argument_types(rows: list[dict]) -> dict[str, int]:
    """How many call arguments of the rows are of each kind, read against the schemas their prompts show."""
    counts: Counter = Counter()
    shown: dict[str, dict] = {}
    for row in rows:
        if not row["tool_name"]:
            continue
        system = row["prompt"][0]["content"]
        if system not in shown:
            shown[system] = {t["tool_name"]: t["arguments"].get("properties", {}) for t in tools_in_prompt(system)}
        schemas = shown[system][row["tool_name"]]
        counts.update(argument_type(v, schemas.get(k, {})) for k, v in json.loads(row["arguments"]).items())
    return {kind: counts[kind] for kind in ARGUMENT_TYPES}


def pool_sizes(catalog: Catalog) -> dict[str, dict[str, int]]:
    return {name: {lang: len(pool.get(lang) or []) for lang in LANGS} for name, pool in catalog.slots.items()}


def dataset_facts(splits: dict[str, list[dict]], catalog: Catalog, recipe, applied: dict) -> dict:
    """The manifest's account of the data; the dataset card reads its numbers from here."""
    args = recipe.data
    train_values = {v for row in splits["train"] for v in json.loads(row["values"]).values()}
    return {
        "rows": {name: len(rows) for name, rows in splits.items()},
        "mix": {name: split_mix(rows, catalog, train_values) for name, rows in splits.items()},
        "no_call_share": args.no_call_share,
        "procedural_share": args.procedural_share,
        "max_distractors": args.max_distractors,
        "scene_size": args.scene_size,
        "rates": {name: getattr(args, name) for name in RATES},
        "noise_applied": applied,
        "pool_sizes": pool_sizes(catalog),
        "unseen_tools": list(catalog.unseen_tools),
        "dataset_seed": args.dataset_seed,
        "catalog": str(catalog.path),
        "catalog_sha256": hashlib.sha256(catalog.path.read_bytes()).hexdigest(),
        "tools": len(catalog.tools),
        "domains": sorted({tool["domain"] for tool in catalog.tools.values()}),
        "function_domains": sorted(load_functions(args.functions).domains) if args.functions else [],
        "held_out_function_domains": sorted(load_functions(args.functions).held_out) if args.functions else [],
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


def write_dataset(splits: dict[str, list[dict]], out: Path, digest: str | None = None) -> None:
    from datasets import DatasetDict

    digest = digest or content_hash(splits)
    fingerprints = {name: hashlib.sha256(f"{digest}:{name}".encode()).hexdigest()[:16] for name in splits}
    DatasetDict({name: _dataset(rows, fingerprints[name]) for name, rows in splits.items()}).save_to_disk(out / "hf")
    for name, rows in splits.items():
        lines = (json.dumps(row, ensure_ascii=False, sort_keys=True) for row in rows)
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    (recipe,) = parse_recipe(argv)
    catalog = load_catalog(recipe.data.catalog)
    applied: dict = {}
    splits = build_splits(recipe, catalog, applied)
    facts = dataset_facts(splits, catalog, recipe, applied)
    with stage_output(recipe, "dataset", **facts) as (out, _):
        write_dataset(splits, out, facts["content_sha256"])
    print(f"dataset: {facts['rows']}, {facts['leaks']} leaks -> {recipe.stage_dir('dataset')}")


if __name__ == "__main__":
    main()
