"""The row generator: scenes of requests against one tool list, each request written from a catalog template (or a
procedural tool, or a BFCL-style function) with values drawn split-aware (held-out entries only in evaluation), seeded
noise and corrections, and its exact target: one JSON call, or a reply by the catalog's labelling rules.

Usage: rows = Generator(catalog, system_prompt, recipe.data, "train", functions).rows(count)   (sft_router.data)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field

from sft_router.core.errors import UsageError
from sft_router.core.router_format import (
    render_call,
    render_system_prompt,
)
from sft_router.datagen.catalog import (
    CALL_KINDS,
    LANG_DRAW,
    SLOT,
    Catalog,
    entry_text_value,
    item_split,
    missing_required,
)
from sft_router.datagen.checks import TrainMessages
from sft_router.datagen.english_lint import english_lint
from sft_router.datagen.functions import FAMILY as FUNCTION_FAMILY
from sft_router.datagen.functions import HELD_OUT_SPLIT, FunctionRows
from sft_router.datagen.functions import IRRELEVANT_SHARE as IRRELEVANT
from sft_router.datagen.noise import END_PUNCTUATION, RULES, NoiseRules, number_words
from sft_router.datagen.procedural import ProceduralTools, join_words
from sft_router.datagen.scenes import PROCEDURAL, Scene, ToolLists, deal, scene_plans

KEEP_IN_TRAIN = 6  # a pool's first entries are its most common values: always in train
HELD_OUT_OF = (1, 2)  # of the other entries, one in two never appears in train
EVAL_UNSEEN_DRAW = 0.6  # an evaluation row draws a slot's value from the held-out entries this often
HOW_TO_SHOWN = 0.6  # a how-to question asks about a shown tool's feature this often, else about one not shown
CORRECTION = {
    "zh": ["，不对，", "，不是，是", "，说错了，", "，哦不，"],
    "en": [", no wait, ", ", sorry, I mean ", ", no, ", " - actually "],
}
NOISE_REQUEST = ("typo", "mixed", "curt", "polite", "filler", "context", "informal", "lowercase")
NOISE_TALK = ("typo", "polite", "informal", "lowercase")


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
            name: [
                f
                for i, f in enumerate(tool["families"])
                if every_family or family_split(i, len(tool["families"])) == split
            ]
            for name, tool in catalog.tools.items()
        }
        self.item_split = "test" if split == "test_unseen" else split
        self.noise = NoiseRules(catalog.noise, {rule: getattr(args, f"noise_{rule}") for rule in RULES})
        self.applied: Counter = Counter()
        self._queues: dict[str, list] = {}
        self._messages: set[str] = set()
        self._held: dict[tuple[str, str], list[bool]] = {}
        self.functions = functions  # the `functions` spec (load_functions), read once for all splits
        self.function_rows = self.functions and FunctionRows(
            self.functions, self.rng, args.function_mask_rate, args.max_distractors + 1
        )
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
        correctable = [
            slot
            for slot in slots
            if (self.catalog.slots.get(self.catalog.pool_name(tool, slot)) or {}).get("correctable")
        ]
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
        """Scenes of `scene_size` function requests, each against 2 to 6 functions of one domain (sft_router.datagen.functions):
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
        said = Utterance(
            function,
            "en",
            FUNCTION_FAMILY + function["name"],
            request.template,
            request.text,
            request.shown,
            request.arguments,
        )
        if shown_name is None:
            return self._row("missing_tool", said, request.text, scene, self.catalog.replies["missing_tool"]["en"])
        return self._row("call", said, request.text, scene, render_call(shown_name, request.arguments), shown_name)


def _join(words: list[str], lang: str) -> str:
    return join_words(words, lang) if words else ""
