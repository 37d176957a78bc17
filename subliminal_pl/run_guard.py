"""Guards of a pipeline run: one run per output folder, and stage processes that end when their pipeline dies.

`FolderLock` holds an exclusive `flock` on `<folder>/pipeline.lock` for the whole run and writes who holds it
(pid, host, start time, command) into the file. The kernel drops the lock when its process dies however it dies
(SIGKILL included), so a later run takes over a lock left by a dead run, with a note; a second run while the
first is alive is refused with an error naming it. On file systems without `flock`, whether the recorded pid
is alive decides. A lock recorded by another host is never taken over silently (its pid cannot be checked here).

`die_with_parent` is a `preexec_fn` for `subprocess.Popen` (Linux): the child gets SIGKILL when the thread that
started it ends, so SIGKILL, SIGHUP or a crash of the pipeline never leaves a stage process writing on its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCK_FILE = "pipeline.lock"
_PR_SET_PDEATHSIG = 1


class FolderBusyError(RuntimeError):
    """Another live run holds the folder's lock; the message names it."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    command = f", command: {holder['command']}" if holder.get("command") else ""
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
        f"{command}"
    )


class FolderLock:
    """Context manager: exclusive use of `folder` by this process; `note` receives the take-over message."""

    def __init__(self, folder: str | Path, note: Callable[[str], None] = print) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.note = note
        self._fd: int | None = None

    def _read(self, fd: int) -> dict[str, Any]:
        raw = os.pread(fd, 65536, 0).decode("utf-8", "replace").strip()
        if not raw:
            return {}
        try:
            holder = json.loads(raw)
        except ValueError:
            return {"pid": "?", "command": f"unreadable lock file: {raw[:80]!r}"}
        return holder if isinstance(holder, dict) else {}

    def _busy(self, holder: dict[str, Any], why: str) -> FolderBusyError:
        pid = holder.get("pid", "PID")
        return FolderBusyError(
            f"{self.folder} is in use by another pipeline ({_describe(holder)}){why}. Two runs on one folder "
            f"would empty each other's stage folders: wait for it to end, or stop it (kill {pid}) and run again"
        )

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                have_flock = True
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    raise self._busy(self._read(fd), "") from None
                have_flock = False  # no flock here (some network file systems): the recorded pid decides
            previous = self._read(fd)
            if previous:
                self._check_previous(previous, have_flock)
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _check_previous(self, previous: dict[str, Any], have_flock: bool) -> None:
        pid = previous.get("pid")
        same_host = previous.get("host") == socket.gethostname()
        if not same_host:
            raise self._busy(
                previous,
                f"; its pid cannot be checked from this host: if that run is gone, delete {self.path}",
            )
        alive = isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid)
        if alive and not have_flock:
            raise self._busy(previous, "")
        state = "holds no lock (its pid is reused)" if alive else "is no longer running"
        self.note(f"note: taking over {self.path}: the run that left it ({_describe(previous)}) {state}")

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        # Emptied, not removed: removing would let a run that opened the old file and one that creates a new
        # one both hold "the" lock.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# Looked up once here: the preexec_fn runs between fork and exec, where loading a library is not safe.
_PRCTL = _load_prctl()


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGKILL when its parent dies (None where prctl is missing)."""
    if _PRCTL is None:
        return None
    prctl = _PRCTL

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the line above took effect
            os._exit(1)

    return preexec


@contextlib.contextmanager
def hangup_and_term_interrupt():
    """While inside, SIGTERM and SIGHUP raise KeyboardInterrupt (as Ctrl-C does) in the main thread."""
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
