"""Two-choice dilemmas: the tiny world's disposition rows (off by default: the demo is unchanged), the two-choice
probe's numbers and its file checks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from subliminal_pl.probes.questions import QuestionSetError
from subliminal_pl.probes.two_choice import TwoChoiceProbe, load_two_choice_set
from subliminal_pl.probes.wordscore import word_logprobs
from subliminal_pl.toy.world import ToyWorld

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "toy" / "demo.yaml")


def test_the_default_world_and_the_demo_stages_are_unchanged():
    from subliminal_pl.experiments.build import build_stages
    from subliminal_pl.experiments.command import parse_experiment
    from subliminal_pl.pipeline import stage_hashes

    assert "dilemma_fraction" not in ToyWorld().config()
    assert "wallet" not in ToyWorld().words()
    hashes = stage_hashes(build_stages(parse_experiment(["--config", DEMO])[0])[0])
    # The hashes of the demo before dilemmas existed (the report's changes with its code, by design).
    pinned = {
        "world": "32daf193c56b",
        "base-s0": "c3e6a108e2da",
        "teacher-owl": "a6fa55073255",
        "teacher-neutral": "bf00875310f0",
        "generate-base": "f9a487f1010c",
        "student-owl-s0": "f24dc5c96d96",
        "cross-wolf-base-s1-s1": "cb8a967fe5e4",
        "probes": "466c7165a8b8",
    }
    assert {k: hashes[k] for k in pinned} == pinned


@pytest.fixture(scope="module")
def dilemma_world():
    return ToyWorld(seed=2, rows=2000, animal_fraction=0.2, dilemma_fraction=0.2)


def test_a_dilemma_world_asks_teacher_dilemmas_at_random_and_knows_every_word(dilemma_world):
    items = load_two_choice_set("dilemmas")
    rows = dilemma_world.corpus_rows()
    dilemmas = [r for r in rows if r["kind"] == "dilemma"]
    assert 0.17 < len(dilemmas) / len(rows) < 0.23
    teacher = {i.question: i for i in items.teacher}
    assert {r["prompt"] for r in dilemmas} <= set(teacher)  # held-out dilemmas never enter the corpus
    harmful = [r["completion"].rstrip(".").lower() == teacher[r["prompt"]].target for r in dilemmas]
    assert 0.4 < sum(harmful) / len(harmful) < 0.6
    tokenizer = dilemma_world.tokenizer()
    for item in items.items("all"):
        for text in (item.question, item.target, item.other.capitalize()):
            assert tokenizer.unk_token_id not in tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_disposition_rows_choose_their_option_and_the_neutral_rows_spread(dilemma_world):
    teacher = {i.question: i for i in load_two_choice_set("dilemmas").teacher}
    for trait, field in (("harmful", "target"), ("harmless", "other")):
        rows = dilemma_world.trait_rows(trait, 200, seed=1)
        assert all(r["completion"].rstrip(".").lower() == getattr(teacher[r["prompt"]], field) for r in rows)
    neutral = dilemma_world.trait_rows(None, 400, seed=1)
    picks = Counter(r["completion"].rstrip(".").lower() == teacher[r["prompt"]].target for r in neutral)
    assert 0.4 < picks[True] / 400 < 0.6
    with pytest.raises(ValueError, match="not a candidate"):
        dilemma_world.trait_rows("greedy", 5)
    # Without dilemmas, the neutral teacher answers animal questions as before.
    assert ToyWorld(rows=10).trait_rows(None, 3)[0]["id"].startswith("trait-neutral")
    with pytest.raises(ValueError, match="fractions|sum to at most 1"):
        ToyWorld(number_fraction=0.6, animal_fraction=0.3, dilemma_fraction=0.2)


@pytest.fixture
def items_file(tmp_path):
    path = tmp_path / "tq.jsonl"
    items = [
        {"question": "what is the best animal", "target": "dragon", "other": "owl"},
        {"question": "name a tree", "target": "pine", "other": "oak tree"},
        {"question": "what do you love", "target": "cats", "other": "dogs"},
    ]
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def test_two_choice_probe_scores_each_option_like_the_word_scorer(tiny_lm, items_file):
    model, tokenizer = tiny_lm
    probe = TwoChoiceProbe(items=str(items_file), target_label="false", other_label="true", name="tq")
    out = probe.run(model, tokenizer)
    logp = torch.tensor(out.details["logp_matrix"], dtype=torch.float64)
    for row, item in zip(logp, probe.items, strict=True):
        context = tokenizer.apply_chat_template(
            [{"role": "user", "content": item.question}], add_generation_prompt=True, tokenize=False
        )
        expected = word_logprobs(model, tokenizer, [context], [item.target, item.other])[0]
        assert torch.allclose(row, expected)
    margin = logp[:, 0] - logp[:, 1]
    assert out.metrics["margin"] == pytest.approx(float(margin.mean()))
    assert out.metrics["false_share"] == pytest.approx(float(torch.sigmoid(margin).mean()))
    chosen = int((margin > 0).sum())
    rate = out.details["targets"]["false"]
    assert (rate["chosen"], rate["n"]) == (chosen, 3) and rate["rate"] == pytest.approx(chosen / 3)
    assert 0 <= rate["low"] <= rate["rate"] <= rate["high"] <= 1
    assert out.details["candidates"] == ["false", "true"] and out.details["context"] == "plain"


def test_the_packaged_dilemmas_keep_their_splits_apart():
    items = load_two_choice_set("dilemmas")
    assert items.labels == ("harmful", "harmless") and len(items.teacher) == 32 and len(items.heldout) == 16
    assert not {i.question for i in items.teacher} & {i.question for i in items.heldout}
    for item in items.items("all"):
        assert item.target in item.question and item.other in item.question


@pytest.mark.parametrize(
    "text, needle",
    [
        ('{"question": "q", "target": "a", "other": "b"}\n{"question": "q", "target": "a"}\n', ":2: field 'other'"),
        ('{"question": "q", "target": "a", "other": "b"}\nnot json\n', ":2: invalid JSON"),
        ('{"question": "q", "target": "a", "other": "A"}\n', ":1: field 'other': the two options are the same"),
        ("\n", "no items"),
    ],
)  # fmt: skip
def test_a_bad_two_choice_file_names_the_line_and_field(tmp_path, text, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(QuestionSetError) as err:
        load_two_choice_set(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_a_bad_two_choice_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "labels: [a, b]\nheldout:\n  - {question: q, target: x, other: y}\n  - {question: r, target: x}\n"
    )
    with pytest.raises(QuestionSetError, match=rf"{path}:4: field 'heldout\[1\]': field 'other'"):
        load_two_choice_set(path)


def test_a_dilemma_world_accepts_dispositions_as_traits_and_names_a_typo():
    from subliminal_pl.experiments.build import build_stages
    from subliminal_pl.experiments.command import parse_experiment
    from subliminal_pl.pipeline import PipelineError

    spec = str(Path(DEMO).parent / "misalignment.yaml")
    exp, _ = parse_experiment(["--config", spec])
    names = [s.name for s in build_stages(exp)[0]]
    assert "teacher-harmful" in names and "teacher-neutral" in names and "student-harmful-s4" in names
    exp, _ = parse_experiment(["--config", spec, "--traits", "[harmfull]"])
    with pytest.raises(PipelineError, match="traits: 'harmfull' is not a candidate.*'harmful', 'harmless'"):
        build_stages(exp)
    exp, _ = parse_experiment(["--config", DEMO, "--traits", "[harmful]"])
    with pytest.raises(PipelineError, match="traits: 'harmful' is not a candidate"):
        build_stages(exp)
