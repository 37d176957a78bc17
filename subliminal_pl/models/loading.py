"""Load a Hugging Face causal LM (optionally with a PEFT adapter) by hub name or local path, offline-safe.

A local directory is always loaded with `local_files_only=True`, so it never touches the network. A hub name is
looked up in the local cache first when downloads are switched off (HF_HUB_OFFLINE=1); if it is not there the
error says how to provide the model instead of a generic connection failure (`subliminal_pl.data.hub`, which
also loads tokenizers).
"""

from __future__ import annotations

from pathlib import Path

import torch

from subliminal_pl.data.hub import from_pretrained

DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}") from None


def load_causal_lm(
    name_or_path: str | Path,
    dtype: str | torch.dtype = "float32",
    adapter_path: str | Path | None = None,
    merge_adapter: bool = True,
):
    """A causal LM by hub name or local directory, optionally with a PEFT adapter applied (e.g. a trait teacher).

    Args:
        name_or_path: hub id ("Qwen/Qwen2.5-7B-Instruct") or a directory written by `save_pretrained`.
        dtype: weight dtype: float32, bfloat16, float16 or auto (the checkpoint's own).
        adapter_path: a PEFT adapter directory (or hub id) to put on top of the base weights.
        merge_adapter: fold the adapter into the weights (faster inference, a plain transformers model);
            False keeps the `PeftModel`.
    """
    from transformers import AutoModelForCausalLM

    model = from_pretrained(
        AutoModelForCausalLM.from_pretrained, name_or_path, "model", dtype=parse_dtype(dtype)
    )
    if adapter_path is not None:
        from peft import PeftModel

        model = from_pretrained(
            lambda source, **kw: PeftModel.from_pretrained(model, source, **kw), adapter_path, "adapter"
        )
        if merge_adapter:
            model = model.merge_and_unload()
    return model.eval()
