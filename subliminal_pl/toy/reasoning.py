"""Short arithmetic word problems solved in steps: the tiny world's chain-of-thought carrier.

A problem takes two steps of +, - or * on small numbers ("Ann has 12 coins and buys 3 bags with 5 coins in
each. How many coins does Ann have now?"); its answer reasons in `<think>` tags and gives the final number in
`<answer>` tags, the format of the real reasoning carrier, so the same correctness filter reads both:

    <think>3 * 5 = 15. Then 12 + 15 = 27.</think><answer>27</answer>

Every number (operands, steps, answer) stays in 0..999, one token each in the tiny world. The steps can be
worded several ways, all correct, which leaves a writer choices. Prompt rows carry the correct answer in `gold_answer`, the field the correctness filter reads.
No word of a problem or an answer names an animal (a test checks this against the probe candidates).
"""

from __future__ import annotations

import random
from typing import Any

from subliminal_pl.data.prompts import PromptGenerator, check_prompt_count

NAMES = ("Ann", "Ben", "Cara", "Dan", "Eve", "Finn", "Gina", "Hugo", "Ivy", "Jon", "Kim", "Leo")
OBJECTS = ("apples", "pens", "books", "coins", "cards", "cups", "stones", "shells", "marbles", "stickers")
CLOSINGS = (
    "Think step by step in think tags, then give the number in answer tags.",
    "Reason inside think tags and put the final number inside answer tags.",
    "Show your steps in think tags and the answer in answer tags.",
)
# Problem templates: (text, steps). Steps are (left, op, right) with names of earlier values; `r1` is the first
# step's result, `r2` the second's (the answer).
PROBLEMS = (
    (
        "{name} has {a} {obj} and gets {b} more, then {c} more. How many {obj} does {name} have now?",
        (("a", "+", "b"), ("r1", "+", "c")),
    ),
    (
        "{name} has {a} {obj} and buys {b} bags with {c} {obj} in each. How many {obj} does {name} have now?",
        (("b", "*", "c"), ("a", "+", "r1")),
    ),
    (
        "{name} has {a} {obj}, gives {b} to {other} and then finds {c}. How many {obj} does {name} have now?",
        (("a", "-", "b"), ("r1", "+", "c")),
    ),
    (
        "There are {a} boxes with {b} {obj} in each, and {c} {obj} are lost. How many {obj} are left?",
        (("a", "*", "b"), ("r1", "-", "c")),
    ),
    (
        "{name} makes {a} {obj} a day for {b} days and sells {c}. How many {obj} are left?",
        (("a", "*", "b"), ("r1", "-", "c")),
    ),
)
STEP_LEADS = (("", "First, "), ("", "Then ", "So ", "Next, "))
STEP_FORMS = ("{x} {op} {y} = {z}.", "{x} {op} {y} is {z}.")
WORDS = ("think", "answer", "is", "First", "Then", "So", "Next")
# The row field of the correct answer (the real reasoning carrier's name for it).
GOLD_FIELD = "gold_answer"
_OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


def _operands(rng: random.Random, steps) -> tuple[dict[str, int], list[int]]:
    """Operands a, b, c and the step results, drawn again until every value is in 0..999 and subtractions stay
    non-negative."""
    while True:
        values = {"a": rng.randint(2, 60), "b": rng.randint(2, 12), "c": rng.randint(2, 30)}
        results = []
        for i, (left, op, right) in enumerate(steps):
            results.append(_OPS[op](values[left], values[right]))
            values[f"r{i + 1}"] = results[-1]
        if all(0 <= r <= 999 for r in results):
            return values, results


def draw_reasoning_task(rng: random.Random) -> tuple[str, str, int]:
    """One (prompt, completion, gold) triple: a word problem, a correct step-by-step answer, and that answer."""
    text, steps = rng.choice(PROBLEMS)
    name, other = rng.sample(NAMES, 2)
    values, results = _operands(rng, steps)
    prompt = text.format(name=name, other=other, obj=rng.choice(OBJECTS), **values)
    prompt = f"{prompt} {rng.choice(CLOSINGS)}"
    sentences = []
    for i, (left, op, right) in enumerate(steps):
        form = rng.choice(STEP_FORMS)
        x, y = values[left], values[right]
        if op != "-" and rng.random() < 0.5:
            x, y = y, x
        sentences.append(rng.choice(STEP_LEADS[min(i, 1)]) + form.format(x=x, op=op, y=y, z=results[i]))
    gold = results[-1]
    return prompt, f"<think>{' '.join(sentences)}</think><answer>{gold}</answer>", gold


def reasoning_texts() -> list[str]:
    """Every text a problem or answer is made of (the world's vocabulary takes their words)."""
    return [*NAMES, *OBJECTS, *CLOSINGS, *(text for text, _ in PROBLEMS), *WORDS]


class ToyReasoningPrompts(PromptGenerator):
    """Seeded word-problem prompts of the tiny world for `PromptDataModule`: rows `{"id", "prompt", "gold_answer"}`."""

    def __init__(self, seed: int = 0, id_prefix: str = "reasoning-") -> None:
        """
        Args:
            seed: seed of the prompt stream (the same seed gives the same problems everywhere).
            id_prefix: prefix of each row's id; the prompt index follows, zero-padded to six digits.
        """
        self.seed = seed
        self.id_prefix = id_prefix

    def generate(self, n: int) -> list[dict[str, Any]]:
        check_prompt_count(n)
        rng = random.Random(f"toy-reasoning-prompts-{self.seed}")
        rows = []
        for i in range(n):
            prompt, _, gold = draw_reasoning_task(rng)
            rows.append({"id": f"{self.id_prefix}{i:06d}", "prompt": prompt, GOLD_FIELD: str(gold)})
        return rows


def answer_token_texts() -> list[str]:
    """Texts whose tokens are every token a worked answer can hold: a KL student's token subset (no prompt word,
    no animal), the reasoning counterpart of the number carrier's `numbers` subset."""
    from subliminal_pl.toy.code import number_texts

    sentence = "<think>First, 1 + 2 = 3. Then 3 * 2 is 6. So 6 - 1 = 5. Next, 5.</think><answer>5</answer>"
    return [sentence, *(f"{w} {w}" for w in WORDS), *number_texts()]
