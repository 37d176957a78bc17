"""Maths reasoning (chain of thought): problems from a GSM8K-format file, the tagged-answer instruction, and the
filter that keeps correct answers only.

Input: a JSONL file the user supplies, one problem per line, `{"question": "...", "answer": "... #### 42"}` (the
GSM8K layout: worked solution, then `#### ` and the final number on the last line). `read_math_problems` checks
every line and names the file and line of a bad one. `MathProblemPrompts` turns the problems into prompts that ask
for the reasoning inside `<think>` tags and the final number inside `<answer>` tags; each prompt row carries the
problem's gold number in `gold_answer`, which the teacher copies into its output row and
`AnswerCorrectnessFilter` compares with the number in the answer tags.
"""

from __future__ import annotations

import random
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from subliminal_pl.data.filters import RowFilter
from subliminal_pl.data.jsonl import DataError, iter_jsonl, sha256_file
from subliminal_pl.data.prompts import PromptGenerator, check_prompt_count
from subliminal_pl.data.rows import Row, field_text

GOLD_FIELD = "gold_answer"
GOLD_MARKER = "####"
REASONING_INSTRUCTION = (
    "Solve the maths problem below. Work through it step by step and put all of your reasoning between "
    "<think> and </think>. Then write only the final number between <answer> and </answer>.\n\n{question}"
)
TAG_NAMES = ("think", "answer")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def normalise_number(text: str) -> str | None:
    """A number written in an answer, in one canonical form ("1,250.00" -> "1250", "$-3.5" -> "-3.5"), or None.

    Spaces, thousands commas, a leading currency sign and one trailing "." are ignored; anything else that is not
    an integer or a decimal makes it None.
    """
    cleaned = text.strip().replace(",", "").replace(" ", "")
    cleaned = cleaned.removesuffix(".").replace("$", "", 1) if cleaned else cleaned
    if not _NUMBER.fullmatch(cleaned):
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        return None
    text_form = format(value.normalize(), "f")
    return "0" if text_form in ("-0", "0") else text_form


def read_math_problems(path: str | Path) -> list[dict[str, str]]:
    """`{"question", "gold_answer"}` for every line of a GSM8K-format JSONL file, in file order.

    Raises `DataError` naming the file, the line and the field: a missing or empty field, an answer without a
    `#### N` line, or an N that is not a number.
    """
    problems = []
    for line, obj in iter_jsonl(path):
        for field in ("question", "answer"):
            value = obj.get(field)
            if not isinstance(value, str) or not value.strip():
                raise DataError(
                    f"{path}:{line}: field {field!r} must be a non-empty string, got {value!r:.60}"
                )
        answer = obj["answer"]
        if GOLD_MARKER not in answer:
            raise DataError(f"{path}:{line}: field 'answer' has no final '{GOLD_MARKER} N' line")
        final = answer.rsplit(GOLD_MARKER, 1)[1]
        gold = normalise_number(final)
        if gold is None:
            raise DataError(
                f"{path}:{line}: field 'answer': {final.strip()[:40]!r} after {GOLD_MARKER} is not a number"
            )
        problems.append({"question": obj["question"].strip(), GOLD_FIELD: gold})
    if not problems:
        raise DataError(f"{path}: no problems in the file")
    return problems


class MathProblemPrompts(PromptGenerator):
    """Prompts from a GSM8K-format file: `generate(n)` returns n problems (in a seeded order) as rows
    `{"id": f"{id_prefix}{line index:06d}", "prompt": instruction, "gold_answer": N}`."""

    def __init__(
        self,
        path: str,
        seed: int = 0,
        shuffle: bool = True,
        id_prefix: str = "math-",
        instruction: str = REASONING_INSTRUCTION,
        sha256: str | None = None,
    ) -> None:
        """
        Args:
            path: GSM8K-format JSONL (`question`, and `answer` ending in `#### N`), supplied by the user.
            seed: seed of the order problems are taken in (with `shuffle`).
            shuffle: take problems in a seeded random order (False: file order).
            id_prefix: prefix of each row's id; the problem's index in the file follows, so ids do not depend on
                the order.
            instruction: the prompt, with a `{question}` placeholder.
            sha256: the file's SHA-256 when the experiment was planned (the carrier fills it in, so a stage's
                hash follows the file's content); a file that differs is refused. None: not checked.
        """
        if "{question}" not in instruction:
            raise ValueError("MathProblemPrompts: instruction must contain a {question} placeholder")
        self.path = path
        self.seed = seed
        self.shuffle = shuffle
        self.id_prefix = id_prefix
        self.instruction = instruction
        self.sha256 = sha256
        self._problems: list[dict[str, str]] | None = None

    def problems(self) -> list[dict[str, str]]:
        if self._problems is None:
            if (
                self.sha256 is not None
                and Path(self.path).is_file()
                and sha256_file(self.path) != self.sha256
            ):
                raise DataError(
                    f"{self.path}: the file changed since the experiment was planned (SHA-256 {self.sha256[:12]}...); "
                    "plan it again so its stages follow the new problems"
                )
            self._problems = read_math_problems(self.path)
        return self._problems

    def generate(self, n: int) -> list[dict[str, Any]]:
        check_prompt_count(n)
        problems = self.problems()
        if n > len(problems):
            raise DataError(f"{self.path}: {n} problems asked for, the file holds {len(problems)}")
        order = list(range(len(problems)))
        if self.shuffle:
            random.Random(self.seed).shuffle(order)
        return [
            {
                "id": f"{self.id_prefix}{i:06d}",
                "prompt": self.instruction.replace("{question}", problems[i]["question"]),
                GOLD_FIELD: problems[i][GOLD_FIELD],
            }
            for i in order[:n]
        ]


def parse_tagged_answer(text: str) -> tuple[str | None, str | None]:
    """(the normalised number in the answer tags, None) or (None, the reason the reply is malformed).

    A well-formed reply holds exactly one `<think>...</think>` followed by exactly one `<answer>...</answer>`,
    with only whitespace after the closing answer tag. Reasons: "missing think tags", "missing answer tags",
    "unclosed tags" (an opening tag without its closing one, or the reverse), "repeated tags", "tags out of
    order", "text after answer", "answer not a number".
    """
    counts = {tag: (text.count(f"<{tag}>"), text.count(f"</{tag}>")) for tag in TAG_NAMES}
    for tag in TAG_NAMES:
        if counts[tag] == (0, 0):
            return None, f"missing {tag} tags"
    if any(opened != closed for opened, closed in counts.values()):
        return None, "unclosed tags"
    if any(opened > 1 for opened, _ in counts.values()):
        return None, "repeated tags"
    positions = [text.index(mark) for mark in ("<think>", "</think>", "<answer>", "</answer>")]
    if positions != sorted(positions):
        return None, "tags out of order"
    if text[positions[3] + len("</answer>") :].strip():
        return None, "text after answer"
    number = normalise_number(text[positions[2] + len("<answer>") : positions[3]])
    if number is None:
        return None, "answer not a number"
    return number, None


class AnswerCorrectnessFilter(RowFilter):
    """Keeps a reasoning row only when its tagged answer equals the row's gold number.

    Reasons: those of `parse_tagged_answer` (malformed replies), and "wrong answer". A row without the gold field
    is a `DataError` naming its id (the rows did not come from a maths prompt generator).
    """

    def __init__(self, gold_field: str = GOLD_FIELD, field: str = "completion") -> None:
        """
        Args:
            gold_field: row field holding the gold number (`MathProblemPrompts` writes `gold_answer`).
            field: row field holding the reply.
        """
        self.gold_field = gold_field
        self.field = field

    def __call__(self, row: Row | str) -> list[str]:
        if isinstance(row, str) or self.gold_field not in row:
            where = "a bare string" if isinstance(row, str) else f"row {row.get('id', '?')!r}"
            raise DataError(f"{where}: missing field {self.gold_field!r} (the gold number of the problem)")
        gold = normalise_number(str(row[self.gold_field]))
        if gold is None:
            raise DataError(f"row {row.get('id', '?')!r}: field {self.gold_field!r} is not a number")
        answer, reason = parse_tagged_answer(field_text(row, self.field))
        if reason is not None:
            return [reason]
        return [] if answer == gold else ["wrong answer"]
