"""Pipeline stage entry points that are not a Trainer run: filtering a raw file, probing a set of models.

    python -m subliminal_pl.stages filter --config filters.yaml --input raw.jsonl --output kept.jsonl
    python -m subliminal_pl.stages probe --config probe.yaml --output_dir DIR

`filter` applies row filters (class_path + init_args, as in a student recipe) and writes the kept rows and
`<output stem>.filter_stats.json` (counts per reject reason). `probe` runs `Probe` objects on every listed
model and writes `DIR/probes.json` in the one results schema (`subliminal_pl.probes.run.probe_models` documents
the config keys).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from subliminal_pl.data.jsonl import read_jsonl, write_json_atomic, write_jsonl_atomic


def filter_file(input_path: str | Path, output_path: str | Path, filters: list) -> dict[str, Any]:
    """Filter a raw JSONL file into `output_path`; returns (and writes beside it) the filter stats."""
    from subliminal_pl.data.filters import apply_filters, filter_specs

    output_path = Path(output_path)
    kept, stats = apply_filters(read_jsonl(input_path), filters)
    stats = {"raw_path": str(input_path), "filtered_path": str(output_path), **stats}
    stats["filter_config"] = filter_specs(filters)
    write_jsonl_atomic(output_path, kept)
    write_json_atomic(output_path.with_name(output_path.stem + ".filter_stats.json"), stats)
    return stats


def main(argv: list[str]) -> None:
    from jsonargparse import ActionConfigFile, ArgumentParser

    from subliminal_pl.data.filters import RowFilter

    filt = ArgumentParser(description="Filter a raw JSONL file with row filters.", default_env=False)
    filt.add_argument("--config", action=ActionConfigFile)
    filt.add_argument("--input", type=str, required=True, help="raw JSONL (not modified)")
    filt.add_argument("--output", type=str, required=True, help="JSONL of the kept rows")
    filt.add_argument("--filters", type=list[RowFilter], default=[], help="filters, class_path + init_args")
    from subliminal_pl.probes.run import probe_models

    probe = ArgumentParser(
        description="Run Probe objects on saved models and write probes.json.", default_env=False
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
        sub = parser.instantiate(args)["filter"]
        stats = filter_file(sub.input, sub.output, sub.filters)
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
