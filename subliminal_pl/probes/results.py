"""The one results schema of trait probes, whoever ran them (the pipeline's probe stage, `TraitProbeCallback`).

A results file (`probes.json`) holds, per model, the `ProbeOutput` of every probe that ran on it:

    {"schema": "subliminal-pl.probe-results/1",
     "models": {"<model name>": {"path": "<dir or hub id>",
                                  "outputs": {"<probe name>": {"metrics": {...}, "details": {...}}}}}}

Conventions that readers (the report) rely on, by `details` keys:
- a ΔlogP input holds `logp_matrix` ([question][candidate] log-probabilities), `candidates`, `questions` and
  `context` (`plain`, or the name of a lead-in such as `numbers`); `measure` says how a word was scored
  (`prefix`: the word's tokens; `whole_word`: the word's tokens then a word boundary; absent means `prefix`);
  a model holds at most one input per (context, measure);
- a sampled-rate output holds `targets` (word -> {rate, low, high, per_question}) and `samples_per_question`;
- the number-format check puts `format_pass_rate` in `metrics`.

`ProbeResults.read` also accepts the first format the pipeline wrote (top-level `candidates`, per-model
`logp_<context>` and `format_pass_rate`), so older runs stay readable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from subliminal_pl.data.jsonl import write_json_atomic

SCHEMA = "subliminal-pl.probe-results/1"


def json_ready(value: Any) -> Any:
    """NaN and infinities become null, so a results file is strict JSON that any tool reads."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


class ProbeResultsError(ValueError):
    """A results file that does not follow the schema; the message names the file and the key."""


@dataclass
class ModelResults:
    """Every probe output of one model: probe name -> {"metrics": {...}, "details": {...}}."""

    path: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def logp_outputs(self, measure: str | None = None) -> dict[str, dict[str, Any]]:
        """context -> details of the ΔlogP input measured in that context (of one `measure`, if given).

        Two inputs of one context (e.g. a `prefix` and a `whole_word` probe) are ambiguous unless `measure`
        picks one: that raises, naming both probes. Outputs without a `measure` are `prefix` (the first format).
        """
        found: dict[str, dict[str, Any]] = {}
        owner: dict[str, str] = {}
        for name, out in self.outputs.items():
            details = out.get("details", {})
            if "logp_matrix" not in details or measure not in (None, details.get("measure", "prefix")):
                continue
            context = details.get("context", "plain")
            if context in found:
                raise ProbeResultsError(
                    f"probes {owner[context]!r} and {name!r} both hold log-probabilities in context {context!r}; "
                    "choose one by measure (prefix or whole_word)"
                )
            found[context], owner[context] = details, name
        return found

    @property
    def format_pass_rate(self) -> float | None:
        for out in self.outputs.values():
            if "format_pass_rate" in out.get("metrics", {}):
                return float(out["metrics"]["format_pass_rate"])
        return None

    def rates(self) -> dict[str, dict[str, dict[str, Any]]]:
        """probe name -> word -> {rate, low, high, ...} for the sampled-rate outputs."""
        return {
            name: out["details"]["targets"]
            for name, out in self.outputs.items()
            if isinstance(out.get("details", {}).get("targets"), dict)
        }


@dataclass
class ProbeResults:
    """Probe outputs of several models (see the module docstring for the file format)."""

    models: dict[str, ModelResults] = field(default_factory=dict)

    def add(self, model: str, path: str, outputs: Mapping[str, Any]) -> None:
        """Record `outputs` (probe name -> ProbeOutput or its dict) for `model`."""
        entry = self.models.setdefault(model, ModelResults(str(path)))
        for name, out in outputs.items():
            entry.outputs[name] = (
                out if isinstance(out, dict) else {"metrics": out.metrics, "details": out.details}
            )

    def _logp_details(self) -> list[dict[str, Any]]:
        """Details of every ΔlogP input of every model, whatever its context and measure."""
        return [
            out["details"]
            for entry in self.models.values()
            for out in entry.outputs.values()
            if "logp_matrix" in out.get("details", {})
        ]

    @property
    def contexts(self) -> list[str]:
        return list(dict.fromkeys(d.get("context", "plain") for d in self._logp_details()))

    @property
    def measures(self) -> list[str]:
        """How the ΔlogP inputs scored a word: `prefix` and/or `whole_word` (see `probes.wordscore`)."""
        return list(dict.fromkeys(d.get("measure", "prefix") for d in self._logp_details()))

    @property
    def candidates(self) -> list[str]:
        """Candidate words of the ΔlogP inputs (the same for every model and context, checked)."""
        seen = {tuple(d["candidates"]) for d in self._logp_details()}
        if len(seen) > 1:
            raise ProbeResultsError(f"models were scored on different candidate lists: {sorted(seen)}")
        return list(next(iter(seen), ()))

    def logp(self, model: str, context: str = "plain", measure: str | None = None) -> list[list[float]]:
        """[question][candidate] log-probabilities of `model` in `context` (of one `measure`, if given)."""
        try:
            return self.models[model].logp_outputs(measure)[context]["logp_matrix"]
        except KeyError as err:
            raise ProbeResultsError(
                f"no log-probabilities for model {model!r} in context {context!r}"
                + (f" with measure {measure!r}" if measure else "")
            ) from err

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "models": {n: {"path": e.path, "outputs": e.outputs} for n, e in self.models.items()},
        }

    def write(self, path: str | Path) -> Path:
        """Write atomically; NaN and infinite values (a rate with nothing to count) are written as null."""
        write_json_atomic(path, json_ready(self.to_dict()))
        return Path(path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> ProbeResults:
        if not isinstance(data, Mapping) or not isinstance(data.get("models"), Mapping):
            raise ProbeResultsError(f"{source}: expected an object with a `models` mapping")
        if data.get("schema") == SCHEMA:
            models = {}
            for name, entry in data["models"].items():
                if not isinstance(entry, Mapping) or not isinstance(entry.get("outputs"), Mapping):
                    raise ProbeResultsError(f"{source}: models.{name}.outputs must be a mapping")
                models[name] = ModelResults(str(entry.get("path", "")), dict(entry["outputs"]))
            return cls(models)
        if "schema" in data:
            raise ProbeResultsError(
                f"{source}: unknown schema {data['schema']!r} (this version reads {SCHEMA})"
            )
        return cls._from_first_format(data, source)

    @classmethod
    def _from_first_format(cls, data: Mapping[str, Any], source: str) -> ProbeResults:
        try:
            candidates, questions = list(data["candidates"]), list(data["questions"])
            contexts = list(data.get("contexts", ["plain"]))
        except KeyError as err:
            raise ProbeResultsError(f"{source}: missing key {err.args[0]!r}") from err
        results = cls()
        for name, entry in data["models"].items():
            outputs: dict[str, Any] = {}
            for context in contexts:
                if f"logp_{context}" in entry:
                    details = {
                        "logp_matrix": entry[f"logp_{context}"],
                        "candidates": candidates,
                        "questions": questions,
                        "context": context,
                        "measure": "prefix",
                    }
                    outputs[f"logp_{context}"] = {"metrics": {}, "details": details}
            if entry.get("format_pass_rate") is not None:
                outputs["format"] = {
                    "metrics": {"format_pass_rate": entry["format_pass_rate"]},
                    "details": {},
                }
            results.models[name] = ModelResults(str(entry.get("path", "")), outputs)
        return results

    @classmethod
    def read(cls, path: str | Path) -> ProbeResults:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ProbeResultsError(f"{path}: cannot read probe results ({err})") from err
        return cls.from_dict(data, str(path))
