"""The preflight: before Locust starts, log in once, call the API, refresh once, call the API with
the new token, and show a forged token and a forged refresh token to learn the server's refusal
shapes. Any step that fails stops the load test with a message naming the step, the URL and
the status (:class:`PreflightError`); otherwise :class:`Findings` says what was learned.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from loadtests.client import Reply
from loadtests.targets.profile import TargetProfile
from loadtests.targets.tokens import claims_of, expires_unix
from loadtests.targets.transport import ProfileTransport, RequestsHttp

#: seconds one preflight call may take before it counts as no answer
PREFLIGHT_TIMEOUT_S = 5.0


class PreflightError(Exception):
    """A preflight step failed; the message names the step, the URL and the status."""


@dataclass
class Findings:
    """What the preflight learned about the target."""

    url: str
    access_format: str = ""
    claims: list[str] = field(default_factory=list)
    access_lifetime_s: float = math.nan
    refresh_token: bool = False
    rotation: bool | None = None
    api_refusal: str = ""
    refresh_refusal: str = ""
    #: the calls the preflight made (they are in the server's records too, before the run's)
    calls: dict[str, int] = field(default_factory=lambda: {"login": 0, "api": 0, "refresh": 0})
    #: the user number the preflight logged in as (the one after the scenario's last)
    user: int = 0

    def lines(self) -> list[str]:
        life = f"{self.access_lifetime_s:.0f} s (wall clock)" if self.access_lifetime_s == self.access_lifetime_s else "unknown"
        rotation = {True: "yes (a new refresh token per refresh)", False: "no (the refresh token is kept)",
                    None: "unknown (no refresh token)"}[self.rotation]
        return [
            f"preflight against {self.url}: login, API call, refresh and API call succeeded",
            f"  access token: {self.access_format}" + (f" (claims: {', '.join(self.claims)})" if self.claims else ""),
            f"  access lifetime: {life}; refresh token: {'yes' if self.refresh_token else 'no'}; rotation: {rotation}",
            f"  a forged access token gets: {self.api_refusal or '-'}",
            f"  a forged refresh token gets: {self.refresh_refusal or '-'}",
        ]


def _describe(step: str, url: str, reply: Reply, what: str) -> PreflightError:
    if reply.status == 0:
        return PreflightError(f"preflight step '{step}' failed: no answer from {url} ({reply.error}){what}")
    words = f": {reply.error}" if reply.error else ""
    return PreflightError(f"preflight step '{step}' failed: {url} answered {reply.status}{words}{what}")


class _Counting:
    def __init__(self, http: RequestsHttp, calls: dict[str, int]) -> None:
        self.http, self.calls = http, calls

    def call(self, method, url, kind, **kwargs):
        key = {"login": "login", "refresh": "refresh"}.get(kind, "api")
        self.calls[key] += 1
        return self.http.call(method, url, kind, **kwargs)


def preflight(profile: TargetProfile, base_url: str, user: int = 0, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> Findings:
    """Run the preflight against ``base_url`` as user number ``user`` (pick one the load test
    does not use, so the server's records of the run stay apart); :class:`PreflightError` on the
    first failing step."""
    found = Findings(base_url, user=user)
    http = _Counting(RequestsHttp(base_url, profile, timeout_s), found.calls)
    transport = ProfileTransport(profile, http, base_url)

    login = transport.login(user)
    if not (login.status == 200 and login.body and login.body.get("access_token")):
        raise _describe(transport.last_step or "login", base_url + profile.login.path, login,
                        "" if login.status != 200 else " (no access token in the answer)")
    access = login.body["access_token"]
    claims = claims_of(access)
    found.access_format = "JWT" if claims is not None else "opaque"
    found.claims = sorted(claims) if claims else []
    if profile.tokens.format == "jwt" and claims is None:
        raise PreflightError(f"preflight step 'login' at {base_url}{profile.login.path}: the access token is not a "
                             "JWT; set tokens.format = \"opaque\" in the target profile")
    expires = expires_unix(access, login.received_unix_s, login.body.get("expires_in"), profile.tokens.format,
                           profile.tokens.access_ttl_s)
    found.access_lifetime_s = expires - login.received_unix_s if math.isfinite(expires) else math.nan
    if not math.isfinite(expires):
        raise PreflightError(f"preflight step 'login' at {base_url}{profile.login.path}: the access token's lifetime "
                             "is unknown (no exp claim, no expires_in); set tokens.access_ttl in the target profile")

    api_url = base_url + profile.api.paths[0].path
    answer = transport.api(access)
    if answer.status != 200:
        raise _describe("API call", api_url, answer, "")
    refresh_token = login.body.get("refresh_token")
    found.refresh_token = bool(refresh_token)
    if refresh_token:
        refreshed = transport.refresh(refresh_token, None)
        if not (refreshed.status == 200 and refreshed.body and refreshed.body.get("access_token")):
            raise _describe("refresh", base_url + profile.refresh.path, refreshed, "")
        new_refresh = refreshed.body.get("refresh_token")
        found.rotation = bool(new_refresh) and new_refresh != refresh_token
        answer = transport.api(refreshed.body["access_token"])
        if answer.status != 200:
            raise _describe("API call with the refreshed token", api_url, answer, "")
        forged = transport.refresh(_forge(refresh_token), None)
        found.refresh_refusal = f"{forged.status} {forged.error or ''}".strip()
    forged_api = transport.api(_forge(access))
    found.api_refusal = f"{forged_api.status} {forged_api.error or ''}".strip()
    return found


def _forge(token: str) -> str:
    """A token of the same shape the server cannot have issued (last characters changed)."""
    tail = "".join("B" if c != "B" else "C" for c in token[-6:])
    return token[:-6] + tail if len(token) > 6 else token + "x"


def wait_answering(base_url: str, profile: TargetProfile, timeout_s: float = 3.0) -> bool:
    """Whether anything answers HTTP at ``base_url`` (any status), within ``timeout_s``."""
    http = RequestsHttp(base_url, profile, timeout_s)
    started = time.monotonic()
    answer = http.call("GET", profile.api.paths[0].path, "probe")
    return answer.status != 0 and time.monotonic() - started <= timeout_s + 1
