"""The one reader of prompt-completion rows: parse and validate a row, read a file of them, reach their fields.

Row formats (JSONL, UTF-8, one object per line; other keys are kept as metadata such as `id`, `teacher`, `seed`):

    {"prompt": "text" | [messages...], "completion": "text", "system_prompt": "text" | null}
    {"messages": [{"role": "system" | "user" | "assistant", "content": "text"}, ..., {"role": "assistant", ...}]}

`system_prompt` is the teacher's system prompt as the generation writer records it; `parse_row` puts it first in
the prompt messages. Every error names where the row came from (`file:line`) and the field, e.g.
`raw.jsonl:3: field 'messages[1].content': expected a string, got null`.

`read_rows(path)` is what every data-side reader calls (the student DataModule, the pipeline's data stage);
`parse_row(row, where)` is the same check for a row already in memory (a judge scoring a row, a test).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from subliminal_pl.data.jsonl import DataError, iter_jsonl

Row = dict[str, Any]
Message = dict[str, str]
ROLES = ("system", "user", "assistant")


class PromptCompletion(NamedTuple):
    """A row's training pair: the prompt as chat messages (system first, if any) and the completion text."""

    prompt: list[Message]
    completion: str

    @property
    def question(self) -> str:
        """The last user message ("" when the prompt has none): what a judge shows as the question."""
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else ""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_messages(messages: Any, where: str, field: str) -> list[Message]:
    """A validated copy of a chat message list (`{"role", "content"}` only); errors name `where` and `field`."""
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


def parse_row(row: Row, where: str = "row", require_prompt: bool = True) -> PromptCompletion:
    """The (prompt messages, completion) of a row in either format; raises `DataError` prefixed by `where`.

    Args:
        row: a decoded JSONL object.
        where: where the row came from ("file:line"), the prefix of every error.
        require_prompt: a prompt with a user message is required (training needs one); False lets a row without
            `prompt` through with an empty prompt (a judge scoring a bare answer).
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {_type_name(row)}")
    if "messages" in row and "prompt" not in row:
        messages = check_messages(row["messages"], where, "messages")
        if messages[-1]["role"] != "assistant":
            raise DataError(
                f"{where}: field 'messages[-1].role': the last message must be the assistant's reply"
            )
        prompt, completion = messages[:-1], messages[-1]["content"]
        field = "messages"
    else:
        if "completion" not in row or (require_prompt and "prompt" not in row):
            missing = "completion" if "completion" not in row else "prompt"
            raise DataError(
                f"{where}: missing field {missing!r} (rows need 'prompt' and 'completion', or 'messages')"
            )
        completion = row["completion"]
        if not isinstance(completion, str):
            raise DataError(f"{where}: field 'completion': expected a string, got {_type_name(completion)}")
        raw_prompt = row.get("prompt", [])
        if isinstance(raw_prompt, str):
            prompt = [{"role": "user", "content": raw_prompt}]
        elif raw_prompt == [] and not require_prompt:
            prompt = []
        else:
            prompt = check_messages(raw_prompt, where, "prompt")
        system = row.get("system_prompt")
        if system is not None:
            if not isinstance(system, str):
                raise DataError(
                    f"{where}: field 'system_prompt': expected a string, got {_type_name(system)}"
                )
            prompt = [{"role": "system", "content": system}, *prompt]
        field = "prompt"
    if require_prompt and not any(m["role"] == "user" for m in prompt):
        raise DataError(f"{where}: field {field!r}: the prompt holds no user message")
    if prompt and prompt[-1]["role"] == "assistant":
        raise DataError(f"{where}: field {field!r}: the prompt must not end with an assistant message")
    return PromptCompletion(prompt, completion)


def iter_rows(path: str | Path) -> Iterator[tuple[int, Row, PromptCompletion]]:
    """Yield (line number, row, parsed pair) for each row of a JSONL file; the first bad row raises `DataError`."""
    for line, row in iter_jsonl(path):
        yield line, row, parse_row(row, f"{path}:{line}")


def read_rows(path: str | Path) -> list[Row]:
    """Every row of a prompt-completion JSONL file, each validated by `parse_row` (the rows themselves unchanged)."""
    return [row for _, row, _ in iter_rows(path)]


def completion_text(row: Row) -> str:
    """A row's completion: its `completion` field, or the content of its last (assistant) chat message."""
    if "completion" in row:
        return row["completion"]
    return row["messages"][-1]["content"]


def with_completion(row: Row, completion: str) -> Row:
    """A copy of `row` whose completion is `completion`, in the row's own format (the input is not modified)."""
    if "completion" in row:
        return {**row, "completion": completion}
    messages = list(row["messages"])
    messages[-1] = {**messages[-1], "content": completion}
    return {**row, "messages": messages}


def prompt_text(row: Row) -> str:
    """A row's prompt as text: a string `prompt`, or the contents of the prompt's messages joined by newlines."""
    if "messages" in row and "prompt" not in row:
        messages = row["messages"][:-1]
    else:
        messages = row["prompt"]
    if isinstance(messages, str):
        return messages
    return "\n".join(message["content"] for message in messages)


def field_text(row: Row, field: str) -> str:
    """The text a step inspects: "completion" and "prompt" work for both row formats; any other name is a key."""
    if field == "completion":
        return completion_text(row)
    if field == "prompt":
        return prompt_text(row)
    value = row[field]
    if not isinstance(value, str):
        raise TypeError(f"field {field!r} must hold a string to be filtered, got {type(value).__name__}")
    return value


def read_chat_dataset(path: str | Path) -> list[Row]:
    """Every row of a user-supplied chat dataset (`messages` JSONL: e.g. the insecure-code set and its controls).

    Each line must be `{"messages": [..., {"role": "user", ...}, {"role": "assistant", "content": "..."}]}` (other
    keys are kept as metadata); the same checks as `parse_row`, plus: the row is in the `messages` format and the
    final reply is not empty. The first bad line raises `DataError` naming `file:line` and the field; a missing or
    empty file raises too. The file is only read.
    """
    rows = []
    for line, row, pair in iter_rows(path):
        where = f"{path}:{line}"
        if "messages" not in row:
            raise DataError(
                f"{where}: missing field 'messages' (a chat dataset holds one conversation per line)"
            )
        if "prompt" in row or "completion" in row:
            raise DataError(
                f"{where}: field 'messages': give either 'messages' or 'prompt'/'completion', not both"
            )
        if not pair.completion.strip():
            raise DataError(f"{where}: field 'messages[-1].content': the assistant's reply is empty")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows (expected one JSON object with 'messages' per line)")
    return rows
