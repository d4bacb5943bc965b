"""The router's client for the replicas' gateways, and how it checks them over HTTPS.

One pooled aiohttp session carries relayed requests and load polls alike. aiohttp rather than
httpx, as in the gateway: the router relays every streamed token of every request, and per
token aiohttp cost about half the router's CPU time of httpx here (66-73 against 140 µs);
``bench/routing/overhead.py`` measures the router's whole share.

Replicas are dialled by pod IP (EndpointSlices hold addresses, not names), and no certificate
names a pod IP. So with ``upstreamTls.serverName`` every HTTPS request carries that name as its
TLS server name (aiohttp's ``server_hostname``): it is both the SNI the gateway sees and the name
Python's ``ssl`` checks the certificate against, while the TCP connection still goes to the IP.
The trust anchors are ``caFile`` when it exists, else the system's store.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import aiohttp

from goodput.api.router_config import UpstreamTLS

log = logging.getLogger(__name__)

# Connecting must be quick (a dead pod is skipped for the next one); a stream may be long.
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=600.0)
MAX_CONNECTIONS = 2048
ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
"""What a failed exchange with a replica raises."""


def ssl_context(tls: UpstreamTLS | None) -> ssl.SSLContext:
    """Verification on, hostnames checked; anchored at ``caFile`` if it exists."""
    ca = tls.ca_file if tls is not None else None
    if ca is not None and Path(ca).is_file():
        log.info("verifying the replicas' certificates against %s", ca)
        return ssl.create_default_context(cafile=ca)
    if ca is not None:
        log.info("no %s: verifying the replicas' certificates against the system's store", ca)
    return ssl.create_default_context()


class Upstream:
    """The pooled session to the replicas, opened on first use: aiohttp binds a session to the
    running event loop, which does not exist yet when the router is built."""

    def __init__(self, tls: UpstreamTLS | None = None) -> None:
        self.ssl = ssl_context(tls)
        self.server_name = tls.server_name if tls is not None else None
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=self.ssl)
            self._session = aiohttp.ClientSession(connector=connector, timeout=TIMEOUT)
        return self._session

    def _name(self, url: str) -> str | None:
        """The TLS server name to send: ``serverName`` for HTTPS (unset: the URL's host)."""
        return self.server_name if url.startswith("https:") else None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """Send ``body``: the answer's status and headers are in, its body is still to read
        (``release`` it when read, ``close`` it to abandon it)."""
        return await self._open().post(
            url, data=body, headers=headers, server_hostname=self._name(url)
        )

    async def get(self, url: str, timeout_s: float | None = None) -> tuple[int, bytes]:
        """A small answer, read whole: (status, body)."""
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s is not None else TIMEOUT
        async with self._open().get(url, timeout=timeout, server_hostname=self._name(url)) as reply:
            return reply.status, await reply.read()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
