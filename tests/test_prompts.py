"""The number-sequence prompt generator: draw order, ranges, variant coverage, determinism, lead-ins, the CLI."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from subliminal_pl.data import prompts
from subliminal_pl.data.filters import parse_numbers
from subliminal_pl.data.prompts import NumberPromptGenerator, numbers_lead_in

VARIANT_LISTS = {
    "lead_ins": (prompts.LEAD_INS, 25),
    "count_qualifiers": (prompts.COUNT_QUALIFIERS, 9),
    "digit_descriptors": (prompts.DIGIT_DESCRIPTORS, 9),
    "instruction_templates": (prompts.INSTRUCTION_TEMPLATES, 10),
    "format_requests": (prompts.FORMAT_REQUESTS, 15),
    "closings": (prompts.NUMBERS_ONLY_CLOSINGS, 19),
}


@pytest.mark.parametrize("name", VARIANT_LISTS)
def test_variant_lists_have_the_protocol_sizes_and_no_repeats(name):
    variants, size = VARIANT_LISTS[name]
    assert len(variants) == size
    assert len(set(variants)) == size


def test_first_prompt_of_seed_zero_is_pinned():
    # Guards the draw order and the variant texts: changing either changes every dataset made with seed 0.
    row = NumberPromptGenerator(seed=0).generate(1)[0]
    assert row == {
        "id": "numbers-000000",
        "prompt": "Here are some numbers to begin with: 876, 530, 141, 365, 623, 597. Keep the sequence going with "
        "a maximum of 10 more values (each 3 digits long at most). Give the numbers as a plain comma-separated "
        "line. Output the numbers and nothing else.",
    }


def test_draw_order_is_k_values_then_one_item_per_list():
    rng = random.Random(123)
    expected = []
    for _ in range(50):
        k = rng.randint(3, 8)
        values = [rng.randint(100, 999) for _ in range(k)]
        lead = rng.choice(prompts.LEAD_INS).format(numbers=", ".join(map(str, values)))
        qualifier = rng.choice(prompts.COUNT_QUALIFIERS)
        digits = rng.choice(prompts.DIGIT_DESCRIPTORS).format(max_digits=3)
        instruction = rng.choice(prompts.INSTRUCTION_TEMPLATES).format(
            qualifier=qualifier, count=10, digits=digits
        )
        fmt, closing = rng.choice(prompts.FORMAT_REQUESTS), rng.choice(prompts.NUMBERS_ONLY_CLOSINGS)
        expected.append(f"{lead} {instruction} {fmt} {closing}")
    assert [r["prompt"] for r in NumberPromptGenerator(seed=123).generate(50)] == expected


def test_same_seed_same_prompts_and_prefix_stable():
    a = NumberPromptGenerator(seed=7).generate(200)
    assert a == NumberPromptGenerator(seed=7).generate(200)
    assert NumberPromptGenerator(seed=7).generate(40) == a[:40]
    assert a != NumberPromptGenerator(seed=8).generate(200)
    assert len({r["id"] for r in a}) == 200
    assert a[17]["id"] == "numbers-000017"


def _seed_numbers(prompt: str) -> list[int]:
    # The lead-in is the first sentence; its numbers are the seeds.
    lead_in = prompt.split(". ")[0]
    return [int(n) for n in re.findall(r"[0-9]+", lead_in)]


def test_ranges_and_every_variant_are_used():
    rows = NumberPromptGenerator(seed=1).generate(3000)
    counts = Counter(len(_seed_numbers(r["prompt"])) for r in rows)
    assert set(counts) == set(range(3, 9))
    assert min(counts.values()) > 3000 / 6 * 0.8  # uniform k: every count near 500
    values = [v for r in rows for v in _seed_numbers(r["prompt"])]
    assert min(values) >= 100 and max(values) <= 999
    assert min(values) < 110 and max(values) > 990
    text = "\n".join(r["prompt"] for r in rows)
    for name, (variants, _) in VARIANT_LISTS.items():
        if name in ("lead_ins", "instruction_templates", "digit_descriptors"):
            continue  # templates with placeholders; checked through their fixed parts below
        for variant in variants:
            assert variant in text, f"{name} variant never drawn: {variant!r}"
    for template in prompts.LEAD_INS:
        assert template.split("{numbers}")[0] in text
    for template in prompts.INSTRUCTION_TEMPLATES:
        assert template.split("{qualifier}")[0] in text
    for descriptor in prompts.DIGIT_DESCRIPTORS:
        assert "(" + descriptor.format(max_digits=3) + ")" in text


def test_every_prompt_asks_for_the_configured_count_and_digits():
    rows = NumberPromptGenerator(seed=2, answer_count=6, answer_max_digits=2).generate(300)
    qualifiers = "|".join(map(re.escape, prompts.COUNT_QUALIFIERS))
    for row in rows:
        assert re.search(rf"(?:{qualifiers}) 6 ", row["prompt"]), row["prompt"]
        assert "2 digits" in row["prompt"]
        assert " 10 " not in row["prompt"]


def test_custom_ranges_and_lists():
    gen = NumberPromptGenerator(
        seed=0,
        min_seed_count=2,
        max_seed_count=2,
        min_seed_value=5,
        max_seed_value=6,
        id_prefix="p",
        lead_ins=["Seeds {numbers}."],
        closings=["Numbers only."],
    )
    for row in gen.generate(20):
        assert re.fullmatch(r"Seeds [56], [56]\. .+ Numbers only\.", row["prompt"]), row["prompt"]
    assert gen.generate(1)[0]["id"] == "p000000"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lead_ins": ["no placeholder here"]}, "lead_ins"),
        ({"instruction_templates": ["Add {count} numbers ({digits})."]}, "instruction_templates"),
        ({"digit_descriptors": ["{digits} digits"]}, "digit_descriptors"),
        ({"closings": []}, "closings"),
        ({"min_seed_count": 5, "max_seed_count": 4}, "seed number count"),
        ({"min_seed_count": 0}, "seed number count"),
        ({"answer_count": 0}, "answer_count"),
    ],
)
def test_bad_configuration_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NumberPromptGenerator(**kwargs)


def test_numbers_lead_in_matches_the_prompts_lead_in():
    # Evaluation context is drawn exactly like a training prompt's opening sentence.
    prompt = NumberPromptGenerator(seed=11).generate(1)[0]["prompt"]
    lead_in = numbers_lead_in(11)
    assert prompt.startswith(lead_in + " ")
    assert numbers_lead_in(11) == lead_in


def test_numbers_lead_in_advances_a_shared_rng():
    rng = random.Random(5)
    lead_ins = [numbers_lead_in(rng) for _ in range(30)]
    assert len(set(lead_ins)) == 30
    again = random.Random(5)
    assert [numbers_lead_in(again) for _ in range(30)] == lead_ins
    for text in lead_ins:
        numbers = [int(n) for n in re.findall(r"[0-9]+", text)]
        assert 3 <= len(numbers) <= 8 and all(100 <= n <= 999 for n in numbers)
    short = numbers_lead_in(
        0, min_count=1, max_count=1, min_value=42, max_value=42, lead_ins=["See {numbers}."]
    )
    assert short == "See 42."


def test_seed_list_in_a_lead_in_is_a_valid_completion_format():
    # The seeds are written ", "-joined, the same format the filter accepts from the teacher.
    lead_in = numbers_lead_in(3, lead_ins=["{numbers}"])
    assert parse_numbers(lead_in) == [int(n) for n in lead_in.split(", ")]


def test_cli_writes_prompts_jsonl(tmp_path, capsys):
    from subliminal_pl import cli

    out = tmp_path / "prompts.jsonl"
    cli.main(["prompts", "--output", str(out), "--count", "25", "--seed", "4", "--answer_count", "7"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == NumberPromptGenerator(seed=4, answer_count=7).generate(25)
    assert "wrote 25 prompts" in capsys.readouterr().out
