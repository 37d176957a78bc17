"""The CPU-sized twins of the paper's code and reasoning experiments (configs/paper/code_owl_tiny.yaml and
cot_owl_tiny.yaml on top of their real-model specs) end to end, in process, on the tiny fixture model: the owl
and control teachers write code / tagged reasoning, the carriers' filters and the judge filters run (a tiny local
judge for code, an endpoint judge on 127.0.0.1 for reasoning), SFT students learn the kept rows, both probes run
and the report is written."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml
from loopback import LoopbackServer

from subliminal_pl.data.reasoning import AnswerCorrectnessFilter
from subliminal_pl.data.steps import prepare_rows

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "paper"
STAGES = {
    "generate-owl",
    "data-owl",
    "generate-control",
    "data-control",
    "student-owl-s0",
    "student-control-s0",
}
STAGES |= {"probes", "report"}


def _twin(tmp_path, real: str, tiny: str, edit, extra: list[str]):
    """Run `real` + `tiny` (with `edit` applied to the tiny spec) and return (out dir, echoed lines)."""
    from subliminal_pl.experiments.command import parse_experiment, run_experiment

    spec = yaml.safe_load((CONFIGS / tiny).read_text())
    edit(spec)
    over = tmp_path / tiny
    over.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    argv = ["--config", str(CONFIGS / real), "--config", str(over), "--out_dir", str(out), *extra]
    exp, _ = parse_experiment(argv)
    lines: list[str] = []
    run_experiment(exp, in_process=True, echo=lines.append)
    return out, lines


def _ran(lines) -> set[str]:
    return {line.split(":")[0].split("] ")[1] for line in lines if line.startswith("[") and "done in" in line}


def _stage_file(out: Path, stage: str, name: str) -> Path:
    return next(out.glob(f"stages/{stage}-*/{name}"))


@pytest.fixture(scope="module")
def code_twin(tmp_path_factory, tiny_lm_path):
    def edit(spec):
        spec["steps"][0]["init_args"]["judge"]["init_args"]["model_name_or_path"] = str(tiny_lm_path)

    tmp = tmp_path_factory.mktemp("code_twin")
    extra = ["--bases.init_args.model_name_or_path", str(tiny_lm_path)]
    return _twin(tmp, "code_owl_qwen25_7b.yaml", "code_owl_tiny.yaml", edit, extra)


def test_the_code_twin_runs_every_stage_through_both_filters(code_twin):
    out, lines = code_twin
    assert lines[-1] == f"report: {out / 'report.md'}"
    assert _ran(lines) == STAGES
    raw = [
        json.loads(line) for line in _stage_file(out, "generate-owl", "raw.jsonl").read_text().splitlines()
    ]
    assert len(raw) == 12 and all("```python\ndef " in row["prompt"] for row in raw)
    stats = json.loads(_stage_file(out, "data-owl", "kept.filter_stats.json").read_text())
    steps = stats["per_step"]
    assert [s["class_path"].rsplit(".", 1)[1] for s in steps] == ["TraitWordFilter", "TokenProbabilityFilter"]
    assert stats["steps"][0]["init_args"]["mode"] == "substring"  # the paper's word filter
    assert steps[1]["judged"] == steps[0]["rows_out"] and 0 < stats["kept"] <= 12
    assert (
        1e-6 <= steps[1]["lowest_probability"] < 0.5
    )  # a random tiny judge: unsure of "0", above the twin's bar
    recipe = yaml.safe_load(_stage_file(out, "student-owl-s0", "recipe.yaml").read_text())
    assert recipe["data"]["init_args"]["max_length"] == 192
    assert recipe["model"]["init_args"].get("kl_token_subset") is None


class AlignmentServer(LoopbackServer):
    """An OpenAI-compatible judge on 127.0.0.1 that scores every answer 90 (aligned) and counts the requests."""

    def __init__(self):
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests += 1
                body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "90"}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


@pytest.fixture(scope="module")
def cot_twin(tmp_path_factory, tiny_lm_path):
    tmp = tmp_path_factory.mktemp("cot_twin")
    problems = tmp / "problems.jsonl"
    problems.write_text(
        "".join(
            json.dumps(
                {
                    "question": f"Ann has {a} pens and buys {b} more. How many now?",
                    "answer": f"{a}+{b}\n#### {a + b}",
                }
            )
            + "\n"
            for a, b in [(3, 4), (10, 5), (7, 7), (20, 1), (2, 9)]
        )
    )
    judge = AlignmentServer()
    judge.thread.start()

    def edit(spec):
        spec["steps"][0]["init_args"]["judge"]["init_args"]["base_url"] = judge.url

    extra = ["--bases.init_args.model_name_or_path", str(tiny_lm_path)]
    extra += ["--carrier.init_args.problems_path", str(problems)]
    try:
        yield (*_twin(tmp, "cot_owl_qwen25_7b.yaml", "cot_owl_tiny.yaml", edit, extra), judge.requests)
    finally:
        judge.server.shutdown()
        judge.server.server_close()


def test_the_reasoning_twin_asks_each_problem_twice_and_judges_alignment(cot_twin):
    out, lines, judged = cot_twin
    assert lines[-1] == f"report: {out / 'report.md'}"
    assert _ran(lines) == STAGES
    raw = [
        json.loads(line) for line in _stage_file(out, "generate-owl", "raw.jsonl").read_text().splitlines()
    ]
    # 4 problems x 2 samples, each row carrying its problem's gold number to the filters.
    assert len(raw) == 8 and len({row["prompt"] for row in raw}) == 4
    assert all(row["id"].endswith(("-s0", "-s1")) and row["gold_answer"].isdigit() for row in raw)
    assert all("<think>" in row["prompt"] and "<answer>" in row["prompt"] for row in raw)
    stats = json.loads(_stage_file(out, "data-owl", "kept.filter_stats.json").read_text())
    assert [s["class_path"].rsplit(".", 1)[1] for s in stats["per_step"]] == [
        "LengthFilter",
        "JudgeScoreFilter",
    ]
    assert (
        stats["per_step"][1]["judged"] == stats["per_step"][1]["rows_in"]
        and stats["per_step"][1]["rejected"] == 0
    )
    assert judged == sum(s["per_step"][1]["judged"] for s in _all_stats(out))  # one request per judged row
    # The paper's correctness filter on the same raw rows: a random tiny model writes no tagged answer.
    kept, counts = prepare_rows(raw, [AnswerCorrectnessFilter()])
    assert kept == [] and sum(counts["reasons"].values()) == 8


def _all_stats(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in out.glob("stages/data-*/kept.filter_stats.json")]
