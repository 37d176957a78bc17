"""The stages after training: probes on every model, the optional MLP side experiment, and the report.

`probes` runs `python -m subliminal_pl.stages probe`: every listed model once (teachers with a trait system
prompt behind it), every configured `Probe`, the carrier's format check on bases and teachers; it writes
`probes.json` in the probe results schema (`subliminal_pl.probes.results`). `report` runs
`python -m subliminal_pl.report` on the manifest (`subliminal_pl.report.manifest.Manifest`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from subliminal_pl.experiments.recipes import REPO_ROOT, Hardware, ModelRef, cli_command, module_command
from subliminal_pl.pipeline import PipelineError, Stage
from subliminal_pl.probes.run import PARTIAL_FILE
from subliminal_pl.report import code_hash
from subliminal_pl.report.manifest import Manifest
from subliminal_pl.stage_graph import PLACEHOLDER


def probe_stage(
    models: dict[str, ModelRef],
    format_check: list[str],
    probes: list[dict[str, Any]],
    format_keys: dict,
    hw: Hardware | None = None,
) -> Stage:
    """One process probes every model (a model shared by several names is listed once per name), on the
    hardware profile's device and weight dtype."""
    hw = hw or Hardware()
    config: dict[str, Any] = {
        "models": {name: ref.path for name, ref in models.items()},
        "system_prompts": {name: ref.system_prompt for name, ref in models.items() if ref.system_prompt},
        "probes": probes,
        "dtype": hw.dtype,
        "device": "cpu" if hw.accelerator == "cpu" else "auto",
    }
    if format_keys:
        config.update({"format_check": format_check, **format_keys})
    needs = {need for ref in models.values() for need in ref.needs}
    # Probes that read another stage's files (e.g. the in-context control reads a data stage's rows) need it.
    needs |= {m.group(1) for m in PLACEHOLDER.finditer(yaml.safe_dump(probes)) if m.group(1)}
    needs = sorted(needs)
    command = module_command(
        "subliminal_pl.stages", "probe", "--config", "{{dir}}/probe.yaml", "--output_dir", "{{dir}}"
    )
    return Stage(
        "probes",
        [command],
        needs=needs,
        files={"probe.yaml": yaml.safe_dump(config, sort_keys=False)},
        keep=[PARTIAL_FILE],  # the models probed before a failure are not probed again
    )


def mlp_stage(mlp_config: str, hw: Hardware) -> Stage:
    """The MLP auxiliary-logit experiment's own recipe, run on the experiment's hardware profile."""
    path = Path(mlp_config)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not path.is_file():
        raise PipelineError(f"mlp_config {mlp_config!r} not found")
    command = cli_command(
        "fit", "--config", "{{dir}}/mlp.yaml", "--trainer.logger.init_args.save_dir", "{{dir}}",
        "--trainer.logger.init_args.name", "logs", "--trainer.logger.init_args.version", "run",
        "--trainer.accelerator", hw.accelerator, "--trainer.devices", str(hw.devices),
        "--trainer.precision", hw.precision,
    )  # fmt: skip
    return Stage("mlp", [command], files={"mlp.yaml": path.read_text(encoding="utf-8")}, background=True)


def report_stage(manifest: Manifest, needs: list[str]) -> Stage:
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n"
    command = module_command(
        "subliminal_pl.report", "--manifest", "{{dir}}/manifest.json", "--output_dir", "{{dir}}"
    )
    return Stage(
        "report",
        [command],
        needs=sorted(set(needs)),
        config={"report_code": code_hash()},
        files={"manifest.json": text},
    )
