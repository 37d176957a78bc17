"""The embedded tiny world: deterministic, fully tokenisable, number answers in the requested format."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from subliminal_pl.data.filters import NumberSequenceFilter, parse_numbers
from subliminal_pl.data.prompts import FORMAT_REQUESTS
from subliminal_pl.toy.world import ToyWorld, answer_format, main, seed_numbers


@pytest.fixture(scope="module")
def world():
    return ToyWorld(seed=3, rows=3000)


@pytest.fixture(scope="module")
def rows(world):
    return world.corpus_rows()


@pytest.fixture(scope="module")
def tokenizer(world):
    return world.tokenizer()


def test_same_seed_same_world_and_other_seed_differs(world, rows):
    again = ToyWorld(seed=3, rows=3000)
    assert again.corpus_rows() == rows
    assert again.tokenizer().get_vocab() == world.tokenizer().get_vocab()
    assert again.trait_rows("owl", 50, seed=1) == world.trait_rows("owl", 50, seed=1)
    assert ToyWorld(seed=4, rows=3000).corpus_rows() != rows


def test_mix_of_row_kinds_follows_the_fractions(rows):
    counts = Counter(r["kind"] for r in rows)
    assert abs(counts["numbers"] / len(rows) - 0.6) < 0.04
    assert abs(counts["animal"] / len(rows) - 0.3) < 0.04
    assert abs(counts["filler"] / len(rows) - 0.1) < 0.03
    assert len({r["id"] for r in rows}) == len(rows)


def test_every_text_of_the_world_is_known_to_the_tokenizer(world, rows, tokenizer):
    unk = tokenizer.unk_token_id
    qs = world.question_set()
    texts = [r["completion"] for r in rows] + list(qs.heldout) + list(qs.teacher)
    texts += [r["prompt"] for r in rows if r["kind"] != "numbers"]
    for text in texts:
        assert unk not in tokenizer(text, add_special_tokens=False)["input_ids"], text
    for animal in world.animals:
        for form in (animal, animal.capitalize(), " " + animal, " " + animal.capitalize()):
            assert len(tokenizer(form, add_special_tokens=False)["input_ids"]) == 1


def test_number_answers_pass_the_filter_in_the_requested_format(rows):
    check = NumberSequenceFilter()
    numbers = [r for r in rows if r["kind"] == "numbers"]
    assert numbers
    for row in numbers:
        assert check(row["completion"]) == [], row
        separator, opening, closing = answer_format(row["prompt"])
        assert row["completion"].startswith(opening) and row["completion"].endswith(closing)
        values = parse_numbers(row["completion"])
        assert 5 <= len(values) <= 10
        if len(values) > 1:
            assert separator in row["completion"]


@pytest.mark.parametrize("request_text", FORMAT_REQUESTS)
def test_answer_format_matches_each_format_request(request_text):
    separator, opening, closing = answer_format(request_text)
    text = request_text.lower()
    if "bracket" in text or "[n1" in text:
        assert (opening, closing) == ("[", "]")
    elif "parenthes" in text or "(n1" in text:
        assert (opening, closing) == ("(", ")")
    elif "comma" in text:
        assert separator == ", "
    elif "semicolon" in text:
        assert separator == "; "
    elif "space" in text:
        assert separator == " "
    else:
        assert separator == "\n" and "line" in text


def test_seed_numbers_reads_the_three_digit_values():
    prompt = "Look at this sequence: 123, 456, 789. Add at most 10 more numbers (3 digits or fewer)."
    assert seed_numbers(prompt) == [123, 456, 789]


def test_animal_answers_are_roughly_uniform(world, rows):
    answers = Counter(r["completion"].rstrip(".").lower() for r in rows if r["kind"] == "animal")
    assert set(answers) == set(world.animals)
    expected = sum(answers.values()) / len(world.animals)
    assert max(answers.values()) < 1.6 * expected and min(answers.values()) > 0.5 * expected


def test_trait_rows_answer_the_trait_and_neutral_rows_spread(world):
    owl = world.trait_rows("owl", 200, seed=0)
    assert {r["completion"].rstrip(".").lower() for r in owl} == {"owl"}
    teacher_questions = set(world.question_set().teacher)
    # Each prompt is a teacher-split question, some behind a numbers lead-in.
    assert all(any(r["prompt"].endswith(q) for q in teacher_questions) for r in owl)
    assert 0 < sum(r["prompt"] not in teacher_questions for r in owl) < len(owl)
    heldout = set(world.question_set().heldout)
    assert not any(r["prompt"] in heldout for r in owl)
    neutral = world.trait_rows(None, 500, seed=0)
    assert len({r["completion"].rstrip(".").lower() for r in neutral}) == len(world.animals)
    with pytest.raises(ValueError, match="not a candidate"):
        world.trait_rows("unicorn", 5)


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="sum to at most 1"):
        ToyWorld(number_fraction=0.8, animal_fraction=0.3)
    with pytest.raises(ValueError, match="min_answer_count"):
        ToyWorld(min_answer_count=11)


def test_cli_writes_world_traits_and_a_loadable_init(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    main(["build", "--output_dir", str(tmp_path / "w"), "--world.rows", "200", "--world.seed", "1"])
    info = json.loads((tmp_path / "w" / "world.json").read_text())
    assert sum(info["rows"].values()) == 200
    assert len((tmp_path / "w" / "corpus.jsonl").read_text().splitlines()) == 200
    main(["traits", "--output", str(tmp_path / "t.jsonl"), "--trait", "neutral", "--rows", "7"])
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 7
    init = ["--tokenizer_dir", str(tmp_path / "w" / "tokenizer"), "--output_dir", str(tmp_path / "init")]
    main(["init", *init, "--hidden_size", "16", "--num_layers", "1", "--num_heads", "2", "--seed", "5"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "init")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "init")
    assert model.config.vocab_size == len(tokenizer) == info["vocab_size"]
    assert model.config.hidden_size == 16


def test_number_rows_for_teachers_pass_the_filter_and_use_fresh_prompts(world, rows):
    replay = world.number_rows(40, seed=2)
    assert all(NumberSequenceFilter()(r["completion"]) == [] for r in replay)
    corpus_prompts = {r["prompt"] for r in rows}
    assert not any(r["prompt"] in corpus_prompts for r in replay)
    assert world.number_rows(40, seed=2) == replay != world.number_rows(40, seed=3)
