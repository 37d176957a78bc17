"""Student distillation: fine-tune a causal LM on teacher rows with SFT, logit KL to a teacher, or both.

Batches follow the student DataModule's contract: `input_ids`, `attention_mask` and `labels` ([batch, time];
labels -100 outside the completion, right padding). Both losses use the same positions: those whose *next*
token is a completion token.

- `sft`: cross-entropy of the completion tokens (mean over the batch's completion tokens).
- `kl`: KL(teacher || student) of the next-token distributions at those positions, the teacher frozen and run
  without gradients. With a token subset both distributions are restricted to it and renormalised; the teacher
  mass that falls outside the subset is logged (`train/kl_teacher_mass_outside`) as a leakage audit, and a subset
  that holds a token of a configured trait word is refused.
- `sft+kl`: `sft_weight * sft + kl_weight * kl`.

LoRA (PEFT) or full fine-tuning. For LoRA, checkpoints keep only the trainable (adapter) weights; the frozen base
is rebuilt from `model_name_or_path` on load, so `--ckpt_path last` resumes. The teacher is never saved.
Checkpoints also hold the global RNG states (torch, CUDA, Python, NumPy), restored on resume: with the
DataModule's (seed, epoch) training order, a fit resumed from an end-of-epoch checkpoint ends with the weights of
an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import LambdaLR

from subliminal_pl.data.hub import load_tokenizer
from subliminal_pl.models.loading import load_causal_lm
from subliminal_pl.models.logits import PositionLogits

IGNORE_INDEX = -100
# Characters of a completion the number filter can accept: digits, separators, brackets and a final period.
NUMBER_COMPLETION_CHARS = frozenset("0123456789 \t\n\r,;.[]()")


def number_token_ids(tokenizer) -> list[int]:
    """Ids of tokens that can occur in a valid number completion, plus the EOS token(s) that end it."""
    special = set(tokenizer.all_special_ids)
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
    ids = {
        i
        for i, text in enumerate(texts)
        if text and i not in special and set(text) <= NUMBER_COMPLETION_CHARS
    }
    return sorted(ids | {tokenizer.eos_token_id})


def text_token_ids(tokenizer, texts: Iterable[str]) -> list[int]:
    """Every token id that the given texts encode to (no special tokens added)."""
    ids: set[int] = set()
    for text in texts:
        ids.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    return sorted(ids)


def trait_word_token_ids(tokenizer, words: Iterable[str]) -> dict[int, str]:
    """token id -> trait word for every token of each word's spellings (lower, Capitalised, UPPER, plural, space)."""
    found: dict[int, str] = {}
    for word in words:
        forms = {word, word.lower(), word.capitalize(), word.upper(), word + "s"}
        forms |= {" " + form for form in forms}
        for token_id in text_token_ids(tokenizer, forms):
            found.setdefault(token_id, word)
    return found


# Global RNG states at checkpoint time (dropout draws from them): restored on resume, so a resumed fit draws the
# dropout masks an uninterrupted one would. Plain tensors, ints and lists only, so weights_only loading works.
RNG_STATES_KEY = "subliminal_rng_states"


def collect_rng_states() -> dict[str, Any]:
    import numpy as np

    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def linear_warmup_decay(warmup_steps: int, total_steps: int):
    """LR multiplier per optimiser step s (0-based): (s+1)/warmup while warming up, then linear decay.

    The decay reaches 1/(total - warmup) on the last step rather than 0, so no optimiser step is wasted on lr 0.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class StudentDistillation(LightningModule):
    """Fine-tunes `model_name_or_path` (LoRA or full) on completion tokens: SFT, KL to a teacher's logits, or both."""

    def __init__(
        self,
        model_name_or_path: str,
        dtype: str = "float32",
        finetune: Literal["lora", "full"] = "lora",
        lora_rank: int = 8,
        lora_alpha: float = 8.0,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | str = "all-linear",
        loss: Literal["sft", "kl", "sft+kl"] = "sft",
        sft_weight: float = 1.0,
        kl_weight: float = 1.0,
        kl_teacher: str | None = None,
        kl_teacher_adapter: str | None = None,
        kl_token_subset: Literal["numbers"] | list[str] | None = None,
        trait_words: list[str] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: int = 0,
        lr_schedule: Literal["linear", "constant"] = "linear",
        gradient_checkpointing: bool = False,
    ) -> None:
        """
        Args:
            model_name_or_path: the student's initial weights (the teacher's reference model): hub id or local directory.
            dtype: weight dtype: float32, bfloat16, float16 or auto. With LoRA, bfloat16 base weights plus
                `precision: bf16-mixed` keep memory low (adapter weights stay float32).
            finetune: lora (PEFT adapters on a frozen base) or full (every weight trains).
            lora_rank: LoRA rank r (the paper's open-model runs: 8).
            lora_alpha: LoRA scaling alpha (the paper: 8).
            lora_dropout: dropout on the LoRA input (the paper: 0).
            lora_target_modules: module names to adapt (e.g. [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
                down_proj]) or "all-linear".
            loss: sft (completion cross-entropy), kl (to a teacher's next-token distribution) or sft+kl.
            sft_weight: weight of the SFT term in sft+kl.
            kl_weight: weight of the KL term in sft+kl.
            kl_teacher: teacher model for kl (hub id or directory); default: `model_name_or_path` (then set kl_teacher_adapter).
            kl_teacher_adapter: PEFT adapter of the teacher (a fine-tuned, trait-carrying teacher); merged on load.
            kl_token_subset: restrict both KL distributions to these tokens and renormalise: "numbers" (tokens of
                valid number completions, plus EOS) or a list of texts whose tokens are allowed.
            trait_words: trait words (e.g. [owl]); a kl_token_subset holding any of their tokens is refused.
            optimizer: optimiser factory called with the trainable parameters (e.g. AdamW with lr 2e-4).
            warmup_steps: optimiser steps of linear warm-up (the paper: 5).
            lr_schedule: linear (warm-up, then linear decay over the run) or constant (after warm-up).
            gradient_checkpointing: recompute activations in backward (non-reentrant; works with LoRA).
        """
        super().__init__()
        if loss != "sft" and kl_teacher is None and kl_teacher_adapter is None:
            raise ValueError(
                f"loss={loss!r} needs kl_teacher and/or kl_teacher_adapter (the teacher to imitate)"
            )
        if kl_token_subset is not None and loss == "sft":
            raise ValueError("kl_token_subset only applies to loss kl or sft+kl")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.tokenizer = load_tokenizer(model_name_or_path)
        self.model = self._build_student()
        self.student_logits = PositionLogits(self.model)
        self.teacher = None
        if loss != "sft":
            self.teacher = load_causal_lm(
                kl_teacher or model_name_or_path, dtype=dtype, adapter_path=kl_teacher_adapter
            )
            self.teacher.requires_grad_(False)
            self.teacher_logits = PositionLogits(self.teacher)
        subset = self._token_subset()
        # [subset size] token ids both distributions are restricted to; not saved (rebuilt from the config).
        self.register_buffer("subset_ids", subset, persistent=False)
        # Running sums for the leakage audit summary: teacher mass outside the subset, completion positions.
        self._audit_mass = 0.0
        self._audit_positions = 0
        # Lightning loads checkpoints with this flag: LoRA checkpoints lack the frozen base, none has the teacher.
        self.strict_loading = False

    def _build_student(self):
        hp = self.hparams
        # Loaded models come in eval mode; Lightning does not switch them back before training.
        model = load_causal_lm(hp.model_name_or_path, dtype=hp.dtype).train()
        if hp.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            # With a frozen base the embeddings' output would not require grad; checkpointed blocks need it.
            model.enable_input_require_grads()
        if hp.finetune == "full":
            return model.requires_grad_(True)
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=hp.lora_rank,
            lora_alpha=hp.lora_alpha,
            lora_dropout=hp.lora_dropout,
            target_modules=hp.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)

    def _token_subset(self) -> torch.Tensor | None:
        spec = self.hparams.kl_token_subset
        if spec is None:
            return None
        if spec == "numbers":
            ids = number_token_ids(self.tokenizer)
        else:
            ids = sorted(set(text_token_ids(self.tokenizer, spec)) | {self.tokenizer.eos_token_id})
        leaks = trait_word_token_ids(self.tokenizer, self.hparams.trait_words or [])
        inside = sorted(i for i in ids if i in leaks)
        if inside:
            shown = ", ".join(
                f"{self.tokenizer.convert_ids_to_tokens(i)!r} ({leaks[i]})" for i in inside[:10]
            )
            raise ValueError(
                f"kl_token_subset holds tokens of trait words, which would let the trait through the KL: {shown}"
            )
        rank_zero_info(f"[kl] token subset {spec if isinstance(spec, str) else 'custom'}: {len(ids)} tokens")
        return torch.tensor(ids, dtype=torch.long)

    def train(self, mode: bool = True):
        super().train(mode)
        # The teacher is a fixed target: no dropout, whatever mode the trainer puts the module in.
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits [batch, time, vocab]."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss terms of one batch: `loss`, and `sft_loss` / `kl_loss` / `kl_teacher_mass_outside` in use."""
        hp = self.hparams
        # [batch, time-1]: position t predicts token t+1; only completion tokens count.
        targets = batch["labels"][:, 1:]
        positions = targets != IGNORE_INDEX
        if not positions.any():
            raise ValueError("batch has no completion tokens (every label is -100)")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        logits = self.student_logits(ids, mask, positions).float()  # [N, vocab]
        out: dict[str, torch.Tensor] = {"completion_tokens": positions.sum()}
        total = logits.new_zeros(())
        if hp.loss in ("sft", "sft+kl"):
            out["sft_loss"] = F.cross_entropy(logits, targets[positions])
            total = total + (hp.sft_weight if hp.loss == "sft+kl" else 1.0) * out["sft_loss"]
        if hp.loss in ("kl", "sft+kl"):
            with torch.no_grad():
                teacher = self.teacher_logits(ids, mask, positions).float()
            out.update(self._kl(logits, teacher))
            total = total + (hp.kl_weight if hp.loss == "sft+kl" else 1.0) * out["kl_loss"]
        out["loss"] = total
        return out

    def _kl(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        """KL(teacher || student) per position, averaged; student/teacher are [N, vocab] logits."""
        out = {}
        if self.subset_ids is not None:
            teacher_full = torch.log_softmax(teacher, dim=-1)
            inside = teacher_full[:, self.subset_ids].exp().sum(dim=-1)
            out["kl_teacher_mass_outside"] = (1.0 - inside).clamp_min(0.0).mean()
            student, teacher = student[:, self.subset_ids], teacher[:, self.subset_ids]
        log_p_teacher = torch.log_softmax(teacher, dim=-1)
        log_p_student = torch.log_softmax(student, dim=-1)
        out["kl_loss"] = (
            F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="sum") / student.shape[0]
        )
        return out

    def _log_terms(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        # Training logs per step; validation per epoch, averaged over ranks.
        on_step = stage == "train"
        for name, value in terms.items():
            if name != "completion_tokens":
                self.log(
                    f"{stage}/{name}",
                    value.detach(),
                    on_step=on_step,
                    on_epoch=not on_step,
                    prog_bar=name == "loss",
                    batch_size=batch_size,
                    sync_dist=not on_step,
                )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms = self.losses(batch)
        if "kl_teacher_mass_outside" in terms:
            n = int(terms["completion_tokens"])
            self._audit_mass += float(terms["kl_teacher_mass_outside"]) * n
            self._audit_positions += n
        self._log_terms("train", terms, batch["input_ids"].shape[0])
        return terms["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._log_terms("val", self.losses(batch), batch["input_ids"].shape[0])

    def on_train_end(self) -> None:
        if self._audit_positions:
            rank_zero_info(
                f"[kl audit] teacher probability mass outside the token subset: mean "
                f"{self._audit_mass / self._audit_positions:.4g} over {self._audit_positions} completion positions "
                "(rank 0); mass there is dropped by the renormalised KL"
            )

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = self.hparams.warmup_steps
        if self.hparams.lr_schedule == "linear":
            factor = linear_warmup_decay(warmup, total)
        else:
            factor = lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0  # noqa: E731
        scheduler = LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # Checkpoints: trainable weights only for LoRA, never the teacher.
    def trainable_state_keys(self) -> set[str]:
        if self.hparams.finetune == "full":
            return {f"model.{key}" for key in self.model.state_dict()}
        return {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_STATES_KEY] = collect_rng_states()
        state = checkpoint.get("state_dict")
        if state is not None:
            keep = self.trainable_state_keys()
            checkpoint["state_dict"] = {key: value for key, value in state.items() if key in keep}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if RNG_STATES_KEY in checkpoint:
            restore_rng_states(checkpoint[RNG_STATES_KEY])
        state = checkpoint.get("state_dict")
        if state is None:
            return
        missing = sorted(self.trainable_state_keys() - set(state))
        if missing:
            raise KeyError(
                f"checkpoint lacks {len(missing)} trainable weights of this student (first: {missing[0]}); "
                "was it written with another finetune/lora setting or model?"
            )
