"""Settings: one frozen dataclass, built once by the composition root.

Every field can be set by an environment variable (named in its metadata) and
by a ``canvashub serve`` option generated from the same metadata, so the two can
never drift apart. The metadata also holds each field's bounds, checked once in
``Settings.__post_init__`` (``SettingsError`` names the option and the variable),
and whether ``canvashub worker`` uses it. Nothing reads the environment at import time.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEMO_DIR = REPO_ROOT / "client-demo" / "dist"

LOG_LEVELS = ("debug", "info", "warning", "error")
ROLES = ("viewer", "editor", "owner")


class SettingsError(ValueError):
    """A setting out of its bounds, or not of its type; the message names the option and its variable."""


def option_name(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def _url_check(*schemes: str) -> Callable[[str], str | None]:
    """Empty (unset) or a URL with one of ``schemes`` and a host (``unix://`` needs a path instead)."""

    def check(value: str) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            names = [s + "://" for s in schemes]
            return f"must be a {', '.join(names[:-1])} or {names[-1]} URL, got {value!r}"
        if not (parts.path if parts.scheme == "unix" else parts.hostname):
            return f"must name a {'socket path' if parts.scheme == 'unix' else 'host'}, got {value!r}"
        return None

    return check


_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def _origins_check(value: str) -> str | None:
    """Comma-separated; each ``*`` or an origin ``scheme://host[:port]`` (a trailing ``/`` is ignored)."""
    for item in (item.strip() for item in value.split(",")):
        if not item or item == "*":
            continue
        parts: SplitResult | None = urlsplit(item)
        try:
            parts.port  # type: ignore[union-attr]  # noqa: B018 - raises on a port that is not a number in range
        except ValueError:
            parts = None
        if (
            parts is None
            or not _SCHEME.fullmatch(parts.scheme)
            or not parts.hostname
            or "@" in parts.netloc
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            return f"each entry must be * or an origin like https://app.example.com[:port], got {item!r}"
    return None


# Webhook events (docs/integrating.md, "Webhooks"). An endpoint's filter names some of these, or a
# family with ``.*`` (``canvas.*``), or ``*``.
WEBHOOK_EVENT_TYPES = (
    "canvas.created",
    "canvas.changed",
    "canvas.saved",
    "canvas.deleted",
    "generation.succeeded",
    "generation.failed",
    "session.started",
    "session.ended",
)
WEBHOOK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
WEBHOOK_SECRET_PREFIX = "whsec_"
WEBHOOK_SECRET_BYTES = (24, 64)  # the Standard Webhooks spec's bounds


@dataclass(frozen=True)
class WebhookEndpoint:
    """One configured receiver: ``events`` is its filter (``*``, ``family.*`` or exact types)."""

    name: str
    url: str
    secret: str  # whsec_<base64>
    events: tuple[str, ...] = ("*",)

    def wants(self, event_type: str) -> bool:
        for pattern in self.events:
            if pattern == "*" or pattern == event_type:
                return True
            if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
                return True
        return False


def parse_webhook_endpoints(text: str) -> tuple[WebhookEndpoint, ...]:
    """``CANVASHUB_WEBHOOKS``: a JSON list of ``{"name", "url", "secret", "events"?}`` objects (empty:
    no webhooks). Raises ``ValueError`` saying which entry is wrong and how."""
    if not text.strip():
        return ()
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"must be a JSON list of endpoints: {exc}") from None
    if not isinstance(items, list):
        raise ValueError('must be a JSON list of {"name", "url", "secret", "events"} objects')
    endpoints: list[WebhookEndpoint] = []
    for i, item in enumerate(items):
        where = f"endpoint {i}"
        if not isinstance(item, dict):
            raise ValueError(f'{where}: must be an object with "name", "url", "secret" and optional "events"')
        unknown = set(item) - {"name", "url", "secret", "events"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        name = item.get("name")
        if not isinstance(name, str) or not WEBHOOK_NAME.fullmatch(name):
            raise ValueError(f"{where}: name must be 1-64 characters from A-Z a-z 0-9 _ . -, got {name!r}")
        where = f"endpoint {name!r}"
        if any(e.name == name for e in endpoints):
            raise ValueError(f"{where}: the name is used twice")
        url = item.get("url")
        if not isinstance(url, str) or not url:
            raise ValueError(f"{where}: url is missing")
        problem = _url_check("http", "https")(url)
        if problem:
            raise ValueError(f"{where}: url {problem}")
        secret = item.get("secret")
        if not isinstance(secret, str) or not secret.startswith(WEBHOOK_SECRET_PREFIX):
            raise ValueError(f"{where}: secret must be a Standard Webhooks secret, whsec_ followed by base64")
        try:
            key = base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}: secret is not valid base64 after whsec_") from None
        low, high = WEBHOOK_SECRET_BYTES
        if not low <= len(key) <= high:
            raise ValueError(f"{where}: secret must decode to {low}-{high} bytes, got {len(key)}")
        events = item.get("events", ["*"])
        if isinstance(events, str):
            events = [events]
        if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
            raise ValueError(f"{where}: events must be a non-empty list of event types")
        families = {t.split(".")[0] + ".*" for t in WEBHOOK_EVENT_TYPES}
        for pattern in events:
            if pattern != "*" and pattern not in WEBHOOK_EVENT_TYPES and pattern not in families:
                raise ValueError(
                    f"{where}: unknown event {pattern!r}; one of {', '.join(WEBHOOK_EVENT_TYPES)}, "
                    f"{', '.join(sorted(families))} or *"
                )
        endpoints.append(WebhookEndpoint(name, url, secret, tuple(events)))
    return tuple(endpoints)


def _webhooks_check(value: str) -> str | None:
    try:
        parse_webhook_endpoints(value)
    except ValueError as exc:
        return str(exc)
    return None


def _not_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _opt(
    default: Any,
    env: str,
    help: str,
    *,
    low: float | None = None,
    above: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] | None = None,
    check: Callable[[Any], str | None] | None = None,
    worker: bool = False,
) -> Any:
    """A setting: ``low``/``high`` inclusive bounds, ``above`` an exclusive lower bound, ``choices`` the
    allowed strings, ``check`` any other rule (returns the problem or None); ``worker``: read by
    ``canvashub worker`` too."""
    return field(
        default=default,
        metadata={
            "env": env,
            "help": help,
            "low": low,
            "above": above,
            "high": high,
            "choices": choices,
            "check": check,
            "worker": worker,
        },
    )


@dataclass(frozen=True)
class Settings:
    host: str = _opt("127.0.0.1", "CANVASHUB_HOST", "interface to listen on", check=_not_empty)
    port: int = _opt(8000, "PORT", "TCP port to listen on (0: any free port)", low=0, high=65535)
    log_level: str = _opt(
        "info", "CANVASHUB_LOG_LEVEL", "debug, info, warning or error", choices=LOG_LEVELS, worker=True
    )
    demo_dir: str = _opt(str(DEFAULT_DEMO_DIR), "CANVASHUB_DEMO_DIR", "directory of the demo page served at /")
    max_frame_bytes: int = _opt(
        8 * 1024 * 1024, "CANVASHUB_MAX_FRAME_BYTES", "largest WebSocket frame accepted (close 1009 above)", low=1024
    )
    max_awareness_state_bytes: int = _opt(
        8192, "CANVASHUB_MAX_AWARENESS_STATE_BYTES", "largest awareness JSON state per client", low=64
    )
    max_awareness_ids_per_connection: int = _opt(
        8, "CANVASHUB_MAX_AWARENESS_IDS", "awareness client ids one connection may own", low=1
    )
    # The slow-client rule is bytes and time (docs/operations.md, "Slow clients"): a fast reader may have
    # thousands of small frames in flight. The frame count is only a safety bound on per-frame overhead.
    send_queue_bytes: int = _opt(
        32 * 1024 * 1024,
        "CANVASHUB_SEND_QUEUE_BYTES",
        "bytes queued for one client before it is disconnected (1013)",
        low=1024,
    )
    send_stall_seconds: float = _opt(
        10.0,
        "CANVASHUB_SEND_STALL_SECONDS",
        "seconds a client's queue may wait with no write to it completing before it is disconnected (1013)",
        low=0.1,
        high=3600,
    )
    send_queue_messages: int = _opt(
        262_144,
        "CANVASHUB_SEND_QUEUE_MESSAGES",
        "safety bound on frames queued for one client (per-frame memory overhead), far above any fast reader's",
        low=1024,
    )
    room_grace_seconds: float = _opt(5.0, "CANVASHUB_ROOM_GRACE_SECONDS", "seconds an empty room stays loaded", low=0)
    keepalive_seconds: float = _opt(
        10.0,
        "CANVASHUB_KEEPALIVE_SECONDS",
        "send a no-op frame to a client idle this long (stock clients reconnect after 30 s of silence)",
        above=0,
    )
    ws_ping_interval: float = _opt(20.0, "CANVASHUB_WS_PING_INTERVAL", "seconds between WebSocket pings", above=0)
    ws_ping_timeout: float = _opt(
        20.0, "CANVASHUB_WS_PING_TIMEOUT", "seconds to wait for a pong before dropping the socket", above=0
    )
    per_message_deflate: bool = _opt(
        False, "CANVASHUB_PER_MESSAGE_DEFLATE", "negotiate permessage-deflate (costs CPU, see docs/benchmarks.md)"
    )
    ws_transport: str = _opt(
        "native",
        "CANVASHUB_WS_TRANSPORT",
        "canvashub serve's WebSocket transport for /ws: native (its own, lean) or asgi (the portable ASGI "
        "endpoint under uvicorn's websockets-sansio); asgi is used whenever per-message-deflate is on",
        choices=("native", "asgi"),
    )
    shutdown_timeout: float = _opt(
        10.0, "CANVASHUB_SHUTDOWN_TIMEOUT", "seconds to flush clients and pending writes on shutdown", low=0
    )
    startup_timeout: float = _opt(
        30.0,
        "CANVASHUB_STARTUP_TIMEOUT",
        "seconds to keep retrying an unreachable database at start-up before giving up",
        above=0,
        worker=True,
    )
    # -- storage ---------------------------------------------------------------
    database_url: str = _opt(
        "",
        "DATABASE_URL",
        "PostgreSQL DSN; unset: SQLite file under the data directory",
        check=_url_check("postgres", "postgresql"),
        worker=True,
    )
    data_dir: str = _opt(
        ".canvashub-data",
        "CANVASHUB_DATA_DIR",
        "directory of the embedded SQLite store (created if missing)",
        check=_not_empty,
        worker=True,
    )
    db_pool_size: int = _opt(
        10,
        "CANVASHUB_DB_POOL_SIZE",
        "PostgreSQL connections per process (processes x this must fit max_connections)",
        low=1,
        worker=True,
    )
    db_acquire_timeout: float = _opt(
        5.0,
        "CANVASHUB_DB_ACQUIRE_TIMEOUT",
        "seconds to wait for a pooled connection (and to connect)",
        above=0,
        worker=True,
    )
    store_timeout: float = _opt(
        10.0,
        "CANVASHUB_STORE_TIMEOUT",
        "seconds before one storage call is abandoned (and retried, for appends)",
        above=0,
        worker=True,
    )
    store_slow_notice: float = _opt(
        1.0,
        "CANVASHUB_STORE_SLOW_NOTICE",
        "seconds an append may take before its writers get a `retrying` save event (it goes on until the store timeout)",
        above=0,
    )
    commit_interval: float = _opt(
        0.01, "CANVASHUB_COMMIT_INTERVAL", "group commit: seconds to gather updates before one append round-trip", low=0
    )
    commit_max_updates: int = _opt(
        512, "CANVASHUB_COMMIT_MAX_UPDATES", "group commit: a batch this large is written at once", low=1
    )
    backlog_max_bytes: int = _opt(
        64 * 1024 * 1024,
        "CANVASHUB_BACKLOG_MAX_BYTES",
        "updates not yet durable, per process; past it new writes are refused (close 1013)",
        low=1024,
    )
    retry_max_delay: float = _opt(
        5.0, "CANVASHUB_RETRY_MAX_DELAY", "cap of the exponential backoff between append retries, seconds", above=0
    )
    compact_every_updates: int = _opt(
        1000, "CANVASHUB_COMPACT_EVERY_UPDATES", "compact a canvas after this many logged updates", low=1
    )
    compact_interval: float = _opt(
        60.0, "CANVASHUB_COMPACT_INTERVAL", "also compact canvases with any logged updates this often, seconds", above=0
    )
    keep_versions: int = _opt(
        20, "CANVASHUB_KEEP_VERSIONS", "snapshot versions kept per canvas for history and restore", low=1
    )
    replay_workers: int = _opt(
        1,
        "CANVASHUB_REPLAY_WORKERS",
        "worker processes that replay stored canvases (loads, compactions, exports) off the event loop; "
        "0 replays on the loop",
        low=0,
        high=8,
    )
    replay_timeout: float = _opt(
        60.0, "CANVASHUB_REPLAY_TIMEOUT", "give up one replay (queueing included) after this many seconds", above=0
    )
    slow_query_seconds: float = _opt(
        0.5, "CANVASHUB_SLOW_QUERY_SECONDS", "log storage calls slower than this as warnings", low=0
    )
    # -- generations (background jobs) -----------------------------------------
    job_workers: int = _opt(
        2,
        "CANVASHUB_JOB_WORKERS",
        "generation jobs run at once inside the server process (0: only `canvashub worker` runs them); for `canvashub worker`, its concurrency",
        low=0,
        worker=True,
    )
    job_lease_seconds: float = _opt(
        15.0,
        "CANVASHUB_JOB_LEASE_SECONDS",
        "a running job whose worker sends no heartbeat this long is reclaimed",
        above=0,
        worker=True,
    )
    job_max_attempts: int = _opt(
        3, "CANVASHUB_JOB_MAX_ATTEMPTS", "tries per job (retryable failures and lost workers) before it fails", low=1
    )
    job_retry_base: float = _opt(
        1.0,
        "CANVASHUB_JOB_RETRY_BASE",
        "first retry delay of a failed job, seconds (doubles per attempt, jittered)",
        above=0,
        worker=True,
    )
    job_retry_max: float = _opt(
        60.0, "CANVASHUB_JOB_RETRY_MAX", "cap of the job retry delay, seconds", above=0, worker=True
    )
    job_poll_interval: float = _opt(
        0.5, "CANVASHUB_JOB_POLL_INTERVAL", "how often idle workers look for queued jobs, seconds", above=0, worker=True
    )
    job_watch_interval: float = _opt(
        0.2,
        "CANVASHUB_JOB_WATCH_INTERVAL",
        "how often the server follows job changes for events and results, seconds",
        above=0,
    )
    pattern_step_delay: float = _opt(
        0.25,
        "CANVASHUB_PATTERN_STEP_DELAY",
        "the built-in `pattern` generator's delay per step (8 steps), seconds",
        low=0,
        worker=True,
    )
    generator_http_url: str = _opt(
        "",
        "CANVASHUB_GENERATOR_HTTP_URL",
        "base URL of the external generation service (enables the `http` generator)",
        check=_url_check("http", "https"),
        worker=True,
    )
    generator_http_timeout: float = _opt(
        30.0,
        "CANVASHUB_GENERATOR_HTTP_TIMEOUT",
        "timeout of one request to the external generation service, seconds",
        above=0,
        worker=True,
    )
    http_durable_timeout: float = _opt(
        5.0,
        "CANVASHUB_HTTP_DURABLE_TIMEOUT",
        "HTTP writes wait this long for the commit (202 if not yet durable)",
        low=0,
    )

    # -- extensions and webhooks (see docs/integrating.md) ----------------------------
    extensions: str = _opt(
        "",
        "CANVASHUB_EXTENSIONS",
        "extension factories to load, package.module:factory,... (docs/integrating.md; unset: none)",
        worker=True,
    )
    hook_timeout: float = _opt(
        5.0,
        "CANVASHUB_HOOK_TIMEOUT",
        "seconds an extension hook may take before it is abandoned",
        above=0,
        worker=True,
    )
    hook_queue: int = _opt(
        10000,
        "CANVASHUB_HOOK_QUEUE",
        "notifications queued per extension before new ones are dropped",
        low=1,
        worker=True,
    )
    webhooks: str = _opt(
        "",
        "CANVASHUB_WEBHOOKS",
        'webhook endpoints, a JSON list of {"name", "url", "secret": "whsec_...", "events": ["canvas.*", ...]} (unset: none)',
        check=_webhooks_check,
        worker=True,
    )
    webhook_max_attempts: int = _opt(
        12, "CANVASHUB_WEBHOOK_MAX_ATTEMPTS", "attempts per delivery before it is dead-lettered", low=1
    )
    webhook_timeout: float = _opt(
        10.0, "CANVASHUB_WEBHOOK_TIMEOUT", "timeout of one delivery attempt (connect to response), seconds", above=0
    )
    webhook_retry_base: float = _opt(
        2.0,
        "CANVASHUB_WEBHOOK_RETRY_BASE",
        "retry delay cap after the first failed attempt, seconds (doubles per attempt; full jitter)",
        above=0,
    )
    webhook_retry_max: float = _opt(3600.0, "CANVASHUB_WEBHOOK_RETRY_MAX", "largest retry delay cap, seconds", above=0)
    webhook_concurrency: int = _opt(
        8, "CANVASHUB_WEBHOOK_CONCURRENCY", "deliveries in flight at once in this process", low=1
    )
    webhook_poll_interval: float = _opt(
        1.0,
        "CANVASHUB_WEBHOOK_POLL_INTERVAL",
        "how often an idle process looks for due deliveries (events added here wake it at once), seconds",
        above=0,
    )
    webhook_retention: float = _opt(
        7 * 86400.0,
        "CANVASHUB_WEBHOOK_RETENTION",
        "delivered and dead deliveries are deleted this many seconds after their last attempt",
        above=0,
    )
    webhook_change_debounce: float = _opt(
        2.0,
        "CANVASHUB_WEBHOOK_CHANGE_DEBOUNCE",
        "canvas.changed / canvas.saved are sent this long after a canvas's last change, seconds",
        above=0,
    )
    webhook_change_max_wait: float = _opt(
        10.0,
        "CANVASHUB_WEBHOOK_CHANGE_MAX_WAIT",
        "... and at most this long after its first unsent change, seconds",
        above=0,
    )

    # -- scale-out (see docs/operations.md) ---------------------------------------
    redis_url: str = _opt(
        "",
        "REDIS_URL",
        "Redis URL: processes holding the same canvas relay changes and presence through it (unset: one process)",
        check=_url_check("redis", "rediss", "unix"),
    )
    redis_prefix: str = _opt("canvashub:", "CANVASHUB_REDIS_PREFIX", "prefix of canvashub's Redis channel names")
    # -- security (see docs/security.md) ----------------------------------------
    auth_secret: str = _opt(
        "",
        "CANVASHUB_AUTH_SECRET",
        "HS256 secret for access tokens (>= 32 bytes); unset with no public key: open development mode",
    )
    auth_public_key: str = _opt(
        "", "CANVASHUB_AUTH_PUBLIC_KEY", "PEM public key (or path to one) for RS256/ES256 access tokens"
    )
    open: bool = _opt(
        False,
        "CANVASHUB_OPEN",
        "serve without access control on a non-loopback address (no secret or public key set): anyone who can reach the port may read, edit and delete every canvas",
    )
    role_to_delete: str = _opt(
        "owner",
        "CANVASHUB_ROLE_TO_DELETE",
        "least role that may delete a canvas (viewer, editor or owner)",
        choices=ROLES,
    )
    role_to_restore: str = _opt(
        "owner", "CANVASHUB_ROLE_TO_RESTORE", "least role that may restore a version", choices=ROLES
    )
    role_to_generate: str = _opt(
        "owner", "CANVASHUB_ROLE_TO_GENERATE", "least role that may start or cancel a generation", choices=ROLES
    )
    viewer_awareness: bool = _opt(False, "CANVASHUB_VIEWER_AWARENESS", "relay viewers' presence (cursors) to others")
    allowed_origins: str = _opt(
        "",
        "CANVASHUB_ALLOWED_ORIGINS",
        "comma-separated browser origins allowed besides the server's own (WebSocket Origin check and CORS); * allows any",
        check=_origins_check,
    )
    rate_messages_per_second: float = _opt(
        200.0,
        "CANVASHUB_RATE_MESSAGES_PER_SECOND",
        "sustained frames per second per connection (close 1008 above; 0: off)",
        low=0,
    )
    rate_messages_burst: int = _opt(
        2000, "CANVASHUB_RATE_MESSAGES_BURST", "frames a connection may send at once before the rate applies", low=1
    )
    rate_bytes_per_second: int = _opt(
        4 * 1024 * 1024,
        "CANVASHUB_RATE_BYTES_PER_SECOND",
        "sustained bytes per second per connection (close 1008 above; 0: off)",
        low=0,
    )
    rate_bytes_burst: int = _opt(
        16 * 1024 * 1024,
        "CANVASHUB_RATE_BYTES_BURST",
        "bytes a connection may send at once (at least the frame cap)",
        low=1,
    )
    upgrade_rate_per_ip: float = _opt(
        100.0,
        "CANVASHUB_UPGRADE_RATE_PER_IP",
        "new WebSockets per second per client IP after the burst; more wait their turn (up to 10 s, then 503), never refused outright (0: off)",
        low=0,
    )
    upgrade_burst_per_ip: int = _opt(
        200,
        "CANVASHUB_UPGRADE_BURST_PER_IP",
        "new WebSockets one client IP may open at once before pacing applies",
        low=1,
    )
    max_connections_per_ip: int = _opt(
        0, "CANVASHUB_MAX_CONNECTIONS_PER_IP", "open WebSockets per client IP (403 at upgrade above; 0: off)", low=0
    )
    max_connections_per_canvas: int = _opt(
        1000,
        "CANVASHUB_MAX_CONNECTIONS_PER_CANVAS",
        "open WebSockets per canvas on this process (close 1013 above; 0: off)",
        low=0,
    )
    max_document_bytes: int = _opt(
        64 * 1024 * 1024,
        "CANVASHUB_MAX_DOCUMENT_BYTES",
        "encoded size a canvas may grow to; a write past it is refused (close 4413, HTTP 413; 0: off)",
        low=0,
    )
    preauth_timeout: float = _opt(
        10.0,
        "CANVASHUB_PREAUTH_TIMEOUT",
        "seconds a new TCP connection has to send its request headers (and token); 0: off",
        low=0,
    )
    max_json_body_bytes: int = _opt(
        1024 * 1024, "CANVASHUB_MAX_JSON_BODY_BYTES", "largest JSON request body (413 above)", low=1
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            problem = field_problem(f, getattr(self, f.name))
            if problem is not None:
                raise SettingsError(f"{option_name(f)} ({f.metadata['env']}): {problem}")

    @property
    def exposed_without_access_control(self) -> bool:
        """Listening beyond this machine with no secret or public key, and not explicitly ``open``
        (``canvashub serve`` refuses to start so; an app embedded elsewhere does not listen itself)."""
        return not (self.open or self.auth_secret or self.auth_public_key or is_loopback(self.host))

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        options: Mapping[str, str | None] | None = None,
        names: Collection[str] | None = None,
    ) -> Settings:
        """Build settings from environment variables, then command-line ``options`` (raw strings by
        field name; None: not given). ``names``: only these fields are read, the rest keep their defaults."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if names is not None and f.name not in names:
                continue
            raw = (options or {}).get(f.name)
            if raw is None:
                raw = environ.get(f.metadata["env"]) or None  # set but empty: unset
            if raw is not None:
                values[f.name] = parse_value(f, raw)
        return cls(**values)


def worker_field_names() -> frozenset[str]:
    """The settings ``canvashub worker`` uses (and accepts)."""
    return frozenset(f.name for f in dataclasses.fields(Settings) if f.metadata["worker"])


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: may resolve to anything


def _kind(f: dataclasses.Field) -> type:
    return f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool, "str": str}[f.type]


def parse_value(f: dataclasses.Field, raw: str) -> Any:
    kind = _kind(f)
    where = f"{option_name(f)} ({f.metadata['env']})"
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{where}: expected true or false, got {raw!r}")
    if kind is str:
        return raw.strip().lower() if f.metadata["choices"] else raw
    try:
        return kind(raw)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise SettingsError(f"{where}: expected {expected}, got {raw!r}") from None


def field_problem(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with ``value`` for field ``f`` (its type, then the bounds in its metadata), or None."""
    kind, meta = _kind(f), f.metadata
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"expected a finite number, got {value!r}"
    elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        return f"expected {kind.__name__}, got {value!r}"
    if meta["choices"] is not None and value not in meta["choices"]:
        return f"must be one of {', '.join(meta['choices'])}, got {value!r}"
    if meta["low"] is not None and value < meta["low"]:
        return f"must be at least {meta['low']:g}, got {value!r}"
    if meta["above"] is not None and value <= meta["above"]:
        return f"must be greater than {meta['above']:g}, got {value!r}"
    if meta["high"] is not None and value > meta["high"]:
        return f"must be at most {meta['high']:g}, got {value!r}"
    return meta["check"](value) if meta["check"] is not None else None
