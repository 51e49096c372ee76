"""Child processes that never outlive the run that started them, and signals that stop a run
cleanly.

A load test starts a server and Locust (which may start workers of its own) and writes into a
temporary folder. If the load test dies in any way — Ctrl-C, SIGTERM, or ``kill -9``, which no
handler sees — all of that must go too. Two mechanisms:

- each child asks Linux for a parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)`` through
  ctypes, between fork and exec), so it is killed the moment its parent dies;
- a :class:`Reaper`: a small process of its own that holds the read end of a pipe whose write end
  only the run holds. When the run ends, however it ends, the kernel closes that end; the reaper
  then kills the process groups it was told about (Locust's workers included) and removes the
  temporary folders. A clean run has removed them already; the reaper then finds nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

PR_SET_PDEATHSIG = 1
_active: list["Reaper"] = []


def _set_parent_death_signal(parent_pid: int) -> None:
    # runs in the child between fork and exec: async-signal-safe calls only, no exceptions out
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except Exception:
        pass
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)


def child_options() -> dict:
    """``subprocess.Popen`` keyword arguments for a child that must die with this process: a
    session (and process group) of its own, so that a Ctrl-C at the terminal reaches only us and we
    stop it in order, and the parent-death signal on Linux."""
    options: dict = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        parent = os.getpid()
        options["preexec_fn"] = lambda: _set_parent_death_signal(parent)
    return options


def adopt(pid: int) -> None:
    """Tell the active reapers (if any) that process group ``pid`` must not outlive the run."""
    for reaper in _active:
        reaper.add_group(pid)


class Reaper:
    """Within its block, a watcher process kills the adopted process groups and removes
    ``paths`` once this process is gone (see the module docstring)."""

    def __init__(self, *paths: str | Path) -> None:
        self.paths = [str(p) for p in paths]
        self._lock = threading.Lock()

    def __enter__(self) -> "Reaper":
        read_end, self._write_end = os.pipe()
        os.set_inheritable(read_end, True)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from loadtests.server.lifecycle import reap; reap()", str(read_end)],
            pass_fds=(read_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(read_end)
        for path in self.paths:
            self._send(f"path {path}")
        _active.append(self)
        return self

    def add_group(self, pgid: int) -> None:
        self._send(f"group {int(pgid)}")

    def _send(self, line: str) -> None:
        with self._lock:
            os.write(self._write_end, (line + "\n").encode())

    def __exit__(self, *exc_info) -> None:
        _active.remove(self)
        os.close(self._write_end)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def reap() -> None:
    """The reaper process: read ``group PGID`` / ``path PATH`` lines until end of file, then kill
    the groups and remove the paths."""
    read_end = int(sys.argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: list[int] = []
    paths: list[str] = []
    with os.fdopen(read_end, "rb") as pipe:
        for raw in pipe:
            kind, _, value = raw.decode().rstrip("\n").partition(" ")
            if kind == "group":
                groups.append(int(value))
            elif kind == "path":
                paths.append(value)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


class SigtermAsInterrupt:
    """Within its block, SIGTERM raises ``KeyboardInterrupt`` like Ctrl-C does (main thread only),
    so that ``kill PID`` stops a run the same careful way."""

    def __enter__(self):
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False
