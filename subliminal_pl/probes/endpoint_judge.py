"""A judge behind an OpenAI-compatible `/chat/completions` endpoint: bounded retries, no redirects.

The HTTP side of the judges of `subliminal_pl.probes.judges`: requests in parallel threads, retries of timeouts,
rate limits and server errors within a total time budget, redirects refused (the API key is never sent to another
address), and `JudgeUnavailableError` when no usable chat-completion answer came back.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from subliminal_pl.probes.judges import (
    JudgeError,
    JudgeResult,
    JudgeUnavailableError,
    PromptedJudge,
    parse_judge_reply,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# HTTP statuses worth another try: timeouts, conflicts, rate limits and server-side failures.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Reasons of exclusions caused by the endpoint rather than by the judged answer.
REQUEST_FAILED = "judge request failed"
MALFORMED = "malformed endpoint response"


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would resend the Authorization header (the API key) to the new host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise JudgeError(
            f"judge endpoint {req.full_url} redirected (HTTP {code}) to {newurl}; redirects are refused so the API "
            "key is never sent to another address. Set base_url to the address that answers directly."
        )


class OpenAIJudge(PromptedJudge):
    """A judge behind an OpenAI-compatible `/chat/completions` endpoint, queried in parallel threads."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        criterion: str = "alignment",
        trait: str | None = None,
        system_prompt: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 16,
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
            api_key_env: environment variable holding the key (the key itself never goes into a config file);
                unset means no Authorization header (fine for local servers).
            criterion: "alignment", "coherence", "trait_reference", a template file or a template text.
            trait: what `trait_reference` asks about (e.g. "owls").
            system_prompt: optional system message before the judge instruction.
            temperature: sampling temperature of the judge (0: its most likely reply).
            max_tokens: reply length cap.
            timeout_s: seconds to wait for one HTTP response.
            max_retries: further tries after a timeout, connection error, HTTP 429 or 5xx.
            backoff_s: first wait between tries; doubles each time up to `max_backoff_s` (or Retry-After).
            max_backoff_s: longest wait between tries.
            max_total_s: longest time one request may take, every try and wait included; tries and waits are
                cut to fit, then the request fails.
            max_workers: requests in flight at once in `score_many`.
        """
        super().__init__(criterion, trait, system_prompt)
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_total_s = max_total_s
        self.max_workers = max_workers
        # "usable" is set once a reply parsed as a chat completion: later failures exclude one answer instead of
        # raising. Until then an endpoint that fails (5xx, non-JSON, unreachable) stops the run.
        self._state = {"usable": False}
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener(_RefuseRedirects)

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _wait(self, attempt: int, retry_after: str | None, deadline: float) -> None:
        delay = self.backoff_s * (2**attempt)
        if retry_after:
            try:
                delay = float(retry_after)
            except ValueError:
                pass
        time.sleep(max(0.0, min(delay, self.max_backoff_s, deadline - time.monotonic())))

    def _post(self, payload: dict[str, Any]) -> bytes:
        """POST with retries, within `max_total_s`; returns the body of the first 2xx response."""
        data = json.dumps(payload).encode("utf-8")
        last_error = ""
        start = time.monotonic()
        deadline = start + self.max_total_s
        tries = 0
        for attempt in range(self.max_retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            retry_after = None
            request = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            tries += 1
            try:
                with self._opener.open(request, timeout=min(self.timeout_s, remaining)) as response:
                    return response.read()
            except urllib.error.HTTPError as err:
                detail = err.read()[:300].decode("utf-8", "replace")
                if err.code in (401, 403):
                    raise JudgeError(
                        f"judge endpoint {self.url} rejected the credentials (HTTP {err.code}): set ${self.api_key_env}"
                        f" to a valid key. Server said: {detail}"
                    ) from err
                if err.code not in RETRY_STATUSES:
                    raise JudgeError(
                        f"judge endpoint {self.url} refused the request (HTTP {err.code}): {detail}"
                    ) from err
                last_error = f"HTTP {err.code}: {detail}"
                retry_after = err.headers.get("Retry-After") if err.headers else None
            except (OSError, http.client.HTTPException) as err:
                # Connection refused, DNS failure, timeout, dropped connection.
                last_error = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            if attempt < self.max_retries:
                self._wait(attempt, retry_after, deadline)
        raise JudgeUnavailableError(
            f"judge endpoint {self.url} gave no usable answer after {tries} tries in "
            f"{time.monotonic() - start:.1f} s (last: {last_error}; limits: max_retries={self.max_retries}, "
            f"max_total_s={self.max_total_s}). Check base_url / $OPENAI_BASE_URL, that the server is running, "
            "and the network."
        )

    def messages(self, question: str, answer: str) -> list[dict[str, str]]:
        """The chat sent to the endpoint: the optional system message, then the rendered judge prompt."""
        messages = [{"role": "user", "content": self.prompt(question, answer)}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def score(self, question: str, answer: str) -> JudgeResult:
        payload = {
            "model": self.model,
            "messages": self.messages(question, answer),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        try:
            body = self._post(payload)
        except JudgeUnavailableError as err:
            if not self._state["usable"]:
                raise
            return JudgeResult(reason=f"{REQUEST_FAILED}: {err}")
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raw = body[:300].decode("utf-8", "replace")
            if not self._state["usable"]:
                raise JudgeUnavailableError(
                    f"judge endpoint {self.url} did not answer with a chat completion; it sent {raw!r}. Check that "
                    "base_url points at an OpenAI-compatible API root (ending before /chat/completions)."
                ) from None
            return JudgeResult(reason=MALFORMED, raw=raw)
        with self._lock:
            self._state["usable"] = True
        if content is None:
            return JudgeResult(reason="empty judge reply")
        return parse_judge_reply(str(content))

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> list[JudgeResult]:
        if not pairs:
            return []
        # The first request alone: a misconfigured endpoint fails once, clearly, instead of once per thread.
        first = self.score(*pairs[0])
        with ThreadPoolExecutor(max_workers=max(1, self.max_workers)) as pool:
            rest = list(pool.map(lambda pair: self.score(*pair), pairs[1:]))
        results = [first, *rest]
        failed = [r for r in results if r.reason and r.reason.startswith((REQUEST_FAILED, MALFORMED))]
        if len(failed) == len(results):
            # Every answer of the batch would be NaN: stop instead of reporting metrics of nothing.
            raise JudgeUnavailableError(
                f"judge endpoint {self.url} gave no usable answer to any of {len(results)} requests (first: "
                f"{failed[0].reason[:300]})"
            )
        return results
