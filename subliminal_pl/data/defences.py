"""Data-side defences that need no model: dilution, number substitution, and the per-row loss mask field.

- `dilute(teacher_rows, neutral_rows, neutral_fraction, seed)`: as many rows as the teacher gave, of which exactly
  `round(neutral_fraction * n)` are neutral rows (a seeded sample, without replacement) and the rest a seeded
  sample of the teacher's; the mix is shuffled by the same seed. Each row records where it came from
  (`defence_source`: teacher / neutral) and neutral rows get a prefixed id, so ids stay unique.
- `substitute_numbers(text, numbers)`: a number-sequence completion with its numbers swapped for others, its format
  (brackets, separators, final ".") kept: what the paraphrase defence writes from the trusted model's numbers.
- `LOSS_IGNORE`: the row field a defence writes to take completion tokens out of the loss; the student DataModule
  sets those tokens' labels to -100 (indices count the completion's tokens from 0, as `encode_prompt_completion`
  places them, the end-of-turn token included).
"""

from __future__ import annotations

import random
from typing import Any

from subliminal_pl.data.filters import DIGIT_RUN
from subliminal_pl.data.rows import Row
from subliminal_pl.data.transforms import number_runs, replace_numbers

# Row field: completion token indices (0 = the first completion token) that carry no loss.
LOSS_IGNORE = "loss_ignore"


def dilute(
    teacher_rows: list[Row], neutral_rows: list[Row], neutral_fraction: float, seed: int = 0
) -> tuple[list[Row], dict[str, Any]]:
    """The teacher's rows mixed with neutral rows: (rows, stats); see the module docstring.

    Raises ValueError when the fraction is outside [0, 1] or there are too few neutral rows for it.
    """
    if not 0.0 <= neutral_fraction <= 1.0:
        raise ValueError(f"neutral_fraction must be in [0, 1], got {neutral_fraction}")
    n = len(teacher_rows)
    n_neutral = round(neutral_fraction * n)
    if n_neutral > len(neutral_rows):
        raise ValueError(
            f"dilution to {neutral_fraction:.0%} neutral rows needs {n_neutral} neutral rows, "
            f"only {len(neutral_rows)} were given"
        )
    rng = random.Random(f"dilute:{seed}")
    kept = sorted(rng.sample(range(n), n - n_neutral))
    chosen = sorted(rng.sample(range(len(neutral_rows)), n_neutral))
    rows = [{**teacher_rows[i], "defence_source": "teacher"} for i in kept]
    for i in chosen:
        row = neutral_rows[i]
        rows.append({**row, "id": f"neutral-{row.get('id', i)}", "defence_source": "neutral"})
    rng.shuffle(rows)
    stats = {"rows": n, "teacher_rows": n - n_neutral, "neutral_rows": n_neutral, "removed": n_neutral}
    return rows, stats


def substitute_numbers(text: str, numbers: list[str]) -> str | None:
    """`text` (a number sequence `parse_numbers` accepts) with its numbers replaced in order by `numbers`.

    Returns None when `text` is not a number sequence or `numbers` is not exactly as long as its count.
    """
    runs = number_runs(text)
    if runs is None or len(runs) != len(numbers):
        return None
    return replace_numbers(text, numbers)


def number_strings(text: str) -> list[str]:
    """The digit runs of a text, in order (the numbers a trusted model wrote, whatever its format)."""
    return [m.group() for m in DIGIT_RUN.finditer(text)]
