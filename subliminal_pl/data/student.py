"""The student's DataModule: raw teacher JSONL -> validated rows -> data steps -> tokenised, loss-masked batches.

`prepare_data` (once, on rank zero of each node) runs `subliminal_pl.data.steps.prepare_file`, the same route as
the pipeline's data stage: it validates every raw row (`subliminal_pl.data.rows`), applies the configured data
steps (filters drop rows, transforms rewrite them) in order and writes two files beside the raw file, atomically:

    <name>.<hash>.filtered.jsonl     the rows the steps let through
    <name>.<hash>.filter_stats.json  counts per reject reason and per step, kept fraction, the steps and the raw hash

`<hash>` covers the raw file's bytes and the steps' specs, so the same data and steps reuse the files and any
change writes new ones; the raw file itself is only read. `setup` (every rank) reads the filtered file, takes a
seeded validation split and `max_samples` training subset, and tokenises each row with the chat template (loss on
the completion and its end-of-turn only, see `subliminal_pl.data.chat`). Batches are right-padded dicts of
`input_ids`, `attention_mask` and `labels` ([batch, time] tensors; labels -100 outside the completion, and on
the completion tokens a row's `loss_ignore` field lists: a defence's loss mask, `subliminal_pl.data.defences`).

Row formats: see `subliminal_pl.data.rows` (`prompt` + `completion` with an optional `system_prompt`, or
`messages`). System messages (and `system_prompt`) are dropped from training rows unless `keep_system_prompt=True`:
the paper trains students without the teacher's system prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from transformers import PreTrainedTokenizerBase

from subliminal_pl.data.chat import IGNORE_INDEX, PromptTooLongError, encode_prompt_completion
from subliminal_pl.data.defences import LOSS_IGNORE
from subliminal_pl.data.filters import RowFilter
from subliminal_pl.data.jsonl import DataError, sha256_file
from subliminal_pl.data.rows import Message, iter_rows
from subliminal_pl.data.steps import DataStep, prepare_file, step_specs

Encoded = dict[str, list[int]]  # {"input_ids": [...], "labels": [...]} of one row

# Rows this process has tokenised, shared by the fits it runs one after another (`subliminal-pl fit-group`):
# tokenizer identity and settings -> (prompt, completion) -> the encoding (None: the prompt fills max_length).
# The same row, tokenizer and settings always encode the same way, so a hit changes nothing but the time.
_ENCODED: dict[tuple, dict[tuple[str, str], Encoded | None]] = {}
_ENCODED_TOKENIZERS = 2  # tokenizer settings kept at once (oldest dropped)


def _tokenizer_identity(tokenizer: PreTrainedTokenizerBase, *settings: object) -> tuple:
    vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    template = hashlib.sha256(str(tokenizer.chat_template).encode()).hexdigest()
    return (type(tokenizer).__name__, vocab, template, *settings)


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


def ignore_completion_tokens(row: Encoded, ignore: list[int]) -> Encoded:
    """`row` with the labels of the listed completion tokens set to -100 (indices from the first completion token;
    indices past a truncated row's end are ignored): a defence's per-row loss mask (`loss_ignore`)."""
    labels = list(row["labels"])
    start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    for index in ignore:
        if index < 0:
            raise DataError(f"{LOSS_IGNORE}: negative completion token index {index}")
        if start + index < len(labels):
            labels[start + index] = IGNORE_INDEX
    return {**row, "labels": labels}


class FilteredFiles(NamedTuple):
    rows: Path  # <name>.<hash>.filtered.jsonl
    stats: Path  # <name>.<hash>.filter_stats.json
    config_hash: str
    raw_sha256: str


class StudentDataModule(LightningDataModule):
    """Teacher rows through the data steps once, tokenised with the chat template, loss on the completion only."""

    def __init__(
        self,
        data_path: str,
        tokenizer: str | PreTrainedTokenizerBase,
        steps: list[DataStep] | None = None,
        max_samples: int | None = None,
        val_size: int = 0,
        seed: int = 0,
        keep_system_prompt: bool = False,
        max_length: int = 500,
        batch_size: int = 8,
        num_workers: int = 0,
        output_dir: str | None = None,
        filters: list[RowFilter] | None = None,
    ) -> None:
        """
        Args:
            data_path: raw JSONL of teacher rows (`prompt` + `completion`, or `messages`); never modified.
            tokenizer: hub name or local directory of the student's tokenizer (it needs a chat template).
            steps: data steps applied in order to the raw rows: filters (`subliminal_pl.data.filters`) and
                transforms (`subliminal_pl.data.transforms`); none keeps every row as it is.
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
            filters: older name of `steps` (filters only); give one of the two.
        """
        super().__init__()
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
        self.data_path = Path(data_path)
        self.tokenizer = tokenizer
        if steps is not None and filters is not None:
            raise ValueError("give the data steps as `steps` (`filters` is its older name), not both")
        self.steps = list(steps if steps is not None else filters or [])
        self.max_samples = max_samples
        self.val_size = val_size
        self.seed = seed
        self.keep_system_prompt = keep_system_prompt
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.save_hyperparameters(ignore=["tokenizer", "steps", "filters"])
        # Primitive stand-ins for the two object arguments, so checkpoints stay loadable with weights_only.
        self.hparams["tokenizer"] = tokenizer if isinstance(tokenizer, str) else tokenizer.name_or_path
        self.hparams["steps"] = step_specs(self.steps)
        self.train_rows: list[Encoded] | None = None
        self.val_rows: list[Encoded] = []
        self._collator: RightPadCollator | None = None

    def output_files(self) -> FilteredFiles:
        """Where the rows and stats for the current raw file and data steps live (they may not exist yet)."""
        if not self.data_path.is_file():
            raise DataError(f"{self.data_path}: file not found")
        raw_sha256 = sha256_file(self.data_path)
        identity = {"raw_sha256": raw_sha256, "steps": step_specs(self.steps)}
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
        """Validate the raw file and run the data steps, unless this data and these steps were already run."""
        files = self.output_files()
        if files.rows.is_file() and files.stats.is_file():
            rank_zero_info(f"student data: reusing {files.rows}")
            return
        start = time.perf_counter()
        stats = prepare_file(
            self.data_path, files.rows, self.steps, files.stats, record={"config_hash": files.config_hash}
        )
        rank_zero_info(
            f"student data: kept {stats['kept']} of {stats['total']} rows ({stats['kept_fraction']:.1%}) in "
            f"{time.perf_counter() - start:.1f} s -> {files.rows}"
        )

    def _load_tokenizer(self) -> PreTrainedTokenizerBase:
        if not isinstance(self.tokenizer, str):
            return self.tokenizer
        from subliminal_pl.data.hub import load_tokenizer

        return load_tokenizer(self.tokenizer)

    def setup(self, stage: str | None = None) -> None:
        """Split and tokenise the filtered rows (filtering first if `prepare_data` has not run in this process)."""
        if self.train_rows is not None:
            return
        files = self.output_files()
        if not (files.rows.is_file() and files.stats.is_file()):
            self.prepare_data()
        rows = [
            (row.get("id", f"line {line}"), *pair, row.get(LOSS_IGNORE))
            for line, row, pair in iter_rows(files.rows)
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
        self, tokenizer: PreTrainedTokenizerBase, rows: list[tuple[str, list[Message], str, list[int] | None]]
    ) -> list[Encoded]:
        identity = _tokenizer_identity(tokenizer, self.max_length, self.keep_system_prompt)
        if identity not in _ENCODED:
            while len(_ENCODED) >= _ENCODED_TOKENIZERS:
                _ENCODED.pop(next(iter(_ENCODED)))
            _ENCODED[identity] = {}
        known = _ENCODED[identity]
        encoded, too_long = [], []
        for row_id, prompt, completion, ignore in rows:
            if not self.keep_system_prompt:
                prompt = [m for m in prompt if m["role"] != "system"]
            key = (json.dumps(prompt, sort_keys=True), completion)
            if key not in known:
                try:
                    known[key] = encode_prompt_completion(tokenizer, prompt, completion, self.max_length)
                except PromptTooLongError:
                    known[key] = None
            if known[key] is None:
                too_long.append(row_id)
            else:
                encoded.append(ignore_completion_tokens(known[key], ignore) if ignore else known[key])
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
