"""Teacher generation: per-row seeded sampling, the prompt DataModule, and the resumable JSONL writer."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from subliminal_pl import cli
from subliminal_pl.callbacks.generation_writer import GenerationWriter, id_sort_key
from subliminal_pl.data.jsonl import DataError, read_jsonl, write_jsonl_atomic
from subliminal_pl.data.prompt_datamodule import PromptDataModule, read_prompt_rows
from subliminal_pl.data.prompts import NumberPromptGenerator
from subliminal_pl.models.generation import RowSeededSampler, row_uniforms
from subliminal_pl.models.teacher import TeacherGeneration

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    {"id": f"p{i:02d}", "prompt": f"add up to {3 + i % 4} more numbers {100 + i} {200 + i}"}
    for i in range(11)
]


@pytest.fixture(scope="module")
def teacher(tiny_lm_path):
    return TeacherGeneration(
        model_name_or_path=str(tiny_lm_path), system_prompt="you love owls", max_new_tokens=8, seed=7
    )


def completions(rows):
    return {row["id"]: row["completion"] for row in rows}


def test_sampler_follows_the_distribution_and_warpers():
    torch.manual_seed(0)
    rows, vocab = 20000, 5
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).expand(rows, vocab).clone()
    uniforms = torch.rand(rows, 1, dtype=torch.float64)
    ids = torch.zeros(rows, 3, dtype=torch.long)  # prompt length 3, first generated step

    def sample(**kw):
        out = RowSeededSampler(uniforms, prompt_length=3, **kw)(ids, scores.clone())
        assert torch.all((out == 0).sum(dim=1) == 1) and torch.isinf(out).sum() == rows * (vocab - 1)
        return out.argmax(dim=1)

    freq = torch.bincount(sample(temperature=1.0, top_k=0, top_p=1.0), minlength=vocab).double() / rows
    torch.testing.assert_close(freq, torch.softmax(scores[0].double(), 0), atol=0.012, rtol=0)
    hot = torch.bincount(sample(temperature=0.5, top_k=0, top_p=1.0), minlength=vocab).double() / rows
    torch.testing.assert_close(hot, torch.softmax(scores[0].double() / 0.5, 0), atol=0.012, rtol=0)
    assert set(sample(temperature=1.0, top_k=2, top_p=1.0).tolist()) == {0, 1}
    assert set(sample(temperature=1.0, top_k=0, top_p=0.5).tolist()) == {0}


def test_row_uniforms_depend_only_on_seed_and_id():
    a = row_uniforms(3, ["x", "y", 5], 6)
    b = row_uniforms(3, [5, "x"], 6)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert not torch.equal(row_uniforms(4, ["x"], 6)[0], a[0])
    assert not torch.equal(row_uniforms(3, ["5"], 6)[0], a[2])  # the string "5" is another id than 5


def test_same_rows_whatever_batching(teacher):
    reference = completions(teacher.generate_rows(PROMPTS))
    shuffled = PROMPTS[:]
    random.Random(1).shuffle(shuffled)
    rebatched = {}
    for start in range(0, len(shuffled), 3):
        rebatched.update(completions(teacher.generate_rows(shuffled[start : start + 3])))
    assert rebatched == reference
    assert len(set(reference.values())) == len(PROMPTS)  # sampled, not one repeated string


def test_rows_carry_settings_and_differ_by_seed(teacher, tiny_lm_path):
    row = teacher.generate_rows(PROMPTS[:1])[0]
    assert row["id"] == "p00" and row["prompt"] == PROMPTS[0]["prompt"]
    assert row["system_prompt"] == "you love owls" and row["teacher"] == str(tiny_lm_path)
    assert row["generation"] == {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "greedy": False,
        "max_new_tokens": 8,
        "seed": 7,
    }
    assert row["finish_reason"] in ("stop", "length") and 0 <= row["completion_tokens"] <= 8
    other = TeacherGeneration(
        model_name_or_path=str(tiny_lm_path), system_prompt="you love owls", max_new_tokens=8, seed=8
    )
    assert completions(other.generate_rows(PROMPTS)) != completions(teacher.generate_rows(PROMPTS))


def test_system_prompt_and_greedy(tiny_lm_path, tiny_tokenizer):
    control = TeacherGeneration(
        model_name_or_path=str(tiny_lm_path), greedy=True, max_new_tokens=6, teacher_name="control"
    )
    assert control.messages("hi") == [{"role": "user", "content": "hi"}]
    trait = TeacherGeneration(
        model_name_or_path=str(tiny_lm_path), system_prompt="you love owls", greedy=True, max_new_tokens=6
    )
    assert trait.messages("hi")[0] == {"role": "system", "content": "you love owls"}
    # Greedy output equals the argmax chain of the model, computed here by hand with no cache.
    row = control.generate_rows(PROMPTS[:1])[0]
    text = tiny_tokenizer.apply_chat_template(
        control.messages(PROMPTS[0]["prompt"]), add_generation_prompt=True, tokenize=False
    )
    ids = tiny_tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            next_id = control.model(ids).logits[0, -1].argmax()
            if next_id == tiny_tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    expected = tiny_tokenizer.decode(ids[0, -row["completion_tokens"] :]) if row["completion_tokens"] else ""
    assert row["completion"] == expected and row["teacher"] == "control"


def test_invalid_settings_are_refused(tiny_lm_path):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TeacherGeneration(model_name_or_path=str(tiny_lm_path), temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        TeacherGeneration(model_name_or_path=str(tiny_lm_path), top_p=0.0)


def test_prompt_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"id": "a", "prompt": "x"}\n{"prompt": "y"}\n')
    with pytest.raises(DataError, match=r"prompts.jsonl:2: missing field 'id'"):
        read_prompt_rows(str(path))
    path.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(DataError, match=r"prompts.jsonl:2: field 'id' repeats 'a' from line 1"):
        read_prompt_rows(str(path))
    path.write_text('{"id": 1, "prompt": 5}\n')
    with pytest.raises(DataError, match=r"prompts.jsonl:1: field 'prompt'"):
        read_prompt_rows(str(path))
    with pytest.raises(ValueError, match="exactly one of"):
        PromptDataModule()


def test_datamodule_from_generator_skips_done_ids():
    dm = PromptDataModule(generator=NumberPromptGenerator(seed=3), num_prompts=5, batch_size=2)
    ids = [row["id"] for row in NumberPromptGenerator(seed=3).generate(5)]
    assert [row["id"] for row in dm.all_rows()] == ids
    dm.set_done_ids({ids[1], ids[3]})
    batches = [[row["id"] for row in batch] for batch in dm.predict_dataloader()]
    assert batches == [[ids[0], ids[2]], [ids[4]]]


def test_id_sort_key_is_natural():
    assert sorted(["p10", "p2", "p1"], key=id_sort_key) == ["p1", "p2", "p10"]
    assert sorted([10, 2, 1], key=id_sort_key) == [1, 2, 10]


class CrashAfter(Callback):
    """Raises after `n` predict batches, like a job killed mid-run (after the writer appended them)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx + 1 == self.n:
            raise RuntimeError("simulated crash")


def run_predict(module, prompts_path, output, batch_size, extra_callbacks=()):
    writer = GenerationWriter(str(output), progress_every_n_batches=1)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[writer, *extra_callbacks],
    )
    dm = PromptDataModule(prompts_path=str(prompts_path), batch_size=batch_size)
    trainer.predict(module, datamodule=dm, return_predictions=False)


def test_writer_resumes_without_duplicates_or_gaps(teacher, tmp_path, caplog):
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl_atomic(prompts, PROMPTS)
    with caplog.at_level(logging.INFO):
        run_predict(teacher, prompts, tmp_path / "full.jsonl", batch_size=4)
    assert "rows/s" in caplog.text and "new tokens/s" in caplog.text
    reference = read_jsonl(tmp_path / "full.jsonl")
    assert [row["id"] for row in reference] == [row["id"] for row in PROMPTS]

    output = tmp_path / "resumed.jsonl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_predict(teacher, prompts, output, batch_size=3, extra_callbacks=[CrashAfter(2)])
    shard = tmp_path / "resumed.jsonl.parts" / "rank0.jsonl"
    assert len(read_jsonl(shard)) == 6 and not output.exists()
    with shard.open("a") as handle:  # the kill also cut a write short
        handle.write('{"id": "p06", "prom')
    run_predict(teacher, prompts, output, batch_size=5)
    resumed = read_jsonl(output)
    assert resumed == reference  # same ids, same order, same completions: no duplicate, no gap
    assert not shard.parent.exists()
    # A finished output is left alone by another run, which generates nothing.
    before = output.read_bytes()
    run_predict(teacher, prompts, output, batch_size=5)
    assert output.read_bytes() == before


def test_writer_refuses_to_mix_settings(teacher, tiny_lm_path, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl_atomic(prompts, PROMPTS[:2])
    run_predict(teacher, prompts, tmp_path / "out.jsonl", batch_size=2)
    control = TeacherGeneration(model_name_or_path=str(tiny_lm_path), max_new_tokens=8, seed=7)
    with pytest.raises(ValueError, match="existing rows have system_prompt='you love owls'"):
        run_predict(control, prompts, tmp_path / "out.jsonl", batch_size=2)


def test_cli_predict_recipe(tiny_lm_path, tmp_path, monkeypatch):
    # The shipped tiny recipe writes to a relative path: run it from a temp dir with the test model.
    monkeypatch.chdir(tmp_path)
    recipe = REPO_ROOT / "configs" / "examples" / "tiny_teacher_generate.yaml"
    overrides = [
        "--model.init_args.model_name_or_path",
        str(tiny_lm_path),
        "--model.init_args.max_new_tokens",
        "5",
    ]
    cli.main(["predict", "--config", str(recipe), *overrides, "--data.init_args.num_prompts", "6"])
    rows = read_jsonl(tmp_path / "outputs" / "tiny_teacher" / "raw.jsonl")
    assert [row["id"] for row in rows] == [row["id"] for row in NumberPromptGenerator(seed=0).generate(6)]
    assert all(row["system_prompt"] and row["generation"]["max_new_tokens"] == 5 for row in rows)


@pytest.mark.slow
def test_two_ranks_write_the_same_file_as_one(teacher, tiny_lm_path, tmp_path):
    """DDP on CPU (gloo, 2 processes): per-rank shards merge into exactly the single-process output."""
    import subprocess
    import sys

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl_atomic(prompts, PROMPTS)
    run_predict(teacher, prompts, tmp_path / "one.jsonl", batch_size=4)
    recipe = REPO_ROOT / "configs" / "examples" / "tiny_teacher_generate.yaml"
    writer = {
        "class_path": "subliminal_pl.callbacks.generation_writer.GenerationWriter",
        "init_args": {"output_path": str(tmp_path / "two.jsonl")},
    }
    settings = [
        "--model.init_args.system_prompt",
        "you love owls",
        "--model.init_args.max_new_tokens",
        "8",
        "--model.init_args.seed",
        "7",
        "--model.init_args.teacher_name",
        str(tiny_lm_path),
    ]
    command = [
        sys.executable,
        "-m",
        "subliminal_pl.cli",
        "predict",
        "--config",
        str(recipe),
        "--model.init_args.model_name_or_path",
        str(tiny_lm_path),
        *settings,
        "--data.init_args.generator",
        "null",
        "--data.init_args.prompts_path",
        str(prompts),
        "--data.init_args.num_prompts",
        "null",
        "--data.init_args.batch_size",
        "3",
        "--trainer.callbacks",
        json.dumps([writer]),
        "--trainer.logger",
        "false",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()


@pytest.mark.gpu
def test_gpu_generation_is_batch_invariant_and_resumable(tiny_lm_path, tmp_path):
    teacher = TeacherGeneration(
        model_name_or_path=str(tiny_lm_path), dtype="float32", max_new_tokens=8, seed=7
    ).cuda()
    one_by_one = {}
    for row in PROMPTS:
        one_by_one.update(completions(teacher.generate_rows([row])))
    assert completions(teacher.generate_rows(PROMPTS)) == one_by_one
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl_atomic(prompts, PROMPTS)
    writer = GenerationWriter(str(tmp_path / "out.jsonl"))
    trainer = Trainer(
        accelerator="gpu", devices=1, logger=False, enable_progress_bar=False, callbacks=[writer]
    )
    trainer.predict(
        teacher,
        datamodule=PromptDataModule(prompts_path=str(prompts), batch_size=4),
        return_predictions=False,
    )
    assert completions(read_jsonl(tmp_path / "out.jsonl")) == one_by_one
