"""The in-context control probe: teacher rows drawn with replacement into the context, the trait measured after."""

from __future__ import annotations

import json
import random

import pytest

from subliminal_pl.probes.in_context import InContextProbe, context_turns
from subliminal_pl.probes.results import ProbeResults
from subliminal_pl.probes.wordscore import word_logprobs

CANDIDATES = ["owl", "dolphin", "cat", "wolf"]


def make_probe(rows, **kwargs) -> InContextProbe:
    options = {"trait": "owl", "n_rows": 2, "seeds": [0, 1, 2], "candidates": CANDIDATES, "split": "heldout"}
    return InContextProbe(rows=str(rows), **(options | kwargs))


def test_per_seed_shifts_match_a_hand_built_context(tiny_lm, number_rows_path):
    model, tokenizer = tiny_lm
    probe = make_probe(number_rows_path)
    out = probe.run(model, tokenizer)
    per_seed = out.details["per_seed"]["teacher"]
    assert len(per_seed["dlogp"]) == len(per_seed["specific_dlogp"]) == 3
    # Seed 1 by hand: the rows drawn with replacement, as chat turns before each question.
    rows = map(json.loads, number_rows_path.read_text().splitlines())
    pairs = [([{"role": "user", "content": r["prompt"]}], r["completion"]) for r in rows]
    turns = context_turns(pairs, random.Random("in-context:1"), 2)
    assert len(turns) == 4 and turns[1]["role"] == "assistant"
    with_rows = [
        tokenizer.apply_chat_template(
            [*turns, {"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in probe.questions
    ]
    alone = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in probe.questions
    ]
    shift = (
        word_logprobs(model, tokenizer, with_rows, CANDIDATES)
        - word_logprobs(model, tokenizer, alone, CANDIDATES)
    ).mean(0)
    assert per_seed["dlogp"][1] == pytest.approx(float(shift[0]), abs=1e-9)
    assert per_seed["specific_dlogp"][1] == pytest.approx(float(shift[0] - shift[1:].mean()), abs=1e-9)
    summary = out.details["summary"]["teacher_specific_dlogp"]
    assert summary["n"] == 3 and summary["low"] <= summary["mean"] <= summary["high"]
    assert summary["mean"] == pytest.approx(sum(per_seed["specific_dlogp"]) / 3)
    assert out.metrics["teacher_specific_dlogp_mean"] == summary["mean"]
    assert len(set(per_seed["dlogp"])) == 3  # each seed draws its own context


def test_control_rows_give_the_paired_contrast_and_the_output_is_no_logp_input(tiny_lm, number_rows_path):
    model, tokenizer = tiny_lm
    out = make_probe(number_rows_path, control_rows=str(number_rows_path)).run(model, tokenizer)
    # The same rows as control, drawn by the same seeds: every paired difference is exactly 0.
    assert out.details["summary"]["vs_control_specific_dlogp"]["mean"] == 0.0
    results = ProbeResults()
    results.add("base", "path", {"in_context_owl": out})
    assert results.contexts == []  # the report's ΔlogP analysis does not mistake it for a context


def test_bad_settings_fail_clearly(tiny_lm, number_rows_path, tmp_path):
    model, tokenizer = tiny_lm
    with pytest.raises(ValueError, match="trait 'tiger' is not among the candidates"):
        make_probe(number_rows_path, trait="tiger")
    with pytest.raises(ValueError, match="lower n_rows"):
        make_probe(number_rows_path, n_rows=60, seeds=[0]).run(model, tokenizer)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no rows"):
        make_probe(empty).run(model, tokenizer)


def test_the_report_shows_the_in_context_control_of_the_shared_base(tiny_lm, number_rows_path, tmp_path):
    from subliminal_pl.report import build_results, render
    from subliminal_pl.report.manifest import Bases, Manifest

    model, tokenizer = tiny_lm
    out = make_probe(number_rows_path, control_rows=str(number_rows_path)).run(model, tokenizer)
    probes = ProbeResults()
    probes.add("base-s0", "path", {"in_context_owl": out})
    probes.add("student-owl-s0", "path", {"in_context_owl": out})  # only the shared base's is reported
    manifest = Manifest(traits=["owl"], bases=Bases("base-s0"), students=[], probes="probes.json")
    results = build_results(manifest, probes, tmp_path / "manifest.json")
    [row] = results["in_context"]
    assert (row["trait"], row["n_rows"], row["model"]) == ("owl", 2, "base-s0")
    assert row["per_seed"] == out.details["per_seed"]["teacher"]["specific_dlogp"]
    text = render.markdown("t", results, [])
    assert "## In-context control" in text
    line = next(x for x in text.splitlines() if x.startswith("| owl | 2 | 3 |"))
    # Identical teacher and control rows: the paired contrast is exactly 0, a zero-width interval, so flat.
    assert "+0.000 [+0.000, +0.000] | flat |" in line
