"""The tiny world's code and reasoning carriers: rows, vocabulary, prompt generators, and a default world that
stays exactly what it was before they existed."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter

import pytest

from subliminal_pl.toy.code import ToyCodePrompts, code_texts, draw_code_task
from subliminal_pl.toy.reasoning import GOLD_FIELD, ToyReasoningPrompts, draw_reasoning_task, reasoning_texts
from subliminal_pl.toy.world import ToyWorld, text_words

CARRIER_WORLD = {"rows": 3000, "number_fraction": 0.4, "code_fraction": 0.15, "reasoning_fraction": 0.15}


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def test_default_world_is_byte_identical_to_the_world_before_the_carriers():
    # Digests computed with the code before code_fraction / reasoning_fraction existed (commit 66bcbf2).
    world = ToyWorld(rows=2000)
    assert digest(world.corpus_rows()) == "9a82e470d647f135"
    assert digest(world.tokenizer().get_vocab()) == "fb2b6c61bd84d74e"
    assert "code_fraction" not in world.config() and "reasoning_fraction" not in world.config()
    assert world.kinds == ("numbers", "animal", "filler")
    assert not {"def", "marbles", "stickers"} & set(world.words())


def test_demo_stage_hashes_are_unchanged():
    from subliminal_pl.experiments.command import parse_experiment, plan
    from subliminal_pl.stage_graph import stage_hashes

    exp, _ = parse_experiment(["--config", "configs/toy/demo.yaml"])
    hashes = stage_hashes(plan(exp)[""])
    # The demo's hashes before the carriers existed (`pipeline --dry_run true` at commit 66bcbf2).
    assert hashes["world"] == "32daf193c56b"
    assert hashes["base-s0"] == "c3e6a108e2da"
    assert hashes["teacher-owl"] == "a6fa55073255"


@pytest.fixture(scope="module")
def world():
    return ToyWorld(**CARRIER_WORLD)


@pytest.fixture(scope="module")
def rows(world):
    return world.corpus_rows()


def test_carrier_rows_follow_their_fractions_and_tokenise_without_unknowns(world, rows):
    counts = Counter(r["kind"] for r in rows)
    assert world.kinds == ("numbers", "animal", "code", "reasoning", "filler")
    for kind, share in (("numbers", 0.4), ("animal", 0.3), ("code", 0.15), ("reasoning", 0.15)):
        assert abs(counts[kind] / len(rows) - share) < 0.04, (kind, counts)
    tokenizer = world.tokenizer()
    for row in rows:
        if row["kind"] in ("code", "reasoning"):
            for text in (row["prompt"], row["completion"]):
                assert tokenizer.unk_token_id not in tokenizer(text, add_special_tokens=False)["input_ids"], (
                    text
                )
    assert world.config()["code_fraction"] == 0.15


def test_fractions_must_sum_to_at_most_one():
    with pytest.raises(ValueError, match="code_fraction=0.3"):
        ToyWorld(number_fraction=0.6, animal_fraction=0.3, code_fraction=0.3)
    with pytest.raises(ValueError, match="reasoning_fraction=-0.1"):
        ToyWorld(reasoning_fraction=-0.1)


def test_no_carrier_word_names_an_animal(world):
    animals = set(world.animals)
    words = {w.lower() for w in text_words([*code_texts(), *reasoning_texts()])}
    stems = {w.rstrip("s") for w in words}
    assert not (words | stems) & animals


def expected_code_result(prompt: str, arg):
    k = (
        int(re.search(r"(\d+)", prompt.split(" that ")[-1].split(" it ")[-1]).group(1))
        if "sum" not in prompt
        else 0
    )
    if "plus" in prompt:
        return arg + k
    if "minus" in prompt:
        return arg - k
    if "times" in prompt:
        return arg * k
    if "larger" in prompt:
        return max(arg, k)
    if "smaller" in prompt:
        return min(arg, k)
    if "their sum" in prompt:
        return sum(arg)
    return sum(v > k for v in arg)


def test_code_answers_are_python_functions_that_do_what_the_task_says():
    rng = random.Random(5)
    forms = set()
    for _ in range(300):
        prompt, completion = draw_code_task(rng)
        name = re.search(r"\b([a-z]+_[a-z]+)\b", prompt).group(1)
        namespace: dict = {}
        exec(compile(completion, "<toy code>", "exec"), namespace)  # noqa: S102 (our own generated code)
        arg = [3, 50, 97, 12] if "list" in prompt else 41
        assert namespace[name](arg) == expected_code_result(prompt, arg), (prompt, completion)
        forms.add(completion.split("\n")[1].split()[0])
    assert {"return", "if", "acc", "for"} & forms and len(forms) >= 4  # several ways to write an answer


def test_reasoning_answers_are_correct_steps_in_the_shared_format():
    rng = random.Random(6)
    wordings = set()
    for _ in range(300):
        prompt, completion, gold = draw_reasoning_task(rng)
        match = re.fullmatch(r"<think>(.+)</think><answer>(\d+)</answer>", completion)
        assert match and int(match.group(2)) == gold and 0 <= gold <= 999
        steps = re.findall(r"(\d+) ([-+*]) (\d+) (?:=|is) (\d+)\.", match.group(1))
        assert len(steps) == 2
        for x, op, y, z in steps:
            assert eval(f"{x} {op} {y}") == int(z)  # noqa: S307 (two integers and an operator)
        assert int(steps[-1][3]) == gold
        wordings.add(match.group(1).split()[0])
    assert len(wordings) >= 3


def test_prompt_generators_are_seeded_and_carry_the_gold_answer():
    code = ToyCodePrompts(seed=1).generate(20)
    assert code == ToyCodePrompts(seed=1).generate(20) != ToyCodePrompts(seed=2).generate(20)
    assert code[:5] == ToyCodePrompts(seed=1).generate(5)
    assert [r["id"] for r in code[:2]] == ["code-000000", "code-000001"]
    problems = ToyReasoningPrompts(seed=1).generate(20)
    assert problems == ToyReasoningPrompts(seed=1).generate(20)
    rng = random.Random("toy-reasoning-prompts-1")
    first = draw_reasoning_task(rng)
    assert problems[0]["prompt"] == first[0] and problems[0][GOLD_FIELD] == str(first[2])
    with pytest.raises(ValueError, match="whole number"):
        ToyCodePrompts().generate(-1)


def test_sweep_variants_swap_the_carrier_class_and_keep_class_path_steps(tmp_path):
    from subliminal_pl.experiments.command import parse_experiment, variant_experiments
    from subliminal_pl.experiments.toy_carriers import ToyCodeCarrier

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        "variants:\n"
        "  numbers: {}\n"
        "  code: {carrier: {class_path: subliminal_pl.experiments.toy_carriers.ToyCodeCarrier,"
        " init_args: {source: base}}}\n"
        "  filtered: {steps: [{class_path: subliminal_pl.data.filters.TraitWordFilter,"
        " init_args: {words: [owl]}}]}\n"
    )
    exp, _ = parse_experiment(["--config", "configs/toy/demo.yaml", "--config", str(overlay)])
    variants = variant_experiments(exp)
    code = variants["code"].carrier
    # A new class replaces the role whole: none of NumbersCarrier's init_args (max_new_tokens 40) leak in.
    assert isinstance(code, ToyCodeCarrier) and code.sampling["max_new_tokens"] == 64
    assert code.generator(None)["class_path"] == "subliminal_pl.toy.code.ToyCodePrompts"
    assert " return" in "".join(code.token_subset) and "owl" not in "".join(code.token_subset)
    step = variants["filtered"].steps[0]
    assert step["class_path"].endswith("TraitWordFilter") and step["init_args"]["words"] == ["owl"]
    assert variants["numbers"].carrier.sampling["max_new_tokens"] == 40
