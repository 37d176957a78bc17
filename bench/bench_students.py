"""Benchmark: N students as N processes (one `subliminal-pl fit` each) vs one `subliminal-pl fit-group` process.

The demo's shape: the embedded world's tokenizer (3290 tokens), a 1.07M-parameter Llama base (d=96, 3 layers,
4 heads) and a teacher of the same shape, 3584 number-task rows (the demo's kept rows), and the demo's student
recipe (LoRA r16, KL on number tokens, 100 steps at batch 16), written by the experiment engine's `fit_recipe`.
Both arms train the same N recipes (seeds 0..N-1) exactly as the pipeline would: one child process per student
with `students.group: false`, one child process for all of them with `students.group: true`. The children run
with one thread each (what `hardware.jobs: 2` gives on 2 cores). CPU seconds come from the children's rusage
(steadier than wall time on a shared machine); both are printed. Both arms must end with the same adapter
weights, bit for bit (checked). Target: separate / grouped >= 2 per student (CPU time).

    python bench/bench_students.py
    python bench/bench_students.py --students 2 --steps 20
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from subliminal_pl.data.jsonl import write_jsonl_atomic  # noqa: E402
from subliminal_pl.experiments.recipes import FitRecipe, Hardware, dump, fit_recipe  # noqa: E402


def build_inputs(folder: Path, rows: int) -> tuple[Path, Path, Path]:
    """(base, teacher, rows file) of the demo's shape, built in code."""
    from subliminal_pl.toy.model import build_tiny_llama, save_model_and_tokenizer
    from subliminal_pl.toy.world import ToyWorld

    world = ToyWorld()
    tokenizer = world.tokenizer()
    paths = []
    for name, seed in (("base", 0), ("teacher", 1)):
        model = build_tiny_llama(tokenizer, hidden_size=96, num_layers=3, num_heads=4, seed=seed)
        paths.append(save_model_and_tokenizer(model, tokenizer, folder / name))
    data = folder / "kept.jsonl"
    write_jsonl_atomic(data, world.number_rows(rows, seed=7))
    return paths[0], paths[1], data


def write_recipes(folder: Path, n: int, fit: FitRecipe, base: Path, teacher: Path, data: Path) -> list[Path]:
    folders = []
    for seed in range(n):
        member = folder / f"student-s{seed}"
        member.mkdir(parents=True)
        recipe = fit_recipe(
            Hardware(), fit, seed, str(base), str(data), "students.fit", loss="kl", teacher=str(teacher),
            token_subset="numbers", trait_words=["owl"],
        )  # fmt: skip
        (member / "recipe.yaml").write_text(dump(recipe, "subliminal-pl fit").replace("{{dir}}", str(member)))
        folders.append(member)
    return folders


def run(command: list[str], log: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one child process; its output goes to `log`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    with log.open("a") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench_students: {' '.join(command[:5])} failed; see {log}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    left, right = (load_file(p / "model" / "adapter_model.safetensors") for p in (a, b))
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--students", type=int, default=4, help="students per arm (the demo's batch: 4 seeds)"
    )
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps per student (the demo: 100)")
    parser.add_argument("--rows", type=int, default=3584, help="training rows (the demo's kept rows)")
    args = parser.parse_args()
    fit = FitRecipe(
        steps=args.steps,
        batch_size=16,
        lr=5e-3,
        warmup_steps=5,
        finetune="lora",
        lora_rank=16,
        lora_alpha=16.0,
    )
    cli = [sys.executable, "-m", "subliminal_pl.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, teacher, data = build_inputs(root, args.rows)
        separate = write_recipes(root / "separate", args.students, fit, base, teacher, data)
        grouped = write_recipes(root / "grouped", args.students, fit, base, teacher, data)
        log = root / "log.txt"
        arms = {"separate": [0.0, 0.0], "grouped": [0.0, 0.0]}
        for folder in separate:
            wall, cpu = run([*cli, "fit", "--config", str(folder / "recipe.yaml")], log)
            arms["separate"][0] += wall
            arms["separate"][1] += cpu
        arms["grouped"] = list(run([*cli, "fit-group", *map(str, grouped)], log))
        identical = all(same_weights(a, b) for a, b in zip(separate, grouped, strict=True))
    n = args.students
    per = {arm: (wall / n, cpu / n) for arm, (wall, cpu) in arms.items()}
    result = {
        "students": n,
        "steps": args.steps,
        "separate_per_student_s": {"wall": round(per["separate"][0], 2), "cpu": round(per["separate"][1], 2)},
        "grouped_per_student_s": {"wall": round(per["grouped"][0], 2), "cpu": round(per["grouped"][1], 2)},
        "ratio_cpu": round(per["separate"][1] / per["grouped"][1], 2),
        "ratio_wall": round(per["separate"][0] / per["grouped"][0], 2),
        "identical_weights": identical,
    }
    print(json.dumps(result, indent=2))
    print(
        f"per student: separate {per['separate'][1]:.1f} CPU-s, grouped {per['grouped'][1]:.1f} CPU-s -> "
        f"{result['ratio_cpu']:.2f}x (target >= 2); wall {result['ratio_wall']:.2f}x; "
        f"weights {'identical' if identical else 'DIFFER'}"
    )
    if not identical:
        sys.exit("bench_students: grouped students differ from separate runs")


if __name__ == "__main__":
    main()
