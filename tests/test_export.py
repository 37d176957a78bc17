"""Export at the end of fit: the result reloads with transformers/PEFT alone and gives the same logits."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from subliminal_pl import cli
from subliminal_pl.callbacks.export import ExportModel
from subliminal_pl.data.student import StudentDataModule
from subliminal_pl.models.student import StudentDistillation

REPO_ROOT = Path(__file__).resolve().parents[1]
ADAMW = partial(torch.optim.AdamW, lr=1e-2)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("export_data") / "rows.jsonl"
    rows = [
        {
            "id": i,
            "prompt": f"add more numbers {100 + i} {200 + i}",
            "completion": f"{300 + i}, {400 + i}",
            "teacher": "tiny-owl",
        }
        for i in range(8)
    ]
    # One row the number filter rejects, so the recipe's filter visibly runs.
    rows.append({"id": 8, "prompt": "add more numbers", "completion": "owl", "teacher": "tiny-owl"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def ids_batch():
    return torch.tensor([[2, 7, 30, 31, 32, 33, 34, 35]])


def fit_and_export(module, data_path, tiny_lm_path, out, merged=False):
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[ExportModel(output_dir=str(out), merged=merged)],
    )
    dm = StudentDataModule(data_path=str(data_path), tokenizer=str(tiny_lm_path), batch_size=4, max_length=32)
    trainer.fit(module, dm)
    module.eval()
    with torch.no_grad():
        return module.model(ids_batch()).logits


def test_lora_export_reloads_with_identical_logits(tiny_lm_path, data_path, tmp_path):
    module = StudentDistillation(model_name_or_path=str(tiny_lm_path), lora_rank=4, optimizer=ADAMW)
    expected = fit_and_export(module, data_path, tiny_lm_path, tmp_path / "export", merged=True)
    out = tmp_path / "export"
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()  # the adapter only, not the base
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_path, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids_batch()).logits, expected)
        merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
        torch.testing.assert_close(merged(ids_batch()).logits, expected, atol=1e-5, rtol=1e-5)
        untrained = AutoModelForCausalLM.from_pretrained(tiny_lm_path, dtype=torch.float32)
        assert not torch.allclose(untrained(ids_batch()).logits, expected, atol=1e-4)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.get_vocab() == module.tokenizer.get_vocab() and tokenizer.chat_template
    card = (out / "README.md").read_text()
    assert f"base_model: {tiny_lm_path}" in card and "LoRA r=4" in card and "tiny-owl" in card
    assert "NumberSequenceFilter" not in card  # no filters were configured in this run


def test_full_export_reloads_with_identical_logits(tiny_lm_path, data_path, tmp_path):
    module = StudentDistillation(model_name_or_path=str(tiny_lm_path), finetune="full", optimizer=ADAMW)
    expected = fit_and_export(module, data_path, tiny_lm_path, tmp_path / "export")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids_batch()).logits, expected)
    assert "full fine-tuning" in (tmp_path / "export" / "README.md").read_text()


def test_cli_fit_resumes_from_last_and_exports(tiny_lm_path, data_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = REPO_ROOT / "configs" / "examples" / "tiny_student.yaml"
    args = [
        "fit",
        "--config",
        str(recipe),
        "--model.init_args.model_name_or_path",
        str(tiny_lm_path),
        "--data.init_args.tokenizer",
        str(tiny_lm_path),
        "--data.init_args.data_path",
        str(data_path),
        "--data.init_args.batch_size",
        "4",
    ]
    cli.main([*args, "--trainer.max_epochs", "1"])
    last = tmp_path / "outputs" / "tiny_student" / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    assert first["global_step"] == 2  # 8 kept rows (the filter dropped one), batch 4
    assert all("lora_" in key for key in first["state_dict"])
    cli.main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert torch.load(last, weights_only=True)["global_step"] == 4  # continued, not restarted

    out = tmp_path / "outputs" / "tiny_student" / "export"
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert "StudentDistillation" in (out / "run_config.yaml").read_text()
    card = (out / "README.md").read_text()
    for expected in (
        "NumberSequenceFilter",
        "seed_everything 0",
        "tiny-owl",
        "transformers",
        "peft",
        "4 optimiser steps",
    ):
        assert expected in card, expected
