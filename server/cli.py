"""``canvashub`` command line. Options are generated from ``Settings`` metadata."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from typing import Sequence

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = Settings.from_env(os.environ, **overrides)
    except ValueError as exc:
        print(f"canvashub: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        try:
            serve(settings)
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
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,  # decided from the frame header: close 1009
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        ws_per_message_deflate=settings.per_message_deflate,
        # uvicorn's own lines would print request paths, query strings included;
        # canvashub logs its own structured lines instead.
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_timeout,
        lifespan="on",
    )


def serve(settings: Settings) -> None:
    app = create_app(settings)
    # Server.run() picks uvicorn's loop factory (uvloop when installed); a bare
    # asyncio.run() would silently fall back to the slower selector loop.
    DrainingServer(uvicorn_config(app, settings), app).run()


if __name__ == "__main__":
    raise SystemExit(main())
