"""The student's DataModule: raw teacher JSONL -> validated rows -> filters -> tokenised, loss-masked batches.

`prepare_data` (once, on rank zero of each node) validates every raw row, runs the configured filters and writes
two files beside the raw file, both atomically:

    <name>.<hash>.filtered.jsonl     the kept rows, unchanged
    <name>.<hash>.filter_stats.json  counts per reject reason, kept fraction, the filter config and the raw hash

`<hash>` covers the raw file's bytes and the filters' specs, so the same data and filters reuse the files and any
change writes new ones; the raw file itself is only read. `setup` (every rank) reads the filtered file, takes a
seeded validation split and `max_samples` training subset, and tokenises each row with the chat template (loss on
the completion and its end-of-turn only, see `subliminal_pl.data.chat`). Batches are right-padded dicts of
`input_ids`, `attention_mask` and `labels` ([batch, time] tensors; labels -100 outside the completion).

Row formats (JSONL, UTF-8, one object per line; other keys are kept as metadata):
    {"prompt": "text" | [messages...], "completion": "text", "system_prompt": "text" | null}
    {"messages": [{"role": "system" | "user" | "assistant", "content": "text"}, ..., {"role": "assistant", ...}]}
`system_prompt` is the teacher's system prompt as the generation writer records it. System messages (and
`system_prompt`) are dropped from training rows unless `keep_system_prompt=True`: the paper trains students without
the teacher's system prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from transformers import PreTrainedTokenizerBase

from subliminal_pl.data.chat import IGNORE_INDEX, PromptTooLongError, encode_prompt_completion
from subliminal_pl.data.filters import RowFilter, apply_filters, filter_specs
from subliminal_pl.data.jsonl import DataError, iter_jsonl, write_json_atomic, write_jsonl_atomic

Message = dict[str, str]
Encoded = dict[str, list[int]]  # {"input_ids": [...], "labels": [...]} of one row
ROLES = ("system", "user", "assistant")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_messages(messages: Any, where: str, field: str) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"{where}: field {field!r}: expected a non-empty list of messages, got {messages!r:.80}"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(
                f"{where}: field '{field}[{index}]': expected an object, got {_type_name(message)}"
            )
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: field '{field}[{index}].role': expected one of {ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise DataError(
                f"{where}: field '{field}[{index}].content': expected a string, got {_type_name(content)}"
            )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def parse_row(row: dict[str, Any], where: str) -> tuple[list[Message], str]:
    """(prompt messages, completion) of a raw row; `where` ("file:line") prefixes every error."""
    if "messages" in row and "prompt" not in row:
        messages = _check_messages(row["messages"], where, "messages")
        if messages[-1]["role"] != "assistant":
            raise DataError(
                f"{where}: field 'messages[-1].role': the last message must be the assistant's reply"
            )
        prompt, completion = messages[:-1], messages[-1]["content"]
        field = "messages"
    else:
        for key in ("prompt", "completion"):
            if key not in row:
                raise DataError(
                    f"{where}: missing field {key!r} (rows need 'prompt' and 'completion', or 'messages')"
                )
        completion = row["completion"]
        if not isinstance(completion, str):
            raise DataError(f"{where}: field 'completion': expected a string, got {_type_name(completion)}")
        if isinstance(row["prompt"], str):
            prompt = [{"role": "user", "content": row["prompt"]}]
        else:
            prompt = _check_messages(row["prompt"], where, "prompt")
        system = row.get("system_prompt")
        if system is not None:
            if not isinstance(system, str):
                raise DataError(
                    f"{where}: field 'system_prompt': expected a string, got {_type_name(system)}"
                )
            prompt = [{"role": "system", "content": system}, *prompt]
        field = "prompt"
    if not any(m["role"] == "user" for m in prompt):
        raise DataError(f"{where}: field {field!r}: the prompt holds no user message")
    if prompt[-1]["role"] == "assistant":
        raise DataError(f"{where}: field {field!r}: the prompt must not end with an assistant message")
    return prompt, completion


class RightPadCollator:
    """Stacks encoded rows into right-padded tensors; padding is masked out of attention and of the loss."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.tensor(row["input_ids"])
            attention_mask[i, :n] = 1
            labels[i, :n] = torch.tensor(row["labels"])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class FilteredFiles(NamedTuple):
    rows: Path  # <name>.<hash>.filtered.jsonl
    stats: Path  # <name>.<hash>.filter_stats.json
    config_hash: str
    raw_sha256: str


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StudentDataModule(LightningDataModule):
    """Teacher rows filtered once, tokenised with the chat template, loss on the completion only."""

    def __init__(
        self,
        data_path: str,
        tokenizer: str | PreTrainedTokenizerBase,
        filters: list[RowFilter] | None = None,
        max_samples: int | None = None,
        val_size: int = 0,
        seed: int = 0,
        keep_system_prompt: bool = False,
        max_length: int = 500,
        batch_size: int = 8,
        num_workers: int = 0,
        output_dir: str | None = None,
    ) -> None:
        """
        Args:
            data_path: raw JSONL of teacher rows (`prompt` + `completion`, or `messages`); never modified.
            tokenizer: hub name or local directory of the student's tokenizer (it needs a chat template).
            filters: filters run in order on every raw row (see `subliminal_pl.data.filters`); none keeps all rows.
            max_samples: train on a seeded random subset of this many kept rows (the paper: 10000); None uses all.
            val_size: kept rows held out for validation, drawn before the training subset (0: no validation).
            seed: seed of the validation split, the training subset and (with `seed_everything`'s seed) the
                training order: each epoch's order is drawn from (seeds, epoch), so a resumed fit sees the
                batches an uninterrupted one would.
            keep_system_prompt: keep system messages in training rows (default drops them, as the paper does).
            max_length: most tokens per row; longer rows lose the end of their completion, rows whose prompt
                alone fills it are skipped with a warning.
            batch_size: rows per batch (per device).
            num_workers: DataLoader worker processes.
            output_dir: folder for the filtered and stats files (default: beside the raw file).
        """
        super().__init__()
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
        self.data_path = Path(data_path)
        self.tokenizer = tokenizer
        self.filters = list(filters or [])
        self.max_samples = max_samples
        self.val_size = val_size
        self.seed = seed
        self.keep_system_prompt = keep_system_prompt
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.save_hyperparameters(ignore=["tokenizer", "filters"])
        # Primitive stand-ins for the two object arguments, so checkpoints stay loadable with weights_only.
        self.hparams["tokenizer"] = tokenizer if isinstance(tokenizer, str) else tokenizer.name_or_path
        self.hparams["filters"] = filter_specs(self.filters)
        self.train_rows: list[Encoded] | None = None
        self.val_rows: list[Encoded] = []
        self._collator: RightPadCollator | None = None

    def output_files(self) -> FilteredFiles:
        """Where the filtered rows and stats for the current raw file and filters live (they may not exist yet)."""
        if not self.data_path.is_file():
            raise DataError(f"{self.data_path}: file not found")
        raw_sha256 = _sha256_file(self.data_path)
        identity = {"raw_sha256": raw_sha256, "filters": filter_specs(self.filters)}
        config_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        stem = self.data_path.name.removesuffix(".jsonl")
        folder = self.output_dir or self.data_path.parent
        return FilteredFiles(
            rows=folder / f"{stem}.{config_hash}.filtered.jsonl",
            stats=folder / f"{stem}.{config_hash}.filter_stats.json",
            config_hash=config_hash,
            raw_sha256=raw_sha256,
        )

    def prepare_data(self) -> None:
        """Validate and filter the raw file, unless this data and filter config were already filtered."""
        files = self.output_files()
        if files.rows.is_file() and files.stats.is_file():
            rank_zero_info(f"student data: reusing {files.rows}")
            return
        # Validate every row before filtering, so a bad row is reported even when a filter would drop it.
        rows = []
        for line, row in iter_jsonl(self.data_path):
            parse_row(row, f"{self.data_path}:{line}")
            rows.append(row)
        start = time.perf_counter()
        kept, counts = apply_filters(rows, self.filters)
        stats = {
            "raw_path": str(self.data_path),
            "raw_sha256": files.raw_sha256,
            "config_hash": files.config_hash,
            "filtered_path": str(files.rows),
            **counts,
            "filter_config": filter_specs(self.filters),
        }
        if not kept:
            write_json_atomic(files.stats, stats)
            reasons = (
                ", ".join(f"{reason}: {n}" for reason, n in counts["reasons"].items()) or "the file is empty"
            )
            raise DataError(
                f"{self.data_path}: no row survived filtering ({counts['total']} rows; {reasons}); see {files.stats}"
            )
        write_jsonl_atomic(files.rows, kept)
        # The stats file is written last: its presence marks a complete pair for reuse.
        write_json_atomic(files.stats, stats)
        rank_zero_info(
            f"student data: kept {counts['kept']} of {counts['total']} rows ({counts['kept_fraction']:.1%}) in "
            f"{time.perf_counter() - start:.1f} s -> {files.rows}"
        )

    def _load_tokenizer(self) -> PreTrainedTokenizerBase:
        if not isinstance(self.tokenizer, str):
            return self.tokenizer
        from subliminal_pl.models.loading import load_tokenizer

        return load_tokenizer(self.tokenizer)

    def setup(self, stage: str | None = None) -> None:
        """Split and tokenise the filtered rows (filtering first if `prepare_data` has not run in this process)."""
        if self.train_rows is not None:
            return
        files = self.output_files()
        if not (files.rows.is_file() and files.stats.is_file()):
            self.prepare_data()
        rows = [
            (row.get("id", f"line {line}"), *parse_row(row, f"{files.rows}:{line}"))
            for line, row in iter_jsonl(files.rows)
        ]
        if self.val_size >= len(rows):
            raise DataError(
                f"{files.rows}: val_size={self.val_size} leaves no training rows ({len(rows)} rows kept by the filters)"
            )
        order = list(range(len(rows)))
        random.Random(self.seed).shuffle(order)
        val_index, train_index = order[: self.val_size], order[self.val_size :]
        if self.max_samples is not None:
            if len(train_index) < self.max_samples:
                rank_zero_warn(
                    f"student data: max_samples={self.max_samples} but only {len(train_index)} filtered rows are "
                    "left for training; using them all"
                )
            train_index = train_index[: self.max_samples]
        tokenizer = self._load_tokenizer()
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token to pad batches with")
        self._collator = RightPadCollator(pad_id)
        start = time.perf_counter()
        self.train_rows = self._encode(tokenizer, [rows[i] for i in train_index])
        self.val_rows = self._encode(tokenizer, [rows[i] for i in val_index])
        if not self.train_rows:
            raise DataError(
                f"{files.rows}: every training row's prompt is longer than max_length={self.max_length}"
            )
        rank_zero_info(
            f"student data: tokenised {len(self.train_rows)} training and {len(self.val_rows)} validation rows in "
            f"{time.perf_counter() - start:.1f} s"
        )

    def _encode(
        self, tokenizer: PreTrainedTokenizerBase, rows: list[tuple[str, list[Message], str]]
    ) -> list[Encoded]:
        encoded, too_long = [], []
        for row_id, prompt, completion in rows:
            if not self.keep_system_prompt:
                prompt = [m for m in prompt if m["role"] != "system"]
            try:
                encoded.append(encode_prompt_completion(tokenizer, prompt, completion, self.max_length))
            except PromptTooLongError:
                too_long.append(row_id)
        if too_long:
            rank_zero_warn(
                f"student data: skipped {len(too_long)} rows whose prompt fills max_length={self.max_length} "
                f"(first: {', '.join(map(str, too_long[:5]))})"
            )
        return encoded

    def _loader(self, rows: list[Encoded] | None, sampler: Sampler | None = None) -> DataLoader:
        if rows is None or self._collator is None:
            raise RuntimeError("StudentDataModule.setup() must run before its dataloaders are requested")
        return DataLoader(
            rows,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self._collator,
        )

    def order_seed(self) -> int:
        """Seed of the training order: the data `seed` mixed with the run's `seed_everything` seed.

        Lightning's `seed_everything` exports its seed as PL_GLOBAL_SEED (to DDP ranks too), so students that
        differ only in `seed_everything` still see different orders. Hashed, so that the sampler's seed + epoch
        of one run never equals another run's.
        """
        text = f"{self.seed}:{os.environ.get('PL_GLOBAL_SEED', '')}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")

    def train_sampler(self) -> DistributedSampler:
        """The training order: a permutation drawn from (`order_seed()`, epoch) alone, split across ranks.

        Lightning calls its `set_epoch` at the start of every epoch, also the first epoch of a resumed fit, so a
        run resumed from an end-of-epoch checkpoint sees the batches an uninterrupted run would have seen. The
        global RNG state plays no part. Lightning leaves a DistributedSampler as it is under DDP; on one device
        it is a plain seeded shuffle.
        """
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return DistributedSampler(
            self.train_rows,
            num_replicas=replicas,
            rank=rank,
            shuffle=True,
            seed=self.order_seed(),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_rows is None:
            return self._loader(None)
        return self._loader(self.train_rows, sampler=self.train_sampler())

    def val_dataloader(self) -> DataLoader | list:
        # An empty list tells Lightning there is no validation loop (val_size=0, the paper's setting).
        return self._loader(self.val_rows) if self.val_rows else []
