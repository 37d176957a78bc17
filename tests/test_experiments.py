"""The experiment engine: spec parsing, the stage graph each role builds, the hardware profile, sweeps, and the
checks that refuse a bad spec before any stage starts (each naming its key)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from subliminal_pl.experiments.build import build_stages
from subliminal_pl.experiments.command import parse_experiment, plan, run_experiment, variant_experiments
from subliminal_pl.pipeline import PipelineError, stage_hashes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO = str(CONFIGS / "toy" / "demo.yaml")
PAPER = str(CONFIGS / "paper" / "owl_numbers_qwen25_7b.yaml")


def spec_file(tmp_path: Path, text: str, name: str = "over.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def kinds(stages) -> Counter:
    return Counter(s.name.split("-")[0] for s in stages)


def recipes(stages, prefix: str) -> dict[str, dict]:
    return {s.name: yaml.safe_load(s.files["recipe.yaml"]) for s in stages if s.name.startswith(prefix)}


def test_demo_builds_every_kind_of_stage_with_its_manifest():
    exp, options = parse_experiment(["--config", DEMO])
    assert options == {"dry_run": False, "in_process": False}
    stages, manifest = build_stages(exp)
    # 4 traits + neutral; 4 same-init and 2 cross-init students each.
    assert kinds(stages) == {
        "world": 1, "base": 2, "teacher": 5, "generate": 1, "data": 1,
        "student": 20, "cross": 10, "probes": 1, "mlp": 1, "report": 1,
    }  # fmt: skip
    assert manifest.traits == ["owl", "dolphin", "eagle", "wolf"] and manifest.neutral == "neutral"
    assert (manifest.bases.same, manifest.bases.cross) == ("base-s0", ["base-s1"])
    assert manifest.teachers["owl"] == "teacher-owl"
    assert Counter(s.kind for s in manifest.students) == {"same": 20, "cross": 10}
    assert set(manifest.filter_stats) == {"base"}
    probe = yaml.safe_load(next(s for s in stages if s.name == "probes").files["probe.yaml"])
    assert probe["format_check"] == ["base-s0", "base-s1", *(f"teacher-{t}" for t in manifest.trait_teachers)]
    assert len(probe["models"]) == 2 + 5 + 30 and probe["system_prompts"] == {}
    assert probe["probes"][0]["class_path"] == "subliminal_pl.probes.logprob.LogProbProbe"
    # The data stage applies the carrier's filters (then the spec's steps) to the base's raw rows.
    steps = yaml.safe_load(next(s for s in stages if s.name == "data-base").files["steps.yaml"])
    assert [s["class_path"].rsplit(".", 1)[1] for s in next(iter(steps.values()))] == ["NumberSequenceFilter"]


def test_the_hardware_profile_sets_every_machine_setting(tmp_path):
    over = spec_file(
        tmp_path,
        "hardware: {accelerator: gpu, devices: 2, precision: bf16-mixed, generation_precision: bf16-true,\n"
        "  dtype: bfloat16, strategy: deepspeed_stage2, micro_batch_size: 4}\n",
    )
    exp, _ = parse_experiment(["--config", DEMO, "--config", over])
    stages, _ = build_stages(exp)
    fits = recipes(stages, ("base-", "teacher-", "student-", "cross-"))
    assert len(fits) == 2 + 5 + 30
    for name, recipe in fits.items():
        trainer = recipe["trainer"]
        assert (trainer["accelerator"], trainer["devices"], trainer["precision"]) == ("gpu", 2, "bf16-mixed")
        assert trainer["strategy"]["class_path"] == "lightning.pytorch.strategies.DeepSpeedStrategy"
        assert trainer["strategy"]["init_args"]["stage"] == 2
        assert recipe["model"]["init_args"]["dtype"] == "bfloat16"
        # The recipe's batch is the effective one: 4 rows x 2 devices x accumulation.
        effective = {"base": 64, "teacher": 32, "student": 16, "cross": 16}[name.split("-")[0]]
        assert recipe["data"]["init_args"]["batch_size"] == 4
        assert trainer["accumulate_grad_batches"] == effective // 8, name
    generate = recipes(stages, "generate-")["generate-base"]
    assert generate["trainer"]["precision"] == "bf16-true" and "strategy" not in generate["trainer"]
    assert generate["model"]["init_args"]["dtype"] == "bfloat16"
    # No builder falls back to its own machine settings.
    texts = [
        " ".join([*s.files.values(), *(" ".join(c) for c in s.commands)]) for s in stages if s.name != "mlp"
    ]
    assert not [t for t in texts if "32-true" in t or "accelerator: cpu" in t]
    mlp = next(s for s in stages if s.name == "mlp").commands[0]
    assert mlp[mlp.index("--trainer.accelerator") + 1] == "gpu" and "bf16-mixed" in mlp
    bad = spec_file(tmp_path, "hardware: {micro_batch_size: 3}\n", "bad.yaml")
    exp, _ = parse_experiment(["--config", DEMO, "--config", bad])
    with pytest.raises(PipelineError, match=r"bases.pretrain.batch_size=64 is not a multiple"):
        build_stages(exp)


def test_sweep_variants_deep_merge_into_the_demo_and_share_stages():
    exp, _ = parse_experiment(["--config", DEMO, "--config", str(CONFIGS / "toy" / "sweep.yaml")])
    variants = variant_experiments(exp)
    assert "default" in variants and len(variants) == len(exp.variants)
    full = variants["teacher_full"]
    # Only the overridden keys change: the teacher keeps the demo's steps and batch.
    fit = full.teachers.fit
    assert (fit.finetune, fit.lr, fit.steps, fit.batch_size) == ("full", 0.001, 60, 32)
    assert full.students == variants["default"].students
    assert (
        variants["sft_sampled"].carrier.source == "teacher" and variants["sft_sampled"].students.loss == "sft"
    )
    hashes = {
        name: stage_hashes(build_stages(v)[0])
        for name, v in variants.items()
        if name in ("default", "teacher_full", "wide")
    }
    assert hashes["default"]["base-s0"] == hashes["teacher_full"]["base-s0"] != hashes["wide"]["base-s0"]
    assert hashes["default"]["teacher-owl"] != hashes["teacher_full"]["teacher-owl"]
    exp.variants = {"typo": {"teachers": {"init_args": {"fitt": {"steps": 3}}}}}
    with pytest.raises(PipelineError, match="sweep variant 'typo'"):
        variant_experiments(exp)


def test_heldout_worlds_keep_their_pre_registered_worlds_traits_and_seeds():
    exp, _ = parse_experiment(["--config", DEMO, "--config", str(CONFIGS / "toy" / "heldout.yaml")])
    v = variant_experiments(exp)
    a, b = v["worldA_default"], v["worldB_sft"]
    assert (a.bases.world.seed, a.bases.seed, a.bases.cross_seeds) == (101, 10, [11])
    assert a.traits == ["cat", "fox", "penguin", "whale", "otter"]
    assert (a.students.seeds, a.students.cross_seeds, a.students.loss) == ([0, 1, 2, 3], [0, 1], "kl")
    assert (b.bases.world.seed, b.bases.seed, b.traits[0], b.carrier.source, b.carrier.prompts) == (
        202, 20, "lion", "teacher", 8000,
    )  # fmt: skip
    assert (b.students.loss, b.students.seeds, b.students.fit.steps, b.students.fit.batch_size) == (
        "sft", [0, 1, 2], 150, 32,
    )  # fmt: skip


def test_the_paper_spec_builds_prompted_teachers_and_sft_lora_students():
    exp, _ = parse_experiment(["--config", PAPER])
    # Offline the 7B model is not here: build without the model checks (they are tested below).
    stages, manifest = build_stages(exp, check=False)
    assert [s.name for s in stages if not s.name.startswith("student-")] == [
        "generate-owl", "data-owl", "generate-control", "data-control", "probes", "report",
    ]  # fmt: skip
    gen = recipes(stages, "generate-")
    assert "Owls are your favourite animal" in gen["generate-owl"]["model"]["init_args"]["system_prompt"]
    assert gen["generate-control"]["model"]["init_args"]["system_prompt"] is None
    assert gen["generate-owl"]["data"]["init_args"]["num_prompts"] == 30000
    assert gen["generate-owl"]["model"]["init_args"]["max_new_tokens"] == 2048
    student = recipes(stages, "student-")["student-owl-s0"]
    model, data, trainer = student["model"]["init_args"], student["data"]["init_args"], student["trainer"]
    assert (model["loss"], model["finetune"], model["lora_rank"], model["lora_alpha"]) == (
        "sft",
        "lora",
        8,
        8.0,
    )
    assert model["optimizer"]["init_args"]["lr"] == 0.0002 and model["warmup_steps"] == 5
    assert (data["batch_size"], trainer["accumulate_grad_batches"], trainer["max_epochs"]) == (22, 3, 3)
    assert (data["max_samples"], data["max_length"], trainer["precision"]) == (10000, 500, "bf16-mixed")
    assert data["data_path"] == "{{dir:data-owl}}/kept.jsonl"
    assert manifest.teachers == {"owl": "teacher-owl", "control": "qwen25-7b"}
    assert manifest.bases.same == "qwen25-7b" and len(manifest.students) == 6
    probe = yaml.safe_load(stages[-2].files["probe.yaml"])
    assert set(probe["system_prompts"]) == {"teacher-owl"}
    assert [p["class_path"].rsplit(".", 1)[1] for p in probe["probes"]] == ["LogProbProbe", "SamplingProbe"]


def test_print_config_of_the_paper_spec(capsys):
    from subliminal_pl.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["pipeline", "--config", PAPER, "--print_config"])
    assert stop.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["bases"]["init_args"]["model_name_or_path"] == "Qwen/Qwen2.5-7B-Instruct"
    assert printed["hardware"]["precision"] == "bf16-mixed"


# ---- validation: bad specs fail before any stage starts, naming the key ---------------------------------------
def refused(tmp_path, text: str, *patterns: str, base: str = DEMO) -> None:
    argv = ["--config", base, "--config", spec_file(tmp_path, text), "--out_dir", str(tmp_path / "o")]
    with pytest.raises(PipelineError) as err:
        exp, _ = parse_experiment(argv)
        run_experiment(exp, echo=lambda _: None)
    for pattern in patterns:
        assert pattern in str(err.value), str(err.value)
    assert not (tmp_path / "o").exists()  # nothing started


def test_a_trait_that_is_not_a_probe_candidate_is_refused(tmp_path):
    refused(tmp_path, "traits: [owl, unicorn]\n", "traits: 'unicorn' is not a candidate of probes[0]")


def test_kl_students_of_system_prompt_teachers_are_refused(tmp_path):
    text = (
        "teachers: {class_path: subliminal_pl.experiments.teachers.SystemPromptTeachers}\n"
        "carrier: {init_args: {source: teacher}}\n"
    )
    refused(tmp_path, text, "students.loss: kl distils the teacher's logits")


def test_unknown_step_and_probe_classes_are_refused(tmp_path):
    text = (
        "steps: [{class_path: subliminal_pl.data.filters.NoSuchFilter}]\n"
        "probes: [{class_path: subliminal_pl.data.filters.LengthFilter}]\n"
    )
    refused(tmp_path, text, "steps[0].class_path: unknown class", "probes[0].class_path: ", "is not a Probe")


def test_overlapping_seeds_are_refused(tmp_path):
    refused(tmp_path, "students: {seeds: [0, 1, 1]}\n", "students.seeds: seeds overlap")
    refused(tmp_path, "bases: {init_args: {cross_seeds: [0]}}\n", "bases.init_args: seed and cross_seeds")


def test_a_micro_batch_needs_a_known_device_count(tmp_path):
    text = "hardware: {accelerator: gpu, devices: -1, micro_batch_size: 4}\n"
    refused(tmp_path, text, "hardware.micro_batch_size: needs hardware.devices as a number")


def test_an_unknown_role_class_is_refused_naming_the_key(tmp_path, capsys):
    over = spec_file(tmp_path, "teachers: {class_path: subliminal_pl.experiments.teachers.NoSuchTeachers}\n")
    with pytest.raises(SystemExit):
        parse_experiment(["--config", DEMO, "--config", over])
    assert "teachers" in capsys.readouterr().err


def test_a_model_missing_offline_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refused(
        tmp_path,
        "bases: {init_args: {model_name_or_path: nobody-here/no-such-model-7b}}\n",
        "bases.init_args.model_name_or_path: 'nobody-here/no-such-model-7b' is not a directory and not in "
        "the Hugging Face cache",
        base=PAPER,
    )
    refused(
        tmp_path, "bases: {init_args: {model_name_or_path: ./no/such/dir}}\n", "does not exist", base=PAPER
    )


@pytest.fixture(scope="module")
def other_vocab_lm(tmp_path_factory):
    """A tiny model whose tokenizer knows other words than the fixture model's."""
    from subliminal_pl.toy.model import build_tiny_llama, save_model_and_tokenizer
    from subliminal_pl.toy.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer("what is your favourite animal owl cat dog add more numbers".split())
    model = build_tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=0)
    return save_model_and_tokenizer(model, tokenizer, tmp_path_factory.mktemp("other_lm"))


def test_a_cross_model_kl_student_needs_the_teachers_vocabulary(tmp_path, tiny_lm_path, other_vocab_lm):
    text = f"""
bases:
  class_path: subliminal_pl.experiments.bases.PretrainedBases
  init_args:
    model_name_or_path: {tiny_lm_path}
    controls: [{{model_name_or_path: {other_vocab_lm}, name: other}}]
teachers: {{class_path: subliminal_pl.experiments.teachers.FinetunedTeachers}}
carrier: {{init_args: {{source: teacher}}}}
students: {{loss: kl}}
mlp_config: null
"""
    refused(tmp_path, text, "bases.init_args.controls[0]", "another vocabulary", base=DEMO)
    # With SFT (the paper's cross-model control) the same pair is fine.
    over = spec_file(tmp_path, text.replace("loss: kl", "loss: sft"), "sft.yaml")
    exp, _ = parse_experiment(["--config", DEMO, "--config", over])
    stages, manifest = build_stages(exp)
    assert manifest.bases.cross == ["other"] and "cross-owl-other-s0" in {s.name for s in stages}


def test_every_variant_is_checked_before_the_first_runs(tmp_path):
    over = spec_file(tmp_path, "variants: {good: {}, bad: {traits: [unicorn]}}\nmlp_config: null\n")
    exp, _ = parse_experiment(["--config", DEMO, "--config", over, "--out_dir", str(tmp_path / "o")])
    with pytest.raises(PipelineError, match="(?s)sweep variant .bad.*unicorn"):
        plan(exp)
    with pytest.raises(PipelineError):
        run_experiment(exp, echo=lambda _: None)
    assert not (tmp_path / "o").exists()


PIPELINE_SPECS = sorted(
    p for p in CONFIGS.rglob("*.yaml") if p.read_text().startswith("# subliminal-pl pipeline ")
)


@pytest.mark.parametrize("path", PIPELINE_SPECS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_spec_prints_its_config(path, capsys):
    from subliminal_pl.cli import main

    # The first line is the command the spec is run with (a sweep or a twin adds its --config to another spec).
    args = path.read_text().splitlines()[0].split()[3:]
    args = [str(CONFIGS.parent / a) if a.startswith("configs/") else a for a in args]
    with pytest.raises(SystemExit) as stop:
        main(["pipeline", *args, "--print_config"])
    assert stop.value.code in (0, None)
    assert "class_path: subliminal_pl.experiments.bases." in capsys.readouterr().out


def test_command_line_overrides_reach_the_roles():
    exp, _ = parse_experiment(
        [
            "--config",
            DEMO,
            "--students.seeds",
            "[5, 6]",
            "--teachers.init_args.fit.steps",
            "7",
            "--traits",
            "[cat]",
        ]
    )
    assert exp.students.seeds == [5, 6] and exp.teachers.fit.steps == 7 and exp.traits == ["cat"]
    assert exp.teachers.fit.lora_rank == 16  # the rest of the demo's teacher fit stays


def test_a_pretrained_base_with_an_adapter_is_merged_by_its_own_stage(tmp_path, tiny_lm_path):
    from peft import LoraConfig, get_peft_model

    from subliminal_pl.experiments.bases import PretrainedBases
    from subliminal_pl.experiments.recipes import Hardware
    from subliminal_pl.models.loading import load_causal_lm
    from subliminal_pl.pipeline import Pipeline

    model = load_causal_lm(tiny_lm_path)
    peft = get_peft_model(
        model, LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"], init_lora_weights=False)
    )
    peft.save_pretrained(tmp_path / "adapter")
    bases = PretrainedBases(str(tiny_lm_path), adapter_path=str(tmp_path / "adapter"), name="tuned")
    assert bases.shared.stage == "tuned" and bases.shared.path == "{{dir:tuned}}/model"
    pipeline = Pipeline(bases.stages(Hardware()), tmp_path / "out", in_process=True, echo=lambda _: None)
    pipeline.run()
    merged = load_causal_lm(pipeline.stage_dir("tuned") / "model")
    expected = load_causal_lm(tiny_lm_path, adapter_path=tmp_path / "adapter")
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(merged(ids).logits, expected(ids).logits, atol=1e-5)
    assert not torch.allclose(merged(ids).logits, load_causal_lm(tiny_lm_path)(ids).logits, atol=1e-3)


def test_the_command_exits_with_the_spec_error(tmp_path):
    from subliminal_pl.cli import main

    over = spec_file(tmp_path, "traits: [owl, unicorn]\n")
    with pytest.raises(SystemExit) as stop:
        main(["pipeline", "--config", DEMO, "--config", over, "--out_dir", str(tmp_path / "o")])
    assert str(stop.value.code).startswith("subliminal-pl pipeline: invalid experiment spec:")
    assert "'unicorn'" in str(stop.value.code) and not (tmp_path / "o").exists()


def test_sigterm_stops_the_run_and_says_how_to_resume(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    smoke = str(CONFIGS / "toy" / "smoke.yaml")
    command = [sys.executable, "-m", "subliminal_pl.cli", "pipeline", "--config", smoke]
    command += [
        "--out_dir",
        str(tmp_path / "o"),
        "--hardware.jobs",
        "1",
        "--bases.init_args.world.rows",
        "300",
    ]
    env = dict(os.environ, PYTHONPATH=str(CONFIGS.parent), PYTHONUNBUFFERED="1")
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in run.stdout:  # wait until a stage after the world is running
            if ": python -m subliminal_pl.cli fit" in line:
                break
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 1
    assert "interrupted; run the same command again to resume" in err
    # The stage that was running did not finish.
    assert not list((tmp_path / "o" / "stages").glob("base-s*/stage.json"))
