"""Calibration: measured service times for the auth tier, written as a profile (TOML) that a
scenario loads with ``[auth] profile = "calibration.toml"``.

Two measurements. PyJWT ``encode`` and ``decode`` (signature and claims checked) per algorithm
on this machine, each key generated and loaded once, so that the timing is the per-token cost a
server pays. And, when asked, a running reference server's ``/login`` and ``/token`` under load
from parallel clients: the mean service demand of a call is the busy time of the server over
the calls it completed (its throughput at saturation, one event loop serving).

A measured time goes into the profile as a distribution: the empirical distribution of
:data:`QUANTILES` equally likely quantiles of the samples (at probabilities (i + ½)/n). Timings
of a real signature are skewed, with a long right tail (allocation, the scheduler, caches); a
queue's waits depend on that spread (Pollaczek–Khinchine: on the second moment, not just the
mean), and a parametric fit would impose a shape the samples may not have. The quantiles keep
the measured shape up to its far tail in a fixed, readable size whatever the number of samples;
the mean, median and p99 of the raw samples are written beside it.

Profile layout::

    [machine]                 # where and with what it was measured
    [algorithms.RS256]        # one table per algorithm
    sign_time = { dist = "empirical", values = ["…", …] }   # what a scenario uses
    sign_time_mean = "1.2ms"  # and, for the reader, the measured mean, median and p99
    sign_time_p50 = "…"
    sign_time_p99 = "…"
    verify_time = { dist = "empirical", values = ["…", …] }
    [endpoints]               # only with --server
    login_call = "…"          # mean service demand of one /login (signing included)
    refresh_call = "…"        # of one /token refresh
    refresh_mints = 2         # tokens the measured server minted per refresh
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import tomli_w

ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")
#: how many equally likely quantiles of the samples a profile keeps per measured time
QUANTILES = 100


def format_seconds(seconds: float) -> str:
    """A duration as a scenario file spells it, to three significant digits (``"812us"``)."""
    for scale, unit in ((1e-6, "us"), (1e-3, "ms")):
        text = f"{max(seconds, 0.0) / scale:.3g}"
        if "e" not in text and float(text) < 1000:
            return f"{text}{unit}"
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def _keys(algorithm: str):
    """(signing key, verifying key), made once."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if algorithm == "HS256":
        secret = os.urandom(32)
        return secret, secret
    if algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    return private, private.public_key()


def _timed(operation: Callable[[], object], samples: int) -> np.ndarray:
    for _ in range(min(50, samples)):  # warm caches and lazy imports
        operation()
    out = np.empty(samples)
    clock = time.perf_counter_ns
    for i in range(samples):
        started = clock()
        operation()
        out[i] = clock() - started
    return out / 1e9


def measure_algorithm(algorithm: str, samples: int = 2000) -> dict[str, np.ndarray]:
    """Seconds per PyJWT ``encode`` (``sign``) and ``decode`` (``verify``) of a token shaped like
    the reference server's, ``samples`` of each."""
    import jwt

    signing, verifying = _keys(algorithm)
    now = int(time.time())
    claims = {"sub": "user-123", "sid": "42", "jti": "1001", "typ": "access", "iat": now, "exp": now + 3600}
    token = jwt.encode(claims, signing, algorithm=algorithm)
    return {
        "sign": _timed(lambda: jwt.encode(claims, signing, algorithm=algorithm), samples),
        "verify": _timed(lambda: jwt.decode(token, verifying, algorithms=[algorithm]), samples),
    }


def measured_distribution(values: np.ndarray, n: int = QUANTILES) -> dict:
    """The samples ``values`` (seconds) as a scenario distribution: the empirical distribution
    of their ``n`` quantiles at probabilities (i + ½)/n, each equally likely."""
    probabilities = (np.arange(n) + 0.5) / n
    return {"dist": "empirical", "values": [format_seconds(float(q)) for q in np.quantile(values, probabilities)]}


def _spread(name: str, values: np.ndarray) -> dict:
    return {name: measured_distribution(values),
            f"{name}_mean": format_seconds(float(values.mean())),
            f"{name}_p50": format_seconds(float(np.percentile(values, 50))),
            f"{name}_p99": format_seconds(float(np.percentile(values, 99)))}


def _mean(table: dict, name: str) -> str:
    """The mean a profile gives for ``name``: its ``_mean`` entry, or (older profiles) the value."""
    value = table.get(f"{name}_mean", table[name])
    return value if isinstance(value, str) else format_seconds(_dist_mean(value))


def _dist_mean(value) -> float:
    from pydantic import TypeAdapter

    from sim.distributions import DurationDist

    return TypeAdapter(DurationDist).validate_python(value, context={"from_file": True}).mean


@dataclass
class Profile:
    """A calibration profile: machine facts, per-algorithm times and, optionally, endpoints."""

    machine: dict
    algorithms: dict[str, dict[str, str]]
    endpoints: dict | None = None

    def to_dict(self) -> dict:
        data = {"machine": self.machine, "algorithms": self.algorithms}
        if self.endpoints:
            data["endpoints"] = self.endpoints
        return data

    def save(self, path: str | Path) -> Path:
        """Write the profile (atomically: a half-written profile never replaces a good one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        header = "# Service times measured by `refreshlab calibrate`; load it from a scenario with\n" \
                 f"# [auth] profile = \"{path.name}\"\n"
        tmp.write_text(header + tomli_w.dumps(self.to_dict()), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def table(self):
        from rich.table import Table

        table = Table(title="measured on this machine (mean, p50, p99)", title_justify="left")
        for col in ("algorithm", "sign", "verify"):
            table.add_column(col, justify="left" if col == "algorithm" else "right")
        for name, t in self.algorithms.items():
            table.add_row(name, *(f"{_mean(t, k)} / {t[k + '_p50']} / {t[k + '_p99']}" for k in ("sign_time", "verify_time")))
        if self.endpoints:
            e = self.endpoints
            table.add_row(f"server /login, /token ({e['algorithm']})", e["login_call"], e["refresh_call"])
        return table


def calibrate(algorithms: list[str] = list(ALGORITHMS), samples: int = 2000,
              progress: Callable[[str], None] | None = None) -> Profile:
    """Measure every algorithm in ``algorithms``; returns the :class:`Profile`."""
    import cryptography
    import jwt

    tell = progress or (lambda message: None)
    measured = {}
    for algorithm in algorithms:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; expected one of: {', '.join(ALGORITHMS)}")
        times = measure_algorithm(algorithm, samples)
        measured[algorithm] = {**_spread("sign_time", times["sign"]), **_spread("verify_time", times["verify"])}
        tell(f"{algorithm}: sign {measured[algorithm]['sign_time_mean']}, verify {measured[algorithm]['verify_time_mean']} (means)")
    machine = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": platform.platform(), "processor": platform.machine(), "cores": os.cpu_count() or 1,
        "python": platform.python_version(), "pyjwt": jwt.__version__, "cryptography": cryptography.__version__,
        "samples": samples,
    }
    return Profile(machine, measured)


# -- a running server under load --------------------------------------------------------------

def _post(url: str, fields: dict) -> dict:
    body = urllib.parse.urlencode(fields).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=30) as answer:
        return json.load(answer)


def measure_server(base_url: str, concurrency: int = 8, duration_s: float = 5.0,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Load ``/login`` then ``/token`` of a reference server at ``base_url`` with ``concurrency``
    clients for ``duration_s`` each; returns the profile's ``[endpoints]`` table. The mean
    service demand of a call is ``duration / completed calls``: at saturation one event loop is
    never idle. Raises ``OSError`` when the server cannot be reached or answers errors."""
    tell = progress or (lambda message: None)
    base_url = base_url.rstrip("/")
    with urllib.request.urlopen(base_url + "/healthz", timeout=10) as answer:
        health = json.load(answer)
    first = _post(base_url + "/login", {"username": "calibrate-0", "password": "refreshlab"})
    rotates = "refresh_token" in _post(base_url + "/token", {"grant_type": "refresh_token",
                                                               "refresh_token": first["refresh_token"]})

    def load(kind: str) -> tuple[float, np.ndarray]:
        latencies: list[list[float]] = [[] for _ in range(concurrency)]
        errors: list[BaseException] = []
        stop = threading.Event()

        def client(i: int) -> None:
            try:
                refresh = _post(base_url + "/login", {"username": f"calibrate-{i + 1}", "password": "refreshlab"})["refresh_token"]
                while not stop.is_set():
                    started = time.perf_counter()
                    if kind == "login":
                        _post(base_url + "/login", {"username": f"calibrate-{i + 1}", "password": "refreshlab"})
                    else:
                        answer = _post(base_url + "/token", {"grant_type": "refresh_token", "refresh_token": refresh})
                        refresh = answer.get("refresh_token", refresh)
                    latencies[i].append(time.perf_counter() - started)
            except (OSError, ValueError, KeyError) as exc:
                errors.append(exc)
                stop.set()

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        stop.wait(duration_s)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        if errors:
            raise OSError(f"{kind} under load failed: {errors[0]}")
        done = np.array([x for per in latencies for x in per])
        if not len(done):
            raise OSError(f"no {kind} call completed in {duration_s:g} s")
        return elapsed / len(done), done

    login_demand, login_latency = load("login")
    tell(f"/login: {len(login_latency)} calls, {format_seconds(login_demand)} per call")
    refresh_demand, refresh_latency = load("refresh")
    tell(f"/token: {len(refresh_latency)} calls, {format_seconds(refresh_demand)} per call")
    return {
        "url": base_url, "strategy": health.get("strategy", ""), "algorithm": health.get("algorithm", ""),
        "concurrency": concurrency, "duration": format_seconds(duration_s),
        "login_call": format_seconds(login_demand), "refresh_call": format_seconds(refresh_demand),
        "refresh_mints": 2 if rotates else 1,
        "login_latency_p50": format_seconds(float(np.percentile(login_latency, 50))),
        "login_latency_p99": format_seconds(float(np.percentile(login_latency, 99))),
        "refresh_latency_p50": format_seconds(float(np.percentile(refresh_latency, 50))),
        "refresh_latency_p99": format_seconds(float(np.percentile(refresh_latency, 99))),
    }


# -- scenarios ----------------------------------------------------------------------------------

def auth_times(profile_path: Path, algorithm: str) -> dict:
    """The ``[auth]`` fields a profile gives a scenario signing with ``algorithm``:
    ``sign_time`` and ``verify_time`` (measured distributions, or a mean in older profiles), and
    with measured endpoints ``login_time`` and ``refresh_time``: the call's mean demand less the
    mean signing and verifying the scenario adds (a constant: under load only the throughput,
    hence the mean, of a call is measured). ``ValueError`` says what is missing."""
    from sim.units import parse_duration

    try:
        data = tomllib.loads(profile_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no such profile {profile_path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read profile {profile_path}: {exc}") from None
    table = data.get("algorithms", {}).get(algorithm)
    if not isinstance(table, dict) or not {"sign_time", "verify_time"} <= set(table):
        have = ", ".join(data.get("algorithms", {})) or "none"
        raise ValueError(f"profile {profile_path} has no {algorithm} times (it has: {have}); "
                         f"run refreshlab calibrate --algorithms {algorithm}")
    out = {"sign_time": table["sign_time"], "verify_time": table["verify_time"]}
    endpoints = data.get("endpoints")
    if isinstance(endpoints, dict) and {"login_call", "refresh_call"} <= set(endpoints):
        server = data.get("algorithms", {}).get(endpoints.get("algorithm"), table)
        sign, verify = parse_duration(_mean(server, "sign_time")), parse_duration(_mean(server, "verify_time"))
        mints = int(endpoints.get("refresh_mints", 2))
        out["login_time"] = format_seconds(max(parse_duration(endpoints["login_call"]) - 2 * sign, 0.0))
        out["refresh_time"] = format_seconds(max(parse_duration(endpoints["refresh_call"]) - verify - mints * sign, 0.0))
    return out
