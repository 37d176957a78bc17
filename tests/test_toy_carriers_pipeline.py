"""The tiny world's code and reasoning carriers end to end through `subliminal-pl pipeline` (smoke-sized), with
the in-context control probe; and the toy reasoning rows in the real reasoning carrier's format."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from subliminal_pl.data.reasoning import AnswerCorrectnessFilter
from subliminal_pl.toy.reasoning import GOLD_FIELD, draw_reasoning_task

REPO = Path(__file__).resolve().parents[1]
# configs/toy/smoke.yaml shrunk to seconds, with code and reasoning rows in the world. A 3-step base writes no
# correct worked answer, so a length filter stands in for the correctness filter in the reasoning variant.
TINY = """
traits: [owl]
bases:
  init_args:
    world: {rows: 300, number_fraction: 0.3, code_fraction: 0.2, reasoning_fraction: 0.2}
    model: {hidden_size: 16, num_layers: 1, num_heads: 2}
    pretrain: {steps: 3, batch_size: 16}
teachers: {init_args: {rows: 16, fit: {steps: 2, batch_size: 8}}}
students: {seeds: [0], cross_seeds: [0], fit: {steps: 2, batch_size: 8}}
probes:
  - {class_path: subliminal_pl.probes.logprob.LogProbProbe, init_args: {reference: null}}
  - class_path: subliminal_pl.probes.in_context.InContextProbe
    init_args: {trait: owl, rows: "{{dir:data-base}}/kept.jsonl", n_rows: 1, seeds: [0, 1]}
hardware: {jobs: 1}
variants:
  code:
    carrier:
      class_path: subliminal_pl.experiments.toy_carriers.ToyCodeCarrier
      init_args: {source: base, prompts: 8, max_new_tokens: 12}
  reasoning:
    carrier:
      class_path: subliminal_pl.experiments.toy_carriers.ToyReasoningCarrier
      init_args:
        source: base
        prompts: 4
        samples_per_prompt: 2
        max_new_tokens: 12
        filters: [{class_path: subliminal_pl.data.filters.LengthFilter, init_args: {min_chars: 1}}]
"""


def test_toy_reasoning_rows_pass_the_real_correctness_filter():
    check = AnswerCorrectnessFilter()
    rng = random.Random(3)
    for i in range(200):
        _, completion, gold = draw_reasoning_task(rng)
        assert check({"id": i, "completion": completion, GOLD_FIELD: str(gold)}) == []
        assert check({"id": i, "completion": completion, GOLD_FIELD: str(gold + 1)}) == ["wrong answer"]


@pytest.fixture(scope="module")
def carrier_run(tmp_path_factory):
    from subliminal_pl.experiments.command import parse_experiment, run_experiment

    folder = tmp_path_factory.mktemp("toy_carriers")
    (folder / "tiny.yaml").write_text(TINY)
    argv = ["--config", str(REPO / "configs/toy/smoke.yaml"), "--config", str(folder / "tiny.yaml")]
    exp, _ = parse_experiment([*argv, "--out_dir", str(folder / "out")])
    lines: list[str] = []
    reports = run_experiment(exp, in_process=True, echo=lines.append)
    return folder / "out", reports, lines


def test_each_toy_carrier_runs_through_the_pipeline(carrier_run):
    out, reports, lines = carrier_run
    assert set(reports) == {"code", "reasoning"} and (out / "sweep.md").is_file()
    # The bases and teachers are shared by both variants: built once.
    assert sum("base-s0: done" in line for line in lines) == 1
    raws = [
        json.loads(x)
        for path in out.glob("stages/generate-base-*/raw.jsonl")
        for x in path.read_text().splitlines()
    ]
    reasoning = [row for row in raws if row["id"].startswith("reasoning-")]
    code = [row for row in raws if row["id"].startswith("code-")]
    assert len(code) == 8 and len(reasoning) == 8  # 4 problems x 2 samples
    assert all(
        row["prompt"].split()[0] in ("Write", "Complete", "Fill", "Code", "Define", "Implement")
        for row in code
    )
    # The gold answer travels from the prompt generator through the teacher's rows to the filters.
    assert all(row[GOLD_FIELD].isdigit() for row in reasoning)
    assert {row["id"].rsplit("-s", 1)[1] for row in reasoning} == {"0", "1"}
    # KL students are restricted to the tokens a code answer can hold (no animal among them).
    recipe = yaml.safe_load(next(out.glob("stages/student-owl-s0-*/recipe.yaml")).read_text())
    subsets = {
        json.dumps(yaml.safe_load(p.read_text())["model"]["init_args"]["kl_token_subset"])
        for p in out.glob("stages/student-owl-s0-*/recipe.yaml")
    }
    assert len(subsets) == 2 and all(" return" in s or "think" in s for s in subsets)
    assert recipe["model"]["init_args"]["trait_words"] == ["owl"]
    steps = {p.read_text() for p in out.glob("stages/data-base-*/steps.yaml")}
    assert any("TraitWordFilter" in s and "owl" in s for s in steps)
    for name in ("code", "reasoning"):
        results = json.loads((out / name / "results.json").read_text())
        [row] = results["in_context"]
        assert row["trait"] == "owl" and len(row["per_seed"]) == 2
        assert "## In-context control" in (out / name / "report.md").read_text()
