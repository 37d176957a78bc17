"""How every small command (not a Trainer run) builds its parser, so they all read the same way.

A small command is a module with `main(argv)` that `subliminal-pl` routes to (see `subliminal_pl.cli`) or that a
pipeline stage runs with `python -m`. Its parser comes from `command_parser`: jsonargparse (typed options, YAML
through `--config`, `class_path` objects), no options from environment variables, and the names of one voice:
`--output` for a file the command writes, `--output_dir` for a folder, `model_name_or_path` for a model.

This module imports nothing from the package, so any layer may use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser


def command_parser(prog: str | None, description: str, config: bool = True) -> ArgumentParser:
    """A jsonargparse parser for a small command or subcommand, with `--config FILE.yaml` unless `config=False`.

    Args:
        prog: the command as a user types it (e.g. "subliminal-pl toy-world"); None for a subcommand.
        description: one line for `--help`.
        config: add `--config` (a YAML of any of the options; later options override it).
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description, default_env=False)
    if config:
        parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    return parser
