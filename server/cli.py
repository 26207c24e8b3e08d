"""``canvashub`` command line. Options are generated from ``Settings`` metadata."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette

from .app import create_app
from .settings import Settings, parse_value


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env = f.metadata["env"]
        default = getattr(defaults, f.name)
        parser.add_argument(
            flag,
            dest=f.name,
            default=None,
            type=(lambda raw, f=f: parse_value(f, raw)),
            metavar=f.name.upper() if f.type not in (bool, "bool") else "BOOL",
            help=f"{f.metadata['help']} (env {env}; default {default!r})",
        )


def build_parser() -> argparse.ArgumentParser:
    settings_help = "\n".join(
        f"  --{f.name.replace('_', '-'):<34} ${f.metadata['env']:<38} {f.metadata['help']}"
        for f in dataclasses.fields(Settings)
    )
    parser = argparse.ArgumentParser(
        prog="canvashub",
        description="canvashub: realtime collaboration server for Yjs canvases.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="serve options (each also settable by its environment variable):\n" + settings_help,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (HTTP + WebSocket)",
                           description="Run the canvashub server.")
    _add_settings_options(serve)
    worker = sub.add_parser("worker", help="run generation jobs in this process (no HTTP, no WebSocket)",
                            description="Run generation workers against the store the server uses "
                                        "(set DATABASE_URL, or the same CANVASHUB_DATA_DIR). "
                                        "--job-workers sets how many jobs run at once.")
    _add_settings_options(worker)
    token = sub.add_parser("token", help="mint an access token (development and testing)",
                           description="Print a signed access token. HS256 with CANVASHUB_AUTH_SECRET (or "
                                       "--secret), or RS256/ES256 with --private-key.")
    token.add_argument("--canvas", required=True, help="canvas id, or a pattern with * (e.g. 'team-*', '*')")
    token.add_argument("--role", required=True, choices=["viewer", "editor", "owner"])
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
        if args.private_key:
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            with open(args.private_key, "rb") as pem:
                key = load_pem_private_key(pem.read(), password=None)
            algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
        else:
            key = args.secret or os.environ.get("CANVASHUB_AUTH_SECRET", "")
            algorithm = "HS256"
            if len(key.encode()) < MIN_SECRET_BYTES:
                raise ValueError(f"set CANVASHUB_AUTH_SECRET (or --secret) to at least {MIN_SECRET_BYTES} bytes, "
                                 "or pass --private-key")
        print(mint_token(key, canvas=args.canvas, role=args.role, user=args.user, name=args.name, ttl=ttl,
                         algorithm=algorithm))
    except (ValueError, OSError) as exc:
        print(f"canvashub token: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "token":
        return mint(args)
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = Settings.from_env(os.environ, **overrides)
    except ValueError as exc:
        print(f"canvashub: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        try:
            app = create_app(settings)
        except ValueError as exc:  # e.g. a secret too short to be safe
            print(f"canvashub: {exc}", file=sys.stderr)
            return 2
        try:
            serve(settings, app)
        except KeyboardInterrupt:
            # uvicorn re-raises the SIGINT it handled after a clean shutdown: no traceback for that.
            return 130
    elif args.command == "worker":
        asyncio.run(run_worker(settings))
    return 0


async def run_worker(settings: Settings) -> None:
    """``canvashub worker``: claim and run jobs until SIGTERM/SIGINT; the server applies results."""
    import signal

    from . import logs
    from .app import make_store
    from .generators import build_generators
    from .jobs import Worker

    logs.configure(settings.log_level)
    store, backend = make_store(settings)
    await store.open()
    generators = build_generators(settings.pattern_step_delay, settings.generator_http_url or None,
                                  settings.generator_http_timeout)
    worker = Worker(store, generators, concurrency=max(1, settings.job_workers),
                    lease_seconds=settings.job_lease_seconds, poll_interval=settings.job_poll_interval,
                    retry_base=settings.job_retry_base, retry_max=settings.job_retry_max)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker.start()
    logs.log(logging.INFO, "worker_started", worker=worker.worker_id, store=backend,
             generators=sorted(generators), concurrency=worker.concurrency)
    await stop.wait()
    await worker.stop()  # jobs cut short keep their leases and are reclaimed when those expire
    await store.close()
    logs.log(logging.INFO, "worker_stopped", worker=worker.worker_id)


class DrainingServer(uvicorn.Server):
    """Stop listening, flush clients and close them with 1001, then let uvicorn finish.

    Plain uvicorn closes WebSockets with 1012 before the app's lifespan shutdown
    runs; draining first means every queued frame is delivered and clients are
    told "going away".
    """

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets=None) -> None:
        for listener in self.servers:
            listener.close()
        await self._app.state.hub.drain()
        await super().shutdown(sockets)


def uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    from .limits import http_protocol_class, preauth_protocol

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # Connections must finish their request headers (where the token is) in time.
        http=preauth_protocol(http_protocol_class(), settings.preauth_timeout),
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,  # decided from the frame header: close 1009
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        ws_per_message_deflate=settings.per_message_deflate,
        # uvicorn's own lines would print request paths, query strings included;
        # canvashub logs its own structured lines instead.
        log_level="warning",
        access_log=False,
        log_config=None,  # uvicorn's loggers reach the root logger: JSON lines (server/logs.py)
        timeout_graceful_shutdown=settings.shutdown_timeout,
        lifespan="on",
    )


def serve(settings: Settings, app: Starlette | None = None) -> None:
    app = app if app is not None else create_app(settings)
    # Server.run() picks uvicorn's loop factory (uvloop when installed); a bare
    # asyncio.run() would silently fall back to the slower selector loop.
    DrainingServer(uvicorn_config(app, settings), app).run()


if __name__ == "__main__":
    raise SystemExit(main())
