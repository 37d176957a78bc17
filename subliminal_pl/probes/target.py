"""`ProbeTarget`: a LightningModule that only holds a model to probe, for `subliminal-pl validate` / `test`.

    subliminal-pl validate --config configs/probes/animals.yaml --model.model_name_or_path BASE \
        --model.adapter_path runs/.../adapter

The evaluation loop runs one empty step; the `TraitProbeCallback` in the recipe does the measuring at the end of
the epoch. With an adapter kept unmerged (the default) a log-prob probe's "auto" reference is the base model with
the adapter switched off, so ΔlogP needs no second model in memory.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader


class ProbeTarget(LightningModule):
    """Loads a causal LM (optionally with a PEFT adapter) and its tokenizer; exposes `.model` and `.tokenizer`."""

    def __init__(
        self,
        model_name_or_path: str,
        adapter_path: str | None = None,
        merge_adapter: bool = False,
        tokenizer_name_or_path: str | None = None,
        dtype: str = "float32",
    ) -> None:
        """
        Args:
            model_name_or_path: hub id or directory of the (base) model.
            adapter_path: optional PEFT adapter directory put on top of the base model.
            merge_adapter: fold the adapter into the weights (then the "base" reference is not available).
            tokenizer_name_or_path: tokenizer source (default: the adapter directory if it has a tokenizer,
                else the model's).
            dtype: weight dtype: float32, bfloat16, float16 or auto.
        """
        super().__init__()
        self.save_hyperparameters()
        self.model = None
        self.tokenizer = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from pathlib import Path

        from subliminal_pl.data.hub import load_tokenizer
        from subliminal_pl.models.loading import load_causal_lm

        hp = self.hparams
        tokenizer_source = hp.tokenizer_name_or_path
        if tokenizer_source is None:
            has_tokenizer = hp.adapter_path and (Path(hp.adapter_path) / "tokenizer_config.json").is_file()
            tokenizer_source = hp.adapter_path if has_tokenizer else hp.model_name_or_path
        self.tokenizer = load_tokenizer(tokenizer_source)
        self.model = load_causal_lm(
            hp.model_name_or_path,
            dtype=hp.dtype,
            adapter_path=hp.adapter_path,
            merge_adapter=hp.merge_adapter,
        )

    def _one_step(self) -> DataLoader:
        # One dummy item: the loop must run for its epoch-end hooks (where the probes report) to fire.
        return DataLoader([torch.zeros(1)], batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return self._one_step()

    def test_dataloader(self) -> DataLoader:
        return self._one_step()

    def validation_step(self, batch, batch_idx: int) -> None:
        """Nothing to compute per batch: the probes run in the callback."""

    def test_step(self, batch, batch_idx: int) -> None:
        """Nothing to compute per batch: the probes run in the callback."""
