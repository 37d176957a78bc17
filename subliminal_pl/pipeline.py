"""Multi-stage experiments: each stage a separate process, cached under a hash of its config, resumable.

A `Stage` is a list of commands (`python -m module args...`) plus the recipe files they read. Its hash covers
its config, the text of its files and commands (with stage folders written as placeholders, so the hash does not
depend on where the output folder lives) and the hashes of the stages it needs; its outputs live in
`<out_dir>/stages/<name>-<hash>/`. A stage is done when that folder holds `stage.json`, written last; a rerun
skips done stages, so an interrupted run resumes at the first unfinished one and a changed config reruns exactly
the stages it affects. An unfinished stage starts again from an empty folder, except for the paths it declares in
`keep`: commands that resume by themselves (teacher generation appends rows) find their partial output there.

Stages that share a `batch` key and are ready at the same time run as one job: one process runs the stages'
`batch_command` followed by their folders (the students of one teacher and start, trained one after another by
`subliminal-pl fit-group`); each member is then marked done as if it had run alone.

In commands and files, `{{dir}}` stands for the stage's own folder and `{{dir:NAME}}` for the folder of stage
NAME (which must be among its needs).

Where the commands run is the executor's business (`subliminal_pl.executors`): child processes here by default,
or Ray tasks on a cluster (`subliminal_pl.executor_ray`). Everything above stays here, on the driver: the folder
is prepared and the done marker written by this module, whichever executor ran the commands.

This module knows stages, not experiments (it imports none): `subliminal-pl pipeline --config
configs/toy/demo.yaml` (`subliminal_pl.experiments.command`) builds an experiment's stages from its spec, runs
them with `Pipeline`, and prints the exact command of each one and where the report is.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from subliminal_pl.data.jsonl import write_json_atomic, write_text_atomic
from subliminal_pl.executors import EXECUTORS, Executor, LocalExecutor, StageRun
from subliminal_pl.run_guard import FolderBusyError, FolderLock, hangup_and_term_interrupt
from subliminal_pl.stage_graph import (
    PLACEHOLDER,
    PipelineError,
    Stage,
    downstream_counts,
    order_stages,
    shell_line,
    stage_hashes,
)

DONE_FILE = "stage.json"
LOG_FILE = "log.txt"


class Pipeline:
    """Runs stages in dependency order with caching; `jobs` independent stages may run at once.

    out_dir: experiment folder; stage folders go to `<out_dir>/stages/`.
    jobs: stages run at the same time (each child gets `OMP_NUM_THREADS = cores // jobs`).
    in_process: run each `python -m module args` command by calling `module.main(args)` in this process (no
        interpreter start-up per stage; for tests and debugging; output goes to the stage log only).
    echo: print function for progress lines.
    executor: where stages run (`subliminal_pl.executors`); default: a `LocalExecutor(jobs, in_process)`. Its
        `slots` replace `jobs` as the number of stages at once.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        out_dir: str | Path,
        jobs: int = 1,
        in_process: bool = False,
        echo: Callable[[str], None] = print,
        executor: Executor | None = None,
    ) -> None:
        if jobs < 1:
            raise PipelineError(f"jobs must be >= 1, got {jobs}")
        self.executor = executor or LocalExecutor(jobs, in_process)
        self.stages = order_stages(stages)
        self.by_name = {s.name: s for s in self.stages}
        self.hashes = stage_hashes(self.stages)
        self.downstream = downstream_counts(self.stages)
        self.out_dir = Path(out_dir)
        self.jobs = self.executor.slots
        self.echo = echo
        self._lock = threading.Lock()
        # Set by `stop`: a stage whose commands end after it is never marked done, whatever their exit status
        # (a trainer stopped by SIGTERM may exit 0 without having written its model).
        self._stopping = threading.Event()

    # ---- locations ----------------------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.out_dir / "stages" / f"{name}-{self.hashes[name]}"

    def is_done(self, name: str) -> bool:
        return (self.stage_dir(name) / DONE_FILE).is_file()

    def resolve(self, text: str, stage: Stage) -> str:
        def replace(match: re.Match) -> str:
            return str(self.stage_dir(match.group(1) or stage.name))

        return PLACEHOLDER.sub(replace, text)

    def commands(self, name: str) -> list[list[str]]:
        stage = self.by_name[name]
        return [[self.resolve(arg, stage) for arg in command] for command in stage.commands]

    # ---- running ------------------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        with self._lock:
            self.echo(text)

    def _prepare(self, stage: Stage) -> Path:
        folder = self.stage_dir(stage.name)
        if folder.exists():
            # An interrupted attempt: start clean, so no stale file is reused, but keep what the stage resumes from.
            for path in folder.iterdir():
                if path.name in stage.keep:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        for relative, text in stage.files.items():
            write_text_atomic(folder / relative, self.resolve(text, stage))
        return folder

    def run_stage(self, name: str, position: str = "") -> tuple[float, float]:
        """Run one stage's commands (no cache check) and mark it done; returns (wall, CPU) seconds."""
        stage = self.by_name[name]
        folder = self._prepare(stage)
        log_path = folder / LOG_FILE
        start = time.perf_counter()
        commands = self.commands(name)
        run = StageRun(
            name,
            commands,
            folder,
            log_path,
            env={"PYTHONUNBUFFERED": "1"},
            resources=stage.resources,
            on_command=lambda i: self._say(f"{position} {name}: {shell_line(commands[i])}"),
            on_progress=lambda line: self._say(f"    {name} | {line}"),
        )
        outcome = self.executor.submit(run).wait()
        cpu = outcome.cpu_seconds
        if outcome.code != 0:
            where = f" on {outcome.where}" if outcome.where else ""
            raise PipelineError(
                f"stage {name!r} failed (exit {outcome.code}{where}); log: {log_path}\n{_tail(log_path)}"
            )
        seconds = time.perf_counter() - start
        self._mark_done(name, commands, seconds, cpu)
        self._say(f"{position} {name}: done in {seconds:.1f} s (CPU {cpu:.1f} s)")
        return seconds, cpu

    def run_batch(self, names: list[str], position: str = "") -> tuple[float, float]:
        """Run stages that share a batch key as one command, `batch_command` + their folders; mark each done.

        The batch's output goes to the first member's log and is copied to the others'. Its wall and CPU time
        are shared out evenly in each member's record (`batch` names the members). Returns (wall, CPU) seconds
        of the whole batch.
        """
        stages = [self.by_name[name] for name in names]
        folders = [self._prepare(stage) for stage in stages]
        log_path = folders[0] / LOG_FILE
        command = [self.resolve(arg, stages[0]) for arg in stages[0].batch_command] + [
            str(f) for f in folders
        ]
        self._say(f"{position} batch {stages[0].batch} ({', '.join(names)}): {shell_line(command)}")
        start = time.perf_counter()
        run = StageRun(
            names[0],
            [command],
            folders[0],
            log_path,
            env={"PYTHONUNBUFFERED": "1"},
            # Members share a recipe shape (one batch key), so the first one's resources hold for the batch.
            resources=stages[0].resources,
            on_progress=lambda line: self._say(f"    {names[0]} | {line}"),
        )
        outcome = self.executor.submit(run).wait()
        cpu = outcome.cpu_seconds
        text = log_path.read_text(encoding="utf-8", errors="replace")
        for folder in folders[1:]:
            write_text_atomic(folder / LOG_FILE, text)
        if outcome.code != 0:
            where = f" on {outcome.where}" if outcome.where else ""
            raise PipelineError(
                f"batch {stages[0].batch!r} (stages {', '.join(names)}) failed (exit {outcome.code}{where}); "
                f"log: {log_path}\n{_tail(log_path)}"
            )
        seconds = time.perf_counter() - start
        for name in names:
            self._mark_done(name, [command], seconds / len(names), cpu / len(names), batch=names)
            self._say(
                f"{position} {name}: done in {seconds / len(names):.1f} s (CPU {cpu / len(names):.1f} s; "
                f"a share of batch {stages[0].batch})"
            )
        return seconds, cpu

    def _mark_done(
        self, name: str, commands: list[list[str]], seconds: float, cpu: float, batch: list[str] | None = None
    ) -> None:
        if self._stopping.is_set():
            raise PipelineError(f"stage {name!r} was stopped; it stays unfinished and reruns next time")
        stage = self.by_name[name]
        record = {
            "name": name,
            "hash": self.hashes[name],
            "config": stage.config,
            "commands": [shell_line(c) for c in commands],
            "needs": {n: self.hashes[n] for n in stage.needs},
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if batch:
            record["batch"] = batch
        write_json_atomic(self.stage_dir(name) / DONE_FILE, record)

    def run(self) -> dict[str, str]:
        """Run every stage not yet done; returns name -> "cached" or "ran". Raises PipelineError on a failure.

        Holds `<out_dir>/pipeline.lock` meanwhile (a second run on the folder is refused, naming this one), and
        turns SIGTERM and SIGHUP into KeyboardInterrupt, which stops the running stages before it propagates.
        """
        try:
            lock = FolderLock(self.out_dir, note=self._say).__enter__()
        except FolderBusyError as err:
            raise PipelineError(str(err)) from None
        try:
            with hangup_and_term_interrupt():
                return self._run_unlocked()
        finally:
            lock.__exit__(None, None, None)

    def _run_unlocked(self) -> dict[str, str]:
        status = {s.name: "cached" for s in self.stages if self.is_done(s.name)}
        todo = [s.name for s in self.stages if s.name not in status]
        total = len(self.stages)
        for s in self.stages:
            if s.name in status:
                self._say(f"[cached] {s.name}: {self.stage_dir(s.name)}")
        running: dict[str, threading.Thread] = {}
        errors: list[BaseException] = []
        cpu_total = [0.0]
        wall_start = time.perf_counter()
        finished = threading.Event()
        counter = iter(range(len(status) + 1, total + 1))

        def work(names: list[str], position: str) -> None:
            try:
                if self.by_name[names[0]].batch is None:
                    _, cpu = self.run_stage(names[0], position)
                else:
                    _, cpu = self.run_batch(names, position)
                with self._lock:
                    status.update({name: "ran" for name in names})
                    cpu_total[0] += cpu
            except BaseException as err:  # surfaced in the main thread below
                with self._lock:
                    errors.append(err)
            finally:
                finished.set()

        try:
            while todo or running:
                with self._lock:
                    for name in [n for n, t in running.items() if not t.is_alive()]:
                        running.pop(name).join()
                    failed = bool(errors)
                if not failed:
                    while len(set(running.values())) < self.jobs:
                        with self._lock:  # workers add to `status` as they finish
                            name = self._next_stage(todo, status, running)
                        if name is None:
                            break
                        names = self._batch_of(name, todo, status)
                        for member in names:
                            todo.remove(member)
                        numbers = [next(counter) for _ in names]
                        shown = f"{numbers[0]}" if len(names) == 1 else f"{numbers[0]}-{numbers[-1]}"
                        thread = threading.Thread(
                            target=work, args=(names, f"[{shown}/{total}]"), daemon=True
                        )
                        for member in names:
                            running[member] = thread
                        thread.start()
                if failed and not running:
                    break
                if not running and todo:
                    raise PipelineError(f"stages cannot start, their needs did not finish: {todo}")
                finished.wait(0.5)
                finished.clear()
        except KeyboardInterrupt:
            self.stop()
            raise
        if errors:
            raise errors[0]
        ran = sum(v == "ran" for v in status.values())
        self._say(
            f"stages: {ran} ran, {len(status) - ran} cached; {time.perf_counter() - wall_start:.0f} s wall, "
            f"{cpu_total[0]:.0f} s CPU in stage processes"
        )
        return status

    def _batch_of(self, name: str, todo: list[str], status: dict[str, str]) -> list[str]:
        """`name` and, if it has a batch key, every other ready stage with the same key (in graph order)."""
        key = self.by_name[name].batch
        if key is None:
            return [name]
        done = {n for n, v in status.items() if v in ("cached", "ran")}
        others = [
            n
            for n in todo
            if n != name and self.by_name[n].batch == key and set(self.by_name[n].needs) <= done
        ]
        return [n for n in todo if n == name or n in others]

    def _next_stage(self, todo: list[str], status: dict[str, str], running: dict) -> str | None:
        """The ready stage to start next, or None if none should start now.

        Regular stages that unblock the most others go first. A background stage (a long side experiment nothing
        else waits for) starts when more regular stages are ready than there are workers: that backlog keeps the
        other workers busy meanwhile, and starting the long stage early keeps it from running alone at the end.
        Otherwise it starts only when no regular stage is ready or about to be (its needs done or running), so it
        never takes the core a base or a student is about to need.
        """
        done = {n for n, v in status.items() if v in ("cached", "ran")}
        ready = [n for n in todo if set(self.by_name[n].needs) <= done]
        regular = [n for n in ready if not self.by_name[n].background]
        side = [n for n in ready if self.by_name[n].background]
        if side and len(regular) > self.jobs:
            return side[0]
        if regular:
            return max(regular, key=lambda n: self.downstream[n])
        coming = [
            n
            for n in todo
            if not self.by_name[n].background and set(self.by_name[n].needs) <= done | set(running)
        ]
        return side[0] if side and not coming else None

    def stop(self, grace_s: float = 10.0) -> None:
        """End running stages (they stay unfinished and rerun or resume next time).

        The executor ends them (locally: SIGTERM to each stage's process group, then SIGKILL to those still running
        after `grace_s`): when this returns, no stage process is left writing.
        """
        self._stopping.set()
        self.executor.stop(grace_s)

    def describe(self) -> list[str]:
        """One line per stage with its state and folder, then its commands (for --dry_run)."""
        lines = []
        for stage in self.stages:
            state = "done" if self.is_done(stage.name) else "to run"
            lines.append(f"{stage.name} [{state}] {self.stage_dir(stage.name)}")
            lines += [f"    {shell_line(c)}" for c in self.commands(stage.name)]
            if stage.batch is not None:
                lines.append(
                    f"    (runs in batch {stage.batch}: {shell_line(stage.batch_command)} <member folders>)"
                )
        return lines


def _tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def make_executor(
    kind: str = "local", jobs: int = 1, in_process: bool = False, ray_address: str | None = None
) -> Executor:
    """The executor named `kind` ("local" or "ray"); `ray_address` is the Ray cluster to connect to."""
    if kind == "local":
        return LocalExecutor(jobs, in_process)
    if kind == "ray":
        if in_process:
            raise PipelineError("executor: ray runs stages as Ray tasks; it cannot run them in-process")
        from subliminal_pl.executor_ray import RayExecutor

        return RayExecutor(address=ray_address or "auto", slots=jobs)
    raise PipelineError(f"executor {kind!r}: unknown; choose one of {', '.join(EXECUTORS)}")
