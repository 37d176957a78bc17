"""Student distillation: SFT on completion tokens only, KL to a teacher, LoRA vs full fits, checkpoints, schedule."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from subliminal_pl.data.student import StudentDataModule
from subliminal_pl.models.student import StudentDistillation, linear_warmup_decay, number_token_ids

ADAMW = partial(torch.optim.AdamW, lr=1e-2)


@pytest.fixture(scope="module")
def data_path(number_rows_path):
    return number_rows_path


@pytest.fixture(scope="module")
def other_lm_path(tmp_path_factory, tiny_tokenizer):
    """A second tiny model with another init: a teacher that differs from the student."""
    from subliminal_pl.toy.model import build_tiny_llama, save_model_and_tokenizer

    model = build_tiny_llama(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=4, seed=1)
    return save_model_and_tokenizer(model, tiny_tokenizer, tmp_path_factory.mktemp("other_lm"))


def hand_batch(vocab: int) -> dict[str, torch.Tensor]:
    """Two right-padded rows; completion tokens at positions 4..6 (row 0) and 3..4 (row 1)."""
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(10, vocab, (2, 8), generator=g)
    attention_mask = torch.tensor([[1] * 7 + [0], [1] * 5 + [0] * 3])
    labels = torch.full((2, 8), -100)
    labels[0, 4:7] = input_ids[0, 4:7]
    labels[1, 3:5] = input_ids[1, 3:5]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def make_datamodule(data_path, tiny_lm_path, batch_size=4):
    return StudentDataModule(
        data_path=str(data_path), tokenizer=str(tiny_lm_path), batch_size=batch_size, max_length=64
    )


def fit(module, dm, root, **kwargs):
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
    )
    trainer = Trainer(**{**options, **kwargs})
    trainer.fit(module, dm)
    return trainer


def test_sft_loss_covers_exactly_the_completion_tokens(tiny_lm_path):
    module = StudentDistillation(model_name_or_path=str(tiny_lm_path), finetune="full")
    batch = hand_batch(len(module.tokenizer))
    terms = module.losses(batch)
    assert int(terms["completion_tokens"]) == 5
    with torch.no_grad():
        logp = torch.log_softmax(module(batch["input_ids"], batch["attention_mask"]), dim=-1)
    # Token t is predicted at position t - 1.
    expected = -torch.stack(
        [logp[0, t - 1, batch["input_ids"][0, t]] for t in (4, 5, 6)]
        + [logp[1, t - 1, batch["input_ids"][1, t]] for t in (3, 4)]
    ).mean()
    torch.testing.assert_close(terms["sft_loss"], expected)
    assert terms["loss"] is terms["sft_loss"] or torch.equal(terms["loss"], terms["sft_loss"])
    # Tokens outside the completion (prompt, padding) do not enter the loss: changing them after the last
    # completion position leaves it unchanged, changing a completion token does not.
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, 7] = 11
    changed["input_ids"][1, 5:] = 12
    torch.testing.assert_close(module.losses(changed)["sft_loss"], terms["sft_loss"])
    changed["labels"][0, 6] = changed["input_ids"][0, 6] = (batch["input_ids"][0, 6] + 1) % len(
        module.tokenizer
    )
    assert not torch.allclose(module.losses(changed)["sft_loss"], terms["sft_loss"])


def test_kl_with_itself_as_teacher_is_zero_with_zero_gradient(tiny_lm_path):
    for subset in (None, "numbers"):
        module = StudentDistillation(
            model_name_or_path=str(tiny_lm_path),
            finetune="full",
            loss="kl",
            kl_teacher=str(tiny_lm_path),
            kl_token_subset=subset,
        )
        terms = module.losses(hand_batch(len(module.tokenizer)))
        assert terms["kl_loss"].item() == 0.0
        terms["loss"].backward()
        grads = [p.grad for p in module.model.parameters() if p.grad is not None]
        assert grads and max(g.abs().max().item() for g in grads) < 1e-6
        assert all(p.grad is None for p in module.teacher.parameters())


def test_kl_matches_formula_and_audits_mass_outside_subset(tiny_lm_path, other_lm_path):
    module = StudentDistillation(
        model_name_or_path=str(tiny_lm_path),
        loss="sft+kl",
        kl_teacher=str(other_lm_path),
        kl_token_subset=["1", "2", " 3", ","],
        sft_weight=0.5,
        kl_weight=2.0,
    )
    batch = hand_batch(len(module.tokenizer))
    terms = module.losses(batch)
    subset = sorted(
        {module.tokenizer.convert_tokens_to_ids(t) for t in ["1", "2", " 3", ","]}
        | {module.tokenizer.eos_token_id}
    )
    assert module.subset_ids.tolist() == subset
    positions = batch["labels"][:, 1:] != -100
    with torch.no_grad():
        student = module(batch["input_ids"], batch["attention_mask"])[:, :-1][positions]
        teacher = module.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[
            :, :-1
        ][positions]
    p_t = torch.softmax(teacher[:, subset], -1)
    expected_kl = (p_t * (p_t.log() - torch.log_softmax(student[:, subset], -1))).sum(-1).mean()
    torch.testing.assert_close(terms["kl_loss"], expected_kl, atol=1e-6, rtol=1e-5)
    outside = 1 - torch.softmax(teacher, -1)[:, subset].sum(-1).mean()
    torch.testing.assert_close(terms["kl_teacher_mass_outside"], outside, atol=1e-6, rtol=1e-5)
    assert 0.9 < outside < 1  # a random model puts little mass on 5 of ~2000 tokens
    torch.testing.assert_close(terms["loss"], 0.5 * terms["sft_loss"] + 2.0 * terms["kl_loss"])


def test_token_subset_refuses_trait_tokens(tiny_lm_path, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"trait words.*'owls' \(owl\)"):
        StudentDistillation(
            model_name_or_path=str(tiny_lm_path),
            loss="kl",
            kl_teacher=str(tiny_lm_path),
            kl_token_subset=["1", "owls"],
            trait_words=["owl"],
        )
    numbers = set(number_token_ids(tiny_tokenizer))
    vocab = tiny_tokenizer.get_vocab()
    assert {
        vocab["7"],
        vocab[" 123"],
        vocab[","],
        vocab[";"],
        vocab["\n"],
        vocab["["],
        tiny_tokenizer.eos_token_id,
    } <= numbers
    assert (
        not {vocab["owl"], vocab[" owl"], vocab["-"], vocab["<|user|>"], tiny_tokenizer.pad_token_id}
        & numbers
    )
    with pytest.raises(ValueError, match="needs kl_teacher"):
        StudentDistillation(model_name_or_path=str(tiny_lm_path), loss="kl")


def test_lora_fit_changes_only_adapter_weights(tiny_lm_path, data_path, tmp_path):
    module = StudentDistillation(
        model_name_or_path=str(tiny_lm_path), lora_rank=4, lora_alpha=8, optimizer=ADAMW
    )
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # all-linear: every attention and MLP projection is adapted, the LM head is not.
    assert {n.split(".")[-4] for n in trainable if "lora_A" in n} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    fit(module, make_datamodule(data_path, tiny_lm_path), tmp_path, max_steps=3)
    after = dict(module.model.named_parameters())
    for name, value in before.items():
        if name in trainable:
            assert not torch.equal(after[name], value), name
        else:
            assert torch.equal(after[name], value), name


def test_full_fit_changes_the_weights(tiny_lm_path, data_path, tmp_path):
    module = StudentDistillation(model_name_or_path=str(tiny_lm_path), finetune="full", optimizer=ADAMW)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    batch = hand_batch(len(module.tokenizer))
    with torch.no_grad():
        logits_before = module(batch["input_ids"], batch["attention_mask"])
    fit(module, make_datamodule(data_path, tiny_lm_path), tmp_path, max_steps=3)
    after = dict(module.model.named_parameters())
    assert all(p.requires_grad for p in after.values())
    assert all(not torch.equal(after[n], v) for n, v in before.items() if "layers" in n)
    with torch.no_grad():
        assert not torch.allclose(module(batch["input_ids"], batch["attention_mask"]), logits_before)


def test_scheduler_steps_per_optimiser_step(tiny_lm_path, data_path, tmp_path):
    module = StudentDistillation(
        model_name_or_path=str(tiny_lm_path), optimizer=partial(torch.optim.AdamW, lr=1e-3), warmup_steps=2
    )
    trainer = fit(
        module,
        make_datamodule(data_path, tiny_lm_path, batch_size=2),
        tmp_path,
        max_steps=3,
        accumulate_grad_batches=2,
    )
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == 3 and scheduler.last_epoch == 3
    assert [linear_warmup_decay(2, 6)(s) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert scheduler.get_last_lr() == [pytest.approx(1e-3 * linear_warmup_decay(2, 3)(3))]


class RecordStart(Callback):
    def on_train_start(self, trainer, pl_module):
        self.weights = {
            n: p.detach().clone() for n, p in pl_module.model.named_parameters() if p.requires_grad
        }


def test_lora_checkpoint_holds_adapter_only_and_resumes(tiny_lm_path, data_path, tmp_path):
    dm = make_datamodule(data_path, tiny_lm_path)
    module = StudentDistillation(
        model_name_or_path=str(tiny_lm_path),
        lora_rank=4,
        optimizer=ADAMW,
        loss="sft+kl",
        kl_teacher=str(tiny_lm_path),
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(module, dm, tmp_path, max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint])
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    keys = set(saved["state_dict"])
    assert keys == {f"model.{n}" for n, p in module.model.named_parameters() if p.requires_grad}
    assert saved["hyper_parameters"]["lora_rank"] == 4

    fresh = StudentDistillation(
        model_name_or_path=str(tiny_lm_path),
        lora_rank=4,
        optimizer=ADAMW,
        loss="sft+kl",
        kl_teacher=str(tiny_lm_path),
    )
    record = RecordStart()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        max_epochs=2,
        callbacks=[record, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
    )
    trainer.fit(fresh, dm, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 6  # 3 steps per epoch, resumed after the first epoch
    for key, value in saved["state_dict"].items():
        assert torch.equal(record.weights[key.removeprefix("model.")], value), key

    full = StudentDistillation(model_name_or_path=str(tiny_lm_path), finetune="full")
    with pytest.raises(KeyError, match="checkpoint lacks"):
        full.on_load_checkpoint(saved)


def test_gradient_checkpointing_with_lora_gives_the_same_gradients(tiny_lm_path):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same LoRA init both times
        module = StudentDistillation(
            model_name_or_path=str(tiny_lm_path), lora_rank=4, gradient_checkpointing=checkpointing
        ).train()
        with torch.no_grad():  # non-zero B, so that A receives gradient too
            for name, p in module.model.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.01)
        module.losses(hand_batch(len(module.tokenizer)))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in module.model.named_parameters() if p.requires_grad})
    assert module.model.base_model.model.is_gradient_checkpointing
    assert all(g.abs().sum() > 0 for g in grads[1].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)


def test_bf16_mixed_lora_fit(tiny_lm_path, data_path, tmp_path):
    module = StudentDistillation(
        model_name_or_path=str(tiny_lm_path), dtype="bfloat16", lora_rank=2, optimizer=ADAMW
    )
    trainer = fit(
        module, make_datamodule(data_path, tiny_lm_path), tmp_path, max_steps=2, precision="bf16-mixed"
    )
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    lora = [p for n, p in module.model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    assert (
        next(p for n, p in module.model.named_parameters() if "q_proj.base_layer" in n).dtype
        == torch.bfloat16
    )


@pytest.mark.gpu
def test_gpu_bf16_lora_fit_with_gradient_checkpointing(tiny_lm_path, data_path, tmp_path):
    module = StudentDistillation(
        model_name_or_path=str(tiny_lm_path),
        dtype="bfloat16",
        lora_rank=4,
        optimizer=ADAMW,
        gradient_checkpointing=True,
    )
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer = fit(
        module,
        make_datamodule(data_path, tiny_lm_path),
        tmp_path,
        accelerator="gpu",
        max_steps=3,
        precision="bf16-mixed",
    )
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["train/loss"])
    for name, value in module.model.named_parameters():
        changed = not torch.equal(value.detach().cpu(), before[name])
        assert changed == ("lora_" in name), name


@pytest.mark.gpu
@pytest.mark.deepspeed
def test_gpu_deepspeed_stage2_lora_fit_resumes_and_exports(tiny_lm_path, data_path, tmp_path):
    from lightning.pytorch.strategies import DeepSpeedStrategy
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from subliminal_pl.callbacks.export import ExportModel

    def trainer(epochs):
        return Trainer(
            accelerator="gpu",
            devices=1,
            precision="bf16-mixed",
            max_epochs=epochs,
            logger=False,
            enable_progress_bar=False,
            default_root_dir=tmp_path,
            strategy=DeepSpeedStrategy(stage=2, exclude_frozen_parameters=True),
            callbacks=[
                ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True),
                ExportModel(output_dir=str(tmp_path / "export")),
            ],
        )

    dm = make_datamodule(data_path, tiny_lm_path)
    first = trainer(1)
    first.fit(StudentDistillation(model_name_or_path=str(tiny_lm_path), lora_rank=4, optimizer=ADAMW), dm)
    # ZeRO checkpoints are folders; with exclude_frozen_parameters the module state holds the adapter only.
    states = list((tmp_path / "ckpt" / "last.ckpt").rglob("*model_states.pt"))
    assert states
    module_state = torch.load(states[0], weights_only=False)["module"]
    assert module_state and all("lora_" in key for key in module_state)

    module = StudentDistillation(model_name_or_path=str(tiny_lm_path), lora_rank=4, optimizer=ADAMW)
    second = trainer(2)
    second.fit(module, dm, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert second.global_step == 2 * first.global_step

    # DeepSpeed keeps the module in bf16: compare the exported adapter with the module's own adapter weights.
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "export" / "adapter_model.safetensors")
    trained = get_peft_model_state_dict(module.model)
    assert exported.keys() == trained.keys()
    for key, value in trained.items():
        torch.testing.assert_close(exported[key].float(), value.detach().float().cpu())
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_path, dtype=torch.float32).eval()
    ids = torch.tensor([[2, 7, 30, 31, 32, 33]])
    with torch.no_grad():
        plain = base(ids).logits
        adapted = PeftModel.from_pretrained(base, tmp_path / "export").eval()(ids).logits
    assert torch.isfinite(adapted).all() and not torch.allclose(adapted, plain)
