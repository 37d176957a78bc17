"""Grouped students: batches of stages in the pipeline, `subliminal-pl fit-group`, and the students' switch.

A grouped student must end with the weights of a separate run of its own recipe (bit for bit), a finished member
must never be trained again (after a kill, or when a seed is added), and grouping must not change any stage hash.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from subliminal_pl.pipeline import Pipeline, Stage
from subliminal_pl.stage_graph import stage_hashes

DEMO = Path(__file__).resolve().parents[1] / "configs" / "toy" / "demo.yaml"
PY = sys.executable


# ---- the pipeline's batches --------------------------------------------------------------------------------
@pytest.fixture
def recorder(tmp_path, monkeypatch):
    """A `python -m batch_recorder DIR...` command: writes out.txt in each folder, logs one line per call."""
    calls = tmp_path / "calls.txt"
    module = tmp_path / "modules" / "batch_recorder.py"
    module.parent.mkdir()
    module.write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path

            def main(argv):
                with open({str(calls)!r}, "a") as log:
                    log.write(" ".join(Path(a).name.rsplit("-", 1)[0] for a in argv) + "\\n")
                for folder in argv:
                    (Path(folder) / "out.txt").write_text("made in a batch")
            """
        )
    )
    monkeypatch.syspath_prepend(str(module.parent))
    return calls


def _member(name: str, batch: str | None = "k") -> Stage:
    stage = Stage(name, [[PY, "-m", "batch_recorder", "{{dir}}"]], files={"recipe.txt": name})
    if batch:
        stage.batch, stage.batch_command = batch, [PY, "-m", "batch_recorder"]
    return stage


def test_ready_stages_of_one_batch_run_as_one_process_and_a_new_member_alone(tmp_path, recorder):
    stages = [_member("a"), _member("b"), _member("c"), _member("solo", batch=None)]
    pipeline = Pipeline(stages, tmp_path / "out", in_process=True, echo=lambda _: None)
    pipeline.run()
    assert sorted(recorder.read_text().splitlines()) == ["a b c", "solo"]
    for name in "abc":
        record = json.loads((pipeline.stage_dir(name) / "stage.json").read_text())
        assert record["batch"] == ["a", "b", "c"]
        assert "fit-group" not in record["commands"][0] and "batch_recorder" in record["commands"][0]
        assert (pipeline.stage_dir(name) / "out.txt").read_text() == "made in a batch"
    # How a stage runs is not what it makes: a batch key leaves every hash as it is.
    unbatched = [_member("a", None), _member("b", None), _member("c", None), _member("solo", batch=None)]
    assert stage_hashes(stages) == stage_hashes(unbatched)
    # Rerun: all cached. A member added later (another seed) runs alone; the finished ones are not rerun.
    pipeline.run()
    Pipeline([*stages, _member("d")], tmp_path / "out", in_process=True, echo=lambda _: None).run()
    assert recorder.read_text().splitlines()[2:] == ["d"]


def test_a_failed_batch_names_its_stages_and_log(tmp_path):
    stage = Stage("x", [[PY, "-c", "pass"]], batch="k", batch_command=[PY, "-c", "import sys; sys.exit(3)"])
    from subliminal_pl.pipeline import PipelineError

    with pytest.raises(
        PipelineError, match=r"batch 'k' \(stages x, y\) failed \(exit 3\); log: .*x-.*log\.txt"
    ):
        Pipeline([stage, Stage("y", [[PY, "-c", "pass"]], batch="k", batch_command=stage.batch_command)],
                 tmp_path / "out", echo=lambda _: None).run()  # fmt: skip


def test_a_batch_key_needs_a_batch_command():
    from subliminal_pl.pipeline import PipelineError

    with pytest.raises(PipelineError, match="batch key but no batch_command"):
        Stage("x", [[PY, "-c", "pass"]], batch="k")


# ---- fit-group on the tiny model -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_teacher(tmp_path_factory, tiny_tokenizer) -> Path:
    from subliminal_pl.toy.model import build_tiny_llama, save_model_and_tokenizer

    model = build_tiny_llama(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=4, seed=1)
    return save_model_and_tokenizer(model, tiny_tokenizer, tmp_path_factory.mktemp("teacher"))


def _write_recipe(folder: Path, seed: int, base: Path, teacher: Path, rows: Path) -> Path:
    from subliminal_pl.experiments.recipes import FitRecipe, Hardware, dump, fit_recipe

    fit = FitRecipe(
        steps=3, batch_size=4, lr=1e-2, warmup_steps=1, finetune="lora", lora_rank=4, lora_alpha=4.0
    )
    recipe = fit_recipe(
        Hardware(), fit, seed, str(base), str(rows), "students.fit", loss="kl", teacher=str(teacher),
        token_subset="numbers", trait_words=["owl"],
    )  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(dump(recipe, "subliminal-pl fit").replace("{{dir}}", str(folder)))
    return folder


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model" / "adapter_model.safetensors")


def _fit(recipe: Path) -> None:
    from subliminal_pl.cli import main

    main(["fit", "--config", str(recipe)])


def test_grouped_students_match_separate_runs_and_finished_ones_are_never_retrained(
    tmp_path, tiny_lm_path, other_teacher, number_rows_path
):
    from subliminal_pl.fit_group import DONE_MARKER, fit_group

    group = [
        _write_recipe(tmp_path / f"g{s}", s, tiny_lm_path, other_teacher, number_rows_path) for s in (0, 1)
    ]
    alone = _write_recipe(tmp_path / "alone1", 1, tiny_lm_path, other_teacher, number_rows_path)
    assert fit_group(group, _fit, echo=lambda _: None) == ["ran", "ran"]
    _fit(alone / "recipe.yaml")

    first, second, separate = _adapter(group[0]), _adapter(group[1]), _adapter(alone)
    # The second member trained after another one in the same process, yet ends exactly where a run of its
    # recipe alone ends; a different seed ends elsewhere (the comparison can fail).
    assert all(torch.equal(second[k], separate[k]) for k in separate)
    assert not all(torch.equal(first[k], separate[k]) for k in separate)
    assert (group[1] / "model" / "merged" / "config.json").is_file()
    record = json.loads((group[1] / DONE_MARKER).read_text())
    assert record["group"] == ["g0", "g1"] and record["cpu_seconds"] > 0

    # A kill during the second member: its marker never came; what it left is not reused. The rerun skips the
    # finished member (its export untouched) and trains the other one again, to the same weights.
    (group[1] / DONE_MARKER).unlink()
    (group[1] / "model" / "adapter_model.safetensors").write_bytes(b"partial")
    stamp = (group[0] / "model" / "adapter_model.safetensors").stat().st_mtime_ns
    assert fit_group(group, _fit, echo=lambda _: None) == ["cached", "ran"]
    assert (group[0] / "model" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert all(torch.equal(_adapter(group[1])[k], separate[k]) for k in separate)

    # A changed recipe is not the one the marker was written for: that member trains again.
    text = (group[0] / "recipe.yaml").read_text()
    (group[0] / "recipe.yaml").write_text(text.replace("lr: 0.01", "lr: 0.02"))
    assert fit_group(group, _fit, echo=lambda _: None) == ["ran", "cached"]


def test_fit_group_refuses_a_folder_without_a_recipe(tmp_path, capsys):
    from subliminal_pl.cli import main

    with pytest.raises(SystemExit, match="no recipe.yaml in .*nothing"):
        main(["fit-group", str(tmp_path / "nothing")])


# ---- the students' switch ------------------------------------------------------------------------------------
def _demo_stages(*overrides: str) -> list[Stage]:
    from subliminal_pl.experiments.build import build_stages
    from subliminal_pl.experiments.command import parse_experiment

    exp, _ = parse_experiment(["--config", str(DEMO), *overrides])
    return build_stages(exp, check=False)[0]


def test_demo_students_are_grouped_per_teacher_and_start_with_unchanged_hashes():
    grouped, separate = _demo_stages(), _demo_stages("--students.group", "false")
    assert stage_hashes(grouped) == stage_hashes(separate)
    batches: dict[str, list[str]] = {}
    for stage in grouped:
        if stage.batch:
            batches.setdefault(stage.batch, []).append(stage.name)
            assert stage.batch_command[1:] == ["-m", "subliminal_pl.cli", "fit-group"]
            assert "fit.done.json" in stage.keep and "model" in stage.keep
    assert len(batches) == 10 and sum(map(len, batches.values())) == 30
    assert batches["students-owl-base-s0"] == [f"student-owl-s{s}" for s in range(4)]
    assert batches["students-wolf-base-s1"] == ["cross-wolf-base-s1-s0", "cross-wolf-base-s1-s1"]
    assert not [s for s in separate if s.batch]
    # Several devices per fit: each student keeps its own process (a group would run inside one launcher).
    assert not [s for s in _demo_stages("--hardware.devices", "2") if s.batch]
