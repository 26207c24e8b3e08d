"""Settings: one frozen dataclass, built once by the composition root.

Every field can be set by an environment variable (named in its metadata) and
by a ``canvashub serve`` option generated from the same metadata, so the two can
never drift apart. Nothing reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEMO_DIR = REPO_ROOT / "client-demo" / "dist"


def _opt(default: Any, env: str, help: str) -> Any:
    return field(default=default, metadata={"env": env, "help": help})


@dataclass(frozen=True)
class Settings:
    host: str = _opt("127.0.0.1", "CANVASHUB_HOST", "interface to listen on")
    port: int = _opt(8000, "PORT", "TCP port to listen on")
    log_level: str = _opt("info", "CANVASHUB_LOG_LEVEL", "debug, info, warning or error")
    demo_dir: str = _opt(str(DEFAULT_DEMO_DIR), "CANVASHUB_DEMO_DIR", "directory of the demo page served at /")
    max_frame_bytes: int = _opt(8 * 1024 * 1024, "CANVASHUB_MAX_FRAME_BYTES", "largest WebSocket frame accepted (close 1009 above)")
    max_awareness_state_bytes: int = _opt(8192, "CANVASHUB_MAX_AWARENESS_STATE_BYTES", "largest awareness JSON state per client")
    max_awareness_ids_per_connection: int = _opt(8, "CANVASHUB_MAX_AWARENESS_IDS", "awareness client ids one connection may own")
    send_queue_messages: int = _opt(2048, "CANVASHUB_SEND_QUEUE_MESSAGES", "frames queued for one client before it is disconnected")
    send_queue_bytes: int = _opt(32 * 1024 * 1024, "CANVASHUB_SEND_QUEUE_BYTES", "bytes queued for one client before it is disconnected")
    room_grace_seconds: float = _opt(5.0, "CANVASHUB_ROOM_GRACE_SECONDS", "seconds an empty room stays loaded")
    keepalive_seconds: float = _opt(10.0, "CANVASHUB_KEEPALIVE_SECONDS", "send a no-op frame to a client idle this long (stock clients reconnect after 30 s of silence)")
    ws_ping_interval: float = _opt(20.0, "CANVASHUB_WS_PING_INTERVAL", "seconds between WebSocket pings")
    ws_ping_timeout: float = _opt(20.0, "CANVASHUB_WS_PING_TIMEOUT", "seconds to wait for a pong before dropping the socket")
    per_message_deflate: bool = _opt(False, "CANVASHUB_PER_MESSAGE_DEFLATE", "negotiate permessage-deflate (costs CPU, see docs/benchmarks.md)")
    shutdown_timeout: float = _opt(10.0, "CANVASHUB_SHUTDOWN_TIMEOUT", "seconds to flush clients and pending writes on shutdown")
    # -- storage ---------------------------------------------------------------
    database_url: str = _opt("", "DATABASE_URL", "PostgreSQL DSN; unset: SQLite file under the data directory")
    data_dir: str = _opt(".canvashub-data", "CANVASHUB_DATA_DIR", "directory of the embedded SQLite store (created if missing)")
    db_pool_size: int = _opt(10, "CANVASHUB_DB_POOL_SIZE", "PostgreSQL connections per process (processes x this must fit max_connections)")
    db_acquire_timeout: float = _opt(5.0, "CANVASHUB_DB_ACQUIRE_TIMEOUT", "seconds to wait for a pooled connection (and to connect)")
    store_timeout: float = _opt(10.0, "CANVASHUB_STORE_TIMEOUT", "seconds before one storage call is abandoned (and retried, for appends)")
    store_slow_notice: float = _opt(1.0, "CANVASHUB_STORE_SLOW_NOTICE", "seconds an append may take before its writers get a `retrying` save event (it goes on until the store timeout)")
    commit_interval: float = _opt(0.01, "CANVASHUB_COMMIT_INTERVAL", "group commit: seconds to gather updates before one append round-trip")
    commit_max_updates: int = _opt(512, "CANVASHUB_COMMIT_MAX_UPDATES", "group commit: a batch this large is written at once")
    backlog_max_bytes: int = _opt(64 * 1024 * 1024, "CANVASHUB_BACKLOG_MAX_BYTES", "updates not yet durable, per process; past it new writes are refused (close 1013)")
    retry_max_delay: float = _opt(5.0, "CANVASHUB_RETRY_MAX_DELAY", "cap of the exponential backoff between append retries, seconds")
    compact_every_updates: int = _opt(1000, "CANVASHUB_COMPACT_EVERY_UPDATES", "compact a canvas after this many logged updates")
    compact_interval: float = _opt(60.0, "CANVASHUB_COMPACT_INTERVAL", "also compact canvases with any logged updates this often, seconds")
    keep_versions: int = _opt(20, "CANVASHUB_KEEP_VERSIONS", "snapshot versions kept per canvas for history and restore")
    slow_query_seconds: float = _opt(0.5, "CANVASHUB_SLOW_QUERY_SECONDS", "log storage calls slower than this as warnings")
    # -- generations (background jobs) -----------------------------------------
    job_workers: int = _opt(2, "CANVASHUB_JOB_WORKERS", "generation jobs run at once inside the server process (0: only `canvashub worker` runs them)")
    job_lease_seconds: float = _opt(15.0, "CANVASHUB_JOB_LEASE_SECONDS", "a running job whose worker sends no heartbeat this long is reclaimed")
    job_max_attempts: int = _opt(3, "CANVASHUB_JOB_MAX_ATTEMPTS", "tries per job (retryable failures and lost workers) before it fails")
    job_retry_base: float = _opt(1.0, "CANVASHUB_JOB_RETRY_BASE", "first retry delay of a failed job, seconds (doubles per attempt, jittered)")
    job_retry_max: float = _opt(60.0, "CANVASHUB_JOB_RETRY_MAX", "cap of the job retry delay, seconds")
    job_poll_interval: float = _opt(0.5, "CANVASHUB_JOB_POLL_INTERVAL", "how often idle workers look for queued jobs, seconds")
    job_watch_interval: float = _opt(0.2, "CANVASHUB_JOB_WATCH_INTERVAL", "how often the server follows job changes for events and results, seconds")
    pattern_step_delay: float = _opt(0.25, "CANVASHUB_PATTERN_STEP_DELAY", "the built-in `pattern` generator's delay per step (8 steps), seconds")
    generator_http_url: str = _opt("", "CANVASHUB_GENERATOR_HTTP_URL", "base URL of the external generation service (enables the `http` generator)")
    generator_http_timeout: float = _opt(30.0, "CANVASHUB_GENERATOR_HTTP_TIMEOUT", "timeout of one request to the external generation service, seconds")
    http_durable_timeout: float = _opt(5.0, "CANVASHUB_HTTP_DURABLE_TIMEOUT", "HTTP writes wait this long for the commit (202 if not yet durable)")

    # -- scale-out (see docs/operations.md) ---------------------------------------
    redis_url: str = _opt("", "REDIS_URL", "Redis URL: processes holding the same canvas relay changes and presence through it (unset: one process)")
    redis_prefix: str = _opt("canvashub:", "CANVASHUB_REDIS_PREFIX", "prefix of canvashub's Redis channel names")
    # -- security (see docs/security.md) ----------------------------------------
    auth_secret: str = _opt("", "CANVASHUB_AUTH_SECRET", "HS256 secret for access tokens (>= 32 bytes); unset with no public key: open development mode")
    auth_public_key: str = _opt("", "CANVASHUB_AUTH_PUBLIC_KEY", "PEM public key (or path to one) for RS256/ES256 access tokens")
    role_to_delete: str = _opt("owner", "CANVASHUB_ROLE_TO_DELETE", "least role that may delete a canvas (viewer, editor or owner)")
    role_to_restore: str = _opt("owner", "CANVASHUB_ROLE_TO_RESTORE", "least role that may restore a version")
    role_to_generate: str = _opt("owner", "CANVASHUB_ROLE_TO_GENERATE", "least role that may start or cancel a generation")
    viewer_awareness: bool = _opt(False, "CANVASHUB_VIEWER_AWARENESS", "relay viewers' presence (cursors) to others")
    allowed_origins: str = _opt("", "CANVASHUB_ALLOWED_ORIGINS", "comma-separated browser origins allowed besides the server's own (WebSocket Origin check and CORS); * allows any")
    rate_messages_per_second: float = _opt(200.0, "CANVASHUB_RATE_MESSAGES_PER_SECOND", "sustained frames per second per connection (close 1008 above; 0: off)")
    rate_messages_burst: int = _opt(2000, "CANVASHUB_RATE_MESSAGES_BURST", "frames a connection may send at once before the rate applies")
    rate_bytes_per_second: int = _opt(4 * 1024 * 1024, "CANVASHUB_RATE_BYTES_PER_SECOND", "sustained bytes per second per connection (close 1008 above; 0: off)")
    rate_bytes_burst: int = _opt(16 * 1024 * 1024, "CANVASHUB_RATE_BYTES_BURST", "bytes a connection may send at once (at least the frame cap)")
    upgrade_rate_per_ip: float = _opt(100.0, "CANVASHUB_UPGRADE_RATE_PER_IP", "new WebSockets per second per client IP after the burst; more wait their turn (up to 10 s, then 503), never refused outright (0: off)")
    upgrade_burst_per_ip: int = _opt(200, "CANVASHUB_UPGRADE_BURST_PER_IP", "new WebSockets one client IP may open at once before pacing applies")
    max_connections_per_ip: int = _opt(0, "CANVASHUB_MAX_CONNECTIONS_PER_IP", "open WebSockets per client IP (403 at upgrade above; 0: off)")
    max_connections_per_canvas: int = _opt(1000, "CANVASHUB_MAX_CONNECTIONS_PER_CANVAS", "open WebSockets per canvas on this process (close 1013 above; 0: off)")
    max_document_bytes: int = _opt(64 * 1024 * 1024, "CANVASHUB_MAX_DOCUMENT_BYTES", "encoded size a canvas may grow to; a write past it is refused (close 4413, HTTP 413)")
    preauth_timeout: float = _opt(10.0, "CANVASHUB_PREAUTH_TIMEOUT", "seconds a new TCP connection has to send its request headers (and token)")
    max_json_body_bytes: int = _opt(1024 * 1024, "CANVASHUB_MAX_JSON_BODY_BYTES", "largest JSON request body (413 above)")

    def __post_init__(self) -> None:
        if not 0 < self.store_slow_notice < float("inf"):
            raise ValueError(f"CANVASHUB_STORE_SLOW_NOTICE: expected a number of seconds > 0, "
                             f"got {self.store_slow_notice!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from environment variables, then explicit overrides."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = parse_value(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def parse_value(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool, "str": str}[f.type]
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{f.metadata['env']}: expected a boolean, got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{f.metadata['env']}: expected {kind.__name__}, got {raw!r}") from None
