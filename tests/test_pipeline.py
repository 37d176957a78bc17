"""The stage runner (caching, resume, commands), and the toy experiment end to end on a very small world through
the experiment engine (`subliminal_pl.experiments`); stage-graph tests are in tests/test_experiments.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from subliminal_pl.pipeline import Pipeline, PipelineError, Stage, order_stages, shell_line, stage_hashes

# A stage command that appends its name to a shared run log and writes out.txt in its folder; it fails while
# the flag file exists (an "interrupted" stage).
SCRIPT = (
    "import sys, pathlib; name, folder, log, flag = sys.argv[1:5]; "
    "pathlib.Path(log).open('a').write(name + '\\n'); "
    "sys.exit('planned failure') if pathlib.Path(flag).exists() else None; "
    "pathlib.Path(folder, 'out.txt').write_text(name + ' ' + ' '.join(sys.argv[5:]))"
)


def script_stage(name: str, tmp: Path, needs=(), config=None, extra=()) -> Stage:
    command = [
        sys.executable,
        "-c",
        SCRIPT,
        name,
        "{{dir}}",
        str(tmp / "runs.log"),
        str(tmp / f"fail-{name}"),
        *extra,
    ]
    return Stage(name, [command], needs=list(needs), config=config or {})


def runs(tmp: Path) -> list[str]:
    path = tmp / "runs.log"
    return path.read_text().split() if path.exists() else []


def chain(tmp: Path, b_config=None) -> list[Stage]:
    return [
        script_stage("a", tmp),
        script_stage("b", tmp, needs=["a"], config=b_config, extra=["{{dir:a}}"]),
        script_stage("c", tmp, needs=["b"]),
    ]


def test_second_run_skips_every_stage(tmp_path):
    lines = []
    first = Pipeline(chain(tmp_path), tmp_path / "out", echo=lines.append).run()
    assert first == {"a": "ran", "b": "ran", "c": "ran"}
    assert runs(tmp_path) == ["a", "b", "c"]
    second = Pipeline(chain(tmp_path), tmp_path / "out", echo=lines.append).run()
    assert second == {"a": "cached", "b": "cached", "c": "cached"}
    assert runs(tmp_path) == ["a", "b", "c"]


def test_placeholders_resolve_and_the_exact_commands_are_printed(tmp_path):
    lines = []
    pipeline = Pipeline(chain(tmp_path), tmp_path / "out", echo=lines.append)
    pipeline.run()
    b_dir, a_dir = pipeline.stage_dir("b"), pipeline.stage_dir("a")
    assert (b_dir / "out.txt").read_text() == f"b {a_dir}"
    assert b_dir.name == f"b-{pipeline.hashes['b']}"
    printed = [line for line in lines if line.startswith("[2/3] b: python -c")]
    assert printed == [f"[2/3] b: {shell_line(pipeline.commands('b')[0])}"]
    record = json.loads((b_dir / "stage.json").read_text())
    assert record["needs"] == {"a": pipeline.hashes["a"]}
    assert record["commands"] == [shell_line(pipeline.commands("b")[0])]


def test_interrupted_stage_resumes_without_rerunning_finished_ones(tmp_path):
    (tmp_path / "fail-b").touch()
    with pytest.raises(PipelineError, match=r"(?s)stage .b. failed.*planned failure"):
        Pipeline(chain(tmp_path), tmp_path / "out", echo=lambda _: None).run()
    assert runs(tmp_path) == ["a", "b"]
    (tmp_path / "fail-b").unlink()
    status = Pipeline(chain(tmp_path), tmp_path / "out", echo=lambda _: None).run()
    assert status == {"a": "cached", "b": "ran", "c": "ran"}
    assert runs(tmp_path) == ["a", "b", "b", "c"]


def test_an_interrupted_stage_keeps_only_what_it_resumes_from(tmp_path):
    # First attempt: writes partial.txt (kept) and scratch.txt (not kept), then fails. The second attempt sees
    # its partial output, appends to it and finishes.
    script = (
        "import sys, pathlib; d = pathlib.Path(sys.argv[1]); flag = pathlib.Path(sys.argv[2]); "
        "seen = sorted(p.name for p in d.iterdir()); "
        "(d / 'partial.txt').open('a').write('attempt ' + ','.join(seen) + '\\n'); "
        "(d / 'scratch.txt').write_text('x'); "
        "sys.exit('cut') if flag.exists() else None"
    )
    flag = tmp_path / "flag"
    stage = Stage("gen", [[sys.executable, "-c", script, "{{dir}}", str(flag)]], keep=["partial.txt"])
    flag.touch()
    with pytest.raises(PipelineError):
        Pipeline([stage], tmp_path / "out", echo=lambda _: None).run()
    flag.unlink()
    pipeline = Pipeline([stage], tmp_path / "out", echo=lambda _: None)
    assert pipeline.run() == {"gen": "ran"}
    lines = (pipeline.stage_dir("gen") / "partial.txt").read_text().splitlines()
    assert lines == ["attempt log.txt", "attempt log.txt,partial.txt"]


def test_a_changed_config_reruns_that_stage_and_everything_downstream(tmp_path):
    Pipeline(chain(tmp_path), tmp_path / "out", echo=lambda _: None).run()
    before = stage_hashes(chain(tmp_path))
    after = stage_hashes(chain(tmp_path, b_config={"lr": 0.1}))
    assert before["a"] == after["a"] and before["b"] != after["b"] and before["c"] != after["c"]
    status = Pipeline(chain(tmp_path, b_config={"lr": 0.1}), tmp_path / "out", echo=lambda _: None).run()
    assert status == {"a": "cached", "b": "ran", "c": "ran"}


def test_hashes_do_not_depend_on_the_output_folder(tmp_path):
    one = Pipeline(chain(tmp_path), tmp_path / "x", echo=print).hashes
    two = Pipeline(chain(tmp_path), tmp_path / "y" / "z", echo=print).hashes
    assert one == two


def test_two_jobs_run_independent_stages(tmp_path):
    stages = [script_stage(n, tmp_path) for n in ("p", "q", "r")] + [
        script_stage("s", tmp_path, needs=["p", "q", "r"])
    ]
    status = Pipeline(stages, tmp_path / "out", jobs=2, echo=lambda _: None).run()
    assert set(status.values()) == {"ran"}
    assert runs(tmp_path)[-1] == "s" and sorted(runs(tmp_path)[:3]) == ["p", "q", "r"]


def test_a_background_stage_waits_for_free_cores(tmp_path):
    # m (a side experiment) is ready from the start; it must not take a core while w runs and a, b (which need w)
    # are about to start, and it fills the core that is free once only c (needing both a and b) is left.
    stages = [
        script_stage("w", tmp_path),
        script_stage("a", tmp_path, needs=["w"]),
        script_stage("b", tmp_path, needs=["w"]),
        script_stage("c", tmp_path, needs=["a", "b"]),
        Stage("m", script_stage("m", tmp_path).commands, background=True),
        script_stage("r", tmp_path, needs=["c", "m"]),
    ]
    Pipeline(stages, tmp_path / "out", jobs=2, echo=lambda _: None).run()
    order = runs(tmp_path)
    assert order[0] == "w" and set(order[1:3]) == {"a", "b"} and set(order[3:5]) == {"c", "m"}
    assert order[-1] == "r"


def test_a_background_stage_starts_early_when_a_backlog_keeps_the_other_core_busy(tmp_path):
    # Once w is done, five regular stages are ready for two workers: m starts then, beside one of them, instead
    # of running alone after the last of them.
    stages = [script_stage("w", tmp_path)]
    stages += [script_stage(n, tmp_path, needs=["w"]) for n in "abcde"]
    stages += [Stage("m", script_stage("m", tmp_path).commands, background=True)]
    Pipeline(stages, tmp_path / "out", jobs=2, echo=lambda _: None).run()
    order = runs(tmp_path)
    assert order[0] == "w" and "m" in order[1:3] and sorted(order) == sorted("wabcdem")


def test_malformed_graphs_are_refused(tmp_path):
    with pytest.raises(PipelineError, match="cycle"):
        order_stages([script_stage("a", tmp_path, needs=["b"]), script_stage("b", tmp_path, needs=["a"])])
    with pytest.raises(PipelineError, match="unknown stage 'nope'"):
        order_stages([script_stage("a", tmp_path, needs=["nope"])])
    with pytest.raises(PipelineError, match="does not list it in needs"):
        order_stages([script_stage("a", tmp_path), script_stage("b", tmp_path, extra=["{{dir:a}}"])])
    with pytest.raises(PipelineError, match="named 'a'"):
        order_stages([script_stage("a", tmp_path), script_stage("a", tmp_path)])


# ---- the toy experiment, every stage, in process ----------------------------------------------------------------
# configs/toy/smoke.yaml, shrunk further so every stage runs in seconds. The 3-step base writes no valid number
# list, so a length filter stands in for the number filter and every later stage still runs.
TINY_OVERRIDES = """
bases:
  init_args:
    world: {rows: 300}
    model: {hidden_size: 16, num_layers: 1, num_heads: 2}
    pretrain: {steps: 3, batch_size: 16}
teachers: {init_args: {rows: 16, fit: {steps: 2, batch_size: 8}}}
carrier:
  init_args:
    prompts: 16
    max_new_tokens: 8
    filters: [{class_path: subliminal_pl.data.filters.LengthFilter, init_args: {min_chars: 1}}]
    format_prompts: 4
students: {seeds: [0, 1], cross_seeds: [0], fit: {steps: 2, batch_size: 8}}
hardware: {jobs: 1}
"""


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from subliminal_pl.experiments.command import parse_experiment, run_experiment

    folder = tmp_path_factory.mktemp("toy")
    overrides = folder / "tiny.yaml"
    overrides.write_text(TINY_OVERRIDES)
    smoke = Path(__file__).resolve().parents[1] / "configs" / "toy" / "smoke.yaml"
    argv = ["--config", str(smoke), "--config", str(overrides), "--out_dir", str(folder / "out")]
    exp, _ = parse_experiment(argv)
    assert exp.traits == ["owl", "dolphin"] and exp.students.seeds == [0, 1]
    assert exp.bases.pretrain.steps == 3 and exp.bases.world.rows == 300
    lines: list[str] = []
    run_experiment(exp, in_process=True, echo=lines.append)
    return exp, folder / "out", lines


def test_toy_experiment_writes_the_report(toy_run):
    _, out, lines = toy_run
    for name in ("report.md", "results.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("*.png"))
    results = json.loads((out / "results.json").read_text())
    assert "owl" in json.dumps(results) and "cross-dolphin-base-s1-s0" in json.dumps(results)
    report = (out / "report.md").read_text()
    assert "owl" in report and "dolphin" in report
    assert lines[-1] == f"report: {out / 'report.md'}"
    probes = json.loads(next(out.glob("stages/probes-*/probes.json")).read_text())
    models = set(probes["models"])
    assert {"base-s0", "base-s1", "teacher-owl", "teacher-neutral", "student-owl-s1"} <= models
    assert len([m for m in models if m.startswith("cross-")]) == 3


def test_toy_experiment_prints_every_stage_command(toy_run):
    _, out, lines = toy_run
    commands = [line.split(": ", 1)[1] for line in lines if line.startswith("[") and ": python -m " in line]
    assert any(c.startswith("python -m subliminal_pl.toy.world build --config ") for c in commands)
    # 2 bases, 3 teachers (owl, dolphin, neutral); 3 x 2 same-init and 3 x 1 cross-init students, trained in
    # one batch per teacher and start (students.group, the default).
    fits = sum(c.startswith("python -m subliminal_pl.cli fit --config ") for c in commands)
    batches = [c.split()[4:] for c in commands if c.startswith("python -m subliminal_pl.cli fit-group ")]
    assert (fits, len(batches), sum(map(len, batches))) == (2 + 3, 3 + 3, 6 + 3)
    assert any(c.startswith("python -m subliminal_pl.cli predict --config ") for c in commands)
    assert any(c.startswith("python -m subliminal_pl.stages filter --config ") for c in commands)
    recipe = yaml.safe_load(next(out.glob("stages/student-owl-s0-*/recipe.yaml")).read_text())
    student = recipe["model"]["init_args"]
    # LoRA teachers (the default): students learn from the merged model exported beside the adapter.
    assert student["kl_teacher"] == str(next(out.glob("stages/teacher-owl-*")) / "model" / "merged")
    assert student["model_name_or_path"] == str(next(out.glob("stages/base-s0-*")) / "model")
    assert (student["loss"], student["kl_token_subset"], student["trait_words"]) == ("kl", "numbers", ["owl"])
    # The hardware profile, not the builder, sets the machine: the smoke spec says cpu and keeps 32-true.
    assert (recipe["trainer"]["accelerator"], recipe["trainer"]["precision"]) == ("cpu", "32-true")
    cross = yaml.safe_load(next(out.glob("stages/cross-owl-base-s1-s0-*/recipe.yaml")).read_text())
    assert cross["model"]["init_args"]["model_name_or_path"] == str(
        next(out.glob("stages/base-s1-*")) / "model"
    )
    assert cross["data"]["init_args"]["data_path"] == recipe["data"]["init_args"]["data_path"]


def test_toy_experiment_rerun_is_cached_and_resumes_a_lost_stage(toy_run):
    from subliminal_pl.experiments.command import run_experiment

    exp, out, _ = toy_run
    lines: list[str] = []
    run_experiment(exp, in_process=True, echo=lines.append)
    assert not [line for line in lines if line.startswith("[") and not line.startswith("[cached]")]
    # An interrupted student: its folder holds no stage.json; the rerun redoes it and nothing else.
    (next(out.glob("stages/student-dolphin-s1-*")) / "stage.json").unlink()
    lines.clear()
    run_experiment(exp, in_process=True, echo=lines.append)
    ran = {line.split(":")[0].split("] ")[1] for line in lines if line.startswith("[") and "done in" in line}
    assert ran == {"student-dolphin-s1"}
