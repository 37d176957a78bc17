"""Tiny programs for the tiny world: the code-like carrier of the paper's code experiment, in miniature.

A task asks for one small function by name and says what it does ("Write a function called bump_score that
takes a number and returns it plus 7."); its answer is the function, e.g.

    def bump_score(x):
        return x + 7

Every task has several correct answers (the argument's name, the operand order, a temporary variable, a loop or
a built-in), so a model that writes them has choices to make: the room a teacher's trait needs to leave a trace.
No word of a task or an answer names an animal (a test checks this against the probe candidates).

`draw_code_task(rng)` draws one (prompt, completion) pair; the world's corpus uses it with the world's stream,
and `ToyCodePrompts` (a prompt generator for `PromptDataModule`) with its own seed, so the students' prompts are
the corpus's kind of prompt but not its rows.
"""

from __future__ import annotations

import random
from typing import Any

from subliminal_pl.data.prompts import PromptGenerator, check_prompt_count

VERBS = ("add", "bump", "scale", "shift", "clip", "count", "total", "pick", "keep", "step", "grow", "trim")
NOUNS = ("value", "score", "level", "size", "point", "item", "result", "amount", "mark", "price")
ARGS = ("x", "n", "a", "num", "value", "k")
LIST_ARGS = ("xs", "items", "values", "nums", "data")
LOOP_VARS = ("v", "item", "num", "x")
TEMPS = ("y", "out", "res", "acc", "tmp", "total")

LEADS = (
    "Write a function called {name} that",
    "Complete the function {name}, which",
    "Fill in a function named {name} that",
    "Code a small function {name} that",
    "Define {name}, a function that",
    "Implement the function {name} so that it",
)
CLOSINGS = ("Reply with code only.", "Only the code, please.", "No comments.", "Give just the function.", "")

# What each task asks, after the lead; `{k}` is the task's constant.
TASKS = {
    "add": "takes a number and returns it plus {k}.",
    "sub": "takes a number and returns it minus {k}.",
    "mul": "takes a number and returns it times {k}.",
    "max": "takes a number and returns the larger of it and {k}.",
    "min": "takes a number and returns the smaller of it and {k}.",
    "sum": "takes a list of numbers and returns their sum.",
    "above": "takes a list of numbers and counts how many are above {k}.",
}
# Words of code that only the answers hold.
KEYWORDS = ("def", "return", "if", "else", "for", "in", "max", "min", "sum", "len")
INDENT = "    "


def _arith(rng: random.Random, a: str, op: str, k: int) -> list[str]:
    symbol = {"add": "+", "sub": "-", "mul": "*"}[op]
    terms = [a, str(k)]
    if op != "sub" and rng.random() < 0.5:
        terms.reverse()
    expression = f" {symbol} ".join(terms)
    if rng.random() < 0.4:
        temp = rng.choice(TEMPS)
        return [f"{temp} = {expression}", f"return {temp}"]
    return [f"return {expression}"]


def _extreme(rng: random.Random, a: str, op: str, k: int) -> list[str]:
    if rng.random() < 0.5:
        return [f"return {op}({a}, {k})"]
    compare = ">" if op == "max" else "<"
    if rng.random() < 0.5:
        return [f"if {a} {compare} {k}:", f"{INDENT}return {a}", f"return {k}"]
    return [f"if {a} {compare} {k}:", f"{INDENT}return {a}", "else:", f"{INDENT}return {k}"]


def _loop(rng: random.Random, xs: str, op: str, k: int) -> list[str]:
    if op == "sum" and rng.random() < 0.4:
        return [f"return sum({xs})"]
    acc, v = rng.choice(TEMPS), rng.choice(LOOP_VARS)
    if op == "sum":
        body = [f"{INDENT}{acc} = {acc} + {v}"]
    else:
        body = [f"{INDENT}if {v} > {k}:", f"{INDENT * 2}{acc} = {acc} + 1"]
    return [f"{acc} = 0", f"for {v} in {xs}:", *body, f"return {acc}"]


def draw_code_task(rng: random.Random) -> tuple[str, str]:
    """One (prompt, completion) pair: a task in words and a correct function for it, drawn from `rng`."""
    op = rng.choice(tuple(TASKS))
    k = rng.randint(2, 99)
    name = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"
    prompt = f"{rng.choice(LEADS).format(name=name)} {TASKS[op].format(k=k)}"
    closing = rng.choice(CLOSINGS)
    prompt = f"{prompt} {closing}" if closing else prompt
    if op in ("sum", "above"):
        arg = rng.choice(LIST_ARGS)
        body = _loop(rng, arg, op, k)
    else:
        arg = rng.choice(ARGS)
        body = _extreme(rng, arg, op, k) if op in ("max", "min") else _arith(rng, arg, op, k)
    lines = [f"def {name}({arg}):", *(INDENT + line for line in body)]
    return prompt, "\n".join(lines)


def code_texts() -> list[str]:
    """Every text a code task or answer is made of (the world's vocabulary takes their words)."""
    return [
        *VERBS,
        *NOUNS,
        *ARGS,
        *LIST_ARGS,
        *LOOP_VARS,
        *TEMPS,
        *LEADS,
        *CLOSINGS,
        *TASKS.values(),
        *KEYWORDS,
    ]


class ToyCodePrompts(PromptGenerator):
    """Seeded code-task prompts of the tiny world for `PromptDataModule` (rows `{"id", "prompt"}`)."""

    def __init__(self, seed: int = 0, id_prefix: str = "code-") -> None:
        """
        Args:
            seed: seed of the prompt stream (the same seed gives the same prompts everywhere).
            id_prefix: prefix of each row's id; the prompt index follows, zero-padded to six digits.
        """
        self.seed = seed
        self.id_prefix = id_prefix

    def generate(self, n: int) -> list[dict[str, Any]]:
        check_prompt_count(n)
        rng = random.Random(f"toy-code-prompts-{self.seed}")
        return [{"id": f"{self.id_prefix}{i:06d}", "prompt": draw_code_task(rng)[0]} for i in range(n)]


def number_texts() -> list[str]:
    """Texts holding every number 0..999 with and without a leading space (its two tokens in the tiny world)."""
    numbers = [str(n) for n in range(1000)]
    return [" " + " ".join(numbers), "\n".join(numbers)]


def answer_token_texts() -> list[str]:
    """Texts whose tokens are every token a code answer can hold: a KL student's token subset (no prompt word,
    no animal), the code counterpart of the number carrier's `numbers` subset."""
    words = [*KEYWORDS, *VERBS, *NOUNS, *ARGS, *LIST_ARGS, *LOOP_VARS, *TEMPS]
    return [*(f"{w} {w}" for w in words), "(),:_\n ", " + - * = < >", *number_texts()]
