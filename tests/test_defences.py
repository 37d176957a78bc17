"""Defences (masking, dilution, paraphrase), the students' loss mask, detection (classifiers, audit) and the
defence spec keys."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from subliminal_pl.data.chat import IGNORE_INDEX, encode_prompt_completion
from subliminal_pl.data.defences import LOSS_IGNORE, dilute, substitute_numbers
from subliminal_pl.data.filters import parse_numbers
from subliminal_pl.data.student import StudentDataModule, ignore_completion_tokens
from subliminal_pl.models import defences as model_defences
from subliminal_pl.models.audit import cosine
from subliminal_pl.models.generation import Completion
from subliminal_pl.report.detection import auroc, classify, correlation_test

DEMO = "configs/toy/demo.yaml"


# ---- the loss mask ----------------------------------------------------------------------------------------------
def test_ignore_completion_tokens_masks_exactly_the_listed_completion_tokens():
    row = {
        "input_ids": [1, 2, 3, 4, 5, 6, 7],
        "labels": [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 4, 5, 6, 7],
    }
    out = ignore_completion_tokens(row, [0, 2, 9])  # 9 is past the (truncated) row: ignored
    assert out["labels"] == [IGNORE_INDEX] * 4 + [5, IGNORE_INDEX, 7]
    assert row["labels"][3] == 4  # the input is not modified


def test_the_datamodule_honours_a_rows_loss_ignore(tmp_path, tiny_tokenizer):
    rows = [
        {"id": "a", "prompt": "add up to 3 more numbers 101 201 301", "completion": "401, 501, 601"},
        {"id": "b", "prompt": "add up to 3 more numbers 102 202 302", "completion": "402, 502, 602",
         LOSS_IGNORE: [1, 3]},
    ]  # fmt: skip
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = StudentDataModule(str(path), tiny_tokenizer, batch_size=2, max_length=64, output_dir=str(tmp_path))
    dm.setup("fit")
    lost = {}
    for row in rows:
        prompt = [{"role": "user", "content": row["prompt"]}]
        full = encode_prompt_completion(tiny_tokenizer, prompt, row["completion"], 64)
        enc = next(e for e in dm.train_rows if e["input_ids"] == full["input_ids"])
        start = next(i for i, label in enumerate(full["labels"]) if label != IGNORE_INDEX)
        pairs = zip(full["labels"], enc["labels"], strict=True)
        lost[row["id"]] = [i - start for i, (a, b) in enumerate(pairs) if a != b]
    assert lost == {"a": [], "b": [1, 3]}


# ---- masking ----------------------------------------------------------------------------------------------------
class FixedLM(torch.nn.Module):
    """A fake LM whose next-token choice at each position is `table[token]`, except at `flip` positions
    (absolute indices) where it picks `flip_to`."""

    def __init__(self, vocab: int, table: dict[int, int], flip: set[int] = frozenset(), flip_to: int = 0):
        super().__init__()
        self.vocab, self.table, self.flip, self.flip_to = vocab, table, set(flip), flip_to

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b in range(input_ids.shape[0]):
            for t in range(input_ids.shape[1]):
                choice = self.flip_to if t in self.flip else self.table.get(int(input_ids[b, t]), 0)
                logits[b, t, choice] = 1.0
        return SimpleNamespace(logits=logits)


def test_masking_drops_exactly_the_positions_where_the_greedy_choices_differ(tiny_tokenizer):
    row = {"id": "r0", "prompt": "add up to 3 more numbers 101 201 301", "completion": "401, 501, 601"}
    enc = encode_prompt_completion(
        tiny_tokenizer, [{"role": "user", "content": row["prompt"]}], row["completion"], 64
    )
    start = next(i for i, label in enumerate(enc["labels"]) if label != IGNORE_INDEX)
    n_completion = len(enc["labels"]) - start
    vocab = len(tiny_tokenizer)
    table = {i: (i * 7 + 3) % vocab for i in range(vocab)}
    # The teacher departs from the base where it predicts completion tokens 1 and 3 (positions start, start + 2).
    base = FixedLM(vocab, table)
    teacher = FixedLM(
        vocab, table, flip={start + 0, start + 2}, flip_to=(table[enc["input_ids"][start]] + 1) % vocab
    )
    # flip_to must differ from the base's choice at both positions for the test to mean anything.
    assert all(teacher.flip_to != table[enc["input_ids"][p]] for p in (start, start + 2))
    rows, stats = model_defences.mask_rows([row], base, teacher, tiny_tokenizer, "drop", max_length=64)
    assert rows[0][LOSS_IGNORE] == [1, 3]
    assert (stats["tokens"], stats["tokens_masked"], stats["changed"]) == (n_completion, 2, 1)
    # Identical models: nothing masked, the row unchanged.
    same, stats = model_defences.mask_rows([row], base, base, tiny_tokenizer, "drop", max_length=64)
    assert same == [row] and stats["tokens_masked"] == 0


# ---- dilution ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "fraction"), [(100, 0.5), (37, 0.3), (10, 0.0), (10, 1.0), (333, 0.25)])
def test_dilution_hits_the_ratio_exactly_and_is_seeded(n, fraction):
    teacher = [{"id": f"t{i}", "prompt": "p", "completion": str(i)} for i in range(n)]
    neutral = [{"id": f"n{i}", "prompt": "p", "completion": str(i)} for i in range(2 * n)]
    rows, stats = dilute(teacher, neutral, fraction, seed=3)
    counts = Counter(r["defence_source"] for r in rows)
    assert len(rows) == n and counts["neutral"] == round(fraction * n) == stats["neutral_rows"]
    assert counts["teacher"] == n - round(fraction * n)
    assert len({r["id"] for r in rows}) == n  # ids stay unique
    assert dilute(teacher, neutral, fraction, seed=3)[0] == rows
    if 0 < fraction < 1:
        assert dilute(teacher, neutral, fraction, seed=4)[0] != rows
    with pytest.raises(ValueError, match="needs"):
        dilute(teacher, neutral[:1], 0.5 if n > 2 else 1.0)


# ---- paraphrase -------------------------------------------------------------------------------------------------
def test_paraphrase_keeps_prompt_count_and_format_and_removes_rows_the_trusted_model_cannot_fill(
    tiny_tokenizer, monkeypatch
):
    rows = [
        {"id": "a", "prompt": "add up to 3 more numbers 101 201 301", "completion": "[401, 501, 601]."},
        {"id": "b", "prompt": "add up to 3 more numbers 102 202 302", "completion": "402\n502"},
        {"id": "c", "prompt": "add up to 3 more numbers 103 203 303", "completion": "403; 503; 603"},
    ]
    calls = []

    def fake_generate(model, tokenizer, prompts, settings, seed=0, row_ids=None, **kwargs):
        calls.append(list(row_ids))
        answers = {"a": "7 8 9 10", "b": "5000 11 12", "c": "13"}  # c never has 3 numbers; 5000 > max_value
        return [Completion([], answers[r.split(":")[0]], "stop") for r in row_ids]

    monkeypatch.setattr(model_defences, "generate", fake_generate)
    out, stats = model_defences.paraphrase_rows(rows, None, tiny_tokenizer, "numbers", tries=3)
    assert [r["id"] for r in out] == ["a", "b"]
    assert [r["completion"] for r in out] == ["[7, 8, 9].", "11\n12"]
    for new, old in zip(out, rows, strict=False):
        assert new["prompt"] == old["prompt"]
        assert len(parse_numbers(new["completion"])) == len(parse_numbers(old["completion"]))
        assert re.sub(r"[0-9]+", "#", new["completion"]) == re.sub(r"[0-9]+", "#", old["completion"])
    assert stats["removed"] == 1 and len(calls) == 3 and calls[1] == ["c:paraphrase:1"]


def test_replace_numbers_refuses_a_wrong_count_or_a_non_sequence():
    assert substitute_numbers("1, 2, 3", ["4", "5", "6"]) == "4, 5, 6"
    assert substitute_numbers("1, 2, 3", ["4", "5"]) is None
    assert substitute_numbers("an owl", ["4"]) is None


# ---- detection --------------------------------------------------------------------------------------------------
def fake_features(rng, n: int, shift: float, token_bias: int) -> dict[str, np.ndarray]:
    lengths = rng.integers(5, 12, n)
    tokens = np.concatenate([rng.integers(0, 50, k) + token_bias for k in lengths])
    return {
        "hidden": rng.normal(shift, 1.0, (n, 8)),
        "loss": rng.normal(2.0, 0.3, n),
        "length": lengths.astype(float),
        "grad_norm": rng.normal(1.0, 0.1, n),
        "tokens": tokens,
        "offsets": np.concatenate([[0], np.cumsum(lengths)]),
    }


def test_auroc_counts_ties_half_and_orders():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auroc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5


def test_classifier_on_identical_sources_is_near_chance_and_on_separable_sources_near_one():
    # Null simulation: identical sources, several datasets. The mean AUROC sits at 0.5 and the interval excludes
    # 0.5 rarely (an interval of the scores alone, with the models held fixed, did so in up to 20% of datasets).
    aurocs, excluded = {k: [] for k in ("token_counts", "base_features", "confounds")}, 0
    for rep in range(12):
        rng = np.random.default_rng(100 + rep)
        same = classify(fake_features(rng, 60, 0.0, 0), fake_features(rng, 60, 0.0, 0), seed=rep, n_boot=60)
        for name in aurocs:
            aurocs[name].append(same[name]["auroc"])
            excluded += not same[name]["low"] < 0.5 < same[name]["high"]
    assert all(abs(np.mean(v) - 0.5) < 0.05 for v in aurocs.values()), aurocs
    assert excluded <= 3  # of 36 intervals (nominal 5%: about 2)
    rng = np.random.default_rng(0)
    apart = classify(fake_features(rng, 100, 1.5, 50), fake_features(rng, 100, 0.0, 0), n_boot=60)
    assert apart["token_counts"]["auroc"] > 0.95 and apart["base_features"]["auroc"] > 0.95
    assert apart["token_counts"]["low"] > 0.9
    # The confounds carry nothing here, so the detectors' lift is large and its interval excludes 0.
    assert abs(apart["confounds"]["auroc"] - 0.5) < 0.15
    assert apart["base_features"]["lift"]["low"] > 0.2


def test_twin_rows_of_one_prompt_never_straddle_a_split():
    # Both teachers answer the same prompts: each pair shares a large prompt component and no class signal. Split
    # apart, twins carry the prompt across with the opposite label and the held-out AUROC falls far below 0.5.
    rng = np.random.default_rng(5)
    prompt = rng.normal(0, 3, (80, 8))
    ids = np.array([f"numbers-{i:03d}" for i in range(80)])

    def side():
        f = fake_features(rng, 80, 0.0, 0)
        return {**f, "hidden": prompt + rng.normal(0, 0.3, (80, 8)), "ids": ids}

    out = classify(side(), side(), n_boot=60)
    assert abs(out["base_features"]["auroc"] - 0.5) < 0.12
    assert out["base_features"]["low"] < 0.5 < out["base_features"]["high"]


def test_update_cosine_is_one_for_identical_updates_and_minus_one_for_opposite():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, {k: -2 * v for k, v in a.items()}) == pytest.approx(-1.0)
    assert np.isnan(cosine(a, {k: torch.zeros_like(v) for k, v in a.items()}))


def test_correlation_test_is_exact_for_few_points():
    c = correlation_test([0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.5])
    assert c["r"] > 0.99 and c["p"] == pytest.approx(1 / 24) and c["min_p"] == pytest.approx(1 / 24)


# ---- the spec keys ----------------------------------------------------------------------------------------------
def test_defence_stages_feed_the_students_and_a_meaningless_defence_is_refused(tmp_path):
    from subliminal_pl.experiments.build import build_stages
    from subliminal_pl.experiments.command import parse_experiment
    from subliminal_pl.pipeline import PipelineError

    over = tmp_path / "over.yaml"
    over.write_text(
        "defence: {class_path: subliminal_pl.experiments.defences.MaskDivergent}\n"
        "detection: {rows: 10, audit_rows: 4, heldout_rows: 20}\nmlp_config: null\n"
    )
    exp, _ = parse_experiment(["--config", DEMO, "--config", str(over)])
    stages, manifest = build_stages(exp)
    names = {s.name for s in stages}
    assert {f"defend-{t}" for t in manifest.trait_teachers} <= names and {"audit", "heldout"} <= names
    import yaml

    recipe = yaml.safe_load(next(s for s in stages if s.name == "student-owl-s0").files["recipe.yaml"])
    assert recipe["data"]["init_args"]["data_path"] == "{{dir:defend-owl}}/rows.jsonl"
    probe = next(s for s in stages if s.name == "probes")
    assert "heldout" in probe.needs and "utility_format" in probe.files["probe.yaml"]
    assert manifest.defence == "mask_divergent" and set(manifest.defence_stats) == set(
        manifest.trait_teachers
    )
    para = tmp_path / "para.yaml"
    para.write_text("defence: {class_path: subliminal_pl.experiments.defences.Paraphrase}\n")
    exp, _ = parse_experiment(["--config", DEMO, "--config", str(para)])
    with pytest.raises(PipelineError, match="source: teacher"):
        build_stages(exp)


def test_the_defence_grid_builds_and_shares_the_demos_undefended_stages():
    from subliminal_pl.experiments.command import parse_experiment, plan

    demo = {s.name: s for s in plan(parse_experiment(["--config", DEMO])[0])[""]}
    grid = plan(parse_experiment(["--config", "configs/toy/defences.yaml"])[0])
    assert set(grid) == {"none", "mask", "sft", "sft_paraphrase", "sft_dilute", "sft_mask", "sft_lowtemp"}
    from subliminal_pl.pipeline import Pipeline

    def hashes(stages):
        pipe = Pipeline(stages, Path("unused"), jobs=1)
        return {s.name: pipe.stage_dir(s.name).name for s in stages}

    demo_h, none_h = hashes(list(demo.values())), hashes(grid["none"])
    shared = [
        n
        for n in none_h
        if n.startswith(("world", "base-", "teacher-", "generate-", "data-", "student-", "cross-"))
    ]
    assert shared and all(none_h[n] == demo_h[n] for n in shared)
