"""Start the third-party peer servers on 127.0.0.1 for a test, waiting on their own log lines.

- :func:`simplejwt_server`: djangorestframework-simplejwt (PyPI) under Django's runserver, a
  fresh SQLite database with ``users`` users ``user-0`` … (password ``refreshlab``); its records
  are the database (OutstandingToken, BlacklistedToken) and its request log.
- :func:`oidc_provider_server`: node-oidc-provider (npm, installed by ``npm ci`` in
  ``tests/peers/oidc-provider``); its records are its own events, written one JSON line each.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.conftest import poll_until

HERE = Path(__file__).parent
SIMPLEJWT = HERE / "simplejwt"
OIDC = HERE / "oidc-provider"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(path: Path, pattern: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Block until ``pattern`` appears in the log file ``path`` (the server says it is ready)."""
    regex = re.compile(pattern)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{path.read_text(errors='replace')[-3000:]}")
        return path.is_file() and regex.search(path.read_text(errors="replace")) is not None

    poll_until(ready, timeout_s, f"{pattern!r} in {path}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class SimplejwtServer:
    url: str
    db: Path
    log: Path
    rotate: bool

    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request the server logged."""
        pattern = re.compile(r'"(\w+) (\S+) HTTP/[\d.]+" (\d{3})')
        return [(m[1], m[2], int(m[3])) for m in pattern.finditer(self.log.read_text(errors="replace"))]

    def query(self, sql: str, *args) -> int:
        with contextlib.closing(sqlite3.connect(self.db)) as db:
            return int(db.execute(sql, args).fetchone()[0])

    def refresh_tokens_issued(self, excluding_user: str) -> int:
        """OutstandingToken rows: every refresh token simplejwt issued (logins and rotations)."""
        return self.query("SELECT COUNT(*) FROM token_blacklist_outstandingtoken o JOIN auth_user u "
                          "ON o.user_id = u.id WHERE u.username != ?", excluding_user)

    def blacklisted(self, excluding_user: str) -> int:
        """BlacklistedToken rows: refresh tokens simplejwt revoked."""
        return self.query("SELECT COUNT(*) FROM token_blacklist_blacklistedtoken b JOIN "
                          "token_blacklist_outstandingtoken o ON b.token_id = o.id JOIN auth_user u "
                          "ON o.user_id = u.id WHERE u.username != ?", excluding_user)


@contextlib.contextmanager
def simplejwt_server(folder: Path, *, rotate: bool, access_s: float, users: int) -> Iterator[SimplejwtServer]:
    """A simplejwt server on a free loopback port (rotation and blacklist on or off)."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "peer.sqlite3"
    env = {**os.environ, "PEER_DB": str(db), "PEER_ROTATE": "1" if rotate else "0", "PEER_ACCESS_S": str(access_s),
           "PYTHONUNBUFFERED": "1"}
    manage = [sys.executable, str(SIMPLEJWT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=SIMPLEJWT, timeout=120)
    create = ("from django.contrib.auth.models import User\n"
              "from django.contrib.auth.hashers import make_password\n"
              "h = make_password('refreshlab')\n"
              f"User.objects.bulk_create([User(username=f'user-{{n}}', password=h) for n in range({users})])\n")
    subprocess.run([*manage, "shell", "-v0", "-c", create], env=env, check=True, cwd=SIMPLEJWT, timeout=120)
    port = free_port()
    log = folder / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([*manage, "runserver", "--noreload", f"127.0.0.1:{port}"], env=env, cwd=SIMPLEJWT,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_line(log, r"Quit the server with", process)
        yield SimplejwtServer(f"http://127.0.0.1:{port}", db, log, rotate)
    finally:
        stop(process)


def node_available() -> bool:
    return shutil.which("node") is not None and (OIDC / "node_modules" / "oidc-provider").is_dir()


@dataclass
class OidcServer:
    url: str
    events: Path
    log: Path

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.events.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def oidc_provider_server(folder: Path, *, access_s: int, rotate: bool = True,
                         clock_tolerance_s: int = 15) -> Iterator[OidcServer]:
    """node-oidc-provider on a free loopback port; every provider event lands in ``events.jsonl``.
    ``clock_tolerance_s``: how long past ``exp`` it still accepts a token (its default: 15 s)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    events, log = folder / "events.jsonl", folder / "server.log"
    env = {**os.environ, "PEER_PORT": str(port), "PEER_EVENTS": str(events), "PEER_ACCESS_S": str(access_s),
           "PEER_ROTATE": "1" if rotate else "0", "PEER_CLOCK_TOLERANCE_S": str(clock_tolerance_s)}
    with open(log, "w") as out:
        process = subprocess.Popen(["node", str(OIDC / "server.mjs")], env=env, cwd=OIDC, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_line(log, r"listening on http://127\.0\.0\.1:\d+", process)
        yield OidcServer(f"http://127.0.0.1:{port}", events, log)
    finally:
        stop(process)
