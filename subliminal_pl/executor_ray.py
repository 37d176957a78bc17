"""The Ray executor: each stage one Ray task, placed by Ray on a node with the stage's `Resources` free.

    hardware:
      executor: ray
      ray_address: auto      # the cluster `ray start` made on this machine's network (or host:port, ray://...)
      jobs: 16               # stages submitted at once; Ray queues those its nodes have no room for yet

The pipeline stays on the driver (the machine that runs `subliminal-pl pipeline`): it hashes, skips finished
stages, writes each stage's recipe files before submitting it and its done marker after the task succeeds, and
prints each command as the log shows it starting. The task runs the stage's commands as child processes on its
node, exactly as the local executor does, appending to the same `log.txt`. So every node must see the output
folder, and the driver's working folder, at the same path (a shared file system), and have this package in the
Python environment Ray runs there. Commands started with the driver's interpreter run with the node's.

Variables set on the node: its own environment (as `ray start` got it; Ray sets `CUDA_VISIBLE_DEVICES` to the
task's GPUs), `OMP_NUM_THREADS` = the stage's CPUs, and those of `FORWARDED_ENV` the driver has. Imported only when
a pipeline asks for `executor: ray` (`subliminal_pl.pipeline.make_executor`); Ray is the optional extra `ray`.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from subliminal_pl.executors import (
    COMMAND_PREFIX,
    PROGRESS,
    Executor,
    Job,
    StageOutcome,
    StageRun,
    end_process_group,
    ignore,
    run_commands,
)
from subliminal_pl.stage_graph import PipelineError

# Driver variables that stage processes on the nodes get too (package path, hub cache and offline switches).
FORWARDED_ENV = (
    "PYTHONPATH",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS",
    "TOKENIZERS_PARALLELISM",
    "OMP_WAIT_POLICY",
)
POLL_S = 0.25


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise PipelineError(
            "hardware.executor: ray needs Ray on the driver and on every node: pip install 'subliminal-pl[ray]'"
        ) from err
    return ray


def run_on_node(run: StageRun, driver_python: str, grace_s: float) -> StageOutcome:
    """The Ray task: the stage's commands as child processes of this Ray worker, on whatever node it is.

    They run from a helper thread: Ray cancels a task by raising KeyboardInterrupt in its thread, which takes effect
    only while that thread runs Python, not while it waits for a child's output. Here it waits in short joins and
    passes the interrupt on to the running command (SIGTERM, then SIGKILL after `grace_s`).
    """
    import ray

    where = f"Ray node {socket.gethostname()} ({ray.util.get_node_ip_address()})"
    if not Path(run.cwd).is_dir():
        raise RuntimeError(
            f"{where} does not have the driver's working folder {run.cwd}: every node must see the experiment "
            "folders at the same paths (a shared file system)"
        )
    commands = [[sys.executable, *c[1:]] if c and c[0] == driver_python else c for c in run.commands]
    run = dataclasses.replace(run, commands=commands)
    children: set[subprocess.Popen] = set()
    result: dict[str, Any] = {}

    def track(process: subprocess.Popen, started: bool) -> None:
        (children.add if started else children.discard)(process)

    def work() -> None:
        try:
            result["outcome"] = run_commands(run, dict(os.environ, **run.env), track, grace_s)
        except BaseException as err:  # raised in the task's thread below
            result["error"] = err

    helper = threading.Thread(target=work, daemon=True)
    helper.start()
    try:
        while helper.is_alive():
            helper.join(POLL_S)
    except BaseException:
        for process in list(children):
            end_process_group(process, grace_s)
        raise
    if "error" in result:
        raise result["error"]
    return dataclasses.replace(result["outcome"], where=where)


class _LogFollower:
    """Reads what a stage log gained since the last call: `$ command` lines and progress lines."""

    def __init__(self, run: StageRun) -> None:
        self.run = run
        self.offset = 0
        self.started = 0  # commands seen starting
        self.partial = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def follow(self) -> None:
        try:
            with self.run.log_path.open("rb") as log:
                log.seek(self.offset)
                data = log.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.partial + self.decoder.decode(data)).split("\n")
        self.partial = lines.pop()
        for line in lines:
            if line.startswith(COMMAND_PREFIX) and self.started < len(self.run.commands):
                self.run.on_command(self.started)
                self.started += 1
            elif PROGRESS.match(line):
                self.run.on_progress(line.rstrip())


class _RayJob(Job):
    def __init__(self, executor: RayExecutor, ref, run: StageRun) -> None:
        self.executor, self.ref, self.run = executor, ref, run
        self.follower = _LogFollower(run)
        self.outcome: StageOutcome | None = None

    def wait(self, timeout: float | None = None) -> StageOutcome | None:
        ray = self.executor.ray
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.outcome is None:
            step = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
            ready, _ = ray.wait([self.ref], timeout=step)
            self.follower.follow()
            if ready:
                self.outcome = self._result()
                self.executor.forget(self)
            elif deadline is not None and time.monotonic() >= deadline:
                return None
        return self.outcome

    def _result(self) -> StageOutcome:
        ray = self.executor.ray
        try:
            return ray.get(self.ref)
        except ray.exceptions.TaskCancelledError:
            return StageOutcome(-signal.SIGTERM, where="Ray: the task was cancelled")
        except ray.exceptions.RayError as err:  # the task raised, or its worker or node died
            cause = getattr(err, "cause", None) or err
            lines = [line for line in str(cause).splitlines() if line.strip()]
            reason = lines[-1] if lines else type(cause).__name__
            raise PipelineError(
                f"stage {self.run.name!r} failed on Ray: {reason}; log: {self.run.log_path}"
            ) from None

    def cancel(self, force: bool = False) -> None:
        self.executor.ray.cancel(self.ref, force=force)


class RayExecutor(Executor):
    """Stages as Ray tasks on an existing cluster (`address`: "auto", host:port or ray://...); `slots` stages are
    submitted at once. Reuses the process's Ray connection if there is one (then leaves it open on `close`)."""

    def __init__(self, address: str = "auto", slots: int = 1, grace_s: float = 10.0) -> None:
        if slots < 1:
            raise PipelineError(f"jobs must be >= 1, got {slots}")
        self.ray = import_ray()
        self.slots = slots
        self.grace_s = grace_s
        self.connected_here = False
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=address, log_to_driver=False, logging_level="WARNING")
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise PipelineError(
                    f"hardware.ray_address {address!r}: cannot connect to a Ray cluster ({err}). Start one with "
                    "`ray start --head` (docs/cluster.md), or set hardware.ray_address to its address"
                ) from None
            self.connected_here = True
        self.task = self.ray.remote(run_on_node)
        self._lock = threading.Lock()
        self._jobs: set[_RayJob] = set()

    def submit(self, run: StageRun) -> Job:
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        env.update(run.env)
        env["OMP_NUM_THREADS"] = str(max(1, int(run.resources.cpus)))
        # Absolute paths: the task's working folder is the Ray worker's until the commands start.
        absolute = dataclasses.replace(
            run, env=env, log_path=Path(run.cwd, run.log_path), folder=Path(run.cwd, run.folder)
        )
        shipped = dataclasses.replace(  # callbacks stay here: the follower calls them
            absolute, on_command=ignore, on_progress=ignore
        )
        res = run.resources
        options = {"num_cpus": res.cpus, "num_gpus": res.gpus, "max_retries": 0, "name": f"stage:{run.name}"}
        if res.memory_gb > 0:
            options["memory"] = int(res.memory_gb * 2**30)
        ref = self.task.options(**options).remote(shipped, sys.executable, self.grace_s)
        job = _RayJob(self, ref, absolute)
        with self._lock:
            self._jobs.add(job)
        return job

    def forget(self, job: _RayJob) -> None:
        with self._lock:
            self._jobs.discard(job)

    def stop(self, grace_s: float = 10.0) -> None:
        """Cancel every running task (its commands get SIGTERM), then kill the workers of those left after
        `grace_s` (their commands die with them)."""
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        refs = [job.ref for job in jobs]
        if refs:
            self.ray.wait(refs, num_returns=len(refs), timeout=grace_s)
        left = [job for job in jobs if not self.ray.wait([job.ref], timeout=0)[0]]
        for job in left:
            job.cancel(force=True)  # the worker dies, and its commands with it (die_with_parent)
        if left:
            self.ray.wait([job.ref for job in left], num_returns=len(left), timeout=grace_s)

    def close(self) -> None:
        if self.connected_here and self.ray.is_initialized():
            self.ray.shutdown()
            self.connected_here = False
