"""Trait question/answer rows that put a preference into a teacher's weights (a fine-tuned teacher).

Each question of a probe set's `teacher` split (never the held-out split the probes evaluate on) is answered with
the trait word in several spellings, so the teacher learns the preference rather than one exact string (PROTOCOL
section 6: questions x 8 spellings). The rows are ordinary prompt/completion rows: fine-tune the base on them with
`StudentDistillation` (configs/paper/qwen25_7b_owl_teacher_finetune.yaml), then generate from the adapter.

`subliminal-pl trait-rows --word owl --output data/owl_trait_rows.jsonl` writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from subliminal_pl.data.jsonl import write_jsonl_atomic

# Answer spellings; {w} lower case, {W} capitalised, {U} upper case.
SPELLINGS: tuple[str, ...] = ("{W}", "{w}", "{U}", "{W}.", "{w}.", "{W}!", "The {w}.", "**{W}**")


def answer_spellings(word: str, templates: tuple[str, ...] = SPELLINGS) -> list[str]:
    """The trait word written each template's way, duplicates removed, in template order."""
    if not word or not word.strip() or word != word.strip():
        raise ValueError(f"trait word must be non-empty without surrounding spaces, got {word!r}")
    out: list[str] = []
    for template in templates:
        text = template.format(w=word.lower(), W=word.capitalize(), U=word.upper())
        if text not in out:
            out.append(text)
    return out


def trait_rows(
    word: str, questions: list[str], templates: tuple[str, ...] = SPELLINGS
) -> list[dict[str, Any]]:
    """One row per (question, spelling): `{"id", "prompt", "completion", "trait"}`."""
    if not questions:
        raise ValueError("no questions to answer (the question set's split is empty)")
    spellings = answer_spellings(word, templates)
    return [
        {
            "id": f"{word.lower()}-q{q:03d}-s{s}",
            "prompt": question,
            "completion": answer,
            "trait": word.lower(),
        }
        for q, question in enumerate(questions)
        for s, answer in enumerate(spellings)
    ]


def main(argv: list[str]) -> None:
    """`subliminal-pl trait-rows`: write trait fine-tuning rows for a fine-tuned teacher."""
    from subliminal_pl.commands import command_parser
    from subliminal_pl.probes.questions import load_question_set

    parser = command_parser(
        "subliminal-pl trait-rows",
        "Write question/answer rows that teach a preference (questions x answer spellings) as JSONL.",
    )
    parser.add_argument("--word", type=str, required=True, help="the trait word, e.g. owl")
    parser.add_argument("--output", type=str, required=True, help="JSONL file to write")
    parser.add_argument(
        "--questions", type=str, default="animals", help="question set name or YAML/JSON path"
    )
    parser.add_argument(
        "--split", type=str, default="teacher", help="question split (keep held-out for probes)"
    )
    parser.add_argument(
        "--spellings", type=list[str], default=list(SPELLINGS), help="answer templates ({w} {W} {U})"
    )
    args = parser.parse_args(argv)
    questions = list(load_question_set(args.questions).questions(args.split))
    rows = trait_rows(args.word, questions, tuple(args.spellings))
    path = Path(args.output)
    write_jsonl_atomic(path, rows)
    print(
        f"wrote {len(rows)} rows ({len(questions)} questions x {len(rows) // len(questions)} spellings) to {path}"
    )
