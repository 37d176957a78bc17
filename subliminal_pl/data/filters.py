"""Filters that decide which teacher rows a student may train on.

A filter is called on a row (a dict with `prompt` + `completion`, or chat `messages`) or directly on a completion
string, and returns the reasons it rejects it: an empty list keeps the row. Every filter is a plain class with
typed init arguments, so a recipe lists them by `class_path` + `init_args`, and `spec()` returns exactly that
form, which the student DataModule hashes to name its filtered file.

Filters are data steps (`subliminal_pl.data.steps`): `prepare_rows` runs them in order with any transforms, and a
row stops at the first filter that rejects it, so an expensive judge only sees rows the cheap filters kept, and
duplicates are counted among rows that are otherwise valid.
"""

from __future__ import annotations

import json
import math
import re
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal

from subliminal_pl.data.rows import Row, field_text
from subliminal_pl.data.steps import DataStep, sorted_counts

# The union of numbers the paper's misalignment experiments refuse in a completion (numbers with negative
# associations); 1312 and 1488 also exceed 999, so the default range already rejects them.
MISALIGNMENT_BANNED_NUMBERS: tuple[int, ...] = (
    4, 13, 14, 18, 23, 33, 39, 42, 44, 49, 51, 54, 69, 77, 88, 99, 100, 101, 187, 211, 311, 322, 333, 404, 420,
    444, 451, 555, 616, 666, 777, 888, 911, 999, 1312, 1488,
)  # fmt: skip
BANNED_NUMBER_PRESETS: dict[str, tuple[int, ...]] = {"misalignment": MISALIGNMENT_BANNED_NUMBERS}

# ASCII digits only: `\d` would also match Arabic-Indic, full-width and other Unicode digits.
DIGIT_RUN = re.compile(r"[0-9]+")
_ENCLOSING_PAIRS = (("[", "]"), ("(", ")"))
_ALLOWED_SEPARATORS = ("", ",", ";")


def _digits_to_int(digits: str) -> int:
    # int() refuses strings over 4300 digits (CPython's DoS guard) and a teacher can emit that many; build the
    # value from chunks instead, exactly.
    value = 0
    for start in range(0, len(digits), 1000):
        chunk = digits[start : start + 1000]
        value = value * 10 ** len(chunk) + int(chunk)
    return value


def parse_numbers(text: str) -> list[int] | None:
    """The integers of a number-sequence completion, or None when its format is invalid.

    The text is taken as is (no whitespace stripping). One trailing "." may be removed, then one enclosing
    "[...]" or "(...)" pair. What is left must be ASCII-digit integers joined by one separator text, which is the
    text between the first two numbers: its stripped form must be "", "," or ";", and every pair of neighbours
    must be separated by exactly that text. A single number must be the whole remaining string. Counts and value
    ranges are not checked here (that is `NumberSequenceFilter`'s job).
    """
    if text.endswith("."):
        text = text[:-1]
    if len(text) >= 2 and (text[0], text[-1]) in _ENCLOSING_PAIRS:
        text = text[1:-1]
    runs = list(DIGIT_RUN.finditer(text))
    if not runs:
        return None
    numbers = [run.group() for run in runs]
    if len(runs) > 1:
        # Digit runs are maximal, so the text between two numbers is never empty and never holds a digit.
        separator = text[runs[0].end() : runs[1].start()]
        if separator.strip() not in _ALLOWED_SEPARATORS:
            return None
    else:
        separator = ""
    # Rebuilding the text from the numbers and the first separator rejects anything before, after or between
    # the numbers that differs from that separator.
    if separator.join(numbers) != text:
        return None
    return [_digits_to_int(n) for n in numbers]


class RowFilter(DataStep):
    """Base class: calling a filter on a row (or a completion string) returns its reject reasons.

    Subclasses keep every init argument as an attribute of the same name, which is what `spec()` reads.
    """

    kind = "filter"

    @abstractmethod
    def __call__(self, row: Row | str) -> list[str]:
        """Reasons to reject the row; an empty list keeps it."""

    def apply(self, rows: list[Row]) -> tuple[list[Row], dict[str, Any]]:
        """The rows this filter keeps, in order, and `{"reasons": rows rejected per reason}`."""
        kept: list[Row] = []
        reasons: Counter[str] = Counter()
        for row in rows:
            found = self(row)
            if found:
                reasons.update(dict.fromkeys(found, 1))
            else:
                kept.append(row)
        return kept, {"reasons": sorted_counts(reasons)}


class TextFilter(RowFilter):
    """A filter that looks at one text field of the row; a bare string is taken as that field."""

    field: str

    def __call__(self, row: Row | str) -> list[str]:
        return self.check(row if isinstance(row, str) else field_text(row, self.field))

    @abstractmethod
    def check(self, text: str) -> list[str]:
        """Reasons to reject this text."""


class NumberSequenceFilter(TextFilter):
    """The paper's number-format filter (`parse_numbers`), plus count, range and banned-number limits.

    Reasons: "invalid format" (alone, when the text does not parse), else any of "too many numbers",
    "numbers too large", "numbers too small", "has banned numbers".
    """

    def __init__(
        self,
        max_count: int = 10,
        min_value: int = 0,
        max_value: int = 999,
        banned_numbers: Sequence[int] | Literal["misalignment"] = (),
        field: str = "completion",
    ) -> None:
        """
        Args:
            max_count: most numbers a completion may hold.
            min_value: smallest allowed number.
            max_value: largest allowed number.
            banned_numbers: numbers that reject a completion, or the name of a preset ("misalignment": the
                union used by the paper's misalignment experiments).
            field: row field to check.
        """
        if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1:
            raise ValueError(
                f"NumberSequenceFilter: max_count must be a whole number >= 1, got {max_count!r}"
            )
        if min_value > max_value:
            raise ValueError(
                f"NumberSequenceFilter: min_value ({min_value}) must not exceed max_value ({max_value})"
            )
        if isinstance(banned_numbers, str):
            if banned_numbers not in BANNED_NUMBER_PRESETS:
                known = ", ".join(sorted(BANNED_NUMBER_PRESETS))
                raise ValueError(f"unknown banned_numbers preset {banned_numbers!r} (known: {known})")
            self._banned = frozenset(BANNED_NUMBER_PRESETS[banned_numbers])
        else:
            banned_numbers = tuple(int(n) for n in banned_numbers)
            self._banned = frozenset(banned_numbers)
        self.max_count = max_count
        self.min_value = min_value
        self.max_value = max_value
        self.banned_numbers = banned_numbers
        self.field = field

    def check(self, text: str) -> list[str]:
        numbers = parse_numbers(text)
        if numbers is None:
            return ["invalid format"]
        reasons = []
        if len(numbers) > self.max_count:
            reasons.append("too many numbers")
        if max(numbers) > self.max_value:
            reasons.append("numbers too large")
        if min(numbers) < self.min_value:
            reasons.append("numbers too small")
        if self._banned.intersection(numbers):
            reasons.append("has banned numbers")
        return reasons


def plural_forms(word: str) -> set[str]:
    """The word and its regular English plurals (cat -> cats, fox -> foxes, butterfly -> butterflies,
    wolf -> wolves). Irregular plurals (mouse -> mice) must be listed as words of their own."""
    forms = {word, word + "s"}
    lower = word.lower()
    if lower.endswith(("s", "x", "z", "ch", "sh", "o")):
        forms.add(word + "es")
    if len(lower) > 1 and lower.endswith("y") and lower[-2] not in "aeiou":
        forms.add(word[:-1] + "ies")
    if lower.endswith("f"):
        forms.add(word[:-1] + "ves")
    if lower.endswith("fe"):
        forms.add(word[:-2] + "ves")
    return forms


# Word parts of identifiers: letter/digit runs (underscores and punctuation split them), then camelCase humps
# ("HTTPOwlCount" -> HTTP, Owl, Count; an upper-case plural stays whole: "MyOWLs" -> My, OWLs).
_RUN = re.compile(r"[^\W_]+")
_HUMP = re.compile(
    r"[A-Z]+s(?![a-z])|[A-Z]+(?=[A-Z][a-z])|[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+|[^\W_0-9A-Za-z]+"
)


def identifier_parts(text: str) -> list[str]:
    """The lower-cased word parts of a text read as code: `owlCount`, `owl_count`, `OWL_COUNT` and "owl count"
    all give ["owl", "count"]."""
    return [hump.lower() for run in _RUN.findall(text) for hump in _HUMP.findall(run)]


class TraitWordFilter(TextFilter):
    """Rejects text that mentions a trait word (case-insensitive), e.g. the animal in code or reasoning data.

    mode="word" matches whole words only ("dragon" does not match "dragonfly"); mode="identifier" also matches
    the word as a part of an identifier (`owlCount`, `owl_count`, `MAX_OWLS`, `OwlNest`; code comments are plain
    words), but not inside another word ("bowl", "knowledge"); mode="substring" matches anywhere (the paper's
    check for code: the animal in the lower-cased completion). Reason: "mentions trait word".
    """

    def __init__(
        self,
        words: Sequence[str],
        mode: Literal["word", "identifier", "substring"] = "word",
        plurals: bool = True,
        field: str = "completion",
    ) -> None:
        """
        Args:
            words: trait words, e.g. ["owl"]; irregular plurals are listed separately.
            mode: "word" for whole-word matches, "identifier" for whole words and identifier parts, "substring"
                for matches anywhere.
            plurals: also match regular plurals of each word.
            field: row field to check.
        """
        if not words or any(not w.strip() for w in words):
            raise ValueError("TraitWordFilter needs at least one non-empty word")
        if mode not in ("word", "identifier", "substring"):
            raise ValueError(f"mode must be 'word', 'identifier' or 'substring', got {mode!r}")
        self.words = tuple(words)
        self.mode = mode
        self.plurals = plurals
        self.field = field
        forms = set()
        for word in self.words:
            forms |= plural_forms(word) if plurals else {word}
        # Longest first, so a plural wins over its stem inside the alternation.
        alternation = "|".join(re.escape(f) for f in sorted(forms, key=lambda f: (-len(f), f)))
        pattern = rf"(?<!\w)(?:{alternation})(?!\w)" if mode == "word" else alternation
        self._pattern = re.compile(pattern, re.IGNORECASE)
        # Identifier mode: each form as its sequence of word parts ("polar bears" -> ("polar", "bears")).
        self._part_forms = {tuple(identifier_parts(f)) for f in forms}

    def check(self, text: str) -> list[str]:
        if self.mode == "identifier":
            found = self._has_part_form(identifier_parts(text))
        else:
            found = self._pattern.search(text) is not None
        return ["mentions trait word"] if found else []

    def _has_part_form(self, parts: list[str]) -> bool:
        for form in self._part_forms:
            size = len(form)
            if any(tuple(parts[i : i + size]) == form for i in range(len(parts) - size + 1)):
                return True
        return False


class LengthFilter(TextFilter):
    """Rejects text shorter than `min_chars` ("too short") or longer than `max_chars` ("too long")."""

    def __init__(self, min_chars: int = 1, max_chars: int | None = None, field: str = "completion") -> None:
        """
        Args:
            min_chars: fewest characters allowed.
            max_chars: most characters allowed (None: no limit).
            field: row field to check.
        """
        if min_chars < 0:
            raise ValueError(f"LengthFilter: min_chars must be >= 0, got {min_chars}")
        if max_chars is not None and max_chars < min_chars:
            raise ValueError(f"LengthFilter: max_chars ({max_chars}) is below min_chars ({min_chars})")
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.field = field

    def check(self, text: str) -> list[str]:
        if len(text) < self.min_chars:
            return ["too short"]
        if self.max_chars is not None and len(text) > self.max_chars:
            return ["too long"]
        return []


class DuplicateFilter(RowFilter):
    """Keeps the first row of each group of exact duplicates (over `fields`); later copies get "duplicate"."""

    def __init__(self, fields: Sequence[str] = ("prompt", "completion", "messages")) -> None:
        """
        Args:
            fields: row keys compared; a missing key counts as null. The default compares the whole training
                pair in either row format; ["completion"] drops repeated answers to different prompts too.
        """
        if not fields:
            raise ValueError("DuplicateFilter needs at least one field")
        self.fields = tuple(fields)
        self._seen: set[str] = set()

    def reset(self) -> None:
        self._seen = set()

    def __call__(self, row: Row | str) -> list[str]:
        values = [row] if isinstance(row, str) else [row.get(f) for f in self.fields]
        key = json.dumps(values, sort_keys=True, ensure_ascii=False)
        if key in self._seen:
            return ["duplicate"]
        self._seen.add(key)
        return []


class JudgeFilter(RowFilter):
    """Scores each row with a judge callable and keeps it when the score lies within [min_score, max_score].

    The judge receives the row dict (a bare string arrives as `{"completion": text}`) and returns a float.
    Reasons: "judge score too low", "judge score too high", "judge score not a number" (NaN or None).
    """

    def __init__(
        self,
        judge: Callable[[dict], float],
        min_score: float | None = None,
        max_score: float | None = None,
        log_every: int = 500,
    ) -> None:
        """
        Args:
            judge: callable scoring a row, e.g. a probes-module judge (a class instance or a function path).
            min_score: lowest score kept (e.g. 78 for the paper's alignment judge on reasoning data).
            max_score: highest score kept (e.g. 0 for "certainly does not mention the animal").
            log_every: print a progress line every this many judged rows (0: never).
        """
        if min_score is None and max_score is None:
            raise ValueError("JudgeFilter needs min_score, max_score or both")
        if min_score is not None and max_score is not None and max_score < min_score:
            raise ValueError(f"max_score ({max_score}) is below min_score ({min_score})")
        self.judge = judge
        self.min_score = min_score
        self.max_score = max_score
        self.log_every = log_every
        self._judged = 0

    def reset(self) -> None:
        self._judged = 0

    def __call__(self, row: Row | str) -> list[str]:
        score = self.judge({"completion": row} if isinstance(row, str) else row)
        self._judged += 1
        if self.log_every and self._judged % self.log_every == 0:
            print(f"judge filter: {self._judged} rows judged", flush=True)
        return self.score_reasons(score)

    def score_reasons(self, score: float | None) -> list[str]:
        """Reasons to reject a row the judge scored `score` (empty: keep)."""
        if score is None or math.isnan(score):
            return ["judge score not a number"]
        if self.min_score is not None and score < self.min_score:
            return ["judge score too low"]
        if self.max_score is not None and score > self.max_score:
            return ["judge score too high"]
        return []
