"""Grammar slips in generated English messages: a/an before a word's sound, doubled words, two articles in a row,
'to home' and 'on today'. The catalog checks every English template against it with each value in place, and the
generator checks every message it writes.

Usage: from sft_router.datagen.english_lint import english_lint; english_lint("set an alarm") -> None
"""

from __future__ import annotations

import functools
import re

ARTICLE_PAIR = re.compile(r"\b(a|an|the)\s+(a|an|the|my|your|his|her|our|their)\b", re.IGNORECASE)
DOUBLED = re.compile(r"\b(\w+)\s+\1\b", re.IGNORECASE)
A_AN = re.compile(r"\b(a|an)\s+([\w'-]+)", re.IGNORECASE)
BAD_PHRASES = re.compile(r"\bto home\b|\b(on|at|in) (today|tomorrow|tonight)\b|\b(on|at) next\b", re.IGNORECASE)


def wants_an(word: str) -> bool:
    """Whether a word is said with a vowel sound first (an hour, an SMS, an 8am alarm; a user, a one-off)."""
    if word[0].isdigit():
        digits = re.match(r"\d+", word).group()
        return digits[0] == "8" or digits in ("11", "18") or (len(digits) in (4, 5) and digits[:2] in ("11", "18"))
    if len(word) > 1 and word.isupper():
        return word[0] in "AEFHILMNORSX"
    lower = word.lower()
    if lower.startswith(("hour", "honest", "honou", "honor", "heir")):
        return True
    if lower.startswith(("uni", "use", "usu", "uti", "one", "once", "eu", "ewe", "ufo", "uk", "ur")):
        return False
    return lower[0] in "aeiou"


@functools.lru_cache(maxsize=65536)
def english_lint(text: str) -> str | None:
    """The first grammar slip in an English message, or None: a/an, doubled words, 'to home'."""
    for match in A_AN.finditer(text):
        article, word = match.group(1).lower(), match.group(2)
        if word.lower() in ("the", "a", "an"):
            continue
        if (article == "an") != wants_an(word):
            return f"'{match.group(0)}' (use '{'an' if wants_an(word) else 'a'}')"
    for pattern in (ARTICLE_PAIR, DOUBLED, BAD_PHRASES):
        match = pattern.search(text)
        if match:
            return f"'{match.group(0)}'"
    return None
