"""Model and tokenizer loading: local paths offline, clear errors for models that cannot be found, adapters."""

from __future__ import annotations

import socket

import pytest
import torch

from subliminal_pl.data.hub import ModelNotAvailableError, load_tokenizer
from subliminal_pl.models.loading import load_causal_lm, parse_dtype


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_local_path_loads_without_network(tiny_lm_path, tiny_lm, no_network, monkeypatch):
    # Even with the hub switched on, a local directory never goes online.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    model = load_causal_lm(tiny_lm_path, dtype="float32")
    tokenizer = load_tokenizer(tiny_lm_path)
    reference, _ = tiny_lm
    ids = torch.tensor([[tokenizer.bos_token_id, 5, 6, 7]])
    assert torch.equal(model(ids).logits, reference(ids).logits)
    assert tokenizer.chat_template and tokenizer.pad_token_id is not None
    assert not model.training


def test_dtype_is_applied(tiny_lm_path):
    assert load_causal_lm(tiny_lm_path, dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        parse_dtype("float8")


def test_uncached_hub_name_offline_says_how_to_provide_it(no_network):
    with pytest.raises(ModelNotAvailableError) as err:
        load_causal_lm("subliminal-pl-test/no-such-model")
    text = str(err.value)
    assert "'subliminal-pl-test/no-such-model'" in text and "HF_HUB_OFFLINE" in text
    assert "local directory" in text and "hf download subliminal-pl-test/no-such-model" in text
    with pytest.raises(ModelNotAvailableError, match="tokenizer 'subliminal-pl-test/no-such-model'"):
        load_tokenizer("subliminal-pl-test/no-such-model")


def test_missing_local_directory_is_named(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_causal_lm(str(tmp_path / "nowhere" / "model"))


def test_missing_pad_token_becomes_eos(tmp_path, tiny_tokenizer):
    from copy import deepcopy

    tokenizer = deepcopy(tiny_tokenizer)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token_id == loaded.eos_token_id == tiny_tokenizer.eos_token_id


def test_adapter_is_applied_and_merged(tmp_path, tiny_lm_path):
    from peft import LoraConfig, get_peft_model

    base = load_causal_lm(tiny_lm_path)
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    expected = peft_model(ids).logits

    merged = load_causal_lm(tiny_lm_path, adapter_path=tmp_path / "adapter")
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(merged(ids).logits, expected, atol=1e-5, rtol=1e-5)
    kept = load_causal_lm(tiny_lm_path, adapter_path=tmp_path / "adapter", merge_adapter=False)
    assert hasattr(kept, "peft_config")
    torch.testing.assert_close(kept(ids).logits, expected, atol=1e-5, rtol=1e-5)
    # The adapter changes the model: the base alone gives other logits.
    assert not torch.allclose(load_causal_lm(tiny_lm_path)(ids).logits, expected, atol=1e-3)
