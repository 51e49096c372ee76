"""Scenario files: TOML in, a validated and frozen :class:`Scenario` out.

Two steps, kept apart: :func:`resolve_defaults` fills what the file leaves out (presets, token
lifetimes shared by every variant), then pydantic validates, naming the field of anything wrong.
"""

from __future__ import annotations

import copy
import itertools
import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Union

import tomli_w
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from sim.distributions import CountDist, DurationDist
from sim.model import Model
from sim.strategies.client import AnyClientPolicy
from sim.strategies.presets import CLIENT_PRESETS, SERVER_PRESETS
from sim.strategies.server import AnyServerPolicy
from sim.units import Duration


#: upper bounds of the size fields: beyond them a scenario is a typo, not a plan
MAX_USERS = 10_000_000
MAX_REPLICATIONS = 10_000
#: the most tabs a user has open, and the most parallel requests one page view sends
MAX_COUNT = 1_000


def _bounded_count(dist, field: str):
    """``dist`` (a count distribution) when it cannot draw more than :data:`MAX_COUNT`."""
    largest = max(getattr(dist, name) for name in ("value", "high", "mean_") if hasattr(dist, name)) \
        if not hasattr(dist, "values") else max(dist.values)
    if largest > MAX_COUNT:
        raise ValueError(f"expected {field} of at most {MAX_COUNT}, got {largest:g}")
    return dist


class ScenarioError(Exception):
    """A scenario that cannot be used. ``problems`` is a list of (field, message); ``lines``
    maps a field to its line in the file, where known."""

    def __init__(self, source: str, problems: list[tuple[str, str]], lines: dict[str, int] | None = None):
        self.source = source
        self.problems = problems
        self.lines = lines or {}
        super().__init__(self.render())

    def render(self) -> str:
        out = []
        for field, message in self.problems:
            line = line_of(self.lines, field) if field else None
            where = f"{self.source}:{line}" if line else self.source
            out.append(f"{where}: {field}: {message}" if field else f"{where}: {message}")
        return "\n".join(out)


class RunSettings(Model):
    """How long, how often, from which seed."""

    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    duration_s: Duration = Field(default="1h", alias="duration", gt=0)
    warmup_s: Duration = Field(default="0s", alias="warmup")
    replications: int = Field(default=1, ge=1, le=MAX_REPLICATIONS)

    @property
    def end_s(self) -> float:
        return self.warmup_s + self.duration_s


class AllAtOnce(Model):
    """Everybody logs in at ``at`` (spread uniformly over ``spread``): the 9:00 mass login."""

    pattern: Literal["all_at_once"] = "all_at_once"
    at_s: Duration = Field(default="0s", alias="at")
    spread_s: Duration = Field(default="0s", alias="spread")


class Ramp(Model):
    """Users arrive at uniformly random instants in ``[start, start + over]``."""

    pattern: Literal["ramp"] = "ramp"
    start_s: Duration = Field(default="0s", alias="start")
    over_s: Duration = Field(alias="over", gt=0)


class PoissonArrivals(Model):
    """Users arrive as a Poisson stream of ``rate_per_s`` from ``start`` until all have come."""

    pattern: Literal["poisson"] = "poisson"
    start_s: Duration = Field(default="0s", alias="start")
    rate_per_s: float = Field(gt=0)


class Diurnal(Model):
    """Arrivals over the whole run with intensity ``1 + amplitude * cos(2π (t - peak) / period)``."""

    pattern: Literal["diurnal"] = "diurnal"
    period_s: Duration = Field(default="1d", alias="period", gt=0)
    peak_s: Duration = Field(default="12h", alias="peak")
    amplitude: float = Field(default=0.8, ge=0, le=1)


Arrival = Annotated[Union[AllAtOnce, Ramp, PoissonArrivals, Diurnal], Field(discriminator="pattern")]


class Population(Model):
    """Who uses the system and for how long."""

    users: int = Field(default=100, ge=1, le=MAX_USERS)
    arrival: Arrival = Field(default_factory=AllAtOnce)
    #: how long a visit lasts; none = until the run ends
    session_length: DurationDist | None = None
    #: time away between visits; none = users do not come back
    away: DurationDist | None = None
    #: the device keeps its tokens between visits ("remember me"): a returning user uses its
    #: access token, or refreshes, and logs in only when the refresh token lapsed or was revoked;
    #: false: every visit logs in anew
    remember_me: bool = False
    tabs: CountDist = Field(default=1)
    #: tab ``i`` of a visit opens ``i`` times this after the first (its page views and its
    #: renewal timer start then); 0: every tab at once
    tab_opening_gap_s: Duration = Field(default="0s", alias="tab_opening_gap", ge=0)
    #: when tabs 1, 2, … of a visit open after the first (the browser lab's measured openings:
    #: a burst opens several at one instant); tabs beyond the list follow the last one by
    #: ``tab_opening_gap`` each. None: ``tab_opening_gap`` alone
    tab_opening_offsets_s: list[Duration] | None = Field(default=None, alias="tab_opening_offsets")

    def tab_offsets_s(self, tabs: int) -> tuple[float, ...]:
        """When each of a visit's ``tabs`` tabs opens, in seconds after the first."""
        given = [0.0, *(self.tab_opening_offsets_s or ())]
        return tuple(given[i] if i < len(given) else given[-1] + (i - len(given) + 1) * self.tab_opening_gap_s
                     for i in range(tabs))

    @field_validator("tabs")
    @classmethod
    def _tabs_bounded(cls, dist):
        return _bounded_count(dist, "tabs")

    #: after a page view, the chance that the user stops for an ``idle_gap`` instead of thinking
    idle_probability: float = Field(default=0.0, ge=0, le=1)
    idle_gap: DurationDist = Field(default="0s")


class Workload(Model):
    """What a user does: page views separated by think times, each a burst of parallel requests."""

    think_time: DurationDist = Field(default_factory=lambda: {"dist": "exponential", "mean": "30s"})
    burst_size: CountDist = Field(default=1)

    @field_validator("burst_size")
    @classmethod
    def _burst_bounded(cls, dist):
        return _bounded_count(dist, "burst sizes")


class Network(Model):
    """Round trips between clients and servers."""

    rtt: DurationDist = Field(default="80ms")
    #: round trips of calls to the auth tier (refresh, login) when they differ from the API's
    #: (e.g. measured against a server whose token endpoint is slower); None: ``rtt``
    auth_rtt: DurationDist | None = None
    #: round trips of refresh calls the server refuses (``invalid_grant``), when they differ from
    #: a granted call's (a refusal is answered without writing or signing; measured against a
    #: real server it comes back sooner). One uniform draw per auth-tier call sets how slow the
    #: call is; its request leg is half of ``auth_rtt`` (or ``rtt``) at that draw, and the
    #: answer leg of a refusal is what this distribution at the same draw leaves (at least 0).
    #: None: a refusal's round trip is a grant's
    auth_rtt_refused: DurationDist | None = None
    #: how an auth-tier call's answer leg is drawn: ``one_draw`` — both legs are halves of the
    #: call's one draw, so two calls come back in the order the server answered them whenever
    #: their requests reached it in the order they were sent; ``independent`` — the answer leg
    #: is half a round trip at a draw of its own, made when the answer leaves (at that moment's
    #: state of the host when round trips are correlated): two answers the server wrote in one
    #: order can come back in the other, which decides what a cookie jar that keeps the last
    #: ``Set-Cookie`` ends with
    auth_legs: Literal["one_draw", "independent"] = "one_draw"
    #: how alike the round trips of calls sent at the same moment are, whoever sends them (0:
    #: independent draws): a busy host slows whatever is in flight together. Every call's round
    #: trip is drawn from its own distribution as written, through a Gaussian copula with a
    #: state of the host shared by the run (:class:`sim.engine.streams.HostState`): normal
    #: scores of calls sent together correlate this much, of calls Δ apart this much times
    #: exp(−Δ / ``rtt_correlation_time``). ``validate`` measures both from its load test
    rtt_correlation: float = Field(default=0.0, ge=0, le=1)
    rtt_correlation_time_s: Duration = Field(default="1s", alias="rtt_correlation_time", gt=0)
    #: a user's refresh answer never comes back before the answers to the API calls that user
    #: sent earlier and is still waiting for (false: every round trip is drawn on its own, so a
    #: refresh sent after a 401 can overtake a slower 401 of the same page view). One server
    #: process answering in the order calls reached it does this (node-oidc-provider serves its
    #: API and token endpoint from one event loop): the 401s of a page view then all come back
    #: before the refresh the first of them started. A target profile's ``network_settings`` sets it
    in_order: bool = False
    loss_probability: float = Field(default=0.0, ge=0, lt=1)
    #: how long a client waits for an answer that never comes
    timeout_s: Duration = Field(default="10s", alias="timeout", gt=0)


class Clocks(Model):
    """Client clock skew (client clock minus server clock) and the server's ``exp`` leeway."""

    client_skew: DurationDist = Field(default="0s")
    leeway_s: Duration = Field(default="0s", alias="leeway")


class AuthTier(Model):
    """The token service: a pool of workers with a queue."""

    workers: int = Field(default=4, ge=1)
    #: the tier is built as this many independent instances, each with ``workers`` workers and
    #: its own queue, users spread over them at random (a seeded draw); a run then simulates
    #: each instance as an independent job and merges their tables (exactly: nothing couples
    #: users of different instances)
    instances: int = Field(default=1, ge=1, le=1024)
    #: service times: a duration (constant) or a distribution like any other duration; a call's
    #: service is its own part plus one ``sign_time`` per token minted (and one ``verify_time``
    #: for a refresh), each drawn anew (:class:`sim.strategies.service.ServiceTimes`)
    login_time: DurationDist = Field(default="50ms")
    refresh_time: DurationDist = Field(default="5ms")
    sign_time: DurationDist = Field(default="1ms")
    verify_time: DurationDist = Field(default="200us")
    #: a call that waited this long for a worker is answered 503
    queue_timeout_s: Duration = Field(default="10s", alias="queue_timeout", gt=0)
    #: calls that may wait for a worker at once; one more is shed at once (503 with Retry-After).
    #: None: no bound but the queue timeout
    queue_limit: int | None = Field(default=None, ge=0, le=1_000_000)
    #: the wait a shed call is told to observe (``Retry-After``, whole wall seconds on the wire)
    retry_after_s: Duration = Field(default="1s", alias="retry_after", gt=0)
    #: a profile written by ``refreshlab calibrate`` (relative to the scenario file): it gives
    #: the times above that the table does not set; loading replaces it by those times
    profile: str | None = None

    @property
    def login_time_s(self) -> float:
        """Mean of ``login_time``, seconds."""
        return self.login_time.mean

    @property
    def refresh_time_s(self) -> float:
        """Mean of ``refresh_time``, seconds."""
        return self.refresh_time.mean

    @property
    def sign_time_s(self) -> float:
        """Mean of ``sign_time``, seconds."""
        return self.sign_time.mean

    @property
    def verify_time_s(self) -> float:
        """Mean of ``verify_time``, seconds."""
        return self.verify_time.mean


class ApiTier(Model):
    """The API servers that verify access tokens (no queue: they scale out)."""

    verify_time_s: Duration = Field(default="200us", alias="verify_time")


class Tokens(Model):
    """Lifetimes every variant gets unless its ``server`` table says otherwise."""

    access_ttl_s: Duration = Field(default="15m", alias="access_ttl", gt=0)
    refresh_ttl_s: Duration = Field(default="7d", alias="refresh_ttl", gt=0)
    refresh_idle_ttl_s: Duration | None = Field(default=None, alias="refresh_idle_ttl", gt=0)
    algorithm: Literal["HS256", "RS256", "ES256", "EdDSA"] = "HS256"


class Gates(Model):
    """Pass/fail gates for CI, checked after a run (``refreshlab`` exits 1 when one fails)."""

    #: expressions like ``"failed_requests > 0"``: the run fails when one holds for a variant
    fail_on: list[str] = Field(default_factory=list)
    #: compare the ``mean``, or the bound of the 95% CI on the failing side (``ci``)
    on: Literal["mean", "ci"] = "mean"

    @field_validator("fail_on")
    @classmethod
    def _parse(cls, expressions):
        from sim.gates import GateError, parse_gate

        for i, text in enumerate(expressions):
            try:
                parse_gate(text)
            except GateError as exc:
                raise ValueError(f"fail_on[{i}]: {exc}") from None
        return expressions


class Variant(Model):
    """One strategy variant to compare: a name, a client policy and a server policy."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    description: str = ""
    client: AnyClientPolicy
    server: AnyServerPolicy

    @model_validator(mode="after")
    def _fits(self):
        if self.server.kind == "sliding" and self.client.trigger != "sliding":
            raise ValueError("a sliding server issues no refresh tokens: use client trigger = 'sliding'")
        if self.server.kind != "sliding" and self.client.trigger == "sliding":
            raise ValueError("client trigger 'sliding' needs server kind = 'sliding'")
        return self


class Scenario(Model):
    """Everything one comparison needs. Build with :func:`load_scenario` or :func:`parse_scenario`."""

    description: str = ""
    run: RunSettings = Field(default_factory=RunSettings)
    population: Population = Field(default_factory=Population)
    workload: Workload = Field(default_factory=Workload)
    network: Network = Field(default_factory=Network)
    clocks: Clocks = Field(default_factory=Clocks)
    auth: AuthTier = Field(default_factory=AuthTier)
    api: ApiTier = Field(default_factory=ApiTier)
    tokens: Tokens = Field(default_factory=Tokens)
    gates: Gates = Field(default_factory=Gates)
    strategies: list[Variant] = Field(min_length=1)
    #: how a load test talks to the server (a target profile, validated by ``loadtests.targets``)
    target: dict[str, Any] | None = None
    #: the scenario as written (file form, before defaults were resolved), when known
    _written: dict[str, Any] | None = PrivateAttr(default=None)

    @field_validator("strategies")
    @classmethod
    def _unique_names(cls, variants):
        seen = set()
        for v in variants:
            if v.name in seen:
                raise ValueError(f"expected unique strategy names; {v.name!r} appears twice")
            seen.add(v.name)
        return variants

    def variant(self, name: str) -> Variant:
        """The variant called ``name``; ``KeyError`` listing the names otherwise."""
        for v in self.strategies:
            if v.name == name:
                return v
        raise KeyError(f"no strategy {name!r}; the scenario has: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.strategies]

    def chosen(self, strategies: Iterable[str] | None = None) -> list[str]:
        """The names in ``strategies`` (every variant's by default), each checked to be one of
        this scenario's: ``KeyError`` listing them otherwise."""
        names = list(strategies) if strategies is not None else self.names
        for name in names:
            self.variant(name)
        return names

    def with_run(self, seed: int | None = None, replications: int | None = None) -> "Scenario":
        """A copy with the run's ``seed`` and ``replications`` where they are given (``None``
        keeps the scenario's), as ``--seed`` and ``--replications`` set them."""
        overrides = {k: v for k, v in (("seed", seed), ("replications", replications)) if v is not None}
        return self.replace(run=overrides) if overrides else self

    def replace(self, **sections: Any) -> "Scenario":
        """A copy with some sections or fields changed, validated again, e.g.
        ``s.replace(run={"replications": 1}, population={"users": 50})``. Fields may be given by
        their Python names (``access_ttl_s=60``, seconds) or as a file spells them
        (``access_ttl="1m"``). Goes the same way as ``--set``: ``[tokens]`` lifetimes reach every
        variant's server that does not set its own."""
        settings: dict[str, Any] = {}
        for key, value in sections.items():
            if isinstance(value, dict) and key != "strategies":
                for field, item in value.items():
                    settings[f"{key}.{field}"] = item
            elif key == "strategies":
                settings[key] = [v.to_file_dict() if isinstance(v, Model) else v for v in value]
            else:
                settings[key] = value.to_file_dict() if isinstance(value, Model) else value
        return self.with_settings(settings, python_units=True)

    def with_settings(self, settings: dict[str, Any], python_units: bool = False, source: str = "<scenario>") -> "Scenario":
        """A copy with dotted ``settings`` (``tokens.access_ttl``, ``strategies[1].client.threshold``)
        applied to the scenario as written, then defaults resolved and validated again.
        ``python_units``: bare numbers are seconds (Python callers); otherwise durations need a
        unit, as in a file. :class:`ScenarioError` names the field."""
        raw = self._written if self._written is not None else unresolved(self)
        try:
            changed = with_settings(raw, {_file_path(Scenario, path): value for path, value in settings.items()})
        except ValueError as exc:
            raise ScenarioError(source, [("", str(exc))]) from None
        return parse_scenario(changed, source, python_units=python_units)

    def to_toml(self) -> str:
        """The scenario with every default filled in, as a scenario file."""
        return tomli_w.dumps(self.to_file_dict())


def resolve_defaults(raw: dict[str, Any], inherited: dict[str, str] | None = None) -> dict[str, Any]:
    """Step one of loading: expand presets and give each variant's server the ``[tokens]``
    lifetimes it does not set itself. Returns a new dict; validation comes after. ``inherited``,
    when given, is filled with the field each copied value came from (``strategies[0].server.access_ttl``
    -> ``tokens.access_ttl``, or ``strategies[0].client`` for a preset's fields), so that a
    problem is reported once, where the user wrote it."""
    inherited = {} if inherited is None else inherited
    data = dict(raw)
    tokens = data.get("tokens", {})
    if not isinstance(tokens, dict) or not isinstance(data.get("strategies"), list):
        return data
    token_defaults = {k: tokens[k] for k in ("access_ttl", "refresh_ttl", "refresh_idle_ttl") if k in tokens}
    strategies = []
    for i, variant in enumerate(data["strategies"]):
        if isinstance(variant, dict):
            variant = dict(variant)
            for part, presets in (("client", CLIENT_PRESETS), ("server", SERVER_PRESETS)):
                table = variant.get(part)
                if isinstance(table, dict) and isinstance(table.get("preset"), str) and table["preset"] in presets:
                    for key in presets[table["preset"]]:
                        if key not in table:
                            inherited[f"strategies[{i}].{part}.{key}"] = f"strategies[{i}].{part}.preset"
                    variant[part] = {**presets[table["preset"]], **table}
            server = variant.get("server")
            if isinstance(server, dict):
                lifetimes = dict(token_defaults)
                lifetimes.setdefault("access_ttl", Tokens().to_file_dict()["access_ttl"])
                if server.get("kind", "dual_token") == "sliding":
                    lifetimes = {k: v for k, v in lifetimes.items() if k == "access_ttl"}
                for key in lifetimes:
                    if key not in server and key in token_defaults:
                        inherited[f"strategies[{i}].server.{key}"] = f"tokens.{key}"
                variant["server"] = {**lifetimes, **server}
        strategies.append(variant)
    data["strategies"] = strategies
    return data


def _check_presets(raw: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for i, variant in enumerate(raw.get("strategies", []) if isinstance(raw.get("strategies"), list) else []):
        for part, presets in (("client", CLIENT_PRESETS), ("server", SERVER_PRESETS)):
            table = variant.get(part) if isinstance(variant, dict) else None
            if isinstance(table, dict) and "preset" in table and not isinstance(table["preset"], str):
                problems.append((f"strategies[{i}].{part}.preset",
                                 f"expected a preset name (one of: {', '.join(presets)}), "
                                 f"got a {type(table['preset']).__name__}"))
            elif isinstance(table, dict) and "preset" in table and table["preset"] not in presets:
                problems.append((f"strategies[{i}].{part}.preset",
                                 f"unknown preset {table['preset']!r}; expected one of: {', '.join(presets)}"))
    return problems


def apply_profile(raw: dict[str, Any], base_dir: Path, source: str) -> dict[str, Any]:
    """Step zero of loading: an ``[auth] profile`` (a ``refreshlab calibrate`` file, relative to
    ``base_dir``) fills the auth times the table does not set, then is dropped, so that the
    resolved scenario carries the measured times themselves."""
    auth = raw.get("auth")
    if not isinstance(auth, dict) or auth.get("profile") is None:
        return raw
    from sim.calibrate import auth_times

    if not isinstance(auth["profile"], str):
        raise ScenarioError(source, [("auth.profile", "expected the path of a calibration profile (a string)")])
    tokens = raw.get("tokens") if isinstance(raw.get("tokens"), dict) else {}
    algorithm = tokens.get("algorithm", Tokens.model_fields["algorithm"].default)
    if algorithm not in typing.get_args(Tokens.model_fields["algorithm"].annotation):
        return raw  # validation names the algorithm
    try:
        measured = auth_times(base_dir / auth["profile"], str(algorithm))
    except ValueError as exc:
        raise ScenarioError(source, [("auth.profile", str(exc))]) from None
    table = {k: v for k, v in auth.items() if k != "profile"}
    return {**raw, "auth": {**measured, **table}}


def parse_scenario(raw: dict[str, Any], source: str = "<scenario>", base_dir: str | Path = ".", *,
                   python_units: bool = False, lines: dict[str, int] | None = None) -> Scenario:
    """Validate a scenario given as a dict in file form (durations as strings; with
    ``python_units`` bare numbers are seconds); an ``[auth] profile`` path is relative to
    ``base_dir``. :class:`ScenarioError` lists one problem per field the user wrote, at that
    field's path (and ``lines``' line number when given)."""
    problems = _check_presets(raw)
    if problems:
        raise ScenarioError(source, problems, lines)
    raw = apply_profile(raw, Path(base_dir), source)
    inherited: dict[str, str] = {}
    try:
        scenario = Scenario.model_validate(resolve_defaults(raw, inherited), context={"from_file": not python_units})
    except ValidationError as exc:
        found: dict[str, str] = {}
        for error in exc.errors():
            field, message = describe(error)
            for copied, origin in inherited.items():
                if field == copied or field.startswith(copied + "."):
                    field = origin + field[len(copied):]
                    break
            found.setdefault(field, message)  # one problem per field, the first reason
        raise ScenarioError(source, list(found.items()), lines) from None
    except RecursionError:
        raise ScenarioError(source, [("", "values nested too deeply")]) from None
    scenario._written = copy.deepcopy(raw)
    return scenario


def unresolved(scenario: Scenario) -> dict[str, Any]:
    """A scenario built without a file, in file form, with every server lifetime that equals the
    ``[tokens]`` default left out again (so that a new ``[tokens]`` value reaches it)."""
    data = scenario.to_file_dict()
    tokens = data.get("tokens", {})
    for variant in data.get("strategies", []):
        server = variant.get("server", {})
        for key in ("access_ttl", "refresh_ttl", "refresh_idle_ttl"):
            if key in server and key in tokens and server[key] == tokens[key]:
                del server[key]
    return data


def _file_path(model: type, path: str) -> str:
    """A dotted path with Python field names (``tokens.access_ttl_s``) in file spelling
    (``tokens.access_ttl``); parts it does not know are kept as written."""
    out = []
    for part in path.split("."):
        match = _PATH_PART.fullmatch(part)
        if match is None:
            return path
        name, indices = match.groups()
        fields = getattr(model, "model_fields", {}) if isinstance(model, type) else {}
        info = fields.get(name)
        if info is None:
            info = next((candidate for candidate in fields.values() if candidate.alias == name), None)
        out.append((info.alias or name if info is not None else name) + indices)
        model = _inner_model(info.annotation) if info is not None else None
    return ".".join(out)


def _inner_model(annotation: Any) -> type | None:
    """The single pydantic model inside an annotation (``list[Variant]`` -> ``Variant``), if any."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    found = [m for arg in typing.get_args(annotation) if (m := _inner_model(arg)) is not None]
    return found[0] if len(found) == 1 else None


def load_scenario(path: str | Path, settings: dict[str, Any] | None = None) -> Scenario:
    """Read and validate a scenario file, with dotted ``settings`` overriding it (file spelling,
    as ``--set`` takes them; see :meth:`Scenario.with_settings`); :class:`ScenarioError` names
    the file, the line and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except FileNotFoundError:
        raise ScenarioError(str(path), [("", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(path), [("", f"cannot read: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(str(path), [("", f"not valid TOML: {exc}")]) from None
    except RecursionError:
        raise ScenarioError(str(path), [("", "not valid TOML here: arrays or tables nested too deeply")]) from None
    lines = toml_lines(text)
    if settings:
        try:
            raw = with_settings(raw, {_file_path(Scenario, k): v for k, v in settings.items()})
        except ValueError as exc:
            raise ScenarioError(str(path), [("", str(exc))]) from None
        source = f"{path} with " + ", ".join(f"{k}={spell(v)}" for k, v in settings.items())
        set_here = {_file_path(Scenario, k) for k in settings}
        lines = {k: v for k, v in lines.items() if not any(k == s or k.startswith(s + ".") for s in set_here)}
        return parse_scenario(raw, source, path.parent, lines=lines)
    return parse_scenario(raw, str(path), path.parent, lines=lines)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""\s*([A-Za-z0-9_.\-"']+?)\s*=""")


def toml_lines(text: str) -> dict[str, int]:
    """Where each field of a TOML scenario is written: dotted path (``strategies[1].client.trigger``)
    -> line number (1-based). Keys of inline tables get the line of their table; a table header
    gives the line of the table. A reading aid for error messages, not a parser."""
    lines: dict[str, int] = {}
    counts: dict[str, int] = {}
    table: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            parts = [p.strip().strip('"') for p in header.group(2).split(".")]
            if header.group(1) == "[[":
                key = ".".join(parts)
                counts[key] = counts.get(key, -1) + 1
                parts[-1] = f"{parts[-1]}[{counts[key]}]"
            else:
                # a sub-table of the latest array entry: [strategies.client] after [[strategies]]
                for i in range(len(parts), 0, -1):
                    key = ".".join(parts[:i])
                    if key in counts:
                        parts[i - 1] = f"{parts[i - 1]}[{counts[key]}]"
                        break
            table = parts
            lines.setdefault(".".join(table), number)
            continue
        match = _KEY.match(line)
        if not match or line.lstrip().startswith("#"):
            continue
        base = ".".join(table + [p.strip().strip('"') for p in match.group(1).split(".")])
        lines.setdefault(base, number)
        rest = line[match.end():]
        if rest.lstrip().startswith("{"):
            for inner in re.finditer(r"([A-Za-z0-9_]+)\s*=", rest):
                lines.setdefault(f"{base}.{inner.group(1)}", number)
    return lines


def line_of(lines: dict[str, int], field: str) -> int | None:
    """The line of ``field`` or of the nearest enclosing field that has one."""
    while field:
        if field in lines:
            return lines[field]
        field = field.rsplit(".", 1)[0] if "." in field else (field.rsplit("[", 1)[0] if "[" in field else "")
    return None


_PATH_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


def parse_setting(text: str) -> tuple[str, list[Any]]:
    """``"auth.workers=1,2,4"`` -> ``("auth.workers", [1, 2, 4])``. Values are TOML literals when
    they parse as one (``4``, ``true``, ``"x"``), else strings (``15m``). ``ValueError`` if malformed."""
    path, sep, values = text.partition("=")
    path = path.strip()
    if not sep or not values.strip() or not all(_PATH_PART.fullmatch(p) for p in path.split(".")):
        raise ValueError(f"expected FIELD=VALUE[,VALUE...] with a dotted field like auth.workers "
                         f"or strategies[0].server.grace_period, got {text!r}")
    return path, [_literal(v.strip()) for v in values.split(",")]


def _literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def spell(value: Any) -> str:
    """A setting's value as a scenario file spells it (``true``, ``4``, ``15m``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def with_settings(raw: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A copy of scenario ``raw`` (file form) with dotted ``settings`` (``strategies[1].client.threshold``)
    set, creating tables as needed; ``ValueError`` naming a path that does not fit."""
    data = copy.deepcopy(raw)
    for path, value in settings.items():
        node, keys = data, []
        for part in path.split("."):
            name, indices = _PATH_PART.fullmatch(part).groups()
            keys.append(name)
            keys.extend(int(i) for i in re.findall(r"\d+", indices))
        for key, following in zip(keys, keys[1:]):
            try:
                node = node[key] if isinstance(key, int) else node.setdefault(key, [] if isinstance(following, int) else {})
            except (IndexError, TypeError, AttributeError):
                raise ValueError(f"{path}: no such place in the scenario") from None
        try:
            node[keys[-1]] = value
        except (IndexError, TypeError):
            raise ValueError(f"{path}: no such place in the scenario") from None
    return data


def sweep_settings(settings: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every combination of the settings' values (the cartesian product), in order."""
    paths = [path for path, _ in settings]
    return [dict(zip(paths, combo)) for combo in itertools.product(*(values for _, values in settings))]


_TYPES = {
    "int_type": "expected a whole number", "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number", "float_type": "expected a number",
    "float_parsing": "expected a number", "bool_type": "expected true or false",
    "bool_parsing": "expected true or false", "string_type": "expected a string",
    "dict_type": "expected a table", "model_type": "expected a table", "model_attributes_type": "expected a table",
    "list_type": "expected a list", "finite_number": "expected a finite number",
}
_BOUNDS = {"greater_than": ("greater than", "gt"), "greater_than_equal": ("at least", "ge"),
           "less_than": ("less than", "lt"), "less_than_equal": ("at most", "le")}


def describe(error: dict[str, Any]) -> tuple[str, str]:
    """A pydantic error as (field path in file spelling, what was expected in plain words)."""
    parts: list[str] = []
    for item in error["loc"]:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in _UNION_TAGS or item.startswith("function-"):
            continue  # the discriminator's branch name, not a field the user wrote
        else:
            parts.append(("." if parts else "") + str(item))
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    message = error["msg"].removeprefix("Value error, ")
    if kind == "missing":
        message = "required field is missing"
    elif kind == "too_short":
        message = f"expected at least {ctx.get('min_length', 1)} entry, got none"
    elif kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        message = f"expected a value {words} {ctx.get(key)}, got {given!r}"
    elif kind in _TYPES:
        message = f"{_TYPES[kind]}, got {given!r}"
    elif kind == "literal_error":
        message = f"expected one of: {ctx.get('expected')}; got {given!r}"
    elif kind == "union_tag_invalid":
        message = (f"unknown {ctx.get('discriminator', 'kind').strip(chr(39))} {ctx.get('tag')!r}; "
                   f"expected one of: {ctx.get('expected_tags')}")
    elif kind == "union_tag_not_found":
        message = f"missing {ctx.get('discriminator', 'kind').strip(chr(39))}; say which kind this table is"
    elif kind == "string_pattern_mismatch":
        message = f"expected letters, digits, '_', '.' or '-' only, got {given!r}"
    elif kind == "string_too_long":
        message = f"expected at most {ctx.get('max_length')} characters"
    unknown = re.match(r"unknown field '([^']+)'", message)
    if unknown:  # at the path of the key the user wrote
        parts.append(("." if parts else "") + unknown.group(1))
    return "".join(parts), message


_UNION_TAGS = {
    "reactive", "proactive", "timer", "sliding", "dual_token", "all_at_once", "ramp", "poisson",
    "diurnal", "constant", "exponential", "uniform", "normal", "lognormal", "empirical",
}


# -- sanity warnings ---------------------------------------------------------------------------

#: checks of values that are valid but probably not meant; each takes a scenario and yields
#: (field path in file spelling, message). Append to add checks (bounds, work estimates).
SANITY_CHECKS: list = []


def sanity_check(check):
    """Register ``check`` (a function of a :class:`Scenario` yielding (field, message)) among the
    sanity warnings that ``check``, ``run`` and ``compare`` show and ``--strict`` refuses."""
    SANITY_CHECKS.append(check)
    return check


def sanity_warnings(scenario: Scenario) -> list[tuple[str, str]]:
    """Every sanity warning of ``scenario``, one per (field, message)."""
    found: list[tuple[str, str]] = []
    for check in SANITY_CHECKS:
        for item in check(scenario):
            if item not in found:
                found.append(item)
    return found


def _d(seconds: float) -> str:
    from sim.units import format_duration

    return format_duration(seconds)


@sanity_check
def _round_trips(s: Scenario):
    rtt = s.network.rtt.mean
    if rtt >= s.network.timeout_s:
        yield ("network.rtt", f"a mean round trip of {_d(rtt)} is at least the client timeout "
                              f"({_d(s.network.timeout_s)}): almost every call would time out (did you mean ms?)")
    elif rtt > 5.0:
        yield ("network.rtt", f"a mean round trip of {_d(rtt)} is far longer than any real network (did you mean ms?)")


@sanity_check
def _thresholds(s: Scenario):
    for i, v in enumerate(s.strategies):
        ttl = v.server.access_ttl_s
        threshold = getattr(v.client, "threshold_s", None)
        if threshold is not None and threshold >= ttl:
            yield (f"strategies[{i}].client.threshold",
                   f"a threshold of {_d(threshold)} is not shorter than the token's life ({_d(ttl)}): "
                   "the client would renew before every request or tick")
        interval = getattr(v.client, "check_interval_s", None)
        if interval is not None and threshold is not None and interval > ttl:
            yield (f"strategies[{i}].client.check_interval",
                   f"checking every {_d(interval)} on a token that lives {_d(ttl)}: tokens expire between checks")


@sanity_check
def _queue_timeout(s: Scenario):
    a = s.auth
    service = {"login": a.login_time_s + 2 * a.sign_time_s, "refresh": a.refresh_time_s + a.verify_time_s + a.sign_time_s}
    for what, seconds in service.items():
        if a.queue_timeout_s < seconds:
            yield ("auth.queue_timeout", f"a queue timeout of {_d(a.queue_timeout_s)} is shorter than a {what}'s "
                                         f"service time ({_d(seconds)})")


@sanity_check
def _empty_window(s: Scenario):
    think = s.workload.think_time.mean
    if think >= s.run.duration_s:
        yield ("workload.think_time", f"a mean think time of {_d(think)} is not shorter than the measurement window "
                                      f"({_d(s.run.duration_s)}): few or no requests would be counted")
    arrival = s.population.arrival
    first = getattr(arrival, "at_s", None)
    if first is None:
        first = getattr(arrival, "start_s", None)
    if first is not None and first >= s.run.end_s:
        yield ("population.arrival", f"users arrive at {_d(first)}, after the run ends ({_d(s.run.end_s)}): "
                                     "the window would have no requests")
