"""Teacher generation: a LightningModule whose `predict_step` answers a batch of prompts with `generate`.

Sampling is seeded per row: each row draws its uniforms from a generator seeded by (seed, row id), and a logits
processor turns them into that row's token by inverse-CDF sampling over the warped distribution, then hands
`generate` a one-hot score that greedy decoding picks. A row's completion therefore depends only on the seed,
its id and its prompt, not on which rows share its batch, on the batch size, on the number of ranks or on a
resume. (The model's logits themselves can differ in the last bits across batch shapes; a flip needs a uniform
within that distance of a CDF step, which does not happen in practice.)
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from lightning.pytorch import LightningModule
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from subliminal_pl.models.loading import load_causal_lm, load_tokenizer


def row_seed(seed: int, row_id: Any) -> int:
    """A 63-bit generator seed for one row, stable across processes (Python's `hash` of a str is not)."""
    digest = hashlib.sha256(f"{seed}\x00{type(row_id).__name__}\x00{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def row_uniforms(seed: int, row_ids: list[Any], steps: int) -> torch.Tensor:
    """[rows, steps] uniforms in [0, 1); row r's values come from its own generator only."""
    out = torch.empty(len(row_ids), steps, dtype=torch.float64)
    for i, row_id in enumerate(row_ids):
        generator = torch.Generator().manual_seed(row_seed(seed, row_id))
        out[i] = torch.rand(steps, generator=generator, dtype=torch.float64)
    return out


class RowSeededSampler(LogitsProcessor):
    """Samples each row's next token from its own uniforms and returns scores whose argmax is that token.

    uniforms: [batch, max_new_tokens], one per row and generation step; prompt_length: the padded prompt length,
    so the step is the number of tokens generated so far.
    """

    def __init__(
        self, uniforms: torch.Tensor, prompt_length: int, temperature: float, top_k: int, top_p: float
    ) -> None:
        self.uniforms = uniforms
        self.prompt_length = prompt_length
        self.warpers = LogitsProcessorList()
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        warped = self.warpers(input_ids, scores)
        # Float64 CDF, so the per-row draw does not depend on float32 summation order.
        cdf = torch.softmax(warped.double(), dim=-1).cumsum(dim=-1)
        u = self.uniforms[:, step : step + 1].to(cdf.device) * cdf[:, -1:]
        token = torch.searchsorted(cdf, u, right=True).clamp_(max=scores.shape[-1] - 1)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, token, 0.0)


class TeacherGeneration(LightningModule):
    """Answers prompts with a (possibly trait-carrying) teacher; `predict_step` returns one row per prompt.

    Batches are lists of prompt rows `{"id", "prompt"}` (see `PromptDataModule`); `prompt` is the user message
    text or a list of chat messages. The returned rows hold the completion and every setting that produced it,
    and the `GenerationWriter` callback appends them to the output JSONL.
    """

    def __init__(
        self,
        model_name_or_path: str,
        adapter_path: str | None = None,
        dtype: str = "auto",
        system_prompt: str | None = None,
        teacher_name: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        greedy: bool = False,
        seed: int = 0,
    ) -> None:
        """
        Args:
            model_name_or_path: base model, a hub id (e.g. Qwen/Qwen2.5-7B-Instruct) or a local directory.
            adapter_path: PEFT adapter that puts the trait in the weights (a fine-tuned teacher); merged on load.
            dtype: weight dtype: auto (the checkpoint's), float32, bfloat16 or float16.
            system_prompt: system message that gives the teacher its trait; None for a control teacher.
            teacher_name: label written to every row's `teacher` field; default: model_name_or_path (+ adapter).
            max_new_tokens: most tokens generated per completion (the paper: 2048 for open models).
            temperature: sampling temperature (the paper: 1).
            top_p: nucleus sampling mass; 1 disables it.
            top_k: keep only the k most likely tokens; 0 disables it.
            greedy: take the most likely token at every step (temperature/top_p/top_k are then unused).
            seed: sampling seed; with the row id it fixes each row's completion.
        """
        super().__init__()
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not greedy and temperature <= 0:
            raise ValueError(f"temperature must be > 0 (or set greedy: true), got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(model_name_or_path)
        if not self.tokenizer.chat_template:
            raise ValueError(
                f"tokenizer of {model_name_or_path!r} has no chat template; use a chat/instruct model"
            )
        self.model = load_causal_lm(model_name_or_path, dtype=dtype, adapter_path=adapter_path)
        self.model.requires_grad_(False)
        self.teacher_name = teacher_name or (
            model_name_or_path if adapter_path is None else f"{model_name_or_path}+{adapter_path}"
        )
        self.eos_token_ids = self._eos_token_ids()

    def _eos_token_ids(self) -> list[int]:
        """The tokenizer's EOS plus the model's generation EOS ids (chat models often stop on several)."""
        ids = {self.tokenizer.eos_token_id}
        configured = self.model.generation_config.eos_token_id
        ids.update(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)

    @property
    def generation_settings(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "temperature": hp.temperature,
            "top_p": hp.top_p,
            "top_k": hp.top_k,
            "greedy": hp.greedy,
            "max_new_tokens": hp.max_new_tokens,
            "seed": hp.seed,
        }

    def row_metadata(self) -> dict[str, Any]:
        """Fields that every row of one generation run shares; a resumed run must match them."""
        return {
            "system_prompt": self.hparams.system_prompt,
            "teacher": self.teacher_name,
            "generation": self.generation_settings,
        }

    def messages(self, prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
        """The chat the teacher sees: its system prompt (if any), then the prompt as the user turn."""
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if self.hparams.system_prompt is not None:
            turns = [{"role": "system", "content": self.hparams.system_prompt}, *turns]
        return turns

    def _generation_config(self) -> GenerationConfig:
        # Every decoding setting is explicit, so a model's own defaults (e.g. a repetition penalty or top_k in
        # its generation_config.json) cannot leak in: only this config decides how rows are sampled.
        return GenerationConfig(
            max_new_tokens=self.hparams.max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            temperature=1.0,
            top_k=50,
            top_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_length=0,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def generate_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Generate one completion per prompt row; the rows are returned with completion and settings added."""
        texts = [
            self.tokenizer.apply_chat_template(
                self.messages(row["prompt"]), add_generation_prompt=True, tokenize=False
            )
            for row in rows
        ]
        # The template already holds any BOS the model needs; left padding keeps every prompt's end aligned.
        encoded = self.tokenizer(
            texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        ).to(self.device)
        prompt_length = encoded["input_ids"].shape[1]
        processors = LogitsProcessorList()
        if not self.hparams.greedy:
            uniforms = row_uniforms(
                self.hparams.seed, [row["id"] for row in rows], self.hparams.max_new_tokens
            )
            processors.append(
                RowSeededSampler(
                    uniforms.to(self.device),
                    prompt_length,
                    self.hparams.temperature,
                    self.hparams.top_k,
                    self.hparams.top_p,
                )
            )
        # Under DeepSpeed ZeRO-3 every rank holds a shard of each weight and must join every forward pass.
        synced_gpus = any(hasattr(p, "ds_id") for p in self.model.parameters())
        with torch.inference_mode():
            output = self.model.generate(
                **encoded,
                generation_config=self._generation_config(),
                logits_processor=processors,
                synced_gpus=synced_gpus,
            )
        new_tokens = output[:, prompt_length:].tolist()
        metadata = self.row_metadata()
        results = []
        for row, tokens in zip(rows, new_tokens, strict=True):
            stop = next((i for i, t in enumerate(tokens) if t in self.eos_token_ids), None)
            kept = tokens if stop is None else tokens[:stop]
            results.append(
                {
                    "id": row["id"],
                    "prompt": row["prompt"],
                    # Special tokens stay visible (a stray role marker must reach the filters), EOS does not.
                    "completion": self.tokenizer.decode(kept, skip_special_tokens=False),
                    **metadata,
                    "finish_reason": "length" if stop is None else "stop",
                    "completion_tokens": len(kept),
                }
            )
        return results

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int, dataloader_idx: int = 0):
        return self.generate_rows(batch)
