"""Probe many saved models with the same `Probe` objects and write one `probes.json` (the pipeline's probe stage).

    python -m subliminal_pl.stages probe --config probe.yaml --output_dir DIR

`probe.yaml` (keys = the arguments of `probe_models`):

    models: {base: runs/base/model, teacher-owl: runs/base/model, student-owl-0: runs/s0/model}
    system_prompts: {teacher-owl: "You love owls. ..."}     # optional: asked behind this system prompt
    probes:                                                 # run on every model
      - class_path: subliminal_pl.probes.logprob.LogProbProbe
        init_args: {questions: animals, split: heldout, reference: null}
      - class_path: subliminal_pl.probes.logprob.LogProbProbe
        init_args: {questions: animals, split: heldout, reference: null, numbers_prefix_seed: 0}
    format_check: [base, teacher-owl]                       # FormatProbe on these models too
    format_prompts: 200
    format_prompt_seed: 2
    answer_count: 10

Every model is loaded once (names sharing a path share the load, e.g. a base and its system-prompt teacher);
every probe runs on a fresh copy (`Probe.for_model`), so nothing one model leaves in a probe reaches the next.
"""

from __future__ import annotations

import time
from pathlib import Path

from subliminal_pl.probes.base import Probe, ProbeOutput
from subliminal_pl.probes.logprob import LogProbProbe
from subliminal_pl.probes.number_format import FormatProbe
from subliminal_pl.probes.results import ProbeResults

RESULTS_FILE = "probes.json"
# Results of the models done so far, rewritten after each model: a run that fails part-way (a judge endpoint that
# goes down) keeps them, and the next run in the same folder probes only the models left.
PARTIAL_FILE = "probes.partial.json"


def check_probe_plan(
    models: dict[str, str],
    probes: list[Probe],
    system_prompts: dict[str, str],
    format_check: list[str],
) -> None:
    """Refuse a plan that cannot give meaningful results, before any model is loaded; errors name the key."""
    if not models:
        raise ValueError("models: give at least one `name: model directory or hub id`")
    for key, names in (("system_prompts", list(system_prompts)), ("format_check", format_check)):
        unknown = [n for n in names if n not in models]
        if unknown:
            raise ValueError(f"{key}: {unknown} are not among the models {list(models)}")
    names = [p.name for p in probes] + (["format"] if format_check else [])
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"probes: names must be distinct (the format check is 'format'), repeated: {repeated}"
        )
    for i, probe in enumerate(probes):
        if isinstance(probe, LogProbProbe) and probe.reference in ("auto", "initial", "base"):
            raise ValueError(
                f"probes[{i}] ({probe.name}): reference {probe.reference!r} compares each model with itself here; "
                "set `reference: null` (the report computes ΔlogP between models) or a model path"
            )
    seen: dict[tuple[str, str], str] = {}
    for probe in probes:
        if isinstance(probe, LogProbProbe):
            key = (probe.context, probe.measure)
            if key in seen:
                raise ValueError(
                    f"probes: {seen[key]!r} and {probe.name!r} both measure context {key[0]!r} by {key[1]!r}; "
                    "the results hold one log-prob input per context and measure"
                )
            seen[key] = probe.name
    if not probes and not format_check:
        raise ValueError("nothing to measure: give `probes` and/or `format_check`")


def probe_models(
    models: dict[str, str],
    output_dir: str,
    probes: list[Probe] | None = None,
    system_prompts: dict[str, str] | None = None,
    format_check: list[str] | None = None,
    format_prompts: int = 200,
    format_prompt_seed: int = 2,
    answer_count: int = 10,
    dtype: str = "float32",
    device: str = "auto",
) -> Path:
    """Run every probe on every model (plus the format check on some) and write `<output_dir>/probes.json`.

    Args:
        models: name -> model directory or hub id (the names are the report's names).
        output_dir: folder of `probes.json`.
        probes: Probe objects (class_path + init_args) run on every model; a log-prob probe gives one ΔlogP
            input (one question set in one context, e.g. plain and behind a numbers lead-in).
        system_prompts: name -> system message that model is asked behind (a system-prompt teacher is its
            base model plus the trait prompt); other models get none.
        format_check: models whose number-format pass rate is measured (`FormatProbe`, named "format").
        format_prompts: number prompts sampled per format check.
        format_prompt_seed: seed of those prompts and of the sampling.
        answer_count: most numbers the prompts ask for (and the filter allows).
        dtype: weight dtype the models are loaded in (float32, bfloat16, float16, auto).
        device: where the models run: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
    """
    import torch

    from subliminal_pl.data.hub import load_tokenizer
    from subliminal_pl.models.loading import load_causal_lm

    probes = list(probes or [])
    system_prompts = dict(system_prompts or {})
    format_check = list(format_check or [])
    check_probe_plan(models, probes, system_prompts, format_check)
    fmt = FormatProbe(format_prompts, format_prompt_seed, answer_count) if format_check else None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    partial = Path(output_dir) / PARTIAL_FILE
    done = ProbeResults.read(partial) if partial.is_file() else ProbeResults()
    if done.models:
        print(f"[probe] resuming: {len(done.models)} models already probed ({partial})", flush=True)
    by_path: dict[str, list[str]] = {}
    for name, path in models.items():
        if name not in done.models:
            by_path.setdefault(str(path), []).append(name)
    outputs: dict[str, dict[str, ProbeOutput]] = {}
    start = time.perf_counter()
    for path, names in by_path.items():
        model = load_causal_lm(path, dtype=dtype).to(device).eval()
        tokenizer = load_tokenizer(path)
        for name in names:
            planned = probes + ([fmt] if name in format_check else [])
            outputs[name] = {}
            for probe in planned:
                outputs[name][probe.name] = probe.for_model(system_prompts.get(name)).run(model, tokenizer)
            rate = outputs[name].get("format")
            extra = f", format pass {rate.metrics['format_pass_rate']:.3f}" if rate else ""
            done.add(name, str(path), outputs[name])
            done.write(partial)
            print(
                f"[probe {len(done.models)}/{len(models)}] {name}{extra} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    results = ProbeResults({name: done.models[name] for name in models})
    written = results.write(Path(output_dir) / RESULTS_FILE)
    partial.unlink()
    return written
