"""The stage graph of an experiment, from its roles, and the manifest that tells the report what each model is."""

from __future__ import annotations

from subliminal_pl.experiments.defences import defend, detection_stages
from subliminal_pl.experiments.evaluation import mlp_stage, probe_stage, report_stage
from subliminal_pl.experiments.recipes import ModelRef, stage_dir
from subliminal_pl.experiments.spec import Experiment
from subliminal_pl.experiments.validate import validate
from subliminal_pl.pipeline import PipelineError, Stage
from subliminal_pl.report.manifest import Bases as ManifestBases
from subliminal_pl.report.manifest import Manifest
from subliminal_pl.toy.world import OPTIONAL_FIELDS

# Spec keys that do not change any result (left out of what the report records).
NOT_RECORDED = ("variants", "out_dir")
NOT_RECORDED_HARDWARE = ("jobs", "executor", "ray_address", "stage_cpus", "stage_memory_gb")
# Commands (module, subcommand) that run a model on the hardware profile's accelerator.
MODEL_COMMANDS = {
    ("subliminal_pl.cli", "fit"),
    ("subliminal_pl.cli", "predict"),
    ("subliminal_pl.stages", "probe"),
    ("subliminal_pl.models.defences", "mask"),
    ("subliminal_pl.models.defences", "paraphrase"),
}
# Spec keys recorded only when set (so experiments without them keep their report's hash).
RECORDED_WHEN_SET = ("defence", "detection")


def recorded_spec(exp: Experiment) -> dict:
    spec = {
        k: v
        for k, v in exp.spec.items()
        if k not in NOT_RECORDED and not (k in RECORDED_WHEN_SET and v is None)
    }
    if isinstance(spec.get("hardware"), dict):
        spec["hardware"] = {k: v for k, v in spec["hardware"].items() if k not in NOT_RECORDED_HARDWARE}
    # How students are run (grouped or one process each) gives the same results either way.
    if isinstance(spec.get("students"), dict):
        spec["students"] = {k: v for k, v in spec["students"].items() if k != "group"}
    bases = spec.get("bases")
    world = bases.get("init_args", {}).get("world") if isinstance(bases, dict) else None
    if isinstance(world, dict):
        # A world field added later, at its default, is the world as it was before: recorded the same way.
        world = {k: v for k, v in world.items() if OPTIONAL_FIELDS.get(k, object()) != v}
        spec["bases"] = {**bases, "init_args": {**bases["init_args"], "world": world}}
    return spec


def is_model_stage(stage: Stage) -> bool:
    return any(tuple(command[2:4]) in MODEL_COMMANDS for command in stage.commands if command[1:2] == ["-m"])


def build_stages(exp: Experiment, check: bool = True) -> tuple[list[Stage], Manifest]:
    """Every stage of the experiment, in a valid order, and its manifest; `check` validates the spec first."""
    if check:
        validate(exp)
    hw, bases = exp.hardware, exp.bases
    traits = [t.lower() for t in exp.traits]
    stages = list(bases.stages(hw))
    shared, controls = bases.shared, bases.controls

    teacher_stages, teachers = exp.teachers.build(traits, bases, hw)
    stages += teacher_stages

    carrier = exp.carrier
    if exp.defence is not None:
        problems = exp.defence.problems(carrier.source, exp.students.loss)
        if problems:
            raise PipelineError("; ".join(problems))
        exp.defence.adjust_carrier(carrier)
    sources = {"base": shared} if carrier.source == "base" else teachers
    data_stages, kept, data_stats = carrier.build(hw, sources, exp.steps, bases.answer_count, traits)
    stages += data_stages
    data = {t: kept["base" if carrier.source == "base" else t] for t in teachers}
    defence_stats: dict[str, str] = {}
    if exp.defence is not None:
        defence_stages, data, defence_stats = defend(
            exp.defence, hw, shared, teachers, exp.teachers.neutral, data, carrier.token_subset,
            exp.students.max_length,
        )  # fmt: skip
        stages += defence_stages

    # Detection reads only the teachers and their data: listed before the students, so it runs first.
    probes, probe_needs, audit = exp.probes, [], None
    if exp.detection is not None:
        detect, extra, probe_needs = detection_stages(
            exp.detection, bases, teachers, data, exp.students.loss, carrier.token_subset,
            carrier.format_check(bases.answer_count),
        )  # fmt: skip
        stages += detect
        probes, audit = [*exp.probes, *extra], f"{stage_dir('audit')}/audit.json"

    student_stages, entries, student_models = exp.students.build(
        hw, shared, controls, teachers, exp.teachers.neutral, data, carrier.token_subset
    )
    stages += student_stages

    # Probes: each model once per name (a teacher that is the base is probed as the base).
    models: dict[str, ModelRef] = {}
    for ref in [shared, *controls, *teachers.values()]:
        models.setdefault(ref.name, ref)
    format_check = list(models)
    models.update({name: ModelRef(name, path, stage=name) for name, path in student_models.items()})
    probe = probe_stage(models, format_check, probes, carrier.format_check(bases.answer_count), hw)
    probe.needs = sorted({*probe.needs, *probe_needs})
    stages.append(probe)

    mlp_results = None
    if exp.mlp_config:
        stages.append(mlp_stage(exp.mlp_config, hw))
        mlp_results = f"{stage_dir('mlp')}/logs/run/results.json"

    manifest = Manifest(
        traits=traits,
        bases=ManifestBases(same=shared.name, cross=[c.name for c in controls]),
        students=entries,
        probes=f"{stage_dir('probes')}/probes.json",
        title=exp.title,
        neutral=exp.teachers.neutral,
        teachers={t: ref.name for t, ref in teachers.items()},
        filter_stats=data_stats,
        mlp_results=mlp_results,
        config=recorded_spec(exp),
        defence=exp.defence.name if exp.defence is not None else None,
        defence_stats=defence_stats,
        audit=audit,
    )
    report_needs = ["probes", *(f"data-{s}" for s in sources)] + (["mlp"] if mlp_results else [])
    report_needs += [f"defend-{t}" for t in defence_stats] + (["audit"] if audit else [])
    stages.append(report_stage(manifest, report_needs))
    for stage in stages:
        stage.resources = hw.stage_resources(is_model_stage(stage))
    return stages, manifest
