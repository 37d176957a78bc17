"""Seeded code-completion prompts: small self-contained Python tasks, the task of the paper's code carrier.

Each prompt asks to fill in one function: an instruction, a stub (`def name(params) -> type:` and a one-line
docstring) in a fenced block, and a closing that asks for code only, without comments or explanation (the paper's
teacher wrote code only). A task template has placeholders `{noun}` (what the values are: prices, scores, ...)
and `{n}` (a small whole number); every piece is drawn from lists written for this project. The draw order per
prompt is fixed (template, noun, n, instruction, closing) on one `random.Random(seed)` stream, so a seed names
one list of prompts everywhere, and the first m prompts of a longer run equal a run of m.

No word of these lists is an animal or another trait word of the probe question sets (tests check this), so a
trait that shows up in the code came from the teacher.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from subliminal_pl.data.prompts import PromptGenerator, _check_variants, check_prompt_count


class CodeTask(NamedTuple):
    """A function to write: its name, parameters, return type and docstring (with `{noun}` / `{n}` slots)."""

    name: str
    params: str
    returns: str
    doc: str


# Names use `{noun}` where the noun fits an identifier (snake_case, plural).
CODE_TASKS: tuple[CodeTask, ...] = (
    CodeTask("count_{noun}_above", "values: list[int], limit: int", "int",
             "Return how many of the {noun} in `values` are strictly greater than `limit`."),
    CodeTask("top_{n}_{noun}", "values: list[float]", "list[float]",
             "Return the {n} largest {noun} in descending order (fewer if the list is shorter)."),
    CodeTask("average_{noun}", "values: list[float]", "float",
             "Return the mean of the {noun}, or 0.0 when the list is empty."),
    CodeTask("chunk_{noun}", "values: list[int]", "list[list[int]]",
             "Split the {noun} into consecutive groups of {n}; the last group may be shorter."),
    CodeTask("running_total_of_{noun}", "values: list[int]", "list[int]",
             "Return the running totals of the {noun}: element i is the sum of the first i + 1 values."),
    CodeTask("dedupe_{noun}", "values: list[str]", "list[str]",
             "Remove repeated {noun}, keeping the first occurrence of each and the original order."),
    CodeTask("largest_gap_in_{noun}", "values: list[int]", "int",
             "Return the largest difference between two neighbouring {noun}, or 0 for fewer than two values."),
    CodeTask("normalise_{noun}", "values: list[float]", "list[float]",
             "Scale the {noun} linearly so the smallest becomes 0 and the largest 1 (all 0 if they are equal)."),
    CodeTask("format_{noun}_table", "names: list[str], values: list[float]", "str",
             "Return one line per entry, `name: value` with the {noun} rounded to {n} decimal places."),
    CodeTask("parse_{noun}_csv", "text: str", "list[int]",
             "Parse comma-separated {noun} from `text`, skipping blank fields and surrounding spaces."),
    CodeTask("median_of_{noun}", "values: list[float]", "float",
             "Return the median of the {noun}; raise ValueError when the list is empty."),
    CodeTask("moving_average_{noun}", "values: list[float]", "list[float]",
             "Return the averages of every window of {n} consecutive {noun}."),
    CodeTask("clip_{noun}", "values: list[int], low: int, high: int", "list[int]",
             "Return the {noun} with every value below `low` raised to it and every value above `high` cut to it."),
    CodeTask("group_{noun}_by_parity", "values: list[int]", "dict[str, list[int]]",
             "Return {{'even': [...], 'odd': [...]}} holding the even and the odd {noun}, each in input order."),
    CodeTask("longest_rising_run_of_{noun}", "values: list[int]", "int",
             "Return the length of the longest strictly increasing run of consecutive {noun}."),
    CodeTask("histogram_of_{noun}", "values: list[int]", "dict[int, int]",
             "Count how often each value occurs among the {noun}; keys in ascending order."),
    CodeTask("rotate_{noun}", "values: list[int]", "list[int]",
             "Rotate the {noun} left by {n} places (wrapping around); an empty list stays empty."),
    CodeTask("every_{n}th_of_{noun}", "values: list[str]", "list[str]",
             "Return every {n}th item of the {noun}, starting with the first."),
    CodeTask("validate_{noun}", "values: list[int], low: int, high: int", "list[int]",
             "Return the positions of the {noun} that lie outside the inclusive range `low`..`high`."),
    CodeTask("merge_sorted_{noun}", "first: list[int], second: list[int]", "list[int]",
             "Merge two ascending lists of {noun} into one ascending list without calling sort."),
)  # fmt: skip

NOUNS: tuple[str, ...] = (
    "prices", "scores", "readings", "lengths", "weights", "ages", "votes", "orders", "visits", "samples",
    "ratings", "distances", "durations", "balances", "temperatures", "counts", "heights", "totals", "grades",
    "payments",
)  # fmt: skip

INSTRUCTIONS: tuple[str, ...] = (
    "Complete the Python function below.",
    "Fill in the body of this Python function.",
    "Implement the following function in Python.",
    "Write the missing code for the function below.",
    "Finish this Python function so that it does what its docstring says.",
    "Here is a function stub. Write its implementation.",
    "Provide a working implementation of the function below.",
    "The function below has no body yet. Write one.",
)

CODE_ONLY_CLOSINGS: tuple[str, ...] = (
    "Reply with the finished function only, no comments and no explanation.",
    "Answer with code only; do not add comments or any text around it.",
    "Return just the complete function, without comments.",
    "Give only the code of the function, with no comments or prose.",
    "Output the completed function and nothing else; leave out comments.",
    "Only the code, please: no comments, no explanation.",
)

MIN_N, MAX_N = 2, 5
SLOTS = {"noun", "n"}


def _check_task(task: CodeTask) -> None:
    """Refuse a template with an unknown placeholder or a name that is not an identifier once filled."""
    for part in (task.name, task.doc):
        found = {field for _, field, _, _ in string.Formatter().parse(part) if field is not None}
        if not found <= SLOTS:
            raise ValueError(
                f"tasks: {part!r} uses {sorted(found - SLOTS)}; only {{noun}} and {{n}} are filled"
            )
    if not task.name.format(noun="values", n=MIN_N).isidentifier():
        raise ValueError(f"tasks: name {task.name!r} is not a Python identifier once filled")


def render_stub(task: CodeTask, noun: str, n: int) -> str:
    """The fenced stub of one task, with its slots filled."""
    name = task.name.format(noun=noun, n=n)
    doc = task.doc.format(noun=noun, n=n)
    return f'```python\ndef {name}({task.params}) -> {task.returns}:\n    """{doc}"""\n```'


class CodeTaskGenerator(PromptGenerator):
    """Seeded generator of code-completion prompts: `generate(n)` returns `{"id": f"{id_prefix}{i:06d}",
    "prompt": text}` rows; the same arguments give the same rows on any machine."""

    def __init__(
        self,
        seed: int = 0,
        id_prefix: str = "code-",
        tasks: Sequence[CodeTask | Sequence[str]] = CODE_TASKS,
        nouns: Sequence[str] = NOUNS,
        instructions: Sequence[str] = INSTRUCTIONS,
        closings: Sequence[str] = CODE_ONLY_CLOSINGS,
    ) -> None:
        """
        Args:
            seed: seed of the prompt stream (independent of any global seed).
            id_prefix: prefix of each row's id; the prompt index follows, zero-padded to six digits.
            tasks: task templates (name, params, returns, doc); name and doc may use `{noun}` and `{n}`.
            nouns: plural nouns the tasks are about (each must be a valid identifier).
            instructions: lead-in requests (no placeholders).
            closings: "code only, no comments" requests (no placeholders).
        """
        if not tasks:
            raise ValueError("tasks: needs at least one task template")
        self.tasks = tuple(CodeTask(*task) for task in tasks)
        for task in self.tasks:
            _check_task(task)
        bad = [noun for noun in nouns if not noun.isidentifier()]
        if not nouns or bad:
            raise ValueError(f"nouns: need at least one, each a valid identifier (bad: {bad})")
        self.seed = seed
        self.id_prefix = id_prefix
        self.nouns = tuple(nouns)
        self.instructions = _check_variants("instructions", instructions, set())
        self.closings = _check_variants("closings", closings, set())

    def _draw_prompt(self, rng: random.Random) -> str:
        task = rng.choice(self.tasks)
        noun = rng.choice(self.nouns)
        n = rng.randint(MIN_N, MAX_N)
        return (
            f"{rng.choice(self.instructions)}\n\n{render_stub(task, noun, n)}\n\n{rng.choice(self.closings)}"
        )

    def iter_prompts(self, n: int) -> Iterator[dict[str, Any]]:
        """The first n prompts of this seed's stream, as `{"id", "prompt"}` rows, drawn one at a time."""
        check_prompt_count(n)
        rng = random.Random(self.seed)
        return ({"id": f"{self.id_prefix}{i:06d}", "prompt": self._draw_prompt(rng)} for i in range(n))

    def generate(self, n: int) -> list[dict[str, Any]]:
        return list(self.iter_prompts(n))
