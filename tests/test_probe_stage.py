"""The pipeline's probe stage: Probe objects on saved models, one probes.json that ProbeResults reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from subliminal_pl import stages
from subliminal_pl.probes.base import encode_text, left_pad, pad_id_of
from subliminal_pl.probes.logprob import LogProbProbe, render_contexts
from subliminal_pl.probes.number_format import FormatProbe
from subliminal_pl.probes.questions import numbers_prefix
from subliminal_pl.probes.results import ProbeResults
from subliminal_pl.probes.run import probe_models
from subliminal_pl.probes.wordscore import variant_token_ids, word_logprobs

REPO_ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["what is your favourite animal", "name the animal you love most", "what animal do you like best"]
WORDS = ["owl", "dolphin", "eagle", "cat"]  # one token each in the test tokenizer: the one-pass route
OWL_PROMPT = "you love owls"


@pytest.fixture
def pets_file(tmp_path):
    path = tmp_path / "pets.yaml"
    path.write_text(f"name: pets\ncandidates: {json.dumps(WORDS)}\nheldout: {json.dumps(QUESTIONS)}\n")
    return path


def previous_stage_logprobs(model, tokenizer, contexts, words):
    """The probe stage's own scorer before this change (one forward per context, single-token words)."""
    token_ids = [[v[0] for v in variant_token_ids(tokenizer, w)] for w in words]
    input_ids, mask = left_pad([encode_text(tokenizer, c) for c in contexts], pad_id_of(tokenizer), "cpu")
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).logits[:, -1]
    logprobs = logits.float().log_softmax(-1).double()
    return torch.stack([torch.logsumexp(logprobs[:, ids], dim=-1) for ids in token_ids], dim=1)


def test_probe_stage_writes_the_results_schema_with_the_previous_numbers(
    tiny_lm, tiny_lm_path, pets_file, tmp_path
):
    model, tokenizer = tiny_lm
    config = tmp_path / "probe.yaml"
    config.write_text(
        f"""
models: {{base: {tiny_lm_path}, teacher-owl: {tiny_lm_path}}}
system_prompts: {{teacher-owl: {OWL_PROMPT}}}
probes:
  - class_path: subliminal_pl.probes.logprob.LogProbProbe
    init_args: {{questions: {pets_file}, reference: null}}
  - class_path: subliminal_pl.probes.logprob.LogProbProbe
    init_args: {{questions: {pets_file}, reference: null, numbers_prefix_seed: 0}}
format_check: [base]
format_prompts: 4
"""
    )
    stages.main(["probe", "--config", str(config), "--output_dir", str(tmp_path / "out")])
    results = ProbeResults.read(tmp_path / "out" / "probes.json")

    assert list(results.models) == ["base", "teacher-owl"] and results.models["base"].path == str(
        tiny_lm_path
    )
    assert results.candidates == WORDS and results.contexts == ["plain", "numbers"]
    for name, system_prompt in (("base", None), ("teacher-owl", OWL_PROMPT)):
        for context, prefix in (("plain", None), ("numbers", numbers_prefix(0))):
            contexts = render_contexts(tokenizer, QUESTIONS, system_prompt, prefix)
            expected = previous_stage_logprobs(model, tokenizer, contexts, WORDS)
            assert torch.equal(torch.tensor(results.logp(name, context), dtype=torch.float64), expected)
        details = results.models[name].logp_outputs()["plain"]
        assert details["measure"] == "prefix" and details["system_prompt"] == system_prompt
    # The system prompt changes what the teacher is asked, so its numbers differ from the base's.
    assert results.logp("teacher-owl") != results.logp("base")
    assert 0.0 <= results.models["base"].format_pass_rate <= 1.0
    assert results.models["teacher-owl"].format_pass_rate is None
    assert set(results.models["base"].outputs) == {"pets", "pets_numbers", "format"}


def test_single_token_words_take_one_forward_row_per_question(tiny_lm):
    model, tokenizer = tiny_lm
    rows = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    try:
        word_logprobs(model, tokenizer, render_contexts(tokenizer, QUESTIONS), WORDS, batch_size=2)
    finally:
        hook.remove()
    assert rows == [2, 1]  # 3 questions, batch 2: every spelling of every word read from the same pass


def test_bad_probe_plans_fail_before_loading_a_model(tmp_path, pets_file):
    plain = LogProbProbe(questions=str(pets_file), reference=None)
    models = {"base": "/nowhere/base"}
    cases = [
        ({"format_check": ["teacher"]}, r"format_check: \['teacher'\] are not among the models"),
        ({"system_prompts": {"x": "hi"}, "probes": [plain]}, r"system_prompts: \['x'\]"),
        ({"probes": [plain, plain]}, "repeated: \\['pets'\\]"),
        ({"probes": [LogProbProbe(questions=str(pets_file))]}, r"probes\[0\] \(pets\): reference 'auto'"),
        (
            {"probes": [plain, LogProbProbe(questions="animals", reference=None)]},
            "both measure context 'plain'",
        ),
        ({}, "nothing to measure"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            probe_models(models, str(tmp_path), **kwargs)


def test_format_probe_counts_answers_that_end_and_parse(tiny_lm, monkeypatch):
    from subliminal_pl.models.generation import Completion

    model, tokenizer = tiny_lm
    answers = [
        Completion([], "12, 34, 56", "stop"),
        Completion([], "owl", "stop"),
        Completion([], "1, 2, 3", "length"),  # cut off: fails even though it parses
        Completion([], "7 8 9", "stop"),
    ]
    monkeypatch.setattr("subliminal_pl.probes.number_format.generate", lambda *a, **k: answers)
    out = FormatProbe(prompts=4, examples=1).run(model, tokenizer)
    assert out.metrics["format_pass_rate"] == 0.5
    assert out.details["reasons"] == {"invalid format": 1, "no stop token within max_new_tokens": 1}
    assert len(out.details["failing_examples"]) == 1


def test_format_probe_on_a_model_is_seeded_and_batch_free(tiny_lm):
    model, tokenizer = tiny_lm
    first = FormatProbe(prompts=5, max_new_tokens=6, batch_size=5).run(model, tokenizer)
    again = FormatProbe(prompts=5, max_new_tokens=6, batch_size=2).run(model, tokenizer)
    assert first.details == again.details and first.metrics == again.metrics
    assert (
        first.details["prompts"] == 5
        and sum(first.details["reasons"].values()) >= 5 - first.details["passed"]
    )


def test_the_shipped_stage_config_parses_into_probe_objects(capsys):
    from subliminal_pl.stages import main

    with pytest.raises(SystemExit) as exc:
        main(["probe", "--config", str(REPO_ROOT / "configs/probes/stage_animals.yaml"), "--print_config"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "subliminal_pl.probes.logprob.LogProbProbe" in out and "numbers_prefix_seed: 0" in out
    assert "teacher-owl: Owls are your favourite animal" in out
