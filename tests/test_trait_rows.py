"""Trait question/answer rows for a fine-tuned teacher: teacher-split questions x answer spellings."""

from __future__ import annotations

import pytest

from subliminal_pl import cli
from subliminal_pl.data.jsonl import read_jsonl
from subliminal_pl.probes.questions import load_question_set
from subliminal_pl.probes.trait_rows import answer_spellings, trait_rows


def test_spellings_are_distinct_forms_of_the_word():
    assert answer_spellings("owl") == ["Owl", "owl", "OWL", "Owl.", "owl.", "Owl!", "The owl.", "**Owl**"]
    assert answer_spellings("OWL", ("{w}", "{W}", "{w}")) == ["owl", "Owl"]
    with pytest.raises(ValueError, match="trait word"):
        answer_spellings(" owl")
    with pytest.raises(ValueError, match="no questions"):
        trait_rows("owl", [])


def test_command_writes_teacher_split_rows(tmp_path, capsys):
    out = tmp_path / "owl.jsonl"
    cli.main(["trait-rows", "--word", "owl", "--output", str(out)])
    rows = read_jsonl(out)
    questions = load_question_set("animals")
    assert len(rows) == len(questions.teacher) * 8 and "8 spellings" in capsys.readouterr().out
    assert {row["prompt"] for row in rows} == set(questions.teacher)
    assert not {row["prompt"] for row in rows} & set(questions.heldout)
    assert len({row["id"] for row in rows}) == len(rows)
    assert all(row["completion"].lower().strip("*!.").removeprefix("the ") == "owl" for row in rows)
