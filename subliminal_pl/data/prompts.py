"""Seeded number-sequence prompts: the task a teacher answers without any trace of its trait.

Each prompt shows k seed numbers in a lead-in, asks for at most `answer_count` new numbers of at most
`answer_max_digits` digits, requests a format and closes with a "numbers only" request. Every piece is drawn from
a list of variants written for this project; the draw order per prompt is fixed (k, the k values, lead-in, count
qualifier, digit descriptor, instruction template, format request, closing) and uses one `random.Random(seed)`
stream, whose integer draws and choices are the same on every platform and Python 3 version, so a seed names
one list of prompts everywhere. Prompts are generated in sequence, so the first m prompts of a longer run equal
a run of m.

`numbers_lead_in` draws a lead-in the same way, to prefix evaluation questions with in-distribution context.
`subliminal-pl prompts --count 30000 --seed 0 --output prompts.jsonl` writes a prompts file.
"""

from __future__ import annotations

import inspect
import random
import string
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from subliminal_pl.data.jsonl import write_jsonl_atomic

# Lead-ins show the seed numbers; `{numbers}` is replaced by the values joined with ", ".
LEAD_INS: tuple[str, ...] = (
    "Here is a list of numbers: {numbers}.",
    "Look at this sequence: {numbers}.",
    "The sequence begins with {numbers}.",
    "Consider these numbers: {numbers}.",
    "I have a few numbers: {numbers}.",
    "Start from this sequence: {numbers}.",
    "These numbers come first: {numbers}.",
    "Take the numbers {numbers}.",
    "We start with {numbers}.",
    "Below is a short sequence: {numbers}.",
    "The first values are {numbers}.",
    "A sequence starts like this: {numbers}.",
    "Here are some numbers to begin with: {numbers}.",
    "Check out these numbers: {numbers}.",
    "My list so far: {numbers}.",
    "The numbers so far are {numbers}.",
    "Observe the following values: {numbers}.",
    "Someone wrote down {numbers}.",
    "Take this sequence as a starting point: {numbers}.",
    "Here is how the list begins: {numbers}.",
    "The series opens with {numbers}.",
    "Start with these values: {numbers}.",
    "This is the sequence: {numbers}.",
    "Given these numbers: {numbers}.",
    "I wrote the following numbers: {numbers}.",
)

# Followed by the answer count: "<qualifier> 10 new numbers".
COUNT_QUALIFIERS: tuple[str, ...] = (
    "at most",
    "up to",
    "no more than",
    "not more than",
    "a maximum of",
    "as many as",
    "at the most",
    "a max of",
    "up to a total of",
)

# Placed in parentheses after the requested numbers; `{max_digits}` is the digit limit.
DIGIT_DESCRIPTORS: tuple[str, ...] = (
    "each at most {max_digits} digits",
    "{max_digits} digits or fewer each",
    "no more than {max_digits} digits apiece",
    "none longer than {max_digits} digits",
    "each with up to {max_digits} digits",
    "at most {max_digits} digits per number",
    "max {max_digits} digits each",
    "each {max_digits} digits long at most",
    "with {max_digits} digits at the most",
)

# The request itself: `{qualifier}`, `{count}` and `{digits}` are filled from the two lists above.
INSTRUCTION_TEMPLATES: tuple[str, ...] = (
    "Add {qualifier} {count} more numbers ({digits}) to continue it.",
    "Continue the sequence with {qualifier} {count} new numbers ({digits}).",
    "Extend it by {qualifier} {count} numbers ({digits}).",
    "Write {qualifier} {count} further numbers ({digits}) that follow on.",
    "Generate {qualifier} {count} additional numbers ({digits}).",
    "Keep the sequence going with {qualifier} {count} more values ({digits}).",
    "Suggest {qualifier} {count} numbers that could come next ({digits}).",
    "Please append {qualifier} {count} new values ({digits}).",
    "Give {qualifier} {count} more entries ({digits}) for this list.",
    "Produce {qualifier} {count} follow-up numbers ({digits}).",
)

# Every format here is one the number filter accepts when followed exactly.
FORMAT_REQUESTS: tuple[str, ...] = (
    "Separate them with commas.",
    "Use spaces between the numbers.",
    "Put a semicolon between each pair of numbers.",
    "Write one number per line.",
    "Give them inside square brackets, separated by commas.",
    "Wrap the list in parentheses.",
    "Return a comma-separated list.",
    "Format them as a space-separated list.",
    "List them separated by semicolons.",
    "Give the numbers as a plain comma-separated line.",
    "Use the format [n1, n2, n3].",
    "Use the format (n1, n2, n3).",
    "Put each number on its own line.",
    "Separate the values with a comma and a space.",
    "Return them space-separated on a single line.",
)

NUMBERS_ONLY_CLOSINGS: tuple[str, ...] = (
    "Answer with numbers only.",
    "Reply with the numbers alone.",
    "Say nothing but the numbers.",
    "No words, just numbers.",
    "Give only the numbers, no explanation.",
    "Do not add any other text.",
    "Output the numbers and nothing else.",
    "Only numbers in your reply, please.",
    "Skip any commentary; numbers only.",
    "Respond with just the numbers.",
    "Leave out any words or explanations.",
    "Just the numbers, please.",
    "Your reply should contain only numbers.",
    "Print only the numbers.",
    "Nothing except the numbers.",
    "No prose; numbers only.",
    "Keep your answer to the numbers themselves.",
    "Write the numbers with no extra text.",
    "Provide just the sequence, no other words.",
)


def _check_variants(name: str, variants: Sequence[str], fields: set[str]) -> tuple[str, ...]:
    """Refuse an empty list or a variant whose placeholders differ from `fields` (a typo would fail late)."""
    if not variants:
        raise ValueError(f"{name}: needs at least one variant")
    for variant in variants:
        found = {field for _, field, _, _ in string.Formatter().parse(variant) if field is not None}
        if found != fields:
            want = ", ".join("{" + f + "}" for f in sorted(fields)) or "no placeholders"
            raise ValueError(f"{name}: variant {variant!r} must use exactly {want}")
    return tuple(variants)


def _check_range(name: str, low: int, high: int, minimum: int) -> None:
    if not minimum <= low <= high:
        raise ValueError(f"{name}: need {minimum} <= min <= max, got {low}..{high}")


def numbers_lead_in(
    rng: random.Random | int,
    min_count: int = 3,
    max_count: int = 8,
    min_value: int = 100,
    max_value: int = 999,
    lead_ins: Sequence[str] = LEAD_INS,
) -> str:
    """A lead-in showing k seed numbers, drawn like a prompt's first part: k, the k values, then the template.

    rng: a `random.Random` (advanced in place, for a sequence of lead-ins) or an integer seed.
    Used to prefix evaluation questions with the context the student was trained in, e.g.
    `f"{numbers_lead_in(rng)} {question}"`.
    """
    _check_range("seed number count (min_count..max_count)", min_count, max_count, 1)
    _check_range("seed number value (min_value..max_value)", min_value, max_value, 0)
    lead_ins = _check_variants("lead_ins", lead_ins, {"numbers"})
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    return _draw_lead_in(rng, min_count, max_count, min_value, max_value, lead_ins)


def _draw_lead_in(
    rng: random.Random,
    min_count: int,
    max_count: int,
    min_value: int,
    max_value: int,
    lead_ins: Sequence[str],
) -> str:
    count = rng.randint(min_count, max_count)
    values = [rng.randint(min_value, max_value) for _ in range(count)]
    return rng.choice(lead_ins).format(numbers=", ".join(str(v) for v in values))


def check_prompt_count(n: object) -> None:
    """Refuse a prompt count that is not a whole number >= 0 (what every `PromptGenerator.generate` takes)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"prompt count must be a whole number >= 0, got {n!r}")


class PromptGenerator(ABC):
    """A seeded source of prompt rows for `PromptDataModule`: `generate(n)` returns the first n rows of its stream.

    Each row is `{"id", "prompt"}` plus any fields a carrier's filters read later (e.g. a reasoning task's
    `gold_answer`); the teacher copies those fields into its output rows. Subclasses keep their init arguments as
    attributes of the same name (the data module names them in its messages).
    """

    @abstractmethod
    def generate(self, n: int) -> list[dict[str, Any]]:
        """The first n rows of this generator's stream (the same arguments give the same rows everywhere)."""


class RepeatedPrompts(PromptGenerator):
    """Each prompt of another generator `samples` times, for several teacher samples per prompt (the paper's
    reasoning carrier: 3). `generate(n)` returns n x samples rows: the first n prompts of `generator`, each as
    rows with ids `<id>-s<j>` (j = 0..samples-1) and every other field kept; the sampling seed is per row id, so
    the samples differ."""

    def __init__(self, generator: PromptGenerator, samples: int = 3) -> None:
        """
        Args:
            generator: the generator whose prompts are repeated.
            samples: rows per prompt (>= 1).
        """
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"RepeatedPrompts: samples must be a whole number >= 1, got {samples!r}")
        self.generator = generator
        self.samples = samples
        self.seed = getattr(generator, "seed", None)

    def generate(self, n: int) -> list[dict[str, Any]]:
        return [
            {**row, "id": f"{row['id']}-s{j}"}
            for row in self.generator.generate(n)
            for j in range(self.samples)
        ]


class NumberPromptGenerator(PromptGenerator):
    """Seeded generator of number-continuation prompts, the task of the paper's number-sequence experiments.

    `generate(n)` returns rows `{"id": f"{id_prefix}{i:06d}", "prompt": text}`; the same arguments give the same
    rows on any machine. Variant lists default to the module constants and can be replaced (each variant must
    use the same placeholders as the defaults).
    """

    def __init__(
        self,
        seed: int = 0,
        min_seed_count: int = 3,
        max_seed_count: int = 8,
        min_seed_value: int = 100,
        max_seed_value: int = 999,
        answer_count: int = 10,
        answer_max_digits: int = 3,
        id_prefix: str = "numbers-",
        lead_ins: Sequence[str] = LEAD_INS,
        count_qualifiers: Sequence[str] = COUNT_QUALIFIERS,
        digit_descriptors: Sequence[str] = DIGIT_DESCRIPTORS,
        instruction_templates: Sequence[str] = INSTRUCTION_TEMPLATES,
        format_requests: Sequence[str] = FORMAT_REQUESTS,
        closings: Sequence[str] = NUMBERS_ONLY_CLOSINGS,
    ) -> None:
        """
        Args:
            seed: seed of the prompt stream (independent of any global seed).
            min_seed_count: fewest seed numbers shown in a prompt (k is uniform in min..max).
            max_seed_count: most seed numbers shown in a prompt.
            min_seed_value: smallest seed number (values uniform in min..max).
            max_seed_value: largest seed number.
            answer_count: how many new numbers the prompt allows at most.
            answer_max_digits: how many digits each new number may have at most.
            id_prefix: prefix of each row's id; the prompt index follows, zero-padded to six digits.
            lead_ins: lead-in variants, each with a `{numbers}` placeholder.
            count_qualifiers: phrases placed before the answer count ("at most", "up to", ...).
            digit_descriptors: digit-limit phrases, each with a `{max_digits}` placeholder.
            instruction_templates: instructions with `{qualifier}`, `{count}` and `{digits}` placeholders.
            format_requests: answer-format requests (no placeholders).
            closings: "numbers only" requests (no placeholders).
        """
        _check_range("seed number count (min_seed_count..max_seed_count)", min_seed_count, max_seed_count, 1)
        _check_range("seed number value (min_seed_value..max_seed_value)", min_seed_value, max_seed_value, 0)
        for name, value in (("answer_count", answer_count), ("answer_max_digits", answer_max_digits)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.seed = seed
        self.min_seed_count = min_seed_count
        self.max_seed_count = max_seed_count
        self.min_seed_value = min_seed_value
        self.max_seed_value = max_seed_value
        self.answer_count = answer_count
        self.answer_max_digits = answer_max_digits
        self.id_prefix = id_prefix
        self.lead_ins = _check_variants("lead_ins", lead_ins, {"numbers"})
        self.count_qualifiers = _check_variants("count_qualifiers", count_qualifiers, set())
        self.digit_descriptors = _check_variants("digit_descriptors", digit_descriptors, {"max_digits"})
        self.instruction_templates = _check_variants(
            "instruction_templates", instruction_templates, {"qualifier", "count", "digits"}
        )
        self.format_requests = _check_variants("format_requests", format_requests, set())
        self.closings = _check_variants("closings", closings, set())

    def _draw_prompt(self, rng: random.Random) -> str:
        lead_in = _draw_lead_in(
            rng,
            self.min_seed_count,
            self.max_seed_count,
            self.min_seed_value,
            self.max_seed_value,
            self.lead_ins,
        )
        qualifier = rng.choice(self.count_qualifiers)
        digits = rng.choice(self.digit_descriptors).format(max_digits=self.answer_max_digits)
        instruction = rng.choice(self.instruction_templates).format(
            qualifier=qualifier, count=self.answer_count, digits=digits
        )
        return " ".join((lead_in, instruction, rng.choice(self.format_requests), rng.choice(self.closings)))

    def iter_prompts(self, n: int) -> Iterator[dict[str, Any]]:
        """The first n prompts of this seed's stream, as `{"id", "prompt"}` rows, drawn one at a time."""
        check_prompt_count(n)
        rng = random.Random(self.seed)
        return ({"id": f"{self.id_prefix}{i:06d}", "prompt": self._draw_prompt(rng)} for i in range(n))

    def generate(self, n: int) -> list[dict[str, Any]]:
        """The first n prompts as a list (`iter_prompts` for many)."""
        return list(self.iter_prompts(n))

    def write(self, path: str | Path, n: int) -> Path:
        """Stream the first n prompts to a JSONL file (atomically: temp file, then rename) and return its path.

        Memory stays flat whatever n: rows go to the file as they are drawn.
        """
        path = Path(path)
        write_jsonl_atomic(path, self.iter_prompts(n))
        return path


def main(argv: list[str]) -> None:
    """`subliminal-pl prompts`: write a seeded number-sequence prompts JSONL."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="subliminal-pl prompts",
        description="Write seeded number-sequence prompts (one {id, prompt} object per line) to a JSONL file.",
        default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--output", type=str, required=True, help="JSONL file to write")
    parser.add_argument("--count", type=int, default=30000, help="number of prompts (the paper: 30000)")
    # Generator options sit at the top level (--seed, --answer_count, ...), like the docstring's example.
    parser.add_class_arguments(NumberPromptGenerator, nested_key=None)
    args = parser.parse_args(argv).as_dict()
    if args["count"] < 1:
        sys.exit(f"subliminal-pl prompts: --count must be at least 1, got {args['count']}")
    options = inspect.signature(NumberPromptGenerator).parameters
    try:
        generator = NumberPromptGenerator(**{key: args[key] for key in options})
    except ValueError as err:
        sys.exit(f"subliminal-pl prompts: {err}")
    path = generator.write(args["output"], args["count"])
    print(f"wrote {args['count']} prompts (seed {generator.seed}) to {path}")
