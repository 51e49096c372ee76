"""Throughput of the reference server's ``POST /token`` against a minimal Starlette + PyJWT handler.

Both run as uvicorn child processes on 127.0.0.1 (one worker each, no access log) and are driven
in alternating rounds by the same load generator: an asyncio HTTP/1.1 keep-alive client with a
fixed number of connections, each sending one refresh grant after another. Service time is off,
so the reference server's cost is its HTTP handling, form parsing, the policy and ledger, and
JWT verify + sign (HS256, no rotation: one signature per refresh, like the baseline).

One difference is deliberate and worth knowing when reading the ratio: the baseline calls
``jwt.encode`` / ``jwt.decode`` with the secret as a minimal handler would, and PyJWT then
validates that secret on every call; the reference server validates it once at start-up
(``loadtests.server.keys``), the HMAC counterpart of loading a PEM key once. Signatures are made
and checked in full by both.

Reported per server: requests per second, and the server process's CPU time per request (user +
system), which other load on the machine disturbs much less than throughput does.

Run: ``python bench/bench_server.py [--seconds 5] [--rounds 5] [--connections 16]``. Goal: the
reference server serves at least 90% of the baseline's requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import jwt
import psutil
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from loadtests.server import protocol as p
from loadtests.server.process import free_port, run_uvicorn_process, serve_args

BENCH_DIR = Path(__file__).resolve().parent
#: the baseline's HS256 secret (benchmark only)
BASELINE_SECRET = b"refreshlab-bench-baseline-secret-32b"
ACCESS_TTL_S = 900

SCENARIO = """
description = "bench: reference /token throughput"
[tokens]
access_ttl = "15m"
refresh_ttl = "7d"
algorithm = "HS256"
[[strategies]]
name = "no-rotation"
client = { trigger = "reactive" }
server = { kind = "dual_token" }
"""


# --- the baseline: decode the refresh JWT, sign an access token, answer JSON -------------------

async def baseline_token(request: Request) -> JSONResponse:
    """A minimal refresh handler: verify the refresh JWT, sign a new access token."""
    form = await request.form()
    if form.get("grant_type") != "refresh_token":
        return JSONResponse({"error": "unsupported_grant_type"}, 400)
    refresh_token = form.get("refresh_token", "")
    try:
        claims = jwt.decode(refresh_token, BASELINE_SECRET, algorithms=["HS256"])
    except jwt.InvalidTokenError:
        return JSONResponse({"error": "invalid_grant"}, 400)
    now = int(time.time())
    access = jwt.encode({"sub": claims["sub"], "sid": claims["sid"], "jti": str(time.monotonic_ns()),
                         "typ": "access", "iat": now, "exp": now + ACCESS_TTL_S},
                        BASELINE_SECRET, algorithm="HS256")
    return JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": ACCESS_TTL_S,
                         "refresh_token": refresh_token},
                        headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def baseline_health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


baseline_app = Starlette(routes=[
    Route(p.TOKEN_PATH, baseline_token, methods=["POST"]),
    Route(p.HEALTH_PATH, baseline_health, methods=["GET"]),
])


# --- the load generator ------------------------------------------------------------------------

def refresh_request(base_url: str, refresh_token: str) -> bytes:
    """The raw HTTP/1.1 bytes of one refresh grant to ``base_url``."""
    body = urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": refresh_token}).encode()
    host = urllib.parse.urlsplit(base_url).netloc
    head = (f"POST {p.TOKEN_PATH} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _connection(host: str, port: int, request: bytes, stop_at: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            counts[0 if status == b"200" else 1] += 1
    finally:
        writer.close()


async def _drive(base_url: str, request: bytes, seconds: float, connections: int) -> tuple[int, int, float]:
    parts = urllib.parse.urlsplit(base_url)
    counts = [0, 0]
    started = time.perf_counter()
    await asyncio.gather(*(_connection(parts.hostname, parts.port, request, started + seconds, counts)
                           for _ in range(connections)))
    return counts[0], counts[1], time.perf_counter() - started


def drive(base_url: str, request: bytes, seconds: float, connections: int,
          process: psutil.Process) -> tuple[float, float, int]:
    """Send ``request`` over ``connections`` keep-alive connections for ``seconds``; returns
    (successful requests per second, server CPU microseconds per request, failed requests)."""
    cpu_before = sum(process.cpu_times()[:2])
    ok, failed, elapsed = asyncio.run(_drive(base_url, request, seconds, connections))
    cpu_s = sum(process.cpu_times()[:2]) - cpu_before
    return ok / elapsed, cpu_s / max(ok + failed, 1) * 1e6, failed


def reference_refresh_token(base_url: str) -> str:
    """Log in to the reference server and return the session's refresh token."""
    form = urllib.parse.urlencode({p.USERNAME_FIELD: "bench", p.PASSWORD_FIELD: p.TEST_PASSWORD}).encode()
    with urllib.request.urlopen(base_url + p.LOGIN_PATH, data=form) as answer:
        return json.load(answer)["refresh_token"]


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print requests/s of each server per round, medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one measured round")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per server (alternating)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent keep-alive connections")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before the rounds")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "bench.toml"
        scenario.write_text(SCENARIO)
        baseline_port, reference_port = free_port(), free_port()
        baseline_args = ["-m", "uvicorn", "bench_server:baseline_app", "--app-dir", str(BENCH_DIR),
                         "--host", "127.0.0.1", "--port", str(baseline_port), "--no-access-log",
                         "--log-level", "warning"]
        reference_args = serve_args(scenario, "no-rotation", port=reference_port, service_time=False)
        with run_uvicorn_process(baseline_args, baseline_port) as (baseline_url, baseline_process), \
                run_uvicorn_process(reference_args, reference_port) as (reference_url, reference_process):
            now = int(time.time())
            baseline_refresh = jwt.encode({"sub": "bench", "sid": "1", "jti": "1", "typ": "refresh",
                                           "iat": now, "exp": now + 86400}, BASELINE_SECRET, algorithm="HS256")
            servers = {
                "baseline": (baseline_url, refresh_request(baseline_url, baseline_refresh),
                             psutil.Process(baseline_process.pid)),
                "reference": (reference_url, refresh_request(reference_url, reference_refresh_token(reference_url)),
                              psutil.Process(reference_process.pid)),
            }
            for url, request, process in servers.values():
                drive(url, request, args.warmup, args.connections, process)
            rates: dict[str, list[float]] = {name: [] for name in servers}
            cpu: dict[str, list[float]] = {name: [] for name in servers}
            for round_no in range(args.rounds):
                for name, (url, request, process) in servers.items():
                    rate, cpu_us, failed = drive(url, request, args.seconds, args.connections, process)
                    if failed:
                        print(f"{name}: {failed} non-200 answers", file=sys.stderr)
                    rates[name].append(rate)
                    cpu[name].append(cpu_us)
                    print(f"round {round_no + 1} {name:9s} {rate:8.0f} req/s  {cpu_us:6.0f} us CPU/req")
    rate = {name: statistics.median(values) for name, values in rates.items()}
    cpu_us = {name: statistics.median(values) for name, values in cpu.items()}
    print(f"median req/s: baseline {rate['baseline']:.0f}, reference {rate['reference']:.0f}, "
          f"ratio {rate['reference'] / rate['baseline']:.1%} (goal >= 90%)")
    print(f"median server CPU per request: baseline {cpu_us['baseline']:.0f} us, reference "
          f"{cpu_us['reference']:.0f} us, throughput ratio implied {cpu_us['baseline'] / cpu_us['reference']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
