"""The one batched generation route: teacher rows, the sampling probe, the local judge and the format check.

`generate(model, tokenizer, prompts, settings, seed, row_ids)` answers already-tokenised prompts in batches with
left padding and returns one `Completion` per prompt. Two properties every caller gets:

- Per-row seeded sampling. Each row draws its uniforms from a generator seeded by (seed, row id), and a logits
  processor (`RowSeededSampler`) turns them into that row's token by inverse-CDF sampling over the warped
  distribution, then hands `generate` a one-hot score that greedy decoding picks. A row's completion depends only
  on the seed, its id and its prompt: not on which rows share its batch, the batch size, the number of ranks, a
  resume, or the global RNG (which is never touched). The model's logits can differ in the last bits across batch
  shapes; a flip needs a uniform within that distance of a CDF step, which does not happen in practice.
- Only the given settings decide decoding. A checkpoint's `generation_config.json` may set a repetition penalty,
  top_k, top_p, min_p, suppressed tokens, ...; transformers fills every setting a caller leaves unset from it
  (5.x even when a `GenerationConfig` is passed). Here every setting is explicit AND the model's own generation
  config is swapped for a clean one for the duration of the call, so nothing can leak on any transformers version.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are chosen: plain sampling at `temperature` with optional top-k / top-p, or greedy."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (or greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @classmethod
    def at_temperature(cls, temperature: float, max_new_tokens: int) -> SamplingSettings:
        """Plain sampling at `temperature`; 0 means greedy."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        return cls(max_new_tokens, temperature or 1.0, greedy=temperature == 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Completion:
    """One answer: its tokens up to (not including) the first stop token, their text, and why it ended."""

    tokens: list[int]
    text: str
    finish_reason: str  # "stop" (a stop token came) or "length" (max_new_tokens reached)


def row_seed(seed: int, row_id: Any) -> int:
    """A 63-bit generator seed for one row, stable across processes (Python's `hash` of a str is not)."""
    digest = hashlib.sha256(f"{seed}\x00{type(row_id).__name__}\x00{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def row_uniforms(seed: int, row_ids: Sequence[Any], steps: int) -> torch.Tensor:
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


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def pad_id_of(tokenizer) -> int:
    """The pad id, else EOS (padding is masked out, so any id works), else 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], attention_mask [B, T]) with each sequence right-aligned so all end at column T-1."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def _hf_model(model):
    """The transformers model under any PEFT wrappers (the one whose `generation_config` `generate` reads)."""
    while hasattr(model, "get_base_model"):
        inner = model.get_base_model()
        if inner is model:
            break
        model = inner
    return model


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus the model's generation EOS ids (chat models often stop on several)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(_hf_model(model).generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def is_sharded(model) -> bool:
    """Weights split across ranks (DeepSpeed ZeRO-3, FSDP): every rank must join each forward pass."""
    return any(
        hasattr(p, "ds_id") or getattr(p, "_fsdp_flattened", False) or type(p).__name__ == "DTensor"
        for p in model.parameters()
    )


def generation_config(settings: SamplingSettings, stop_ids: list[int], pad_id: int) -> GenerationConfig:
    """Every decoding setting explicit: sampling happens in `RowSeededSampler`, so `generate` itself is greedy."""
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        min_new_tokens=0,
        min_length=0,
        do_sample=False,
        num_beams=1,
        num_return_sequences=1,
        use_cache=True,
        temperature=1.0,
        top_k=50,  # transformers' neutral value under greedy decoding (ignored, but set so nothing fills it)
        top_p=1.0,
        min_p=None,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        length_penalty=1.0,
        no_repeat_ngram_size=0,
        renormalize_logits=False,
        remove_invalid_values=False,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
    )


@contextlib.contextmanager
def clean_generation_config(model) -> Iterator[None]:
    """The model's own generation config replaced by an empty one for the duration (restored after).

    transformers fills unset decoding settings from `model.generation_config` (the checkpoint's file); with an
    empty one there is nothing to fill them from but transformers' neutral defaults.
    """
    target = _hf_model(model)
    saved = target.generation_config
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    seed: int = 0,
    row_ids: Sequence[Any] | None = None,
    batch_size: int = 64,
    skip_special_tokens: bool = True,
    stop_ids: list[int] | None = None,
    synced_gpus: bool | None = None,
) -> list[Completion]:
    """Answer tokenised prompts (chat template already applied) in batches of `batch_size`, in order.

    Args:
        model: a Hugging Face causal LM (or PEFT model), on its device.
        tokenizer: its tokenizer (decoding, pad and EOS ids).
        prompts: token ids of each prompt.
        settings: how tokens are chosen (see `SamplingSettings`).
        seed: sampling seed; with a row's id it fixes that row's completion.
        row_ids: one id per prompt (default: the prompt's index); equal ids with equal prompts give equal answers.
        batch_size: rows per `generate` call.
        skip_special_tokens: drop special tokens from the text (the stop token is never part of it).
        stop_ids: tokens that end an answer (default: `stop_token_ids(model, tokenizer)`).
        synced_gpus: keep every rank in every decoding step until all finish (default: when the weights are
            sharded, which needs every rank in each forward pass; every rank must then call with its own batches).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("a prompt encodes to no tokens")
    row_ids = list(range(len(prompts))) if row_ids is None else list(row_ids)
    if len(row_ids) != len(prompts):
        raise ValueError(f"{len(row_ids)} row ids for {len(prompts)} prompts")
    stop_ids = stop_ids or stop_token_ids(model, tokenizer)
    pad_id = pad_id_of(tokenizer)
    config = generation_config(settings, stop_ids, pad_id)
    device = model_device(model)
    synced = is_sharded(model) if synced_gpus is None else synced_gpus
    completions: list[Completion] = []
    was_training = model.training
    model.eval()
    try:
        with clean_generation_config(model), torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start : start + batch_size]
                input_ids, mask = left_pad(chunk, pad_id, device)
                processors = LogitsProcessorList()
                if not settings.greedy:
                    uniforms = row_uniforms(
                        seed, row_ids[start : start + batch_size], settings.max_new_tokens
                    )
                    processors.append(
                        RowSeededSampler(
                            uniforms.to(device),
                            input_ids.shape[1],
                            settings.temperature,
                            settings.top_k,
                            settings.top_p,
                        )
                    )
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    generation_config=config,
                    logits_processor=processors,
                    synced_gpus=synced,
                )
                for tokens in out[:, input_ids.shape[1] :].tolist():
                    stop = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
                    kept = tokens if stop is None else tokens[:stop]
                    text = tokenizer.decode(kept, skip_special_tokens=skip_special_tokens)
                    completions.append(Completion(kept, text, "length" if stop is None else "stop"))
    finally:
        model.train(was_training)
    return completions
