"""Where a pipeline's stages run: the seam between the stage engine (`subliminal_pl.pipeline`) and the machines.

The pipeline decides what runs (order, hashes, caching, resume, done markers, printed commands); an `Executor`
runs one stage's commands, in order, in the stage's folder, with its environment, appending their output to the
stage log, and reports how they ended (`StageOutcome`). `submit` returns a `Job` to wait on or cancel.

    local  `LocalExecutor` (the default): child processes on this machine, `jobs` stages at once.
    ray    `subliminal_pl.executor_ray.RayExecutor`: each stage a Ray task with its declared `Resources`, on an
           existing Ray cluster whose nodes share the output folder (imported only when asked for).

Both write the same log: `$ <command>` before each command's output. `make_executor` builds one by name.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import signal
import subprocess
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from subliminal_pl.run_guard import die_with_parent
from subliminal_pl.stage_graph import PipelineError, Resources, shell_line

EXECUTORS = ("local", "ray")
# Progress lines of the project's callbacks ("[step 50/800] ...", "[generate] ...", "[probe 3/40] ..."); library
# log lines start with a timestamp or a level instead.
PROGRESS = re.compile(r"^\[[a-z]")
COMMAND_PREFIX = "$ "


def ignore(*_) -> None:
    return None


@dataclass
class StageRun:
    """One stage as an executor sees it: resolved commands, where they run and log, what they hold.

    env: variables set on top of the environment the commands run in (the executor's machine's).
    cwd: working folder of the commands (relative stage folders in them are relative to it).
    on_command(i): called as command i starts. on_progress(line): a progress line of the output.
    """

    name: str
    commands: list[list[str]]
    folder: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = field(default_factory=os.getcwd)
    resources: Resources = field(default_factory=Resources)
    on_command: Callable[[int], None] = ignore
    on_progress: Callable[[str], None] = ignore


@dataclass
class StageOutcome:
    """How a stage's commands ended: `code` of the first that failed (0: all ran), their CPU seconds, and
    where they ran when that is not this machine (named in errors)."""

    code: int
    cpu_seconds: float = 0.0
    where: str = ""


class Job(ABC):
    """A submitted stage."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> StageOutcome | None:
        """The outcome once the stage has ended; None if it is still running after `timeout` seconds."""

    @abstractmethod
    def cancel(self) -> None:
        """Ask the stage's commands to stop (the stage stays unfinished; `wait` then returns its outcome)."""


class Executor(ABC):
    """Runs stages; `slots` of them at once (the pipeline submits no more)."""

    slots: int = 1

    @abstractmethod
    def submit(self, run: StageRun) -> Job: ...

    @abstractmethod
    def stop(self, grace_s: float = 10.0) -> None:
        """End every running stage: when this returns, none of their processes is left writing."""

    def close(self) -> None:  # noqa: B027 (most executors hold nothing)
        """Release what the executor holds (connections); called once the pipeline has finished."""


# ---- commands as child processes (the local executor, and each Ray task on its node) -------------------------
def run_commands(
    run: StageRun,
    env: dict[str, str],
    track: Callable[[subprocess.Popen, bool], None] = ignore,
    grace_s: float = 10.0,
) -> StageOutcome:
    """Run `run.commands` in order as child processes with environment `env`, stopping at the first failure.

    Output goes to the stage log; progress lines also to `run.on_progress`. `track(process, True/False)` sees
    each child start and end (to stop it from another thread). A child whose caller is interrupted (Ctrl-C, a
    cancelled task) gets SIGTERM, then SIGKILL after `grace_s`.
    """
    cpu = 0.0
    for index, command in enumerate(run.commands):
        run.on_command(index)
        with run.log_path.open("a", encoding="utf-8") as log:
            log.write(f"{COMMAND_PREFIX}{shell_line(command)}\n")
            log.flush()
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=run.cwd,
                text=True,
                errors="replace",
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),
            )
            track(process, True)
            try:
                # Everything goes to the stage log; progress lines ("[step 50/800] ...") also to the caller.
                for line in process.stdout:
                    log.write(line)
                    if PROGRESS.match(line):
                        run.on_progress(line.rstrip())
                # wait4 also gives the child's CPU time, which (unlike wall time) a busy machine barely changes.
                _, status, usage = os.wait4(process.pid, 0)
                process.returncode = os.waitstatus_to_exitcode(status)
            except BaseException:
                end_process_group(process, grace_s)
                raise
            finally:
                track(process, False)
        cpu += usage.ru_utime + usage.ru_stime
        if process.returncode != 0:
            return StageOutcome(process.returncode, cpu)
    return StageOutcome(0, cpu)


def end_process_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the child's process group, SIGKILL if it still runs after `grace_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run_in_process(run: StageRun) -> StageOutcome:
    """Each `python -m module args` command as `module.main(args)` in this process (tests, debugging)."""
    cpu = 0.0
    for index, command in enumerate(run.commands):
        run.on_command(index)
        if len(command) < 3 or command[1] != "-m":
            raise PipelineError(f"in-process mode runs `python -m module ...` commands only, got {command}")
        buffer = io.StringIO()
        cpu_start = time.process_time()
        try:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                importlib.import_module(command[2]).main(command[3:])
            code = 0
        except SystemExit as stop:
            # sys.exit("message") means failure with that message, as it does for a child process.
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if isinstance(stop.code, str):
                buffer.write(f"{stop.code}\n")
        except Exception:  # reported as a failed stage, like a crashed child process
            buffer.write(traceback.format_exc())
            code = 1
        with run.log_path.open("a", encoding="utf-8") as log:
            log.write(f"{COMMAND_PREFIX}{shell_line(command)}\n{buffer.getvalue()}")
        cpu += time.process_time() - cpu_start
        if code != 0:
            return StageOutcome(code, cpu)
    return StageOutcome(0, cpu)


# ---- the local executor -------------------------------------------------------------------------------------
class _ThreadJob(Job):
    def __init__(self, work: Callable[[], StageOutcome], cancel: Callable[[], None]) -> None:
        self._outcome: StageOutcome | None = None
        self._error: BaseException | None = None
        self._cancel = cancel
        self._thread = threading.Thread(target=self._main, args=(work,), daemon=True)
        self._thread.start()

    def _main(self, work: Callable[[], StageOutcome]) -> None:
        try:
            self._outcome = work()
        except BaseException as err:  # raised in the waiting thread
            self._error = err

    def wait(self, timeout: float | None = None) -> StageOutcome | None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            return None
        if self._error is not None:
            raise self._error
        return self._outcome

    def cancel(self) -> None:
        self._cancel()


class LocalExecutor(Executor):
    """Child processes on this machine, `jobs` stages at once; each child gets `OMP_NUM_THREADS = cores // jobs`
    unless the environment sets it. `in_process`: commands run as `module.main(args)` here (one at a time)."""

    def __init__(self, jobs: int = 1, in_process: bool = False) -> None:
        if jobs < 1:
            raise PipelineError(f"jobs must be >= 1, got {jobs}")
        self.slots = 1 if in_process else jobs
        self.in_process = in_process
        self._lock = threading.Lock()
        self._children: dict[subprocess.Popen, str] = {}

    def _track(self, name: str) -> Callable[[subprocess.Popen, bool], None]:
        def track(process: subprocess.Popen, started: bool) -> None:
            with self._lock:
                if started:
                    self._children[process] = name
                else:
                    self._children.pop(process, None)

        return track

    def submit(self, run: StageRun) -> Job:
        if self.in_process:
            return _ThreadJob(lambda: run_in_process(run), ignore)
        env = dict(os.environ, **run.env)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.slots)))

        def cancel() -> None:
            self._end([p for p, name in self._running() if name == run.name])

        return _ThreadJob(lambda: run_commands(run, env, self._track(run.name)), cancel)

    def _running(self) -> list[tuple[subprocess.Popen, str]]:
        with self._lock:  # a job removes its child once it has reaped it
            return list(self._children.items())

    def _end(self, children: list[subprocess.Popen], grace_s: float = 10.0) -> None:
        for process in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s

        def still_running() -> list[subprocess.Popen]:
            alive = {p for p, _ in self._running()}
            return [p for p in children if p in alive]

        while still_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in still_running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to each stage's process group, then SIGKILL to those still running after `grace_s`."""
        self._end([p for p, _ in self._running()], grace_s)
