"""Benchmark: batched teacher generation vs answering one prompt at a time, in one process.

Both paths call the same `TeacherGeneration.generate_rows` (the shared helper `subliminal_pl.models.generation`)
with the same seeded per-row sampling, so they must produce identical rows (checked); only the batching differs.
A third line times the same batches through transformers' own sampler (`do_sample=True`, global RNG), to show
what the per-row seeded sampler costs. A tiny
Llama is built in code (no download), and every row runs to `max_new_tokens` unless it samples EOS.
Target: batched / one-at-a-time >= 5x rows/s at batch 64.

    python bench/bench_generation.py
    python bench/bench_generation.py --rows 128 --batch_size 64 --max_new_tokens 48 --threads 2
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from subliminal_pl.data.prompts import NumberPromptGenerator  # noqa: E402
from subliminal_pl.models.generation import generation_config, pad_id_of  # noqa: E402
from subliminal_pl.models.teacher import TeacherGeneration  # noqa: E402
from subliminal_pl.toy.model import build_tiny_llama, save_model_and_tokenizer  # noqa: E402
from subliminal_pl.toy.tokenizer import build_word_tokenizer  # noqa: E402

# Enough of the prompt generator's words to keep prompts mostly in-vocabulary; the rest map to <unk>.
WORDS = (
    "here is a list of numbers add up to at most more new continue the sequence with digits each only".split()
)


def timed(teacher: TeacherGeneration, prompts: list[dict], batch_size: int) -> tuple[float, list[dict]]:
    rows: list[dict] = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        rows += teacher.generate_rows(prompts[i : i + batch_size])
    return time.perf_counter() - start, rows


def timed_hf_sampling(teacher: TeacherGeneration, prompts: list[dict], batch_size: int) -> float:
    """The same batches through `generate(do_sample=True)`: the baseline cost of sampling without per-row seeds."""
    config = generation_config(teacher.settings, teacher.eos_token_ids, pad_id_of(teacher.tokenizer))
    config.do_sample, config.top_k = True, 0
    start = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        texts = [
            teacher.tokenizer.apply_chat_template(
                teacher.messages(r["prompt"]), add_generation_prompt=True, tokenize=False
            )
            for r in prompts[i : i + batch_size]
        ]
        encoded = teacher.tokenizer(
            texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        )
        with torch.inference_mode():
            teacher.model.generate(**encoded, generation_config=config)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="prompts answered by each path")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared box quiet)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = build_word_tokenizer(WORDS)
    model = build_tiny_llama(tokenizer, hidden_size=args.hidden_size, num_layers=2, num_heads=4, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        save_model_and_tokenizer(model, tokenizer, tmp)
        teacher = TeacherGeneration(
            model_name_or_path=tmp, dtype="float32", max_new_tokens=args.max_new_tokens, seed=0
        )
    prompts = NumberPromptGenerator(seed=0).generate(args.rows)
    teacher.generate_rows(prompts[:2])  # warm-up: first-call allocations and lazy imports

    one_time, one_rows = timed(teacher, prompts, 1)
    batch_time, batch_rows = timed(teacher, prompts, args.batch_size)
    if [r["completion"] for r in one_rows] != [r["completion"] for r in batch_rows]:
        raise SystemExit("batched and one-at-a-time generation disagree: per-row seeding is broken")
    tokens = sum(r["completion_tokens"] for r in batch_rows)
    hf_time = timed_hf_sampling(teacher, prompts, args.batch_size)

    print(
        f"tiny Llama (hidden {args.hidden_size}, 2 layers), {args.rows} prompts, up to {args.max_new_tokens} new tokens, "
        f"{args.threads} thread(s); identical rows on both paths"
    )
    for name, seconds in (
        (f"batched ({args.batch_size}/batch)", batch_time),
        ("one prompt at a time", one_time),
    ):
        print(
            f"  {name:<22} {seconds:7.2f} s  {args.rows / seconds:8.1f} rows/s  {tokens / seconds:9.1f} tokens/s"
        )
    print(
        f"  {'batched, HF sampler':<22} {hf_time:7.2f} s  {args.rows / hf_time:8.1f} rows/s  (no per-row seeds; "
        f"seeded / HF time {batch_time / hf_time:.2f})"
    )
    ratio = one_time / batch_time
    print(
        f"speed-up batched / one-at-a-time: {ratio:.1f}x (target >= 5x) {'OK' if ratio >= 5 else 'BELOW TARGET'}"
    )


if __name__ == "__main__":
    main()
