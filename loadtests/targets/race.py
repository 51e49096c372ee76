"""Measure a server's race window: how long after a refresh token is presented a second
presentation of the same token still succeeds (before the first one's rotation is visible).

The probe logs one user in and, for each offset ``δ`` in turn, presents one refresh token twice
from two threads, the second ``δ`` after the first (released together by a barrier), ``trials``
times. Both succeeding means the second presentation fell inside the window; one refused means
it did not. The share of passes at ``δ`` estimates the window's survival function ``P(W > δ)``;
made non-increasing, it gives an empirical distribution of the window that a target profile sets
as ``server_settings.race_window`` (see :class:`sim.strategies.server.DualTokenServer`).

Pairs where both presentations were refused (the token was already unusable) are not counted.
After a pair where both passed, the next one presents the refresh token the second received;
after a refusal the user logs in again (a server may have revoked the whole family).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from loadtests.targets.profile import TargetProfile
from loadtests.targets.transport import ProfileTransport, RequestsHttp
from sim.units import format_duration

#: offsets (seconds) between the two presentations, from simultaneous to well apart
DEFAULT_OFFSETS_S = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


class ProbeError(Exception):
    """The probe could not log in or refresh at all; the message names the step and status."""


@dataclass
class RaceProbe:
    """What the probe measured: per offset, pairs where the second presentation passed too and
    pairs counted; ``calls`` made (logins and refreshes, for the server's records)."""

    offsets_s: list[float]
    passed: list[int]
    counted: list[int]
    calls: dict[str, int] = field(default_factory=lambda: {"login": 0, "refresh": 0})

    def survival(self) -> list[float]:
        """``P(W > δ)`` per offset, made non-increasing (a later presentation never passes more
        often than an earlier one; the differences are sampling noise)."""
        out, low = [], 1.0
        for passed, counted in zip(self.passed, self.counted):
            share = passed / counted if counted else low
            low = min(low, share)
            out.append(low)
        return out

    def window(self) -> dict:
        """The window as a scenario distribution table: mass ``1 − P(W > δ0)`` at 0, the mass
        between two offsets at the upper one, and what passed at the largest offset at twice it."""
        s = self.survival()
        values, weights = [0.0], [1.0 - s[0]]
        for i in range(1, len(s)):
            values.append(self.offsets_s[i])
            weights.append(s[i - 1] - s[i])
        values.append(2 * self.offsets_s[-1] if self.offsets_s[-1] > 0 else 0.001)
        weights.append(s[-1])
        keep = [(v, w) for v, w in zip(values, weights) if w > 0]
        if len(keep) == 1:
            return {"dist": "constant", "value": format_duration(keep[0][0])}
        return {"dist": "empirical", "values": [format_duration(v) for v, _ in keep],
                "weights": [round(w, 4) for _, w in keep]}

    def toml(self) -> str:
        """The profile lines that set the measured window."""
        w = self.window()
        if w["dist"] == "constant":
            body = f'"{w["value"]}"'
        else:
            values = ", ".join(f'"{v}"' for v in w["values"])
            weights = ", ".join(f"{x:g}" for x in w["weights"])
            body = f'{{ dist = "empirical", values = [{values}], weights = [{weights}] }}'
        return f'[server_settings]\nrace_window = {body}\nrace_window_offsets = "sent"'


def probe_race(profile: TargetProfile, base_url: str, *, user: int = 0, trials: int = 20,
               offsets_s=DEFAULT_OFFSETS_S, timeout_s: float = 5.0) -> RaceProbe:
    """Run the probe against ``base_url`` as user number ``user``; :class:`ProbeError` when it
    cannot log in, or when no pair could be counted."""
    result = RaceProbe(list(offsets_s), [0] * len(offsets_s), [0] * len(offsets_s))
    lock = threading.Lock()

    def transport() -> ProfileTransport:
        return ProfileTransport(profile, RequestsHttp(base_url, profile, timeout_s), base_url)

    first, second, main = transport(), transport(), transport()
    token: str | None = None

    def login() -> str:
        result.calls["login"] += 1
        reply = main.login(user)
        if reply.status != 200 or not reply.body or not reply.body.get("refresh_token"):
            raise ProbeError(f"race probe: {main.last_step or 'login'} at {base_url} answered "
                             f"{reply.status} {reply.error or ''}".strip() + " (no refresh token)")
        return reply.body["refresh_token"]

    for i, offset in enumerate(offsets_s):
        attempts = 0
        while result.counted[i] < trials and attempts < 3 * trials:
            attempts += 1
            token = token or login()
            replies: list = [None, None]
            barrier = threading.Barrier(2)

            def present(k: int, who: ProfileTransport, delay: float, presented: str) -> None:
                barrier.wait()
                if delay:
                    time.sleep(delay)
                replies[k] = who.refresh(presented, None)

            threads = [threading.Thread(target=present, args=(0, first, 0.0, token)),
                       threading.Thread(target=present, args=(1, second, offset, token))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            with lock:
                result.calls["refresh"] += 2
            ok = [r.status == 200 and bool(r.body) for r in replies]
            if any(ok):
                result.counted[i] += 1
                result.passed[i] += all(ok)
            # the next pair: after two passes a token the server gave (nothing was refused);
            # after a refusal a fresh login (a server may have revoked the whole family)
            token = (replies[1].body.get("refresh_token") or None) if all(ok) else None
    if not any(result.counted):
        raise ProbeError(f"race probe: no refresh at {base_url} succeeded")
    return result


#: lower edges (seconds) of the offset bins of :func:`window_from_records`
RECORD_EDGES_S = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def window_from_records(events, edges_s=RECORD_EDGES_S, time_scale: float = 1.0) -> RaceProbe | None:
    """The race window as a load test met it: from a measured run's client records (the
    ``events`` table), every refresh token presented more than once gives, for each later
    presentation, its offset from the first (client send times: each answer's time less its
    latency, wall milliseconds × ``time_scale``) and whether it passed (``ok``) or was refused
    as reuse; offsets are binned by ``edges_s`` (each bin labelled by its lower edge; later
    presentations are not races and are left out). None when no token was presented twice."""
    ends = events[events["event"] == "refresh_end"]
    sent = ends["t_s"].to_numpy(float) - ends["latency_ms"].to_numpy(float) / 1000.0 * time_scale
    presentations: dict = {}
    for token, start, outcome in zip(ends["token"], sent, ends["outcome"].astype(str)):
        presentations.setdefault(token, []).append((float(start), outcome))
    result = RaceProbe(list(edges_s[:-1]), [0] * (len(edges_s) - 1), [0] * (len(edges_s) - 1))
    for seen in presentations.values():
        seen.sort()
        first = seen[0][0]
        for start, outcome in seen[1:]:
            offset = start - first
            if outcome not in ("ok", "reuse_detected") or offset >= edges_s[-1]:
                continue
            i = max(j for j, edge in enumerate(edges_s[:-1]) if offset >= edge)
            result.counted[i] += 1
            result.passed[i] += outcome == "ok"
    return result if any(result.counted) else None
