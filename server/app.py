"""The composition root: builds the whole app from ``Settings``, starts and stops its parts in order.
Nothing else constructs or wires parts together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from importlib.metadata import version
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from canvashub.storage.base import Job, Store
from canvashub.storage.postgres import PostgresStore
from canvashub.storage.sqlite import SQLiteStore

from . import logs, openapi
from .admin import AdminApi
from .auth import Authenticator
from .cluster import Cluster
from .compaction import Compactor
from .connection import WebSocketEndpoint
from .directory import Directory
from .extensions import ChangeCollector, Extensions, GenerationEvent, SavedEvent, load_extensions
from .generators import build_generators
from .health import HealthMonitor
from .hocuspocus import HocuspocusEndpoint
from .http_api import HttpApi, OperationsApi, RequestMetrics, http_exception_response, route
from .hub import Hub
from .jobs import JobService, Worker
from .limits import ConnectionCounter, OriginPolicy, UpgradePacer, offences
from .metrics import Metrics
from .openapi import ApiDocs
from .persistence import Persister
from .pubsub import MemoryPubSub, PubSub, RedisPubSub
from .replayer import Replayer
from .rooms import Room
from .settings import Settings, parse_webhook_endpoints
from .startup import open_store
from .webhook_bridge import WebhookBridge
from .webhooks import WebhookService
from .wsnative import NativeSockets


def make_store(settings: Settings) -> tuple[Store, str]:
    """PostgreSQL when ``database_url`` is set, else the embedded SQLite file under ``data_dir``."""
    if settings.database_url:
        return PostgresStore(
            settings.database_url, pool_size=settings.db_pool_size, acquire_timeout=settings.db_acquire_timeout
        ), "postgres"
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(str(data_dir / "canvashub.sqlite3")), "sqlite"


def make_authenticator(settings: Settings) -> Authenticator:
    """Tokens are required once a secret or public key is set; otherwise open mode, announced loudly."""
    try:
        auth = Authenticator(
            secret=settings.auth_secret,
            public_key=settings.auth_public_key,
            action_roles={
                "delete": settings.role_to_delete,
                "restore": settings.role_to_restore,
                "generate": settings.role_to_generate,
            },
            leeway=5.0,
        )
    except OSError as exc:
        raise ValueError(f"CANVASHUB_AUTH_PUBLIC_KEY: cannot read the key file: {exc}") from None
    if auth.open:
        logs.log(
            logging.WARNING,
            "open_mode",
            message="NO ACCESS CONTROL: CANVASHUB_AUTH_SECRET is not set, so anyone who can reach this "
            "server may read, edit and delete every canvas. Fine for development; set a secret "
            "(see docs/security.md) before exposing it.",
        )
    return auth


def make_pubsub(settings: Settings) -> PubSub:
    """Redis when ``redis_url`` is set; otherwise in-process (a single process has no peers)."""
    if settings.redis_url:
        return RedisPubSub(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryPubSub()


def create_app(settings: Settings, pubsub: PubSub | None = None, extensions: Sequence[object] = ()) -> Starlette:
    """Build every part and wire each to the narrow interface it uses. ``pubsub``: tests pass in-process
    nodes sharing one ``MemoryBroker`` to run several servers as a cluster in one process. ``extensions``:
    an embedding application's hook objects (server/extensions.py), after those of ``CANVASHUB_EXTENSIONS``."""
    logs.configure(settings.log_level)
    auth = make_authenticator(settings)
    store, backend = make_store(settings)
    pubsub = pubsub if pubsub is not None else make_pubsub(settings)
    metrics = Metrics()
    loaded_extensions = [*load_extensions(settings.extensions), *(extensions or [])]  # a bad spec: ValueError
    origins = OriginPolicy(settings.allowed_origins)
    health = HealthMonitor(store.health)  # what /readyz reports, without waiting on the store
    # Replays proportional to a canvas's history run here, never on the loop (pycrdt holds the GIL).
    replayer = Replayer(settings.replay_workers, settings.replay_timeout)
    compactor = Compactor(
        store,
        replayer,
        metrics,
        every_updates=settings.compact_every_updates,
        interval=settings.compact_interval,
        keep_versions=settings.keep_versions,
        timeout=settings.store_timeout,
        slow_seconds=settings.slow_query_seconds,
        on_compacted=lambda canvas_id, version, merged: hub.compacted(canvas_id, version, merged),
    )
    persister = Persister(
        store,
        metrics,
        interval=settings.commit_interval,
        max_updates=settings.commit_max_updates,
        max_backlog_bytes=settings.backlog_max_bytes,
        timeout=settings.store_timeout,
        retry_max_delay=settings.retry_max_delay,
        slow_seconds=settings.slow_query_seconds,
        slow_notice=settings.store_slow_notice,
        compactor=compactor,
    )
    webhooks = make_webhooks(settings, store, metrics)
    # Webhooks for what hooks report (canvas.created/changed/saved, session.*) come from a built-in
    # extension; canvas.deleted and generation.* are written with what they report (same transaction).
    bridge = None
    if webhooks.enabled:
        bridge = WebhookBridge(
            webhooks, wait=settings.webhook_change_debounce, max_wait=settings.webhook_change_max_wait
        )
        loaded_extensions.append(bridge)
    hooks = make_extensions(settings, metrics, loaded_extensions)
    changes = ChangeCollector(hooks, wait=settings.webhook_change_debounce, max_wait=settings.webhook_change_max_wait)
    if hooks.has("saved"):
        persister.on_saved = lambda canvas_id, seq, count: hooks.notify("saved", SavedEvent(canvas_id, seq, count))
    rooms: dict[str, Room] = {}  # the loaded canvases: the hub's registry fills it, the cluster reads it
    cluster = Cluster(
        pubsub,
        rooms,
        is_loading=lambda canvas_id: hub.registry.is_loading(canvas_id),
        on_deleted=lambda canvas_id: hub.drop_deleted(canvas_id),
    )
    hub = Hub(
        settings,
        store,
        persister,
        compactor,
        cluster,
        metrics,
        replayer,
        rooms,
        seed=hooks.load if hooks.has("load") else None,
        changes=changes,
    )
    persister.on_committed = cluster.committed
    persister.on_durable = hub.stored
    persister.on_retrying = lambda canvas_id: hub.stored(canvas_id, None)
    generators = build_generators(
        settings.pattern_step_delay, settings.generator_http_url or None, settings.generator_http_timeout
    )

    jobs = JobService(
        hub,
        store,
        generators,
        workers=settings.job_workers,
        lease_seconds=settings.job_lease_seconds,
        poll_interval=settings.job_poll_interval,
        watch_interval=settings.job_watch_interval,
        max_attempts=settings.job_max_attempts,
        retry_base=settings.job_retry_base,
        retry_max=settings.job_retry_max,
        store_timeout=settings.store_timeout,
        webhooks=webhooks,
        on_state=job_listener(metrics, hooks),
    )
    hub.job_events = jobs.watcher
    api = HttpApi(hub, store, jobs, replayer, auth, origins, settings, webhooks, hooks)
    operations = OperationsApi(hub, persister, health, cluster, metrics, backend)
    # The admin API: live canvases and sessions across processes (asked over the pub/sub), disconnects, locks.
    directory = Directory(pubsub, rooms, persister, store, store_timeout=settings.store_timeout)
    admin = AdminApi(directory, cluster, store, auth, origins, settings, hooks)
    metrics.gauges = lambda: {
        **{name: float(value) for name, value in hub.stats().items()},
        **{
            f"pubsub_{name}": float(value)
            for name, value in cluster.status().items()
            if isinstance(value, int | float)  # bool included: pubsub_healthy 1/0
        },
    }
    sockets = WebSocketEndpoint(
        hub,
        hub.registry,
        auth=auth,
        origins=origins,
        ip_connections=ConnectionCounter(settings.max_connections_per_ip),
        upgrades=UpgradePacer(settings.upgrade_rate_per_ip, settings.upgrade_burst_per_ip),
        jobs=jobs,
        settings=settings,
        metrics=metrics,
        hooks=hooks,
    )
    native_sockets = NativeSockets(sockets, settings, metrics)  # canvashub serve's transport for /ws
    # /hocuspocus: the same rooms, another protocol; stateless broadcasts cross processes like updates
    hocuspocus = HocuspocusEndpoint(sockets, auth, hooks, publish_stateless=cluster.publish_stateless)
    cluster.on_stateless = hocuspocus.deliver_stateless
    background: list[asyncio.Task[None]] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Start order: the store, then what writes to it, then what brings traffic.
        await open_store(store, settings.startup_timeout)  # retried with backoff; then StartupFailed
        await health.check()
        health.start()
        await pubsub.start()  # never raises: an unreachable Redis is retried in the background
        replayer.start()
        persister.start()
        compactor.start()
        cluster.start()
        await directory.start()  # answers the other processes' admin queries
        webhooks.start()  # delivers what earlier runs (or other processes) left in the outbox
        jobs.start()
        hub.start()
        background.append(asyncio.get_running_loop().create_task(offences.summarise_forever()))
        # Everything allocated so far lives as long as the process: keep it out of the cyclic GC's
        # full collections, which otherwise pause the loop for tens of ms under heavy traffic.
        gc.freeze()
        logs.log(logging.INFO, "hub_started", store=repr(store))
        try:
            yield
        finally:
            await hub.drain()  # sockets flushed and closed with 1001 (idempotent: the server may have drained)
            await jobs.stop()  # a job cut short keeps its lease; it is reclaimed once that expires
            flushed = await persister.flush(settings.shutdown_timeout)
            changes.flush()  # pending change events go out now
            await hooks.stop(settings.hook_timeout)  # queued notifications get one hook timeout to run
            if bridge is not None:
                await bridge.flush()  # pending canvas.saved events into the outbox
            await webhooks.stop()  # an attempt cut short keeps its lease; it is retried once that expires
            await persister.stop()
            await compactor.stop()
            await replayer.stop()
            await cluster.stop()
            await directory.stop()
            await health.stop()
            await pubsub.close()
            for task in background:
                task.cancel()
            await store.close()
            offences.flush()
            logs.log(logging.INFO, "hub_closed", backlog_flushed=flushed)

    # The router is built from the same table /openapi.json is rendered from (server/openapi.py).
    api_docs = ApiDocs(openapi.document(version("canvashub")), settings.demo_dir)
    owners = {"api": api, "admin": admin, "assets": api, "operations": operations, "docs": api_docs}

    def routes_of(*names: str) -> list[Route]:
        return [
            route(path, **methods)
            for name in names
            for path, methods in openapi.handlers_by_path(name, owners[name]).items()
        ]

    routes = [
        *routes_of("operations", "docs"),
        # Its own router: under /api, no match is a JSON 404 and a wrong method a JSON 405 listing the
        # path's methods, never a fall through to the demo's static files below.
        Mount("/api", routes=routes_of("api", "admin")),
        *routes_of("assets"),
        WebSocketRoute("/ws/{canvas_id}", sockets),
        WebSocketRoute("/hocuspocus", hocuspocus),
    ]
    editor_page = Path(settings.demo_dir, "canvas.html")
    if editor_page.is_file():

        async def editor(request: Request) -> Response:
            return FileResponse(editor_page, headers={"Cache-Control": "no-cache"})

        routes.append(Route("/c/{canvas_id}", editor))
    if Path(settings.demo_dir, "index.html").is_file():
        routes.append(Mount("/", StaticFiles(directory=settings.demo_dir, html=True)))
    middleware = []
    cors_origins = origins.cors_origins
    if cors_origins:  # only origins configured explicitly; same-origin pages need no CORS
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=cors_origins,
                allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "If-Match", "If-None-Match"],
                expose_headers=["ETag", "Location", "Retry-After"],
                max_age=600,
            )
        )
    middleware.insert(0, Middleware(RequestMetrics, metrics=metrics))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={HTTPException: http_exception_response},
    )
    app.state.hub = hub
    app.state.jobs = jobs
    app.state.webhooks = webhooks
    app.state.directory = directory
    app.state.settings = settings
    app.state.extensions = hooks
    app.state.hocuspocus = hocuspocus  # broadcast_stateless(canvas_id, payload): docs/protocol.md
    app.state.ws_protocol = native_sockets.protocol_class()
    return app


def make_webhooks(settings: Settings, store: Store, metrics: Metrics) -> WebhookService:
    return WebhookService(
        store,
        parse_webhook_endpoints(settings.webhooks),  # checked by Settings already
        metrics,
        max_attempts=settings.webhook_max_attempts,
        timeout=settings.webhook_timeout,
        retry_base=settings.webhook_retry_base,
        retry_max=settings.webhook_retry_max,
        concurrency=settings.webhook_concurrency,
        poll_interval=settings.webhook_poll_interval,
        retention=settings.webhook_retention,
        store_timeout=settings.store_timeout,
    )


def make_extensions(settings: Settings, metrics: Metrics, extensions: Sequence[object]) -> Extensions:
    return Extensions(
        extensions, timeout=settings.hook_timeout, max_queue=settings.hook_queue, on_outcome=metrics.hook_outcome
    )


def job_listener(metrics: Metrics, hooks: Extensions) -> Callable[[Job, str, tuple[str, str] | None], None]:
    """Every job state this process causes: counted, and told to the extensions' ``generation`` hook."""

    def job_state(job: Job, status: str, error: tuple[str, str] | None) -> None:
        metrics.job_state(status)
        hooks.notify("generation", GenerationEvent(job.id, job.canvas_id, status, None if error is None else error[1]))

    return job_state


def create_worker(settings: Settings, extensions: Sequence[object] = ()) -> tuple[Worker, Store, str, Extensions]:
    """What ``canvashub worker`` runs: a job worker on the store, reporting to the extensions'
    ``generation`` hook, with ``generation.*`` webhooks written in the job's own transaction (the
    servers deliver them: a worker process only writes to the outbox)."""
    store, backend = make_store(settings)
    metrics = Metrics()
    webhooks = make_webhooks(settings, store, metrics)
    hooks = make_extensions(settings, metrics, [*load_extensions(settings.extensions), *extensions])

    worker = Worker(
        store,
        build_generators(
            settings.pattern_step_delay, settings.generator_http_url or None, settings.generator_http_timeout
        ),
        concurrency=max(1, settings.job_workers),
        lease_seconds=settings.job_lease_seconds,
        poll_interval=settings.job_poll_interval,
        retry_base=settings.job_retry_base,
        retry_max=settings.job_retry_max,
        webhooks=webhooks if webhooks.enabled else None,
        on_state=job_listener(metrics, hooks),
    )
    return worker, store, backend, hooks


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory canvashub.server.app:create_app_from_env``."""
    return create_app(Settings.from_env(os.environ))
