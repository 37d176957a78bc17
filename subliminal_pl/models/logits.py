"""Next-token logits at selected positions only.

A causal LM's forward projects every position onto the vocabulary, but the losses need only the completion
positions. Running the decoder, then the LM head on just those rows, saves most of the head's work and memory:
on a 150k-token vocabulary the full [batch, time, vocab] tensor dominates a step's memory, and a training step
of the toy model runs 1.8x faster (bench/bench_logits.py). Models whose forward does more than `lm_head(decoder(x))` (logit soft-capping, logit
scaling, custom heads) are caught by a one-off comparison with the full forward and use the full forward.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn


class PositionLogits:
    """`logits(input_ids, attention_mask, positions)` -> [N, vocab] logits where `positions` ([batch, time-1],
    bool) is True, position t scoring token t+1; the same rows as `model(...).logits[:, :-1][positions]`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.fast: bool | None = None  # decided on the first call

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        if self.fast is None:
            self.fast = self._fast_path_matches(input_ids, attention_mask, positions)
        if self.fast:
            return self._fast(input_ids, attention_mask, positions)
        return self._full(input_ids, attention_mask, positions)

    def _full(self, input_ids, attention_mask, positions) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return logits[:, :-1][positions]

    def _fast(self, input_ids, attention_mask, positions) -> torch.Tensor:
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        hidden = decoder(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        return head(hidden[:, :-1][positions])

    def _fast_path_matches(self, input_ids, attention_mask, positions) -> bool:
        """Whether decoder + head reproduces the model's own logits (checked once, without dropout or grads)."""
        get_decoder = getattr(self.model, "get_decoder", None)
        get_head = getattr(self.model, "get_output_embeddings", None)
        if get_decoder is None or get_head is None or get_head() is None or get_decoder() is self.model:
            return False
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                fast = self._fast(input_ids, attention_mask, positions).float()
                full = self._full(input_ids, attention_mask, positions).float()
        finally:
            self.model.train(training)
        scale = full.abs().max().clamp_min(1.0)
        if fast.shape == full.shape and torch.allclose(fast, full, rtol=0.0, atol=1e-2 * float(scale)):
            return True
        rank_zero_warn(
            f"{type(self.model).__name__}: decoder + LM head do not reproduce the model's logits (soft-capping or "
            "scaling?); using the full forward, which computes logits at every position"
        )
        return False
