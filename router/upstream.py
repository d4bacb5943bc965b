"""The router's client for the replicas' gateways, and how it checks them over HTTPS.

Replicas are dialled by pod IP (EndpointSlices hold addresses, not names), and no certificate
names a pod IP. So with ``upstreamTls.serverName`` every HTTPS request carries that name as its
TLS server name (httpcore's ``sni_hostname`` request extension): it is both the SNI the gateway
sees and the name Python's ``ssl`` checks the certificate against, while the TCP connection
still goes to the IP. The trust anchors are ``caFile`` when it exists, else the system's store.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import httpx

from goodput.api.router_config import UpstreamTLS

log = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(connect=2.0, read=600.0, write=30.0, pool=30.0)
LIMITS = httpx.Limits(max_connections=2048, max_keepalive_connections=256)


def ssl_context(tls: UpstreamTLS | None) -> ssl.SSLContext:
    """Verification on, hostnames checked; anchored at ``caFile`` if it exists."""
    ca = tls.ca_file if tls is not None else None
    if ca is not None and Path(ca).is_file():
        log.info("verifying the replicas' certificates against %s", ca)
        return ssl.create_default_context(cafile=ca)
    if ca is not None:
        log.info("no %s: verifying the replicas' certificates against the system's store", ca)
    return ssl.create_default_context()


class ServerNameTransport(httpx.AsyncBaseTransport):
    """Sends every HTTPS request with ``server_name`` as its TLS server name (SNI and the name
    the certificate is checked against), whatever address the URL holds."""

    def __init__(self, inner: httpx.AsyncBaseTransport, server_name: str) -> None:
        self.inner = inner
        self.server_name = server_name

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https":
            request.extensions["sni_hostname"] = self.server_name
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def client(tls: UpstreamTLS | None) -> httpx.AsyncClient:
    """One pooled client for relayed requests and load polls alike."""
    transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(
        verify=ssl_context(tls), limits=LIMITS
    )
    if tls is not None and tls.server_name:
        transport = ServerNameTransport(transport, tls.server_name)
    return httpx.AsyncClient(timeout=TIMEOUT, transport=transport)
