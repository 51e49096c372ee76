"""The Redis-backed ledger: a real redis-server, the reference server with two uvicorn workers
sharing it, and refresh races that are (atomic) or are not (check-then-write) decided once."""

from __future__ import annotations

import itertools
import threading
from contextlib import closing
from pathlib import Path

import httpx
import jwt
import pytest
import redis

from loadtests.server import protocol as p
from loadtests.server.process import free_port, run_uvicorn_process, serve_args

pytestmark = [pytest.mark.loadtest, pytest.mark.timeout(180)]

DATA = Path(__file__).parent / "data"
RACE = DATA / "server-race.toml"  # refreshes hold a worker 300 ms; rotation with family reuse detection
CONCURRENT = 50


def login(client: httpx.Client) -> dict:
    answer = client.post(p.LOGIN_PATH, data={p.USERNAME_FIELD: "ann", p.PASSWORD_FIELD: p.TEST_PASSWORD})
    assert answer.status_code == 200, answer.text
    return answer.json()


def connections_to_both_workers(base_url: str, n: int, attempts: int = 300) -> list[tuple[httpx.Client, int]]:
    """``n`` open connections, each with the pid of the worker that accepted it, spread over the
    two workers as evenly as the kernel's choice of accepting worker allows (at least one each)."""
    by_pid: dict[int, list[tuple[httpx.Client, int]]] = {}
    for _ in range(attempts):
        client = httpx.Client(base_url=base_url, timeout=60)
        pid = client.get(p.HEALTH_PATH).json()["pid"]
        by_pid.setdefault(pid, []).append((client, pid))
        if len(by_pid) == 2 and sum(map(len, by_pid.values())) >= n:
            break
    alternating = [pair for group in itertools.zip_longest(*by_pid.values()) for pair in group if pair]
    for client, _ in alternating[n:]:
        client.close()
    assert len(by_pid) == 2, f"{attempts} connections all reached one worker"
    return alternating[:n]


def race(base_url: str, refresh_token: str, basis: str, n: int) -> tuple[list[httpx.Response], set[int]]:
    """``n`` refreshes of one token released together from ``n`` connections spread over both
    workers; the answers and the worker pids that served them."""
    connections = connections_to_both_workers(base_url, n)
    barrier = threading.Barrier(n)
    answers: list[httpx.Response | None] = [None] * n

    def send(i: int) -> None:
        with closing(connections[i][0]) as client:
            barrier.wait()
            answers[i] = client.post(p.TOKEN_PATH, data={
                p.GRANT_TYPE_FIELD: p.REFRESH_GRANT, p.REFRESH_TOKEN_FIELD: refresh_token, p.BASIS_FIELD: basis})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers, {pid for _, pid in connections}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["atomic", "check-then-write"])
def test_concurrent_refreshes_across_two_workers(redis_url, strategy):
    port = free_port()
    args = serve_args(RACE, strategy, port=port, store=redis_url, workers=2)
    with run_uvicorn_process(args, port) as (base_url, _), httpx.Client(base_url=base_url, timeout=30) as client:
        grant = login(client)
        basis = jwt.decode(grant["access_token"], options={"verify_signature": False})["jti"]
        answers, pids = race(base_url, grant["refresh_token"], basis, CONCURRENT)
        assert len(pids) == 2, f"both workers should serve connections, saw {pids}"
        assert all(a is not None for a in answers)
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 400}, statuses
        pairs = {a.json()["refresh_token"] for a in answers if a.status_code == 200}
        totals = client.get(p.LEDGER_PATH).json()["totals"]
        assert totals["refresh_calls"] == CONCURRENT
        if strategy == "atomic":
            assert len(pairs) == 1 and statuses.count(200) == 1
            assert totals["duplicate_tokens"] == 0
            assert totals["reuse_detections"] >= 1 and totals["revocations"] == 1
        else:
            assert len(pairs) > 1
            assert totals["duplicate_tokens"] == len(pairs) - 1  # one basis, so every extra mint is one
        assert totals["refresh_mints"] == 1 + len(pairs)
        print(f"{strategy}: {statuses.count(200)} of {CONCURRENT} concurrent refreshes got a new pair "
              f"across worker pids {sorted(pids)}; totals {totals}")


def test_records_expire_with_their_tokens_and_totals_do_not(redis_url):
    port = free_port()
    args = serve_args(RACE, "atomic", port=port, store=redis_url)
    with run_uvicorn_process(args, port) as (base_url, _), httpx.Client(base_url=base_url) as client:
        grant = login(client)
        issuer = client.get(p.HEALTH_PATH).json()["issuer"]
        namespace = "refreshlab:" + issuer.removeprefix(p.ISSUER_PREFIX)
        r = redis.Redis.from_url(redis_url)
        token_keys = list(r.scan_iter(f"{namespace}:t:*"))
        assert len(token_keys) == 2  # the access and the refresh token
        ttls = sorted(r.pttl(key) for key in token_keys)
        # 15 min access / 1 h refresh (time scale 1), each plus the 60 s kept after expiry
        assert 0 < ttls[0] <= (15 * 60 + 60) * 1000 and ttls[1] <= (3600 + 60) * 1000
        assert r.pttl(f"{namespace}:totals") == -1  # totals never expire
        assert client.get(p.LEDGER_PATH).json()["sizes"]["tokens"] == 2
        assert grant["refresh_token"]


def test_on_a_test_clock_redis_keys_wait_for_the_clock_not_the_wall(redis_url):
    """Redis expires keys on its own wall clock; a server on a test clock gives them no expiry, so a
    key cannot vanish while the clock stands still, and expiry is the ledger's, by that clock."""
    from starlette.testclient import TestClient

    from loadtests.server.app import create_app
    from loadtests.server.clock import ManualClock
    from sim.scenario import load_scenario

    clock = ManualClock(1000.0)  # at this scale a real clock would expire the keys within a second
    app = create_app(load_scenario(RACE), "atomic", clock=clock, store=redis_url, service_time=False)
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        grant = login(client)
        namespace = "refreshlab:" + client.get(p.HEALTH_PATH).json()["issuer"].removeprefix(p.ISSUER_PREFIX)
        r = redis.Redis.from_url(redis_url)
        keys = list(r.scan_iter(f"{namespace}:t:*")) + list(r.scan_iter(f"{namespace}:s:*"))
        assert len(keys) == 3 and all(r.pttl(key) == -1 for key in keys)  # two tokens, one session
        bearer = {"Authorization": f"Bearer {grant['access_token']}"}
        assert client.get(p.API_ITEMS_PATH, headers=bearer).status_code == 200
        clock.advance(15 * 60 + 1)  # past the 15-minute access token
        answer = client.get(p.API_ITEMS_PATH, headers=bearer)
        assert answer.status_code == 401 and answer.json()["error_description"] == p.EXPIRED
    app.state.server.store.close()


STORM = DATA / "server-storm.toml"  # 2 auth workers busy 100 ms per refresh, 4 calls may wait


@pytest.mark.slow
def test_auth_tier_statistics_are_the_whole_servers_whichever_worker_answers(redis_url):
    """Two uvicorn workers, each with its own auth tier (2 workers, 4 places in its queue): a
    burst of refreshes split over both is partly served, partly shed; ``/ledger`` asked through
    either worker counts every call of both."""
    port = free_port()
    args = serve_args(STORM, "plain", port=port, store=redis_url, workers=2)
    with run_uvicorn_process(args, port) as (base_url, _), httpx.Client(base_url=base_url, timeout=30) as client:
        grant = login(client)
        basis = jwt.decode(grant["access_token"], options={"verify_signature": False})["jti"]
        answers, pids = race(base_url, grant["refresh_token"], basis, 30)
        assert len(pids) == 2, f"both workers should serve connections, saw {pids}"
        statuses = [a.status_code for a in answers]
        assert set(statuses) == {200, 503}, statuses
        seen: dict[int, dict] = {}
        for own, pid in connections_to_both_workers(base_url, 2):
            with closing(own):
                seen[pid] = own.get(p.LEDGER_PATH, params={"records": 1}).json()["auth"]
    first, second = seen.values()
    assert first == second
    auth = first
    assert auth["scope"] == "server" and auth["processes"] == 2
    assert auth["workers"] == 4 and auth["workers_per_process"] == 2 and auth["queue_limit"] == 8
    # the login and the 200s were served, every 503 of this burst was shed at once
    assert auth["calls"] == 1 + statuses.count(200)
    assert auth["unavailable"] == auth["shed"] == statuses.count(503)
    assert len(auth["queue_waits"]) == auth["calls"]
    # busy worker-seconds: every refresh served held its worker at least its 100 ms (time scale 1),
    # plus its units of work in Redis; both processes' time is in the sum
    assert sum(auth["busy_worker_s"]) >= 0.1 * statuses.count(200) * 0.99
    print(f"2 workers: {statuses.count(200)} served, {statuses.count(503)} shed; /ledger auth from both "
          f"pids {sorted(seen)}: calls {auth['calls']}, shed {auth['shed']}, busy {sum(auth['busy_worker_s']):.2f} s")
