"""Target profiles: how to talk to a token server (URL, TLS, login, credentials, client
authentication, refresh call, token format, API paths, how to read its errors).

A profile is a ``[target]`` table, in a scenario file or in a TOML file of its own (given with
``--target-profile FILE``), or a bundled profile by name (``--target-profile keycloak``, files in
``loadtests/targets/profiles/``). A profile file may say ``extends = "NAME"`` to start from a
bundled one. Errors name the file and the field, like scenario errors (:class:`ScenarioError`).
Every field is documented in docs/loadtests.md.
"""

from __future__ import annotations

import csv
import re
import tomllib
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from sim.model import Model
from sim.scenario import ScenarioError, describe as _describe
from sim.units import Duration

PROFILE_DIR = Path(__file__).with_name("profiles")


class Tls(Model):
    """Certificate checking. On by default; ``insecure = true`` turns it off (say so explicitly)."""

    verify: bool = True
    ca_bundle: str | None = None
    insecure: bool = False

    @model_validator(mode="after")
    def _coherent(self):
        if self.insecure and self.ca_bundle:
            raise ValueError("ca_bundle and insecure = true contradict each other")
        if not self.verify and not self.insecure:
            raise ValueError("to turn certificate checks off, write insecure = true")
        return self


class ClientAuth(Model):
    """The OAuth client the load test acts as and how it authenticates at the token endpoint."""

    id: str | None = None
    secret: str | None = None
    auth: Literal["none", "client_secret_basic", "client_secret_post"] = "none"

    @model_validator(mode="after")
    def _coherent(self):
        if self.auth != "none" and (not self.id or self.secret is None):
            raise ValueError(f"auth = {self.auth!r} needs id and secret")
        return self


class Credentials(Model):
    """Who logs in: user ``n`` (the scenario's user index) is row ``n mod rows`` of ``csv``
    (columns ``username,password``), or ``pattern`` with ``{n}`` and ``password``."""

    csv: str | None = None
    pattern: str = "user-{n}"
    password: str = "refreshlab"
    count: int | None = Field(default=None, ge=1)
    #: the folder relative paths are read from (the profile's)
    base_dir: str = ""

    @field_validator("pattern")
    @classmethod
    def _has_n(cls, value):
        if "{n}" not in value:
            raise ValueError(f"expected a pattern containing {{n}}, got {value!r}")
        return value

    @cached_property
    def rows(self) -> list[tuple[str, str]] | None:
        if self.csv is None:
            return None
        path = Path(self.base_dir or ".") / self.csv
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(r["username"], r["password"]) for r in csv.DictReader(f)]
        if not rows:
            raise ValueError(f"{path}: no users")
        return rows

    def user(self, index: int) -> tuple[str, str]:
        """Username and password of user ``index``."""
        if self.rows is not None:
            return self.rows[index % len(self.rows)]
        n = index % self.count if self.count else index
        return self.pattern.format(n=n), self.password


class Login(Model):
    """How a session starts.

    ``password``: the resource-owner password grant at ``path`` (or a plain login endpoint with
    ``grant_type = ""``); ``client_credentials``; ``authorization_code``: the code flow with PKCE
    (S256), the server's HTML login and consent forms filled in with ``form_fields``;
    ``hook``: a Python function ``module:function(session, username, password, profile)``
    returning the token response as a dict."""

    grant: Literal["password", "client_credentials", "authorization_code", "hook"] = "password"
    path: str = "/token"
    body: Literal["form", "json"] = "form"
    grant_type: str = "password"
    username_field: str = "username"
    password_field: str = "password"
    scope: str | None = None
    extra: dict[str, str] = Field(default_factory=dict)
    # authorization_code
    authorize_path: str = "/authorize"
    redirect_uri: str = "http://127.0.0.1/callback"
    #: form field names of the login form (username, password) and fixed fields of any form
    form_fields: dict[str, str] = Field(default_factory=lambda: {"username": "username", "password": "password"})
    #: most forms (login, consent) submitted before giving up
    max_forms: int = Field(default=6, ge=1)
    hook: str | None = None

    @model_validator(mode="after")
    def _coherent(self):
        if self.grant == "hook" and not (self.hook and re.fullmatch(r"[\w.]+:\w+", self.hook)):
            raise ValueError("grant = 'hook' needs hook = 'module:function'")
        if self.grant == "authorization_code" and not {"username", "password"} <= set(self.form_fields):
            raise ValueError("form_fields must name the 'username' and 'password' inputs")
        return self


class Refresh(Model):
    """The refresh call: ``form`` (RFC 6749 §6), ``json`` (the same fields as a JSON body), or
    ``bearer`` (the refresh token in an ``Authorization: Bearer`` header, JSON answer)."""

    path: str = "/token"
    style: Literal["form", "json", "bearer"] = "form"
    token_field: str = "refresh_token"
    grant_type: str = "refresh_token"
    scope: str | None = None
    #: send the ``basis`` field (the reference server's extension, recorded in its ledger)
    send_basis: bool = False


class ResponseFields(Model):
    """Names of the fields of a token response."""

    access_token: str = "access_token"
    refresh_token: str = "refresh_token"
    expires_in: str = "expires_in"


class Tokens(Model):
    """``jwt``: read ``exp``, ``jti`` (and ``sid``) from the token; ``opaque``: expiry from
    ``expires_in`` (or ``access_ttl``), identity = hash of the token string. ``refresh_ttl``: the
    refresh token's lifetime when the server does not say (classifies refused refreshes)."""

    format: Literal["jwt", "opaque"] = "jwt"
    access_ttl_s: Duration | None = Field(default=None, alias="access_ttl", gt=0)
    refresh_ttl_s: Duration | None = Field(default=None, alias="refresh_ttl", gt=0)


class ApiPath(Model):
    path: str
    method: Literal["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"] = "GET"
    weight: float = Field(default=1.0, gt=0)


class Api(Model):
    """Protected endpoints (picked by weight per request) and the statuses that mean
    "token rejected" (401; add 403 for servers that answer that)."""

    paths: list[ApiPath] = Field(default_factory=lambda: [ApiPath(path="/api/items")], min_length=1)
    rejected_statuses: list[int] = Field(default_factory=lambda: [401], min_length=1)

    @field_validator("rejected_statuses")
    @classmethod
    def _4xx(cls, values):
        bad = [v for v in values if not 400 <= v < 500]
        if bad:
            raise ValueError(f"expected 4xx statuses, got {bad}")
        return values


class Classify(Model):
    """How to read refusals. Patterns are regular expressions searched (case-insensitive) in the
    ``WWW-Authenticate`` header and the body's ``error``, ``error_description``, ``detail`` and
    ``message`` fields. With ``fallback``, what the patterns do not settle is decided from what
    the client knows: an access token past its known ``exp`` was refused for expiry; a refresh
    token the client already saw rotated was refused as a reuse, one past its known lifetime as
    expired."""

    expired_access: str | None = "expired"
    #: an API refusal this pattern matches is "invalid" whatever the client knows of ``exp``
    invalid_access: str | None = None
    refresh_reuse: str | None = None
    refresh_expired: str | None = "expired"
    #: a refused refresh this pattern matches is "revoked" whatever the client knows
    refresh_revoked: str | None = None
    #: a refused refresh this pattern matches was a replay the server accepted but answered as
    #: unauthenticated (nothing revoked)
    refresh_unauthenticated: str | None = None
    refresh_rejected_statuses: list[int] = Field(default_factory=lambda: [400, 401], min_length=1)
    fallback: bool = True

    @field_validator("expired_access", "invalid_access", "refresh_reuse", "refresh_expired", "refresh_revoked",
                     "refresh_unauthenticated")
    @classmethod
    def _regex(cls, value):
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"expected a regular expression, got {value!r}: {exc}") from None
        return value


class TargetProfile(Model):
    """How to talk to one token server. See docs/loadtests.md for every field."""

    name: str = "custom"
    description: str = ""
    #: where the numbers of this profile come from (documentation pages)
    source: str = ""
    base_url: str | None = None
    #: the server model ``validate`` simulates this server with (a ``sim.strategies.presets`` name)
    server_model: str | None = None
    #: fields of a scenario ``server`` table laid over ``server_model`` (e.g. a measured ``race_window``)
    server_settings: dict[str, Any] = Field(default_factory=dict)
    #: fields of a scenario ``network`` table ``validate`` simulates this server with, over what
    #: it measured (e.g. ``in_order`` for a server that answers from one event loop)
    network_settings: dict[str, Any] = Field(default_factory=dict)
    #: the server keeps a ``/ledger`` (the reference server): mints and reuses come from it
    ledger: bool = False
    #: the server revokes a refresh token when it rotates it (counts revocations client-side)
    revokes_on_rotation: bool = False
    tls: Tls = Field(default_factory=Tls)
    client: ClientAuth = Field(default_factory=ClientAuth)
    credentials: Credentials = Field(default_factory=Credentials)
    login: Login = Field(default_factory=Login)
    refresh: Refresh = Field(default_factory=Refresh)
    response: ResponseFields = Field(default_factory=ResponseFields)
    tokens: Tokens = Field(default_factory=Tokens)
    api: Api = Field(default_factory=Api)
    classify: Classify = Field(default_factory=Classify)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value):
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value.rstrip("/") if value else value

    @field_validator("network_settings")
    @classmethod
    def _network(cls, value):
        from sim.scenario import Network

        known = {f.alias or name for name, f in Network.model_fields.items()}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown network field(s) {', '.join(unknown)}; expected some of: {', '.join(sorted(known))}")
        return value

    @field_validator("server_model")
    @classmethod
    def _preset(cls, value):
        from sim.strategies.presets import SERVER_PRESETS

        if value is not None and value not in SERVER_PRESETS:
            raise ValueError(f"unknown server preset {value!r}; expected one of: {', '.join(sorted(SERVER_PRESETS))}")
        return value

    @property
    def revokes_session_on_reuse(self) -> bool:
        """Whether the server model this profile names revokes the whole session (family) when
        it detects a reuse: a measurement infers the revocation from the refusal."""
        from sim.strategies.presets import SERVER_PRESETS

        if not self.server_model:
            return False
        model = {**SERVER_PRESETS[self.server_model], **self.server_settings}
        return model.get("reuse_detection") == "family"

    def with_target(self, url: str | None) -> "TargetProfile":
        """This profile pointed at ``url`` (``--target``), when given."""
        return self if not url else self.model_copy(update={"base_url": self._url(url)})


@lru_cache(maxsize=1)
def reference_profile() -> TargetProfile:
    """The bundled profile of the reference server (the default target)."""
    return load_profile("reference")


def bundled_names() -> list[str]:
    """Names of the bundled profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def parse_profile(raw: dict[str, Any], source: str, base_dir: Path | None = None, field: str = "") -> TargetProfile:
    """Validate a profile given as a dict in file form; :class:`ScenarioError` names ``source``
    and the field (prefixed with ``field``, e.g. ``target``)."""
    raw = dict(raw)
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    while (parent := raw.pop("extends", None)) is not None:
        if parent not in bundled_names() or parent in seen:
            raise ScenarioError(source, [(_join(field, "extends"),
                                          f"unknown profile {parent!r}; expected one of: {', '.join(bundled_names())}")])
        seen.add(parent)
        raw = _merge(_read_toml(PROFILE_DIR / f"{parent}.toml", source), raw)
    creds = raw.get("credentials")
    if isinstance(creds, dict) and base_dir is not None and "base_dir" not in creds:
        raw["credentials"] = {**creds, "base_dir": str(base_dir)}
    try:
        profile = TargetProfile.model_validate(raw, context={"from_file": True})
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        raise ScenarioError(source, [(_join(field, f), m) for f, m in problems]) from None
    if profile.credentials.csv is not None:
        try:
            profile.credentials.rows
        except (OSError, ValueError, KeyError) as exc:
            raise ScenarioError(source, [(_join(field, "credentials.csv"),
                                          f"expected a readable CSV with username,password columns: {exc}")]) from None
    return profile


def load_profile(spec: str | Path) -> TargetProfile:
    """A profile from a file path, or a bundled one by name."""
    path = Path(spec)
    if not path.is_file() and str(spec) in bundled_names():
        path = PROFILE_DIR / f"{spec}.toml"
    elif not path.is_file():
        raise ScenarioError(str(spec), [("", "no such profile file or bundled profile; bundled: "
                                         + ", ".join(bundled_names()))])
    raw = _read_toml(path, str(path))
    if "target" in raw and isinstance(raw["target"], dict):
        return parse_profile(raw["target"], str(path), path.parent, "target")
    return parse_profile(raw, str(path), path.parent)


def _read_toml(path: Path, source: str) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(source, [("", f"cannot read: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, [("", f"not valid TOML: {exc}")]) from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _join(prefix: str, field: str) -> str:
    return f"{prefix}.{field}" if prefix and field else prefix or field
