"""The leak check compares normalised text and refuses near-duplicates (character 5-gram Jaccard >= 0.8), naming the
pair, over every split but train."""

from __future__ import annotations

import pytest

from sft_router import data
from sft_router.core.errors import UsageError
from sft_router.datagen import checks as data_checks


def row(user: str, template: str = "", values: str = "{}") -> dict:
    return {"user": user, "template": template or user, "values": values}


TRAIN = [
    row("Set a timer for ten minutes"),
    row("帮我查一下明天的日程"),
    row("Remind me to call mom at 6 pm tomorrow"),
]


@pytest.mark.parametrize(
    ("message", "found"),
    [
        ("Set a timer for ten minutes ", "test user message 'Set a timer for ten minutes ' is in train as "
         "'Set a timer for ten minutes' once normalised"),
        ("帮我查一下明天的日程。", "test user message '帮我查一下明天的日程。' is in train as '帮我查一下明天的日程' once normalised"),
        ("ＳＥＴ  a timer, for TEN minutes!", "is in train as 'Set a timer for ten minutes' once normalised"),
        ("帮我查一下明天的日程 ", "is in train as '帮我查一下明天的日程' once normalised"),
        ("Please remind me to call mom at 6 pm tomorrow", "test user message 'Please remind me to call mom at 6 pm "
         "tomorrow' nearly duplicates train's 'Remind me to call mom at 6 pm tomorrow' (character 5-gram Jaccard 0.8"),
    ],
    ids=["trailing-space", "full-stop", "width-case-punctuation", "chinese-space", "near-duplicate"],
)  # fmt: skip
def test_a_normalised_or_near_duplicate_leak_is_refused_naming_the_pair(message, found):
    splits = {"train": TRAIN, "validation": [], "test": [row(message)]}
    leaks = data.check_leaks(splits)
    assert len(leaks) == 1 and found in leaks[0], leaks
    with pytest.raises(UsageError, match="1 leaks from train into evaluation") as error:
        data.assert_no_leaks(splits)
    assert found in str(error.value) and len(str(error.value).splitlines()) == 1


def test_every_split_but_train_is_checked():
    splits = {"train": TRAIN, "test": [], "test_unseen": [row("set a timer for ten minutes")]}
    assert data.check_leaks(splits)[0].startswith("test_unseen user message")


@pytest.mark.parametrize(
    "message",
    [
        "Set a timer for twenty minutes",
        "帮我查一下后天的日程",
        "Remind me to buy milk at 6 pm tomorrow",
        "Set a timer",
    ],
)
def test_different_requests_are_not_leaks(message):
    assert data.check_leaks({"train": TRAIN, "test": [row(message)]}) == []


def test_near_duplicate_index_finds_exactly_the_pairs_a_full_comparison_finds():
    import random

    rng = random.Random(0)
    words = ["set", "timer", "call", "mom", "明天", "日程", "remind", "note", "查一下", "at", "6", "pm"]
    texts = {data_checks.normalise(" ".join(rng.choices(words, k=rng.randint(1, 7)))) for _ in range(400)}
    index = data_checks.NearDuplicates(texts)
    for probe in sorted(texts)[:150]:
        probe_grams = data_checks.char_grams(probe + "x")
        brute = max(
            (len(probe_grams & data_checks.char_grams(t)) / len(probe_grams | data_checks.char_grams(t)), t)
            for t in texts
        )
        expected = brute if brute[0] >= data_checks.NEAR_DUPLICATE else None
        assert index.nearest(probe + "x") == expected
