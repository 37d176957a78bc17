"""Teacher generation: a LightningModule whose `predict_step` answers a batch of prompts with `generate`.

Sampling goes through the shared helper (`subliminal_pl.models.generation.generate`): seeded per row, so a row's
completion depends only on the seed, its id and its prompt (not on its batch, the batch size, the number of
ranks or a resume), and decided only by this module's settings (a checkpoint's `generation_config.json` cannot
leak in).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule

from subliminal_pl.data.hub import load_tokenizer
from subliminal_pl.models.generation import SamplingSettings, generate, stop_token_ids
from subliminal_pl.models.loading import load_causal_lm


class TeacherGeneration(LightningModule):
    """Answers prompts with a (possibly trait-carrying) teacher; `predict_step` returns one row per prompt.

    Batches are lists of prompt rows `{"id", "prompt"}` (see `PromptDataModule`); `prompt` is the user message
    text or a list of chat messages; any other field of a prompt row is copied into its output row. The returned rows hold the completion and every setting that produced it,
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
        self.settings = SamplingSettings(max_new_tokens, temperature, top_k, top_p, greedy)
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
        self.eos_token_ids = stop_token_ids(self.model, self.tokenizer)

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

    def generate_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Generate one completion per prompt row; the rows are returned with completion and settings added."""
        prompts = [
            self.tokenizer(
                self.tokenizer.apply_chat_template(
                    self.messages(row["prompt"]), add_generation_prompt=True, tokenize=False
                ),
                add_special_tokens=False,  # the template already holds any BOS the model needs
            )["input_ids"]
            for row in rows
        ]
        completions = generate(
            self.model,
            self.tokenizer,
            prompts,
            self.settings,
            seed=self.hparams.seed,
            row_ids=[row["id"] for row in rows],
            batch_size=max(1, len(rows)),
            # Special tokens stay visible (a stray role marker must reach the filters); the stop token does not.
            skip_special_tokens=False,
            stop_ids=self.eos_token_ids,
        )
        metadata = self.row_metadata()
        return [
            {
                # Fields of the prompt row beyond id and prompt (e.g. a maths problem's `gold_answer`) go on to
                # the carrier's filters; the settings below always win over a field of the same name.
                **{key: value for key, value in row.items() if key not in ("id", "prompt")},
                "id": row["id"],
                "prompt": row["prompt"],
                "completion": done.text,
                **metadata,
                "finish_reason": done.finish_reason,
                "completion_tokens": len(done.tokens),
            }
            for row, done in zip(rows, completions, strict=True)
        ]

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int, dataloader_idx: int = 0):
        return self.generate_rows(batch)
