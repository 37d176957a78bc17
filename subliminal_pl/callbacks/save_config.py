"""The CLI's config saver: a run may be started again in place from its own saved config.

Lightning's `SaveConfigCallback` refuses to start when `<log_dir>/config.yaml` exists, which stops a run re-run
from its saved config (the logger's folder is fixed, e.g. `version: run`) and a resume with `--ckpt_path last`
into the same folder. This saver leaves an identical saved config as it is, and otherwise keeps the earlier one
as `config.<n>.yaml` (the first free n) before writing this run's as `config.yaml`: no config is ever lost, and
`config.yaml` is always the latest run's.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info


def archive_path(config_path: Path) -> Path:
    """`config.<n>.yaml` beside `config_path`, for the first n >= 1 not taken."""
    n = 1
    while (candidate := config_path.with_name(f"{config_path.stem}.{n}{config_path.suffix}")).exists():
        n += 1
    return candidate


class RunConfigSaver(SaveConfigCallback):
    """Saves the run config to the log dir; an existing different config is kept as `config.<n>.yaml`."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved or not self.save_to_log_dir or self.multifile:
            super().setup(trainer, pl_module, stage)
            return
        log_dir = trainer.log_dir  # a collective: every rank asks
        if trainer.is_global_zero and log_dir is not None:
            config_path = Path(log_dir) / self.config_filename
            if config_path.is_file():
                saved = yaml.safe_load(config_path.read_text())
                current = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
                if saved != current:
                    kept = archive_path(config_path)
                    config_path.rename(kept)
                    rank_zero_info(f"[config] {config_path} held another run's config: kept as {kept}")
        # Rank zero has made room (or found the same config): writing config.yaml now overwrites nothing else.
        self.overwrite = True
        super().setup(trainer, pl_module, stage)
