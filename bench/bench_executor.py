"""Benchmark: the CPU-sized smoke experiment with the local executor vs the Ray executor, in one script.

Both runs build the same stages (same hashes) into fresh output folders, with `hardware.jobs` stages at once: the
local executor as child processes of this one, the Ray executor as tasks on a Ray instance this script starts on
this machine first (loopback only, `hardware.jobs` CPUs, no dashboard; its start-up is timed apart, as a cluster
already runs when a grid is submitted). Each stage holds one CPU there, as `stage_cpus: 1` says, so both run the
stages with the same threads and must give the same results (checked: results.json, with the output folder's
path written as OUT). Prints each wall time, the CPU seconds of
the stage processes, and the ratio Ray / local. Target: <= 1.2x.

    python bench/bench_executor.py
    python bench/bench_executor.py --config configs/toy/smoke.yaml --output_dir /tmp/bench_executor
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from subliminal_pl.experiments.command import parse_experiment, run_experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.2


def run(config: str, out_dir: Path, executor: str) -> dict:
    """Wall seconds, stage CPU seconds, stage folders and results of one fresh run of the experiment."""
    shutil.rmtree(out_dir, ignore_errors=True)
    exp, _ = parse_experiment(
        ["--config", config, "--out_dir", str(out_dir), "--hardware.executor", executor]
    )
    start = time.perf_counter()
    run_experiment(exp, echo=lambda line: None)
    wall = time.perf_counter() - start
    records = [json.loads(p.read_text()) for p in sorted(out_dir.glob("stages/*/stage.json"))]
    return {
        "wall": wall,
        "stage_cpu": sum(r["cpu_seconds"] for r in records),
        "stages": sorted(f"{r['name']}-{r['hash']}" for r in records),
        # Results name their output folder (data paths): compared with that folder written as OUT.
        "results": (out_dir / "results.json").read_text().replace(str(out_dir), "OUT"),
        "jobs": exp.hardware.jobs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "toy" / "smoke.yaml"))
    parser.add_argument("--output_dir", default=None, help="where both runs go (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_executor_"))

    local = run(args.config, root / "local", "local")
    print(f"local executor: {local['wall']:.1f} s wall, {local['stage_cpu']:.1f} s CPU in stage processes")

    import ray

    start = time.perf_counter()
    ray.init(
        num_cpus=local["jobs"],
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level="WARNING",
    )
    print(
        f"Ray start-up (not counted; a cluster is already up when a grid runs): {time.perf_counter() - start:.1f} s"
    )
    try:
        on_ray = run(args.config, root / "ray", "ray")
    finally:
        ray.shutdown()
    print(f"Ray executor:   {on_ray['wall']:.1f} s wall, {on_ray['stage_cpu']:.1f} s CPU in stage processes")

    same_stages = on_ray["stages"] == local["stages"]
    same_results = on_ray["results"] == local["results"]
    print(f"same stages (names and hashes): {same_stages}; same results.json: {same_results}")
    ratio = on_ray["wall"] / local["wall"]
    verdict = "meets" if ratio <= TARGET else "misses"
    print(f"wall ratio Ray / local: {ratio:.2f}x ({verdict} the target <= {TARGET}x)")
    print(f"outputs: {root}")


if __name__ == "__main__":
    main()
