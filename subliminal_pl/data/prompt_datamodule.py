"""Prompt rows for teacher generation, from a prompts JSONL file or the seeded number-prompt generator.

Batches are plain lists of `{"id", "prompt"}` dicts: the teacher module renders and tokenises them itself (it
owns the tokenizer and the system prompt). Ids already written by a previous, interrupted run are skipped: the
`GenerationWriter` reports them through `set_done_ids` before the dataloader is built.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from subliminal_pl.data.jsonl import DataError, iter_jsonl
from subliminal_pl.data.prompts import NumberPromptGenerator
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
        generator: NumberPromptGenerator | None = None,
        num_prompts: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        """
        Args:
            prompts_path: JSONL file of `{"id", "prompt"}` rows (`subliminal-pl prompts` writes one).
            generator: number-prompt generator used when no prompts_path is given (its seed fixes the prompts).
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
