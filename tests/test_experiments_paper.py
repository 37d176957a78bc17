"""The CPU-sized twin of the paper's owl experiment (configs/paper/owl_numbers_tiny.yaml on top of
owl_numbers_qwen25_7b.yaml) end to end, in process, on the tiny fixture model: prompted owl teacher and control
teacher write numbers, SFT LoRA students learn them, both probes run on every model, and the report is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "paper"


@pytest.fixture(scope="module")
def twin(tmp_path_factory, tiny_lm_path):
    from subliminal_pl.experiments.command import parse_experiment, run_experiment

    out = tmp_path_factory.mktemp("twin") / "out"
    argv = [
        "--config",
        str(CONFIGS / "owl_numbers_qwen25_7b.yaml"),
        "--config",
        str(CONFIGS / "owl_numbers_tiny.yaml"),
    ]
    argv += ["--bases.init_args.model_name_or_path", str(tiny_lm_path), "--out_dir", str(out)]
    exp, _ = parse_experiment(argv)
    lines: list[str] = []
    run_experiment(exp, in_process=True, echo=lines.append)
    return out, lines


def test_the_twin_runs_every_stage_end_to_end(twin):
    out, lines = twin
    assert lines[-1] == f"report: {out / 'report.md'}"
    ran = {line.split(":")[0].split("] ")[1] for line in lines if line.startswith("[") and "done in" in line}
    assert ran == {
        "generate-owl", "data-owl", "generate-control", "data-control", "student-owl-s0", "student-owl-s1",
        "student-control-s0", "student-control-s1", "probes", "report",
    }  # fmt: skip


def test_the_twin_probes_every_model_with_both_probes_and_intervals(twin):
    out, _ = twin
    probes = json.loads(next(out.glob("stages/probes-*/probes.json")).read_text())
    models = probes["models"]
    # The base (also the control teacher), the prompted owl teacher, and every student.
    assert set(models) == {
        "tiny",
        "teacher-owl",
        "student-owl-s0",
        "student-owl-s1",
        "student-control-s0",
        "student-control-s1",
    }
    for name, entry in models.items():
        logp = next(o for o in entry["outputs"].values() if "logp_matrix" in o["details"])
        assert "owl" in [c.lower() for c in logp["details"]["candidates"]], name
        rates = next(o for o in entry["outputs"].values() if "targets" in o["details"])
        owl = rates["details"]["targets"]["owl"]
        assert 0 <= owl["low"] <= owl["rate"] <= owl["high"] <= 1, name
    # The teacher is probed behind its system prompt: its log-probabilities differ from the base's.
    base = next(o for o in models["tiny"]["outputs"].values() if "logp_matrix" in o["details"])
    teacher = next(o for o in models["teacher-owl"]["outputs"].values() if "logp_matrix" in o["details"])
    assert base["details"]["logp_matrix"] != teacher["details"]["logp_matrix"]


def test_the_twin_report_has_teacher_control_and_base(twin):
    out, _ = twin
    results = json.loads((out / "results.json").read_text())
    # The control teacher is the base itself (no system prompt), probed once under the base's name.
    rows = {row["model"]: row for row in results["models"]}
    assert set(rows) == {"tiny", "teacher-owl"}
    assert rows["teacher-owl"]["trait"] == "owl" and "teacher" in rows["teacher-owl"]["role"]
    for row in rows.values():
        owl = row["rates"]["animals_sampled"]["owl"]
        assert 0 <= owl["low"] <= owl["rate"] <= owl["high"] <= 1
    assert {(r["kind"], r["teacher"]) for r in results["student_rates"]} == {
        ("same", "owl"),
        ("same", "control"),
    }
    assert results["config"]["teachers"]["class_path"].endswith("SystemPromptTeachers")
    report = (out / "report.md").read_text()
    assert "| teacher-owl |" in report and "| tiny |" in report and "| control |" in report
