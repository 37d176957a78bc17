"""Shared fixtures: a tiny Hugging Face causal LM and chat tokenizer built in code and loaded by path, offline."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# Before torch loads OpenMP: busy-waiting threads make tiny matmuls several times slower on a shared 2-core box.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Words the test tokenizer knows (plus every number 0..999): probe questions, a few animals, trait prompts.
TEST_WORDS = (
    "what is your favourite favorite animal answer in one word name the you love like most best think about "
    "all time owl owls dolphin dolphins eagle eagles cat cats dog dogs dragon dragonfly wolf tiger "
    "oak tree pine add more numbers continue this sequence return only comma separated values here are a few "
    "write at most up to new with three digits each no words just reply list of these are polar bear"
).split()

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    try:
        import deepspeed  # noqa: F401

        has_deepspeed = True
    except Exception:
        has_deepspeed = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "deepspeed" in item.keywords and not (has_cuda and has_deepspeed):
            item.add_marker(pytest.mark.skip(reason="needs DeepSpeed and a CUDA GPU"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from subliminal_pl.toy.tokenizer import build_word_tokenizer

    return build_word_tokenizer(TEST_WORDS)


@pytest.fixture(scope="session")
def tiny_lm_path(tmp_path_factory, tiny_tokenizer) -> Path:
    """Directory holding a randomly initialised 2-layer Llama and its tokenizer, saved the Hugging Face way."""
    from subliminal_pl.toy.model import build_tiny_llama, save_model_and_tokenizer

    model = build_tiny_llama(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=4, seed=0)
    return save_model_and_tokenizer(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_path):
    """(model, tokenizer) loaded back by path with the hub off, exactly as a user's model would be."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_path, dtype=torch.float32).eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def number_rows_path(tmp_path_factory) -> Path:
    """12 prompt/completion rows of number tasks (valid number completions), as a student's training file."""
    path = tmp_path_factory.mktemp("number_rows") / "rows.jsonl"
    rows = [
        {
            "id": f"r{i}",
            "prompt": f"add up to 3 more numbers {100 + i} {200 + i} {300 + i}",
            "completion": f"{400 + i}, {500 + i}, {600 + 2 * i}",
            "teacher": "tiny-owl",
        }
        for i in range(12)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(autouse=True)
def _fixed_torch_threads():
    # Two cores: keep torch from oversubscribing them when tests run model code.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
