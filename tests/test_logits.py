"""Logits at completion positions only: the decoder + LM head shortcut and its fallback to the full forward."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from subliminal_pl.models.logits import PositionLogits


def batch(vocab: int):
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, vocab, (3, 9), generator=g)
    attention_mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 4 + [0] * 5])
    positions = torch.zeros(3, 8, dtype=torch.bool)
    positions[0, 2:8] = True
    positions[1, 4:5] = True
    positions[2, 1:3] = True
    return input_ids, attention_mask, positions


def full_logits(model, input_ids, attention_mask, positions):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][positions]


@pytest.mark.parametrize("lora", [False, True])
def test_shortcut_gives_the_full_forward_rows_and_gradients(tiny_lm_path, lora):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_path, dtype=torch.float32)
    if lora:
        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=4, target_modules="all-linear", init_lora_weights=False)
        )
    args = batch(model.config.vocab_size)
    logits = PositionLogits(model)
    out = logits(*args)
    assert logits.fast is True
    assert out.shape == (9, model.config.vocab_size)
    torch.testing.assert_close(out, full_logits(model, *args), atol=1e-5, rtol=1e-5)
    # Gradients reach the trainable weights as through the full forward.
    out.logsumexp(-1).sum().backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    model(input_ids=args[0], attention_mask=args[1]).logits[:, :-1][args[2]].logsumexp(-1).sum().backward()
    assert fast
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(fast[name], p.grad, atol=1e-5, rtol=1e-4)


def test_a_model_whose_forward_scales_logits_falls_back_to_the_full_forward(tiny_lm_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_path, dtype=torch.float32)
    forward = model.forward

    def scaled(*args, **kwargs):  # a logit scale applied after the head, as some architectures do
        out = forward(*args, **kwargs)
        out.logits = 2.0 * out.logits
        return out

    model.forward = scaled
    args = batch(model.config.vocab_size)
    logits = PositionLogits(model)
    with pytest.warns(UserWarning, match="do not reproduce"):
        out = logits(*args)
    assert logits.fast is False
    torch.testing.assert_close(out, full_logits(model, *args))
