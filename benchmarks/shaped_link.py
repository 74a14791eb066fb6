"""A TCP proxy on 127.0.0.1 that behaves like a slower link: a bandwidth per direction and a round-trip time.

This kernel has no netem queueing discipline, and no package from the registries shapes loopback traffic without
it, so the benchmark starts this proxy itself: every chunk read from one side waits for its turn on the link
(bytes x 8 / bandwidth after the previous chunk of that direction) and is delivered half a round trip later.

    with ShapedLink("127.0.0.1", 8765, mbit=100, rtt_ms=20) as link:
        ... connect to link.url instead of http://127.0.0.1:8765 ...
"""

from __future__ import annotations

import asyncio
import threading
import time

CHUNK = 64 * 1024


class ShapedLink:
    """Forward 127.0.0.1:<port> to `host`:`port` through a link of `mbit` Mbit/s each way and `rtt_ms` round trips."""

    def __init__(self, host: str, port: int, mbit: float, rtt_ms: float):
        self.target, self.bytes_per_second, self.delay = (host, port), mbit * 1e6 / 8, rtt_ms / 2000
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._ready = threading.Event()
        self._server = None
        self._busy_until = {"up": 0.0, "down": 0.0}  # the link is shared by every connection, per direction

    async def _pump(self, reader, writer, direction: str) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                due, chunk = await queue.get()
                if chunk is None:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(chunk)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(deliver())
        try:
            while chunk := await reader.read(CHUNK):
                now = time.monotonic()
                start = max(now, self._busy_until[direction])
                self._busy_until[direction] = start + len(chunk) / self.bytes_per_second
                await asyncio.sleep(max(0.0, self._busy_until[direction] - now))  # the link is busy until then
                queue.put_nowait((self._busy_until[direction] + self.delay, chunk))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait((0.0, None))
            await sender

    async def _connection(self, client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            self._pump(client_reader, server_writer, "up"),
            self._pump(server_reader, client_writer, "down"),
            return_exceptions=True,
        )

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        self._ready.set()

    def __enter__(self) -> ShapedLink:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        if not self._ready.wait(30):
            raise RuntimeError("the shaped link did not start")
        return self

    def __exit__(self, *exc) -> None:
        async def stop():
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
