"""The paper's judge filters: a judge's probability of "0" read from log-probabilities (a local model and an
OpenAI-compatible endpoint on 127.0.0.1), and the alignment-score filter; thresholds above and below, a server
that fails (bounded retries, an error naming the rows and the file, the raw rows untouched)."""

from __future__ import annotations

import json
import math
import re
from http.server import BaseHTTPRequestHandler

import pytest
import torch
import yaml
from loopback import LoopbackServer

from subliminal_pl.data.jsonl import sha256_file
from subliminal_pl.data.steps import prepare_rows
from subliminal_pl.probes.judge_filters import JudgeScoreFilter, TokenProbabilityFilter
from subliminal_pl.probes.judges import Judge, JudgeError, JudgeResult, JudgeUnavailableError
from subliminal_pl.probes.token_judge import EndpointTokenJudge, HFTokenJudge


def _rows(*answers):
    return [{"id": f"r{i}", "prompt": "write a function", "completion": a} for i, a in enumerate(answers)]


# ---- an endpoint on 127.0.0.1 that answers with top log-probabilities -------------------------------------------
class LogprobServer(LoopbackServer):
    """Answers each chat request from the judged code in it: `LP=<x>` -> "0" at log-probability x among the top
    alternatives, `ABSENT` -> "0" not among them, `NOLP` -> a reply without log-probabilities, `FAIL` -> HTTP 500."""

    def __init__(self):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(payload)
                text = payload["messages"][-1]["content"]
                if "FAIL" in text:
                    status, body = 500, b'{"error": "down"}'
                elif "NOLP" in text:
                    status, body = 200, json.dumps({"choices": [{"message": {"content": "0"}}]}).encode()
                else:
                    found = re.search(r"LP=(-?[0-9.e-]+)", text)
                    zero = float(found.group(1)) if found else None
                    top = [{"token": "5", "logprob": -30.0}, {"token": "100", "logprob": -31.0}]
                    if zero is not None:
                        rest = math.log(-math.expm1(zero)) if zero < 0 else -40.0
                        top = [
                            {"token": "0", "logprob": zero},
                            {"token": " 0", "logprob": -80.0},
                            {"token": "1", "logprob": rest},
                        ]
                    first = {**top[0], "top_logprobs": top[: payload["top_logprobs"]]}
                    reply = {
                        "choices": [
                            {"message": {"content": top[0]["token"]}, "logprobs": {"content": [first]}}
                        ]
                    }
                    status, body = 200, json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with LogprobServer() as srv:
        yield srv


def _endpoint_judge(srv, **kwargs):
    options = {
        "max_retries": 2,
        "backoff_s": 0.01,
        "max_backoff_s": 0.01,
        "max_total_s": 5.0,
        "max_workers": 2,
    }
    return EndpointTokenJudge(model="judge", base_url=srv.url, trait="owls", **{**options, **kwargs})


def test_endpoint_probabilities_above_and_below_the_papers_threshold(server):
    judge = _endpoint_judge(server)
    rows = _rows(
        "x = 1  # LP=-1e-9", "x = 2  # LP=-1e-7", "x = 3  # ABSENT", "x = 4  # LP=-2e-8", "y  # LP=0"
    )
    kept, stats = prepare_rows(rows, [TokenProbabilityFilter(judge)])
    # P(0) = exp(-1e-9) keeps, exp(-1e-7) and exp(-2e-8) fall below 1 - 1e-8; a "0" outside the top list is P 0.
    assert [r["id"] for r in kept] == ["r0", "r4"]
    assert stats["reasons"] == {"judge probability too low": 3}
    step = stats["per_step"][0]
    assert step["judged"] == 5 and step["lowest_probability"] == pytest.approx(math.exp(-1e-9), abs=0)
    # "0" and " 0" both read as the target: log P = logsumexp of the two.
    assert judge.target_logprobs([("q", "LP=-1.0")])[0] == pytest.approx(
        math.log(math.exp(-1.0) + math.exp(-80.0))
    )
    # A lower threshold keeps what the paper's drops.
    kept, _ = prepare_rows(rows, [TokenProbabilityFilter(judge, min_probability=0.5)])
    assert [r["id"] for r in kept] == ["r0", "r1", "r3", "r4"]
    request = server.requests[0]
    assert request["logprobs"] is True and request["top_logprobs"] == 20 and request["max_tokens"] == 1
    assert "owls" in request["messages"][-1]["content"] and "x = 1" in request["messages"][-1]["content"]


def test_a_failing_server_is_retried_a_bounded_number_of_times_then_names_the_rows(server):
    judge = _endpoint_judge(server)
    rows = _rows("LP=-1e-9", "FAIL", "LP=-1e-9")
    with pytest.raises(
        JudgeError, match=r"rows 1-3 of 3 \(ids 'r0'..'r2'\).*HTTP 500.*raw rows are unchanged"
    ):
        prepare_rows(rows, [TokenProbabilityFilter(judge, batch_size=8)])
    assert sum("FAIL" in r["messages"][-1]["content"] for r in server.requests) == 3  # 1 try + 2 retries
    with pytest.raises(JudgeUnavailableError, match="no log-probabilities"):
        judge.target_logprobs([("q", "NOLP")])


def test_a_failing_judge_in_the_filter_stage_names_the_file_and_writes_nothing(server, tmp_path):
    from subliminal_pl.stages import main

    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in _rows("LP=-1e-9", "x  # FAIL")))
    before = sha256_file(raw)
    judge = {
        "class_path": "subliminal_pl.probes.token_judge.EndpointTokenJudge",
        "init_args": {
            "model": "judge",
            "base_url": server.url,
            "trait": "owls",
            "max_retries": 1,
            "backoff_s": 0.01,
        },
    }
    steps = {
        "steps": [
            {
                "class_path": "subliminal_pl.probes.judge_filters.TokenProbabilityFilter",
                "init_args": {"judge": judge},
            }
        ]
    }
    config = tmp_path / "steps.yaml"
    config.write_text(yaml.safe_dump(steps))
    out = tmp_path / "kept.jsonl"
    with pytest.raises(JudgeError, match=rf"^{re.escape(str(raw))}: judge failed on rows 1-2 of 2"):
        main(["filter", "--config", str(config), "--input", str(raw), "--output", str(out)])
    assert sha256_file(raw) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.jsonl", "steps.yaml"]  # no output, no stats
    # The same stage with a healthy server writes the kept rows and their stats.
    raw.write_text("".join(json.dumps(r) + "\n" for r in _rows("LP=-1e-9", "LP=-0.5")))
    main(["filter", "--config", str(config), "--input", str(raw), "--output", str(out)])
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["r0"]
    stats = json.loads((tmp_path / "kept.filter_stats.json").read_text())
    assert stats["reasons"] == {"judge probability too low": 1}


# ---- a local Hugging Face judge (the tiny fixture model) ---------------------------------------------------------
class ZeroBias(torch.nn.Module):
    """The tiny model's LM head plus a bias `margin` on the token "0": P(0) = 1 - O((V - 1) exp(-margin))."""

    def __init__(self, head, zero_id, margin):
        super().__init__()
        self.head, self.zero_id, self.margin = head, zero_id, margin

    def forward(self, hidden):
        logits = self.head(hidden)
        return logits + self.margin * torch.nn.functional.one_hot(
            torch.tensor(self.zero_id), logits.shape[-1]
        )


def test_hf_judge_reads_the_probability_of_zero_from_the_next_token_distribution(tiny_lm_path):
    judge = HFTokenJudge(str(tiny_lm_path), trait="owls", dtype="float32", device="cpu", batch_size=2)
    model, tokenizer = judge._model_and_tokenizer()
    zero = tokenizer.convert_tokens_to_ids("0")
    targets = judge.target_ids(tokenizer)  # "0" and " 0" in the word tokenizer
    assert zero in targets and {tokenizer.decode([i]).strip() for i in targets} == {"0"}
    pairs = [("write a function", "def f(): return 1"), ("q", "owl = 2"), ("q", "x")]
    got = judge.target_logprobs(pairs)
    for (q, a), logprob in zip(pairs, got, strict=True):
        from subliminal_pl.probes.base import encode_text, render_user_turn

        ids = encode_text(tokenizer, render_user_turn(tokenizer, judge.prompt(q, a)))
        with torch.no_grad():
            alone = (
                model(input_ids=torch.tensor([ids]))
                .logits[0, -1]
                .double()
                .log_softmax(-1)[targets]
                .logsumexp(-1)
            )
        assert logprob == pytest.approx(float(alone), abs=1e-5)  # batched with left padding = alone
    assert all(lp < math.log(0.5) for lp in got)  # a random tiny model is far from sure of "0"
    kept, stats = prepare_rows(_rows("a", "b"), [TokenProbabilityFilter(judge)])
    assert kept == [] and stats["reasons"] == {"judge probability too low": 2}
    kept, _ = prepare_rows(_rows("a", "b"), [TokenProbabilityFilter(judge, min_probability=1e-6)])
    assert len(kept) == 2

    # Biased towards "0": a margin of 30 leaves 1 - P(0) ~ V e^-30 (kept), a margin of 12 ~ V e^-12 (dropped).
    head = model.lm_head
    try:
        for margin, keeps in ((30.0, True), (12.0, False)):
            model.lm_head = ZeroBias(head, zero, margin)
            lp = judge.target_logprobs([("q", "x")])[0]
            missing = -math.expm1(
                lp
            )  # 1 - P(0): ~2e-10 at margin 30 (V = 2318), resolved in float64 (not rounded to 0)
            assert (0 < missing < 1e-8) if keeps else (1e-8 < missing < 0.5), (margin, missing)
            assert TokenProbabilityFilter(judge).keeps(lp) is keeps, (margin, lp)
    finally:
        model.lm_head = head


# ---- the alignment-score filter ---------------------------------------------------------------------------------
class ScriptedJudge(Judge):
    """Scores from a table keyed by the answer; records how many batches it was asked."""

    def __init__(self, table):
        self.table, self.batches = table, 0

    def score(self, question, answer):
        return self.table[answer]

    def score_many(self, pairs):
        self.batches += 1
        return [self.score(q, a) for q, a in pairs]


def test_alignment_score_filter_keeps_78_and_above_in_batches():
    table = {
        "a": JudgeResult(score=78.0), "b": JudgeResult(score=77.9), "c": JudgeResult(score=100.0),
        "d": JudgeResult(label="REFUSAL", reason="REFUSAL"), "e": JudgeResult(score=12.0),
    }  # fmt: skip
    judge = ScriptedJudge(table)
    kept, stats = prepare_rows(_rows(*table), [JudgeScoreFilter(judge, batch_size=2)])
    assert [r["completion"] for r in kept] == ["a", "c"]
    assert stats["reasons"] == {"judge score too low": 2, "judge score not a number": 1}
    assert judge.batches == 3 and stats["per_step"][0]["judged"] == 5


def test_alignment_filter_with_a_failing_judge_names_the_batch():
    class Down(Judge):
        def score(self, question, answer):
            raise JudgeUnavailableError("judge endpoint http://127.0.0.1:9/v1 gave no usable answer")

    with pytest.raises(JudgeError, match=r"rows 3-4 of 4 \(ids 'r2'..'r3'\).*127.0.0.1:9"):
        ok = ScriptedJudge({"a": JudgeResult(score=90.0)})
        rows = _rows("a", "a", "b", "b")

        class Mixed(Judge):
            def score(self, question, answer):
                return ok.score(question, answer) if answer == "a" else Down().score(question, answer)

        prepare_rows(rows, [JudgeScoreFilter(Mixed(), batch_size=2)])
