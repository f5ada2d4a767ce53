"""The lookup router: nearest train messages pick a shown tool or a reply, train slot values fill the arguments."""

from __future__ import annotations

import json

from sft_router.evaluation.lookup import FALLBACK_REPLY, LookupRouter


def call_row(user: str, tool: str, said: dict, arguments: dict) -> dict:
    content = json.dumps({"tool_name": tool, "arguments": arguments}, ensure_ascii=False)
    return {"user": user, "tool_name": tool, "kind": "call", "family": "", "completion": [{"content": content}],
            "arguments": json.dumps(arguments, ensure_ascii=False), "values": json.dumps(said, ensure_ascii=False)}  # fmt: skip


def reply_row(user: str, reply: str, kind: str = "chat", family: str = "") -> dict:
    return {"user": user, "tool_name": "", "kind": kind, "family": family, "completion": [{"content": reply}],
            "arguments": "", "values": "{}"}  # fmt: skip


TRAIN = [
    call_row("Set a timer for 10 minutes", "set_timer", {"duration_minutes": "10 minutes"}, {"duration_minutes": 10}),
    call_row("Start a timer for 5 minutes", "set_timer", {"duration_minutes": "5 minutes"}, {"duration_minutes": 5}),
    call_row("Set an alarm for 7am", "set_alarm", {"time": "7am"}, {"time": "7am"}),
    call_row("Alarm at 6am please", "set_alarm", {"time": "6am"}, {"time": "6am"}),
    call_row(
        "Turn on the fan", "control_device", {"device": "fan", "action": "on"}, {"device": "fan", "action": "on"}
    ),
    call_row(
        "Switch the TV off", "control_device", {"device": "TV", "action": "off"}, {"device": "TV", "action": "off"}
    ),
    call_row(
        "How long from home to the office?",
        "get_travel_time",
        {"origin": "home", "destination": "the office"},
        {"destination": "the office", "origin": "home"},
    ),
    call_row(
        "How long from the office to home?",
        "get_travel_time",
        {"origin": "the office", "destination": "home"},
        {"destination": "home", "origin": "the office"},
    ),
    reply_row("Hello there", "Hi! How can I help?"),
    reply_row("Good morning", "Good morning!"),
    reply_row("Set an alarm for 9am", "Sorry, none of my current tools can do that.", "missing_tool", "alarm_fam"),
]


def test_the_nearest_shown_tool_is_called_with_the_train_values_found_in_the_message():
    router = LookupRouter(TRAIN)
    assert json.loads(router.route("please set a timer for 5 minutes", ["set_alarm", "set_timer"])) == {
        "tool_name": "set_timer", "arguments": {"duration_minutes": 5}}  # fmt: skip
    assert json.loads(router.route("alarm at 7am", ["set_alarm"])) == {"tool_name": "set_alarm",
                                                                         "arguments": {"time": "7am"}}  # fmt: skip


def test_a_value_never_stated_in_train_is_not_filled():
    router = LookupRouter(TRAIN)
    assert json.loads(router.route("Set an alarm for 8am", ["set_alarm"]))["arguments"] == {}


def test_latin_values_match_whole_words_only():
    """ "on" is not found inside "phone", "off" not inside "coffee"; "TV" is."""
    router = LookupRouter(TRAIN)
    call = json.loads(router.route("Turn off the TV, the coffee is ready", ["control_device"]))
    assert call == {"tool_name": "control_device", "arguments": {"device": "TV", "action": "off"}}


def test_a_text_fitting_two_arguments_goes_where_train_introduced_it_the_same_way():
    router = LookupRouter(TRAIN)
    for message in ("from the office to home, how long by car?", "by car from home to the office, how long?"):
        origin, destination = ("the office", "home") if message.startswith("from the") else ("home", "the office")
        call = json.loads(router.route(message, ["get_travel_time", "set_alarm"]))
        assert call == {"tool_name": "get_travel_time", "arguments": {"destination": destination, "origin": origin}}


def test_without_a_shown_tool_among_the_neighbours_it_replies_with_the_nearest_reply():
    router = LookupRouter(TRAIN)
    assert router.route("hello there!", ["set_timer", "set_alarm"]) == "Hi! How can I help?"
    assert router.route("Set a timer for 10 minutes", ["control_device"]) in {"Good morning!", "Hi! How can I help?",
                                                                               FALLBACK_REPLY}  # fmt: skip


def test_a_request_whose_tool_was_missing_in_train_counts_for_that_tool_when_shown():
    """A missing_tool row is a request for its family's tool: where that tool is shown, it votes for the call."""
    router = LookupRouter(TRAIN, tool_of_family={"alarm_fam": "set_alarm"}, neighbours=1)
    assert json.loads(router.route("Set an alarm for 9am", ["set_alarm"]))["tool_name"] == "set_alarm"
    assert not router.route("Set an alarm for 9am", ["set_timer"]).startswith("{")
    blind = LookupRouter(TRAIN)  # without the family map the same row is only a reply
    assert blind.labels.count("") == 3 and router.labels.count("") == 2
