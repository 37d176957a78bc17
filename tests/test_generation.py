"""The shared generation helper: a checkpoint's generation_config.json never reaches any caller's sampling."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from subliminal_pl.models.generation import SamplingSettings, generate
from subliminal_pl.models.teacher import TeacherGeneration
from subliminal_pl.probes.judges import HFJudge
from subliminal_pl.probes.number_format import FormatProbe
from subliminal_pl.probes.sampling import HFSampler

# Settings a checkpoint may ship with; each one changes what plain `model.generate(...)` produces. Suppressed
# tokens apply under greedy decoding too and are a setting callers never pass, so only the swap of the model's
# own generation config keeps them out (transformers 5 fills every unset setting from it).
POISON = {
    "suppress_tokens": list(range(10, 600)),
    "do_sample": True,
    "temperature": 0.3,
    "top_k": 1,
    "top_p": 0.5,
    "min_p": 0.2,
    "repetition_penalty": 5.0,
    "no_repeat_ngram_size": 1,
}
QUESTIONS = ["what is your favourite animal", "name the animal you love most", "what animal do you like best"]


@pytest.fixture(scope="module")
def poisoned_path(tiny_lm_path, tmp_path_factory):
    """The fixture model saved again with a generation_config.json that sets POISON."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    target = tmp_path_factory.mktemp("poisoned_lm")
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_path, dtype=torch.float32)
    model.generation_config = GenerationConfig(**{**model.generation_config.to_diff_dict(), **POISON})
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(tiny_lm_path).save_pretrained(target)
    saved = json.loads((target / "generation_config.json").read_text())
    assert {k: saved[k] for k in POISON} == POISON
    return target


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32
    ).eval(), AutoTokenizer.from_pretrained(path)


def test_the_poison_does_change_plain_generate(tiny_lm_path, poisoned_path):
    """Without the helper, the checkpoint's settings decide: the comparison below would fail."""
    outputs = []
    for path in (tiny_lm_path, poisoned_path):
        model, tokenizer = _load(path)
        ids = tokenizer(QUESTIONS[0], return_tensors="pt")["input_ids"]
        torch.manual_seed(0)
        runs = [model.generate(ids, max_new_tokens=8, pad_token_id=0, do_sample=True) for _ in range(6)]
        outputs.append([r[0, ids.shape[1] :].tolist() for r in runs])
    assert outputs[0] != outputs[1]
    assert len({tuple(r) for r in outputs[1]}) == 1  # top_k 1: the poisoned model can only answer one way


def test_every_caller_samples_the_same_from_a_poisoned_checkpoint(tiny_lm_path, poisoned_path):
    results = {}
    for label, path in (("clean", tiny_lm_path), ("poisoned", poisoned_path)):
        model, tokenizer = _load(path)
        teacher = TeacherGeneration(model_name_or_path=str(path), dtype="float32", max_new_tokens=8, seed=3)
        rows = [{"id": f"r{i}", "prompt": q} for i, q in enumerate(QUESTIONS * 3)]
        judge = HFJudge(str(path), dtype="float32", device="cpu", max_new_tokens=4)
        sampled_judge = HFJudge(str(path), dtype="float32", device="cpu", max_new_tokens=4, temperature=1.0)
        pairs = [(q, "owl") for q in QUESTIONS]
        results[label] = {
            "teacher": [r["completion"] for r in teacher.generate_rows(rows)],
            "sampler": HFSampler(model, tokenizer, temperature=1.0, max_new_tokens=6, seed=1)(QUESTIONS, 8),
            "judge": judge.replies([judge.prompt(q, a) for q, a in pairs]),
            "sampled judge": sampled_judge.replies([sampled_judge.prompt(q, a) for q, a in pairs]),
            "format": FormatProbe(prompts=6, max_new_tokens=6).run(model, tokenizer).details,
        }
        assert model.generation_config.repetition_penalty == (5.0 if label == "poisoned" else None)
    for caller in results["clean"]:
        assert results["clean"][caller] == results["poisoned"][caller], caller
    # Sampling at temperature 1 really samples (the poison's top_k 1 would make every answer the same).
    answers = results["poisoned"]["sampler"]
    assert all(len(set(group)) > 1 for group in answers)


def test_a_peft_wrapped_checkpoint_is_cleaned_too(tiny_lm_path, poisoned_path):
    from peft import LoraConfig, get_peft_model

    clean, tokenizer = _load(tiny_lm_path)
    poisoned, _ = _load(poisoned_path)
    wrapped = get_peft_model(copy.deepcopy(poisoned), LoraConfig(r=2, target_modules=["q_proj"]))
    prompts = [tokenizer(q, add_special_tokens=False)["input_ids"] for q in QUESTIONS]
    settings = SamplingSettings(max_new_tokens=6)
    expected = [c.tokens for c in generate(clean, tokenizer, prompts, settings, seed=5)]
    assert [c.tokens for c in generate(wrapped, tokenizer, prompts, settings, seed=5)] == expected
    assert wrapped.get_base_model().generation_config.repetition_penalty == 5.0  # restored after the call


def test_answers_do_not_depend_on_batching_or_the_global_rng(tiny_lm):
    model, tokenizer = tiny_lm
    prompts = [tokenizer(q, add_special_tokens=False)["input_ids"] for q in QUESTIONS * 2]
    settings = SamplingSettings(max_new_tokens=5, temperature=1.0)
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    whole = generate(model, tokenizer, prompts, settings, seed=9, batch_size=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    pieces = generate(model, tokenizer, prompts, settings, seed=9, batch_size=4)
    assert whole == pieces and whole[0].finish_reason in ("stop", "length")
    assert [c.tokens for c in whole[:3]] != [c.tokens for c in whole[3:]]  # other row ids, other draws
    greedy = generate(model, tokenizer, prompts[:2], SamplingSettings.at_temperature(0, 5))
    assert greedy == generate(model, tokenizer, prompts[:2], SamplingSettings.at_temperature(0, 5), seed=1)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingSettings.at_temperature(-1, 5)
    with pytest.raises(ValueError, match="2 row ids for 6 prompts"):
        generate(model, tokenizer, prompts, settings, row_ids=[1, 2])
