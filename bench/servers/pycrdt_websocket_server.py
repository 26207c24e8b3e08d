"""pycrdt-websocket reference server for the benchmark (runs in bench/run.py's throwaway venv).

Public API only, as in the project's README: a `WebsocketServer` (rooms kept in memory: no
store, so no SQLite cost - that makes this reference *faster* than a persistent deployment)
wrapped in `ASGIServer` and served by uvicorn with its defaults (which negotiate
permessage-deflate when the client offers it, as browsers and the load generator do).
Room = URL path, so clients use ws://HOST:PORT/{room}.

    python pycrdt_websocket_server.py --host 127.0.0.1 --port 1234
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from pycrdt.websocket import ASGIServer, WebsocketServer, exception_logger


async def main(host: str, port: int) -> None:
    # exception_logger: one client's failure is logged instead of tearing down the server
    websocket_server = WebsocketServer(exception_handler=exception_logger)
    app = ASGIServer(websocket_server)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", backlog=4096))
    async with websocket_server:
        await server.serve()  # returns on SIGINT/SIGTERM (uvicorn installs the handlers)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1234)
    args = ap.parse_args()
    asyncio.run(main(args.host, args.port))
