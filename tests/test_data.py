"""The dataset build: a catalog that teaches routing, splits that cannot leak, every row checked, same seed same bytes."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY, copy_recipe

from sft_router import data
from sft_router.core.config import parse_recipe
from sft_router.core.errors import UsageError
from sft_router.core.router_format import render_call, tools_in_prompt
from sft_router.datagen import checks as data_checks
from sft_router.datagen import generator, scenes
from sft_router.datagen.catalog import SLOT, entry_text_value, item_split, missing_required
from sft_router.datagen.noise import NoiseRules, number_words

CATALOG = ROOT / "recipes/gemma-3-270m-it/catalog.yaml"
SMALL = ["--num_train", "200", "--num_validation", "60", "--num_test", "60"]

PUBLISHED = yaml.safe_load(CATALOG.read_text())

# A two-tool catalog small enough to break on purpose in each test.
MINI_CATALOG = {
    "image_marker": "<start_of_image>",
    "tools": [
        {
            "name": "set_timer",
            "domain": "alarms",
            "description": "Start a countdown timer in minutes.",
            "feature": {"zh": "计时器", "en": "timers"},
            "how": {"zh": "告诉我计时多久。", "en": "Tell me how long."},
            "parameters": {
                "type": "object",
                "properties": {"duration_minutes": {"type": "integer", "minimum": 1}, "label": {"type": "string"}},
                "required": ["duration_minutes"],
            },
            "pools": {"duration_minutes": "duration"},
            "ask": {"duration_minutes": {"zh": "计时多久？", "en": "How long?"}},
            "clarify": {
                "zh": ["开个计时器", "计个时", "来个倒计时", "定个计时器", "{label}计时"],
                "en": ["Start a timer", "Set a timer", "A countdown please", "Timer on", "Time the {label}"],
            },
            "families": [
                {"id": "t1", "zh": ["计时{duration_minutes}"], "en": ["Timer for {duration_minutes}"]},
                {"id": "t2", "zh": ["{label}倒计时{duration_minutes}"], "en": ["Count down {duration_minutes}"]},
                {"id": "t3", "zh": ["定时{duration_minutes}"], "en": ["A {duration_minutes} timer"]},
            ],
        },
        {
            "name": "get_calendar_events",
            "domain": "calendar",
            "description": "Query the schedule for a date.",
            "feature": {"zh": "日程", "en": "the calendar"},
            "how": {"zh": "告诉我日期。", "en": "Tell me the date."},
            "parameters": {"type": "object", "properties": {"date": {"type": "string"}}},
            "families": [
                {"id": "c1", "zh": ["{date}有会吗"], "en": ["Any meetings {date}?"]},
                {"id": "c2", "zh": ["查查{date}的安排"], "en": ["Check my schedule for {date}"]},
                {"id": "c3", "zh": ["{date}忙不忙"], "en": ["Am I free {date}?"]},
            ],
        },
    ],
    "slots": {
        "duration": {
            "zh": [{"text": "十分钟", "value": 10}, {"text": "半小时", "value": 30}],
            "en": [{"text": "ten minutes", "value": 10}, {"text": "half an hour", "value": 30}],
        },
        "label": {"zh": ["泡茶", "煮面"], "en": ["tea", "pasta"]},
        "date": {
            "zh": ["今天", "明天", "周五", "下周一", "月底"],
            "en": ["today", "tomorrow", "Friday", "next Monday"],
        },
    },  # fmt: skip
    "no_call": {
        kind: [{k: v for k, v in item.items() if not k.startswith("offer")} for item in items]
        for kind, items in PUBLISHED["no_call"].items()
    },  # no offers of tools this catalog lacks
    **{key: PUBLISHED[key] for key in ("replies", "noise", "procedural")},
}


def mini_recipe(workspace: Path, catalog: dict, *flags: str):
    path = workspace / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog, allow_unicode=True))
    recipe = copy_recipe(TINY, workspace / "tiny/mini.yaml", {"recipes/gemma-3-270m-it/catalog.yaml": str(path)})
    return parse_recipe(["--config", str(recipe), "--num_test_unseen", "0", *flags])[0]


def mutated(change) -> dict:
    catalog = json.loads(json.dumps(MINI_CATALOG))
    change(catalog)
    return catalog


def build_files(workspace: Path, *flags: str) -> dict[str, bytes]:
    data.main(["--config", TINY, *SMALL, *flags])
    folder = workspace / "runs/tiny/dataset"
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_published_catalog_covers_24_tools_8_domains_10_families_chinese_first():
    catalog = data.load_catalog(CATALOG)
    assert len(catalog.tools) >= 24 and len({t["domain"] for t in catalog.tools.values()}) >= 8
    for tool in catalog.tools.values():
        assert len(tool["families"]) >= 10, tool["name"]  # 2 test, 1 validation, 7 or more train
        assert all(list(family)[1:3] == ["zh", "en"] for family in tool["families"]), tool["name"]
    domains = Counter(tool["domain"] for tool in catalog.tools.values())
    assert min(domains.values()) >= 3  # every domain has near-misses to show beside its tools
    assert {"get_calendar_events", "create_calendar_event", "delete_calendar_event"} <= set(catalog.tools)


def test_two_builds_with_one_seed_are_byte_identical(workspace):
    first = build_files(workspace)
    second = build_files(workspace)
    manifests = json.loads(first.pop("manifest.json")), json.loads(second.pop("manifest.json"))  # wall time differs
    assert {"hf/dataset_dict.json", "hf/test/state.json", "test.jsonl"} <= set(first)
    assert first == second
    assert manifests[0]["content_sha256"] == manifests[1]["content_sha256"]


def test_a_different_seed_gives_different_rows(workspace):
    (recipe,) = parse_recipe(["--config", TINY, *SMALL])
    (other,) = parse_recipe(["--config", TINY, *SMALL, "--dataset_seed", "99"])
    rows, other_rows = data.build_splits(recipe), data.build_splits(other)
    assert data.content_hash(rows) != data.content_hash(other_rows)
    assert [r["user"] for r in rows["train"]] != [r["user"] for r in other_rows["train"]]


def test_every_tool_appears_in_every_split_and_the_manifest_counts_them(workspace):
    build_files(workspace)
    manifest = json.loads((workspace / "runs/tiny/dataset/manifest.json").read_text())
    catalog = data.load_catalog(CATALOG)
    unseen = set(catalog.unseen_tools)
    for split in data.SPLITS:
        rows = read_jsonl(workspace / f"runs/tiny/dataset/{split}.jsonl")
        called = {row["tool_name"] for row in rows if row["tool_name"] in catalog.tools}
        expected = {"test_unseen": unseen, "test_procedural": set()}.get(split, set(catalog.tools) - unseen)
        assert called == expected, split  # test_procedural calls functions of held-out domains only
        counts = Counter(r["tool_name"] for r in rows if r["tool_name"] in catalog.tools)
        assert manifest["mix"][split]["tool"] == {name: counts[name] for name in catalog.tools}
        assert manifest["mix"][split]["kind"] == {k: sum(r["kind"] == k for r in rows) for k in data.KINDS}
        assert manifest["mix"][split]["distinct_messages"] == len({r["user"] for r in rows})
    assert manifest["leaks"] == 0 and manifest["mix"]["train"]["rows_with_unseen_values"] == 0
    assert manifest["mix"]["test"]["rows_with_unseen_values"] > 0  # held-out values reach evaluation
    assert manifest["unseen_tools"] == catalog.unseen_tools and manifest["pool_sizes"]["person"]["zh"] >= 60


def scenes_of(rows: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for row in rows:
        found.setdefault(row["scene"], []).append(row)
    return found


def test_rows_come_in_scenes_that_share_one_prompt_and_mix_kinds(workspace):
    build_files(workspace)
    manifest = json.loads((workspace / "runs/tiny/dataset/manifest.json").read_text())
    splits = {split: read_jsonl(workspace / f"runs/tiny/dataset/{split}.jsonl") for split in data.SPLITS}
    seen: set[str] = set()
    for split, rows in splits.items():
        found = scenes_of(rows)
        assert not seen & set(found) and all(
            scene.startswith(f"{split}-s") for scene in found
        )  # no scene spans splits
        seen |= set(found)
        order = [row["scene"] for row in rows]
        assert order == sorted(order, key=list(found).index)  # a scene's rows are adjacent
        for scene in found.values():
            assert len({row["prompt"][0]["content"] for row in scene}) == 1 and scene[0]["tools"]
            assert all(row["tools"] == scene[0]["tools"] for row in scene)
        assert {len(scene) for scene in found.values()} <= {4, 3}  # the tiny recipe's scene_size, or one fewer
        assert manifest["mix"][split]["scenes"] == len(found)
        assert sum(manifest["mix"][split]["rows_per_scene"].values()) == len(found)
        if split not in ("test_unseen", "test_procedural"):  # calls only
            mixed = [s for s in found.values() if {r["kind"] in data.CALL_KINDS for r in s} == {True, False}]
            assert len(mixed) >= len(found) / 2, split  # calls and replies under one tool list
            assert any(len({r["tool_name"] for r in s if r["tool_name"]}) > 1 for s in found.values()), split
    assert manifest["scene_size"] == 4


def test_scene_size_one_gives_a_tool_list_per_row_in_the_same_mix(workspace):
    (one,) = parse_recipe(["--config", TINY, *SMALL, "--scene_size", "1"])
    (eight,) = parse_recipe(["--config", TINY, *SMALL, "--scene_size", "8"])
    rows, scened = data.build_splits(one), data.build_splits(eight)
    for split in data.SPLITS:
        assert len(scenes_of(rows[split])) == len(rows[split])
        assert {len(s) for s in scenes_of(scened[split]).values()} <= {8, 7}, split
        kinds = [Counter(row["kind"] for row in splits[split]) for splits in (rows, scened)]
        assert kinds[0] == kinds[1], split
    sizes = Counter(len(row["tools"]) for row in rows["test"])
    assert set(sizes) == {2, 3}  # min_tools to max_distractors + 1 tools, one list a row


def test_a_scene_whose_rows_differ_or_part_fails_the_check(workspace):
    (recipe,) = parse_recipe(["--config", TINY, *SMALL])
    splits = data.build_splits(recipe)
    first, second = splits["test"][0], splits["test"][1]
    assert first["scene"] == second["scene"]
    other = {**second, "prompt": [{"role": "system", "content": "other"}, second["prompt"][1]]}
    with pytest.raises(UsageError, match=f"row {second['id']} .* system prompt differs from its scene's"):
        data_checks.check_scenes("test", [first, other])
    with pytest.raises(UsageError, match="the scene's rows are not together"):
        data_checks.check_scenes("test", [first, splits["test"][-1], second])
    with pytest.raises(UsageError, match="a validation row in a scene of another split"):
        data_checks.check_scenes("validation", [first])


def test_no_call_share_comes_from_the_recipe(workspace):
    (recipe,) = parse_recipe(["--config", TINY, *SMALL, "--no_call_share", "0.5"])
    rows = data.build_splits(recipe)["train"]
    kinds = Counter(row["kind"] for row in rows)
    assert sum(kinds[k] for k in data.NO_CALL_KINDS) == 100
    assert kinds["missing_tool"] == kinds["clarify"] == 25  # the decisions a router gets wrong, twice as often
    assert {kinds[k] for k in ("chat", "out_of_scope", "image", "how_to")} == {12, 13}


def test_prompts_show_the_target_among_at_most_max_distractors_others(workspace):
    (recipe,) = parse_recipe(["--config", TINY, *SMALL, "--max_distractors", "0"])
    rows = data.build_splits(recipe)["train"]
    assert all(len(row["tools"]) == 1 for row in rows)  # one tool a scene: every call, procedural ones too, shows
    assert all(row["tools"] == [row["tool_name"]] for row in rows if row["tool_name"])  # its own tool
    assert sum(row["family"] == "procedural" for row in rows) == 40
    (recipe,) = parse_recipe(["--config", TINY, *SMALL, "--max_distractors", "4"])
    rows = data.build_splits(recipe)["train"]
    assert max(len(row["tools"]) for row in rows) == 5 and all(row["tools"] for row in rows)
    catalog = data.load_catalog(CATALOG)
    calls = [r for r in rows if r["tool_name"] in catalog.tools]
    confusable = [r for r in calls if set(catalog.confusable_with(r["tool_name"])) & set(r["tools"])]
    assert len(confusable) > len(calls) // 2  # reminder vs alarm vs timer, note vs to-do: side by side


def test_values_are_copied_as_written_and_unstated_arguments_omitted(workspace):
    (recipe,) = parse_recipe(["--config", TINY, *SMALL])
    catalog = data.load_catalog(CATALOG)
    rows = [r for rows in data.build_splits(recipe).values() for r in rows if r["tool_name"] in catalog.tools]
    for row in rows:
        shown, arguments = json.loads(row["values"]), json.loads(row["arguments"])
        assert set(arguments) == set(shown) == set(SLOT.findall(row["template"])), row["id"]
        properties = catalog.tools[row["tool_name"]]["parameters"]["properties"]
        for slot, text in shown.items():
            assert text in row["user"]
            if "enum" in properties[slot] or properties[slot]["type"] == "integer":
                continue
            assert arguments[slot] in text, (row["id"], slot)  # the whole phrase, or it without at/on (rule 2)


def test_image_marker_starts_the_user_message_of_image_rows_only(workspace):
    (recipe,) = parse_recipe(["--config", TINY, *SMALL])
    for row in (r for rows in data.build_splits(recipe).values() for r in rows):
        has_image = row["kind"] in ("image", "image_call")
        assert row["user"].startswith("<start_of_image>") == has_image
        assert row["user"].count("<start_of_image>") == int(has_image)


def test_planted_leak_is_found_and_fails(workspace):
    (recipe,) = parse_recipe(["--config", TINY, *SMALL])
    splits = data.build_splits(recipe)
    assert data.check_leaks(splits) == []
    pairs = Counter((row["template"], row["values"]) for row in splits["test"])
    planted = next(
        row for row in splits["test"] if row["kind"] == "call" and pairs[row["template"], row["values"]] == 1
    )
    splits["train"].append(dict(planted))
    assert data.check_leaks(splits) == [f"test user message '{planted['user']}' is in train"]
    splits["train"][-1] = {**planted, "user": "<start_of_image>" + planted["user"]}  # same (template, values)
    assert data.check_leaks(splits)[0].startswith(f"test template '{planted['template']}'")
    with pytest.raises(UsageError, match="1 leaks from train into evaluation"):
        data.assert_no_leaks(splits)


def test_leak_through_a_template_without_slots_fails_the_build(workspace):
    # the test family says "周五有会吗" verbatim, which a train family also produces from "{date}有会吗"
    recipe = mini_recipe(workspace, mutated(lambda c: c["tools"][1]["families"][2].update(zh=["周五有会吗"])),
                         "--num_train", "400", "--num_test", "200")  # fmt: skip
    with pytest.raises(
        UsageError, match="leaks from train into evaluation .*test user message '.*周五有会吗' is in train"
    ):
        data.build_splits(recipe)


def test_target_breaking_its_schema_fails_the_build_naming_it(workspace, monkeypatch):
    original = data.Generator.utterance

    def with_stray_argument(self, tool, **kwargs):
        said = original(self, tool, **kwargs)
        return generator.Utterance(**{**said.__dict__, "arguments": {**said.arguments, "colour": "red"}})

    monkeypatch.setattr(data.Generator, "utterance", with_stray_argument)
    with pytest.raises(SystemExit):
        data.main(["--config", TINY, *SMALL])
    (recipe,) = parse_recipe(["--config", TINY, *SMALL])
    with pytest.raises(UsageError, match=r"break the schema of '\w+' \(Additional properties .*'colour'"):
        data.build_splits(recipe)
    assert not (workspace / "runs").exists()  # checked before anything was written


def test_tool_missing_from_its_prompt_fails_the_build_naming_it(workspace, monkeypatch):
    original = scenes.render_system_prompt
    monkeypatch.setattr(scenes, "render_system_prompt", lambda template, tools: original(
        template, [tool for tool in tools if tool["name"] != "set_timer"]))  # fmt: skip
    (recipe,) = parse_recipe(["--config", TINY, *SMALL])
    with pytest.raises(UsageError, match="target tool 'set_timer' is not in its prompt's tool list"):
        data.build_splits(recipe)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["slots"]["duration"]["zh"].append("十分钟"), "template '计时{duration_minutes}', pool 'duration': "
         "value '十分钟' breaks the argument's schema"),
        (lambda c: c["slots"]["label"]["zh"].append({"text": "茶", "value": "tea"}), "maps text to a different value"),
        (lambda c: c["tools"][1]["families"][0].update(zh=["{day}有会吗"]), "template '{day}有会吗': slot day is not"),
        (lambda c: c["tools"][0]["families"][0].update(en=["Start a timer"]), "template 'Start a timer': required "
         "argument duration_minutes is never stated"),
        (lambda c: c["slots"].pop("label"), "slot label has no zh value pool 'label'"),
        (lambda c: c["tools"][1]["families"].pop(), "tool 'get_calendar_events': 2 paraphrase families"),
        (lambda c: c["tools"][1]["families"][1].update(zh=["{date}有会吗"]), "template '{date}有会吗' is in tool "
         "'get_calendar_events' family 'c1' and tool 'get_calendar_events' family 'c2'"),
        (lambda c: c["tools"][0]["parameters"].update(type="objekt"), "`parameters` is not a valid JSON schema"),
        (lambda c: c["tools"][0].update(image={"zh": ["把这个计时{duration_minutes}"] * 5, "en": ["Time this"] * 5}),
         "image template 'Time this': required argument duration_minutes is never stated"),
        (lambda c: c["tools"][0].update(image={"zh": ["这个计时{duration_minutes}"], "en": ["Time this"]}),
         "`image.zh` has 1 templates; add at least 5"),
    ],
)  # fmt: skip
def test_broken_catalog_fails_naming_file_tool_and_template(workspace, change, message):
    recipe = mini_recipe(workspace, mutated(change))
    with pytest.raises(UsageError) as error:
        data.build_splits(recipe)
    assert message in str(error.value) and str(workspace / "catalog.yaml") in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_unquoted_clock_time_in_a_pool_is_caught(workspace):
    # YAML 1.1 reads 9:30 as the integer 570: the entry check catches it before a call says 570
    catalog = mutated(lambda c: None)
    text = yaml.safe_dump(catalog, allow_unicode=True).replace("- 月底", "- 9:30")
    (workspace / "catalog.yaml").write_text(text)
    with pytest.raises(UsageError, match="value 570 breaks the argument's schema"):
        data.load_catalog(workspace / "catalog.yaml")


def test_card_counts_match_the_data(workspace):
    from sft_router.release.card_rendering import render_dataset_card

    build_files(workspace)
    (recipe,) = parse_recipe(["--config", TINY])
    card = str(render_dataset_card(recipe))
    for split in data.SPLITS:
        rows = read_jsonl(workspace / f"runs/tiny/dataset/{split}.jsonl")
        kinds = Counter(row["kind"] for row in rows)
        share = sum(kinds[k] for k in data.NO_CALL_KINDS) / len(rows)
        cells = " | ".join(str(kinds[k]) for k in data.KINDS)
        assert f"| {split} | {len(rows)} | {cells} | {share:.2f} |" in card
        langs = Counter(row["lang"] for row in rows)
        assert f"| {split} | {langs['zh']} | {langs['en']} |" in card
        sizes = Counter(Counter(row["scene"] for row in rows).values())
        per_scene = ", ".join(f"{size} ({sizes[size]})" for size in sorted(sizes))
        assert f"| {split} | {len(rows)} | {sum(sizes.values())} | {per_scene} |" in card
    timers = [sum(r["tool_name"] == "set_timer" for r in read_jsonl(workspace / f"runs/tiny/dataset/{split}.jsonl"))
              for split in data.SPLITS]  # fmt: skip
    line = next(line for line in card.splitlines() if line.startswith("| `set_timer` | alarms | duration_minutes |"))
    assert line.endswith(" | " + " | ".join(map(str, timers)) + " |")
    assert "license: apache-2.0" in card and "make data RECIPE=recipes/tiny/router.yaml" in card
    assert "`<start_of_image>` at the very start of the user message" in card
    assert "`scene_size` 4" in card and "| `scene` | string |" in card


PUBLISHED_SMALL = ["--num_train", "1500", "--num_validation", "100", "--num_test", "600", "--num_test_unseen", "100"]


@pytest.fixture(scope="module")
def published_rows():
    """The published recipe's data at a quarter of its size: the same catalog, rules, rates and tool lists."""
    (recipe,) = parse_recipe(["--config", "recipes/gemma-3-270m-it/router.yaml", *PUBLISHED_SMALL])
    return data.build_splits(recipe)


def test_published_data_is_varied_hard_and_holds_unseen_tools_out(published_rows):
    catalog = data.load_catalog(CATALOG)
    for tool in catalog.tools.values():  # every free-text slot draws from 60 or more values per language
        for slot, schema in tool["parameters"]["properties"].items():
            if schema["type"] == "string" and "enum" not in schema:
                assert all(len(catalog.pool(tool, slot, lang)) >= 60 for lang in data.LANGS), (tool["name"], slot)
    items = {
        lang: {i[lang] for kind in ("chat", "out_of_scope") for i in catalog.no_call[kind]} for lang in data.LANGS
    }
    assert min(len(texts) for texts in items.values()) >= 40
    train_values = {v for row in published_rows["train"] for v in json.loads(row["values"]).values()}
    test = published_rows["test"]
    calls = [row for row in test if row["tool_name"]]
    assert len({row["user"] for row in test}) >= 0.9 * len(test)
    assert sum(any(v not in train_values for v in json.loads(r["values"]).values()) for r in calls) >= 0.3 * len(calls)
    near = [r for r in calls if set(catalog.confusable_with(r["tool_name"])) & set(r["tools"])]
    assert len(near) >= len(calls) / 2
    assert {len(row["tools"]) for row in test} == set(range(2, 13))  # min_tools to max_distractors + 1
    train_users = {row["user"] for row in published_rows["train"]}
    test_only = [r for r in test if r["kind"] in ("chat", "out_of_scope") and r["family"] not in
                 {t["family"] for t in published_rows["train"]}]  # fmt: skip
    assert test_only and not any(r["user"] in train_users for r in test_only)
    unseen = set(catalog.unseen_tools)
    assert len(unseen) >= 4
    for split in ("train", "validation", "test"):
        assert not any(unseen & set(row["tools"]) for row in published_rows[split]), split
    assert {row["tool_name"] for row in published_rows["test_unseen"]} == unseen
    assert all(set(row["tools"]) - unseen for row in published_rows["test_unseen"] if len(row["tools"]) > 1)
    made_up = [row for row in published_rows["train"] if row["family"] == "procedural"]
    functions = sum(row["family"].startswith("function:") for row in published_rows["train"])
    assert len(made_up) == round(0.2 * (1500 - functions)) and not set(row["tool_name"] for row in made_up) & set(
        catalog.tools
    )


def test_generated_tools_are_called_with_typed_values_their_prompt_shows(published_rows):
    types = Counter()
    for row in (r for r in published_rows["train"] if r["family"] == "procedural"):
        shown = {tool["tool_name"]: tool for tool in tools_in_prompt(row["prompt"][0]["content"])}
        schema = shown[row["tool_name"]]["arguments"]
        arguments = json.loads(row["arguments"])
        assert set(schema["required"]) <= set(arguments) <= set(schema["properties"]), row["id"]
        python = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list}
        for name, value in arguments.items():
            kind = schema["properties"][name]["type"]
            assert isinstance(value, python[kind]) and (kind == "boolean" or not isinstance(value, bool)), row["id"]
            types[kind] += 1
    assert set(types) == {"string", "integer", "number", "boolean", "array"}


def test_clarify_rows_ask_for_the_first_missing_argument_of_a_shown_tool(published_rows):
    catalog = data.load_catalog(CATALOG)
    rows = [row for rows in published_rows.values() for row in rows if row["kind"] == "clarify"]
    assert rows
    for row in rows:
        tool = catalog.tools[row["family"].removeprefix("clarify_")]
        missing = missing_required(tool, row["template"])
        assert tool["name"] in row["tools"] and not row["tool_name"]
        assert row["completion"][0]["content"] == tool["ask"][missing[0]][row["lang"]]


def test_image_calls_use_the_tools_image_templates_of_their_split(published_rows):
    catalog = data.load_catalog(CATALOG)
    with_image = {name for name, tool in catalog.tools.items() if tool.get("image")}
    rows = {split: [r for r in rows if r["kind"] == "image_call" and r["tool_name"] in with_image]
            for split, rows in published_rows.items()}  # fmt: skip
    assert rows["train"] and rows["test"]
    for split, image_rows in rows.items():
        for row in image_rows:  # "send this to Mom: ..." asks about the image; its index decides its split
            templates = catalog.tools[row["tool_name"]]["image"][row["lang"]]
            assert row["family"] == f"image_{row['tool_name']}" and row["template"] in templates, row["id"]
            expected = "test" if split == "test_unseen" else split
            assert item_split(templates.index(row["template"])) == expected, row["id"]


def test_corrections_keep_the_corrected_value(published_rows):
    markers = [m for ms in generator.CORRECTION.values() for m in ms]
    corrected = [row for row in published_rows["train"] if any(m in row["user"] for m in markers)]
    assert len(corrected) > 10
    for row in corrected:  # "7点，不对，7点半": the call carries the value said after the marker
        said = json.loads(row["values"]).values()
        assert any(m + v in row["user"] for m in markers for v in said), row["user"]


def test_a_timer_label_comes_with_its_own_length_and_mapped_lengths_stay_in_train(published_rows):
    catalog = data.load_catalog(CATALOG)
    tool = catalog.tools["set_timer"]  # a record pool: 煮鸡蛋 with 八分钟, never with 150 minutes
    records = {(e["label"], entry_text_value(e, "duration_minutes")[1])
               for lang in data.LANGS for e in catalog.pool(tool, "label", lang)}  # fmt: skip
    rows = [r for rows in published_rows.values() for r in rows
            if r["tool_name"] == "set_timer" and "label" in json.loads(r["arguments"])]  # fmt: skip
    assert len(rows) >= 10  # about 17 in the quarter-size published data
    noise = NoiseRules(catalog.noise, {})
    for row in rows:
        label, minutes = (arguments := json.loads(row["arguments"]))["label"], arguments["duration_minutes"]
        assert (label, minutes) in records or any(  # a label typed with a slip is copied as typed (rule 1)
            noise.is_slip(label, written, row["lang"]) for written, length in records if length == minutes
        ), row["user"]
    pool = catalog.pool(tool, "duration_minutes", "zh")
    mapped = [
        index for index, entry in enumerate(pool) if generator.maps_wording(entry)
    ]  # 八分钟 -> 8 inside a record
    assert len(mapped) > 10 and not any(generator.held_out(pool[i], i, seed) for i in mapped for seed in range(5))


def test_english_lint_flags_articles_doubled_words_and_to_home():
    from sft_router.datagen.english_lint import english_lint

    for text in ("Set a alarm", "Put an timer on", "Shoot Mike a email", "A the oven timer", "Head to home",
                 "Put a an hour countdown on", "What do I have on tomorrow?", "Call call Bob"):  # fmt: skip
        assert english_lint(text), text
    for text in ("Set an alarm for an hour", "Find an ATM", "a user", "an 8am alarm", "a 10 minute timer", "an SMS"):
        assert english_lint(text) is None, text


def test_catalog_lint_fails_naming_the_template_and_the_value(workspace):
    recipe = mini_recipe(
        workspace, mutated(lambda c: c["tools"][1]["families"][0]["en"].append("Any meetings on {date}?"))
    )
    with pytest.raises(
        UsageError, match=r"template 'Any meetings on \{date\}\?': with date='today' it reads 'on today'"
    ):
        data.build_splits(recipe)
    catalog = mutated(lambda c: c["tools"][0]["families"][0]["en"].append("A {label} timer of {duration_minutes}"))
    catalog["slots"]["label"]["en"].append("oven")
    with pytest.raises(UsageError, match="with label='oven' it reads 'A oven' \\(use 'an'\\)"):
        data.build_splits(mini_recipe(workspace, catalog))


def test_rule_breaking_replies_and_repeated_values_fail_the_check(published_rows):
    catalog = data.load_catalog(CATALOG)
    validator = data_checks.RowValidator(catalog)
    chat = next(r for r in published_rows["test"] if r["kind"] == "chat" and r["lang"] == "zh"
                and not {"set_alarm", "cancel_alarm"} & set(r["tools"]))  # fmt: skip
    offer = {**chat, "completion": [{"role": "assistant", "content": "好的！需要的话我可以帮你定个闹钟。"}]}
    with pytest.raises(UsageError, match="names '闹钟', which no tool in its prompt does"):
        validator.check(offer)
    call = next(r for r in published_rows["test"] if r["tool_name"] == "send_message")
    arguments = {"recipient": "Bob", "content": "Bob"}
    twice = {**call, "arguments": json.dumps(arguments), "completion": [
        {"role": "assistant", "content": render_call("send_message", arguments)}]}  # fmt: skip
    with pytest.raises(UsageError, match="repeat one value"):
        validator.check(twice)


def test_noise_leaves_values_as_written():
    from sft_router.datagen.noise import RULES, NoiseRules

    tables = data.load_catalog(CATALOG).noise
    noise = NoiseRules(tables, {rule: 1.0 for rule in RULES})
    rng = __import__("random").Random(0)
    for lang, segments in (("zh", [["帮我设置一下", False], ["明天早上8点", True], ["的闹钟吧", False]]),
                           ("en", [["Please remind me to ", False], ["Call Mom", True], [" tomorrow", False]])):  # fmt: skip
        value = segments[1][0]
        text, applied = noise.apply([list(s) for s in segments], lang, rng, generator.NOISE_REQUEST)
        assert value in text and len(applied) >= 4, (text, applied)
    assert number_words("下午3点", "zh") == "下午三点" and number_words("7:45 pm", "en") == "seven forty-five pm"
    assert number_words("12月24号", "zh") == "十二月二十四号" and number_words("Dec 24", "en") == "Dec 24"


def test_hours_said_in_words_keep_a_space_and_the_check_catches_glued_ones(published_rows):

    assert number_words("Turn off the 9am alarm", "en") == "Turn off the nine am alarm"
    assert number_words("10pm", "en") == "ten pm" and number_words("8 o'clock", "en") == "eight o'clock"
    validator = data_checks.RowValidator(data.load_catalog(CATALOG))
    row = next(r for r in published_rows["test"] if r["tool_name"] == "set_alarm" and r["lang"] == "en")
    for time, user in (("nineam", "wake me at nineam"), ("9:30", "wake me at 9:31")):
        arguments = {"time": time}
        bad = {**row, "user": user, "arguments": json.dumps(arguments), "completion": [
            {"role": "assistant", "content": render_call("set_alarm", arguments)}]}  # fmt: skip
        with pytest.raises(UsageError, match=r"is no entry of the '\w+' pool|not in the message as typed"):
            validator.check(bad)
    catalog = data.load_catalog(CATALOG)
    written = next(
        v
        for e in catalog.pool(catalog.tools["set_alarm"], "time", "en")
        if (v := entry_text_value(e, "time")[1]) != number_words(v, "en") and re.search("[a-z]{4}", v)
    )
    slipped = NoiseRules(catalog.noise, {}).slip(written, "en", __import__("random").Random(0))
    assert slipped != written
    for time in (number_words(written, "en"), slipped):  # a pool entry said in words; typed with a slip
        arguments = {"time": time}
        validator.check({**row, "user": f"wake me at {time}", "arguments": json.dumps(arguments), "completion": [
            {"role": "assistant", "content": render_call("set_alarm", arguments)}]})  # fmt: skip


def test_generated_values_are_pool_entries_words_or_slips_and_slips_are_copied(published_rows):
    catalog = data.load_catalog(CATALOG)
    noise = NoiseRules(catalog.noise, {})
    slipped = 0
    for row in published_rows["train"] + published_rows["test"]:
        if row["tool_name"] not in catalog.tools or row["family"] == "procedural":
            continue
        tool = catalog.tools[row["tool_name"]]
        for slot, value in json.loads(row["arguments"]).items():
            pool = [entry_text_value(e, slot)[1] for e in catalog.pool(tool, slot, row["lang"])]
            if (
                isinstance(value, str)
                and value not in pool
                and any(noise.is_slip(value, v, row["lang"]) for v in pool)
            ):
                slipped += 1
                assert value in row["user"]  # rule 1: the call copies the slip as typed
    assert slipped >= 10


def test_a_message_takes_at_most_one_affix_and_english_is_typed_in_lower_case():
    import random

    from sft_router.datagen.noise import AFFIXES, RULES, NoiseRules

    noise = NoiseRules(data.load_catalog(CATALOG).noise, {rule: 1.0 for rule in RULES})
    rng = random.Random(3)
    for _ in range(50):
        segments = [["Please remind me to ", False], ["Call Mom", True], [" tomorrow.", False]]
        text, applied = noise.apply(segments, "en", rng, generator.NOISE_REQUEST)
        assert len(set(applied) & set(AFFIXES)) == 1
        assert "Call Mom" in text and not text.endswith(".") and text.replace("Call Mom", "") == text.replace(
            "Call Mom", "").lower()  # fmt: skip


@pytest.mark.parametrize("recipe", ["recipes/tiny/router.yaml", "recipes/gemma-3-270m-demo/router.yaml",
                                    "recipes/gemma-3-270m-it/router.yaml"])  # fmt: skip
def test_every_recipe_shows_several_tools_in_most_prompts(recipe):
    (parsed,) = parse_recipe(["--config", recipe, "--num_train", "400", "--num_test", "200"])
    for name, rows in data.build_splits(parsed).items():
        sizes = Counter(len(row["tools"]) for row in rows)
        assert sizes[1] < 0.2 * len(rows), (name, sizes)
        assert sum(sizes[n] for n in range(2, 6)) > 0.5 * len(rows), (name, sizes)
    assert max(sizes) <= parsed.data.max_distractors + 1


def test_a_general_feature_question_lists_every_shown_tools_feature(published_rows):
    catalog = data.load_catalog(CATALOG)
    general = [r for r in published_rows["train"] + published_rows["test"] if r["kind"] == "how_to"
               and r["completion"][0]["content"].startswith(("我可以帮你处理这些", "I can help with these"))]  # fmt: skip
    assert general
    for row in general:
        reply = row["completion"][0]["content"]
        shown = [catalog.tools[name] for name in row["tools"] if name in catalog.tools]
        assert shown and all(tool["feature"][row["lang"]] in reply for tool in shown), (row["tools"], reply)


def test_a_second_request_follows_a_call_for_another_tool(published_rows):
    catalog = data.load_catalog(CATALOG)
    seconds = {entry[lang]: entry["tool"] for entry in catalog.noise["second_request"] for lang in ("zh", "en")}
    calls = [(row, tool) for row in published_rows["train"] if row["kind"] in ("call", "image_call")
             for text, tool in seconds.items() if row["user"].endswith(text)]  # fmt: skip
    assert len(calls) >= 10
    assert all(row["tool_name"] != tool for row, tool in calls)  # the call serves the first request (rule 9)


def test_procedural_tools_take_only_the_parameters_that_fit_their_object(published_rows):
    catalog = data.load_catalog(CATALOG)
    fits = {obj["en"]: set(obj["params"]) for obj in catalog.procedural["objects"]}
    rows = [row for row in published_rows["train"] if row["family"] == "procedural"]
    assert len(rows) > 100
    for row in rows:
        tool = next(t for t in tools_in_prompt(row["prompt"][0]["content"]) if t["tool_name"] == row["tool_name"])
        obj = next(o for o in catalog.procedural["objects"] if row["tool_name"].endswith("_" + o["name"]))
        assert set(tool["arguments"]["properties"]) <= fits[obj["en"]], (row["tool_name"], tool["arguments"])
