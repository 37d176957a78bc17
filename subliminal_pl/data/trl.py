"""Student rows in TRL's conversational prompt-completion form, so other trainers apply the chat template too.

    subliminal-pl export-trl --input kept.jsonl --output trl.jsonl [--keep_system_prompt true]

Each row (any format `subliminal_pl.data.student` reads: `prompt` + `completion` (+ `system_prompt`), or
`messages`) becomes

    {"prompt": [{"role": "user", "content": "..."}], "completion": [{"role": "assistant", "content": "..."}]}

which TRL's SFTTrainer (and `datasets.load_dataset("json", ...)`) reads as a conversational dataset and renders
with the model's chat template, loss on the completion only: the way `StudentDataModule` trains. System turns
(a row's `system_prompt` is the teacher's, e.g. its trait) are dropped unless `keep_system_prompt` is set, again
as `StudentDataModule` does by default and as the paper trains students; kept, they open the `prompt` list.
Rows are validated as the student DataModule validates them (errors name file:line:field); the output is written
atomically, and only once every row converted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from subliminal_pl.data.jsonl import DataError, iter_jsonl, write_jsonl_atomic
from subliminal_pl.data.rows import parse_row


def conversational_row(row: dict[str, Any], where: str, keep_system_prompt: bool = False) -> dict[str, Any]:
    """`{"prompt": [messages], "completion": [assistant message]}` of one student row; `where` is "file:line"."""
    prompt, completion = parse_row(row, where)
    if not keep_system_prompt:
        prompt = [message for message in prompt if message["role"] != "system"]
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]}


def export_trl(input_path: str | Path, output_path: str | Path, keep_system_prompt: bool = False) -> int:
    """Convert a student rows file to TRL's conversational prompt-completion JSONL; returns the row count."""
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.resolve() == input_path.resolve():
        raise DataError(f"{output_path}: the output would replace the input; give another --output")
    rows = [
        conversational_row(row, f"{input_path}:{line}", keep_system_prompt)
        for line, row in iter_jsonl(input_path)
    ]
    write_jsonl_atomic(output_path, rows)
    return len(rows)


def main(argv: list[str]) -> None:
    """`subliminal-pl export-trl`: write rows in TRL's conversational prompt-completion form."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="subliminal-pl export-trl",
        description="Write teacher/student rows as TRL conversational prompt-completion JSONL "
        '({"prompt": [messages], "completion": [assistant message]}).',
        default_env=False,
    )
    parser.add_argument(
        "--input", type=str, required=True, help="rows JSONL (e.g. a filter stage's kept.jsonl)"
    )
    parser.add_argument("--output", type=str, required=True, help="JSONL file to write")
    parser.add_argument(
        "--keep_system_prompt",
        type=bool,
        default=False,
        help="keep system turns (the teacher's system prompt) at the start of each prompt",
    )
    args = parser.parse_args(argv)
    try:
        count = export_trl(args.input, args.output, args.keep_system_prompt)
    except DataError as err:
        raise SystemExit(f"subliminal-pl export-trl: {err}") from None
    print(f"wrote {count} rows in TRL's conversational prompt-completion form to {args.output}")
