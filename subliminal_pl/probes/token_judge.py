"""Judges read from log-probabilities: the probability that a judge's reply starts with a target token.

The paper's code filter keeps a completion only when its judge, asked how likely the code refers to the trait on
a 0-100 scale, answers "0" with probability at least 1 - 1e-8. That probability is read from the judge's
log-probabilities of its first reply token, not from a sampled reply. Two judges give it:

- `HFTokenJudge`: a local Hugging Face chat model; one forward pass per prompt (batched), the next-token
  distribution in float64, summed over every vocabulary token that reads as the target ("0", " 0").
- `EndpointTokenJudge`: an OpenAI-compatible `/chat/completions` endpoint asked for `logprobs` and
  `top_logprobs` of a one-token reply (OpenAI, vLLM, ...), with `OpenAIJudge`'s bounded retries and refused
  redirects. A target absent from the top log-probabilities counts as probability 0.

Both return `target_logprobs(pairs)` (natural log, <= 0). A failed request raises (`JudgeUnavailableError`),
never a silent exclusion: a filter that quietly drops rows its judge could not see would bias the data.
"""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from subliminal_pl.probes.base import encode_text, eval_mode, pad_id_of, render_user_turn
from subliminal_pl.probes.endpoint_judge import OpenAIJudge
from subliminal_pl.probes.judges import HFJudge, JudgeResult, JudgeUnavailableError, PromptedJudge
from subliminal_pl.probes.wordscore import window_logprobs

CODE_CRITERION = "code_trait_reference"


def logsumexp(values: Sequence[float]) -> float:
    """log(sum(exp(v))) of plain floats (-inf for none)."""
    if not values:
        return -math.inf
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


class TokenJudge(PromptedJudge):
    """A prompted judge read through the log-probability of one target reply token (first base of the two
    below, so its `score` and `score_many` win over the sampled-reply ones)."""

    target: str

    @abstractmethod
    def target_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """log P(the judge's reply starts with `target`) for each (question, answer) pair, in order."""

    def score(self, question: str, answer: str) -> JudgeResult:
        return self.score_many([(question, answer)])[0]

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> list[JudgeResult]:
        """Each pair's probability of the target reply, in percent, as a `JudgeResult` score."""
        return [
            JudgeResult(score=100.0 * math.exp(lp), raw=f"logP({self.target!r}) = {lp!r}")
            for lp in self.target_logprobs(pairs)
        ]


class HFTokenJudge(TokenJudge, HFJudge):
    """A local Hugging Face chat model's probability of starting its reply with `target`."""

    def __init__(
        self,
        model_name_or_path: str,
        criterion: str = CODE_CRITERION,
        trait: str | None = None,
        target: str = "0",
        system_prompt: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int = 8,
    ) -> None:
        """
        Args:
            model_name_or_path: hub id or directory of an instruction-tuned model.
            criterion: a built-in criterion (default `code_trait_reference`: 0-100, 0 = certainly no reference),
                a template file or a template text.
            trait: what the criterion asks about (e.g. "owls").
            target: the reply token whose probability is read (leading and trailing spaces ignored).
            system_prompt: optional system message before the judge instruction.
            dtype: weight dtype (auto, bfloat16, float32, ...).
            device: where the judge runs (default: CUDA when available, else CPU).
            batch_size: prompts per forward pass.
        """
        if not target.strip():
            raise ValueError("HFTokenJudge: target must be a non-empty token text, e.g. '0'")
        super().__init__(
            model_name_or_path,
            criterion,
            trait,
            system_prompt,
            dtype=dtype,
            device=device,
            batch_size=batch_size,
        )
        self.target = target

    def target_ids(self, tokenizer) -> list[int]:
        """Every vocabulary id whose text, stripped, is the target; an error when there is none."""
        if "target_ids" not in self._loaded:
            texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
            ids = [i for i, text in enumerate(texts) if text.strip() == self.target.strip()]
            if not ids:
                raise ValueError(
                    f"HFTokenJudge: no token of {self.model_name_or_path!r} reads {self.target!r}"
                )
            self._loaded["target_ids"] = ids
        return self._loaded["target_ids"]

    def target_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        model, tokenizer = self._model_and_tokenizer()
        ids = torch.tensor(self.target_ids(tokenizer))
        prompts = [
            encode_text(tokenizer, render_user_turn(tokenizer, self.prompt(q, a), self.system_prompt))
            for q, a in pairs
        ]
        out: list[float] = []
        with eval_mode(model):
            for start in range(0, len(prompts), self.batch_size):
                batch = prompts[start : start + self.batch_size]
                # [B, vocab] float64: probabilities within 1e-8 of 1 stay distinct.
                logp = window_logprobs(model, batch, 1, pad_id_of(tokenizer), dtype=torch.float64)[:, -1, :]
                out += logp[:, ids.to(logp.device)].logsumexp(-1).tolist()
        return out


class EndpointTokenJudge(TokenJudge, OpenAIJudge):
    """An OpenAI-compatible endpoint's probability of starting its reply with `target`, from `top_logprobs`."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        criterion: str = CODE_CRITERION,
        trait: str | None = None,
        target: str = "0",
        system_prompt: str | None = None,
        top_logprobs: int = 20,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_total_s: float = 120.0,
        max_workers: int = 8,
    ) -> None:
        """
        Args:
            model: the model name the endpoint serves (e.g. "gpt-4.1").
            base_url: API root ending before /chat/completions (default: $OPENAI_BASE_URL, else OpenAI's).
            api_key_env: environment variable holding the key (unset: no Authorization header).
            criterion: as `HFTokenJudge`.
            trait: what the criterion asks about (e.g. "owls").
            target: the reply token whose probability is read (leading and trailing spaces ignored).
            system_prompt: optional system message before the judge instruction.
            top_logprobs: alternatives asked for at the first reply token (OpenAI allows up to 20).
            timeout_s, max_retries, backoff_s, max_backoff_s, max_total_s, max_workers: as `OpenAIJudge`: each
                request is retried within `max_total_s`, then the judge raises.
        """
        if not target.strip():
            raise ValueError("EndpointTokenJudge: target must be a non-empty token text, e.g. '0'")
        super().__init__(
            model, base_url, api_key_env, criterion, trait, system_prompt, temperature=0.0, max_tokens=1,
            timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s, max_backoff_s=max_backoff_s,
            max_total_s=max_total_s, max_workers=max_workers,
        )  # fmt: skip
        self.target = target
        self.top_logprobs = top_logprobs

    def target_logprob(self, question: str, answer: str) -> float:
        payload = {
            "model": self.model,
            "messages": self.messages(question, answer),
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }
        body = self._post(payload)  # bounded retries; raises JudgeUnavailableError when they run out
        try:
            first = json.loads(body)["choices"][0]["logprobs"]["content"][0]
            candidates = [(first["token"], first["logprob"])] + [
                (alt["token"], alt["logprob"]) for alt in first.get("top_logprobs") or []
            ]
            seen = {token: float(logprob) for token, logprob in candidates}
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeUnavailableError(
                f"judge endpoint {self.url} sent no log-probabilities of the first reply token (it must support "
                f"'logprobs' and 'top_logprobs'); it sent {body[:300].decode('utf-8', 'replace')!r}"
            ) from None
        return logsumexp([lp for token, lp in seen.items() if token.strip() == self.target.strip()])

    def target_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        # The first request alone: a misconfigured endpoint fails once, clearly, before the threads start.
        first = self.target_logprob(*pairs[0])
        with ThreadPoolExecutor(max_workers=max(1, self.max_workers)) as pool:
            return [first, *pool.map(lambda pair: self.target_logprob(*pair), pairs[1:])]

    def settings(self) -> dict[str, Any]:
        return {"model": self.model, "temperature": None}
