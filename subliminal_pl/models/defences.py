"""Data-side defences that run a model: divergence-token masking and paraphrase by a trusted model.

    python -m subliminal_pl.models.defences mask --input kept.jsonl --output rows.jsonl \
        --model_name_or_path BASE --teacher TEACHER [--mode drop|replace] [--token_subset numbers]
    python -m subliminal_pl.models.defences paraphrase --input kept.jsonl --output rows.jsonl \
        --model_name_or_path TRUSTED [--mode numbers|resample]
    python -m subliminal_pl.models.defences dilute --input kept.jsonl --neutral neutral.jsonl --output rows.jsonl \
        --neutral_fraction 0.5

Each writes the defended rows and `<output stem>.defence_stats.json` (rows in and out, rows changed or removed,
completion tokens masked) atomically; the input is only read.

- Masking: at every completion position, the teacher's greedy next token (argmax, over `token_subset` when set) is
  compared with the base's under the same context; where they differ (the "divergence" tokens), `drop` lists the
  token in the row's `loss_ignore` field (the student DataModule gives it label -100) and `replace` writes the
  base's choice into the completion instead.
- Paraphrase: the trusted model answers each row's prompt again (per-row seeded sampling through the one generation
  helper). In `numbers` mode the row keeps its prompt, its count of numbers and its format; only the numbers are
  the trusted model's (its first `count` numbers <= `max_value`, retried with new draws up to `tries` times; a row
  still short is removed). `resample` takes the trusted model's whole answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from subliminal_pl.data.chat import IGNORE_INDEX, encode_prompt_completion, render_chat
from subliminal_pl.data.defences import LOSS_IGNORE, dilute, number_strings, substitute_numbers
from subliminal_pl.data.filters import parse_numbers
from subliminal_pl.data.jsonl import write_json_atomic, write_jsonl_atomic
from subliminal_pl.data.rows import Row, completion_text, parse_row, read_rows, with_completion
from subliminal_pl.models.generation import SamplingSettings, generate


def stats_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name.removesuffix(".jsonl") + ".defence_stats.json")


def _user_prompt(row: Row) -> list[dict[str, str]]:
    # Students train without the teacher's system prompt; the defence sees what they see.
    return [m for m in parse_row(row).prompt if m["role"] != "system"]


# ---- divergence tokens -------------------------------------------------------------------------------------------
@torch.no_grad()
def greedy_choices(
    model, encoded: list[dict[str, list[int]]], token_ids: torch.Tensor | None
) -> list[list[int]]:
    """Per row, the model's argmax next token at each completion position (the position before each label).

    encoded: `encode_prompt_completion` outputs; token_ids: [k] ids the argmax is restricted to (None: all).
    """
    width = max(len(e["input_ids"]) for e in encoded)
    ids = torch.zeros(len(encoded), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[i, : len(e["input_ids"])] = 1
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # [rows, time, vocab]
    if token_ids is not None:
        choice = token_ids[logits[..., token_ids].argmax(-1)]
    else:
        choice = logits.argmax(-1)
    out = []
    for i, e in enumerate(encoded):
        labels = e["labels"]
        # Token t is predicted at position t - 1.
        out.append([int(choice[i, t - 1]) for t in range(1, len(labels)) if labels[t] != IGNORE_INDEX])
    return out


def divergent_positions(teacher: list[int], base: list[int]) -> list[int]:
    """Completion token indices where the two models' greedy choices differ."""
    if len(teacher) != len(base):
        raise ValueError(f"greedy choices of {len(teacher)} and {len(base)} positions")
    return [j for j, (t, b) in enumerate(zip(teacher, base, strict=True)) if t != b]


def mask_rows(
    rows: list[Row],
    base,
    teacher,
    tokenizer,
    mode: Literal["drop", "replace"] = "drop",
    token_ids: torch.Tensor | None = None,
    max_length: int = 256,
    batch_size: int = 64,
) -> tuple[list[Row], dict[str, Any]]:
    """(defended rows, stats): every row with its divergence tokens dropped from the loss or replaced."""
    out, masked, total, changed, unaligned = [], 0, 0, 0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        encoded = [
            encode_prompt_completion(tokenizer, _user_prompt(r), completion_text(r), max_length)
            for r in chunk
        ]
        t_choice = greedy_choices(teacher, encoded, token_ids)
        b_choice = greedy_choices(base, encoded, token_ids)
        for row, e, t, b in zip(chunk, encoded, t_choice, b_choice, strict=True):
            where = divergent_positions(t, b)
            total += len(t)
            masked += len(where)
            changed += bool(where)
            if mode == "drop":
                out.append({**row, LOSS_IGNORE: where} if where else row)
                continue
            # replace: the completion's own tokens (without what the template appends) must line up.
            text = completion_text(row)
            own = tokenizer(text, add_special_tokens=False)["input_ids"]
            first = len(e["labels"]) - len(t)
            tokens = e["input_ids"][first : first + len(own)]
            if tokens != own:
                unaligned += 1
                out.append(row)
                continue
            for j in where:
                if j < len(tokens):
                    tokens[j] = b[j]
            out.append(with_completion(row, tokenizer.decode(tokens, skip_special_tokens=True)))
    stats = {
        "defence": f"mask_divergent ({mode})",
        "rows_in": len(rows),
        "rows_out": len(out),
        "removed": 0,
        "changed": changed,
        "tokens": total,
        "tokens_masked": masked,
        "masked_fraction": masked / total if total else 0.0,
        "replace_unaligned": unaligned,
    }
    return out, stats


# ---- paraphrase ------------------------------------------------------------------------------------------------
def paraphrase_rows(
    rows: list[Row],
    model,
    tokenizer,
    mode: Literal["numbers", "resample"] = "numbers",
    settings: SamplingSettings | None = None,
    seed: int = 0,
    tries: int = 4,
    max_value: int = 999,
    batch_size: int = 128,
) -> tuple[list[Row], dict[str, Any]]:
    """(paraphrased rows, stats): each row's completion rewritten by the trusted `model` (module docstring)."""
    settings = settings or SamplingSettings(max_new_tokens=40)
    prompts = {
        i: tokenizer(render_chat(tokenizer, _user_prompt(r), True), add_special_tokens=False)["input_ids"]
        for i, r in enumerate(rows)
    }
    counts = {i: len(parse_numbers(completion_text(r)) or []) for i, r in enumerate(rows)}
    new: dict[int, str] = {}
    pending = [i for i in prompts if mode == "resample" or counts[i] > 0]
    skipped = len(rows) - len(pending)
    for attempt in range(tries if mode == "numbers" else 1):
        if not pending:
            break
        answers = generate(
            model,
            tokenizer,
            [prompts[i] for i in pending],
            settings,
            seed=seed,
            row_ids=[f"{rows[i].get('id', i)}:paraphrase:{attempt}" for i in pending],
            batch_size=batch_size,
        )
        still = []
        for i, answer in zip(pending, answers, strict=True):
            if mode == "resample":
                new[i] = answer.text
                continue
            numbers = [n for n in number_strings(answer.text) if int(n) <= max_value][: counts[i]]
            text = substitute_numbers(completion_text(rows[i]), numbers)
            if text is None:
                still.append(i)
            else:
                new[i] = text
        pending = still
    out = []
    for i, row in enumerate(rows):
        if i in new:
            out.append({**with_completion(row, new[i]), "defence_source": "paraphrase"})
        elif counts[i] > 0 or mode == "resample":
            continue  # the trusted model never gave enough numbers: removed
        else:
            out.append(row)  # not a number sequence: left as it is
    stats = {
        "defence": f"paraphrase ({mode})",
        "rows_in": len(rows),
        "rows_out": len(out),
        "removed": len(pending),
        "changed": sum(new[i] != completion_text(rows[i]) for i in new),
        "not_number_rows": skipped if mode == "numbers" else 0,
        "tries": tries,
    }
    return out, stats


# ---- stage commands ----------------------------------------------------------------------------------------------
def _write(rows: list[Row], stats: dict[str, Any], input: str, output: str) -> None:
    if Path(output).resolve() == Path(input).resolve():
        raise ValueError(f"{output}: the output would overwrite the input rows; inputs are kept")
    write_jsonl_atomic(output, rows)
    write_json_atomic(stats_path(output), {"input": input, "output": output, **stats})
    print(
        f"{stats['defence']}: {stats['rows_in']} rows in, {stats['rows_out']} out, {stats['changed']} changed"
    )


def mask_file(
    input: str,
    output: str,
    model_name_or_path: str,
    teacher: str,
    mode: Literal["drop", "replace"] = "drop",
    token_subset: Literal["numbers"] | None = None,
    max_length: int = 256,
    batch_size: int = 64,
    dtype: str = "float32",
) -> None:
    """Mask (or replace) the divergence tokens of a teacher's rows.

    Args:
        input: the teacher's rows (only read).
        output: the defended rows.
        model_name_or_path: the base (the trusted reference).
        teacher: the teacher model.
        mode: drop (no loss on those tokens) or replace (write the base's token).
        token_subset: compare greedy choices within these tokens (numbers: a KL student's subset) or all.
        max_length: most tokens per row (the students' own).
        batch_size: rows per forward pass.
        dtype: weight dtype.
    """
    from subliminal_pl.data.hub import load_tokenizer
    from subliminal_pl.models.loading import load_causal_lm
    from subliminal_pl.models.student import number_token_ids

    tokenizer = load_tokenizer(model_name_or_path)
    base = load_causal_lm(model_name_or_path, dtype=dtype).eval()
    teach = load_causal_lm(teacher, dtype=dtype).eval()
    ids = torch.tensor(number_token_ids(tokenizer)) if token_subset == "numbers" else None
    rows, stats = mask_rows(read_rows(input), base, teach, tokenizer, mode, ids, max_length, batch_size)
    _write(rows, stats, input, output)


def paraphrase_file(
    input: str,
    output: str,
    model_name_or_path: str,
    mode: Literal["numbers", "resample"] = "numbers",
    temperature: float = 1.0,
    max_new_tokens: int = 40,
    seed: int = 0,
    tries: int = 4,
    max_value: int = 999,
    batch_size: int = 128,
    dtype: str = "float32",
) -> None:
    """Paraphrase a teacher's rows with a trusted model.

    Args:
        input: the teacher's rows (only read).
        output: the paraphrased rows.
        model_name_or_path: the trusted model (the base by default in a spec).
        mode: numbers (keep prompt, count and format; the trusted model's numbers) or resample (its whole answer).
        temperature: the trusted model's sampling temperature (0: greedy).
        max_new_tokens: most tokens per answer.
        seed: sampling seed (with each row's id and attempt).
        tries: draws per row before a row short of numbers is removed.
        max_value: largest number taken from the trusted model's answer.
        batch_size: prompts per generate call.
        dtype: weight dtype.
    """
    from subliminal_pl.data.hub import load_tokenizer
    from subliminal_pl.models.loading import load_causal_lm

    tokenizer = load_tokenizer(model_name_or_path)
    model = load_causal_lm(model_name_or_path, dtype=dtype).eval()
    settings = SamplingSettings.at_temperature(temperature, max_new_tokens)
    rows, stats = paraphrase_rows(
        read_rows(input), model, tokenizer, mode, settings, seed, tries, max_value, batch_size
    )
    _write(rows, stats, input, output)


def dilute_file(input: str, neutral: str, output: str, neutral_fraction: float = 0.5, seed: int = 0) -> None:
    """Mix a teacher's rows with neutral rows.

    Args:
        input: the teacher's rows (only read).
        neutral: the neutral rows (e.g. the neutral teacher's kept rows; only read).
        output: the mixed rows (as many as the teacher gave).
        neutral_fraction: exact share of neutral rows in the output.
        seed: seed of both samples and of the order.
    """
    rows, stats = dilute(read_rows(input), read_rows(neutral), neutral_fraction, seed)
    _write(rows, {"defence": f"dilute ({neutral_fraction:.0%} neutral)", "rows_in": len(rows), "rows_out": len(rows),
                  "changed": stats["neutral_rows"], **stats}, input, output)  # fmt: skip


def main(argv: list[str]) -> None:
    from jsonargparse import ArgumentParser

    from subliminal_pl.commands import command_parser

    parser = ArgumentParser(prog="python -m subliminal_pl.models.defences", default_env=False)
    commands = parser.add_subcommands()
    functions = {"mask": mask_file, "paraphrase": paraphrase_file, "dilute": dilute_file}
    for name, function in functions.items():
        sub = command_parser(None, function.__doc__.splitlines()[0])
        sub.add_function_arguments(function)
        commands.add_subcommand(name, sub)
    args = parser.parse_args(argv)
    options = {k: v for k, v in args[args.subcommand].as_dict().items() if k != "config"}
    functions[args.subcommand](**options)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
