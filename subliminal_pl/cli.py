"""The `subliminal-pl` entry point.

Trainer commands (fit / validate / test / predict) go to a LightningCLI in subclass mode: a YAML names the
LightningModule and LightningDataModule by `class_path` + `init_args`. Commands that are not one Trainer call
(a multi-stage pipeline, the theory check, reports) are routed to their own modules, imported only when used
because importing Lightning alone takes seconds.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

# Each extra command: module with a `main(argv)` function, and a one-line description for the overview.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "export-trl": ("subliminal_pl.data.trl", "write rows in TRL's conversational prompt-completion form"),
    "prompts": ("subliminal_pl.data.prompts", "write seeded number-sequence prompts to JSONL"),
    "fit-group": ("subliminal_pl.fit_group", "train several fit recipes in one process, one after another"),
    "pipeline": (
        "subliminal_pl.experiments.command",
        "run a multi-stage experiment (cached, resumable) and write its report",
    ),
    "theory-check": ("subliminal_pl.theory", "one-step check of the theorem behind subliminal learning"),
    "toy-world": (
        "subliminal_pl.toy.world",
        "write the embedded tiny world: tokenizer, corpus, trait rows, inits",
    ),
    "trait-rows": (
        "subliminal_pl.probes.trait_rows",
        "write Q/A rows that teach a trait (fine-tuned teacher)",
    ),
}

TRAINER_COMMANDS = {
    "fit": "train a model (student distillation, fine-tuned teacher, MLP experiment) from a YAML recipe",
    "validate": "run validation, e.g. trait probes on a model or adapter without training",
    "test": "run the test loop, e.g. trait probes on a model or adapter without training",
    "predict": "run predict_step, e.g. teacher generation that writes JSONL rows",
}


def overview() -> str:
    lines = [
        "usage: subliminal-pl COMMAND [--config RECIPE.yaml ...] [--key value ...]",
        "",
        "Run subliminal-learning experiments: teachers write trait-free data, filters clean it, students that",
        "share the teacher's initial weights are trained on it, and trait probes report whether the trait moved.",
        "",
        "Trainer commands (LightningCLI; `subliminal-pl COMMAND --help` lists every option):",
    ]
    lines += [f"  {name:<14}{text}" for name, text in TRAINER_COMMANDS.items()]
    if EXTRA_COMMANDS:
        lines += ["", "Other commands:"]
        lines += [f"  {name:<14}{text}" for name, (_, text) in sorted(EXTRA_COMMANDS.items())]
    lines += [
        "",
        "Examples:",
        "  subliminal-pl fit --config configs/mlp/aux_digits.yaml",
        "  subliminal-pl fit --config configs/trainer/cpu.yaml --config RECIPE.yaml --print_config",
        "  subliminal-pl pipeline --config configs/toy/demo.yaml",
    ]
    return "\n".join(lines)


def build_cli(args: Sequence[str] | None = None, run: bool = True):
    """Build (and by default run) the LightningCLI; `args=None` parses sys.argv."""
    # Project defaults: CSV logs under runs/, a Rich bar, and plain progress lines for non-terminals.
    from lightning.pytorch.cli import LightningCLI

    from subliminal_pl.callbacks.progress import ProgressLog
    from subliminal_pl.callbacks.save_config import RunConfigSaver

    class SubliminalCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.set_defaults(
                {
                    "trainer.logger": {
                        "class_path": "lightning.pytorch.loggers.CSVLogger",
                        "init_args": {"save_dir": "runs", "name": "lightning_logs"},
                    },
                    "trainer.callbacks": [{"class_path": "lightning.pytorch.callbacks.RichProgressBar"}],
                }
            )

    return SubliminalCLI(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        # Optimisers and schedulers are init arguments of each module (injected callables), so a scheduler
        # can step per optimiser step and size itself from the trainer.
        auto_configure_optimizers=False,
        # Re-running a saved config in place is allowed: a different earlier config is kept as config.<n>.yaml.
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": False},
        trainer_defaults={"callbacks": [ProgressLog()]},
        parser_kwargs={"description": overview(), "default_env": False},
        args=list(args) if args is not None else None,
        run=run,
    )


def main(argv: Sequence[str] | None = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview())
        return
    if argv[0] == "fit-group":
        # The group runner trains each member through this CLI, in this process.
        from subliminal_pl.fit_group import main as fit_group_main

        fit_group_main(argv[1:], fit=lambda recipe: main(["fit", "--config", str(recipe)]))
        return
    if argv[0] in EXTRA_COMMANDS:
        module_name, _ = EXTRA_COMMANDS[argv[0]]
        importlib.import_module(module_name).main(argv[1:])
        return
    if argv[0] not in TRAINER_COMMANDS and not argv[0].startswith("-"):
        known = ", ".join([*TRAINER_COMMANDS, *sorted(EXTRA_COMMANDS)])
        sys.exit(f"subliminal-pl: unknown command {argv[0]!r} (known: {known}); see `subliminal-pl --help`")
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        if from_command_line:
            build_cli()
            return
        # Called in-process (tests, pipeline): present argv as the command line, which LightningCLI parses.
        saved = sys.argv
        sys.argv = [saved[0] if saved else "subliminal-pl", *argv]
        try:
            build_cli()
        finally:
            sys.argv = saved
    except SIGTERMException:
        # Lightning ends a run on SIGTERM with SystemExit() (status 0); a stopped run must not read as finished.
        sys.exit(128 + signal.SIGTERM)
    except Exception as err:
        line = missing_model_line(err, argv)
        if line is None:
            raise
        sys.exit(line)


def missing_model_line(err: BaseException, argv: Sequence[str]) -> str | None:
    """One line for a model that cannot be loaded (the argument, its value, what to do), or None otherwise.

    The loader's error arrives wrapped (jsonargparse, Lightning); the argument is found by its value on the
    command line, else in the --config files (the last one that sets it).
    """
    from subliminal_pl.data.hub import ModelNotAvailableError

    while err is not None and not isinstance(err, ModelNotAvailableError):
        err = err.__cause__ or err.__context__
    if err is None:
        return None
    value = getattr(err, "name_or_path", None)
    keys = _arguments_holding(value, argv) if value is not None else []
    argument = " / ".join(f"--{key}={value}" for key in keys) if keys else f"a model argument ({value!r})"
    return f"subliminal-pl {argv[0]}: cannot use {argument}: {' '.join(str(err).split())}"


def _arguments_holding(value: str, argv: Sequence[str]) -> list[str]:
    """Dotted keys set to `value` in argv (`--key value` / `--key=value`), then in the --config YAML files."""
    import yaml

    keys: list[str] = []
    configs = []
    for i, arg in enumerate(argv):
        key, eq, inline = arg.partition("=")
        given = inline if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        if key == "--config" and given:
            configs.append(given)
        elif key.startswith("--") and given == value:
            keys.append(key[2:])

    def find(node, prefix: str) -> None:
        children = (
            node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        )
        for name, child in children:
            find(child, f"{prefix}{name}.")
        if node == value and prefix[:-1] not in keys:
            keys.append(prefix[:-1])

    for config in configs:
        try:
            find(yaml.safe_load(Path(config).read_text(encoding="utf-8")), "")
        except (OSError, yaml.YAMLError):
            continue
    return keys


if __name__ == "__main__":
    main()
