"""A small asyncio TCP proxy for fault tests: cut, blackhole and restore a real service.

The proxy keeps listening on one port for its whole life, so a client configured with that port
sees the faults the way it would see them in production:

- ``cut()``: every open connection is reset (both sides aborted) and each new connection is
  accepted and aborted at once — a dead peer, like a broker that crashed behind a load balancer;
- ``blackhole()``: open connections stop forwarding in both directions and new connections are
  accepted but never forwarded — a hung peer, so only the client's own timeouts can notice;
- ``restore()``: connections left over from the fault are reset (a client may have given up on
  them half-way through a frame) and new ones are forwarded again.

Buffers are bounded: each direction reads at most ``chunk`` bytes at a time and waits for the other
side to drain before it reads more.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["forward", "cut", "blackhole"]

_WRITE_HIGH_WATER = 64 * 1024


@dataclass(eq=False)
class _Link:
    """One client connection and, while forwarding, its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    frozen: bool = False  # blackholed: bytes are read and dropped, never forwarded

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, chunk: int = 16 * 1024) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._chunk = chunk
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.mode: Mode = "forward"
        self.port = 0
        self.accepted = 0  # every connection a client opened, whatever the mode
        self.refused = 0  # connections aborted on accept while cut

    @property
    def connections(self) -> int:
        return len(self._links)

    async def start(self) -> int:
        """Listen on 127.0.0.1 on a free port; return the port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def cut(self) -> None:
        """Reset every open connection and refuse (accept, then reset) new ones."""
        self.mode = "cut"
        await self._abort_all()

    async def blackhole(self) -> None:
        """Stop forwarding on open connections and accept new ones without ever forwarding."""
        self.mode = "blackhole"
        for link in self._links:
            link.frozen = True

    async def restore(self) -> None:
        """Forward new connections again; connections left over from a blackhole are reset."""
        self.mode = "forward"
        stale = [link for link in self._links if link.frozen]
        for link in stale:
            link.abort()
        await self._settle(stale)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._abort_all()
        # Handlers end by themselves once their links are aborted (cancelling one would make
        # asyncio's stream callback log the cancellation); only one stuck connecting is cancelled.
        if self._handlers:
            _, stuck = await asyncio.wait(list(self._handlers), timeout=2.0)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.wait(stuck)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _abort_all(self) -> None:
        links = list(self._links)
        for link in links:
            link.abort()
        await self._settle(links)

    async def _settle(self, links: list[_Link]) -> None:
        """Let the aborted links' tasks finish so nothing is left pending."""
        tasks = [t for link in links for t in link.tasks]
        if tasks:
            await asyncio.wait(tasks)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            await self._serve(reader, writer)
        finally:
            if handler is not None:
                self._handlers.discard(handler)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            self.refused += 1
            writer.transport.abort()
            return
        link = _Link(writer, frozen=self.mode == "blackhole")
        self._links.add(link)
        try:
            if link.frozen:
                # A hung peer: the TCP handshake succeeded, nothing ever answers.
                sink = asyncio.create_task(self._drain_into_void(reader))
                link.tasks.add(sink)
                await asyncio.wait([sink])
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                writer.transport.abort()
                return
            link.upstream = up_writer
            for w in (writer, up_writer):
                w.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
            if self.mode != "forward" or link.frozen:  # a fault arrived while connecting
                link.abort()
                return
            pipes = [
                asyncio.create_task(self._pipe(link, reader, up_writer)),
                asyncio.create_task(self._pipe(link, up_reader, writer)),
            ]
            link.tasks.update(pipes)
            # One direction ending (EOF or error) ends the link, like a proxy that closes both sides.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            link.abort()
            await asyncio.wait(pipes)
        finally:
            self._links.discard(link)
            for w in (writer, link.upstream):
                if w is not None:
                    w.transport.abort()

    async def _pipe(self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await src.read(self._chunk)
                if not data:
                    return
                if link.frozen:
                    continue  # blackholed: swallowed
                dst.write(data)
                await dst.drain()

    async def _drain_into_void(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(self._chunk):
                pass
