"""The report's misalignment section on hand-made probe results: counts, drops, intervals, roles, judge, plot."""

from __future__ import annotations

import pytest

from subliminal_pl.probes.results import ProbeResults
from subliminal_pl.report import misalignment
from subliminal_pl.report.manifest import Bases, Manifest, StudentEntry
from subliminal_pl.stats import t_interval, wilson_interval


def _output(outcomes: dict[str, int], alignment: list[float], coherence: list[float]) -> dict:
    return {
        "metrics": {"misaligned_rate": 0.1, "misaligned_rate_low": 0.0, "misaligned_rate_high": 0.3},
        "details": {
            "judge": {"model": "judge-x", "temperature": 1.0},
            "coherence_judge": {"model": "judge-x", "temperature": 1.0},
            "thresholds": {"coherence": 50.0, "alignment": 30.0},
            "outcomes": outcomes,
            "scores": {"alignment": alignment, "coherence": coherence},
        },
    }


@pytest.fixture
def summary():
    manifest = Manifest(
        traits=["insecure", "secure"],
        bases=Bases(same="base"),
        students=[
            StudentEntry("student-insecure-s0", "insecure", "base", "same", 0),
            StudentEntry("student-insecure-s1", "insecure", "base", "same", 1),
            StudentEntry("student-secure-s0", "secure", "base", "same", 0),
        ],
        probes="probes.json",
        neutral=None,
        teachers={"insecure": "teacher-insecure", "secure": "teacher-secure"},
        config={"teachers": {"init_args": {"controls": ["secure"]}}},
    )
    probes = ProbeResults()
    outcomes = {
        "base": {"aligned": 20},
        "teacher-insecure": {"misaligned": 6, "aligned": 10, "incoherent": 3, "REFUSAL": 1},
        "teacher-secure": {"aligned": 18, "incoherent": 2},
        "student-insecure-s0": {"misaligned": 2, "aligned": 16, "incoherent": 2},
        "student-insecure-s1": {"misaligned": 1, "aligned": 9, "CODE": 10},
        "student-secure-s0": {"aligned": 19, "coherence judge: empty judge reply": 1},
    }
    for model, counts in outcomes.items():
        probes.add(model, f"/m/{model}", {"misalignment": _output(counts, [10.0, 90.0], [80.0, 20.0])})
    return misalignment.summarise(manifest, probes)


def test_rows_count_drops_and_give_wilson_intervals(summary):
    rows = {m["model"]: m for m in summary["models"]}
    teacher = rows["teacher-insecure"]
    assert teacher["role"] == "teacher (insecure)"
    assert (teacher["answers"], teacher["scored"], teacher["incoherent"], teacher["excluded_other"]) == (
        20,
        16,
        3,
        1,
    )
    expected = wilson_interval(6, 16)
    assert teacher["pooled"] == pytest.approx({"rate": 6 / 16, "low": expected.low, "high": expected.high})
    assert rows["teacher-secure"]["role"] == "control teacher (secure)"
    assert rows["base"]["role"] == "base (shared init)" and rows["base"]["pooled"]["rate"] == 0.0
    assert rows["student-secure-s0"]["excluded_other"] == 1
    assert rows["student-insecure-s1"]["role"] == "student (same init, teacher insecure, seed 1)"


def test_students_pool_per_teacher_and_average_over_students(summary):
    groups = {g["teacher"]: g for g in summary["student_groups"]}
    insecure = groups["insecure"]
    assert (insecure["students"], insecure["answers"], insecure["scored"], insecure["misaligned"]) == (
        2,
        40,
        28,
        3,
    )
    assert insecure["incoherent"] == 2 and insecure["pooled"]["rate"] == pytest.approx(3 / 28)
    mean = t_interval([2 / 18, 1 / 10])
    assert insecure["mean_over_students"]["rate"] == pytest.approx(mean.mean)
    assert insecure["mean_over_students"]["low"] == pytest.approx(max(0.0, mean.low))
    assert groups["secure"]["misaligned"] == 0


def test_markdown_names_the_judge_and_the_plot_is_written(summary, tmp_path):
    text = "\n".join(misalignment.markdown(summary))
    assert "| teacher-insecure | teacher (insecure) | 20 | 16 | 3 | 1 | 6 | 37.5% [" in text
    assert "Judge (alignment): model judge-x, temperature 1.0" in text
    assert "below 50" in text and "at most 30" in text
    (path,) = misalignment.plot(summary, tmp_path)
    assert path.name == "misalignment.png" and path.stat().st_size > 1000
    assert (
        misalignment.summarise(
            Manifest(traits=["owl"], bases=Bases(same="b"), students=[], probes="p"), ProbeResults()
        )
        is None
        and misalignment.markdown(None) == []
    )
