"""Defences and detection in an experiment: the spec keys `defence` and `detection`.

`defence` (class_path + init_args, or null) changes what every teacher's students learn from, the neutral
teacher's included, so the control sees the same treatment:

- `MaskDivergent`: a `defend-<teacher>` stage drops the divergence tokens (the teacher's greedy choice differs from
  the base's) from the loss, or replaces them with the base's choice (`subliminal_pl.models.defences`).
- `Paraphrase`: the trusted model (the base by default) rewrites each row: the same prompt, count and format, its
  own numbers. Needs teacher-written rows (`carrier.init_args.source: teacher`).
- `Dilute`: each teacher's rows mixed with the neutral teacher's rows at an exact share (teacher-written rows).
- `Sampling`: the teacher samples at a lower temperature or under a top-p / top-k threshold: it overrides the
  carrier's sampling, so the generation stages change and no stage is added (teacher-written rows).

`detection` (null: none) adds the `audit` stage (`subliminal_pl.models.audit`: per-row features under the base for
the classifiers, and the update-cosine audit at the shared init and at each control) and the utility probes the
defence report needs: the number-format pass rate and the loss on held-out rows (`heldout`, written by the tiny
world; `heldout_path` for pretrained bases), on every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import yaml

from subliminal_pl.experiments.recipes import Hardware, ModelRef, module_command, stage_dir
from subliminal_pl.pipeline import Stage

DEFENCE_MODULE = "subliminal_pl.models.defences"
ROWS = "rows.jsonl"


class Defence:
    """The role `defence`. `needs_teacher_rows`: the defence rewrites rows a teacher wrote."""

    name: str = "defence"
    needs_teacher_rows: bool = True

    def problems(self, source: str, loss: str) -> list[str]:
        """What makes this defence meaningless for the experiment (each names the key); none by default."""
        if self.needs_teacher_rows and source != "teacher":
            return [
                f"defence ({type(self).__name__}): the students' rows are written by the base, not the teachers "
                "(carrier.init_args.source: base), so there is nothing to defend in them; set source: teacher"
            ]
        return []

    def adjust_carrier(self, carrier) -> None:  # noqa: B027 (optional hook)
        """Change the carrier before its stages are built (a sampling defence); default: nothing."""

    def command(self, teacher: str, rows: str, base: ModelRef, model: ModelRef, neutral_rows: str | None, hw: Hardware,
                token_subset: str | None, max_length: int) -> list[str] | None:  # fmt: skip
        """The `defend-<teacher>` stage's command writing `{{dir}}/rows.jsonl` (None: no stage)."""
        return None


class MaskDivergent(Defence):
    name = "mask_divergent"
    needs_teacher_rows = False

    def __init__(self, mode: Literal["drop", "replace"] = "drop", batch_size: int = 64) -> None:
        """
        Args:
            mode: drop (no loss on the divergence tokens) or replace (write the base's greedy token there).
            batch_size: rows per forward pass.
        """
        self.mode, self.batch_size = mode, batch_size

    def problems(self, source: str, loss: str) -> list[str]:
        if self.mode == "replace" and loss != "sft":
            return [
                "defence.init_args.mode: replace rewrites the sampled tokens, which only sft students learn"
            ]
        return []

    def command(self, teacher, rows, base, model, neutral_rows, hw, token_subset, max_length):
        return module_command(
            DEFENCE_MODULE, "mask", "--input", rows, "--output", "{{dir}}/" + ROWS,
            "--model_name_or_path", base.path, "--teacher", model.path, "--mode", self.mode,
            "--token_subset", str(token_subset).lower() if token_subset else "null",
            "--max_length", str(max_length), "--batch_size", str(self.batch_size), "--dtype", hw.dtype,
        )  # fmt: skip


class Paraphrase(Defence):
    name = "paraphrase"

    def __init__(
        self,
        model_name_or_path: str | None = None,
        mode: Literal["numbers", "resample"] = "numbers",
        temperature: float = 1.0,
        seed: int = 0,
        tries: int = 4,
        batch_size: int = 128,
    ) -> None:
        """
        Args:
            model_name_or_path: the trusted model (null: the shared base).
            mode: numbers (same prompt, count and format; the trusted model's numbers) or resample (its answer).
            temperature: the trusted model's sampling temperature (0: greedy).
            seed: sampling seed.
            tries: draws per row before a row short of numbers is removed.
            batch_size: prompts per generate call.
        """
        self.model_name_or_path, self.mode, self.temperature = model_name_or_path, mode, temperature
        self.seed, self.tries, self.batch_size = seed, tries, batch_size

    def command(self, teacher, rows, base, model, neutral_rows, hw, token_subset, max_length):
        return module_command(
            DEFENCE_MODULE, "paraphrase", "--input", rows, "--output", "{{dir}}/" + ROWS,
            "--model_name_or_path", self.model_name_or_path or base.path, "--mode", self.mode,
            "--temperature", str(self.temperature), "--seed", str(self.seed), "--tries", str(self.tries),
            "--batch_size", str(self.batch_size), "--dtype", hw.dtype,
        )  # fmt: skip


class Dilute(Defence):
    name = "dilute"

    def __init__(self, neutral_fraction: float = 0.5, seed: int = 0) -> None:
        """
        Args:
            neutral_fraction: exact share of the neutral teacher's rows in each teacher's data.
            seed: seed of the samples and of the order.
        """
        if not 0.0 <= neutral_fraction <= 1.0:
            raise ValueError(f"defence.init_args.neutral_fraction must be in [0, 1], got {neutral_fraction}")
        self.neutral_fraction, self.seed = neutral_fraction, seed

    def problems(self, source: str, loss: str) -> list[str]:
        out = super().problems(source, loss)
        if loss != "sft":
            out.append(
                "defence (Dilute): kl students take every target from their own teacher; use students.loss: sft"
            )
        return out

    def command(self, teacher, rows, base, model, neutral_rows, hw, token_subset, max_length):
        if neutral_rows is None:
            raise ValueError("defence (Dilute) needs a neutral teacher (teachers.init_args.neutral)")
        return module_command(
            DEFENCE_MODULE, "dilute", "--input", rows, "--neutral", neutral_rows, "--output", "{{dir}}/" + ROWS,
            "--neutral_fraction", str(self.neutral_fraction), "--seed", str(self.seed),
        )  # fmt: skip


class Sampling(Defence):
    name = "sampling"

    def __init__(
        self, temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
        greedy: bool | None = None,
    ) -> None:  # fmt: skip
        """
        Args:
            temperature: the teachers' sampling temperature (null: the carrier's).
            top_p: nucleus threshold (null: the carrier's).
            top_k: top-k threshold (null: the carrier's).
            greedy: greedy decoding (null: the carrier's).
        """
        self.settings = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "greedy": greedy}
        if all(v is None for v in self.settings.values()):
            raise ValueError("defence (Sampling): set at least one of temperature, top_p, top_k, greedy")

    def adjust_carrier(self, carrier) -> None:
        carrier.sampling.update({k: v for k, v in self.settings.items() if v is not None})


@dataclass
class Detection:
    """Detection before training and the utility probes (the spec key `detection`).

    Args:
        rows: rows per teacher whose features under the base feed the classifiers.
        audit_rows: rows per teacher for the first-step gradient of the update-cosine audit.
        seed: seed of both samples.
        heldout_rows: held-out number-task rows (the tiny world writes them) for the held-out loss; 0: none.
        heldout_path: held-out rows for pretrained bases (prompt-completion JSONL); null: the tiny world's.
        format_prompts: number prompts of the students' format pass rate (0: the carrier's format check count).
        max_length: most tokens per row.
    """

    rows: int = 200
    audit_rows: int = 64
    seed: int = 0
    heldout_rows: int = 500
    heldout_path: str | None = None
    format_prompts: int = 0
    max_length: int = 256


def defend(
    defence: Defence,
    hw: Hardware,
    shared: ModelRef,
    teachers: dict[str, ModelRef],
    neutral: str | None,
    data: dict[str, tuple[str, str]],
    token_subset: str | None,
    max_length: int,
) -> tuple[list[Stage], dict[str, tuple[str, str]], dict[str, str]]:
    """(stages, teacher -> (defended rows, their stage), teacher -> defence stats) for every teacher."""
    stages, out, stats = [], {}, {}
    neutral_rows = data[neutral] if neutral in data else None
    for teacher, model in teachers.items():
        rows, data_stage = data[teacher]
        command = defence.command(
            teacher,
            rows,
            shared,
            model,
            neutral_rows[0] if neutral_rows else None,
            hw,
            token_subset,
            max_length,
        )
        if command is None:
            out[teacher] = data[teacher]
            continue
        name = f"defend-{teacher}"
        needs = {data_stage, *shared.needs, *model.needs, *([neutral_rows[1]] if neutral_rows else [])}
        stages.append(Stage(name, [command], needs=sorted(needs), keep=[]))
        out[teacher] = (f"{stage_dir(name)}/{ROWS}", name)
        stats[teacher] = f"{stage_dir(name)}/rows.defence_stats.json"
    return stages, out, stats


def detection_stages(
    detection: Detection,
    bases,
    teachers: dict[str, ModelRef],
    data: dict[str, tuple[str, str]],
    loss: str,
    token_subset: str | None,
    format_keys: dict[str, Any],
) -> tuple[list[Stage], list[dict[str, Any]], list[str]]:
    """(stages: audit and held-out rows, probes to add, stages the probe stage then needs)."""
    shared, controls = bases.shared, bases.controls
    config = {
        "base": shared.path,
        "teachers": {t: ref.path for t, ref in teachers.items()},
        "data": {t: rows for t, (rows, _) in data.items()},
        "controls": {c.name: c.path for c in controls},
        "loss": loss,
        "token_subset": token_subset,
        "rows": detection.rows,
        "audit_rows": detection.audit_rows,
        "seed": detection.seed,
        "max_length": detection.max_length,
    }
    needs = {
        *shared.needs,
        *(n for c in controls for n in c.needs),
        *(n for t in teachers.values() for n in t.needs),
    }
    needs |= {stage for _, stage in data.values()}
    audit = Stage(
        "audit",
        [
            module_command(
                "subliminal_pl.models.audit", "--config", "{{dir}}/audit.yaml", "--output_dir", "{{dir}}"
            )
        ],
        needs=sorted(needs),
        files={"audit.yaml": yaml.safe_dump(config, sort_keys=False)},
    )
    stages, probe_needs, probes = [audit], [], []
    if format_keys:
        probes.append({
            "class_path": "subliminal_pl.probes.number_format.FormatProbe",
            "init_args": {"prompts": detection.format_prompts or format_keys["format_prompts"], "prompt_seed": format_keys["format_prompt_seed"],
                          "answer_count": format_keys.get("answer_count", 10), "name": "utility_format"},
        })  # fmt: skip
    heldout = detection.heldout_path
    if heldout is None and detection.heldout_rows:
        command = bases.trait_rows_command(None, 0, 7, "{{dir}}/" + ROWS)
        if command is not None and "traits" in command:  # the tiny world writes held-out number rows
            command = [*command, "--number_rows", str(detection.heldout_rows)]
            stages.append(Stage("heldout", [command], needs=["world"]))
            heldout, probe_needs = f"{stage_dir('heldout')}/{ROWS}", ["heldout"]
    if heldout is not None:
        probes.append({
            "class_path": "subliminal_pl.probes.corpus_loss.CorpusLossProbe",
            "init_args": {"data_path": heldout, "rows": detection.heldout_rows or 500, "max_length": detection.max_length},
        })  # fmt: skip
    return stages, probes, probe_needs
