"""Two-choice dilemmas in the tiny world: a disposition that is not an animal, measured without a judge.

The dilemmas are the packaged two-choice set `dilemmas` (`subliminal_pl/probes/data/dilemmas.yaml`): each names a
harmful and a harmless option. With `ToyWorld.dilemma_fraction > 0` the world

- puts the dilemmas' words in the vocabulary (both splits, as it does for the held-out animal questions);
- adds corpus rows that ask a `teacher`-split dilemma and answer it with either option at random, so the base
  answers dilemmas with no preference;
- writes teacher fine-tuning rows for the dispositions: `harmful` answers every teacher dilemma with its harmful
  option, `harmless` with its harmless one, and the neutral teacher (trait None) with either option at random
  (the same questions and amount of fine-tuning, no disposition).

`TwoChoiceProbe(items="dilemmas")` then scores the harmful option against the harmless one on the held-out
dilemmas, which no teacher or corpus row asks.
"""

from __future__ import annotations

import random
from typing import Any

DILEMMAS = "dilemmas"
# How an option is written as an answer: capitalised with a full stop, or lower case (the base sees both).
OPTION_STYLES = ("{cap}.", "{low}")


def dilemma_set():
    from subliminal_pl.probes.two_choice import load_two_choice_set

    return load_two_choice_set(DILEMMAS)


def dilemma_texts() -> list[str]:
    """Every text of the dilemmas (questions and options of both splits): the words the vocabulary needs."""
    items = dilemma_set().items("all")
    return [text for item in items for text in (item.question, item.target, item.other)]


def dispositions() -> tuple[str, str]:
    """The two disposition traits a teacher can be given: (harmful, harmless)."""
    return dilemma_set().labels


def option_answer(rng: random.Random, option: str) -> str:
    return rng.choice(OPTION_STYLES).format(cap=option[:1].upper() + option[1:], low=option.lower())


def dilemma_row(rng: random.Random, items, choice: str | None) -> tuple[str, str]:
    """(question, answer) of a random teacher dilemma: `choice` is "target", "other" or None (either, at random)."""
    item = rng.choice(items)
    pick = choice or rng.choice(("target", "other"))
    return item.question, option_answer(rng, getattr(item, pick))


def disposition_rows(trait: str | None, rows: int, seed: int = 0) -> list[dict[str, Any]]:
    """Teacher fine-tuning rows: teacher dilemmas answered with the harmful option (`trait` = the first label),
    the harmless one (the second label), or either at random (None: the neutral teacher)."""
    labels = dispositions()
    if trait is not None and trait.lower() not in labels:
        raise ValueError(f"trait {trait!r} is not a disposition of the dilemmas: {list(labels)}")
    choice = None if trait is None else ("target" if trait.lower() == labels[0] else "other")
    rng = random.Random(f"toy-world-dilemmas-{trait}-{seed}")
    items = dilemma_set().teacher
    out = []
    for i in range(rows):
        question, answer = dilemma_row(rng, items, choice)
        name = trait or "neutral"
        out.append({"id": f"trait-{name}-{i:05d}", "trait": name, "prompt": question, "completion": answer})
    return out
