"""Pipeline stage entry points that are not a Trainer run: preparing a raw file, probing a set of models.

    python -m subliminal_pl.stages filter --config steps.yaml --input raw.jsonl --output kept.jsonl
    python -m subliminal_pl.stages probe --config probe.yaml --out DIR

`filter` applies data steps (`steps:`, a list of filters and transforms by class_path + init_args, as in a
student recipe) through `subliminal_pl.data.steps.prepare_file`, the route the student DataModule takes, and
writes the rows that come out and `<output stem>.filter_stats.json` (counts per reject reason and per step).
`probe` loads every listed model once and writes
`probes.json`: the log-probability of each candidate word after each question (for the report's ΔlogP
matrices) and, for the models in `format_check`, the share of sampled number-task answers that pass the number
filter (a trait fine-tune must not break the teacher's number format).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from subliminal_pl.data.jsonl import write_json_atomic


def number_format_pass_rate(model, tokenizer, prompts: list[str], seed: int, batch_size: int = 100) -> float:
    """Share of sampled answers (temperature 1) to number prompts that pass the paper's number filter."""
    import torch

    from subliminal_pl.data.filters import NumberSequenceFilter
    from subliminal_pl.probes.base import encode_text, left_pad, pad_id_of, render_user_turn

    check = NumberSequenceFilter()
    passed = 0
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            ids = [encode_text(tokenizer, render_user_turn(tokenizer, p)) for p in chunk]
            input_ids, mask = left_pad(ids, pad_id_of(tokenizer), torch.device("cpu"))
            with torch.no_grad():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=40,
                    pad_token_id=pad_id_of(tokenizer),
                    eos_token_id=tokenizer.eos_token_id,
                )
            for row in out[:, input_ids.shape[1] :].tolist():
                # An answer that never ends (no EOS within the budget) fails, as a cut-off completion would.
                if tokenizer.eos_token_id in row:
                    text = tokenizer.decode(row[: row.index(tokenizer.eos_token_id)])
                    passed += not check(text)
    finally:
        torch.random.set_rng_state(generator_state)
    return passed / len(prompts)


def candidate_logprobs(model, tokenizer, contexts: list[str], words: list[str], batch_size: int = 64):
    """log P(word | context) as `subliminal_pl.probes.logprob.word_logprobs` computes it ([contexts, words]).

    When every spelling of every word is a single token (the toy tokenizer's animals), one forward pass per
    context scores all words at once; otherwise this defers to `word_logprobs`.
    """
    import torch

    from subliminal_pl.probes.base import encode_text, left_pad, pad_id_of
    from subliminal_pl.probes.logprob import variant_token_ids, word_logprobs

    variants = [variant_token_ids(tokenizer, w) for w in words]
    if any(len(spelling) != 1 for spellings in variants for spelling in spellings):
        return word_logprobs(model, tokenizer, contexts, words, batch_size)
    token_ids = [[spelling[0] for spelling in spellings] for spellings in variants]
    out = torch.empty(len(contexts), len(words), dtype=torch.float64)
    encoded = [encode_text(tokenizer, c) for c in contexts]
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            input_ids, mask = left_pad(
                encoded[start : start + batch_size], pad_id_of(tokenizer), torch.device("cpu")
            )
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).logits[:, -1]
            logprobs = logits.float().log_softmax(-1).double()  # [batch, vocab]
            for w, ids in enumerate(token_ids):
                out[start : start + len(input_ids), w] = torch.logsumexp(logprobs[:, ids], dim=-1)
    return out


def probe_models(
    models: dict[str, str],
    out: str | Path,
    format_check: list[str] | None = None,
    questions: str = "animals",
    split: str = "heldout",
    numbers_prefix_seed: int | None = None,
    format_prompts: int = 200,
    format_prompt_seed: int = 2,
    answer_count: int = 10,
) -> Path:
    """Write `<out>/probes.json`: per model, [question, candidate] log-probs and (some models) format pass rate.

    Args:
        models: name -> model directory.
        out: output folder.
        format_check: models whose number-format pass rate is measured.
        questions: probe question set (packaged name or file); all its candidates are scored.
        split: question split to ask (held-out questions by default).
        numbers_prefix_seed: also score every question behind a numbers lead-in drawn from this seed + index.
        format_prompts: number prompts sampled per format check.
        format_prompt_seed: seed of those prompts.
        answer_count: most numbers the prompts ask for.
    """

    from subliminal_pl.data.prompts import NumberPromptGenerator
    from subliminal_pl.models.loading import load_causal_lm, load_tokenizer
    from subliminal_pl.probes.logprob import render_contexts
    from subliminal_pl.probes.questions import load_question_set, numbers_prefix

    qs = load_question_set(questions)
    asked = list(qs.questions(split))
    candidates = [c.lower() for c in qs.candidates]
    prompts = [
        r["prompt"]
        for r in NumberPromptGenerator(format_prompt_seed, answer_count=answer_count).generate(format_prompts)
    ]
    contexts = {"plain": None}
    if numbers_prefix_seed is not None:
        contexts["numbers"] = numbers_prefix(numbers_prefix_seed)
    result: dict[str, Any] = {
        "questions": asked,
        "candidates": candidates,
        "contexts": list(contexts),
        "models": {},
    }
    start = time.perf_counter()
    for i, (name, path) in enumerate(models.items()):
        model = load_causal_lm(path, dtype="float32").eval()
        tokenizer = load_tokenizer(path)
        entry: dict[str, Any] = {"path": str(path)}
        for context, prefix in contexts.items():
            rendered = render_contexts(tokenizer, asked, prefix=prefix)
            entry[f"logp_{context}"] = candidate_logprobs(model, tokenizer, rendered, candidates).tolist()
        if name in (format_check or []):
            entry["format_pass_rate"] = number_format_pass_rate(model, tokenizer, prompts, format_prompt_seed)
        result["models"][name] = entry
        extra = f", format pass {entry['format_pass_rate']:.3f}" if "format_pass_rate" in entry else ""
        print(
            f"[probe {i + 1}/{len(models)}] {name}{extra} ({time.perf_counter() - start:.0f} s)", flush=True
        )
        del model
    path = Path(out) / "probes.json"
    write_json_atomic(path, result)
    return path


def main(argv: list[str]) -> None:
    from jsonargparse import ActionConfigFile, ArgumentParser

    from subliminal_pl.commands import command_parser
    from subliminal_pl.data.steps import DataStep

    filt = command_parser(None, "Apply data steps (filters and transforms, in order) to a raw JSONL file.")
    filt.add_argument("--input", type=str, required=True, help="raw JSONL (only read)")
    filt.add_argument("--output", type=str, required=True, help="JSONL of the rows the steps let through")
    filt.add_argument(
        "--steps", type=list[DataStep], default=[], help="filters and transforms, class_path + init_args"
    )
    probe = ArgumentParser(
        description="Probe models: candidate log-probs and number-format pass rate.", default_env=False
    )
    probe.add_argument("--config", action=ActionConfigFile)
    probe.add_function_arguments(probe_models)

    parser = ArgumentParser(
        prog="python -m subliminal_pl.stages", description=__doc__.splitlines()[0], default_env=False
    )
    commands = parser.add_subcommands()
    commands.add_subcommand("filter", filt)
    commands.add_subcommand("probe", probe)
    args = parser.parse_args(argv)
    if args.subcommand == "filter":
        from subliminal_pl.data.steps import prepare_file

        sub = parser.instantiate(args)["filter"]
        stats = prepare_file(sub.input, sub.output, sub.steps)
        print(
            f"kept {stats['kept']} of {stats['total']} rows ({stats['kept_fraction']:.1%}); reasons {stats['reasons']}"
        )
        return
    options = {k: v for k, v in args.probe.as_dict().items() if k != "config"}
    print(f"wrote {probe_models(**options)}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
