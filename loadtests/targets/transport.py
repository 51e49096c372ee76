"""The HTTP calls of a client, as a target profile says: login (password, client credentials,
authorization code with PKCE through the server's HTML forms, or a hook), refresh (form, JSON or
Bearer) and API calls.

:class:`ProfileTransport` speaks through an :class:`Http` adapter: :class:`LocustHttp` over a
Locust ``FastHttpSession`` (every call shows in Locust's statistics under its request type), or
:class:`RequestsHttp` over ``requests`` (the preflight, outside Locust). Replies are normalised
to :class:`loadtests.client.Reply` with the standard field names.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Callable, Protocol
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

from loadtests.client import Reply
from loadtests.targets.profile import TargetProfile

#: the reference server's sliding re-issue headers (read when present, from any server)
REISSUED_HEADER = "X-Refreshed-Token"
REISSUED_EXPIRES_HEADER = "X-Refreshed-Expires-In"


@dataclass
class Answer:
    """One HTTP answer: ``status`` 0 when none came (``error`` says why)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    text: str = ""
    url: str = ""
    error: str | None = None

    def json(self) -> dict | None:
        try:
            body = json.loads(self.text)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers.items():
            if key.lower() == name:
                return value
        return None


class Http(Protocol):
    """Makes one HTTP call; never raises for network or HTTP errors. ``kind`` names the call in
    statistics (``login``, ``refresh``, ``GET``...); ``expected`` says which statuses are no
    failure."""

    def call(self, method: str, url: str, kind: str, *, headers: dict | None = None, data: Any = None,
             json_body: Any = None, allow_redirects: bool = True,
             expected: Callable[[int], bool] = lambda s: 200 <= s < 400) -> Answer: ...


class LocustHttp:
    """:class:`Http` over a Locust ``FastHttpSession``: calls appear in Locust's statistics under
    their request type, refusals as failures named by the status and the server's words."""

    def __init__(self, session) -> None:
        self.session = session

    def call(self, method, url, kind, *, headers=None, data=None, json_body=None, allow_redirects=True,
             expected=lambda s: 200 <= s < 400):
        kwargs: dict[str, Any] = {"headers": headers or {}, "allow_redirects": allow_redirects}
        if data is not None:
            kwargs["data"] = urlencode(data) if isinstance(data, dict) else data
            kwargs["headers"] = {"Content-Type": "application/x-www-form-urlencoded", **kwargs["headers"]}
        elif json_body is not None:
            kwargs["json"] = json_body
        name = urlsplit(url).path or url
        with self.session.request(method, url, name=name, catch_response=True, **kwargs) as response:
            response.request_meta["request_type"] = kind
            status = response.status_code or 0
            answer = Answer(status, _headers(response), _text(response), url,
                            None if status else repr(response.error))
            if status and expected(status):
                response.success()
            elif status:
                response.failure(f"{status} {error_words(answer)}".strip())
            else:
                response.failure(f"no answer: {answer.error}")
        return answer


class RequestsHttp:
    """:class:`Http` over a ``requests.Session`` (the preflight), with the profile's TLS settings."""

    def __init__(self, base_url: str, profile: TargetProfile, timeout_s: float = 5.0) -> None:
        import requests

        self.requests = requests
        self.session = requests.Session()
        self.base_url = base_url
        self.timeout_s = timeout_s
        tls = profile.tls
        self.session.verify = False if tls.insecure else (tls.ca_bundle or True)

    def call(self, method, url, kind, *, headers=None, data=None, json_body=None, allow_redirects=True,
             expected=lambda s: 200 <= s < 400):
        full = url if re.match(r"^https?://", url) else self.base_url + url
        try:
            r = self.session.request(method, full, headers=headers, data=data, json=json_body,
                                     allow_redirects=allow_redirects, timeout=self.timeout_s)
        except self.requests.RequestException as exc:
            return Answer(0, url=full, error=f"{type(exc).__name__}: {exc}")
        return Answer(r.status_code, dict(r.headers), r.text, full)


def _headers(response) -> dict[str, str]:
    headers = response.headers or {}
    out = {}
    for key in list(headers.keys()):
        value = headers.get(key)
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        out[str(key)] = str(value)
    return out


def _text(response) -> str:
    try:
        return response.text or ""
    except Exception:  # an undecodable body is no body
        return ""


def error_words(answer: Answer) -> str:
    """Everything a refusal says about itself: ``WWW-Authenticate`` and the body's ``error``,
    ``error_description``, ``detail``, ``message`` and ``code`` (and nested ``messages``)."""
    parts = [answer.header("WWW-Authenticate") or ""]
    body = answer.json() or {}
    for key in ("error", "error_description", "detail", "message", "code"):
        if isinstance(body.get(key), str):
            parts.append(body[key])
    for item in body.get("messages") or []:
        if isinstance(item, dict) and isinstance(item.get("message"), str):
            parts.append(item["message"])
    return " ".join(p for p in parts if p).strip()


class LoginError(Exception):
    """A login could not be completed; the message names the step, the URL and the status."""


class ProfileTransport:
    """The three calls of a client (:class:`loadtests.client.Transport`) as ``profile`` says."""

    def __init__(self, profile: TargetProfile, http: Http, base_url: str, pick: Callable[[], int] | None = None) -> None:
        self.profile = profile
        self.http = http
        self.base_url = base_url.rstrip("/")
        paths = profile.api.paths
        self._weights = [p.weight for p in paths]
        self._pick = pick
        import random

        self._random = random.Random(0)
        self.rejected = set(profile.api.rejected_statuses)
        self.refused = set(profile.classify.refresh_rejected_statuses)
        #: the last failed step of a login (for messages)
        self.last_step: str = ""

    # -- helpers ------------------------------------------------------------------------------

    def _client_auth(self, form: dict) -> dict:
        client = self.profile.client
        headers: dict[str, str] = {}
        if client.auth == "client_secret_basic":
            pair = f"{_form_quote(client.id)}:{_form_quote(client.secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif client.auth == "client_secret_post":
            form["client_id"], form["client_secret"] = client.id, client.secret
        elif client.id:
            form["client_id"] = client.id
        return headers

    def _token_reply(self, answer: Answer) -> Reply:
        reply = Reply(answer.status, received_unix_s=time.time())
        body = answer.json()
        fields = self.profile.response
        if answer.status == 200 and body is not None and isinstance(body.get(fields.access_token), str):
            reply.body = {"access_token": body[fields.access_token],
                          "refresh_token": body.get(fields.refresh_token) if isinstance(body.get(fields.refresh_token), str) else None,
                          "expires_in": body.get(fields.expires_in)}
        elif answer.status:
            reply.error = error_words(answer)
            retry_after = (answer.header("Retry-After") or "").strip()
            reply.retry_after_s = float(retry_after) if retry_after.isdecimal() else None
        else:
            reply.error = answer.error
        return reply

    def _post(self, path: str, kind: str, form: dict, style: str, headers: dict | None = None) -> Answer:
        expected = (lambda s: s == 200 or s in self.refused) if kind == "refresh" else (lambda s: s == 200)
        if style == "json":
            return self.http.call("POST", path, kind, headers=headers, json_body=form, expected=expected)
        return self.http.call("POST", path, kind, headers=headers, data=form, expected=expected)

    # -- the Transport calls ------------------------------------------------------------------

    def login(self, index: int) -> Reply:
        """Log user ``index`` in; a reply with ``body`` on success, otherwise the status and the
        server's words (``last_step`` names the failing step)."""
        login = self.profile.login
        username, password = self.profile.credentials.user(index)
        self.last_step = f"login ({login.grant} grant at {login.path})"
        if login.grant == "hook":
            module, _, name = login.hook.partition(":")
            hook = getattr(importlib.import_module(module), name)
            body = hook(self.http, username, password, self.profile)
            reply = Reply(200 if body else 0, received_unix_s=time.time())
            fields = self.profile.response
            if body:
                reply.body = {"access_token": body.get(fields.access_token),
                              "refresh_token": body.get(fields.refresh_token), "expires_in": body.get(fields.expires_in)}
            return reply
        if login.grant == "authorization_code":
            return self._code_login(username, password)
        form: dict[str, Any] = {}
        if login.grant_type:
            form["grant_type"] = "client_credentials" if login.grant == "client_credentials" else login.grant_type
        if login.grant == "password":
            form[login.username_field], form[login.password_field] = username, password
        if login.scope:
            form["scope"] = login.scope
        form.update(login.extra)
        headers = self._client_auth(form)
        return self._token_reply(self._post(login.path, "login", form, login.body, headers))

    def refresh(self, refresh_token: str, basis: str | None) -> Reply:
        spec = self.profile.refresh
        if spec.style == "bearer":
            answer = self.http.call("POST", spec.path, "refresh", headers={"Authorization": f"Bearer {refresh_token}"},
                                    expected=lambda s: s == 200 or s in self.refused)
            return self._token_reply(answer)
        form: dict[str, Any] = {spec.token_field: refresh_token}
        if spec.grant_type:
            form["grant_type"] = spec.grant_type
        if spec.scope:
            form["scope"] = spec.scope
        if spec.send_basis and basis is not None:
            form["basis"] = basis
        headers = self._client_auth(form)
        return self._token_reply(self._post(spec.path, "refresh", form, spec.style, headers))

    def api(self, access_token: str) -> Reply:
        paths = self.profile.api.paths
        spec = paths[0] if len(paths) == 1 else self._random.choices(paths, self._weights)[0]
        # a refused token is part of the protocol (an expiry failure, counted by the metrics);
        # Locust's failures are what the protocol does not explain
        answer = self.http.call(spec.method, spec.path, spec.method, headers={"Authorization": f"Bearer {access_token}"},
                                expected=lambda s: 200 <= s < 300 or s in self.rejected)
        reply = Reply(answer.status, received_unix_s=time.time())
        if 200 <= answer.status < 300:
            reply.status = 200
            reply.reissued = answer.header(REISSUED_HEADER)
            reply.reissued_expires_in = answer.header(REISSUED_EXPIRES_HEADER)
        elif answer.status in self.rejected:
            reply.status = 401
            reply.error = error_words(answer)
        elif answer.status:
            reply.error = f"{answer.status} {error_words(answer)}".strip()
        return reply

    # -- authorization code with PKCE ---------------------------------------------------------

    def _code_login(self, username: str, password: str) -> Reply:
        login, profile = self.profile.login, self.profile
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(12)
        query = {"response_type": "code", "client_id": profile.client.id or "", "redirect_uri": login.redirect_uri,
                 "code_challenge": challenge, "code_challenge_method": "S256", "state": state}
        if login.scope:
            query["scope"] = login.scope
        query.update(login.extra)
        url = f"{self.base_url}{login.authorize_path}?{urlencode(query)}"
        method, data = "GET", None
        forms = 0
        for _ in range(4 * login.max_forms):
            self.last_step = f"authorization ({method} {urlsplit(url).path})"
            answer = self.http.call(method, url, "login", data=data, allow_redirects=False,
                                    expected=lambda s: 200 <= s < 400)
            if answer.status in (301, 302, 303, 307, 308):
                location = urljoin(url, answer.header("Location") or "")
                if location.startswith(login.redirect_uri):
                    params = parse_qs(urlsplit(location).query)
                    if "code" not in params:
                        return Reply(400, error=f"redirected without a code: {params.get('error', [''])[0]} "
                                                f"{params.get('error_description', [''])[0]}".strip(),
                                     received_unix_s=time.time())
                    return self._exchange(params["code"][0], verifier)
                method, data, url = "GET", None, location
                continue
            if answer.status != 200:
                reply = Reply(answer.status, received_unix_s=time.time())
                reply.error = error_words(answer) if answer.status else answer.error
                return reply
            form = _first_form(answer.text)
            forms += 1
            if form is None or forms > login.max_forms:
                return Reply(400, error=f"no form to submit at {urlsplit(url).path}", received_unix_s=time.time())
            action, fields = form
            fields.update({login.form_fields["username"]: username, login.form_fields["password"]: password}
                          if login.form_fields["username"] in fields else {})
            fields.update({k: v for k, v in login.form_fields.items() if k not in ("username", "password")})
            method, data, url = "POST", fields, urljoin(url, action or url)
        return Reply(400, error="too many redirects or forms", received_unix_s=time.time())

    def _exchange(self, code: str, verifier: str) -> Reply:
        login = self.profile.login
        self.last_step = f"code exchange at {login.path}"
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": login.redirect_uri,
                "code_verifier": verifier}
        headers = self._client_auth(form)
        return self._token_reply(self._post(login.path, "login", form, login.body, headers))


def _form_quote(text: str | None) -> str:
    from urllib.parse import quote

    return quote(text or "", safe="")


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str | None, dict[str, str]]] = []
        self._current: dict[str, str] | None = None
        self._action: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and self._current is None:
            self._current, self._action = {}, a.get("action")
        elif tag in ("input", "button") and self._current is not None and a.get("name"):
            kind = (a.get("type") or "text").lower()
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            if tag == "button" or kind == "submit":
                self._current.setdefault(a["name"], a.get("value") or "")
            else:
                self._current[a["name"]] = a.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form" and self._current is not None:
            self.forms.append((self._action, self._current))
            self._current = None


def _first_form(html: str) -> tuple[str | None, dict[str, str]] | None:
    """The first ``<form>`` of a page: its action and its fields with their values."""
    parser = _Forms()
    parser.feed(html)
    return parser.forms[0] if parser.forms else None
