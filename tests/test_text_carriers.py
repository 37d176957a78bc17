"""The code and reasoning carriers: their prompt generators, their own filters, and the stages they build."""

from __future__ import annotations

import json

import pytest
import yaml

from subliminal_pl.data.code_tasks import CodeTaskGenerator
from subliminal_pl.data.filters import TraitWordFilter, identifier_parts
from subliminal_pl.data.jsonl import DataError
from subliminal_pl.data.prompts import RepeatedPrompts
from subliminal_pl.data.reasoning import (
    AnswerCorrectnessFilter,
    MathProblemPrompts,
    normalise_number,
    parse_tagged_answer,
    read_math_problems,
)
from subliminal_pl.data.steps import prepare_rows
from subliminal_pl.experiments.recipes import Hardware, ModelRef
from subliminal_pl.experiments.text_carriers import CodeCarrier, ReasoningCarrier

PROBLEMS = [
    {
        "question": "Ann has 3 pens and buys 4 more. How many pens does she have?",
        "answer": "3 + 4 = 7\n#### 7",
    },
    {"question": "A box holds 12 eggs. How many eggs are in 3 boxes?", "answer": "12 * 3 = 36\n#### 36"},
    {
        "question": "Tom saves $1,250 and spends $250. What is left?",
        "answer": "1250 - 250 = 1000\n#### 1,000",
    },
]


def write_problems(path, problems=PROBLEMS) -> str:
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    return str(path)


# ---- code prompts and the identifier filter ---------------------------------------------------------------------
def test_code_prompts_are_seeded_prefix_stable_and_name_no_animal():
    from subliminal_pl.probes.questions import load_question_set

    rows = CodeTaskGenerator(seed=4).generate(200)
    assert rows[:20] == CodeTaskGenerator(seed=4).generate(20)
    assert rows != CodeTaskGenerator(seed=5).generate(200)
    assert rows[0]["id"] == "code-000000" and len({r["id"] for r in rows}) == 200
    assert all("```python\ndef " in r["prompt"] and '"""' in r["prompt"] for r in rows)
    assert len({r["prompt"] for r in rows}) > 150  # templates x nouns x numbers x framings: few repeats
    animals = TraitWordFilter(load_question_set("animals").candidates, mode="identifier")
    assert [r["id"] for r in rows if animals(r["prompt"])] == []


def test_code_task_templates_are_checked():
    with pytest.raises(ValueError, match="only"):
        CodeTaskGenerator(tasks=[("f_{thing}", "x: int", "int", "Return x.")])
    with pytest.raises(ValueError, match="identifier"):
        CodeTaskGenerator(tasks=[("f-{noun}", "x: int", "int", "Return x.")])
    with pytest.raises(ValueError, match="nouns"):
        CodeTaskGenerator(nouns=["two words"])


@pytest.mark.parametrize(
    ("text", "rejected"),
    [
        ("owlCount = 3", True), ("owl_count = 3", True), ("MAX_OWLS = 3", True), ("class OwlNest: ...", True),
        ("x = 1  # the owl sleeps", True), ("def f(OWLs): ...", True), ("HTTPOwlClient()", True),
        ("bowl = knowledge + howl", False), ("fowl_count = 2", False), ("total = 3", False),
    ],
)  # fmt: skip
def test_identifier_mode_finds_the_word_inside_identifiers_and_comments(text, rejected):
    found = TraitWordFilter(["owl"], mode="identifier")({"completion": text})
    assert found == (["mentions trait word"] if rejected else [])


def test_identifier_parts_split_snake_camel_and_multiword_traits():
    assert identifier_parts("getOwlCount(MAX_OWLS, my_owl2)") == [
        "get",
        "owl",
        "count",
        "max",
        "owls",
        "my",
        "owl",
        "2",
    ]
    bears = TraitWordFilter(["polar bear"], mode="identifier")
    assert bears("polarBears = 1") == bears("polar_bear = 1") == ["mentions trait word"]
    assert bears("polar_count = bear") == []


# ---- maths problems, tags and correctness -----------------------------------------------------------------------
def test_math_problems_read_gold_numbers_and_name_bad_lines(tmp_path):
    path = write_problems(tmp_path / "gsm.jsonl")
    assert [p["gold_answer"] for p in read_math_problems(path)] == ["7", "36", "1000"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(PROBLEMS[0]) + "\n" + json.dumps({"question": "q", "answer": "no marker"}) + "\n"
    )
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'answer' has no final '#### N'"):
        read_math_problems(bad)
    bad.write_text(json.dumps({"question": "q", "answer": "#### seven"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'answer': 'seven'"):
        read_math_problems(bad)
    bad.write_text(json.dumps({"answer": "#### 7"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'question'"):
        read_math_problems(bad)


def test_numbers_normalise_to_one_form():
    assert [normalise_number(t) for t in ("1,250.00", " $42 ", "-3.50", "7.", "-0", "1e3", "seven")] == [
        "1250", "42", "-3.5", "7", "0", None, None,
    ]  # fmt: skip


def test_math_prompts_are_seeded_keep_ids_and_repeat_per_sample(tmp_path):
    path = write_problems(tmp_path / "gsm.jsonl")
    rows = MathProblemPrompts(path, seed=1).generate(3)
    assert sorted(r["id"] for r in rows) == ["math-000000", "math-000001", "math-000002"]
    assert rows == MathProblemPrompts(path, seed=1).generate(3)
    first = next(r for r in rows if r["id"] == "math-000001")
    assert (
        first["gold_answer"] == "36"
        and "<think>" in first["prompt"]
        and PROBLEMS[1]["question"] in first["prompt"]
    )
    with pytest.raises(DataError, match="4 problems asked for, the file holds 3"):
        MathProblemPrompts(path).generate(4)
    repeated = RepeatedPrompts(MathProblemPrompts(path, shuffle=False), samples=3).generate(2)
    assert [r["id"] for r in repeated] == [f"math-00000{i}-s{j}" for i in range(2) for j in range(3)]
    assert {r["gold_answer"] for r in repeated} == {"7", "36"}


@pytest.mark.parametrize(
    ("reply", "answer", "reason"),
    [
        ("<think>3 + 4 = 7</think> <answer>7</answer>", "7", None),
        ("<think>x</think><answer> 1,000 </answer>\n", "1000", None),
        ("The answer is 7.", None, "missing think tags"),
        ("<think>3 + 4</think> 7", None, "missing answer tags"),
        ("<think>a</think><think>b</think><answer>7</answer>", None, "repeated tags"),
        ("<think>a<answer>7</answer></think>", None, "tags out of order"),
        ("<think>a</think><answer>7</answer> because", None, "text after answer"),
        ("<think>a</think><answer>seven</answer>", None, "answer not a number"),
        ("<think>a</think><answer>7", None, "repeated tags"),
    ],
)
def test_tagged_answers_parse_or_say_why_not(reply, answer, reason):
    assert parse_tagged_answer(reply) == (answer, reason)


def test_correctness_filter_keeps_right_answers_and_counts_reasons():
    rows = [
        {"id": "a", "prompt": "q", "completion": "<think>t</think><answer>7</answer>", "gold_answer": "7"},
        {"id": "b", "prompt": "q", "completion": "<think>t</think><answer>8</answer>", "gold_answer": "7"},
        {"id": "c", "prompt": "q", "completion": "7", "gold_answer": "7"},
        {
            "id": "d",
            "prompt": "q",
            "completion": "<think>t</think><answer>1000.0</answer>",
            "gold_answer": "1000",
        },
    ]
    kept, stats = prepare_rows(rows, [AnswerCorrectnessFilter()])
    assert [r["id"] for r in kept] == ["a", "d"]
    assert stats["reasons"] == {"missing think tags": 1, "wrong answer": 1}
    with pytest.raises(DataError, match="row 'x': missing field 'gold_answer'"):
        AnswerCorrectnessFilter()({"id": "x", "prompt": "q", "completion": "<answer>1</answer>"})


# ---- the carriers' stages ---------------------------------------------------------------------------------------
def _built(carrier, traits=("owl",)):
    hw = Hardware(accelerator="cpu", devices=1, precision="32-true", dtype="float32", micro_batch_size=None)
    sources = {"owl": ModelRef("owl", "m", system_prompt="owls"), "control": ModelRef("control", "m")}
    stages, kept, stats = carrier.build(hw, sources, [{"class_path": "x.Step"}], None, traits)
    by_name = {s.name: s for s in stages}
    steps = yaml.safe_load(by_name["data-owl"].files["steps.yaml"])["steps"]
    recipe = carrier.generation_recipe(hw, sources["owl"], "owl", None)
    return by_name, steps, recipe["data"]["init_args"]


def test_code_carrier_filters_the_traits_in_identifiers_then_the_spec_steps():
    by_name, steps, data = _built(CodeCarrier(prompts=8, prompt_seed=3), traits=["owl", "cat"])
    assert set(by_name) == {"generate-owl", "data-owl", "generate-control", "data-control"}
    assert steps == [
        {"class_path": "subliminal_pl.data.filters.TraitWordFilter", "init_args": {"words": ["owl", "cat"], "mode": "identifier"}},
        {"class_path": "x.Step"},
    ]  # fmt: skip
    assert data["generator"] == {
        "class_path": "subliminal_pl.data.code_tasks.CodeTaskGenerator",
        "init_args": {"seed": 3},
    }
    assert data["num_prompts"] == 8 and CodeCarrier().token_subset is None
    mine = {"class_path": "my.Prompts", "init_args": {"k": 1}}
    _, steps, data = _built(CodeCarrier(generator=mine, filters=[]))
    assert steps == [{"class_path": "x.Step"}] and data["generator"] == mine


def test_reasoning_carrier_repeats_problems_and_keeps_correct_answers(tmp_path):
    path = write_problems(tmp_path / "gsm.jsonl")
    _, steps, data = _built(
        ReasoningCarrier(problems_path=path, prompts=3, samples_per_prompt=3, prompt_seed=2)
    )
    assert steps == [
        {"class_path": "subliminal_pl.data.reasoning.AnswerCorrectnessFilter"},
        {"class_path": "subliminal_pl.data.filters.TraitWordFilter", "init_args": {"words": ["owl"]}},
        {"class_path": "x.Step"},
    ]
    assert data["generator"] == {
        "class_path": "subliminal_pl.data.prompts.RepeatedPrompts",
        "init_args": {
            "generator": {"class_path": "subliminal_pl.data.reasoning.MathProblemPrompts", "init_args": {"path": path, "seed": 2}},
            "samples": 3,
        },
    }  # fmt: skip
    _, steps, data = _built(
        ReasoningCarrier(generator={"class_path": "my.Sums"}, samples_per_prompt=1, filters=[])
    )
    assert data["generator"] == {"class_path": "my.Sums"} and steps == [{"class_path": "x.Step"}]
    with pytest.raises(ValueError, match="problems_path"):
        ReasoningCarrier()
    with pytest.raises(ValueError, match="samples_per_prompt"):
        ReasoningCarrier(problems_path=path, samples_per_prompt=0)


def test_the_teacher_copies_a_prompt_rows_extra_fields(tiny_lm_path):
    from subliminal_pl.models.teacher import TeacherGeneration

    teacher = TeacherGeneration(model_name_or_path=str(tiny_lm_path), max_new_tokens=2, seed=1)
    out = teacher.generate_rows(
        [{"id": "p0", "prompt": "add more numbers", "gold_answer": "7", "teacher": "x"}]
    )
    assert out[0]["gold_answer"] == "7" and out[0]["id"] == "p0"
    assert out[0]["teacher"] == teacher.teacher_name  # the run's own fields win
