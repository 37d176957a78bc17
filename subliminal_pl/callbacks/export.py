"""Export the trained student at the end of fit, the Hugging Face way, with its config and a model card.

`<output_dir>/` (default `<run dir>/export`) holds the adapter (LoRA) or the full model from `save_pretrained`,
the tokenizer, `run_config.yaml` (the CLI's saved config) and `README.md` (base model, teacher, filters, seeds,
library versions). It loads back with transformers / PEFT alone:

    model = AutoModelForCausalLM.from_pretrained(BASE); model = PeftModel.from_pretrained(model, EXPORT)   # LoRA
    model = AutoModelForCausalLM.from_pretrained(EXPORT)                                                   # full

With `merged: true` a LoRA run also writes `<output_dir>/merged/`, the base with the adapter folded in.

The base is recorded so that the export loads from any working directory: a local base directory as an absolute
path (in `adapter_config.json` and the card; the card also gives the path as configured), a hub id as itself.
The card lists the filters that produced the training rows, read from the filter stats files written beside them
(a pipeline filter stage's `<kept>.filter_stats.json` and the DataModule's own), with their kept counts.
"""

from __future__ import annotations

import contextlib
import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from subliminal_pl.data.jsonl import iter_jsonl, write_json_atomic, write_text_atomic

LIBRARIES = ("subliminal-pl", "torch", "transformers", "peft", "lightning", "deepspeed")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def _gathered(model):
    """Under DeepSpeed ZeRO-3 parameters are partitioned across ranks: gather them (on every rank) to save."""
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


def _teachers_in(path: Path, limit: int = 5) -> list[str]:
    """Distinct `teacher` values of a data file (the rows the teacher wrote), at most `limit`."""
    if not path.is_file():
        return []
    found: list[str] = []
    for _, row in iter_jsonl(path, drop_partial_tail=True):
        teacher = row.get("teacher")
        if isinstance(teacher, str) and teacher not in found:
            found.append(teacher)
            if len(found) >= limit:
                break
    return found


def _describe_filter(spec: Any) -> str:
    """`NumberSequenceFilter(max_count=10, ...)` from a `{class_path, init_args}` spec."""
    if not isinstance(spec, dict) or "class_path" not in spec:
        return str(spec)
    args = ", ".join(f"{key}={value!r}" for key, value in (spec.get("init_args") or {}).items())
    return f"{spec['class_path'].rsplit('.', 1)[-1]}({args})"


# A snapshot folder of the Hugging Face hub cache: .../models--ORG--NAME/snapshots/REVISION
HUB_CACHE_SNAPSHOT = re.compile(r"models--(?P<repo>[^/]+)/snapshots/[^/]+/?$")


def base_model_reference(name_or_path: str) -> tuple[str, str | None]:
    """(reference to record, hub id or None) for a base model: a local path made absolute, a hub id unchanged."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return name_or_path, name_or_path
    absolute = path.resolve()
    match = HUB_CACHE_SNAPSHOT.search(absolute.as_posix())
    return str(absolute), match["repo"].replace("--", "/") if match else None


def _stats_files(datamodule: Any) -> list[Path]:
    """Filter stats of the training rows: beside the data file (written by a filter stage), then the DataModule's."""
    data_path = (getattr(datamodule, "hparams", None) or {}).get("data_path")
    found = []
    if data_path:
        beside = Path(data_path).with_name(Path(data_path).name.removesuffix(".jsonl") + ".filter_stats.json")
        found.append(beside)
    output_files = getattr(datamodule, "output_files", None)
    if callable(output_files):
        with contextlib.suppress(Exception):  # the card must not fail the export; this entry is then left out
            found.append(Path(output_files().stats))
    return [path for path in found if path.is_file()]


def data_provenance(datamodule: Any) -> list[str]:
    """One line per filtering that produced the training rows: its filters and kept count, from its stats file."""
    lines = []
    for path in _stats_files(datamodule):
        with contextlib.suppress(OSError, ValueError):
            stats = json.loads(path.read_text())
            specs = stats.get("steps", stats.get("filter_config")) or []
            steps = "; ".join(_describe_filter(spec) for spec in specs) or "no filters"
            lines.append(
                f"{steps}: kept {stats.get('kept')} of {stats.get('total')} rows (`{path.resolve()}`)"
            )
    return lines


class ExportModel(Callback):
    """At the end of fit, save the student (`pl_module.model`, `pl_module.tokenizer`) for use outside Lightning."""

    def __init__(self, output_dir: str | None = None, merged: bool = False) -> None:
        """
        Args:
            output_dir: where to write; default `<run dir>/export` (the logger's version folder).
            merged: for LoRA students, also write the base model with the adapter merged in (`<output_dir>/merged`).
        """
        self.output_dir = output_dir
        self.merged = merged

    def resolve_dir(self, trainer: Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "export"

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        model = pl_module.model
        out = self.resolve_dir(trainer)
        is_adapter = hasattr(model, "peft_config")
        # Every rank enters the gather (a collective under ZeRO-3); rank zero writes.
        with _gathered(model):
            if trainer.is_global_zero:
                out.mkdir(parents=True, exist_ok=True)
                model.save_pretrained(out)
                pl_module.tokenizer.save_pretrained(out)
        if trainer.is_global_zero:
            if is_adapter:
                self._record_base(out / "adapter_config.json", pl_module.hparams.model_name_or_path)
            config = self._copy_run_config(trainer, out)
            write_text_atomic(out / "README.md", self.model_card(trainer, pl_module, config, is_adapter, out))
            if self.merged:
                if is_adapter:
                    self._write_merged(pl_module, out)
                else:
                    rank_zero_warn(
                        "ExportModel: merged=True only applies to LoRA students; the full model is saved"
                    )
            rank_zero_info(f"[export] {'adapter' if is_adapter else 'model'} and tokenizer written to {out}")
        trainer.strategy.barrier()

    @staticmethod
    def _record_base(adapter_config: Path, name_or_path: str) -> None:
        """Point the adapter at its base by an absolute path (or hub id), not one relative to this directory."""
        config = json.loads(adapter_config.read_text())
        config["base_model_name_or_path"] = base_model_reference(str(name_or_path))[0]
        write_json_atomic(adapter_config, config)

    @staticmethod
    def _copy_run_config(trainer: Trainer, out: Path) -> dict[str, Any]:
        """Copy the CLI's saved config.yaml (if any) as run_config.yaml; return it parsed."""
        source = Path(trainer.log_dir or "") / "config.yaml"
        if not source.is_file():
            return {}
        text = source.read_text()
        write_text_atomic(out / "run_config.yaml", text)
        return yaml.safe_load(text) or {}

    def _write_merged(self, pl_module: LightningModule, out: Path) -> None:
        from subliminal_pl.models.loading import load_causal_lm

        # A fresh base with the exported adapter, so the trained module itself is left untouched.
        merged = load_causal_lm(
            pl_module.hparams.model_name_or_path, dtype=pl_module.hparams.dtype, adapter_path=out
        )
        merged.save_pretrained(out / "merged")
        pl_module.tokenizer.save_pretrained(out / "merged")

    @staticmethod
    def model_card(
        trainer: Trainer, pl_module: LightningModule, config: dict[str, Any], is_adapter: bool, out: Path
    ) -> str:
        """A short README.md: what was trained from what, with which data, filters and seeds, and how to load it."""
        hp = pl_module.hparams
        base, hub_id = base_model_reference(str(hp.model_name_or_path))
        if hub_id == base:
            base_line = f"- Base model: `{base}` (Hugging Face hub id)"
        else:
            hub = f"; hub id `{hub_id}`" if hub_id else ""
            base_line = (
                f"- Base model: `{base}` (local directory, configured as `{hp.model_name_or_path}`{hub})"
            )
        out = out.resolve()
        data = dict(getattr(trainer.datamodule, "hparams", {}) or {})
        data_path = data.get("data_path")
        teachers = _teachers_in(Path(data_path)) if data_path else []
        if is_adapter:
            targets = hp.get("lora_target_modules")
            method = (
                f"LoRA r={hp.get('lora_rank')}, alpha={hp.get('lora_alpha')}, dropout={hp.get('lora_dropout')}, "
                f"targets={targets}"
            )
        else:
            method = "full fine-tuning"
        loss = hp.get("loss", "sft")
        if loss != "sft":
            teacher_model = hp.get("kl_teacher") or hp.get("model_name_or_path")
            adapter = hp.get("kl_teacher_adapter")
            loss += f" (KL teacher {teacher_model}{' + adapter ' + adapter if adapter else ''}"
            loss += f", token subset {hp.get('kl_token_subset')})" if hp.get("kl_token_subset") else ")"
        provenance = data_provenance(trainer.datamodule)
        if provenance:
            filters = "\n" + "\n".join(f"  - {line}" for line in provenance)
        else:
            filters = (
                "; ".join(_describe_filter(spec) for spec in data.get("steps") or data.get("filters") or [])
                or "none"
            )
        seeds = {"seed_everything": config.get("seed_everything"), "data seed": data.get("seed")}
        versions = ", ".join(f"{k} {v}" for k, v in library_versions().items())
        front = {
            "base_model": hub_id or base,
            "library_name": "peft" if is_adapter else "transformers",
        }
        lines = [
            "---",
            yaml.safe_dump(front, sort_keys=False).strip(),
            "tags: [subliminal-learning, subliminal-pl]",
            "---",
            "",
            "# Student model (subliminal-pl)",
            "",
            base_line,
            f"- Fine-tuning: {method}",
            f"- Loss: {loss}",
            f"- Training data: `{data_path}`" if data_path else "- Training data: (not recorded)",
            f"- Teacher(s) that wrote the data: {', '.join(teachers) if teachers else '(not recorded)'}",
            f"- Data steps that produced the training rows (filters, transforms): {filters}",
            f"- Seeds: {', '.join(f'{k} {v}' for k, v in seeds.items())}",
            f"- Trained: {trainer.global_step} optimiser steps, {trainer.current_epoch} epochs",
            f"- Libraries: {versions}",
            "",
            "## Load",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
        ]
        if is_adapter:
            lines += [
                "from peft import PeftModel",
                f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "{out}")',
            ]
        else:
            lines += [f'model = AutoModelForCausalLM.from_pretrained("{out}")']
        lines += [f'tokenizer = AutoTokenizer.from_pretrained("{out}")', "```", ""]
        lines += [
            "`run_config.yaml` is the full run config: `subliminal-pl fit --config run_config.yaml` reruns it."
        ]
        return "\n".join(lines) + "\n"
