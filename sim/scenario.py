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
from typing import Annotated, Any, Literal, Union

import tomli_w
from pydantic import Field, ValidationError, field_validator, model_validator

from sim.distributions import CountDist, DurationDist
from sim.model import Model
from sim.strategies.client import AnyClientPolicy
from sim.strategies.presets import CLIENT_PRESETS, SERVER_PRESETS
from sim.strategies.server import AnyServerPolicy
from sim.units import Duration


class ScenarioError(Exception):
    """A scenario that cannot be used. ``problems`` is a list of (field, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.source}: {field}: {message}" if field else f"{self.source}: {message}"
                 for field, message in self.problems]
        return "\n".join(lines)


class RunSettings(Model):
    """How long, how often, from which seed."""

    seed: int = 0
    duration_s: Duration = Field(default="1h", alias="duration", gt=0)
    warmup_s: Duration = Field(default="0s", alias="warmup")
    replications: int = Field(default=1, ge=1)

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

    users: int = Field(default=100, ge=1)
    arrival: Arrival = Field(default_factory=AllAtOnce)
    #: how long a visit lasts; none = until the run ends
    session_length: DurationDist | None = None
    #: time away between visits (each visit logs in anew); none = users do not come back
    away: DurationDist | None = None
    tabs: CountDist = Field(default=1)
    #: after a page view, the chance that the user stops for an ``idle_gap`` instead of thinking
    idle_probability: float = Field(default=0.0, ge=0, le=1)
    idle_gap: DurationDist = Field(default="0s")


class Workload(Model):
    """What a user does: page views separated by think times, each a burst of parallel requests."""

    think_time: DurationDist = Field(default_factory=lambda: {"dist": "exponential", "mean": "30s"})
    burst_size: CountDist = Field(default=1)


class Network(Model):
    """Round trips between clients and servers."""

    rtt: DurationDist = Field(default="80ms")
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
    login_time_s: Duration = Field(default="50ms", alias="login_time")
    refresh_time_s: Duration = Field(default="5ms", alias="refresh_time")
    sign_time_s: Duration = Field(default="1ms", alias="sign_time")
    verify_time_s: Duration = Field(default="200us", alias="verify_time")
    #: a call that waited this long for a worker is answered 503
    queue_timeout_s: Duration = Field(default="10s", alias="queue_timeout", gt=0)
    #: a profile written by ``refreshlab calibrate`` (relative to the scenario file): it gives
    #: the times above that the table does not set; loading replaces it by those times
    profile: str | None = None


class ApiTier(Model):
    """The API servers that verify access tokens (no queue: they scale out)."""

    verify_time_s: Duration = Field(default="200us", alias="verify_time")


class Tokens(Model):
    """Lifetimes every variant gets unless its ``server`` table says otherwise."""

    access_ttl_s: Duration = Field(default="15m", alias="access_ttl", gt=0)
    refresh_ttl_s: Duration = Field(default="7d", alias="refresh_ttl", gt=0)
    refresh_idle_ttl_s: Duration | None = Field(default=None, alias="refresh_idle_ttl", gt=0)
    algorithm: Literal["HS256", "RS256", "ES256", "EdDSA"] = "HS256"


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
    strategies: list[Variant] = Field(min_length=1)
    #: how a load test talks to the server (a target profile, validated by ``loadtests.targets``)
    target: dict[str, Any] | None = None

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

    def replace(self, **sections: Any) -> "Scenario":
        """A copy with some sections or fields changed, validated again, e.g.
        ``s.replace(run={"replications": 1}, population={"users": 50})`` (Python units)."""
        data = self.model_dump(by_alias=False)
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return Scenario.model_validate(data)

    def to_toml(self) -> str:
        """The scenario with every default filled in, as a scenario file."""
        return tomli_w.dumps(self.to_file_dict())


def resolve_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Step one of loading: expand presets and give each variant's server the ``[tokens]``
    lifetimes it does not set itself. Returns a new dict; validation comes after."""
    data = dict(raw)
    tokens = data.get("tokens", {})
    if not isinstance(tokens, dict) or not isinstance(data.get("strategies"), list):
        return data
    token_defaults = {k: tokens[k] for k in ("access_ttl", "refresh_ttl", "refresh_idle_ttl") if k in tokens}
    strategies = []
    for variant in data["strategies"]:
        if isinstance(variant, dict):
            variant = dict(variant)
            for part, presets in (("client", CLIENT_PRESETS), ("server", SERVER_PRESETS)):
                table = variant.get(part)
                if isinstance(table, dict) and table.get("preset") in presets:
                    variant[part] = {**presets[table["preset"]], **table}
            server = variant.get("server")
            if isinstance(server, dict):
                lifetimes = dict(token_defaults)
                lifetimes.setdefault("access_ttl", Tokens().to_file_dict()["access_ttl"])
                if server.get("kind", "dual_token") == "sliding":
                    lifetimes = {k: v for k, v in lifetimes.items() if k == "access_ttl"}
                variant["server"] = {**lifetimes, **server}
        strategies.append(variant)
    data["strategies"] = strategies
    return data


def _check_presets(raw: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for i, variant in enumerate(raw.get("strategies", []) if isinstance(raw.get("strategies"), list) else []):
        for part, presets in (("client", CLIENT_PRESETS), ("server", SERVER_PRESETS)):
            table = variant.get(part) if isinstance(variant, dict) else None
            if isinstance(table, dict) and "preset" in table and table["preset"] not in presets:
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


def parse_scenario(raw: dict[str, Any], source: str = "<scenario>", base_dir: str | Path = ".") -> Scenario:
    """Validate a scenario given as a dict in file form (durations as strings); an
    ``[auth] profile`` path is relative to ``base_dir``."""
    problems = _check_presets(raw)
    if problems:
        raise ScenarioError(source, problems)
    raw = apply_profile(raw, Path(base_dir), source)
    try:
        return Scenario.model_validate(resolve_defaults(raw), context={"from_file": True})
    except ValidationError as exc:
        raise ScenarioError(source, [_describe(e) for e in exc.errors()]) from None


def load_scenario(path: str | Path, settings: dict[str, Any] | None = None) -> Scenario:
    """Read and validate a scenario file, with dotted ``settings`` overriding it (see
    :func:`with_settings`); :class:`ScenarioError` names the file and field."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(str(path), [("", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(path), [("", f"cannot read: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(str(path), [("", f"not valid TOML: {exc}")]) from None
    if settings:
        try:
            raw = with_settings(raw, settings)
        except ValueError as exc:
            raise ScenarioError(str(path), [("", str(exc))]) from None
        source = f"{path} with " + ", ".join(f"{k}={spell(v)}" for k, v in settings.items())
        return parse_scenario(raw, source, path.parent)
    return parse_scenario(raw, str(path), path.parent)


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


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    parts: list[str] = []
    for item in error["loc"]:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in _UNION_TAGS or item.startswith("function-"):
            continue  # the discriminator's branch name, not a field the user wrote
        else:
            parts.append(("." if parts else "") + str(item))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required field is missing"
    elif error["type"] == "too_short":
        message = f"expected at least {error['ctx']['min_length']} entry, got none"
    elif error["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        message = f"{message} (got {error.get('input')!r})"
    return "".join(parts), message


_UNION_TAGS = {
    "reactive", "proactive", "timer", "sliding", "dual_token", "all_at_once", "ramp", "poisson",
    "diurnal", "constant", "exponential", "uniform", "normal", "lognormal", "empirical",
}

