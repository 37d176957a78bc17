"""`subliminal-pl pipeline`: parse an experiment spec, validate it, build its stages, run them, publish the report.

    subliminal-pl pipeline --config configs/toy/demo.yaml [--dry_run true]
    subliminal-pl pipeline --config configs/toy/demo.yaml --config configs/toy/sweep.yaml

A spec with `variants` is a sweep: every variant (the spec deep-merged with its overrides) runs as its own
experiment in the same output folder, so stages they share (the world, the bases) run once; `sweep.md` lists
them side by side. Every variant is parsed and validated before the first stage starts.
"""

from __future__ import annotations

import copy
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from subliminal_pl.executors import Executor
from subliminal_pl.experiments.build import build_stages
from subliminal_pl.experiments.spec import Experiment
from subliminal_pl.pipeline import Pipeline, PipelineError, Stage, make_executor

REPORT_FILES = ("report.md", "results.json")
OPTIONS = ("config", "dry_run", "in_process")


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied: nested mappings merge key by key, anything else replaces.

    A mapping that names another `class_path` than the base's replaces it whole (a variant that swaps the
    carrier's class must not inherit the old class's `init_args`).
    """
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        old = out.get(key)
        if (
            isinstance(value, dict)
            and isinstance(old, dict)
            and value.get("class_path", old.get("class_path")) == old.get("class_path")
        ):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def experiment_parser(exit_on_error: bool = True):
    from subliminal_pl.commands import command_parser

    parser = command_parser(
        "subliminal-pl pipeline",
        "Run a subliminal-learning experiment as cached stages (one process each) and write a report.",
    )
    parser.exit_on_error = exit_on_error
    parser.add_class_arguments(Experiment, nested_key=None, skip={"spec"})
    parser.add_argument(
        "--dry_run", type=bool, default=False, help="list the stages and commands, run nothing"
    )
    parser.add_argument("--in_process", type=bool, default=False, help="run stages in this process (tests)")
    return parser


def _to_experiment(parser, cfg) -> Experiment:
    for key in OPTIONS:
        cfg.pop(key, None)
    spec = cfg.clone().as_dict()
    try:
        # With nested_key=None the parser yields the fields (roles instantiated), not the instance.
        fields = vars(parser.instantiate(cfg))
    except ValueError as err:  # a role's own check; its message names the key
        raise PipelineError(f"invalid experiment spec: {err}") from err
    # Data steps, probes and a carrier's filters reach their stages as class_path mappings, but jsonargparse
    # instantiates a class_path nested in their init_args (a judge filter's judge): take them from the spec.
    for key in ("steps", "probes"):
        if isinstance(spec.get(key), list):
            fields[key] = copy.deepcopy(spec[key])
    filters = ((spec.get("carrier") or {}).get("init_args") or {}).get("filters")
    if isinstance(filters, list) and hasattr(fields.get("carrier"), "filters"):
        fields["carrier"].filters = copy.deepcopy(filters)
    # Variants stay as written: instantiating turns a class_path mapping inside them (a data step, a filter) into
    # an object, which the variant's own parse would refuse.
    fields["variants"] = spec.get("variants") or {}
    return Experiment(**fields, spec=spec)


def parse_experiment(argv: list[str]) -> tuple[Experiment, dict[str, Any]]:
    parser = experiment_parser()
    cfg = parser.parse_args(argv)
    options = {"dry_run": cfg.dry_run, "in_process": cfg.in_process}
    return _to_experiment(parser, cfg), options


def variant_experiments(exp: Experiment) -> dict[str, Experiment]:
    """name -> experiment: the spec itself, or one per variant of a sweep (each parsed like the spec)."""
    if not exp.variants:
        return {"": exp}
    parser = experiment_parser(exit_on_error=False)
    base = {k: v for k, v in exp.spec.items() if k != "variants"}
    out = {}
    for name, overrides in exp.variants.items():
        merged = deep_merge(base, overrides)
        merged["out_dir"] = exp.out_dir
        try:
            out[name] = _to_experiment(parser, parser.parse_object(merged))
        except Exception as err:  # jsonargparse's message names the bad key
            raise PipelineError(f"sweep variant {name!r}: {err}") from err
    return out


def plan(exp: Experiment) -> dict[str, list[Stage]]:
    """variant name -> stages, every variant validated and built before anything runs."""
    planned = {}
    for name, variant in variant_experiments(exp).items():
        try:
            planned[name] = build_stages(variant)[0]
        except PipelineError as err:
            raise PipelineError(f"sweep variant {name!r}: {err}" if name else str(err)) from err
    return planned


def run_experiment(
    exp: Experiment, dry_run: bool = False, in_process: bool = False, echo=print
) -> dict[str, Path]:
    """Run an experiment (or each variant of a sweep); returns variant name -> folder holding its report."""
    out_dir = Path(exp.out_dir)
    reports = {}
    planned = plan(exp)
    hw = exp.hardware
    executor: Executor | None = None
    if not dry_run:  # a Ray executor connects to its cluster here, once for every variant
        executor = make_executor(hw.executor, hw.jobs, in_process, hw.ray_address)
    try:
        for name, stages in planned.items():
            pipeline = Pipeline(
                stages, out_dir, jobs=hw.jobs, in_process=in_process, echo=echo, executor=executor
            )
            if name:
                echo(f"=== sweep variant {name}")
            if dry_run:
                for line in pipeline.describe():
                    echo(line)
                continue
            pipeline.run()
            target = out_dir / name if name else out_dir
            publish(pipeline.stage_dir("report"), target)
            reports[name] = target
            verdict = (target / "report.md").read_text(encoding="utf-8").split("## How to read this")[0]
            echo(verdict.strip())
            echo(f"report: {target / 'report.md'}")
    finally:
        if executor is not None:
            executor.close()
    if exp.variants and not dry_run:
        from subliminal_pl.report import write_sweep_summary

        summary = write_sweep_summary({n: p / "results.json" for n, p in reports.items()}, out_dir)
        echo(f"sweep summary: {summary}")
        from subliminal_pl.report.defences import write_defence_summary

        matrix = write_defence_summary({n: p / "results.json" for n, p in reports.items()}, out_dir)
        if matrix is not None:
            echo(f"defence matrix: {matrix}")
    return reports


def publish(report_dir: Path, target: Path) -> None:
    """Copy the report stage's files (markdown, JSON, PNGs) to the experiment folder users look in."""
    target.mkdir(parents=True, exist_ok=True)
    for path in report_dir.iterdir():
        if path.name in REPORT_FILES or path.suffix == ".png":
            shutil.copyfile(path, target / path.name)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> None:
    try:
        exp, options = parse_experiment(argv)
        # A kill (SIGTERM) stops the running stages too, like Ctrl-C, instead of leaving them orphaned.
        signal.signal(signal.SIGTERM, _interrupt)
        run_experiment(exp, **options)
    except PipelineError as err:
        sys.exit(f"subliminal-pl pipeline: {err}")
    except KeyboardInterrupt:
        sys.exit("subliminal-pl pipeline: interrupted; run the same command again to resume")


if __name__ == "__main__":
    main(sys.argv[1:])
