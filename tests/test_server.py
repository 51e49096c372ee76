"""The reference token server, end to end: real uvicorn processes on 127.0.0.1, real HTTP.

The servers of LIFETIMES run on a test clock (``serve --test-clock``): a test makes a token
expire by moving the server's clock past its ``exp``, not by waiting for it."""

from __future__ import annotations

import base64
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import jwt
import pytest

from loadtests.server import protocol as p
from loadtests.server.process import serve_in_subprocess
from tests.conftest import advance_clock

pytestmark = [pytest.mark.loadtest, pytest.mark.timeout(120)]

DATA = Path(__file__).parent / "data"
LIFETIMES = DATA / "server-lifetimes.toml"  # access tokens of 20 scenario seconds
RACE = DATA / "server-race.toml"  # refreshes hold a worker 300 ms
QUEUE = DATA / "server-queue.toml"  # one worker, queue timeout 200 ms, refresh 600 ms
#: scenario seconds per wall second for LIFETIMES: its access tokens last 1 s of wall time
SCALE = 20.0
ACCESS_S = 20.0
ACCESS_WALL_S = ACCESS_S / SCALE
#: scenario seconds past ``exp`` at which PyJWT's check refuses a token too: the leeway is one wall
#: second (what whole-second NumericDates lose)
JWT_MARGIN_S = 1.0 * SCALE


@pytest.fixture(scope="module")
def server():
    """``server(scenario_path, strategy, time_scale=1.0, **options)`` -> base URL; each distinct
    server is started once per module and stopped at its end."""
    running: dict[tuple, str] = {}
    with ExitStack() as stack:
        def get(path: Path, strategy: str, time_scale: float = 1.0, **options) -> str:
            key = (str(path), strategy, time_scale, tuple(sorted(options.items())))
            if key not in running:
                running[key] = stack.enter_context(serve_in_subprocess(path, strategy, time_scale, **options))
            return running[key]

        yield get


def lifetimes(server, strategy: str, **options) -> str:
    """The base URL of a LIFETIMES server of ``strategy`` on a test clock."""
    return server(LIFETIMES, strategy, SCALE, test_clock=True, **options)


def login(client: httpx.Client, username: str = "ann") -> dict:
    answer = client.post(p.LOGIN_PATH, data={p.USERNAME_FIELD: username, p.PASSWORD_FIELD: p.TEST_PASSWORD})
    assert answer.status_code == 200, answer.text
    return answer.json()


def refresh(client: httpx.Client, refresh_token: str, basis: str | None = None) -> httpx.Response:
    form = {p.GRANT_TYPE_FIELD: p.REFRESH_GRANT, p.REFRESH_TOKEN_FIELD: refresh_token}
    if basis is not None:
        form[p.BASIS_FIELD] = basis
    return client.post(p.TOKEN_PATH, data=form)


def call_api(client: httpx.Client, access_token: str, path: str = p.API_ITEMS_PATH) -> httpx.Response:
    return client.get(path, headers={"Authorization": f"Bearer {access_token}"})


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def totals(client: httpx.Client) -> dict:
    return client.get(p.LEDGER_PATH).json()["totals"]


def test_login_then_api(server):
    with httpx.Client(base_url=lifetimes(server, "plain")) as client:
        assert client.get(p.PING_PATH).text == "pong"
        health = client.get(p.HEALTH_PATH).json()
        assert (health["strategy"], health["server"], health["time_scale"]) == ("plain", "dual_token", SCALE)
        grant = login(client, "bob")
        assert grant["token_type"] == "Bearer" and grant["expires_in"] == ACCESS_WALL_S
        for path in p.API_PATHS:
            assert call_api(client, grant["access_token"], path).status_code == 200
        profile = call_api(client, grant["access_token"], p.API_PROFILE_PATH).json()
        access = claims(grant["access_token"])
        assert profile == {"sub": "bob", "sid": access["sid"]}
        assert access["typ"] == p.ACCESS_TYP and claims(grant["refresh_token"])["typ"] == p.REFRESH_TYP
        assert isinstance(access["exp"], int) and access["exp"] - time.time() <= ACCESS_WALL_S


def test_bad_login_and_missing_or_forged_tokens(server):
    with httpx.Client(base_url=lifetimes(server, "plain")) as client:
        wrong = client.post(p.LOGIN_PATH, json={p.USERNAME_FIELD: "ann", p.PASSWORD_FIELD: "nope"})
        assert wrong.status_code == 401
        assert client.post(p.LOGIN_PATH, json={p.USERNAME_FIELD: "ann", p.PASSWORD_FIELD: p.TEST_PASSWORD}).status_code == 200
        missing = client.get(p.API_ITEMS_PATH)
        assert missing.status_code == 401 and missing.headers[p.WWW_AUTHENTICATE_HEADER].startswith("Bearer")
        grant = login(client)
        forged = jwt.encode({**claims(grant["access_token"])}, "a key that is not the server's key, 32+ bytes", algorithm="HS256")
        for token in (forged, "garbage", grant["refresh_token"]):
            answer = call_api(client, token)
            assert answer.status_code == 401
            assert answer.headers[p.WWW_AUTHENTICATE_HEADER] == (
                'Bearer error="invalid_token", error_description="invalid"')


def test_expired_access_token_is_refused_then_refresh_works(server):
    with httpx.Client(base_url=lifetimes(server, "rotating-family")) as client:
        grant = login(client)
        assert call_api(client, grant["access_token"]).status_code == 200
        advance_clock(client, ACCESS_S)
        assert call_api(client, grant["access_token"]).status_code == 200  # at exp: still valid
        advance_clock(client, 0.5)
        expired = call_api(client, grant["access_token"])
        assert expired.status_code == 401
        assert expired.headers[p.WWW_AUTHENTICATE_HEADER] == 'Bearer error="invalid_token", error_description="expired"'
        advance_clock(client, JWT_MARGIN_S)  # past the JWT's own exp too: refused before the ledger is asked
        assert call_api(client, grant["access_token"]).headers[p.WWW_AUTHENTICATE_HEADER].endswith('"expired"')
        renewed = refresh(client, grant["refresh_token"], basis=claims(grant["access_token"])["jti"])
        assert renewed.status_code == 200, renewed.text
        assert renewed.headers["cache-control"] == "no-store" and renewed.headers["pragma"] == "no-cache"
        body = renewed.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
        assert body["refresh_token"] != grant["refresh_token"]  # rotation
        assert call_api(client, body["access_token"]).status_code == 200


def test_reuse_detection_revokes_the_family(server):
    with httpx.Client(base_url=lifetimes(server, "rotating-family")) as client:
        before = totals(client)
        grant = login(client)
        first = refresh(client, grant["refresh_token"])
        assert first.status_code == 200
        reuse = refresh(client, grant["refresh_token"])
        assert reuse.status_code == 400
        assert reuse.json() == {"error": "invalid_grant", "error_description": "reuse_detected"}
        sibling = refresh(client, first.json()["refresh_token"])
        assert sibling.status_code == 400
        assert sibling.json() == {"error": "invalid_grant", "error_description": "revoked"}
        after = totals(client)
        assert after["reuse_detections"] - before["reuse_detections"] == 1
        assert after["revocations"] - before["revocations"] == 1
        records = client.get(p.LEDGER_PATH, params={"records": 1}).json()["records"]
        session = int(claims(grant["access_token"])["sid"])
        assert [r["event"] for r in records if r["session"] == session][-2:] == ["reuse_detected", "revoke"]


def test_grace_period_accepts_reuse(server):
    with httpx.Client(base_url=lifetimes(server, "grace")) as client:
        before = totals(client)
        grant = login(client)
        first = refresh(client, grant["refresh_token"])
        again = refresh(client, grant["refresh_token"])
        assert first.status_code == again.status_code == 200
        assert again.json()["refresh_token"] != first.json()["refresh_token"]  # new_pair
        assert refresh(client, first.json()["refresh_token"]).status_code == 200
        after = totals(client)
        assert after["grace_reuses"] - before["grace_reuses"] == 1
        assert after["reuse_detections"] == before["reuse_detections"]


def test_no_rotation_returns_the_same_refresh_token_and_counts_duplicates_by_basis(server):
    with httpx.Client(base_url=lifetimes(server, "plain")) as client:
        before = totals(client)
        grant = login(client)
        basis = claims(grant["access_token"])["jti"]
        answers = [refresh(client, grant["refresh_token"], basis=basis) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert {a.json()["refresh_token"] for a in answers} == {grant["refresh_token"]}
        unbased = refresh(client, grant["refresh_token"])  # no basis: never a duplicate
        assert unbased.status_code == 200
        after = totals(client)
        assert after["duplicate_tokens"] - before["duplicate_tokens"] == 2
        assert after["renewal_access_mints"] - before["renewal_access_mints"] == 4
        mints = [r for r in client.get(p.LEDGER_PATH, params={"records": "1"}).json()["records"]
                 if r["event"] == "mint" and r["session"] == int(claims(grant["access_token"])["sid"])]
        assert [r["outcome"] for r in mints] == [
            "access_login", "refresh_login", "access_refresh", "access_refresh_duplicate",
            "access_refresh_duplicate", "access_refresh"]
        assert [r["basis"] for r in mints[2:]] == [int(basis)] * 3 + [None]
        assert "records" not in client.get(p.LEDGER_PATH).json()


def concurrently(base_url: str, refresh_token: str, basis: str, n: int = 2) -> list[httpx.Response]:
    """``n`` refreshes of one token sent at the same instant from ``n`` connections."""
    barrier = threading.Barrier(n)
    answers: list[httpx.Response | None] = [None] * n

    def send(i: int) -> None:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            client.get(p.PING_PATH)  # connect before the barrier
            barrier.wait()
            answers[i] = refresh(client, refresh_token, basis)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


@pytest.mark.parametrize("strategy, statuses, duplicates", [
    ("check-then-write", [200, 200], 1),
    ("atomic", [200, 400], 0),
])
def test_concurrent_refreshes_of_one_token(server, strategy, statuses, duplicates):
    base_url = server(RACE, strategy)
    with httpx.Client(base_url=base_url) as client:
        grant = login(client)
        before = totals(client)
        answers = concurrently(base_url, grant["refresh_token"], claims(grant["access_token"])["jti"])
        assert sorted(a.status_code for a in answers) == statuses
        rejected = [a.json() for a in answers if a.status_code != 200]
        assert rejected == [{"error": "invalid_grant", "error_description": "reuse_detected"}] * len(rejected)
        after = totals(client)
        assert after["duplicate_tokens"] - before["duplicate_tokens"] == duplicates
        assert after["refresh_calls"] - before["refresh_calls"] == 2
        busy = client.get(p.LEDGER_PATH).json()["auth"]["busy_worker_s"]
        assert sum(busy) >= 0.6  # two refreshes of 300 ms each


def test_queue_timeout_answers_503(server):
    base_url = server(QUEUE, "plain")
    with httpx.Client(base_url=base_url) as client:
        grant = login(client)
        answers = concurrently(base_url, grant["refresh_token"], claims(grant["access_token"])["jti"])
        assert sorted(a.status_code for a in answers) == [200, 503]
        assert [a.json()["error"] for a in answers if a.status_code == 503] == ["temporarily_unavailable"]
        auth = client.get(p.LEDGER_PATH).json()["auth"]
        assert auth["unavailable"] == 1 and sum(auth["queued_s"]) >= 0.2


def test_sliding_server_reissues_in_a_header(server):
    with httpx.Client(base_url=lifetimes(server, "sliding")) as client:
        grant = login(client)
        assert "refresh_token" not in grant
        advance_clock(client, 1.0)  # a token re-issued on use is newer than the one presented
        answer = call_api(client, grant["access_token"])
        assert answer.status_code == 200
        reissued = answer.headers[p.REFRESHED_TOKEN_HEADER]
        assert float(answer.headers[p.REFRESHED_EXPIRES_IN_HEADER]) == ACCESS_WALL_S
        assert claims(reissued)["sid"] == claims(grant["access_token"])["sid"]
        advance_clock(client, ACCESS_S * 0.6)
        midway = call_api(client, reissued)
        assert midway.status_code == 200
        advance_clock(client, ACCESS_S * 0.6)
        # the login token has lapsed; the one re-issued mid-way has not
        lapsed = call_api(client, grant["access_token"])
        assert lapsed.status_code == 401 and 'error_description="expired"' in lapsed.headers[p.WWW_AUTHENTICATE_HEADER]
        assert call_api(client, midway.headers[p.REFRESHED_TOKEN_HEADER]).status_code == 200
        no_refresh = refresh(client, grant["access_token"])
        assert no_refresh.status_code == 400 and no_refresh.json()["error"] == "invalid_grant"
        records = client.get(p.LEDGER_PATH, params={"records": 1}).json()["records"]
        reissues = [r for r in records if r["outcome"] == "access_reissue"]
        assert reissues[0]["basis"] == int(claims(grant["access_token"])["jti"])


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_asymmetric_algorithms(server, algorithm):
    with httpx.Client(base_url=lifetimes(server, "rotating-family", algorithm=algorithm)) as client:
        assert client.get(p.HEALTH_PATH).json()["algorithm"] == algorithm
        grant = login(client)
        assert jwt.get_unverified_header(grant["access_token"])["alg"] == algorithm
        assert call_api(client, grant["access_token"]).status_code == 200
        renewed = refresh(client, grant["refresh_token"])
        assert renewed.status_code == 200
        assert call_api(client, renewed.json()["access_token"]).status_code == 200


def test_token_endpoint_errors(server):
    with httpx.Client(base_url=lifetimes(server, "plain")) as client:
        grant = login(client)
        cases = [
            ({}, "invalid_request"),
            ({p.GRANT_TYPE_FIELD: "password", "username": "ann"}, "unsupported_grant_type"),
            ({p.GRANT_TYPE_FIELD: p.REFRESH_GRANT}, "invalid_request"),
            ({p.GRANT_TYPE_FIELD: p.REFRESH_GRANT, p.REFRESH_TOKEN_FIELD: "garbage"}, "invalid_grant"),
            ({p.GRANT_TYPE_FIELD: p.REFRESH_GRANT, p.REFRESH_TOKEN_FIELD: grant["access_token"]}, "invalid_grant"),
            ({p.GRANT_TYPE_FIELD: p.REFRESH_GRANT, p.REFRESH_TOKEN_FIELD: grant["refresh_token"],
              p.BASIS_FIELD: "x"}, "invalid_request"),
        ]
        for form, error in cases:
            answer = client.post(p.TOKEN_PATH, data=form)
            assert (answer.status_code, answer.json()["error"]) == (400, error), form
            assert answer.headers["cache-control"] == "no-store"
        # client authentication (HTTP Basic, or client_id in the form) and scope are ignored
        basic = base64.b64encode(b"some-client:some-secret").decode()
        answer = client.post(p.TOKEN_PATH, headers={"Authorization": f"Basic {basic}"}, data={
            p.GRANT_TYPE_FIELD: p.REFRESH_GRANT, p.REFRESH_TOKEN_FIELD: grant["refresh_token"],
            "client_id": "some-client", "scope": "openid"})
        assert answer.status_code == 200


def test_logout_revokes_the_session(server):
    with httpx.Client(base_url=lifetimes(server, "rotating-family")) as client:
        grant = login(client)
        assert client.post(p.LOGOUT_PATH, data={p.TOKEN_FIELD: grant["refresh_token"]}).json() == {"revoked": True}
        answer = refresh(client, grant["refresh_token"])
        assert answer.json() == {"error": "invalid_grant", "error_description": "revoked"}
        other = login(client)
        bearer = {"Authorization": f"Bearer {other['access_token']}"}
        assert client.post(p.LOGOUT_PATH, headers=bearer).json() == {"revoked": True}
        assert refresh(client, other["refresh_token"]).status_code == 400
        assert client.post(p.LOGOUT_PATH, data={p.TOKEN_FIELD: "garbage"}).json() == {"revoked": False}


def test_authlib_client_refreshes(server):
    """The acceptance check: a standard OAuth 2.0 client library renews against ``/token``."""
    from authlib.integrations.requests_client import OAuth2Session

    base_url = lifetimes(server, "rotating-family")
    with httpx.Client(base_url=base_url) as client:
        grant = login(client)
        session = OAuth2Session("refreshlab-test", token=grant)
        renewed = session.refresh_token(base_url + p.TOKEN_PATH, refresh_token=grant["refresh_token"])
        assert renewed["refresh_token"] != grant["refresh_token"]
        assert call_api(client, renewed["access_token"]).status_code == 200

    # automatic renewal: authlib refreshes a token it considers expired before sending. It judges
    # by its own clock (expires_at from expires_in): a leeway longer than the token's life makes
    # it expired at once; the server's test clock is moved past the old token's expiry as well
    with httpx.Client(base_url=base_url) as client:
        advance_clock(client, ACCESS_S + JWT_MARGIN_S + 1)
        assert call_api(client, renewed["access_token"]).status_code == 401
    seen = []
    auto = OAuth2Session("refreshlab-test", token=dict(renewed), token_endpoint=base_url + p.TOKEN_PATH,
                         update_token=lambda token, **_: seen.append(token), leeway=int(ACCESS_WALL_S) + 5)
    assert auto.get(base_url + p.API_PROFILE_PATH).status_code == 200
    assert len(seen) == 1 and seen[0]["access_token"] != renewed["access_token"]


def test_requests_oauthlib_client_refreshes(server, monkeypatch):
    from requests_oauthlib import OAuth2Session

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain HTTP on 127.0.0.1
    base_url = lifetimes(server, "plain")
    with httpx.Client(base_url=base_url) as client:
        grant = login(client)
        session = OAuth2Session("refreshlab-test", token=grant)
        renewed = session.refresh_token(base_url + p.TOKEN_PATH, refresh_token=grant["refresh_token"])
        assert renewed["access_token"] != grant["access_token"]
        assert renewed["refresh_token"] == grant["refresh_token"]
        assert call_api(client, renewed["access_token"]).status_code == 200


@pytest.mark.parametrize("args, message", [
    ([str(RACE), "--strategy", "nope"], "no strategy 'nope'"),
    ([str(DATA / "server-missing.toml"), "--strategy", "atomic"], "no such file"),
    ([str(RACE), "--strategy", "atomic", "--algorithm", "XS999"], "unknown algorithm 'XS999'"),
])
def test_serve_refuses_bad_input(cli, args, message):
    code, _, err = cli("serve", *args, "--port", "0")
    assert code == 2
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "loopback hosts only"),
    (["--host", "192.0.2.7"], "loopback hosts only"),
    (["--store", "redis://127.0.0.1:1/0", "--workers", "2"], "needs one worker"),
])
def test_the_test_clock_is_refused_beyond_loopback_and_one_worker(cli, args, message):
    code, _, err = cli("serve", RACE, "--strategy", "atomic", "--test-clock", *args, "--port", "0")
    assert code == 2 and message in err and "Traceback" not in err, err


def test_private_key_file(server, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "es256.pem"
    pem.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    with httpx.Client(base_url=lifetimes(server, "plain", algorithm="ES256", private_key_path=pem)) as client:
        grant = login(client)
        # the server signs with the given key: its public half verifies the token
        assert jwt.decode(grant["access_token"], private.public_key(), algorithms=["ES256"],
                          audience=p.AUDIENCE, options={"verify_exp": False})["typ"] == p.ACCESS_TYP
        assert call_api(client, grant["access_token"]).status_code == 200


def test_private_key_of_the_wrong_type_is_refused(cli, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = tmp_path / "ed25519.pem"
    pem.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    code, _, err = cli("serve", RACE, "--strategy", "atomic", "--algorithm", "RS256", "--private-key", pem,
                       "--port", "0")
    assert code == 2 and "expected an RSA private key for RS256" in err


@pytest.mark.parametrize("make, algorithm, message", [
    (lambda path: path.write_bytes(b"x"), "HS256", "needs at least 32 bytes (RFC 7518 section 3.2), this one has 1"),
    (lambda path: path.write_bytes(b""), "HS256", "the HS256 secret is empty"),
    (lambda path: path.write_bytes(b""), "RS256", "the private key file is empty"),
    (lambda path: path.write_bytes(b"not a key at all"), "ES256", "not an unencrypted PEM private key"),
    ("rsa1024", "RS256", "needs at least 2048 bits (RFC 7518 section 3.3), this one has 1024"),
])
def test_weak_or_empty_keys_are_refused_at_start_up(cli, tmp_path, make, algorithm, message):
    key = tmp_path / "key"
    if make == "rsa1024":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    else:
        make(key)
    code, _, err = cli("serve", RACE, "--strategy", "atomic", "--algorithm", algorithm, "--private-key", key,
                       "--port", "0")
    assert code == 2, err
    assert message in err and str(key) in err.replace("\n", "") and "Traceback" not in err


def test_ledger_endpoint_is_off_unless_asked_and_then_loopback_only():
    from starlette.testclient import TestClient

    from loadtests.server.app import create_app
    from sim.scenario import load_scenario

    scenario = load_scenario(RACE)
    with TestClient(create_app(scenario, "atomic"), client=("127.0.0.1", 5000)) as client:
        assert client.get(p.LEDGER_PATH).status_code == 404
    enabled = create_app(scenario, "atomic", ledger_endpoint=True)
    with TestClient(enabled, client=("127.0.0.1", 5000)) as client:
        assert client.get(p.LEDGER_PATH).json()["totals"]["sessions"] == 0
    with TestClient(enabled, client=("192.0.2.7", 5000)) as client:
        assert client.get(p.LEDGER_PATH).status_code == 403
        assert client.get(p.LEDGER_PATH, params={"records": 1}).status_code == 403


def test_two_workers_need_a_shared_store(cli):
    code, _, err = cli("serve", RACE, "--strategy", "atomic", "--workers", "2", "--port", "0")
    assert code == 2 and "needs a shared store" in err


def test_clock_endpoint_is_off_unless_asked_and_then_loopback_only_and_forward_only():
    """``POST /test/clock`` cannot move a real server's time, nor be reached from another host,
    nor move time backwards or by nonsense."""
    from starlette.testclient import TestClient

    from loadtests.server.app import create_app
    from loadtests.server.clock import ManualClock
    from sim.scenario import load_scenario

    scenario = load_scenario(LIFETIMES)
    with TestClient(create_app(scenario, "plain"), client=("127.0.0.1", 5000)) as client:
        assert client.get(p.HEALTH_PATH).json()["clock"] == "real"
        assert client.post(p.CLOCK_PATH, json={p.ADVANCE_FIELD: 60}).status_code == 404
    with pytest.raises(ValueError, match="needs a ManualClock"):
        create_app(scenario, "plain", clock_endpoint=True)
    with pytest.raises(ValueError, match="disagrees"):
        create_app(scenario, "plain", clock=ManualClock(20.0), time_scale=60.0)
    clock = ManualClock(SCALE)
    app = create_app(scenario, "plain", clock=clock, clock_endpoint=True)
    with TestClient(app, client=("192.0.2.7", 5000)) as client:
        assert client.post(p.CLOCK_PATH, json={p.ADVANCE_FIELD: 60}).status_code == 403
    assert clock.now_s() == 0
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        assert client.get(p.HEALTH_PATH).json()["clock"] == "manual"
        for body in ({p.ADVANCE_FIELD: -1}, {p.ADVANCE_FIELD: "NaN"}, {p.ADVANCE_FIELD: "1e999"}, {p.ADVANCE_FIELD: True},
                     {p.ADVANCE_FIELD: [1]}, {p.ADVANCE_FIELD: 1e300}, {}, {p.ADVANCE_FIELD: "soon"}):
            answer = client.post(p.CLOCK_PATH, json=body)
            assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request"), body
        assert client.post(p.CLOCK_PATH, content="[" * 5000, headers={"Content-Type": "application/json"}).status_code == 400
        assert clock.now_s() == 0
        moved = client.post(p.CLOCK_PATH, data={p.ADVANCE_FIELD: "2.5"}).json()
        assert moved == {"scenario_time_s": 2.5, "unix_time_s": clock.t0_unix_s + 2.5 / SCALE}
        assert client.get(p.LEDGER_PATH).status_code == 404  # the clock opens nothing else


def test_an_injected_clock_decides_stamping_verification_and_the_ledger():
    """In process (Starlette's TestClient): every *now* of the server is the injected clock's.
    The JWT's own exp check (PyJWT's, which reads the system clock) follows it too."""
    from starlette.testclient import TestClient

    from loadtests.server.app import create_app
    from loadtests.server.clock import ManualClock
    from sim.scenario import load_scenario

    clock = ManualClock(SCALE, t0_unix_s=1_000_000.0, start_s=100.0)
    app = create_app(load_scenario(LIFETIMES), "rotating-family", clock=clock, service_time=False,
                     ledger_endpoint=True)
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        grant = login(client)
        access = claims(grant["access_token"])
        # stamped on the injected clock: scenario 100 s is epoch 1,000,005 at time scale 20
        assert (access["iat"], access["nbf"], access["exp"]) == (1_000_005, 1_000_005, 1_000_006)
        assert call_api(client, grant["access_token"]).status_code == 200  # though its exp is decades ago
        clock.advance(ACCESS_S + 0.5)  # the ledger: expired; the JWT: within its one-second leeway
        assert call_api(client, grant["access_token"]).headers[p.WWW_AUTHENTICATE_HEADER].endswith('"expired"')
        assert app.state.server.verify(grant["access_token"])["expired"] is False
        clock.advance(JWT_MARGIN_S)
        assert app.state.server.verify(grant["access_token"])["expired"] is True
        assert call_api(client, grant["access_token"]).headers[p.WWW_AUTHENTICATE_HEADER].endswith('"expired"')
        renewed = refresh(client, grant["refresh_token"])
        assert renewed.status_code == 200 and call_api(client, renewed.json()["access_token"]).status_code == 200
        ledger = client.get(p.LEDGER_PATH, params={"records": 1}).json()
        assert ledger["scenario_time_s"] == 100 + ACCESS_S + 0.5 + JWT_MARGIN_S
        assert [r["t_s"] for r in ledger["records"] if r["outcome"] == "access_refresh"] == [ledger["scenario_time_s"]]
        # a token stamped in the future of the server's clock is not yet valid (nbf / iat)
        early = app.state.server.keys.encode({**claims(renewed.json()["access_token"]),
                                              "nbf": int(clock.unix_now()) + 60})
        assert call_api(client, early).headers[p.WWW_AUTHENTICATE_HEADER].endswith('"invalid"')


def test_the_real_clock_is_scaled_monotonic_time(monkeypatch):
    from loadtests.server import clock as clocks

    now = {"monotonic": 500.0, "time": 1_000_000.0}
    monkeypatch.setattr(clocks.time, "monotonic", lambda: now["monotonic"])
    monkeypatch.setattr(clocks.time, "time", lambda: now["time"])
    clock = clocks.ScenarioClock(60.0)
    assert clock.now_s() == 0 and clock.unix_now() == 1_000_000.0
    now["monotonic"] += 2.0
    now["time"] -= 3600  # a wall-clock step back does not move scenario time
    assert clock.now_s() == 120.0 and clock.unix_now() == 1_000_002.0 and clock.wall(120.0) == 2.0
    shared = clocks.ScenarioClock(60.0, t0_unix_s=now["time"] - 10)  # a worker joining a running server
    assert shared.now_s() == 600.0
    with pytest.raises(ValueError, match="finite number > 0"):
        clocks.ScenarioClock(0)


def in_process(strategy: str):
    """An in-process reference server of LIFETIMES' ``strategy`` on a manual clock, with its ledger."""
    from starlette.testclient import TestClient

    from loadtests.server.app import create_app
    from loadtests.server.clock import ManualClock
    from sim.scenario import load_scenario

    clock = ManualClock(SCALE, t0_unix_s=1_000_000.0, start_s=100.0)
    app = create_app(load_scenario(LIFETIMES), strategy, clock=clock, service_time=False, ledger_endpoint=True)
    return TestClient(app, client=("127.0.0.1", 5000)), clock


def test_a_grace_replay_is_accepted_but_answered_unauthenticated():
    from loadtests.targets.classify import Classifier
    from loadtests.targets.profile import reference_profile

    client, clock = in_process("grace-unauthenticated")
    with client:
        grant = login(client)
        assert refresh(client, grant["refresh_token"]).status_code == 200
        replay = refresh(client, grant["refresh_token"])
        assert replay.status_code == 400
        assert replay.json() == {"error": "invalid_grant", "error_description": "unauthenticated"}
        # the load-test client reads it as such (not as a reuse or a revocation)
        words = replay.json()["error_description"]
        assert Classifier(reference_profile().classify).refresh(words, True, 1e9, 0.0) == ("unauthenticated", "server")
        ledger = totals(client)
        assert ledger["grace_reuses"] == 1 and ledger["reuse_detections"] == ledger["revocations"] == 0


def test_deferred_commit_over_http():
    client, clock = in_process("deferred-commit")
    with client:
        grant = login(client)
        a, b = refresh(client, grant["refresh_token"]), refresh(client, grant["refresh_token"])
        assert a.status_code == b.status_code == 200  # both children minted, nothing committed
        assert a.json()["refresh_token"] != b.json()["refresh_token"]
        assert call_api(client, b.json()["access_token"]).status_code == 200  # commits b's child
        theft = refresh(client, a.json()["refresh_token"])
        assert theft.json() == {"error": "invalid_grant", "error_description": "reuse_detected"}
        assert totals(client)["revocations"] == 1


def test_gotrue_answers_the_parent_of_the_active_token_with_it():
    client, clock = in_process("gotrue")
    with client:
        grant = login(client)
        first = refresh(client, grant["refresh_token"])
        clock.advance(60.0)  # past the 10 s reuse interval
        again = refresh(client, grant["refresh_token"])
        assert again.status_code == 200 and again.json()["refresh_token"] == first.json()["refresh_token"]
        assert again.json()["access_token"] != first.json()["access_token"]
        assert totals(client)["grace_reuses"] == 1
