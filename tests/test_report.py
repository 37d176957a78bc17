"""The experiment report: the corrected contrast, verdicts (Holm, cross-init control), drift, the models table,
and whole reports from synthetic probe results in both file formats."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from subliminal_pl.probes.results import ProbeResults
from subliminal_pl.report import write_report, write_sweep_summary
from subliminal_pl.report.analysis import specific_dlogp, verdicts

WORDS = ["owl", "cat", "dog", "fox", "bee", "elk", "yak", "emu"]
N_Q = 5


def test_specific_dlogp_baseline_leaves_out_the_trait_words():
    reference = [[-3.0, -3.0, -3.0, -3.0], [-2.0, -4.0, -3.0, -3.0]]
    shifted = [[-2.0, -3.5, -3.5, -2.5], [-1.0, -4.5, -3.5, -2.5]]  # +1, -0.5, -0.5, +0.5
    words = ["a", "b", "c", "d"]
    old = specific_dlogp(shifted, reference, words)  # the first version: mean of all other words
    assert old["a"] == pytest.approx(1.0 - (-0.5 - 0.5 + 0.5) / 3)
    new = specific_dlogp(shifted, reference, words, exclude={"a", "B"})  # traits a and b: baseline c, d
    assert new["a"] == pytest.approx(1.0 - 0.0) and new["b"] == pytest.approx(-0.5 - 0.0)
    assert new["c"] == pytest.approx(-0.5 - 0.5) and new["d"] == pytest.approx(0.5 + 0.5)
    assert specific_dlogp(reference, reference, words, {"a"}) == {w: 0.0 for w in words}
    with pytest.raises(ValueError, match="4 candidates"):
        specific_dlogp(shifted, reference[:1], words)


def _tests(p, diff, p_holm=None, min_p=0.001):
    return {
        "owl": {"p_value": p, "p_holm": p if p_holm is None else p_holm, "difference": diff, "min_p": min_p}
    }


def test_verdicts_use_holm_and_a_reachable_flat_cross_init_control():
    analysis = {
        "kinds": {"same": {"tests": _tests(0.001, 0.3)}, "cross": {"tests": _tests(0.5, 0.01, min_p=0.01)}}
    }
    assert verdicts(analysis, ["owl"])["owl"] == {
        "transferred": True,
        "cross_init_flat": True,
        "verdict": "transferred",
    }
    analysis["kinds"]["cross"]["tests"] = _tests(0.03, 0.2, min_p=0.01)  # a control is judged at 0.05
    assert verdicts(analysis, ["owl"])["owl"]["verdict"].startswith("moved in same-init AND cross-init")
    analysis["kinds"]["cross"]["tests"] = _tests(0.07, 0.2, min_p=0.07)  # a control that cannot show anything
    assert verdicts(analysis, ["owl"])["owl"]["verdict"] == "transferred (no usable cross-init control)"
    analysis["kinds"]["same"]["tests"] = _tests(0.004, 0.3, p_holm=0.012)  # raw p passes, Holm does not
    assert not verdicts(analysis, ["owl"])["owl"]["transferred"]
    analysis["kinds"]["same"]["tests"] = _tests(0.001, -0.3)  # wrong direction
    assert verdicts(analysis, ["owl"])["owl"]["verdict"] == "did not transfer"
    analysis["kinds"]["same"]["tests"] = _tests(0.2, 0.3, min_p=0.02)
    assert "cannot reach the Holm threshold" in verdicts(analysis, ["owl"])["owl"]["verdict"]


# ---- whole reports from synthetic probe results -----------------------------------------------------------------
def _logp(rng, shift: dict[str, float] | None = None, base=None) -> list[list[float]]:
    """[question][word] log-probabilities: the base's plus noise and a per-word shift."""
    base = np.full((N_Q, len(WORDS)), -3.0) if base is None else np.asarray(base)
    out = base + rng.normal(0, 0.01, base.shape)
    for word, value in (shift or {}).items():
        out[:, WORDS.index(word)] += value
    return out.tolist()


def _toy_experiment(tmp_path, cross_shift=0.0, drift_word=None, first_format=True):
    """traits owl and cat, a neutral teacher; 4 same-init seeds, 3 cross-init seeds; owl transfers, cat not."""
    rng = np.random.default_rng(0)
    models = {"base-s0": _logp(rng), "base-s1": _logp(rng)}
    for t in ("owl", "cat", "neutral"):
        models[f"teacher-{t}"] = _logp(rng, {t: 1.5} if t != "neutral" else {})
    students = []
    for kind, base, seeds in (("same", "base-s0", range(4)), ("cross", "base-s1", range(3))):
        for t in ("owl", "cat", "neutral"):
            for seed in seeds:
                name = f"student-{t}-s{seed}" if kind == "same" else f"cross-{t}-b1-s{seed}"
                shift = {"owl": 0.5 if kind == "same" else cross_shift} if t == "owl" else {}
                if drift_word:
                    shift[drift_word] = shift.get(drift_word, 0.0) + 0.3
                models[name] = _logp(rng, shift, models[base])
                students.append({"name": name, "teacher": t, "base": base, "kind": kind, "seed": seed})
    if first_format:
        probes = {
            "questions": [f"q{i}" for i in range(N_Q)],
            "candidates": WORDS,
            "models": {
                n: {"path": n, "logp_plain": m}
                | ({"format_pass_rate": 0.8} if "-s" not in n or n.startswith("base") else {})
                for n, m in models.items()
            },
        }
        (tmp_path / "probes.json").write_text(json.dumps(probes))
    manifest = {
        "title": "Synthetic",
        "traits": ["owl", "cat"],
        "neutral": "neutral",
        "bases": {"same": "base-s0", "cross": ["base-s1"]},
        "students": students,
        "probes": "probes.json",  # relative: resolved against the manifest's folder
        "filter_stats": {},
        "mlp_results": None,
        "config": {"seed": 1},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path / "manifest.json", models


def test_report_on_a_first_format_run(tmp_path):
    manifest, _ = _toy_experiment(tmp_path)
    out = tmp_path / "report"
    report = write_report(manifest, out).read_text()
    for name in ("results.json", "matrix.png", "traits.png", "drift.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    same = results["analysis"]["kinds"]["same"]
    owl, cat = same["tests"]["owl"], same["tests"]["cat"]
    assert owl["relabellings"] == math.comb(12, 4) and owl["min_p"] == pytest.approx(1 / 495)
    assert owl["p_value"] == pytest.approx(1 / 495) and owl["p_holm"] == pytest.approx(2 / 495)
    assert owl["effect"]["low"] > 0.4 and owl["vs_neutral"]["p_value"] == pytest.approx(1 / 70)
    assert cat["p_value"] > 0.01 and abs(cat["difference"]) < 0.05
    assert same["design"]["holm_reachable"] and results["analysis"]["kinds"]["cross"]["tests"]["owl"][
        "min_p"
    ] == pytest.approx(1 / 84)
    verdict = results["analysis"]["verdicts"]
    assert (verdict["owl"]["verdict"], verdict["cat"]["verdict"]) == ("transferred", "did not transfer")
    assert results["analysis"]["baseline_words"] == WORDS[2:]
    assert not results["analysis"]["drift"]["owl"]["drift"]
    assert "1 of 2 traits transferred" in report and "## Column drift" in report and "## Models" in report
    assert report.index("## Verdict") < report.index("## How to read this")
    rows = {r["model"]: r for r in results["models"]}
    assert rows["teacher-owl"]["specific_dlogp_own"] == pytest.approx(1.5, abs=0.05)
    assert (
        rows["base-s1"]["role"] == "cross-init base (control)"
        and rows["teacher-neutral"]["format_pass_rate"] == 0.8
    )

    summary = write_sweep_summary({"a": out / "results.json"}, tmp_path).read_text()
    assert (
        "| a | owl |" in summary
        and json.loads((tmp_path / "sweep.json").read_text())["a"]["owl"]["transferred"]
    )


def test_a_trait_that_moves_in_cross_init_students_is_not_transfer(tmp_path):
    manifest, _ = _toy_experiment(tmp_path, cross_shift=0.5)
    results = json.loads((write_report(manifest, tmp_path / "r").parent / "results.json").read_text())
    assert results["analysis"]["verdicts"]["owl"]["cross_init_flat"] is False
    assert results["analysis"]["verdicts"]["owl"]["verdict"].startswith("moved in same-init AND cross-init")


def test_column_drift_is_flagged_and_does_not_pass_the_test(tmp_path):
    manifest, _ = _toy_experiment(tmp_path, drift_word="cat")
    report = write_report(manifest, tmp_path / "r").read_text()
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    drift = results["analysis"]["drift"]
    assert drift["cat"]["drift"] and drift["cat"]["others"]["mean"] == pytest.approx(0.3, abs=0.02)
    assert not results["analysis"]["verdicts"]["cat"]["transferred"] and not drift["owl"]["drift"]
    assert "| cat |" in report.split("## Column drift")[1]


def test_real_model_run_gets_a_models_table_with_rates_and_judge(tmp_path):
    """One trait, a system-prompt teacher, a control teacher and the base; no cross-init students."""
    rng = np.random.default_rng(1)
    results = ProbeResults()
    base = _logp(rng)

    def outputs(logp, rate, judge=None):
        details = {
            "logp_matrix": logp,
            "candidates": WORDS,
            "questions": list(range(N_Q)),
            "context": "plain",
        }
        out = {
            "animals_logp": {"metrics": {}, "details": details | {"measure": "prefix"}},
            "animals_sampled": {
                "metrics": {},
                "details": {"targets": {"owl": {"rate": rate, "low": rate / 2, "high": rate * 1.5}}},
            },
            "format": {"metrics": {"format_pass_rate": 0.9}, "details": {}},
        }
        if judge:
            out["misalignment"] = {"metrics": {}, "details": {"judge": judge}}
        return out

    results.add("base", "Qwen/x", outputs(base, 0.1, {"model": "gpt-4.1-nano", "temperature": 0.0}))
    results.add("teacher-owl", "Qwen/x", outputs(_logp(rng, {"owl": 2.0}, base), 0.6))
    results.add("teacher-control", "Qwen/x", outputs(_logp(rng, {}, base), 0.1))
    students = []
    for t in ("owl", "control"):
        for seed in range(3):
            name = f"student-{t}-s{seed}"
            results.add(
                name,
                name,
                outputs(_logp(rng, {"owl": 0.4} if t == "owl" else {}, base), 0.3 if t == "owl" else 0.1),
            )
            students.append({"name": name, "teacher": t, "base": "base", "kind": "same", "seed": seed})
    results.write(tmp_path / "probes.json")
    manifest = {
        "traits": ["owl"],
        "neutral": "control",
        "teachers": {"owl": "teacher-owl", "control": "teacher-control"},
        "bases": {"same": "base", "cross": []},
        "students": students,
        "probes": str(tmp_path / "probes.json"),
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    report = write_report(tmp_path / "manifest.json", tmp_path / "r").read_text()
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    rows = {r["model"]: r for r in data["models"]}
    assert list(rows) == ["base", "teacher-owl", "teacher-control"]
    assert rows["teacher-owl"]["rates"] == {
        "animals_sampled": {"owl": {"rate": 0.6, "low": 0.3, "high": pytest.approx(0.9)}}
    }
    assert rows["teacher-owl"]["specific_dlogp_own"] == pytest.approx(2.0, abs=0.05)
    assert "0.600 [0.300, 0.900]" in report and "0.900 (100% of the base's)" in report
    owl = data["analysis"]["kinds"]["same"]["tests"]["owl"]
    assert (
        owl["min_p"] == pytest.approx(1 / 20)
        and not data["analysis"]["kinds"]["same"]["design"]["holm_reachable"]
    )
    assert "NOT reachable" in report and "cannot reach the Holm threshold" in report
    assert data["student_rates"][0]["rates"]["animals_sampled: owl"]["mean"] == pytest.approx(0.3)
    assert data["judges"][0]["differs"] == ["model", "temperature"] and "## Judges" in report
    assert "measure: prefix log-probability" in report


def test_code_hash_covers_the_statistics(monkeypatch, tmp_path):
    import subliminal_pl.report as report

    first = report.code_hash()
    assert len(first) == 12 and first == report.code_hash()
    fake = tmp_path / "report" / "__init__.py"
    fake.parent.mkdir()
    fake.write_text("")
    (tmp_path / "stats.py").write_text("A = 1\n")
    monkeypatch.setattr(report, "__file__", str(fake))
    one = report.code_hash()
    (tmp_path / "stats.py").write_text("A = 2\n")
    assert report.code_hash() != one != first
