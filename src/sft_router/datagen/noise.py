"""Seeded noise for generated user messages: typos (Chinese homophone and pinyin-input slips, English letter slips),
fillers and particles, politeness, curt forms, extra context, mixed Chinese/English, informal spellings (pls, u,
咋样), English typed in lower case, and numbers as words.

A message is a list of segments, each `[text, is_value]`. Noise touches only the words around the values (a value
is copied into the call, so it stays exactly as the user wrote it), except numbers as words and slips inside a value
(`slip`), which the generator applies to the value and its argument together (rule 1: copied as typed). At most one
affix (politeness, a filler or context) is added to a message, as people rarely pile them up. Each rule fires with its
own rate from the recipe; the word tables live in the catalog's `noise` section.

Usage: from sft_router.datagen.noise import NoiseRules; NoiseRules(tables, rates).apply(segments, lang, rng)
"""

from __future__ import annotations

import re

from sft_router.core.errors import UsageError

RULES = (
    "typo",
    "filler",
    "polite",
    "curt",
    "context",
    "mixed",
    "number_words",
    "informal",
    "lowercase",
    "value_typo",
    "second_request",
)
AFFIXES = ("polite", "filler", "context")  # at most one a message
TABLES = ("slips", "mixed", "curt_drop", "filler", "polite", "context")  # the catalog's `noise` word tables


def check_noise_tables(path, tables: dict) -> None:
    """Every word table the rules read is in the catalog's `noise` section."""
    if missing := [name for name in TABLES if name not in tables]:
        raise UsageError(f"{path}: `noise` has no `{missing[0]}` table; add it (see the published catalog)")


PREFIX_SHARE = 0.2  # an affix leads the message this often; typed messages mostly trail one (", thanks")
END_PUNCTUATION = "？?。.！!"
EN_NUMBERS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]
EN_TENS = {20: "twenty", 30: "thirty", 40: "forty", 50: "fifty"}
ZH_DIGITS = "零一二三四五六七八九"


def en_number(n: int) -> str:
    if n <= 12:
        return EN_NUMBERS[n]
    if n < 20:
        return {13: "thirteen", 15: "fifteen", 18: "eighteen"}.get(n, EN_NUMBERS[n - 10].rstrip("t") + "teen")
    tens, ones = divmod(n, 10)
    return EN_TENS[tens * 10] + (f"-{EN_NUMBERS[ones]}" if ones else "")


def zh_number(n: int) -> str:
    tens, ones = divmod(n, 10)
    if not tens:
        return ZH_DIGITS[ones]
    return (ZH_DIGITS[tens] if tens > 1 else "") + "十" + (ZH_DIGITS[ones] if ones else "")


EN_CLOCK = re.compile(r"\b(1[0-2]|0?[1-9]):([0-5]\d)\b")
EN_HOUR = re.compile(r"\b(1[0-2]|[1-9])\s?(?=(?:am|pm|o'clock)\b)")
ZH_COUNT = re.compile(r"(?<![\d:：])([1-9]|[12]\d|3[01])(?=点|月|号|日|分钟|个|天|周)")


def number_words(text: str, lang: str) -> str:
    """Digits said as words: '7:45 pm' -> 'seven forty-five pm', '9am' -> 'nine am', '下午3点' -> '下午三点'; other
    text unchanged."""
    if lang == "zh":
        return ZH_COUNT.sub(lambda m: zh_number(int(m.group(1))), text)
    text = EN_CLOCK.sub(lambda m: f"{en_number(int(m.group(1)))} {_en_minutes(int(m.group(2)))}", text)
    return EN_HOUR.sub(lambda m: en_number(int(m.group(1))) + " ", text)


def _en_minutes(minutes: int) -> str:
    return "o'clock" if minutes == 0 else f"oh {EN_NUMBERS[minutes]}" if minutes < 10 else en_number(minutes)


class NoiseRules:
    """The recipe's rates and the catalog's word tables; `apply` draws from the caller's seeded random stream."""

    def __init__(self, tables: dict, rates: dict[str, float]):
        self.tables, self.rates = tables, rates

    def fires(self, rule: str, rng) -> bool:
        return rng.random() < self.rates.get(rule, 0.0)

    def apply(self, segments: list[list], lang: str, rng, rules: tuple[str, ...]) -> tuple[str, list[str]]:
        """The noisy message and the rules that changed it; `rules` in a fixed order keeps the stream reproducible.
        Once one affix rule has fired, the others are passed over."""
        applied = []
        for rule in rules:
            fired = self.fires(rule, rng)
            if fired and not (rule in AFFIXES and set(AFFIXES) & set(applied)):
                if getattr(self, f"_{rule}")(segments, lang, rng):
                    applied.append(rule)
        return "".join(text for text, _ in segments).strip(), applied

    def slip_sites(self, text: str, lang: str) -> list:
        """Where `text` can take a slip: the Chinese words of the `slips` table in it, or its English words of four
        letters or more."""
        if lang == "zh":
            return [word for word in self.tables.get("slips", {}).get("zh", {}) if word in text]
        return list(re.finditer(r"[A-Za-z]{4,}", text))

    def slip(self, text: str, lang: str, rng) -> str:
        """`text` with one slip: a Chinese homophone or pinyin-input slip from the table, or in English a letter
        swapped, dropped or doubled; `text` itself when it has nowhere to take one."""
        sites = self.slip_sites(text, lang)
        if not sites:
            return text
        if lang == "zh":
            word = rng.choice(sites)
            return text.replace(word, rng.choice(self.tables["slips"]["zh"][word]), 1)
        match = rng.choice(sites)
        word, at = match.group(), rng.randrange(1, len(match.group()) - 2)
        swapped = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
        dropped = word[:at] + word[at + 1 :]
        doubled = word[:at] + word[at] + word[at:]
        slipped = rng.choice([swapped, dropped, doubled])
        return text[: match.start()] + slipped + text[match.end() :]

    def is_slip(self, typed: str, written: str, lang: str) -> bool:
        """Whether `typed` is `written` with one slip of the kinds `slip` makes."""
        if lang == "zh":
            table = self.tables.get("slips", {}).get("zh", {})
            return any(written.replace(w, s, 1) == typed for w in table if w in written for s in table[w])
        if len(typed) == len(written):
            at = [i for i, (a, b) in enumerate(zip(typed, written)) if a != b]
            return (
                len(at) == 2
                and at[1] == at[0] + 1
                and typed[at[0]] == written[at[1]]
                and typed[at[1]] == written[at[0]]
            )
        shorter, longer = sorted((typed, written), key=len)
        return len(longer) == len(shorter) + 1 and any(
            longer[:i] + longer[i + 1 :] == shorter for i in range(len(longer))
        )

    def _words(self, segments, lang: str, table: str) -> list[tuple[int, str]]:
        words = self.tables.get(table, {}).get(lang, {})
        return [(i, w) for i, (text, is_value) in enumerate(segments) if not is_value for w in words if w in text]

    def _typo(self, segments, lang: str, rng) -> bool:
        words = [i for i, (text, is_value) in enumerate(segments) if not is_value and self.slip_sites(text, lang)]
        if not words:
            return False
        index = rng.choice(words)
        segments[index][0] = self.slip(segments[index][0], lang, rng)
        return True

    def _informal(self, segments, lang: str, rng) -> bool:
        """One word of the `informal` table as people type it (please -> pls, you -> u, 什么 -> 啥), everywhere it
        stands in the words around the values."""
        table = self.tables.get("informal", {}).get(lang, {})
        edge = r"\b" if lang == "en" else ""

        def bound(word: str) -> re.Pattern:
            return re.compile(edge + re.escape(word) + edge, re.IGNORECASE)

        found = [w for w in table if any(not v and bound(w).search(t) for t, v in segments)]
        if not found:
            return False
        word = rng.choice(found)
        said = rng.choice(table[word])
        for segment in segments:
            if not segment[1]:
                segment[0] = bound(word).sub(said, segment[0])
        return True

    def _lowercase(self, segments, lang: str, rng) -> bool:
        """English typed in lower case, "I" included, without a closing full stop; the values stay as written."""
        if lang != "en":
            return False
        before = [text for text, _ in segments]
        for segment in segments:
            if not segment[1]:
                segment[0] = segment[0].lower()
        if not segments[-1][1]:
            segments[-1][0] = segments[-1][0].rstrip(".")
        return before != [text for text, _ in segments]

    def _mixed(self, segments, lang: str, rng) -> bool:
        found = self._words(segments, lang, "mixed")
        if not found:
            return False
        index, word = rng.choice(found)
        other = rng.choice(self.tables["mixed"][lang][word])
        segments[index][0] = segments[index][0].replace(word, f" {other} " if lang == "zh" else other, 1)
        segments[index][0] = (
            re.sub(r"^ | $", "", segments[index][0]) if index in (0, len(segments) - 1) else (segments[index][0])
        )
        return True

    def _curt(self, segments, lang: str, rng) -> bool:
        before = [text for text, _ in segments]
        if not segments[-1][1]:
            segments[-1][0] = segments[-1][0].rstrip(END_PUNCTUATION)
        if not segments[0][1]:
            for word in self.tables["curt_drop"][lang]:
                if segments[0][0].startswith(word):
                    segments[0][0] = segments[0][0][len(word) :].lstrip(" ，,")
                    break
            if lang == "en" and segments[0][0][:1].isupper() and not re.match(r"I\b", segments[0][0]):
                segments[0][0] = segments[0][0][0].lower() + segments[0][0][1:]
        return before != [text for text, _ in segments] and bool("".join(t for t, _ in segments).strip())

    def _polite(self, segments, lang: str, rng) -> bool:
        return self._affix(segments, lang, rng, "polite")

    def _filler(self, segments, lang: str, rng) -> bool:
        return self._affix(segments, lang, rng, "filler")

    def _context(self, segments, lang: str, rng) -> bool:
        return self._affix(segments, lang, rng, "context")

    def _affix(self, segments, lang: str, rng, table: str) -> bool:
        """A prefix or a suffix from `table`, never one whose words the message already has ("please, please")."""
        said = "".join(text for text, _ in segments).lower()
        side = "prefix" if rng.random() < PREFIX_SHARE else "suffix"
        options = [a for a in self.tables[table][side][lang] if a.strip(" ,.:!?，。：！？").lower() not in said]
        if not options:
            return False
        if side == "prefix":
            self._prefix(segments, lang, rng.choice(options))
            return True
        suffix = rng.choice(options)
        last = segments[-1]
        if last[1]:
            segments.append([suffix, False])
        else:
            stripped = last[0].rstrip(END_PUNCTUATION)
            closing = "" if suffix.endswith(tuple(END_PUNCTUATION)) else last[0][len(stripped) :]  # not "okay?."
            last[0] = stripped + suffix + closing
        return True

    def _prefix(self, segments, lang: str, prefix: str) -> None:
        first = segments[0]
        sentence = prefix.rstrip().endswith((".", ":", "。", "："))  # a new sentence keeps its capital
        if (
            lang == "en"
            and not sentence
            and not first[1]
            and first[0][:1].isupper()
            and not re.match(r"I\b", first[0])
        ):
            first[0] = first[0][0].lower() + first[0][1:]
        segments.insert(0, [prefix, False])
