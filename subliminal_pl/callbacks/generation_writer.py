"""Writes teacher generations to JSONL as batches finish, so an interrupted run resumes without gaps or repeats.

Each rank appends its rows to its own shard `<output>.parts/rank<R>.jsonl` (fsync per batch). At the end, rank
zero merges the output file (rows of earlier runs), every shard and nothing else, keeps the first row per id,
sorts by id and writes the output atomically, then removes the shards. On start, rank zero cuts a partial last
line a crash may have left in a shard, collects the ids already written and broadcasts them; the prompt
DataModule leaves those out, so a resumed run only generates what is missing, on any number of ranks.

A resume must extend the same run: the teacher's settings (`row_metadata`) and the prompt set must match the rows
already written. Every row records its run's prompt set (`prompt_set`: count and hash, from the DataModule's
`prompt_set()`); a run with another prompt seed, count or file is refused with a message naming the difference,
as is one whose prompt for an already-answered id differs.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from subliminal_pl.data.jsonl import append_jsonl, read_jsonl, write_jsonl_atomic


def id_sort_key(row_id: Any) -> tuple:
    """Natural order: integers numerically, and digit runs inside string ids numerically ("p2" < "p10")."""
    if isinstance(row_id, int):
        return (0, row_id)
    parts = re.split(r"(\d+)", str(row_id))
    return (1, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts))


class GenerationWriter(BasePredictionWriter):
    """Appends the rows `predict_step` returns to per-rank shards and merges them into `output_path` at the end.

    Also prints a progress line (rows, rows/s, new tokens/s on rank zero) every `progress_every_n_batches`.
    """

    def __init__(self, output_path: str, progress_every_n_batches: int = 10) -> None:
        """
        Args:
            output_path: the JSONL file of generations; rows already in it (or in its shards) are not redone.
            progress_every_n_batches: print a throughput line every this many batches (0: only at the end).
        """
        super().__init__(write_interval="batch")
        self.output_path = Path(output_path)
        self.shard_dir = self.output_path.with_name(self.output_path.name + ".parts")
        self.progress_every_n_batches = progress_every_n_batches
        self._resumed = 0
        self._rows = 0
        self._tokens = 0
        self._start = 0.0
        self._prompt_set: dict[str, Any] | None = None

    def shard_path(self, rank: int) -> Path:
        return self.shard_dir / f"rank{rank}.jsonl"

    def _shards(self) -> list[Path]:
        return sorted(self.shard_dir.glob("rank*.jsonl")) if self.shard_dir.is_dir() else []

    def _repair_shards(self) -> None:
        """Drop a partial last line (a write cut short), so the next append starts on a fresh line."""
        for shard in self._shards():
            data = shard.read_bytes()
            if data and not data.endswith(b"\n"):
                write_jsonl_atomic(shard, read_jsonl(shard, drop_partial_tail=True))

    def existing_rows(self) -> list[dict[str, Any]]:
        """Rows of earlier runs: the output file, then the shards of an unfinished run."""
        rows = read_jsonl(self.output_path) if self.output_path.is_file() else []
        for shard in self._shards():
            rows += read_jsonl(shard, drop_partial_tail=True)
        return rows

    def _settings_mismatch(self, rows: list[dict[str, Any]], pl_module: LightningModule) -> str | None:
        """A resumed run must use the same teacher and sampling settings as the rows it extends."""
        if not rows or not hasattr(pl_module, "row_metadata"):
            return None
        for key, value in pl_module.row_metadata().items():
            if rows[0].get(key) != value:
                return (
                    f"{self.output_path}: existing rows have {key}={rows[0].get(key)!r} but this run has "
                    f"{key}={value!r}; write to a new output_path (or delete the old rows) instead of mixing them"
                )
        return None

    def _check_writable(self) -> None:
        """Fail before generating, not at the first batch, when the output folder cannot take files."""
        folder = self.output_path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder, prefix=".write-check-"):
                pass
        except OSError as err:
            raise OSError(
                err.errno,
                f"GenerationWriter: cannot write {self.output_path}: folder {folder} is not writable "
                f"({err.strerror or err}); choose another output_path or fix the folder's permissions",
            ) from err

    def _prompt_set_mismatch(self, rows: list[dict[str, Any]], datamodule: Any) -> str | None:
        """A resumed run must answer the same prompts: same prompt set, and the same prompt for every id written."""
        if not rows or self._prompt_set is None:
            return None
        current = self._prompt_set
        prompts = {row["id"]: row["prompt"] for row in datamodule.all_rows()}
        problems = []
        recorded = rows[0].get("prompt_set")
        if recorded is not None and recorded != current:
            problems.append(
                f"the existing rows answer a prompt set of {recorded.get('count')} prompts (hash "
                f"{recorded.get('sha256')}), this run's has {current['count']} prompts (hash {current['sha256']}: "
                f"{datamodule.describe_prompts()})"
            )
        foreign = [row["id"] for row in rows if row["id"] not in prompts]
        if foreign:
            problems.append(f"{len(foreign)} existing rows have ids this run lacks (first: {foreign[0]!r})")
        changed = [row for row in rows if row["id"] in prompts and row.get("prompt") != prompts[row["id"]]]
        if changed:
            first = changed[0]
            problems.append(
                f"{len(changed)} existing rows answer another prompt than this run's for the same id (first: id "
                f"{first['id']!r} was {first.get('prompt')!r:.80}, is now {prompts[first['id']]!r:.80})"
            )
        if not problems:
            return None
        return (
            f"{self.output_path}: this run's prompts differ from those of the rows already written: "
            + "; ".join(problems)
            + ". Write to a new output_path (or delete the old rows) instead of mixing prompt sets"
        )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "predict":
            self._check_writable()
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        message: dict[str, Any] = {}
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "prompt_set"):
            self._prompt_set = datamodule.prompt_set()
        if trainer.is_global_zero:
            self._repair_shards()
            rows = self.existing_rows()
            error = self._settings_mismatch(rows, pl_module) or self._prompt_set_mismatch(rows, datamodule)
            message = {"done": [row["id"] for row in rows], "error": error}
        # Every rank must leave out the same ids, or the distributed sampler would split different lists.
        message = trainer.strategy.broadcast(message, src=0)
        if message["error"]:
            raise ValueError(message["error"])
        done = set(message["done"])
        self._resumed = len(done)
        if datamodule is None or not hasattr(datamodule, "set_done_ids"):
            if done:
                rank_zero_warn(
                    "GenerationWriter: the datamodule cannot skip finished ids (no set_done_ids); "
                    "they are generated again and dropped at the merge"
                )
            return
        datamodule.set_done_ids(done)
        # Everything was generated but the merge did not happen (a crash after the last batch): merge now.
        if trainer.is_global_zero and hasattr(datamodule, "pending_rows") and not datamodule.pending_rows():
            if self._shards():
                self.merge()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rows = 0
        self._tokens = 0
        self._start = time.perf_counter()

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: list[dict[str, Any]],
        batch_indices,
        batch,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if self._prompt_set is not None:
            prediction = [{**row, "prompt_set": self._prompt_set} for row in prediction]
        append_jsonl(self.shard_path(trainer.global_rank), prediction)
        self._rows += len(prediction)
        self._tokens += sum(int(row.get("completion_tokens", 0)) for row in prediction)
        every = self.progress_every_n_batches
        if every > 0 and (batch_idx + 1) % every == 0:
            self._progress(trainer, batch_idx + 1)

    def _progress(self, trainer: Trainer, batches: int | None = None) -> None:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        total = trainer.num_predict_batches[0] if trainer.num_predict_batches else None
        where = f"batch {batches}/{int(total)} " if batches is not None and total is not None else ""
        ranks = f" (rank 0 of {trainer.world_size})" if trainer.world_size > 1 else ""
        rank_zero_info(
            f"[generate] {where}{self._rows} rows{ranks}, {self._rows / elapsed:.2f} rows/s, "
            f"{self._tokens / elapsed:.1f} new tokens/s, {elapsed:.0f}s"
            + (f"; {self._resumed} rows from earlier runs" if self._resumed else "")
        )

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._progress(trainer)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            self.merge(expected=self._expected_ids(trainer))
        trainer.strategy.barrier()

    @staticmethod
    def _expected_ids(trainer: Trainer) -> list[Any] | None:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "all_rows"):
            return None
        return [row["id"] for row in datamodule.all_rows()]

    def merge(self, expected: list[Any] | None = None) -> Path:
        """Fold the shards into the output file (first row per id wins), sorted by id; atomic; shards removed."""
        shards = self._shards()
        if not shards and self.output_path.is_file():
            return self.output_path
        by_id: dict[Any, dict[str, Any]] = {}
        for row in self.existing_rows():
            by_id.setdefault(row["id"], row)
        write_jsonl_atomic(self.output_path, [by_id[key] for key in sorted(by_id, key=id_sort_key)])
        if self.shard_dir.is_dir():
            shutil.rmtree(self.shard_dir)
        missing = [] if expected is None else [row_id for row_id in expected if row_id not in by_id]
        note = f"; {len(missing)} prompts not answered yet (run again to resume)" if missing else ""
        rank_zero_info(f"[generate] wrote {len(by_id)} rows to {self.output_path}{note}")
        return self.output_path
