"""The executor seam with Ray: stages as Ray tasks on a local Ray instance this test starts (loopback only) give
the same folders, outputs and done markers as the local executor; a stage failing on a worker names itself and its
log; a rerun skips finished stages; a stopped pipeline leaves no stage process behind. Plus the experiment side:
which stages hold GPUs and memory, and executor settings that change no hash."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from subliminal_pl.executors import LocalExecutor
from subliminal_pl.pipeline import Pipeline, PipelineError, Stage, make_executor
from subliminal_pl.stage_graph import Resources

# Appends its name to a shared run log, fails while its flag file exists, else writes out.txt (its name, the
# upstream output it got, its OMP_NUM_THREADS) and parent.txt (the pid of the process that started it).
SCRIPT = (
    "import os, sys, pathlib; name, folder, log, flag = sys.argv[1:5]; "
    "pathlib.Path(log).open('a').write(name + '\\n'); "
    "print('[step 1/1] working', flush=True); "
    "sys.exit('planned failure') if pathlib.Path(flag).exists() else None; "
    "up = pathlib.Path(sys.argv[5], 'out.txt').read_text() if len(sys.argv) > 5 else ''; "
    "pathlib.Path(folder, 'out.txt').write_text(f'{name} <{up}> omp={os.environ[\"OMP_NUM_THREADS\"]}'); "
    "pathlib.Path(folder, 'parent.txt').write_text(str(os.getppid()))"
)


def stage(name: str, tmp: Path, needs=(), cpus: float = 1) -> Stage:
    upstream = [f"{{{{dir:{n}}}}}" for n in needs]
    command = [
        sys.executable,
        "-c",
        SCRIPT,
        name,
        "{{dir}}",
        str(tmp / "runs.log"),
        str(tmp / f"fail-{name}"),
    ]
    return Stage(name, [command + upstream], needs=list(needs), resources=Resources(cpus=cpus))


def graph(tmp: Path) -> list[Stage]:
    # a -> (b, c) -> d; c holds 2 CPUs on the cluster.
    return [
        stage("a", tmp),
        stage("b", tmp, ["a"]),
        stage("c", tmp, ["a"], cpus=2),
        stage("d", tmp, ["b", "c"]),
    ]


def runs(tmp: Path) -> list[str]:
    path = tmp / "runs.log"
    return path.read_text().split() if path.exists() else []


@pytest.fixture(scope="module")
def ray_executor():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'subliminal-pl[ray]')")
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            object_store_memory=80 * 2**20,
            logging_level="WARNING",
        )
    except Exception as err:  # e.g. no room in /dev/shm, sockets not allowed
        pytest.skip(f"a local Ray instance cannot start here: {type(err).__name__}: {err}")
    try:
        executor = make_executor("ray", jobs=2)
        assert not executor.connected_here  # it reuses this process's connection and leaves it open
        yield executor
    finally:
        ray.shutdown()


def without_times(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("seconds", "cpu_seconds", "finished")}


def test_ray_runs_stages_like_the_local_executor_and_a_rerun_skips_them(tmp_path, ray_executor):
    local_lines, ray_lines = [], []
    local = Pipeline(graph(tmp_path), tmp_path / "local", jobs=2, echo=local_lines.append)
    assert local.run() == dict.fromkeys("abcd", "ran")
    on_ray = Pipeline(graph(tmp_path), tmp_path / "ray", echo=ray_lines.append, executor=ray_executor)
    assert on_ray.run() == dict.fromkeys("abcd", "ran")
    assert runs(tmp_path).count("a") == 2 and len(runs(tmp_path)) == 8

    for name in "abcd":
        here, there = local.stage_dir(name), on_ray.stage_dir(name)
        assert here.name == there.name  # same hash
        out, threads = (there / "out.txt").read_text().rsplit(" omp=", 1)
        assert threads == ("2" if name == "c" else "1")  # the stage's CPUs on the cluster
        assert out == (here / "out.txt").read_text().rsplit(" omp=", 1)[0]
        # The local executor's children are this process's; a Ray task's are its worker's.
        assert int((here / "parent.txt").read_text()) == os.getpid()
        assert int((there / "parent.txt").read_text()) != os.getpid()
        local_record = without_times(json.loads((here / "stage.json").read_text()))
        ray_record = without_times(json.loads((there / "stage.json").read_text()))
        assert ray_record == {
            **local_record,
            "commands": [
                c.replace(str(tmp_path / "local"), str(tmp_path / "ray")) for c in local_record["commands"]
            ],
        }
        assert (there / "log.txt").read_text().startswith("$ python -c ")
    assert (on_ray.stage_dir("d") / "out.txt").read_text() == "d <b <a <> omp=1> omp=1> omp=1"

    # The same lines are printed: each command as it starts, progress lines, done lines.
    def commands_and_progress(lines: list[str], out: str) -> list[str]:
        kept = [line.replace(out, "OUT") for line in lines if ": python -c" in line or " | [step" in line]
        return sorted(kept)

    assert len(commands_and_progress(ray_lines, "")) == 8
    assert commands_and_progress(ray_lines, str(tmp_path / "ray")) == commands_and_progress(
        local_lines, str(tmp_path / "local")
    )

    rerun_lines = []
    again = Pipeline(graph(tmp_path), tmp_path / "ray", echo=rerun_lines.append, executor=ray_executor)
    assert again.run() == dict.fromkeys("abcd", "cached")
    assert len(runs(tmp_path)) == 8
    assert sum(line.startswith("[cached]") for line in rerun_lines) == 4


def test_a_stage_failing_on_a_worker_names_the_stage_and_its_log_and_the_rerun_resumes(
    tmp_path, ray_executor
):
    (tmp_path / "fail-b").touch()
    pipeline = Pipeline(graph(tmp_path), tmp_path / "out", echo=lambda _: None, executor=ray_executor)
    log = pipeline.stage_dir("b") / "log.txt"
    with pytest.raises(PipelineError) as failure:
        pipeline.run()
    message = str(failure.value)
    assert message.startswith("stage 'b' failed (exit 1 on Ray node ")
    assert f"; log: {log}\n" in message and "planned failure" in message
    assert "planned failure" in log.read_text()
    assert not (pipeline.stage_dir("b") / "stage.json").exists() and not pipeline.stage_dir("d").exists()

    (tmp_path / "fail-b").unlink()
    status = Pipeline(graph(tmp_path), tmp_path / "out", echo=lambda _: None, executor=ray_executor).run()
    assert status == {"a": "cached", "b": "ran", "c": status["c"], "d": "ran"}
    assert runs(tmp_path).count("a") == 1 and runs(tmp_path).count("b") == 2


def test_stopping_the_pipeline_ends_the_stage_process_on_the_worker(tmp_path, ray_executor):
    pid_file = tmp_path / "pid"
    sleeper = f"import os, time, pathlib; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(60)"
    pipeline = Pipeline(
        [Stage("sleepy", [[sys.executable, "-c", sleeper]])], tmp_path / "out", echo=lambda _: None,
        executor=ray_executor,
    )  # fmt: skip
    errors = []
    thread = threading.Thread(target=lambda: errors.append(pytest.raises(PipelineError, pipeline.run)))
    thread.start()
    deadline = time.monotonic() + 20
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    pipeline.stop(grace_s=3)
    thread.join(20)
    assert not thread.is_alive() and errors
    assert "stage 'sleepy' failed" in str(errors[0].value)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (pipeline.stage_dir("sleepy") / "stage.json").exists()


def test_an_unknown_executor_is_a_clear_error():
    with pytest.raises(PipelineError, match="executor 'slurm': unknown; choose one of local, ray"):
        make_executor("slurm")
    with pytest.raises(PipelineError, match="cannot run them in-process"):
        make_executor("ray", in_process=True)
    assert isinstance(make_executor("local", jobs=3), LocalExecutor)


def test_model_stages_hold_gpus_and_memory_and_executor_keys_change_no_hash():
    from subliminal_pl.experiments.build import build_stages
    from subliminal_pl.experiments.command import parse_experiment
    from subliminal_pl.pipeline import stage_hashes

    config = str(Path(__file__).resolve().parents[1] / "configs" / "toy" / "smoke.yaml")
    plain, _ = parse_experiment(["--config", config])
    gpu_args = [
        "--hardware.accelerator",
        "gpu",
        "--hardware.devices",
        "2",
        "--hardware.stage_memory_gb",
        "24",
    ]
    ray_args = [
        "--hardware.executor",
        "ray",
        "--hardware.ray_address",
        "10.0.0.1:6379",
        "--hardware.jobs",
        "8",
    ]
    on_ray, _ = parse_experiment(["--config", config, *ray_args, "--hardware.stage_cpus", "4"])
    gpus, _ = parse_experiment(["--config", config, *gpu_args])
    plain_stages = build_stages(plain, check=False)[0]
    assert stage_hashes(build_stages(on_ray, check=False)[0]) == stage_hashes(plain_stages)
    assert {s.resources for s in plain_stages} == {Resources(cpus=1.0)}
    held = {s.name: s.resources for s in build_stages(gpus, check=False)[0]}
    model = Resources(cpus=1.0, gpus=2, memory_gb=24.0)
    assert held["base-s0"] == held["teacher-owl"] == held["generate-base"] == held["probes"] == model
    assert held["student-owl-s0"] == held["cross-owl-base-s1-s0"] == model
    assert held["world"] == held["data-base"] == held["report"] == Resources(cpus=1.0)


def test_a_stage_of_the_smoke_experiment_on_ray_writes_what_it_writes_locally(tmp_path, ray_executor):
    """The smoke spec's first stage (`python -m subliminal_pl.toy.world build`: corpus, tokenizer, world.json):
    the package's own command, started with the node's interpreter, gives byte-identical files."""
    from subliminal_pl.experiments.build import build_stages
    from subliminal_pl.experiments.command import parse_experiment

    config = str(Path(__file__).resolve().parents[1] / "configs" / "toy" / "smoke.yaml")
    exp, _ = parse_experiment(["--config", config, "--bases.init_args.world.rows", "300"])
    world = [s for s in build_stages(exp, check=False)[0] if s.name == "world"]
    local = Pipeline(world, tmp_path / "local", echo=lambda _: None)
    on_ray = Pipeline(world, tmp_path / "ray", echo=lambda _: None, executor=ray_executor)
    assert local.run() == on_ray.run() == {"world": "ran"}

    def files(folder: Path) -> dict[str, bytes]:
        skip = {"log.txt", "stage.json", "world.yaml"}  # the recipe names its own folder
        return {
            str(p.relative_to(folder)): p.read_bytes()
            for p in folder.rglob("*")
            if p.is_file() and p.name not in skip
        }

    made = files(on_ray.stage_dir("world"))
    assert {"corpus.jsonl", "world.json"} <= set(made) and any(name.startswith("tokenizer/") for name in made)
    assert made == files(local.stage_dir("world"))
