"""Checks of a spec before any stage starts; every message names the spec key at fault.

Beyond what the parser checks (types, unknown keys, unknown class_paths of the typed roles): traits that are not
candidates of a probe's question set, class_paths of data steps and probes, losses a teacher cannot serve,
overlapping seeds, models that cannot be found offline, and cross-model KL students whose vocabulary differs
from the teacher's.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from subliminal_pl.experiments.bases import PretrainedBases
from subliminal_pl.experiments.spec import Experiment
from subliminal_pl.pipeline import PipelineError


def _load_class(spec: Any, key: str, errors: list[str]) -> type | None:
    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
        errors.append(f"{key}: expected a mapping with class_path (+ init_args), got {spec!r}")
        return None
    unknown = set(spec) - {"class_path", "init_args"}
    if unknown:
        errors.append(f"{key}: unknown keys {sorted(unknown)} (expected class_path, init_args)")
    module, _, name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        errors.append(f"{key}.class_path: unknown class {spec['class_path']!r}")
        return None
    if not isinstance(cls, type):
        errors.append(f"{key}.class_path: {spec['class_path']!r} is not a class")
        return None
    return cls


def _nested(value: Any) -> Any:
    """An init argument with every class_path mapping inside it instantiated (e.g. a probe's judge)."""
    if (
        isinstance(value, dict)
        and isinstance(value.get("class_path"), str)
        and set(value) <= {"class_path", "init_args"}
    ):
        module, _, name = value["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return cls(**{k: _nested(v) for k, v in (value.get("init_args") or {}).items()})
    if isinstance(value, list):
        return [_nested(v) for v in value]
    return value


def _instance(spec: dict, cls: type, key: str, errors: list[str]) -> Any:
    try:
        return cls(**{k: _nested(v) for k, v in (spec.get("init_args") or {}).items()})
    except Exception as err:  # the class's own message names the argument
        errors.append(f"{key}.init_args: {type(err).__name__}: {err}")
        return None


def check_steps(exp: Experiment, errors: list[str]) -> None:
    from subliminal_pl.data.steps import DataStep

    pairs = [(f"carrier.init_args.filters[{i}]", s) for i, s in enumerate(exp.carrier.filters)]
    pairs += [(f"steps[{i}]", s) for i, s in enumerate(exp.steps)]
    for key, spec in pairs:
        cls = _load_class(spec, key, errors)
        if cls is None:
            continue
        # Filters drop rows, transforms rewrite them: both are data steps.
        if not issubclass(cls, DataStep):
            errors.append(
                f"{key}.class_path: {spec['class_path']!r} is not a data step (filter or transform)"
            )
            continue
        _instance(spec, cls, key, errors)


def check_traits_and_probes(exp: Experiment, errors: list[str]) -> None:
    from subliminal_pl.probes.base import Probe
    from subliminal_pl.probes.questions import QuestionSetError, load_question_set

    traits = [t.lower() for t in exp.traits]
    if not traits:
        errors.append("traits: at least one trait is needed")
    if len(set(traits)) != len(traits):
        errors.append(f"traits: {exp.traits} repeats a trait")
    neutral = exp.teachers.neutral
    if neutral and neutral.lower() in traits:
        errors.append(f"teachers.init_args.neutral: {neutral!r} is also a trait")
    for key, name in [("bases.init_args.world.questions", q) for q in exp.bases.question_sets]:
        try:
            candidates = [c.lower() for c in load_question_set(name).candidates]
        except QuestionSetError as err:
            errors.append(f"{key}: {err}")
            continue
        known = [*candidates, *exp.bases.other_traits]
        for t in traits:
            if t not in known:
                errors.append(f"traits: {t!r} is not a candidate of question set {name!r} ({key}): {known}")
    if not exp.probes:
        errors.append("probes: at least one probe is needed")
    for i, spec in enumerate(exp.probes):
        key = f"probes[{i}]"
        cls = _load_class(spec, key, errors)
        if cls is None:
            continue
        if not issubclass(cls, Probe):
            errors.append(f"{key}.class_path: {spec['class_path']!r} is not a Probe")
            continue
        probe = _instance(spec, cls, key, errors)
        words = getattr(probe, "candidates", None) or getattr(probe, "targets", None)
        if words is None:
            continue
        words = [w.lower() for w in words]
        for t in traits:
            if t not in words:
                errors.append(f"traits: {t!r} is not a candidate of {key} ({spec['class_path']}): {words}")


def check_roles(exp: Experiment, errors: list[str]) -> None:
    st, carrier = exp.students, exp.carrier
    if st.loss != "sft" and not exp.teachers.in_weights:
        errors.append(
            f"students.loss: {st.loss} distils the teacher's logits, but {type(exp.teachers).__name__} puts the "
            "trait in a system prompt the student never sees; use loss: sft (the paper) or finetuned teachers"
        )
    if st.loss == "sft" and carrier.source == "base":
        errors.append("students.loss: sft learns the generated tokens; set carrier.init_args.source: teacher")
    for key, seeds in [("students.seeds", st.seeds), ("students.cross_seeds", st.cross_seeds)]:
        if len(set(seeds)) != len(seeds):
            errors.append(f"{key}: seeds overlap: {seeds}")
    if not st.seeds:
        errors.append("students.seeds: at least one seed is needed")
    hw = exp.hardware
    if hw.micro_batch_size is not None and hw.device_count() is None:
        errors.append(
            f"hardware.micro_batch_size: needs hardware.devices as a number of devices (got {hw.devices!r}), "
            "so that each fit's batch_size can be split into micro-batches x devices x accumulation"
        )
    if exp.hardware.jobs < 1:
        errors.append(f"hardware.jobs: must be >= 1, got {exp.hardware.jobs}")


def model_problem(source: str, what: str = "config.json") -> str | None:
    """Why `source` (a directory or hub id) cannot be loaded here, or None when it can (as far as files go)."""
    from subliminal_pl.data.hub import ModelNotAvailableError, hub_offline, resolve_source

    try:
        name, local = resolve_source(source)
    except ModelNotAvailableError as err:
        return str(err)
    if local or not hub_offline():
        return None
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, what), str):
        return None
    return f"{name!r} is not a directory and not in the Hugging Face cache, and HF_HUB_OFFLINE=1"


def check_models(exp: Experiment, errors: list[str]) -> None:
    bases = exp.bases
    if not isinstance(bases, PretrainedBases):
        return
    missing = False
    for key, source in bases.sources().items():
        problem = model_problem(
            source, "adapter_config.json" if key.endswith("adapter_path") else "config.json"
        )
        if problem:
            errors.append(f"{key}: {problem}")
            missing = True
    if missing or exp.students.loss == "sft" or not bases.control_models:
        return
    # A cross-model student distils the teacher's next-token distribution: both must share one vocabulary.
    from subliminal_pl.data.hub import load_tokenizer

    vocab = load_tokenizer(bases.model_name_or_path).get_vocab()
    for i, control in enumerate(bases.control_models):
        other = load_tokenizer(control.model_name_or_path).get_vocab()
        if other != vocab:
            errors.append(
                f"bases.init_args.controls[{i}]: {control.model_name_or_path!r} has another vocabulary than "
                f"the teachers ({len(other)} vs {len(vocab)} tokens); its students cannot learn by KL "
                f"(students.loss: {exp.students.loss}); use loss: sft or a model of the same tokenizer"
            )


def validate(exp: Experiment) -> None:
    """Raise `PipelineError` listing every problem of the spec, each naming its key."""
    errors: list[str] = []
    check_traits_and_probes(exp, errors)
    check_steps(exp, errors)
    check_roles(exp, errors)
    check_models(exp, errors)
    errors += exp.carrier.check()
    if exp.mlp_config and not (Path(exp.mlp_config).is_file() or _repo_file(exp.mlp_config)):
        errors.append(f"mlp_config: {exp.mlp_config!r} not found")
    if errors:
        raise PipelineError("invalid experiment spec:\n  " + "\n  ".join(errors))


def _repo_file(path: str) -> bool:
    from subliminal_pl.experiments.recipes import REPO_ROOT

    return (REPO_ROOT / path).is_file()
