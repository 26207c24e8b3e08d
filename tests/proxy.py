"""A TCP proxy a test can cut and restore: a database outage without touching the real database."""

from __future__ import annotations

import asyncio


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``. ``cut()`` resets every open connection and
    refuses new ones (accept, then reset) until ``restore()``; ``stalled`` and ``latency``
    make the link silent or slow instead."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.open = True
        # ``stalled``: traffic is swallowed without closing anything, like a dead link or a frozen
        # server (no RST, no FIN). ``latency``: each chunk is held that long, in order, each direction.
        self.stalled = False
        self.latency = 0.0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def cut(self) -> None:
        self.open = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.open = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while chunk := await src.read(65536):
                if not self.open:
                    break
                if self.stalled:
                    continue
                if self.latency:
                    await asyncio.sleep(self.latency)  # simulated wire delay, not a wait for a condition
                dst.write(chunk)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(dst)
            dst.transport.abort()


class LoadBalancer(TcpProxy):
    """A load balancer without sticky routing: each new connection goes to the next backend
    (round-robin) that accepts it; a backend that refuses (a killed process) is skipped."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__("127.0.0.1", ports[0])
        self.ports = list(ports)
        self._next = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(len(self.ports)):
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self._writers.update((writer, up_writer))
            for src, dst in ((reader, up_writer), (up_reader, writer)):
                task = asyncio.get_running_loop().create_task(self._pump(src, dst))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        writer.transport.abort()
