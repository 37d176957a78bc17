"""Faithful resume and portable outputs: student resume, generation prompt sets, exports, saved configs, TRL data."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from subliminal_pl.data.student import StudentDataModule
from subliminal_pl.models.student import StudentDistillation

ADAMW = partial(torch.optim.AdamW, lr=1e-2)


@pytest.fixture(scope="module")
def student_rows(number_rows_path):
    return number_rows_path


class RecordBatches(Callback):
    """The first token ids of every training batch, per epoch: the data order the run saw."""

    def __init__(self) -> None:
        self.order: dict[int, list[list[int]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.order.setdefault(trainer.current_epoch, []).append(batch["input_ids"][:, -8:].tolist())


class KillAtEpoch(Callback):
    """Raises when epoch `epoch` starts, like a job killed after the previous epoch's checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated kill")


def student_fit(tiny_lm_path, data_path, root, callbacks, ckpt_path=None):
    """A LoRA student fit for 3 epochs of 3 steps, seeded like the CLI does (seed_everything before building)."""
    seed_everything(0)
    module = StudentDistillation(
        model_name_or_path=str(tiny_lm_path), lora_rank=4, lora_dropout=0.1, optimizer=ADAMW, warmup_steps=2
    )
    dm = StudentDataModule(data_path=str(data_path), tokenizer=str(tiny_lm_path), batch_size=4, max_length=64)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True), *callbacks],
    )
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return trainer, {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}


def test_student_resume_after_kill_ends_with_the_uninterrupted_adapter(tiny_lm_path, student_rows, tmp_path):
    whole = RecordBatches()
    _, expected = student_fit(tiny_lm_path, student_rows, tmp_path / "whole", [whole])
    assert sorted(whole.order) == [0, 1, 2]
    assert whole.order[1] != whole.order[0]  # a new order each epoch

    killed = RecordBatches()
    with pytest.raises(RuntimeError, match="simulated kill"):
        student_fit(tiny_lm_path, student_rows, tmp_path / "resumed", [killed, KillAtEpoch(1)])
    assert killed.order[0] == whole.order[0]
    last = tmp_path / "resumed" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3

    resumed = RecordBatches()
    trainer, adapter = student_fit(
        tiny_lm_path, student_rows, tmp_path / "resumed", [resumed], ckpt_path=last
    )
    assert trainer.global_step == 9
    # The resumed epochs see the batches the uninterrupted run saw, not epoch 0's order again.
    assert resumed.order == {1: whole.order[1], 2: whole.order[2]}
    assert adapter.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(adapter[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_student_order_depends_on_the_seeds_and_epoch_only(tiny_lm_path, student_rows):
    def order(seed, everything, epoch):
        seed_everything(everything)
        dm = StudentDataModule(
            data_path=str(student_rows), tokenizer=str(tiny_lm_path), batch_size=4, max_length=64, seed=seed
        )
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(epoch + 100)  # the global RNG state must not matter
        return list(loader.sampler)

    assert order(0, 0, 1) == order(0, 0, 1)
    assert sorted(order(0, 0, 1)) == list(range(12))
    assert order(0, 0, 1) != order(0, 0, 0)
    assert order(1, 0, 1) != order(0, 0, 1) and order(0, 1, 1) != order(0, 0, 1)
    assert order(1, 0, 0) != order(0, 0, 1)  # seeds are mixed: not DistributedSampler's plain seed + epoch


def generate(teacher, output, **data):
    from subliminal_pl.callbacks.generation_writer import GenerationWriter
    from subliminal_pl.data.prompt_datamodule import PromptDataModule

    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[GenerationWriter(str(output), progress_every_n_batches=0)],
    )
    trainer.predict(teacher, datamodule=PromptDataModule(batch_size=4, **data), return_predictions=False)


@pytest.fixture(scope="module")
def tiny_teacher(tiny_lm_path):
    from subliminal_pl.models.teacher import TeacherGeneration

    return TeacherGeneration(model_name_or_path=str(tiny_lm_path), max_new_tokens=3, seed=7)


def test_generation_resume_refuses_another_prompt_seed_or_count(tiny_teacher, tmp_path):
    from subliminal_pl.data.jsonl import read_jsonl
    from subliminal_pl.data.prompt_datamodule import PromptDataModule
    from subliminal_pl.data.prompts import NumberPromptGenerator

    output = tmp_path / "raw.jsonl"
    generate(tiny_teacher, output, generator=NumberPromptGenerator(seed=0), num_prompts=4)
    before = output.read_bytes()
    rows = read_jsonl(output)
    expected = PromptDataModule(generator=NumberPromptGenerator(seed=0), num_prompts=4).prompt_set()
    assert expected["count"] == 4 and all(row["prompt_set"] == expected for row in rows)
    with pytest.raises(
        ValueError, match=r"4 prompts \(hash [0-9a-f]{16}\), this run's has 4 prompts.*seed=1"
    ):
        generate(tiny_teacher, output, generator=NumberPromptGenerator(seed=1), num_prompts=4)
    with pytest.raises(ValueError, match=r"answer another prompt than this run's for the same id"):
        generate(tiny_teacher, output, generator=NumberPromptGenerator(seed=1), num_prompts=4)
    with pytest.raises(ValueError, match=r"a prompt set of 4 prompts .* this run's has 6 prompts"):
        generate(tiny_teacher, output, generator=NumberPromptGenerator(seed=0), num_prompts=6)
    assert output.read_bytes() == before  # refused runs leave the rows as they were
    generate(
        tiny_teacher, output, generator=NumberPromptGenerator(seed=0), num_prompts=4
    )  # the same set is fine
    assert output.read_bytes() == before


def test_generation_resume_refuses_a_prompts_file_with_other_prompts_under_the_same_ids(
    tiny_teacher, tmp_path
):
    from subliminal_pl.data.jsonl import write_jsonl_atomic

    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl_atomic(first, [{"id": f"p{i}", "prompt": f"add more numbers {100 + i}"} for i in range(4)])
    write_jsonl_atomic(second, [{"id": f"p{i}", "prompt": f"add more numbers {200 + i}"} for i in range(4)])
    output = tmp_path / "raw.jsonl"
    generate(tiny_teacher, output, prompts_path=str(first))
    with pytest.raises(
        ValueError, match=r"b\.jsonl.*id 'p0' was 'add more numbers 100', is now 'add more numbers 200'"
    ):
        generate(tiny_teacher, output, prompts_path=str(second))


@pytest.fixture(scope="module")
def relative_export(tiny_lm_path, student_rows, tmp_path_factory):
    """A LoRA student fit on rows a filter stage kept, its base given by a path relative to the working dir."""
    import os

    from subliminal_pl.callbacks.export import ExportModel
    from subliminal_pl.data.filters import NumberSequenceFilter
    from subliminal_pl.data.steps import prepare_file

    root = tmp_path_factory.mktemp("relative_export")
    rows = (
        student_rows.read_text()
        + json.dumps({"id": "bad", "prompt": "add numbers", "completion": "owl"})
        + "\n"
    )
    (root / "raw.jsonl").write_text(rows)
    prepare_file(root / "raw.jsonl", root / "kept.jsonl", [NumberSequenceFilter(max_count=10)])
    cwd = os.getcwd()
    os.chdir(root)
    try:
        base = os.path.relpath(tiny_lm_path, root)
        assert not os.path.isabs(base)
        seed_everything(0)
        module = StudentDistillation(model_name_or_path=base, lora_rank=4, optimizer=ADAMW)
        trainer = Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=2,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[ExportModel(output_dir="export")],
        )
        dm = StudentDataModule(data_path="kept.jsonl", tokenizer=base, batch_size=4, max_length=64)
        trainer.fit(module, dm)
    finally:
        os.chdir(cwd)
    ids = torch.tensor([[2, 7, 30, 31, 32, 33]])
    with torch.no_grad():
        logits = module.eval().model(ids).logits
    return root / "export", ids, logits


def test_export_loads_with_peft_from_another_working_directory(
    relative_export, tiny_lm_path, tmp_path, monkeypatch
):
    from peft import AutoPeftModelForCausalLM

    export, ids, expected = relative_export
    config = json.loads((export / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_lm_path.resolve())
    monkeypatch.chdir(tmp_path)
    model = AutoPeftModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected)
    card = (export / "README.md").read_text()
    assert f"base_model: {tiny_lm_path.resolve()}" in card
    assert f"`{tiny_lm_path.resolve()}` (local directory, configured as `../" in card
    assert f'from_pretrained("{tiny_lm_path.resolve()}"), "{export.resolve()}")' in card


def test_model_card_lists_the_filters_that_produced_the_rows(relative_export):
    card = (relative_export[0] / "README.md").read_text()
    kept_stats = relative_export[0].parent / "kept.filter_stats.json"
    assert "NumberSequenceFilter(max_count=10, " in card and f"kept 12 of 13 rows (`{kept_stats}`)" in card
    assert "no filters: kept 12 of 12 rows" in card  # the DataModule's own (empty) filter list


def test_a_saved_config_reruns_in_place_and_a_changed_one_keeps_the_earlier(
    tiny_lm_path, student_rows, tmp_path, monkeypatch
):
    from pathlib import Path

    import yaml

    from subliminal_pl import cli

    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).resolve().parents[1] / "configs" / "examples" / "tiny_student.yaml"
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": "runs", "name": "student", "version": "run"},
    }
    cli.main(
        [
            "fit",
            "--config",
            str(recipe),
            "--model.init_args.model_name_or_path",
            str(tiny_lm_path),
            "--data.init_args.tokenizer",
            str(tiny_lm_path),
            "--data.init_args.data_path",
            str(student_rows),
            "--trainer.max_steps",
            "1",
            "--trainer.logger",
            json.dumps(logger),
        ]
    )
    saved = tmp_path / "runs" / "student" / "run" / "config.yaml"
    first = saved.read_bytes()
    cli.main(["fit", "--config", str(saved)])  # the same config, in place
    assert saved.read_bytes() == first and sorted(p.name for p in saved.parent.glob("config*")) == [
        "config.yaml"
    ]
    cli.main(["fit", "--config", str(saved), "--trainer.max_steps", "2", "--ckpt_path", "last"])
    assert (saved.parent / "config.1.yaml").read_bytes() == first
    now = yaml.safe_load(saved.read_text())
    assert now["trainer"]["max_steps"] == 2 and now["ckpt_path"] == "last"
    # ModelCheckpoint versions its `last` files (last-v1.ckpt, ...) in a used folder; the resume continued one.
    steps = [
        torch.load(p, weights_only=True)["global_step"] for p in tmp_path.glob("outputs/*/checkpoints/*")
    ]
    assert max(steps) == 2


def test_export_trl_writes_conversational_prompt_completion_rows_that_datasets_loads(tmp_path, capsys):
    from datasets import Features, List, Value, load_dataset

    from subliminal_pl import cli
    from subliminal_pl.data.jsonl import write_jsonl_atomic

    kept = tmp_path / "kept.jsonl"
    rows = [
        {
            "id": 0,
            "prompt": "add 1 2 3",
            "completion": "4, 5",
            "system_prompt": "you love owls",
            "teacher": "t",
        },
        {"id": 1, "prompt": "add 7 8", "completion": "9", "system_prompt": None},
        {"messages": [{"role": "user", "content": "add 5"}, {"role": "assistant", "content": "6, 7"}]},
    ]
    write_jsonl_atomic(kept, rows)
    cli.main(["export-trl", "--input", str(kept), "--output", str(tmp_path / "trl.jsonl")])
    cli.main(
        [
            "export-trl",
            "--input",
            str(kept),
            "--output",
            str(tmp_path / "sys.jsonl"),
            "--keep_system_prompt",
            "true",
        ]
    )
    assert "wrote 3 rows" in capsys.readouterr().out
    message = {"role": Value("string"), "content": Value("string")}
    schema = Features({"prompt": List(message), "completion": List(message)})
    plain = load_dataset(
        "json", data_files=str(tmp_path / "trl.jsonl"), split="train", cache_dir=str(tmp_path / "c")
    )
    assert plain.column_names == ["prompt", "completion"]
    assert {key: plain.features[key] for key in schema} == dict(schema)
    assert plain[0] == {
        "prompt": [{"role": "user", "content": "add 1 2 3"}],
        "completion": [{"role": "assistant", "content": "4, 5"}],
    }
    assert plain[2]["completion"] == [{"role": "assistant", "content": "6, 7"}]
    kept_system = load_dataset(
        "json", data_files=str(tmp_path / "sys.jsonl"), split="train", cache_dir=str(tmp_path / "c")
    )
    assert kept_system[0]["prompt"] == [
        {"role": "system", "content": "you love owls"},
        {"role": "user", "content": "add 1 2 3"},
    ]
    assert kept_system[1]["prompt"] == [{"role": "user", "content": "add 7 8"}]  # no system turn in that row

    write_jsonl_atomic(kept, [*rows, {"prompt": "add 1", "completion": 5}])
    with pytest.raises(SystemExit, match=r"kept\.jsonl:4: field 'completion': expected a string, got int"):
        cli.main(["export-trl", "--input", str(kept), "--output", str(tmp_path / "bad.jsonl")])
    assert not (tmp_path / "bad.jsonl").exists()


def test_atomic_writes_leave_the_old_file_whole_when_a_write_fails(tmp_path, monkeypatch):
    import os

    from subliminal_pl.data import jsonl

    target = tmp_path / "kept.jsonl"
    jsonl.write_jsonl_atomic(target, [{"id": 1}])
    before = target.read_bytes()

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)  # the new contents never reach the disk
    with pytest.raises(OSError, match="No space left"):
        jsonl.write_jsonl_atomic(target, [{"id": 2}] * 1000)
    with pytest.raises(TypeError):  # a row that cannot be written: nothing is opened at all
        jsonl.write_jsonl_atomic(target, [{"id": object()}])
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.jsonl"]  # no temporary file left behind
