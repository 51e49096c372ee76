"""An attack battery against the running reference server (real uvicorn on 127.0.0.1), for every
algorithm and both ledger stores: what an attacker tries against a JWT issuer (RFC 8725's list
among them) must be refused, never answered 500.

The servers are started with a private-key file the test also holds, so that the test can sign
tokens the way the server would and change exactly one thing (a claim, a header) per attack. They
run on a test clock (``serve --test-clock``): no token expires while the battery runs, and the
expiry tests move the clock past ``exp`` instead of waiting for it.
"""

from __future__ import annotations

import base64
import functools
import json
from contextlib import ExitStack
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from loadtests.server import protocol as p
from tests.conftest import advance_clock
from loadtests.server.keys import ALGORITHMS
from loadtests.server.process import serve_in_subprocess

pytestmark = [pytest.mark.loadtest, pytest.mark.timeout(300)]

DATA = Path(__file__).parent / "data"
SCENARIO = DATA / "server-attacks.toml"  # access tokens of 20 scenario seconds
ACCESS_S = 20.0
SCALE = 20.0  # ... so 1 wall second on the wire
#: scenario seconds past ``exp`` at which the JWT's own check refuses a token too (its leeway is
#: one wall second: what whole-second NumericDates lose)
JWT_MARGIN_S = 1.0 * SCALE
STORES = ["memory", "redis"]
#: every algorithm against every store; the default run takes a diagonal (each algorithm once,
#: each store for half of them: half the server processes), the slow pass the rest
ALGORITHM_STORES = [pytest.param(algorithm, store, marks=[] if (i + j) % 2 == 0 else [pytest.mark.slow])
                    for i, algorithm in enumerate(ALGORITHMS) for j, store in enumerate(STORES)]


def b64(data: bytes | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parts(token: str) -> tuple[dict, dict, str]:
    header, payload, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (json.loads(base64.urlsafe_b64decode(pad(header))), json.loads(base64.urlsafe_b64decode(pad(payload))),
            signature)


def make_key(algorithm: str, folder: Path) -> tuple[Path, object]:
    """A key file the server reads, and the key the test signs with."""
    path = folder / f"{algorithm}.key"
    if algorithm == "HS256":
        secret = b"k" * 16 + bytes(range(16, 64))
        path.write_bytes(secret)
        return path, secret
    private = {"RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
               "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
               "EdDSA": ed25519.Ed25519PrivateKey.generate}[algorithm]()
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path, private


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def servers(tmp_path_factory, request):
    """``servers(algorithm, store, instance=0, strategy="rotating")`` -> (base URL, signing key):
    each started once per module, on a test clock. Instances share the key file (as two
    deployments that share a secret would) but not their ledger, issuer or clock."""
    folder = tmp_path_factory.mktemp("keys")
    keys = {alg: make_key(alg, folder) for alg in ALGORITHMS}
    running: dict[tuple, str] = {}
    with ExitStack() as stack:
        def get(algorithm: str, store: str, instance: int = 0, strategy: str = "rotating"):
            key = (algorithm, store, instance, strategy)
            if key not in running:
                store_url = request.getfixturevalue("redis_url") if store == "redis" else "memory"
                running[key] = stack.enter_context(serve_in_subprocess(
                    SCENARIO, strategy, SCALE, algorithm=algorithm, private_key_path=keys[algorithm][0],
                    store=store_url, test_clock=True))
            return running[key], keys[algorithm][1]

        yield get


def login(client: httpx.Client, username: str = "ann") -> dict:
    answer = client.post(p.LOGIN_PATH, data={p.USERNAME_FIELD: username, p.PASSWORD_FIELD: p.TEST_PASSWORD})
    assert answer.status_code == 200, answer.text
    return answer.json()


def api(client: httpx.Client, token: str) -> httpx.Response:
    return client.get(p.API_PROFILE_PATH, headers={"Authorization": f"Bearer {token}"})


def refresh(client: httpx.Client, token: str, **extra) -> httpx.Response:
    return client.post(p.TOKEN_PATH, data={p.GRANT_TYPE_FIELD: p.REFRESH_GRANT, p.REFRESH_TOKEN_FIELD: token, **extra})


def sign(algorithm: str, key, claims: dict, header: dict | None = None) -> str:
    """Sign as the server would (its key, its algorithm), with the header changed as given."""
    return jwt.encode(claims, key, algorithm=algorithm, headers=header)


def hs256_with(secret: bytes, header: dict, claims: dict) -> str:
    signing_input = f"{b64(header)}.{b64(claims)}".encode()
    mac = hmac.HMAC(secret, hashes.SHA256())
    mac.update(signing_input)
    return f"{signing_input.decode()}.{b64(mac.finalize())}"


def assert_refused_everywhere(client: httpx.Client, token: str, label: str) -> None:
    """Refused as an access token by the API and as a refresh token by /token, and no session is
    logged out with it."""
    answer = api(client, token)
    assert answer.status_code == 401, (label, answer.status_code, answer.text)
    assert answer.json()["error"] == "invalid_token", label
    renewed = refresh(client, token)
    # invalid_request for a token too long to be one of ours
    assert renewed.status_code == 400 and renewed.json()["error"] in ("invalid_grant", "invalid_request"), (
        label, renewed.text)
    logout = client.post(p.LOGOUT_PATH, data={p.TOKEN_FIELD: token})
    assert logout.json() == {"revoked": False} or (logout.status_code == 400 and len(token) > 8192), label


@functools.cache
def attacker_key() -> rsa.RSAPrivateKey:
    """An RSA key that is not the server's (one per module: making keys is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def forgeries(algorithm: str, key, access: str, refresh_token: str) -> dict[str, str]:
    """Every forged or altered token the battery presents, by attack name."""
    header, claims, signature = parts(access)
    signing_input = access.rsplit(".", 1)[0]
    other_rsa = attacker_key()
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(other_rsa.public_key()))
    out: dict[str, str] = {}
    # RFC 8725 2.1 / 3.1: "none" and algorithm substitution
    for none in ("none", "None", "NONE", "nOnE"):
        out[f"alg {none}"] = f"{b64({**header, 'alg': none})}.{b64(claims)}."
    if algorithm == "HS256":
        out["alg RS256 with an attacker's key"] = jwt.encode(claims, other_rsa, algorithm="RS256")
        out["alg HS512 with the secret"] = jwt.encode(claims, key, algorithm="HS512")
    else:
        # algorithm confusion: the public key (which anyone may have) as an HMAC secret
        out["HS256 keyed with the public key PEM"] = hs256_with(public_pem(key), {"alg": "HS256", "typ": "JWT"}, claims)
        out["HS256 keyed with the public key DER"] = hs256_with(
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            {"alg": "HS256", "typ": "JWT"}, claims)
        other_alg = {"RS256": "PS256", "ES256": "ES384", "EdDSA": "ES256"}[algorithm]
        out[f"header alg {other_alg}, same signature"] = f"{b64({**header, 'alg': other_alg})}.{signing_input.split('.')[1]}.{signature}"
    # stripped, tampered and borrowed signatures
    out["stripped signature"] = signing_input + "."
    out["no signature segment"] = signing_input
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    out["tampered signature"] = f"{signing_input}.{flipped}"
    out["tampered payload (other user)"] = f"{b64(header)}.{b64({**claims, 'sub': 'mallory'})}.{signature}"
    out["tampered payload (later exp)"] = f"{b64(header)}.{b64({**claims, 'exp': claims['exp'] + 3600})}.{signature}"
    out["signature of the refresh token"] = f"{signing_input}.{parts(refresh_token)[2]}"
    out["signed by another key"] = (jwt.encode(claims, other_rsa, algorithm="RS256") if algorithm != "HS256"
                                    else jwt.encode(claims, b"another secret of at least 32 bytes!", algorithm="HS256"))
    # key-selection injection: kid, jku, x5u, embedded jwk (RFC 8725 3.10 / RFC 7515 4.1)
    for name, extra in {
        "kid path traversal": {"kid": "../../../../dev/null"},
        "kid SQL injection": {"kid": "x' UNION SELECT 'secret"},
        "jku to an attacker": {"jku": "http://127.0.0.1:9/jwks.json"},
        "x5u to an attacker": {"x5u": "http://127.0.0.1:9/cert.pem"},
        "embedded attacker jwk": {"jwk": attacker_jwk},
    }.items():
        out[name + " (attacker-signed)"] = jwt.encode(claims, other_rsa, algorithm="RS256", headers=extra)
    out["kid /dev/null with an empty HMAC"] = hs256_with(b"", {"alg": "HS256", "kid": "/dev/null"}, claims)
    # unknown critical header parameters and unencoded payloads (RFC 7515 4.1.11, RFC 7797)
    out["crit unknown extension"] = sign(algorithm, key, claims, {"crit": ["exp"], "exp": 1})
    out["b64 false"] = sign(algorithm, key, claims, {"b64": False, "crit": ["b64"]})
    # malformed structure
    out["JWE-shaped (5 segments)"] = ".".join([b64({"alg": "dir", "enc": "A128GCM"}), "", b64(b"iv"), b64(b"ct"), b64(b"tag")])
    out["header not JSON"] = f"{b64(b'not json')}.{b64(claims)}.{signature}"
    out["payload not JSON"] = f"{b64(header)}.{b64(b'not json')}.{signature}"
    out["payload a JSON array"] = sign(algorithm, key, {}, None).split(".")[0] + f".{b64(b'[1,2]')}.{signature}"
    out["non-UTF-8 payload"] = f"{b64(header)}.{b64(bytes([0xff, 0xfe, 0xfd]))}.{signature}"
    nested = ("[" * 3000 + "]" * 3000).encode()
    out["deeply nested header"] = f"{b64(nested)}.{b64(claims)}.{signature}"
    out["garbage"] = "garbage"
    out["bad base64"] = "!!!.@@@.###"
    return out


def claim_attacks(algorithm: str, key, access: str) -> dict[str, str]:
    """Tokens signed with the server's own key whose claims are wrong: what a leaked key or a
    sibling deployment could produce (RFC 8725 3.8-3.10)."""
    _, claims, _ = parts(access)
    out: dict[str, str] = {}
    for name in ("iss", "aud", "sub", "exp", "iat", "nbf", "jti"):
        out[f"missing {name}"] = sign(algorithm, key, {k: v for k, v in claims.items() if k != name})
    out["other issuer"] = sign(algorithm, key, {**claims, "iss": "refreshlab:someone-else"})
    out["other audience"] = sign(algorithm, key, {**claims, "aud": "another-api"})
    out["audience list"] = sign(algorithm, key, {**claims, "aud": [p.AUDIENCE, "another-api"]})
    out["other subject"] = sign(algorithm, key, {**claims, "sub": "mallory"})
    out["other session"] = sign(algorithm, key, {**claims, "sid": str(int(claims["sid"]) + 1000)})
    out["unknown jti"] = sign(algorithm, key, {**claims, "jti": "999999999"})
    out["jti not a number"] = sign(algorithm, key, {**claims, "jti": "1 OR 1=1"})
    out["huge jti"] = sign(algorithm, key, {**claims, "jti": "9" * 5000})
    out["jti as a number"] = sign(algorithm, key, {**claims, "jti": int(claims["jti"])})
    # times relative to the token's own iat: the server's clock, whichever it is
    out["not before in the future"] = sign(algorithm, key, {**claims, "nbf": claims["iat"] + 3600})
    out["issued in the future"] = sign(algorithm, key, {**claims, "iat": claims["iat"] + 3600})
    out["expired an hour ago"] = sign(algorithm, key, {**claims, "exp": claims["iat"] - 3600})
    out["exp a numeric string"] = sign(algorithm, key, {**claims, "exp": str(claims["exp"] + 3600)})
    out["exp NaN"] = sign(algorithm, key, {**claims, "exp": float("nan")})
    out["exp not a number"] = sign(algorithm, key, {**claims, "exp": "tomorrow"})
    out["typ refresh on an access jti"] = sign(algorithm, key, {**claims, "typ": p.REFRESH_TYP})
    return out


@pytest.mark.parametrize(("algorithm", "store"), ALGORITHM_STORES)
def test_forged_and_altered_tokens_are_refused(servers, algorithm, store):
    base_url, key = servers(algorithm, store)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        grant = login(client)
        assert api(client, grant["access_token"]).status_code == 200
        for label, token in {**forgeries(algorithm, key, grant["access_token"], grant["refresh_token"]),
                             **claim_attacks(algorithm, key, grant["access_token"])}.items():
            assert_refused_everywhere(client, token, label)
        # the genuine tokens still work: nothing above revoked or confused the session
        assert api(client, grant["access_token"]).json()["sub"] == "ann"
        assert refresh(client, grant["refresh_token"]).status_code == 200


@pytest.mark.parametrize(("algorithm", "store"), ALGORITHM_STORES)
def test_token_type_confusion(servers, algorithm, store):
    base_url, key = servers(algorithm, store)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        grant = login(client)
        assert api(client, grant["refresh_token"]).status_code == 401  # refresh token as a bearer
        assert refresh(client, grant["access_token"]).json()["error"] == "invalid_grant"  # access at /token
        _, claims, _ = parts(grant["refresh_token"])
        # a refresh token re-signed claiming to be an access token: the ledger knows better
        relabelled = sign(algorithm, key, {**claims, "typ": p.ACCESS_TYP})
        assert api(client, relabelled).status_code == 401


@pytest.mark.parametrize(("algorithm", "store"), ALGORITHM_STORES)
def test_tokens_of_another_instance_are_refused(servers, algorithm, store):
    """Two deployments sharing one signing key: neither accepts the other's tokens, even for a
    session number and user the other also has."""
    first, _ = servers(algorithm, store, 0)
    second, _ = servers(algorithm, store, 1)
    with httpx.Client(base_url=first, timeout=30) as a, httpx.Client(base_url=second, timeout=30) as b:
        grant_a = login(a, "ann")
        login(b, "ann")  # the same user and session number exist on the other instance
        assert_refused_everywhere(b, grant_a["access_token"], "access token of another instance")
        assert_refused_everywhere(b, grant_a["refresh_token"], "refresh token of another instance")




@pytest.mark.parametrize(("algorithm", "store"), ALGORITHM_STORES)
def test_expired_tokens(servers, algorithm, store):
    base_url, _ = servers(algorithm, store)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        grant = login(client)
        assert api(client, grant["access_token"]).status_code == 200
        advance_clock(client, ACCESS_S + 0.5)  # past exp in the ledger, within the JWT's leeway
        expired = api(client, grant["access_token"])
        assert expired.json() == {"error": "invalid_token", "error_description": "expired"}
        # past the JWT's own exp (plus its leeway): refused before the ledger is asked
        advance_clock(client, JWT_MARGIN_S)
        assert api(client, grant["access_token"]).json()["error_description"] == "expired"
        renewed = refresh(client, grant["refresh_token"])  # the refresh token lives on (1 h)
        assert renewed.status_code == 200 and api(client, renewed.json()["access_token"]).status_code == 200


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("strategy", ["rotating", "sliding"])
def test_logout_revokes_access_and_refresh_tokens(servers, store, strategy):
    base_url, _ = servers("HS256", store, strategy=strategy)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        grant = login(client)
        assert api(client, grant["access_token"]).status_code == 200
        assert client.post(p.LOGOUT_PATH, headers={"Authorization": f"Bearer {grant['access_token']}"}).json() == {
            "revoked": True}
        answer = api(client, grant["access_token"])
        assert answer.status_code == 401 and p.REFRESHED_TOKEN_HEADER not in answer.headers
        assert answer.json()["error_description"] == p.INVALID
        if "refresh_token" in grant:
            assert refresh(client, grant["refresh_token"]).json()["error_description"] == "revoked"


@pytest.mark.parametrize("store", STORES)
def test_reuse_revocation_is_honoured(servers, store):
    base_url, _ = servers("HS256", store)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        grant = login(client)
        first = refresh(client, grant["refresh_token"]).json()
        assert refresh(client, grant["refresh_token"]).json()["error_description"] == "reuse_detected"
        assert refresh(client, first["refresh_token"]).json()["error_description"] == "revoked"


NESTED = "[" * 30_000 + "]" * 30_000  # under the body limit, far over any parser's depth


@pytest.mark.parametrize("store", STORES)
def test_malformed_bodies_and_huge_headers_never_500(servers, store):
    base_url, _ = servers("HS256", store)
    json_headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        grant = login(client)
        for path in (p.LOGIN_PATH, p.TOKEN_PATH, p.LOGOUT_PATH, p.CLOCK_PATH):
            for body in (NESTED, '{"a":' * 10_000 + "1" + "}" * 10_000, "[1, 2]", '"text"', "{", "\xff"):
                answer = client.post(path, content=body.encode("utf-8", "surrogateescape"), headers=json_headers)
                assert answer.status_code == 400, (path, body[:20], answer.status_code)
            assert client.post(path, content=b"\xff\xfe=\xfd", headers={
                "Content-Type": "application/x-www-form-urlencoded"}).status_code == 400
            assert client.post(path, content=b"x=" + b"a" * 200_000, headers={
                "Content-Type": "application/x-www-form-urlencoded"}).status_code == 413
        for basis in ("1e999", "-1", "NaN", "9" * 400, " "):
            answer = refresh(client, grant["refresh_token"], basis=basis)
            assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request"), basis
        for basis in (1e300, float("inf"), [1], {"a": 1}, True, -5):
            body = {p.GRANT_TYPE_FIELD: p.REFRESH_GRANT, p.REFRESH_TOKEN_FIELD: grant["refresh_token"], p.BASIS_FIELD: basis}
            text = json.dumps(body).replace("Infinity", "1e999")
            answer = client.post(p.TOKEN_PATH, content=text, headers=json_headers)
            assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request"), basis
        for value in ([grant["refresh_token"]], {"x": 1}, 12, None):
            answer = client.post(p.TOKEN_PATH, json={p.GRANT_TYPE_FIELD: p.REFRESH_GRANT, p.REFRESH_TOKEN_FIELD: value})
            assert answer.status_code == 400
            answer = client.post(p.LOGIN_PATH, json={p.USERNAME_FIELD: value, p.PASSWORD_FIELD: p.TEST_PASSWORD})
            assert answer.status_code == 400
        huge = "A" * 60_000
        for headers in ({"Authorization": f"Bearer {huge}.{huge}.{huge}"}, {"Authorization": "Bearer " + "x." * 30_000},
                        {"X-Filler": huge}):
            try:
                answer = client.get(p.API_ITEMS_PATH, headers=headers)
            except httpx.RemoteProtocolError:
                continue  # the server closed the connection on an oversized header: refused
            assert 400 <= answer.status_code < 500, answer.status_code
        assert api(client, grant["access_token"]).status_code == 200  # still serving
