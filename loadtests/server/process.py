"""Run the reference server in a child process (uvicorn on 127.0.0.1), for tests and load tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from loadtests.server import lifecycle
from loadtests.server import protocol as p


#: what each uvicorn worker logs (at level info) once it accepts connections
UVICORN_STARTED = "Application startup complete."


class ServerStartError(RuntimeError):
    """The server process exited or did not answer ``/healthz`` in time; carries its output."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_healthy(base_url: str, process: subprocess.Popen, timeout_s: float) -> dict:
    """Poll ``GET /healthz`` until it answers 200 and return its JSON; raise
    :class:`ServerStartError` if ``process`` exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(base_url + p.HEALTH_PATH, timeout=1.0) as answer:
                return json.load(answer)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise ServerStartError(f"server did not answer {p.HEALTH_PATH} within {timeout_s:g}s")


def _written(log) -> str:
    """What the child has written to ``log`` so far; read without moving the offset the child
    writes at (parent and child share one open file)."""
    return os.pread(log.fileno(), os.fstat(log.fileno()).st_size, 0).decode(errors="replace")


def _worker_count(args: list[str]) -> int:
    return int(args[args.index("--workers") + 1]) if "--workers" in args else 1


def wait_workers_started(log, process: subprocess.Popen, workers: int, deadline: float) -> None:
    """With several uvicorn workers, ``/healthz`` answers as soon as one of them accepts: wait
    until each has logged its start-up, so that connections can reach every worker."""
    if workers <= 1:
        return
    while time.monotonic() < deadline:
        if _written(log).count(UVICORN_STARTED) >= workers:
            return
        if process.poll() is not None:
            raise ServerStartError(f"server exited with status {process.returncode}")
        time.sleep(0.05)
    raise ServerStartError(f"fewer than {workers} workers logged {UVICORN_STARTED!r} in time")


@contextmanager
def run_uvicorn_process(args: list[str], port: int, *, host: str = "127.0.0.1",
                        startup_timeout_s: float = 30.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``python <args>`` (a process that serves HTTP on ``host:port``), wait for
    ``/healthz`` (and, with ``--workers N`` in ``args``, for all N uvicorn workers to report their
    start-up), yield (base URL, process), and stop the process on exit (SIGTERM, then SIGKILL).

    The child's output goes to a temporary file, quoted in :class:`ServerStartError` when it
    fails to start."""
    base_url = f"http://{host}:{port}"
    with tempfile.TemporaryFile(mode="w+") as log:
        # a session of its own: a Ctrl-C at the terminal must not stop the server before the
        # caller has read its ledger; and it dies with us however we die (lifecycle)
        process = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, **lifecycle.child_options())
        lifecycle.adopt(process.pid)
        try:
            try:
                deadline = time.monotonic() + startup_timeout_s
                wait_healthy(base_url, process, startup_timeout_s)
                wait_workers_started(log, process, _worker_count(args), deadline)
            except ServerStartError as exc:
                raise ServerStartError(f"{exc}; {' '.join(args)}\n{_written(log)}") from None
            yield base_url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def serve_args(
    scenario_path: str | Path,
    strategy: str,
    time_scale: float = 1.0,
    *,
    port: int,
    algorithm: str | None = None,
    service_time: bool = True,
    private_key_path: str | Path | None = None,
    host: str = "127.0.0.1",
    store: str | None = None,
    workers: int = 1,
    ledger: bool = True,
    prune: bool = True,
    test_clock: bool = False,
) -> list[str]:
    """The interpreter arguments that serve variant ``strategy`` of the scenario file on ``host:port``
    (with ``/ledger`` on unless ``ledger`` is false: the load-test harness reads it; with a test
    clock, moved by ``POST /test/clock``, only when ``test_clock`` is true: for tests)."""
    args = ["-m", "loadtests.server", str(scenario_path), "--strategy", strategy, "--host", host,
            "--port", str(port), "--time-scale", repr(float(time_scale)),
            "--service-time" if service_time else "--no-service-time",
            "--ledger" if ledger else "--no-ledger", "--prune" if prune else "--no-prune",
            "--workers", str(workers)]
    if store:
        args += ["--store", store]
    if algorithm:
        args += ["--algorithm", algorithm]
    if private_key_path:
        args += ["--private-key", str(private_key_path)]
    if test_clock:
        args += ["--test-clock"]
    return args


@contextmanager
def serve_in_subprocess(
    scenario_path: str | Path,
    strategy: str,
    time_scale: float = 1.0,
    *,
    algorithm: str | None = None,
    service_time: bool = True,
    private_key_path: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    startup_timeout_s: float = 30.0,
    **options,
) -> Iterator[str]:
    """Serve variant ``strategy`` of the scenario file in a uvicorn child process.

    Yields the base URL (``http://127.0.0.1:<port>``, a free port unless ``port`` is given) once
    ``/healthz`` answers; stops the process when the block ends. ``options``: ``store``,
    ``workers``, ``ledger``, ``prune``, ``test_clock`` of :func:`serve_args`. Raises :class:`ServerStartError`
    with the child's output when it cannot start (bad scenario, unknown strategy, port taken).
    """
    port = port or free_port(host)
    args = serve_args(scenario_path, strategy, time_scale, port=port, algorithm=algorithm,
                      service_time=service_time, private_key_path=private_key_path, host=host, **options)
    with run_uvicorn_process(args, port, host=host, startup_timeout_s=startup_timeout_s) as (base_url, _):
        yield base_url
