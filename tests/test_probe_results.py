"""The probe results schema: the current format round-trips, the first format still reads, bad files are named."""

import json

import pytest

from subliminal_pl.probes.base import ProbeOutput
from subliminal_pl.probes.results import SCHEMA, ProbeResults, ProbeResultsError

FIRST_FORMAT = {
    "questions": ["q1", "q2"],
    "candidates": ["owl", "cat"],
    "contexts": ["plain"],
    "models": {
        "base": {"path": "/m/base", "logp_plain": [[-1.0, -2.0], [-1.5, -2.5]], "format_pass_rate": 0.9},
        "student": {"path": "/m/student", "logp_plain": [[-0.5, -2.0], [-1.0, -2.5]]},
    },
}


def test_first_format_reads_as_the_current_schema(tmp_path):
    path = tmp_path / "probes.json"
    path.write_text(json.dumps(FIRST_FORMAT))
    results = ProbeResults.read(path)
    assert results.candidates == ["owl", "cat"]
    assert results.contexts == ["plain"]
    assert results.logp("student") == [[-0.5, -2.0], [-1.0, -2.5]]
    assert results.models["base"].format_pass_rate == 0.9
    assert results.models["student"].format_pass_rate is None
    again = ProbeResults.from_dict(json.loads(json.dumps(results.to_dict())))
    assert again.to_dict() == results.to_dict() and again.to_dict()["schema"] == SCHEMA


def test_outputs_of_probe_objects_round_trip(tmp_path):
    results = ProbeResults()
    rate = {"owl": {"rate": 0.25, "low": 0.1, "high": 0.4}}
    results.add("teacher", "/m/t", {"animals_sampled": ProbeOutput({"owl_rate": 0.25}, {"targets": rate})})
    path = results.write(tmp_path / "out" / "probes.json")
    back = ProbeResults.read(path)
    assert back.models["teacher"].rates() == {"animals_sampled": rate}
    assert back.contexts == [] and back.candidates == []


def test_missing_context_and_bad_files_are_named(tmp_path):
    results = ProbeResults.from_dict(FIRST_FORMAT)
    with pytest.raises(ProbeResultsError, match="'student'.*'numbers'"):
        results.logp("student", "numbers")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "other/9", "models": {}}))
    with pytest.raises(ProbeResultsError, match="bad.json.*unknown schema"):
        ProbeResults.read(bad)
    bad.write_text("{not json")
    with pytest.raises(ProbeResultsError, match="bad.json"):
        ProbeResults.read(bad)
    with pytest.raises(ProbeResultsError, match="missing key 'candidates'"):
        ProbeResults.from_dict({"models": {}, "questions": []})


def test_two_measures_in_one_context_are_told_apart():
    def logp_output(measure, value):
        details = {"logp_matrix": [[value, -2.0]], "candidates": ["owl", "cat"], "questions": ["q"]}
        return {"metrics": {}, "details": {**details, "context": "plain", "measure": measure}}

    results = ProbeResults()
    results.add("m", "/m", {"animals": logp_output("prefix", -1.0)})
    assert results.logp("m") == [[-1.0, -2.0]]  # one input per context: no measure needed
    results.add("m", "/m", {"animals_whole_word": logp_output("whole_word", -1.5)})
    assert results.measures == ["prefix", "whole_word"] and results.contexts == ["plain"]
    assert results.logp("m", measure="whole_word") == [[-1.5, -2.0]]
    assert results.logp("m", measure="prefix") == [[-1.0, -2.0]]
    with pytest.raises(ProbeResultsError, match="'animals' and 'animals_whole_word'.*choose one by measure"):
        results.logp("m")
    with pytest.raises(ProbeResultsError, match="measure 'other'"):
        results.logp("m", measure="other")
