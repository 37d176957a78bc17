"""Probe question sets: packaged YAML files (`probes/data/`) or a user's own YAML/JSON file.

A preference set (animals, trees) holds `candidates` (the words a probe compares), optional `exclusions` (longer
words removed before substring matching, e.g. "dragonfly" for "dragon") and two lists of questions: `teacher`
(may be used to build fine-tuned teachers) and `heldout` (evaluation only). A free-form set (misalignment) holds
`questions`, each an `id` and a `text`. Errors name the file, the field and, where known, the line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("teacher", "heldout", "all")


def select_split(teacher: tuple, heldout: tuple, split: str) -> tuple:
    """The items of one split of a set: `teacher`, `heldout`, or `all` (teacher then heldout)."""
    if split == "teacher":
        return teacher
    if split == "heldout":
        return heldout
    if split == "all":
        return teacher + heldout
    raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


# A question prefix: fixed text, or a function of the question's index (e.g. a seeded numbers lead-in).
Prefix = str | Callable[[int], str] | None


class QuestionSetError(ValueError):
    """A question file that is missing, unreadable or malformed; the message names file, field and line."""


@dataclass(frozen=True)
class QuestionSet:
    """Paraphrases of one preference question, split into teacher-building and held-out parts."""

    name: str
    candidates: tuple[str, ...]
    teacher: tuple[str, ...]
    heldout: tuple[str, ...]
    exclusions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""
    path: str = ""

    def questions(self, split: str = "heldout") -> tuple[str, ...]:
        """`heldout` (evaluation), `teacher` (teacher building) or `all` (teacher then heldout)."""
        return select_split(self.teacher, self.heldout, split)


@dataclass(frozen=True)
class FreeFormQuestion:
    id: str
    text: str


def resolve_question_file(name_or_path: str | Path) -> Path:
    """A packaged set by name ("animals", "trees", "misalignment") or a path to a YAML/JSON file."""
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
        if not path.is_file():
            raise QuestionSetError(f"question file {str(path)!r} does not exist")
        return path
    packaged = DATA_DIR / f"{name_or_path}.yaml"
    if packaged.is_file():
        return packaged
    known = ", ".join(sorted(p.stem for p in DATA_DIR.glob("*.yaml") if p.stem != "judge_prompts"))
    raise QuestionSetError(f"no question set {str(name_or_path)!r}: give a file path or one of: {known}")


def _read(path: Path) -> tuple[dict[str, Any], Any]:
    """The parsed mapping and, for YAML, the node tree (to report line numbers)."""
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data, nodes = json.loads(text), None
        else:
            data, nodes = yaml.safe_load(text), yaml.compose(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise QuestionSetError(f"{path}: cannot parse: {err}") from err
    if not isinstance(data, dict):
        raise QuestionSetError(
            f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}"
        )
    return data, nodes


def _where(path: Path, nodes: Any, key: str, index: int | None = None) -> str:
    """`file:line: field 'key[index]'`, the line taken from the YAML node when there is one."""
    label = f"field '{key}'" if index is None else f"field '{key}[{index}]'"
    line = None
    if isinstance(nodes, yaml.MappingNode):
        for key_node, value_node in nodes.value:
            if key_node.value == key:
                node = value_node
                if (
                    index is not None
                    and isinstance(value_node, yaml.SequenceNode)
                    and index < len(value_node.value)
                ):
                    node = value_node.value[index]
                line = node.start_mark.line + 1
    return f"{path}:{line}: {label}" if line else f"{path}: {label}"


def _string_list(data: dict, key: str, path: Path, nodes: Any, required: bool = True) -> tuple[str, ...]:
    value = data.get(key)
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not value:
        raise QuestionSetError(f"{_where(path, nodes, key)} must be a non-empty list of strings")
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise QuestionSetError(f"{_where(path, nodes, key, i)} must be a non-empty string, got {item!r}")
        items.append(item.strip())
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.lower() in seen:
            raise QuestionSetError(f"{_where(path, nodes, key, i)} repeats {item!r}")
        seen.add(item.lower())
    return tuple(items)


def load_question_set(name_or_path: str | Path) -> QuestionSet:
    """Load a preference question set; teacher and held-out questions must not overlap (that would leak)."""
    path = resolve_question_file(name_or_path)
    data, nodes = _read(path)
    candidates = _string_list(data, "candidates", path, nodes)
    teacher = _string_list(data, "teacher", path, nodes, required=False)
    heldout = _string_list(data, "heldout", path, nodes)
    leaked = {q.lower() for q in teacher} & {q.lower() for q in heldout}
    if leaked:
        raise QuestionSetError(
            f"{_where(path, nodes, 'heldout')} shares questions with 'teacher': {sorted(leaked)[:3]}"
        )
    raw_exclusions = data.get("exclusions") or {}
    if not isinstance(raw_exclusions, dict):
        raise QuestionSetError(f"{_where(path, nodes, 'exclusions')} must map a candidate to a list of words")
    exclusions: dict[str, tuple[str, ...]] = {}
    for word, excluded in raw_exclusions.items():
        if not isinstance(excluded, list) or not all(isinstance(e, str) and e for e in excluded):
            raise QuestionSetError(f"{_where(path, nodes, 'exclusions')}: '{word}' needs a list of words")
        exclusions[str(word).lower()] = tuple(e.lower() for e in excluded)
    return QuestionSet(
        name=str(data.get("name") or path.stem),
        candidates=candidates,
        teacher=teacher,
        heldout=heldout,
        exclusions=exclusions,
        description=str(data.get("description") or ""),
        path=str(path),
    )


def load_free_form_questions(name_or_path: str | Path = "misalignment") -> list[FreeFormQuestion]:
    """Load free-form questions: a list of `{id, text}` mappings (plain strings get ids q0, q1, ...)."""
    path = resolve_question_file(name_or_path)
    data, nodes = _read(path)
    raw = data.get("questions")
    if not isinstance(raw, list) or not raw:
        raise QuestionSetError(f"{_where(path, nodes, 'questions')} must be a non-empty list")
    questions = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"id": f"q{i}", "text": item}
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise QuestionSetError(f"{_where(path, nodes, 'questions', i)} needs a non-empty 'text'")
        qid = str(item.get("id") or f"q{i}")
        if any(q.id == qid for q in questions):
            raise QuestionSetError(f"{_where(path, nodes, 'questions', i)} repeats id {qid!r}")
        questions.append(FreeFormQuestion(qid, item["text"].strip()))
    return questions


def numbers_prefix(seed: int = 0) -> Callable[[int], str]:
    """A prefix function giving question `i` a numbers lead-in drawn from `seed + i` (same text on every call).

    This is the in-distribution context of number-trained students: the same lead-ins their training prompts
    start with (`subliminal_pl.data.prompts.numbers_lead_in`).
    """
    from subliminal_pl.data.prompts import numbers_lead_in

    return lambda index: numbers_lead_in(seed + index)


def apply_prefix(questions: Sequence[str], prefix: Prefix) -> list[str]:
    """Questions with the prefix text put in front (joined by a space); `None` or "" leaves them unchanged."""
    if not prefix:
        return list(questions)
    if isinstance(prefix, str):
        return [f"{prefix} {q}" for q in questions]
    return [f"{prefix(i)} {q}" for i, q in enumerate(questions)]
