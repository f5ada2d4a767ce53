"""Scenes, the unit the dataset is drawn in: one system prompt with its tool list, and the requests sent against it.

A real agent keeps one toolset for many messages, and rows that share a prompt prefix can share its computation
(in training and in evaluation). So a split's rows are planned first, kind by kind in the recipe's mix, then dealt
round-robin into scenes of about `scene_size` rows, so that every scene holds the split's mix; and each scene's tool
list is drawn before its requests, so that every request fits it: the catalog tools its calls go to (from shuffled
rounds of the split's tools, so that every tool is called in the split; most often confusable with one another; a
tool with clarify templates first when a request leaves an argument out), tools made up for its procedural calls
with their near-misses, then distractors, most often declared confusable with a called tool. A scene shows
min_tools to max_distractors + 1 tools (to five in most scenes), a catalog tool stays out when a request asks for one
that is not shown, and in test_unseen the unseen tools are shown beside seen ones.

Usage: lists = ToolLists(catalog, args, split, rng, procedural)
       scenes = [lists.scene(tools, kinds, template) for tools, kinds in scene_plans(count, args, split, rng)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sft_router.core.errors import UsageError
from sft_router.core.router_format import render_system_prompt
from sft_router.datagen.catalog import CALL_KINDS, Catalog

IMAGE_CALL_SHARE = 0.05
CONFUSABLE_SHARE = 0.8  # a scene with room for it shows a tool confusable with a called one this often
# The no-call kinds in turn; a request whose tool is not shown and one missing an argument come twice as often as
# chat, out-of-scope, image and how-to questions: they are the decisions a router gets wrong.
NO_CALL_MIX = ("missing_tool", "clarify", "chat", "out_of_scope", "missing_tool", "clarify", "image", "how_to")
PROCEDURAL = "procedural"  # a planned call to a tool made up for its scene (train only)
TYPICAL_MOST, LONG_LISTS = 5, 0.25  # a scene shows up to five tools, a quarter of them more where the recipe allows
CATALOG_ONLY = {"image_call", "clarify"}  # requests only a catalog tool can serve (a made-up tool has no clarify)


@dataclass
class Scene:
    tools: list[dict]  # as the prompt lists them
    requested: list[dict]  # the catalog tools its calls go to (a tool with clarify templates first, if asked for)
    made_up: list[dict]  # the procedural tools its procedural calls go to
    system: str  # the system prompt every row of the scene shows, byte for byte

    @property
    def names(self) -> list[str]:
        return [tool["name"] for tool in self.tools]


def plan_kinds(count: int, args, split: str, rng) -> list[str]:
    """The kinds of a split's rows in the recipe's mix: replies at `no_call_share` (NO_CALL_MIX in turn, shuffled),
    image calls, procedural calls in train, catalog calls for the rest; test_unseen holds calls only."""
    if split == "test_unseen":  # whether the router reads a tool it never trained on
        return ["call"] * count
    no_calls = round(count * args.no_call_share)
    image_calls = min(count - no_calls, round(count * IMAGE_CALL_SHARE))
    made_up = min(round(count * args.procedural_share) if split == "train" else 0, count - no_calls - image_calls)
    replies = [NO_CALL_MIX[i % len(NO_CALL_MIX)] for i in range(no_calls)]
    rng.shuffle(replies)
    calls = count - no_calls - image_calls - made_up
    return ["call"] * calls + ["image_call"] * image_calls + [PROCEDURAL] * made_up + replies


def spread(kinds: list[str], quotas: list[int]) -> list[list[str]]:
    """`kinds` spread over scenes of the given quotas, each scene taking evenly spaced ones, so that a run of one kind
    is shared out in proportion (equal quotas deal them round-robin); fewer kinds than places fill the first."""
    places = sorted(((index + 0.5) / quota, scene) for scene, quota in enumerate(quotas) for index in range(quota))
    scenes: list[list[str]] = [[] for _ in quotas]
    for kind, (_, scene) in zip(kinds, places):
        scenes[scene].append(kind)
    return scenes


def deal(kinds: list[str], size: int) -> list[list[str]]:
    """`kinds` spread over scenes of `size` rows or one fewer."""
    count = math.ceil(len(kinds) / size)
    return spread(kinds, [len(range(scene, len(kinds), count)) for scene in range(count)])


def tool_count(least: int, most: int, rng) -> int:
    """How many tools a scene shows: `least` to five in most scenes, as agents mostly carry a handful; up to `most`
    in LONG_LISTS of them."""
    least = min(least, most)
    handful = min(most, max(least, TYPICAL_MOST))
    if most > handful and rng.random() < LONG_LISTS:
        return rng.randint(handful + 1, most)
    return rng.randint(least, handful)


def scene_plans(count: int, args, split: str, rng) -> list[tuple[int, list[str]]]:
    """(tool count, planned kinds) of each scene of a split: about `scene_size` rows each, tool_count tools, image calls and replies spread so that every scene holds their share, calls in the places left. The
    procedural calls take all the call places of the first scenes, so that the others show catalog tools side by side
    as the evaluation splits do; a one-tool scene with an image call or a clarify request comes last (it would need
    a catalog tool beside the made-up one), and with one tool a prompt procedural calls get scenes of their own."""
    kinds = plan_kinds(count, args, split, rng)
    most = args.max_distractors + 1
    if most == 1:
        made_up, rest = [k for k in kinds if k == PROCEDURAL], [k for k in kinds if k != PROCEDURAL]
        return [(1, scene) for scene in deal(made_up, args.scene_size) + deal(rest, args.scene_size)]
    sizes = [len(scene) for scene in deal(kinds, args.scene_size)]
    tools = [tool_count(args.min_tools, most, rng) for _ in sizes]
    scenes = spread([kind for kind in kinds if kind not in ("call", PROCEDURAL)], sizes)
    made_up = kinds.count(PROCEDURAL)
    hosts = sorted(range(len(sizes)), key=lambda scene: tools[scene] == 1 and bool(CATALOG_ONLY & set(scenes[scene])))
    for scene in hosts:
        calls = sizes[scene] - len(scenes[scene])
        scenes[scene] += [PROCEDURAL] * min(made_up, calls) + ["call"] * max(0, calls - made_up)
        made_up -= min(made_up, calls)
    return list(zip(tools, scenes))


class ToolLists:
    """Each scene's tool list for one split, drawn from the split's random stream."""

    def __init__(self, catalog: Catalog, args, split: str, rng, procedural=None):
        self.catalog, self.args, self.split, self.rng, self.procedural = catalog, args, split, rng, procedural
        unseen = set(catalog.unseen_tools)
        self.pool = [tool for name, tool in catalog.tools.items() if name not in unseen]  # what distractors are
        self.targets = [catalog.tools[name] for name in catalog.unseen_tools] if split == "test_unseen" else self.pool
        self._round: list[dict] = []

    def scene(self, room: int, kinds: list[str], template: str) -> Scene:
        """A list of `room` tools for requests of `kinds` (see the module docstring), rendered once into the system
        prompt; widened to two tools when a made-up tool must sit beside a catalog one."""
        needs = any(kind in CALL_KINDS or kind == "clarify" for kind in kinds) + (PROCEDURAL in kinds)
        room = max(room, min(needs, self.args.max_distractors + 1))
        requested = self._requested(kinds, room - (PROCEDURAL in kinds))
        made_up = self._made_up(kinds.count(PROCEDURAL), room - len(requested))
        siblings = self._siblings(made_up, room - len(requested) - len(made_up))
        room -= len(requested) + len(made_up) + len(siblings)
        tools = requested + made_up + siblings + self._distractors(requested, room, "missing_tool" in kinds)
        self.rng.shuffle(tools)
        return Scene(tools, requested, made_up, render_system_prompt(template, tools))

    def _requested(self, kinds: list[str], room: int) -> list[dict]:
        """Distinct catalog tools for the scene's calls, as many as it has calls while there is room; in test_unseen
        half the places (but one of one) stay for seen tools beside them, and a target stays out when a request asks
        for a tool not shown."""
        calls = sum(kind in CALL_KINDS for kind in kinds)
        if self.split == "test_unseen":
            room = room // 2 or 1
        room = min(room, len(self.targets) - ("missing_tool" in kinds))
        requested = [self._clarify_tool()] if "clarify" in kinds and room > 0 else []
        while len(requested) < min(calls, room) and (tool := self._next_near(requested)) is not None:
            requested.append(tool)
        return requested

    def _clarify_tool(self) -> dict:
        tool = self._take(lambda t: bool(t.get("clarify")))
        if tool is None:
            raise UsageError(f"{self.catalog.path}: no tool has `clarify` templates for the clarify rows; add some")
        return tool

    def _next_near(self, requested: list[dict]) -> dict | None:
        """The next tool of the rounds; most often one confusable with a tool already requested instead, from the
        rounds when one is due there, else drawn beside them (the rounds stay whole, so every tool is still called)."""
        names = {tool["name"] for tool in requested}
        if requested and self.rng.random() < CONFUSABLE_SHARE:
            near = {other for tool in requested for other in self.catalog.confusable_with(tool["name"])} - names
            tool = self._take(lambda t: t["name"] in near, refill=False)
            extra = [t for t in self.targets if t["name"] in near]
            if tool is not None or extra:
                return tool or self.rng.choice(extra)
        return self._take(lambda t: t["name"] not in names)

    def _take(self, wanted, refill: bool = True) -> dict | None:
        """The latest-queued target of the shuffled rounds that `wanted` accepts; those it passes over stay queued for
        later scenes, so every target is still drawn once a round. A new round goes behind them when none is wanted."""
        for _ in range(2):
            for index in range(len(self._round) - 1, -1, -1):
                if wanted(self._round[index]):
                    return self._round.pop(index)
            if not refill or not any(wanted(tool) for tool in self.targets):
                return None
            fresh = list(self.targets)
            self.rng.shuffle(fresh)
            self._round[:0] = fresh
        return None

    def _made_up(self, calls: int, room: int) -> list[dict]:
        """Tools made up for the scene's procedural calls: one a call while there is room, each name once."""
        tools: list[dict] = []
        for _ in range(min(calls, room)):
            tool = self.procedural.tool(self.rng)
            if tool["name"] not in {t["name"] for t in tools}:
                tools.append(tool)
        return tools

    def _siblings(self, made_up: list[dict], room: int) -> list[dict]:
        """Near-misses of the first made-up tool (the same object, other actions), up to two where there is room."""
        if not made_up:
            return []
        names = {tool["name"] for tool in made_up}
        siblings = self.procedural.siblings(self.rng, made_up[0], self.rng.randint(0, min(2, room)))
        return [tool for tool in siblings if tool["name"] not in names]

    def _distractors(self, requested: list[dict], count: int, leave_out: bool) -> list[dict]:
        """Seen tools shown beside the requested ones: a share of near-misses of them, the rest at random."""
        names = {tool["name"] for tool in requested}
        others = [tool for tool in self.pool if tool["name"] not in names]
        count = max(0, min(count, len(others) - leave_out))
        near = self.near(requested, others)
        picked = self.rng.sample(near, min(len(near), self.rng.randint(1 if count else 0, count)))
        taken = names | {tool["name"] for tool in picked}
        return picked + self.rng.sample([t for t in others if t["name"] not in taken], count - len(picked))

    def near(self, anchors: list[dict], others: list[dict]) -> list[dict]:
        """Of `others`, the tools declared confusable with an anchor (reminder vs alarm vs timer; note vs to-do) most
        often, else those of an anchor's domain."""
        confusable = {other for tool in anchors for other in self.catalog.confusable_with(tool["name"])}
        near = [tool for tool in others if tool["name"] in confusable]
        if not near or self.rng.random() >= CONFUSABLE_SHARE:
            domains = {tool["domain"] for tool in anchors}
            near = [tool for tool in others if tool["domain"] in domains]
        return near
