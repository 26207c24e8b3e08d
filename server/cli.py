"""``canvashub`` command line. Options are generated from ``Settings`` metadata.

Only ``main`` reads the environment: ``./.env`` first (variables already set win), then the
settings' variables, then the options given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Collection, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from .app import create_app
from .auth import ROLES
from .settings import Settings, option_name, worker_field_names
from .startup import StartupFailed, bind_listener, open_store, report

ENV_FILE = ".env"  # read from the working directory by serve, worker and token


def _add_settings_options(parser: argparse.ArgumentParser, names: Collection[str]) -> None:
    """One option per setting in ``names``; values stay strings until ``Settings.from_env`` parses and
    checks them, so a bad value is reported the same way from an option or its variable."""
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        if f.name not in names:
            continue
        is_bool = f.type in (bool, "bool")
        parser.add_argument(
            option_name(f),
            dest=f.name,
            default=None,
            # A boolean option alone means true: ``--open``; ``--open false`` also works.
            nargs="?" if is_bool else None,
            const="true" if is_bool else None,
            metavar="BOOL" if is_bool else f.name.upper(),
            help=f"{f.metadata['help']} (env {f.metadata['env']}; default {getattr(defaults, f.name)!r})",
        )


def _version() -> str:
    try:
        return metadata.version("canvashub")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    settings_help = "\n".join(
        f"  --{f.name.replace('_', '-'):<34} ${f.metadata['env']:<38} {f.metadata['help']}"
        for f in dataclasses.fields(Settings)
    )
    parser = argparse.ArgumentParser(
        prog="canvashub",
        description="canvashub: realtime collaboration server for Yjs canvases.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="serve options (each also settable by its environment variable, or in ./.env; "
        "`canvashub worker --help` lists the ones the worker reads):\n" + settings_help,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (HTTP + WebSocket)", description="Run the canvashub server.")
    _add_settings_options(serve, {f.name for f in dataclasses.fields(Settings)})
    worker = sub.add_parser(
        "worker",
        help="run generation jobs in this process (no HTTP, no WebSocket)",
        description="Run generation workers against the store the server uses "
        "(set DATABASE_URL, or the same CANVASHUB_DATA_DIR). "
        "--job-workers sets how many jobs run at once. Only these "
        "settings are read; the server's others are ignored.",
    )
    _add_settings_options(worker, worker_field_names())
    token = sub.add_parser(
        "token",
        help="mint an access token (development and testing)",
        description="Print a signed access token. HS256 with CANVASHUB_AUTH_SECRET (or "
        "--secret), or RS256/ES256 with --private-key.",
    )
    token.add_argument("--canvas", required=True, help="canvas id, or a pattern with * (e.g. 'team-*', '*')")
    token.add_argument("--role", required=True, choices=list(ROLES))
    token.add_argument("--user", required=True, help="user id (the token's sub)")
    token.add_argument("--name", help="display name shown in presence (default: the user id)")
    token.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d (default 1h)")
    token.add_argument("--secret", help="HS256 secret (default: $CANVASHUB_AUTH_SECRET)")
    token.add_argument("--private-key", help="PEM private key file: signs RS256 (RSA) or ES256 (EC P-256)")
    return parser


def mint(args: argparse.Namespace) -> int:
    from .auth import MIN_SECRET_BYTES, mint_token, parse_ttl

    try:
        ttl = parse_ttl(args.ttl)
        key: Any  # a private key object (RS256/ES256) or the HS256 secret
        if args.private_key:
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            with open(args.private_key, "rb") as pem:
                key = load_pem_private_key(pem.read(), password=None)
            algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
        else:
            secret: str = args.secret or os.environ.get("CANVASHUB_AUTH_SECRET", "")
            key, algorithm = secret, "HS256"
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"set CANVASHUB_AUTH_SECRET (or --secret) to at least {MIN_SECRET_BYTES} bytes, "
                    "or pass --private-key"
                )
        print(
            mint_token(
                key, canvas=args.canvas, role=args.role, user=args.user, name=args.name, ttl=ttl, algorithm=algorithm
            )
        )
    except (ValueError, OSError) as exc:
        print(f"canvashub token: {exc}", file=sys.stderr)
        return 2
    return 0


def load_env_file(path: str = ENV_FILE) -> None:
    """Set the variables of ``path`` (if it exists) that the environment does not already have."""
    from dotenv import load_dotenv

    load_dotenv(Path(path), override=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    load_env_file()
    if args.command == "token":
        return mint(args)
    options = {k: v for k, v in vars(args).items() if k != "command"}
    names = worker_field_names() if args.command == "worker" else None
    try:
        settings = Settings.from_env(os.environ, options, names)
    except ValueError as exc:
        print(f"canvashub: {exc}", file=sys.stderr)
        return 2
    if args.command == "worker":
        return asyncio.run(run_worker(settings))
    if settings.exposed_without_access_control:
        print(
            f"canvashub: --host {settings.host} (CANVASHUB_HOST) is reachable from other machines and no "
            "access control is set: set CANVASHUB_AUTH_SECRET (or CANVASHUB_AUTH_PUBLIC_KEY), or pass --open "
            "(CANVASHUB_OPEN=true) to let anyone who can reach it read, edit and delete every canvas",
            file=sys.stderr,
        )
        return 2
    try:
        app = create_app(settings)
    except ValueError as exc:  # e.g. a secret too short to be safe
        print(f"canvashub: {exc}", file=sys.stderr)
        return 2
    try:
        return serve(settings, app)
    except KeyboardInterrupt:
        # uvicorn re-raises the SIGINT it handled after a clean shutdown: no traceback for that.
        return 130


async def run_worker(settings: Settings) -> int:
    """``canvashub worker``: claim and run jobs until SIGTERM/SIGINT; the server applies results."""
    import signal

    from . import logs
    from .app import create_worker

    logs.configure(settings.log_level)
    try:
        worker, store, backend, hooks = create_worker(settings)
    except ValueError as exc:  # e.g. an extension that cannot be loaded
        print(f"canvashub: {exc}", file=sys.stderr)
        return 2
    try:
        await open_store(store, settings.startup_timeout)
    except StartupFailed as exc:
        report(exc)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker.start()
    logs.log(
        logging.INFO,
        "worker_started",
        worker=worker.worker_id,
        store=backend,
        generators=sorted(worker.generators),
        concurrency=worker.concurrency,
    )
    await stop.wait()
    await worker.stop()  # jobs cut short keep their leases and are reclaimed when those expire
    await hooks.stop(settings.hook_timeout)
    await store.close()
    logs.log(logging.INFO, "worker_stopped", worker=worker.worker_id)
    return 0


class DrainingServer(uvicorn.Server):
    """Runs the app's lifespan itself, and drains on shutdown.

    Start: the app's lifespan (the hub's start) is entered before uvicorn listens, so a failure is
    one ``startup_failed`` line and ``startup_failed`` set (the command exits 1) instead of
    uvicorn's logged traceback. Shutdown: stop listening, flush clients and close them with 1001,
    let uvicorn finish, then leave the lifespan (the backlog is written, the store closed). Plain
    uvicorn closes WebSockets with 1012 before the app's lifespan shutdown runs; draining first
    means every queued frame is delivered and clients are told "going away".
    """

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app
        self._lifespan: contextlib.AbstractAsyncContextManager | None = None
        self.startup_failed = False

    async def startup(self, sockets=None) -> None:
        lifespan = self._app.router.lifespan_context(self._app)
        try:
            await lifespan.__aenter__()
        except Exception as exc:
            report(exc)
            self.startup_failed = self.should_exit = True
            return
        self._lifespan = lifespan
        try:
            await super().startup(sockets)
        except BaseException:  # uvicorn could not listen (it logged why): still close what was started
            await self._leave_lifespan()
            raise

    async def shutdown(self, sockets=None) -> None:
        for listener in self.servers:
            listener.close()
        await self._app.state.hub.drain()
        await super().shutdown(sockets)
        await self._leave_lifespan()

    async def _leave_lifespan(self) -> None:
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is not None:
            await lifespan.__aexit__(None, None, None)


def uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    """For ``DrainingServer`` only: it runs the app's lifespan itself (``lifespan="off"`` here)."""
    from .limits import http_protocol_class, preauth_protocol

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # Connections must finish their request headers (where the token is) in time.
        http=preauth_protocol(http_protocol_class(), settings.preauth_timeout),
        # /ws sockets on canvashub's own transport (server/wsnative.py); everything else, and every socket
        # when the ASGI transport or per-message-deflate is chosen, through the ASGI app.
        ws=app.state.ws_protocol
        if settings.ws_transport == "native" and not settings.per_message_deflate
        else "websockets-sansio",
        ws_max_size=settings.max_frame_bytes,  # decided from the frame header: close 1009
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        ws_per_message_deflate=settings.per_message_deflate,
        # uvicorn's own lines would print request paths, query strings included;
        # canvashub logs its own structured lines instead.
        log_level="warning",
        access_log=False,
        log_config=None,  # uvicorn's loggers reach the root logger: JSON lines (server/logs.py)
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),  # uvicorn takes whole seconds
        lifespan="off",
    )


def serve(settings: Settings, app: Starlette | None = None) -> int:
    """Run until SIGTERM/SIGINT: 0, or 1 when the start failed (one ``startup_failed`` line)."""
    app = app if app is not None else create_app(settings)
    try:
        sock = bind_listener(settings.host, settings.port)  # a busy port fails before the store is opened
    except StartupFailed as exc:
        report(exc)
        return 1
    server = DrainingServer(uvicorn_config(app, settings), app)
    # Server.run() picks uvicorn's loop factory (uvloop when installed); a bare
    # asyncio.run() would silently fall back to the slower selector loop.
    server.run(sockets=[sock])
    return 1 if server.startup_failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
