"""Pipeline stage entry points that are not a Trainer run: preparing a raw file, probing a set of models.

    python -m subliminal_pl.stages filter --config steps.yaml --input raw.jsonl --output kept.jsonl
    python -m subliminal_pl.stages probe --config probe.yaml --output_dir DIR

`filter` applies data steps (`steps:`, a list of filters and transforms by class_path + init_args, as in a
student recipe) through `subliminal_pl.data.steps.prepare_file`, the route the student DataModule takes, and
writes the rows that come out and `<output stem>.filter_stats.json` (counts per reject reason and per step).
`probe` runs `Probe` objects on every listed model and writes `DIR/probes.json` in the one results schema
(`subliminal_pl.probes.run.probe_models` documents the config keys).
"""

from __future__ import annotations

import inspect


def main(argv: list[str]) -> None:
    from jsonargparse import ArgumentParser

    from subliminal_pl.commands import command_parser
    from subliminal_pl.data.steps import DataStep, prepare_file
    from subliminal_pl.probes.judges import JudgeError
    from subliminal_pl.probes.run import probe_models

    filt = command_parser(None, "Apply data steps (filters and transforms, in order) to a raw JSONL file.")
    filt.add_argument("--input", type=str, required=True, help="raw JSONL (only read)")
    filt.add_argument("--output", type=str, required=True, help="JSONL of the rows the steps let through")
    filt.add_argument(
        "--steps", type=list[DataStep], default=[], help="filters and transforms, class_path + init_args"
    )
    probe = command_parser(None, "Run Probe objects on saved models and write probes.json.")
    probe.add_function_arguments(probe_models)

    parser = ArgumentParser(
        prog="python -m subliminal_pl.stages", description=__doc__.splitlines()[0], default_env=False
    )
    commands = parser.add_subcommands()
    commands.add_subcommand("filter", filt)
    commands.add_subcommand("probe", probe)
    args = parser.parse_args(argv)
    if args.subcommand == "filter":
        sub = parser.instantiate(args)["filter"]
        try:
            stats = prepare_file(sub.input, sub.output, sub.steps)
        except JudgeError as err:  # a judge filter's failure, named with the file it was filtering
            raise JudgeError(f"{sub.input}: {err}") from err
        print(
            f"kept {stats['kept']} of {stats['total']} rows ({stats['kept_fraction']:.1%}); reasons {stats['reasons']}"
        )
        return
    sub = parser.instantiate(args)["probe"]
    options = {k: sub[k] for k in inspect.signature(probe_models).parameters}
    print(f"wrote {probe_models(**options)}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
