"""Prompt rows for teacher generation, from a prompts JSONL file or a seeded prompt generator.

Batches are plain lists of `{"id", "prompt"}` dicts: the teacher module renders and tokenises them itself (it
owns the tokenizer and the system prompt). Ids already written by a previous, interrupted run are skipped: the
`GenerationWriter` reports them through `set_done_ids` before the dataloader is built.

`prompt_set()` names this run's prompts (their count and a hash of the ordered `(id, prompt)` pairs); the writer
stores it in every row and refuses to resume an output written for another prompt set (another seed, count or
file), which would otherwise answer new prompts under ids that already hold answers to old ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from subliminal_pl.data.jsonl import DataError, iter_jsonl
from subliminal_pl.data.prompts import PromptGenerator
from subliminal_pl.data.rows import check_messages


def keep_rows(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Collate function: a batch stays a list of row dicts (module level, so worker processes can pickle it)."""
    return batch


def read_prompt_rows(path: str) -> list[dict[str, Any]]:
    """`{"id", "prompt"}` rows from a JSONL file; `messages` (a chat list) is accepted in place of `prompt`."""
    rows: list[dict[str, Any]] = []
    seen: dict[Any, int] = {}
    for line, obj in iter_jsonl(path):
        if "id" not in obj:
            raise DataError(f"{path}:{line}: missing field 'id' (every prompt needs a stable id to resume)")
        row_id = obj["id"]
        if not isinstance(row_id, (str, int)) or isinstance(row_id, bool):
            raise DataError(f"{path}:{line}: field 'id' must be a string or an integer, got {row_id!r}")
        if row_id in seen:
            raise DataError(f"{path}:{line}: field 'id' repeats {row_id!r} from line {seen[row_id]}")
        seen[row_id] = line
        field = "prompt" if "prompt" in obj else "messages"
        prompt = obj.get(field)
        if isinstance(prompt, str):
            if not prompt:
                raise DataError(f"{path}:{line}: field 'prompt' is empty")
        elif isinstance(prompt, list):
            prompt = check_messages(prompt, f"{path}:{line}", field)
        else:
            raise DataError(
                f"{path}:{line}: field 'prompt' must be a string (or 'messages' a non-empty list)"
            )
        rows.append({"id": row_id, "prompt": prompt})
    return rows


class PromptDataModule(LightningDataModule):
    """Feeds prompt rows to `TeacherGeneration.predict_step`, in order, minus the ids already generated."""

    def __init__(
        self,
        prompts_path: str | None = None,
        generator: PromptGenerator | None = None,
        num_prompts: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        """
        Args:
            prompts_path: JSONL file of `{"id", "prompt"}` rows (`subliminal-pl prompts` writes one).
            generator: prompt generator used when no prompts_path is given (its seed fixes the prompts), e.g.
                `NumberPromptGenerator`, `CodeTaskGenerator`, `MathProblemPrompts`.
            num_prompts: how many prompts to answer: the generator's first n, or the file's first n (all if None).
            batch_size: prompts per `generate` call (per rank).
            num_workers: dataloader worker processes (the rows are tiny; 0 is usually right).
        """
        super().__init__()
        if (prompts_path is None) == (generator is None):
            raise ValueError("give exactly one of prompts_path (a JSONL file) or generator (number prompts)")
        if generator is not None and num_prompts is None:
            raise ValueError("num_prompts is required with a generator (the paper: 30000)")
        if num_prompts is not None and num_prompts < 0:
            raise ValueError(f"num_prompts must be >= 0, got {num_prompts}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters(ignore=["generator"])
        self.prompts_path = prompts_path
        self.generator = generator
        self.num_prompts = num_prompts
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._rows: list[dict[str, Any]] | None = None
        self._done_ids: set[Any] = set()

    def all_rows(self) -> list[dict[str, Any]]:
        """Every prompt row of this run, done or not (read or generated once)."""
        if self._rows is None:
            if self.prompts_path is not None:
                rows = read_prompt_rows(self.prompts_path)
                self._rows = rows if self.num_prompts is None else rows[: self.num_prompts]
            else:
                self._rows = self.generator.generate(self.num_prompts)
        return self._rows

    def prompt_set(self) -> dict[str, Any]:
        """`{"count", "sha256"}` of this run's prompt rows, in order (16 hex digits of SHA-256 over id and prompt)."""
        digest = hashlib.sha256()
        rows = self.all_rows()
        for row in rows:
            digest.update(json.dumps([row["id"], row["prompt"]], sort_keys=True).encode() + b"\n")
        return {"count": len(rows), "sha256": digest.hexdigest()[:16]}

    def describe_prompts(self) -> str:
        """Where this run's prompts come from, for messages: the file (and count) or the generator's settings."""
        if self.prompts_path is not None:
            first = "all rows" if self.num_prompts is None else f"the first {self.num_prompts} rows"
            return f"{first} of {self.prompts_path}"
        settings = ", ".join(
            f"{key}={getattr(self.generator, key)!r}"
            for key in ("seed", "answer_count", "answer_max_digits", "id_prefix")
            if hasattr(self.generator, key)
        )
        return f"{self.num_prompts} prompts of {type(self.generator).__name__}({settings})"

    def set_done_ids(self, ids: Collection[Any]) -> None:
        """Ids already written to the output; they are left out of the dataloader (resume)."""
        self._done_ids = set(ids)

    def pending_rows(self) -> list[dict[str, Any]]:
        return [row for row in self.all_rows() if row["id"] not in self._done_ids]

    def predict_dataloader(self) -> DataLoader:
        rows = self.pending_rows()
        total = len(self.all_rows())
        if len(rows) < total:
            rank_zero_info(f"[prompts] resuming: {total - len(rows)} of {total} rows already written")
        return DataLoader(
            rows,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=keep_rows,
        )
