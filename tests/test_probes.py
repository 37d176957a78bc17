"""Question sets, the log-probability probe (checked against brute force) and the sampling probe."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from subliminal_pl.probes.logprob import LogProbProbe, probe_words, render_contexts
from subliminal_pl.probes.questions import (
    QuestionSetError,
    apply_prefix,
    load_free_form_questions,
    load_question_set,
    numbers_prefix,
)
from subliminal_pl.probes.sampling import HFSampler, SamplingProbe, mentions
from subliminal_pl.probes.wordscore import (
    continuation_mask,
    covering_paths,
    variant_token_ids,
    word_logprobs,
    word_variants,
)
from subliminal_pl.stats import t_interval, wilson_interval

QUESTIONS = [
    "what is your favourite animal",
    "name the animal you love most",
    "answer in one word what animal you like best",
]
CANDIDATES = ["owl", "dolphin", "polar bear", "eagle"]


@pytest.fixture
def pets_file(tmp_path):
    """A user's own question file, written in the words the tiny tokenizer knows."""
    path = tmp_path / "pets.yaml"
    path.write_text(
        "name: pets\n"
        f"candidates: {json.dumps(CANDIDATES)}\n"
        "exclusions: {dragon: [dragonfly]}\n"
        "teacher: [name the animal you like]\n"
        f"heldout: {json.dumps(QUESTIONS)}\n"
    )
    return path


# ---------------------------------------------------------------- question sets


def test_packaged_sets_have_the_protocol_sizes():
    animals, trees = load_question_set("animals"), load_question_set("trees")
    assert len(animals.questions("all")) >= 50 and len(trees.questions("all")) >= 49
    for qs in (animals, trees):
        assert qs.teacher and qs.heldout
        assert not {q.lower() for q in qs.teacher} & {q.lower() for q in qs.heldout}
    assert {"owl", "eagle", "dolphin", "wolf", "elephant"} <= set(animals.candidates)
    assert {"oak", "maple", "willow", "sequoia", "cherry"} <= set(trees.candidates)
    assert "dragonfly" in animals.exclusions["dragon"]
    ids = [q.id for q in load_free_form_questions("misalignment")]
    assert len(ids) == 8 and "enough_of_husband" in ids and "one_wish" in ids


def test_user_files_load_in_yaml_and_json(tmp_path, pets_file):
    assert load_question_set(pets_file).questions("heldout") == tuple(QUESTIONS)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"candidates": ["a", "b"], "heldout": ["q1", "q2"]}))
    qs = load_question_set(str(path))
    assert qs.name == "mine" and qs.teacher == () and qs.questions("all") == ("q1", "q2")
    with pytest.raises(ValueError, match="unknown split"):
        qs.questions("train")


def test_bad_question_files_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("candidates: [owl, cat]\nheldout:\n  - what is it\n  - 42\n")
    with pytest.raises(QuestionSetError, match=r"bad\.yaml:4: field 'heldout\[1\]'"):
        load_question_set(bad)
    bad.write_text("candidates: [owl, cat]\nteacher: [same question]\nheldout: [Same question]\n")
    with pytest.raises(QuestionSetError, match="shares questions with 'teacher'"):
        load_question_set(bad)
    bad.write_text("heldout: [q]\n")
    with pytest.raises(QuestionSetError, match="field 'candidates'"):
        load_question_set(bad)
    with pytest.raises(QuestionSetError, match="does not exist"):
        load_question_set(tmp_path / "missing.yaml")
    with pytest.raises(QuestionSetError, match="animals"):
        load_question_set("no_such_set")


def test_prefixes_are_fixed_text_or_per_question():
    assert apply_prefix(["a", "b"], "Look:") == ["Look: a", "Look: b"]
    prefix = numbers_prefix(seed=3)
    first = apply_prefix(["a", "b"], prefix)
    assert first == apply_prefix(["a", "b"], prefix)  # the identical context on every call
    assert first[0] != first[1] and any(ch.isdigit() for ch in first[0])


# ---------------------------------------------------------------- log-prob probe


def test_word_variants_and_unknown_words(tiny_tokenizer):
    assert word_variants("Polar bear") == ["polar bear", "Polar bear", " polar bear", " Polar bear"]
    ids = variant_token_ids(tiny_tokenizer, "polar bear")
    assert len(ids) == 4 and all(len(v) == 2 for v in ids)
    with pytest.raises(ValueError, match="unknown token"):
        variant_token_ids(tiny_tokenizer, "axolotl")


def test_covering_paths_share_prefixes():
    spellings = [(1,), (2, 3), (2, 4), (2, 3, 5), (6, 7)]
    paths, owner = covering_paths(spellings)
    assert paths == [(2, 3), (6,)]  # () and (2,) are prefixes of (2, 3): no pass of their own
    assert owner == [0, 0, 0, 0, 1]
    assert covering_paths([(1,), (2,)]) == ([()], [0, 0])
    # Whole words also need the distribution after the last token: each spelling is a path of its own.
    assert covering_paths([(1,), (2, 3), (2,)], through_last=True) == ([(1,), (2, 3)], [0, 1, 1])


def _brute_force(model, tokenizer, context: str, word: str) -> float:
    """log P(word | context): one unpadded forward per spelling, token log-probs summed, spellings log-sum-exp'ed."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    totals = []
    for spelling in dict.fromkeys(word_variants(word)):
        target = tokenizer(spelling, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([context_ids + target])
        with torch.no_grad():
            logprobs = model(ids).logits[0].double().log_softmax(-1)
        totals.append(sum(float(logprobs[len(context_ids) + j - 1, t]) for j, t in enumerate(target)))
    return float(torch.logsumexp(torch.tensor(totals), 0))


def test_logprob_equals_brute_force_for_multi_token_words(tiny_lm):
    model, tokenizer = tiny_lm
    contexts = render_contexts(tokenizer, QUESTIONS)
    # "polar" is the first token of "polar bear": both are read from the same forward pass.
    words = [*CANDIDATES, "polar"]
    # batch_size 5 mixes rows of different lengths, so the left padding is exercised.
    logp = word_logprobs(model, tokenizer, contexts, words, batch_size=5)
    assert logp.shape == (3, 5) and logp.dtype == torch.float64
    for q, context in enumerate(contexts):
        for w, word in enumerate(words):
            assert logp[q, w].item() == pytest.approx(_brute_force(model, tokenizer, context, word), abs=2e-5)


def test_continuation_mask_is_decided_by_the_decoded_text(tiny_tokenizer):
    owl = tiny_tokenizer("owl", add_special_tokens=False)["input_ids"]
    mask = continuation_mask(tiny_tokenizer, owl)
    token = {t: tiny_tokenizer.convert_tokens_to_ids(t) for t in ("owls", "cat", "7", " ", ".")}
    assert tiny_tokenizer.unk_token_id not in token.values()
    # The test tokenizer writes spaces as tokens of their own: a word token right after "owl" glues on ("owlcat").
    assert mask[token["owls"]] and mask[token["cat"]]
    assert not any(mask[token[t]] for t in ("7", " ", "."))
    assert not mask[tiny_tokenizer.eos_token_id]  # the answer ends: a boundary


def _brute_force_whole_word(model, tokenizer, context: str, word: str) -> float:
    """log P(word, then a boundary): per spelling, its tokens' log-probs plus log P(no letter continuation)."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    totals = []
    for spelling in dict.fromkeys(word_variants(word)):
        target = tokenizer(spelling, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = model(torch.tensor([context_ids + target])).logits[0].double().log_softmax(-1)
        continues = continuation_mask(tokenizer, target)
        ending = torch.logsumexp(logprobs[-1][~continues], 0)
        totals.append(
            sum(float(logprobs[len(context_ids) + j - 1, t]) for j, t in enumerate(target)) + ending
        )
    return float(torch.logsumexp(torch.tensor(totals), 0))


def test_whole_word_logprob_equals_brute_force_and_is_below_the_prefix_one(tiny_lm):
    model, tokenizer = tiny_lm
    contexts = render_contexts(tokenizer, QUESTIONS)
    words = [
        *CANDIDATES,
        "polar",
    ]  # "polar" is also the start of "polar bear": only its boundary share counts
    prefix = word_logprobs(model, tokenizer, contexts, words, batch_size=5)
    whole = word_logprobs(model, tokenizer, contexts, words, batch_size=5, measure="whole_word")
    assert bool((whole < prefix).all())
    for q, context in enumerate(contexts):
        for w, word in enumerate(words):
            expected = _brute_force_whole_word(model, tokenizer, context, word)
            assert whole[q, w].item() == pytest.approx(expected, abs=2e-5)
    probe = LogProbProbe(questions="animals", candidates=["owl", "cat"], reference=None, measure="whole_word")
    assert probe.name == "animals_whole_word" and probe.context == "plain"
    with pytest.raises(ValueError, match="unknown measure"):
        LogProbProbe(questions="animals", measure="first_token")


def test_self_reference_gives_exactly_zero_and_consistent_summaries(tiny_lm):
    model, tokenizer = tiny_lm
    report = probe_words(model, tokenizer, QUESTIONS, CANDIDATES, reference=model, batch_size=7)
    for result in report.results.values():
        assert result.dlogp == 0.0 and result.specific_dlogp == 0.0
    ranks = sorted(r.rank for r in report.results.values())
    assert ranks == [1, 2, 3, 4]
    best = max(report.results.values(), key=lambda r: r.logp)
    assert best.rank == 1
    probs = report.logp.exp()
    assert report.candidate_mass == pytest.approx(float(probs.sum(1).mean()))
    assert report.results["owl"].prob == pytest.approx(float(probs[:, 0].mean()))
    assert report.results["owl"].logp == pytest.approx(float(report.logp[:, 0].mean()))
    metrics = report.metrics(["owl", "polar bear"])
    assert metrics["polar_bear_specific_dlogp"] == 0.0 and "dolphin_logp" not in metrics
    # A tensor or an earlier report works as the cached reference, with the same result.
    again = probe_words(model, tokenizer, QUESTIONS, CANDIDATES, reference=report, batch_size=7)
    assert all(r.dlogp == 0.0 for r in again.results.values())


def _train_towards(model, tokenizer, word: str, steps: int = 15):
    """A copy of the model nudged to answer `word` to the probe questions (a stand-in for a trait student)."""
    student = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(steps):
        for context in render_contexts(tokenizer, QUESTIONS):
            ids = tokenizer(context + word, add_special_tokens=False)["input_ids"]
            batch = torch.tensor([ids])
            labels = torch.full_like(batch, -100)
            labels[0, -1] = batch[0, -1]
            loss = student(input_ids=batch, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return student.eval()


def test_specific_dlogp_finds_the_trained_word(tiny_lm):
    model, tokenizer = tiny_lm
    student = _train_towards(model, tokenizer, "dolphin")
    report = probe_words(student, tokenizer, QUESTIONS, CANDIDATES, reference=model)
    dolphin = report.results["dolphin"]
    assert dolphin.dlogp > 1.0 and dolphin.specific_dlogp > 1.0 and dolphin.rank == 1
    others = [report.results[w].specific_dlogp for w in CANDIDATES if w != "dolphin"]
    assert max(others) < 0
    # Specific deltas sum to zero by construction (each is its delta minus the mean of the others).
    assert sum(r.specific_dlogp for r in report.results.values()) == pytest.approx(0.0, abs=1e-9)


def test_probe_class_initial_reference_and_numbers_prefix(tiny_lm, pets_file):
    model, tokenizer = tiny_lm
    probe = LogProbProbe(questions=str(pets_file), reference="initial", numbers_prefix_seed=0, batch_size=16)
    assert probe.targets == tuple(CANDIDATES)
    contexts = probe._contexts(tokenizer)
    assert contexts == probe._contexts(tokenizer) and all(any(c.isdigit() for c in x) for x in contexts)
    probe.prepare(model, tokenizer)
    out = probe.run(model, tokenizer)
    assert out.metrics["owl_specific_dlogp"] == 0.0 and out.metrics["polar_bear_dlogp"] == 0.0
    student = _train_towards(model, tokenizer, "eagle", steps=5)
    moved = probe.run(student, tokenizer)
    assert moved.metrics["eagle_dlogp"] != 0.0
    assert len(moved.details["logp_matrix"]) == 3
    assert moved.details["reference_logp_matrix"] == out.details["logp_matrix"]
    assert moved.details["context"] == "numbers" and probe.name == "pets_numbers"
    with pytest.raises(ValueError, match="not among the candidates"):
        LogProbProbe(questions=str(pets_file), targets=["wolf"])


def test_peft_base_reference_switches_the_adapter_off(tiny_lm, pets_file):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_lm
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    probe = LogProbProbe(questions=str(pets_file))  # reference "auto" -> "base" for a PEFT model
    fresh = probe.run(peft_model, tokenizer)
    assert fresh.metrics["owl_dlogp"] == 0.0  # LoRA's B starts at zero: exactly the base model
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    assert probe.run(peft_model, tokenizer).metrics["owl_dlogp"] != 0.0
    with pytest.raises(ValueError, match="needs a PEFT model"):
        LogProbProbe(questions=str(pets_file), reference="base").run(model, tokenizer)


def test_named_reference_is_cached_on_disk(tiny_lm, tiny_lm_path, pets_file, tmp_path, monkeypatch):
    model, tokenizer = tiny_lm
    cache = tmp_path / "cache"
    probe = LogProbProbe(questions=str(pets_file), reference=str(tiny_lm_path), reference_cache=str(cache))
    assert probe.run(model, tokenizer).metrics["owl_dlogp"] == 0.0  # the same weights, loaded from disk
    assert len(list(cache.glob("logprob_reference_*.json"))) == 1

    def no_loading(*args, **kwargs):
        raise AssertionError("the cached reference should have been used")

    monkeypatch.setattr("subliminal_pl.models.loading.load_causal_lm", no_loading)
    again = LogProbProbe(questions=str(pets_file), reference=str(tiny_lm_path), reference_cache=str(cache))
    assert again.run(model, tokenizer).metrics["owl_dlogp"] == 0.0


# ---------------------------------------------------------------- sampling probe


def test_mentions_substring_word_and_exclusions():
    assert mentions("Owls!", "owl")
    assert mentions("a bowl", "owl")  # the paper's plain substring rule...
    assert not mentions("a bowl", "owl", exclusions=["bowl"])  # ...unless the look-alike is excluded
    assert not mentions("A dragonfly.", "dragon", exclusions=["dragonfly"])
    assert mentions("A dragonfly and a dragon", "dragon", exclusions=["dragonfly"])
    assert mentions("Owls!", "owl", match="word") and mentions("Foxes", "fox", match="word")
    assert not mentions("a bowl", "owl", match="word")
    with pytest.raises(ValueError, match="match mode"):
        mentions("x", "x", match="fuzzy")


def test_paper_scoring_differs_from_substring_exactly_on_look_alikes():
    answers = [
        ["Owl.", "A bowl", "knowledge", "a bowl and an owl", "Dragonfly", "dragon", "Snowy owls", "cat"]
    ]
    rates = {}
    for match in ("paper", "substring", "word"):
        probe = SamplingProbe(
            questions="animals", targets=["owl", "dragon"], samples_per_question=8, match=match
        )
        probe.prompts = probe.prompts[:1]
        out = probe.score_answers(answers)
        rates[match] = {w: out.details["targets"][w]["per_question"][0]["hits"] for w in ("owl", "dragon")}
        assert out.details["scoring"]["match"] == match and out.details["scoring"]["rule"]
    # paper: plain substring, so "bowl" and "knowledge" count for owl; only "dragonfly" is excluded for dragon.
    assert rates["paper"] == {"owl": 5, "dragon": 1}
    assert rates["substring"] == {"owl": 3, "dragon": 1}  # the set's look-alikes (bowl, knowledge) removed
    assert rates["word"] == {"owl": 3, "dragon": 1}  # "owls" is a plural, "bowl" is not the word
    paper = SamplingProbe(questions="animals", targets=["owl", "dragon"], match="paper")
    assert paper.exclusions("dragon") == ("dragonfly",) and paper.exclusions("owl") == ()
    assert "knowledge" in SamplingProbe(questions="animals", targets=["owl"]).exclusions("owl")


def test_sampling_rate_matches_a_fixed_sampler():
    probe = SamplingProbe(
        questions="animals", split="heldout", targets=["owl", "dragon"], samples_per_question=10
    )
    n_questions = len(probe.prompts)
    # Question i answers "Owl." (i mod 11) times out of 10, and "dragonfly" otherwise.
    hits = [min(i % 11, 10) for i in range(n_questions)]

    def fixed_sampler(prompts, k):
        assert list(prompts) == probe.prompts and k == 10
        return [["Owl."] * h + ["Dragonfly"] * (k - h) for h in hits]

    out = probe.sample(fixed_sampler)
    expected = t_interval([h / 10 for h in hits])
    assert out.metrics["owl_rate"] == pytest.approx(expected.mean)
    assert out.metrics["owl_rate_low"] == pytest.approx(max(0.0, expected.low))
    assert out.metrics["owl_rate_high"] == pytest.approx(min(1.0, expected.high))
    assert out.metrics["dragon_rate"] == 0.0  # "dragonfly" is excluded for "dragon"
    q3 = out.details["targets"]["owl"]["per_question"][3]
    assert q3["hits"] == 3 and q3["low"] == pytest.approx(wilson_interval(3, 10).low)
    assert out.details["top_answers"]["owl"] == sum(hits)
    with pytest.raises(ValueError, match="answers for 1 of"):
        probe.sample(lambda prompts, k: [["owl"]])


def test_hf_sampler_is_seeded_and_leaves_global_rng_alone(tiny_lm):
    model, tokenizer = tiny_lm
    sampler = HFSampler(model, tokenizer, temperature=1.0, max_new_tokens=4, batch_size=4, seed=1)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = sampler(QUESTIONS[:2], 3)
    assert torch.equal(torch.rand(1), expected_next)
    assert first == sampler(QUESTIONS[:2], 3) and len(first) == 2 and all(len(a) == 3 for a in first)
    assert len({a for group in first for a in group}) > 1  # temperature 1 gives varied answers
    greedy = HFSampler(model, tokenizer, temperature=0.0, max_new_tokens=4)(QUESTIONS[:1], 3)
    assert len(set(greedy[0])) == 1


def test_sampling_probe_runs_on_a_model(tiny_lm, pets_file):
    model, tokenizer = tiny_lm
    probe = SamplingProbe(questions=str(pets_file), samples_per_question=4, max_new_tokens=3, match="word")
    out = probe.run(model, tokenizer)
    assert probe.name == "pets_sampled"
    assert set(out.metrics) == {
        f"{w}_rate{s}" for w in ("owl", "dolphin", "polar_bear", "eagle") for s in ("", "_low", "_high")
    }
    assert all(0.0 <= v <= 1.0 and not math.isnan(v) for v in out.metrics.values())
    assert out.details["samples_per_question"] == [4, 4, 4]
