"""Typed configuration of the gateway (``cortex.toml``) and its catalogue (``models.toml``).

Load and validate only: nothing here opens a socket or starts a task. Every problem
with a file, whether it is missing, not TOML, or not the right shape, surfaces as one
``ConfigError`` whose message names the file and each bad field, so an operator can
fix a typo without reading a traceback.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cortex.spec import ModelSpec

_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


class ConfigError(Exception):
    """A configuration file is missing, is not valid TOML, or does not validate."""


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[ipv6]:port`` into ``(host, port)``; brackets are removed."""
    value = text.strip()
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"expected [IPV6]:PORT, got {text!r}")
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        if ":" in host:
            raise ValueError(f"an IPv6 address needs brackets, e.g. [::1]:{port}; got {text!r}")
        if not host:
            raise ValueError(f"missing host in {text!r} (use 0.0.0.0:{port} for all interfaces)")
    # isdigit() rejects signs and spaces that int() would quietly accept.
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port!r} in {text!r}")
    return host, int(port)


class GatewaySection(BaseModel):
    """``[gateway]``: where the gateway listens and how it watches the fleet."""

    model_config = ConfigDict(extra="forbid")

    listen: str = "127.0.0.1:31313"
    metrics_listen: str = "127.0.0.1:31314"
    # A second address for the same API, for clients that hard-code Ollama's port
    # ("127.0.0.1:11434"); none by default (Ollama's own server may hold that port).
    ollama_listen: str | None = None
    # Secrets stay out of reprs, so a logged config does not leak them.
    api_keys: list[str] = Field(default_factory=list, repr=False)
    # Opens the admin routes (/fleet, /admin, /debug), and is no API key; else
    # $CORTEX_ADMIN_TOKEN. docs/keys.md says who may call what.
    admin_token: str | None = Field(default=None, repr=False)
    # /ui (and the metrics listener) behind the admin token too
    protect_ui: bool = False
    poll_interval_s: float = Field(default=2, gt=0)
    down_after_misses: int = Field(default=3, ge=1)
    request_body_limit_mb: int = Field(default=32, ge=1)
    # a stream waiting on a cold load gets an SSE comment this often
    stream_keepalive_s: float = Field(default=5, gt=0)
    # a stream from a node that sends nothing for this long is ended with an error event
    # (a frozen node would otherwise hold its clients forever)
    upstream_idle_timeout_s: float = Field(default=300, gt=0)
    # a request's headers must arrive within this (slow senders would hold sockets forever)
    header_timeout_s: float = Field(default=30, gt=0)
    # on SIGTERM/Ctrl-C: answers in flight get this long to finish, then streams end with
    # an error event the client can act on (rather than a cut connection)
    shutdown_grace_s: float = Field(default=30, ge=0)
    # What must outlive a restart (stored responses, keys, usage) lives in a database:
    # SQLite in the state dir by default ($CORTEX_STATE_DIR, else ~/.local/state/cortex);
    # "postgresql://user:pass@host:port/db" where several gateways share one.
    state_dir: Path | None = None
    # HTTPS on the API listeners (listen and ollama_listen): both files, PEM, or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    database_url: str | None = Field(default=None, repr=False)
    # Responses API (store: true): how long a response stays retrievable and usable as a
    # previous_response_id, and how many and how many MB (each with its conversation)
    # are kept at most: the oldest go first.
    responses_ttl_s: float = Field(default=30 * 24 * 3600, gt=0)
    responses_max_stored: int = Field(default=10_000, ge=1)
    responses_max_mb: int = Field(default=1024, ge=1)

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewaySection:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise PydanticCustomError("tls_pair", "tls_cert and tls_key go together: set both")
        return self

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite://", "postgresql://")):
            raise PydanticCustomError(
                "database_url", "database_url must start with sqlite:// or postgresql://"
            )
        return value

    @field_validator("listen", "metrics_listen", "ollama_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parse_host_port(value)
        return value.strip()

    @field_validator("api_keys")
    @classmethod
    def _no_blank_keys(cls, value: list[str]) -> list[str]:
        # A blank key would let an empty Authorization header through.
        if any(not key.strip() for key in value):
            raise PydanticCustomError("blank_key", "API keys must not be blank")
        return value


class EvictionSection(BaseModel):
    """``[eviction]``: which models make room when a load does not fit."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["lru", "priority"] = "lru"
    defrag_after_cycles: int = Field(default=50, ge=0)
    idle_unload_after_s: float = Field(default=0, ge=0)


class NeuronEndpoint(BaseModel):
    """One ``[[neurons]]`` entry: a node daemon the gateway drives."""

    model_config = ConfigDict(extra="forbid")

    name: str
    endpoint: str
    token: str | None = Field(default=None, repr=False)

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _NODE_NAME.match(value):
            raise PydanticCustomError(
                "node_name",
                "neuron name must start with a letter or digit and use only letters, "
                "digits and . _ - (at most 64 characters)",
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        try:
            parts.port  # noqa: B018 - reading it validates it
            port_ok = True
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise PydanticCustomError(
                "endpoint_url", "endpoint must be an http:// or https:// URL with a host"
            )
        # Without the trailing slash, routes can be appended with a plain "+".
        return value.strip().rstrip("/")


class GatewayConfig(BaseModel):
    """The whole of ``cortex.toml``; every section is optional."""

    model_config = ConfigDict(extra="forbid")

    gateway: GatewaySection = Field(default_factory=GatewaySection)
    eviction: EvictionSection = Field(default_factory=EvictionSection)
    neurons: list[NeuronEndpoint] = Field(default_factory=list)

    @field_validator("neurons")
    @classmethod
    def _unique_names(cls, neurons: list[NeuronEndpoint]) -> list[NeuronEndpoint]:
        _reject_duplicates("neuron name", "neurons", [n.name for n in neurons])
        return neurons


class ModelsConfig(BaseModel):
    """The whole of ``models.toml``: the catalogue of placement profiles."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec] = Field(default_factory=list)

    @field_validator("models")
    @classmethod
    def _unambiguous_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        _reject_duplicates("model id", "models", [m.id for m in models])
        # A name a client sends must resolve to one model, whichever table it hits.
        ids = {m.id: i for i, m in enumerate(models)}
        owner: dict[str, int] = {}
        for i, model in enumerate(models):
            for alias in model.aliases:
                other = ids.get(alias, owner.get(alias))
                if other is not None and other != i:
                    what = "model id" if alias in ids else "alias"
                    raise PydanticCustomError(
                        "ambiguous_alias",
                        f"alias {alias!r} of models[{i}] is also the {what} of models[{other}]",
                    )
                owner[alias] = i
        return models


def _reject_duplicates(what: str, table: str, names: list[str]) -> None:
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            raise PydanticCustomError(
                "duplicate", f"duplicate {what} {name!r} in {table}[{first[name]}] and {table}[{i}]"
            )
        first[name] = i


_Config = TypeVar("_Config", bound=BaseModel)


def load_gateway_config(path: Path) -> GatewayConfig:
    """Read and validate ``cortex.toml``; raise ``ConfigError`` on any problem."""
    return _load(path, GatewayConfig)


def load_models_config(path: Path) -> ModelsConfig:
    """Read and validate ``models.toml``; raise ``ConfigError`` on any problem."""
    return _load(path, ModelsConfig)


def _load(path: Path, model: type[_Config]) -> _Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_message(path, exc)) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(f"  {line}" for line in format_validation_error(exc))
        raise ConfigError(f"{path}: invalid configuration:\n{problems}") from None


def _toml_message(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    # Python 3.11 only puts the position in the message text; use the compiler
    # convention file:line:column so editors can jump to it.
    message = str(exc)
    found = _TOML_POSITION.search(message)
    if found is None:
        return f"{path}: invalid TOML: {message}"
    line, column = found.groups()
    return f"{path}:{line}:{column}: invalid TOML: {message[: found.start()]}"


def format_validation_error(exc: ValidationError) -> list[str]:
    """One ``dotted.path[2].field: message`` line per problem, without pydantic's URLs."""
    return [
        f"{_dotted(error['loc'])}: {_describe(error)}" for error in exc.errors(include_url=False)
    ]


def _dotted(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path.lstrip(".") or "(top level)"


def _describe(error: Any) -> str:
    kind, message, given = error["type"], error["msg"], error.get("input")
    if kind == "extra_forbidden":
        return "unknown key (misspelled?)"
    message = message.removeprefix("Value error, ")
    # The offending value helps when the message alone does not show it.
    scalar = isinstance(given, str | int | float | bool)
    if kind != "missing" and scalar and repr(given) not in message:
        message += f" (got {given!r})"
    return message
