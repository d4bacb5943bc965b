"""Two reference relays for bench/routing/overhead.py, each a floor for what the router adds:

- ``l4``: bytes copied between sockets (uvloop streams), no HTTP at all — what any proxy hop
  costs on this machine before it reads a header;
- ``http``: uvicorn + aiohttp passing a request and its stream on with no parsing, no decision,
  no accounting — the same HTTP stack as the router with nothing of the router in it.

Usage: ``python bench/routing/relays.py {l4,http} LISTEN_PORT TARGET_URL``. Not part of the
package: a measuring stick, never a way to serve.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import uvicorn
import uvloop


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def l4(port: int, target: str) -> None:
    where = urlsplit(target)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(where.hostname, where.port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def http(port: int, target: str) -> None:
    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert session is not None
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        reply = await session.request(
            scope["method"], target + scope["path"], data=body or None,
            headers={"content-type": "application/json"},
        )  # fmt: skip
        headers = [(b"content-type", reply.headers.get("content-type", "").encode())]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        async for chunk in reply.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        reply.release()

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    kind, listen, upstream = sys.argv[1], int(sys.argv[2]), sys.argv[3].rstrip("/")
    if kind == "l4":
        uvloop.run(l4(listen, upstream))
    else:
        http(listen, upstream)
