"""Reliability under hostile conditions: concurrent runs, killed pipelines, umask, missing models, bad counts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from subliminal_pl.pipeline import Pipeline, PipelineError, Stage
from subliminal_pl.run_guard import LOCK_FILE

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- one pipeline per output folder, no orphans

# A stage that records its pid, then sleeps while the flag file exists (a long stage), else ends at once.
SLEEPER = (
    "import os, sys, time, pathlib; pid_file, flag = sys.argv[1:3]; "
    "pathlib.Path(pid_file).write_text(str(os.getpid())); "
    "[time.sleep(0.05) for _ in range(1200) if pathlib.Path(flag).exists()]"
)


def sleeper_stage(tmp: Path) -> Stage:
    return Stage("sleepy", [[sys.executable, "-c", SLEEPER, str(tmp / "stage.pid"), str(tmp / "flag")]])


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _start_pipeline_process(tmp: Path) -> subprocess.Popen:
    """A pipeline (one sleeping stage) in its own interpreter, as `subliminal-pl pipeline` runs."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_reliability_a import sleeper_stage
        from subliminal_pl.pipeline import Pipeline
        Pipeline([sleeper_stage(Path({str(tmp)!r}))], {str(tmp / "out")!r}, echo=print).run()
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    (tmp / "flag").write_text("")
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert _wait_for(lambda: (tmp / "stage.pid").is_file() and (tmp / "stage.pid").read_text()), (
        "stage never started"
    )
    return process


def test_a_second_pipeline_on_the_same_folder_is_refused_naming_the_first(tmp_path):
    first = _start_pipeline_process(tmp_path)
    try:
        lines: list[str] = []
        with pytest.raises(PipelineError) as caught:
            Pipeline([sleeper_stage(tmp_path)], tmp_path / "out", echo=lines.append).run()
        message = str(caught.value)
        assert f"pid {first.pid} on host {socket.gethostname()}, started 20" in message
        assert "in use by another pipeline" in message and f"kill {first.pid}" in message
        assert _alive(int((tmp_path / "stage.pid").read_text()))  # the first run's stage was left alone
    finally:
        (tmp_path / "flag").unlink()
        assert first.wait(30) == 0, first.stdout.read()
    # Once the first run has ended, the folder is free again.
    assert Pipeline([sleeper_stage(tmp_path)], tmp_path / "out", echo=lambda _: None).run() == {
        "sleepy": "cached"
    }


def test_two_pipelines_in_threads_of_one_process_also_exclude_each_other(tmp_path):
    (tmp_path / "flag").write_text("")
    first = Pipeline([sleeper_stage(tmp_path)], tmp_path / "out", echo=lambda _: None)
    thread = threading.Thread(target=first.run)
    thread.start()
    try:
        assert _wait_for(lambda: (tmp_path / "stage.pid").is_file())
        with pytest.raises(PipelineError, match=f"pid {os.getpid()} on host"):
            Pipeline([sleeper_stage(tmp_path)], tmp_path / "out", echo=lambda _: None).run()
    finally:
        (tmp_path / "flag").unlink()
        thread.join(30)


# A stage that, like a Lightning trainer, answers SIGTERM by exiting with status 0 before its work is done.
GRACEFUL_QUITTER = textwrap.dedent(
    """
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    open(sys.argv[1], "w").write(str(os.getpid()))
    while os.path.exists(sys.argv[2]):
        time.sleep(0.05)
    """
)


def test_a_stopped_stage_that_exits_0_is_not_marked_done(tmp_path):
    (tmp_path / "flag").write_text("")
    stage = Stage(
        "quitter", [[sys.executable, "-c", GRACEFUL_QUITTER, str(tmp_path / "pid"), str(tmp_path / "flag")]]
    )
    pipeline = Pipeline([stage], tmp_path / "out", echo=lambda _: None)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run()
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    assert _wait_for(lambda: (tmp_path / "pid").is_file())
    pipeline.stop(grace_s=10)
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], PipelineError) and "was stopped" in str(errors[0])
    assert not pipeline.is_done("quitter")
    # The next run does the stage's work.
    (tmp_path / "flag").unlink()
    assert Pipeline([stage], tmp_path / "out", echo=lambda _: None).run() == {"quitter": "ran"}


def test_a_stale_lock_of_a_dead_pid_is_taken_over_with_a_note(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00", "command": "x"}
    (out / LOCK_FILE).write_text(json.dumps(stale))
    lines: list[str] = []
    assert Pipeline([sleeper_stage(tmp_path)], out, echo=lines.append).run() == {"sleepy": "ran"}
    note = [line for line in lines if line.startswith("note: taking over")]
    assert len(note) == 1 and f"pid {dead.pid}" in note[0] and "is no longer running" in note[0]
    assert (out / LOCK_FILE).read_text() == ""  # released at the end


def test_a_lock_recorded_by_another_host_is_not_taken_over_silently(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(
        json.dumps({"pid": 1, "host": "elsewhere", "started": "2026-01-01T00:00:00"})
    )
    with pytest.raises(PipelineError, match=rf"pid 1 on host elsewhere.*delete {out / LOCK_FILE}"):
        Pipeline([sleeper_stage(tmp_path)], out, echo=lambda _: None).run()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_sigkill_of_the_pipeline_ends_its_stage_and_a_rerun_takes_over(tmp_path):
    pipeline = _start_pipeline_process(tmp_path)
    stage_pid = int((tmp_path / "stage.pid").read_text())
    assert _alive(stage_pid)
    pipeline.kill()
    pipeline.wait()
    assert _wait_for(lambda: not _alive(stage_pid), timeout=20), "the stage outlived its pipeline"
    # A rerun finds no stray writer: it takes the dead run's lock over and redoes the unfinished stage.
    (tmp_path / "flag").unlink()
    lines: list[str] = []
    assert Pipeline([sleeper_stage(tmp_path)], tmp_path / "out", echo=lines.append).run() == {"sleepy": "ran"}
    assert any(f"pid {pipeline.pid}" in line and "no longer running" in line for line in lines)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_sighup_and_sigterm_stop_the_stages_and_release_the_lock(tmp_path, sig):
    pipeline = _start_pipeline_process(tmp_path)
    stage_pid = int((tmp_path / "stage.pid").read_text())
    pipeline.send_signal(sig)
    output = pipeline.communicate(timeout=30)[0].decode()
    # Handled as Ctrl-C (Python ends an uncaught KeyboardInterrupt with SIGINT), not killed by the signal.
    assert pipeline.returncode == -signal.SIGINT and "KeyboardInterrupt" in output, output
    assert not _alive(stage_pid)
    assert (tmp_path / "out" / LOCK_FILE).read_text() == ""


# ---------------------------------------------------------------- a missing model is one line, not a traceback


def _cli_exit(argv: list[str]) -> str:
    from subliminal_pl import cli

    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    return str(caught.value.code)


def test_predict_with_a_missing_model_directory_says_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs" / "examples" / "tiny_teacher_generate.yaml")
    message = _cli_exit(
        ["predict", "--config", config, "--model.init_args.model_name_or_path", "./no/such/model"]
    )
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(
        "subliminal-pl predict: cannot use --model.init_args.model_name_or_path=./no/such/model: "
    )
    assert (
        "directory './no/such/model' does not exist: give a directory written by save_pretrained" in message
    )


def test_a_hub_id_while_offline_says_one_line_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = str(REPO / "configs" / "examples" / "tiny_teacher_generate.yaml")
    message = _cli_exit(
        ["predict", "--config", config, "--model.init_args.model_name_or_path=no-org/no-model"]
    )
    assert "\n" not in message
    assert message.startswith(
        "subliminal-pl predict: cannot use --model.init_args.model_name_or_path=no-org/no-model"
    )
    assert (
        "downloads are switched off (HF_HUB_OFFLINE=1)" in message
        and "hf download no-org/no-model" in message
    )


def test_fit_names_the_config_key_of_a_missing_model(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    recipe = yaml.safe_load((REPO / "configs" / "examples" / "tiny_student.yaml").read_text())
    recipe["model"]["init_args"]["model_name_or_path"] = "./gone/base"
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    message = _cli_exit(["fit", "--config", str(tmp_path / "recipe.yaml")])
    assert "\n" not in message
    assert message.startswith(
        "subliminal-pl fit: cannot use --model.init_args.model_name_or_path=./gone/base"
    )
    assert "'./gone/base' does not exist" in message


# ---------------------------------------------------------------- file modes follow the umask; a full disk names the file


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_data_files_get_the_mode_the_umask_allows(tmp_path, umask, mode):
    from subliminal_pl.data.jsonl import write_json_atomic, write_jsonl_atomic, write_text_atomic

    previous = os.umask(umask)
    try:
        write_jsonl_atomic(tmp_path / "rows.jsonl", [{"a": 1}])
        write_json_atomic(tmp_path / "stats.json", {"kept": 1})
        write_text_atomic(tmp_path / "README.md", "card")
        write_text_atomic(tmp_path / "README.md", "card, rewritten")  # a replaced file too
    finally:
        os.umask(previous)
    for name in ("rows.jsonl", "stats.json", "README.md"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_a_full_disk_while_appending_names_the_file():
    from subliminal_pl.data.jsonl import append_jsonl

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    with pytest.raises(OSError, match=r"No space left on device while writing /dev/full") as caught:
        append_jsonl("/dev/full", [{"id": "x", "completion": "1, 2, 3"}])
    assert caught.value.errno == 28


def test_a_full_disk_during_an_atomic_write_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from subliminal_pl.data import jsonl

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(jsonl.os, "fsync", full)
    target = tmp_path / "filtered.jsonl"
    with pytest.raises(OSError, match=rf"No space left on device while writing {target}: free space"):
        jsonl.write_jsonl_atomic(target, [{"a": 1}])
    assert list(tmp_path.iterdir()) == []  # no temp file left behind, no partial target


# ---------------------------------------------------------------- prompts: streamed to the file, counts checked


def test_prompts_with_a_negative_count_is_a_clear_message(tmp_path):
    message = _cli_exit(["prompts", "--count", "-5", "--output", str(tmp_path / "p.jsonl")])
    assert message == "subliminal-pl prompts: --count must be at least 1, got -5"
    message = _cli_exit(
        ["prompts", "--count", "3", "--answer_count", "0", "--output", str(tmp_path / "p.jsonl")]
    )
    assert message == "subliminal-pl prompts: answer_count must be at least 1, got 0"
    message = _cli_exit(
        ["prompts", "--min_seed_count", "9", "--max_seed_count", "4", "--output", str(tmp_path / "p.jsonl")]
    )
    assert "min_seed_count..max_seed_count" in message and "got 9..4" in message
    assert not (tmp_path / "p.jsonl").exists()


def test_prompts_are_drawn_one_at_a_time_as_the_file_is_written(tmp_path, monkeypatch):
    from subliminal_pl.data import prompts

    drawn = []
    draw = prompts.NumberPromptGenerator._draw_prompt

    def counted_draw(self, rng):
        drawn.append(1)
        assert len(drawn) <= 1000, "prompts drawn far ahead of the writer (all built in memory first?)"
        return draw(self, rng)

    monkeypatch.setattr(prompts.NumberPromptGenerator, "_draw_prompt", counted_draw)
    seen = []

    def writer(path, rows):
        assert not isinstance(rows, list)
        for index, row in enumerate(rows):
            assert len(drawn) == index + 1  # the next prompt is drawn only when the writer asks for it
            seen.append(row["id"])
            if index == 99:
                break

    monkeypatch.setattr(prompts, "write_jsonl_atomic", writer)
    prompts.NumberPromptGenerator(seed=0).write(tmp_path / "p.jsonl", 50_000_000)
    assert len(seen) == 100 and len(drawn) == 100


def test_writing_many_prompts_keeps_memory_flat_and_matches_generate(tmp_path):
    import tracemalloc

    from subliminal_pl.data.jsonl import read_jsonl
    from subliminal_pl.data.prompts import NumberPromptGenerator

    generator = NumberPromptGenerator(seed=3)
    tracemalloc.start()
    try:
        generator.write(tmp_path / "p.jsonl", 20_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A list of 20k rows holds ~10 MB of strings and dicts; streamed, the peak is the writer's buffer.
    assert peak < 2_000_000, peak
    rows = read_jsonl(tmp_path / "p.jsonl")
    assert len(rows) == 20_000 and rows[:50] == generator.generate(50)


# ---------------------------------------------------------------- bad filter settings and unwritable outputs fail early


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_count": 0}, r"NumberSequenceFilter: max_count must be a whole number >= 1, got 0"),
        ({"max_count": -3}, r"max_count must be a whole number >= 1, got -3"),
        ({"max_count": 2.5}, r"max_count must be a whole number >= 1, got 2.5"),
        ({"min_value": 500, "max_value": 100}, r"min_value \(500\) must not exceed max_value \(100\)"),
    ],
)
def test_number_filter_settings_are_checked_naming_the_parameter(kwargs, message):
    from subliminal_pl.data.filters import NumberSequenceFilter

    with pytest.raises(ValueError, match=message):
        NumberSequenceFilter(**kwargs)


def test_length_filter_settings_are_checked_naming_the_parameter():
    from subliminal_pl.data.filters import LengthFilter

    with pytest.raises(ValueError, match=r"LengthFilter: min_chars must be >= 0, got -1"):
        LengthFilter(min_chars=-1)
    with pytest.raises(ValueError, match=r"LengthFilter: max_chars \(3\) is below min_chars \(4\)"):
        LengthFilter(min_chars=4, max_chars=3)


def test_generation_writer_refuses_an_unwritable_folder_before_generating(tmp_path):
    from subliminal_pl.callbacks.generation_writer import GenerationWriter

    (tmp_path / "a_file").write_text("")
    output = tmp_path / "a_file" / "raw.jsonl"
    writer = GenerationWriter(str(output))
    # Raised in setup, before the trainer or the model is used at all.
    with pytest.raises(
        OSError, match=rf"GenerationWriter: cannot write {output}: folder {output.parent} is not"
    ):
        writer.setup(None, None, "predict")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_generation_writer_refuses_a_read_only_folder(tmp_path):
    from subliminal_pl.callbacks.generation_writer import GenerationWriter

    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(OSError, match="Permission denied"):
        GenerationWriter(str(folder / "raw.jsonl")).setup(None, None, "predict")
