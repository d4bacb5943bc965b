"""One request through the router: read it (the gateway's OpenAI parsing and errors), wait in
the flow controller if every replica is saturated, rank the replicas, and relay the answer of
the first that takes it.

A replica that answers 429/503, or fails, before any byte reached the client is replaced by the
next in the ranking: a non-streamed answer is read whole before the client sees anything, a
stream's first chunk is awaited before the response starts. After that the client has bytes, and
a failure ends the stream with an OpenAI error event.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import aiohttp
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from goodput.api.prefix_blocks import block_hashes, prompt_token_ids, tokens_per_block
from goodput.api.router_config import RouterConfig
from goodput.router.cascade import cascade_of, request_content
from goodput.router.endpoints import Endpoint, EndpointTable
from goodput.router.flow import FlowController
from goodput.router.hold import ReplicaHold
from goodput.router.metrics import RouterMetrics
from goodput.router.stages import RoutingPipeline, RoutingRequest, stable_hash
from goodput.router.upstream import ERRORS, Upstream
from goodput.serving.auth import ANONYMOUS, AccessDenied, KeyStore, Tenant
from goodput.serving.openai_errors import OpenAIError, access_denied, engine_failed
from goodput.serving.openai_request import Endpoint as Route
from goodput.serving.openai_request import ParsedRequest, parse_request

log = logging.getLogger(__name__)

HEADER_PRIORITY = "x-goodput-priority"
# Passed to the replica's gateway, which authenticates and clamps what the client may ask.
_FORWARDED = ("authorization", "x-request-id", HEADER_PRIORITY)
_FORWARDED_PREFIX = "x-goodput-"
_PATHS: dict[Route, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_RETRYABLE_STATUS = (429, 503)
_RELAYED_HEADERS = ("content-type", "retry-after", "x-request-id")


def no_replica() -> OpenAIError:
    return OpenAIError(
        503,
        "No replica of this model is ready; retry shortly.",
        "service_unavailable",
        code="no_replica",
        headers={"Retry-After": "1"},
    )


class Router:
    def __init__(
        self,
        config: RouterConfig,
        table: EndpointTable,
        pipeline: RoutingPipeline,
        flow: FlowController,
        metrics: RouterMetrics,
        upstream: Upstream,
        clock: Callable[[], float] = time.monotonic,
        hold: ReplicaHold | None = None,
    ) -> None:
        self.config = config
        self.table = table
        self.pipeline = pipeline
        self.flow = flow
        self.metrics = metrics
        self.upstream = upstream
        self.clock = clock
        self.hold = hold or ReplicaHold(config.hold, clock)
        self.label = config.name
        cascade = config.cascade.models if config.cascade is not None else ()
        self.served_models = {m.name: m.model for m in cascade if m.model is not None}
        # The gateways' own check, done here first: a bad key never takes a place in the queue,
        # and a client cannot name another tenant to get its share.
        self.keys = KeyStore(
            config.auth.keys_dir,
            anonymous=Tenant(ANONYMOUS) if config.auth.anonymous else None,
        )

    # -- reading the request ---------------------------------------------------------------------

    def routing_request(
        self, parsed: ParsedRequest, headers: Mapping[str, str], arrival_key: str, tenant: Tenant
    ) -> RoutingRequest:
        body = parsed.body
        token_ids = prompt_token_ids(parsed.endpoint, body)
        block_chars = self.config.prefix.block_chars
        blocks = block_hashes(parsed.prompt_text, token_ids, block_chars)
        block_tokens = tokens_per_block(
            parsed.prompt_tokens_estimate, parsed.prompt_text, token_ids, block_chars
        )
        session = headers.get(self.config.session_header) or None
        user = body.get("user")
        if session is None and self.config.session_from_user and isinstance(user, str) and user:
            session = user
        key_source = parsed.prompt_text or arrival_key
        priority = headers.get(HEADER_PRIORITY) or "default"
        if tenant.priorities is not None and priority not in tenant.priorities:
            priority = tenant.priorities[0]  # the gateway refuses it; no better band meanwhile
        prompt, images = request_content(body) if self.config.cascade else ("", False)
        return RoutingRequest(
            model=parsed.model,
            blocks=blocks,
            prompt_tokens=parsed.prompt_tokens_estimate,
            block_tokens=block_tokens,
            session=session,
            tenant=tenant.name,
            priority=priority,
            ttft_objective_s=None,
            key=stable_hash(key_source),
            prompt=prompt,
            images=images,
        )

    # -- serving ---------------------------------------------------------------------------------

    async def handle(self, raw: bytes, route: Route, headers: Mapping[str, str]) -> Response:
        arrival = self.clock()
        request_id = (
            headers.get("x-request-id")
            or hashlib.blake2b(raw + str(arrival).encode(), digest_size=12).hexdigest()
        )
        try:
            tenant = self.keys.authenticate(headers)
        except AccessDenied as denied:
            self._outcome("unauthorized")
            return access_denied(denied).response()
        try:
            parsed = parse_request(raw, route, (), None)
        except OpenAIError as error:
            self._outcome("invalid")
            return error.response()
        request = self.routing_request(parsed, headers, request_id, tenant)
        if not self.table.eligible():
            if not self.hold.enabled:
                self._outcome("no_replica")
                return no_replica().response()
            try:
                held_s = await self.hold.wait()
            except OpenAIError as error:
                self._outcome("no_replica")
                return error.response()
            self.metrics.hold_wait.labels(self.label).observe(held_s)
        try:
            waited = await self.flow.admit(request.tenant, request.priority)
        except OpenAIError as error:
            self._outcome("rejected")
            return error.response()
        if waited:
            self.metrics.queue_wait.labels(self.label).observe(waited)
        granted = True
        try:
            decided = self.clock()
            decision = self.pipeline.decide(request, self.table.eligible())
            self.metrics.overhead.labels(self.label).observe(self.clock() - decided)
            if not decision.ranked:
                self._outcome("no_replica")
                return no_replica().response()
            self.metrics.decisions.labels(self.label, decision.stage).inc()
            forward = self._forward_headers(headers, request_id)
            attempts = decision.ranked[: self.config.retries + 1]
            last_error: Response | None = None
            for i, endpoint in enumerate(attempts):
                final = i == len(attempts) - 1
                self._sent(endpoint, request)
                if granted:
                    self.flow.dispatched()
                    granted = False
                body = self._body_for(endpoint, raw, parsed)
                outcome = await self._try(endpoint, body, parsed, route, forward, arrival, final)
                if isinstance(outcome, Response):
                    return outcome
                reason, last_error = outcome
                self.metrics.retries.labels(self.label, reason).inc()
            self._outcome("error")
            return last_error or no_replica().response()
        finally:
            if granted:
                self.flow.dispatched()

    def _body_for(self, endpoint: Endpoint, raw: bytes, parsed: ParsedRequest) -> bytes:
        """The request as ``endpoint`` must get it: a cascade's model serves under its own
        name, written over the logical one the client sent."""
        served = self.served_models.get(endpoint.group)
        if served is None or served == parsed.model:
            return raw
        return json.dumps({**parsed.body, "model": served}).encode()

    def _sent(self, endpoint: Endpoint, request: RoutingRequest) -> None:
        endpoint.outstanding += 1
        endpoint.sent_since_report += 1
        if request.blocks:
            knowledge = self.pipeline.prefix_knowledge
            matched = 0 if knowledge is None else knowledge.matched_blocks(request, endpoint)
            self.metrics.prefix_blocks.labels(self.label).inc(len(request.blocks))
            self.metrics.prefix_predicted_hit_blocks.labels(self.label).inc(matched)
        self.pipeline.chosen(request, endpoint)

    def _ended(self, endpoint: Endpoint) -> None:
        endpoint.outstanding = max(0, endpoint.outstanding - 1)
        endpoint.ended_since_report += 1
        self.flow.release()

    def capacity_changed(self) -> None:
        """A load report arrived or discovery changed: free slots go to waiting requests, and
        held ones go on once any replica is eligible."""
        self.flow.release()
        if self.hold.held and self.table.eligible():
            self.hold.release()

    def _forward_headers(self, headers: Mapping[str, str], request_id: str) -> dict[str, str]:
        forward = {"content-type": "application/json", "x-request-id": request_id}
        for name, value in headers.items():
            lower = name.lower()
            if lower in _FORWARDED or lower.startswith(_FORWARDED_PREFIX):
                forward[lower] = value
        return forward

    async def _try(
        self,
        endpoint: Endpoint,
        body: bytes,
        parsed: ParsedRequest,
        route: Route,
        forward: dict[str, str],
        arrival: float,
        final: bool,
    ) -> Response | tuple[str, Response | None]:
        """The relayed answer, or (why to retry, the answer to give if nothing else works)."""
        url = endpoint.url + _PATHS[route]
        try:
            upstream = await self.upstream.post(url, body, forward)
        except ERRORS as exc:
            log.info("replica %s failed before answering: %s", endpoint.name, exc)
            endpoint.failed(self.clock())
            self._ended(endpoint)
            return "unavailable", engine_failed(f"replica {endpoint.name}: {exc}").response()
        endpoint.succeeded()
        if upstream.status in _RETRYABLE_STATUS and not final:
            answer = await self._read_whole(upstream)
            self._ended(endpoint)
            return "rejected", answer
        if not parsed.stream or upstream.status != 200:
            try:
                answer = await self._read_whole(upstream)
            except ERRORS as exc:
                endpoint.failed(self.clock())
                self._ended(endpoint)
                return "failed", engine_failed(f"replica {endpoint.name}: {exc}").response()
            self._ended(endpoint)
            self._outcome("ok" if upstream.status < 400 else "rejected")
            return answer
        chunks = upstream.content.iter_any()
        try:
            first = await anext(chunks)
        except (*ERRORS, StopAsyncIteration) as exc:
            upstream.close()
            endpoint.failed(self.clock())
            self._ended(endpoint)
            return "failed", engine_failed(f"replica {endpoint.name}: {exc}").response()
        self.metrics.ttft.labels(self.label).observe(self.clock() - arrival)
        self._outcome("ok")
        return RelayResponse(
            self._relay(endpoint, upstream, first, chunks),
            status_code=upstream.status,
            headers=_relayed(upstream.headers),
            on_disconnect=upstream.close,
        )

    async def _relay(
        self,
        endpoint: Endpoint,
        upstream: aiohttp.ClientResponse,
        first: bytes,
        rest: AsyncIterator[bytes],
    ) -> AsyncIterator[bytes]:
        complete = False
        try:
            yield first
            async for chunk in rest:
                yield chunk
            complete = True
        except ERRORS as exc:
            log.info("replica %s failed mid-stream: %s", endpoint.name, exc)
            yield engine_failed(f"replica {endpoint.name} failed mid-stream").sse_event()
        finally:
            # A stream read to its end gives its connection back to the pool; one the client
            # left is closed, so the gateway sees the disconnect and stops the engine's work.
            if complete:
                upstream.release()
            else:
                upstream.close()
            self._ended(endpoint)

    async def _read_whole(self, upstream: aiohttp.ClientResponse) -> Response:
        try:
            content = await upstream.read()
        finally:
            upstream.release()
        return Response(content, status_code=upstream.status, headers=_relayed(upstream.headers))

    def _outcome(self, outcome: str) -> None:
        self.metrics.requests.labels(self.label, outcome).inc()

    async def models(self) -> Response:
        """The models of the first replica that answers (all replicas serve the same ones); a
        cascade's one logical name when it has one (its models serve others)."""
        cascade = self.config.cascade
        if cascade is not None and cascade.model_name is not None:
            card = {"id": cascade.model_name, "object": "model", "owned_by": "goodput"}
            return Response(
                json.dumps({"object": "list", "data": [card]}), media_type="application/json"
            )
        for endpoint in self.table.eligible():
            try:
                status, content = await self.upstream.get(endpoint.url + "/v1/models")
            except ERRORS:
                continue
            if status == 200:
                return Response(content, media_type="application/json")
        return no_replica().response()

    def ready(self) -> bool:
        """Ready while a replica is, or while requests can be held for one (a deployment scaled
        to zero must still be reachable, or nothing would wake it)."""
        return bool(self.table.eligible()) or self.hold.enabled

    def replace_endpoints(self, endpoints: Sequence[Sequence[str | bool]], group: str = "") -> None:
        """Discovery's new view of ``group`` (a cascade's model; else the one group):
        ``(name, url, ready, draining[, load_url])`` each. Replicas that left are forgotten by
        the prefix index (a new pod of the same name starts cold)."""
        knowledge = self.pipeline.prefix_knowledge
        for name in self.table.replace(endpoints, group):
            if knowledge is not None:
                knowledge.index.forget(name)
        self.capacity_changed()


class RelayResponse(Response):
    """A replica's stream passed on chunk by chunk. A client that leaves closes the replica's
    response at once (its gateway sees the disconnect and stops the engine's work), watched by
    one plain task rather than Starlette's per-response task group, which costs a measurable
    share of the router's added time to first token."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        status_code: int,
        headers: Mapping[str, str],
        on_disconnect: Callable[[], object],
    ) -> None:
        self.chunks = chunks
        self.status_code = status_code
        self.background = None
        self.on_disconnect = on_disconnect
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        left = asyncio.ensure_future(_disconnected(receive))
        left.add_done_callback(lambda f: None if f.cancelled() else self.on_disconnect())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            left.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone (the request body was read before)."""
    message: Message = {}
    while message.get("type") != "http.disconnect":
        message = await receive()


def _relayed(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in _RELAYED_HEADERS if name in headers}


def status_body(router: Router) -> dict[str, Any]:
    """The router's view of its replicas, for ``GET /v1/goodput/endpoints`` (operators'
    debugging)."""
    return {
        "endpoints": [
            {
                "name": e.name,
                "url": e.url,
                "ready": e.ready,
                "draining": e.draining,
                "load": e.load,
                "group": e.group,
                "outstanding": e.outstanding,
                "report": None if e.report is None else e.report.model_dump(by_alias=True),
            }
            for e in router.table.all()
        ],
        "queue": router.flow.depth,
        "held": router.hold.held,
        "cascade": None if (cascade := cascade_of(router.pipeline)) is None else cascade.status(),
    }
