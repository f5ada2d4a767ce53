"""The dataset build: a catalog that teaches routing, splits that cannot leak, every row checked, same seed same bytes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY, copy_recipe

from sft_router import data
from sft_router.config import parse_recipe
from sft_router.errors import UsageError

CATALOG = ROOT / "recipes/gemma-3-270m-it/catalog.yaml"
SMALL = ["--num_train", "200", "--num_validation", "60", "--num_test", "60"]

# A two-tool catalog small enough to break on purpose in each test.
MINI_CATALOG = {
    "image_marker": "<start_of_image>",
    "tools": [
        {
            "name": "set_timer",
            "domain": "alarms",
            "description": "Start a countdown timer in minutes.",
            "parameters": {
                "type": "object",
                "properties": {"duration_minutes": {"type": "integer", "minimum": 1}, "label": {"type": "string"}},
                "required": ["duration_minutes"],
            },
            "pools": {"duration_minutes": "duration"},
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
    "no_call": yaml.safe_load(CATALOG.read_text())["no_call"],
}


def mini_recipe(workspace: Path, catalog: dict, *flags: str):
    path = workspace / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog, allow_unicode=True))
    recipe = copy_recipe(TINY, workspace / "tiny/mini.yaml", {"recipes/gemma-3-270m-it/catalog.yaml": str(path)})
    return parse_recipe(["--config", str(recipe), *flags])[0]


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


def test_published_catalog_covers_24_tools_8_domains_5_families_chinese_first():
    catalog = data.load_catalog(CATALOG)
    assert len(catalog.tools) >= 24 and len({t["domain"] for t in catalog.tools.values()}) >= 8
    for tool in catalog.tools.values():
        assert len(tool["families"]) >= 5, tool["name"]
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
    tools = set(data.load_catalog(CATALOG).tools)
    for split in data.SPLITS:
        rows = read_jsonl(workspace / f"runs/tiny/dataset/{split}.jsonl")
        assert {row["tool_name"] for row in rows if row["tool_name"]} == tools, split
        assert manifest["mix"][split]["tool"] == dict(Counter(r["tool_name"] for r in rows if r["tool_name"]))
        assert manifest["mix"][split]["kind"] == {k: sum(r["kind"] == k for r in rows) for k in data.KINDS}
    assert manifest["leaks"] == 0 and manifest["mix"]["train"]["rows_with_unseen_values"] == 0
    assert manifest["mix"]["test"]["rows_with_unseen_values"] > 0  # held-out values reach evaluation


def test_no_call_share_comes_from_the_recipe(workspace):
    (recipe,) = parse_recipe(["--config", TINY, *SMALL, "--no_call_share", "0.5"])
    rows = data.build_splits(recipe)["train"]
    kinds = Counter(row["kind"] for row in rows)
    assert sum(kinds[k] for k in data.NO_CALL_KINDS) == 100
    assert all(kinds[k] == 25 for k in data.NO_CALL_KINDS)  # the four no-call kinds in equal parts


def test_prompts_show_the_target_among_at_most_max_distractors_others(workspace):
    (recipe,) = parse_recipe(["--config", TINY, *SMALL, "--max_distractors", "0"])
    for row in data.build_splits(recipe)["train"]:
        assert row["tools"] == ([row["tool_name"]] if row["tool_name"] else [])
    (recipe,) = parse_recipe(["--config", TINY, *SMALL, "--max_distractors", "4"])
    rows = data.build_splits(recipe)["train"]
    assert max(len(row["tools"]) for row in rows) == 5 and all(row["tools"] for row in rows)
    catalog = data.load_catalog(CATALOG)
    domain = {name: tool["domain"] for name, tool in catalog.tools.items()}
    near_miss = [r for r in rows if r["tool_name"] and any(
        domain[t] == domain[r["tool_name"]] for t in r["tools"] if t != r["tool_name"])]  # fmt: skip
    assert len(near_miss) > len(rows) // 4  # create vs query vs delete of the same object, often side by side


def test_values_are_copied_as_written_and_unstated_arguments_omitted(workspace):
    (recipe,) = parse_recipe(["--config", TINY, *SMALL])
    catalog = data.load_catalog(CATALOG)
    for row in (r for rows in data.build_splits(recipe).values() for r in rows if r["tool_name"]):
        shown, arguments = json.loads(row["values"]), json.loads(row["arguments"])
        assert set(arguments) == set(shown) == set(data.SLOT.findall(row["template"])), row["id"]
        properties = catalog.tools[row["tool_name"]]["parameters"]["properties"]
        for slot, text in shown.items():
            assert text in row["user"]
            mapped = "enum" in properties[slot] or properties[slot]["type"] == "integer"
            assert arguments[slot] == text or mapped, (row["id"], slot)


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
    planted = next(row for row in splits["test"] if row["kind"] == "call")
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

    def with_stray_argument(self, tool):
        said = original(self, tool)
        return data.Utterance(**{**said.__dict__, "arguments": {**said.arguments, "colour": "red"}})

    monkeypatch.setattr(data.Generator, "utterance", with_stray_argument)
    with pytest.raises(SystemExit):
        data.main(["--config", TINY, *SMALL])
    (recipe,) = parse_recipe(["--config", TINY, *SMALL])
    with pytest.raises(UsageError, match=r"break the schema of '\w+' \(Additional properties .*'colour'"):
        data.build_splits(recipe)
    assert not (workspace / "runs").exists()  # checked before anything was written


def test_tool_missing_from_its_prompt_fails_the_build_naming_it(workspace, monkeypatch):
    original = data.Generator._prompt_tools
    monkeypatch.setattr(data.Generator, "_prompt_tools", lambda self, target, absent=None: [
        t for t in original(self, target, absent) if t is not target or t["name"] != "set_timer"])  # fmt: skip
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
    from sft_router.cards import render_dataset_card

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
    timers = [sum(r["tool_name"] == "set_timer" for r in read_jsonl(workspace / f"runs/tiny/dataset/{split}.jsonl"))
              for split in data.SPLITS]  # fmt: skip
    line = next(line for line in card.splitlines() if line.startswith("| `set_timer` | alarms | duration_minutes |"))
    assert line.endswith(" | " + " | ".join(map(str, timers)) + " |")
    assert "license: apache-2.0" in card and "make data RECIPE=recipes/tiny/router.yaml" in card
    assert "`<start_of_image>` at the very start of the user message" in card
