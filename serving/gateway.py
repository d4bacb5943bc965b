"""The gateway's parts wired together from a ``GatewayConfig``, and what happens when a request
ends: metrics, the rolling SLO attainment, the request log, and the length predictor's update
(each answer, and the periodic refit from the request log when the config asks for it).

It also keeps the requests in flight, to fail them fast: when the engine stops answering its
health check, a request that has had no byte from it for ``stall_s`` is ended at once with an
OpenAI error (an error event in a stream) instead of waiting out the read timeout, and new
requests are answered 503 until the engine is back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry

from goodput.api.gateway_config import GatewayConfig
from goodput.api.prefix_blocks import DEFAULT_BLOCK_CHARS, prompt_token_ids
from goodput.serving.adapters import AdapterSet
from goodput.serving.admission import AdmissionController, RejectReason
from goodput.serving.auth import ANONYMOUS, KeyStore, Quotas, Tenant
from goodput.serving.dispatcher import Dispatcher
from goodput.serving.engine_client import EngineClient
from goodput.serving.engine_state import EngineBudget, EngineMonitor, EngineSnapshot
from goodput.serving.held_blocks import DEFAULT_CAPACITY_BLOCKS, HeldBlocks
from goodput.serving.job import Job
from goodput.serving.length_estimate import (
    LearnedLengthPredictor,
    LengthPredictor,
    PerModelPredictors,
    make_predictor,
)
from goodput.serving.metrics import GatewayMetrics, RollingAttainment, Totals
from goodput.serving.openai_request import ParsedRequest
from goodput.serving.policies import make_policy
from goodput.serving.refit import PredictorRefitter
from goodput.serving.request_log import RequestLog, RequestRecord
from goodput.serving.service_model import LinearFit, ServiceModel
from goodput.serving.slo import SLOResolver, met_slo

log = logging.getLogger(__name__)

#: An engine that sent a request nothing for this many of its steps (and fails its health
#: check) is taken to have stopped.
_STALL_STEPS = 10


class Exchange(Protocol):
    """A request in flight, as the gateway sees it (``proxy.ProxyExchange``)."""

    def engine_idle_since(self) -> float | None:
        """Monotonic time of the engine's last byte for it; ``None`` while not at the engine."""
        ...

    def abandon(self, message: str, code: str) -> None:
        """End it now with a 503 (an error event, if streaming) saying ``message``."""
        ...


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        request_log: RequestLog | None = None,
        predictor: LengthPredictor | None = None,
        engine_health_interval_s: float = 1.0,
        engine_health_timeout_s: float = 3.0,
        engine_metrics_interval_s: float = 10.0,
        upstream_connect_timeout_s: float = 5.0,
        upstream_read_timeout_s: float = 600.0,
        stall_s: float = 2.0,
    ) -> None:
        self.config = config
        self.stall_s = stall_s
        auth = config.auth
        self.keys = KeyStore(
            auth.keys_dir,
            anonymous=Tenant(ANONYMOUS, priorities=(config.default_priority,))
            if auth.anonymous
            else None,
        )
        self.quotas = Quotas()
        self.registry = CollectorRegistry(auto_describe=True)
        self.resolver = SLOResolver(config)
        self.predictor = predictor or make_predictor(
            config.predictor, model_key=config.served_model_name
        )
        self.predictor_for = PerModelPredictors(self.predictor)
        self.service = ServiceModel()
        self.budget = EngineBudget(kv_capacity_tokens=config.kv_cache_tokens)
        self.held_blocks = (
            None
            if config.prefix_block_chars is None
            else HeldBlocks(config.prefix_block_chars, self._capacity_blocks)
        )
        self.policy = make_policy(
            config.policy,
            max_concurrency=config.max_concurrency,
            initial_concurrency=config.initial_concurrency,
        )
        self.admission = AdmissionController(
            self.service,
            overload=config.overload,
            max_queue_length=config.max_queue_length,
            max_queue_delay_s=(
                None if config.max_queue_delay_ms is None else config.max_queue_delay_ms / 1000
            ),
        )
        self.dispatcher = Dispatcher(self.policy, self.admission, self.service, self.budget)
        self.attainment = RollingAttainment()
        self.totals = Totals()
        self.metrics = GatewayMetrics(
            self.registry,
            deployment=config.deployment,
            model=config.served_model_name,
            queue_depth=lambda: self.dispatcher.queue_depth,
            inflight=lambda: self.dispatcher.inflight,
            concurrency_limit=self._concurrency_limit,
            attainment=self.attainment,
        )
        if request_log is None and config.request_log is not None:
            request_log = RequestLog(
                config.request_log.path,
                max_bytes=config.request_log.max_bytes,
                keep_prompts=config.request_log.keep_prompts,
                max_prompt_chars=config.request_log.max_prompt_chars,
            )
        self.request_log = request_log
        self.refitter: PredictorRefitter | None = None
        refit = config.predictor.refit
        if refit and isinstance(self.predictor, LearnedLengthPredictor) and request_log:
            self.refitter = PredictorRefitter(self.predictor, request_log.path, refit)
        self._refit_task: asyncio.Task[None] | None = None
        self.client = EngineClient(
            config.engine_url,
            connect_timeout_s=upstream_connect_timeout_s,
            read_timeout_s=upstream_read_timeout_s,
            api_key=_read_key(config.engine_api_key_file),
        )
        self.monitor = EngineMonitor(
            self.client,
            self.budget,
            health_interval_s=engine_health_interval_s,
            health_timeout_s=engine_health_timeout_s,
            metrics_interval_s=engine_metrics_interval_s,
            on_poll=self._engine_polled,
        )
        self.adapters = (
            None
            if config.lora is None
            else AdapterSet(config.lora, self.client, on_cold_load=self.metrics.adapter_loaded)
        )
        self.draining = False
        self._exchanges: set[Exchange] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def uncached_tokens(self, request: ParsedRequest) -> float | None:
        """The request's prompt tokens its engine would still prefill, estimated from the
        prompts sent there before; None when the gateway keeps no record of them."""
        if self.held_blocks is None:
            return None
        return self.held_blocks.uncached_tokens(
            request.prompt_text,
            prompt_token_ids(request.endpoint, request.body),
            request.prompt_tokens_estimate,
        )

    def _capacity_blocks(self) -> int:
        """The engine's KV capacity in prompt blocks (about four characters a token)."""
        tokens = self.budget.capacity_tokens
        chars = self.config.prefix_block_chars or DEFAULT_BLOCK_CHARS
        return DEFAULT_CAPACITY_BLOCKS if tokens is None else max(1, 4 * tokens // chars)

    def _concurrency_limit(self) -> float:
        """The policy's batch limit for the deployment's own SLO (NaN: unlimited)."""
        slo = self.config.slo
        limit = self.policy.concurrency_limit(
            slo.tpot_ms / 1000, slo.ttft_ms / 1000, self.service, time.monotonic()
        )
        return math.nan if limit is None else float(limit)

    def _engine_polled(self, snapshot: EngineSnapshot) -> None:
        self.metrics.engine_polled(snapshot)
        if not snapshot.up:
            self.abandon_stalled()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "engine running=%s waiting=%s kv=%s | gateway queue=%d inflight=%d limit=%s "
                "tpot=%s first_token=%s service=%s",
                snapshot.running,
                snapshot.waiting,
                snapshot.kv_usage,
                self.dispatcher.queue_depth,
                self.dispatcher.inflight,
                self.dispatcher.concurrency_limit(),
                _line(self.service.step.fit),
                _line(self.service.first_token.fit),
                self.service.service_s.value,
            )

    @property
    def known_models(self) -> set[str]:
        adapters = self.adapters.names if self.adapters is not None else ()
        return {self.config.served_model_name, *adapters, *self.monitor.models}

    def adapter_of(self, model: str) -> str | None:
        """The adapter a request's model names; None: the base model (or one the engine
        serves of its own)."""
        if self.adapters is None or self.adapters.entry(model) is None:
            return None
        return model

    @property
    def max_model_len(self) -> int | None:
        return self.config.max_model_len or self.monitor.max_model_len

    @property
    def ready(self) -> bool:
        return self.monitor.up and not self.draining

    @property
    def active_exchanges(self) -> int:
        return len(self._exchanges)

    def exchange_started(self, exchange: Exchange) -> None:
        self._exchanges.add(exchange)
        self._idle.clear()

    def exchange_ended(self, exchange: Exchange) -> None:
        self._exchanges.discard(exchange)
        if not self._exchanges:
            self._idle.set()

    def abandon_stalled(self) -> None:
        """The engine failed its health check: end every request it has been silent on for
        ``stall_s`` or ten of its current steps, whichever is longer (a request that just got
        bytes is left to the next poll)."""
        now = time.monotonic()
        step = self.service.step_time_s(max(self.dispatcher.inflight, 1), now) or 0.0
        stall = max(self.stall_s, _STALL_STEPS * step)
        for exchange in list(self._exchanges):
            idle_since = exchange.engine_idle_since()
            if idle_since is not None and now - idle_since >= stall:
                exchange.abandon(
                    "The inference engine stopped answering (it fails its health check).",
                    "engine_unavailable",
                )

    def abandon_all(self, message: str, code: str) -> None:
        for exchange in list(self._exchanges):
            exchange.abandon(message, code)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in the gateway; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        await self.monitor.poll_once()
        self.monitor.start()
        self.dispatcher.start()
        if self.adapters is not None:
            self.adapters.start()
        if self.refitter is not None:
            self._refit_task = asyncio.create_task(self.refitter.run(), name="predictor-refit")

    async def stop(self) -> None:
        if self._refit_task is not None:
            self._refit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refit_task
        if self.refitter is not None:
            self.refitter.close()
        if self.adapters is not None:
            await self.adapters.stop()
        await self.dispatcher.stop()
        await self.monitor.stop()
        await self.client.close()
        if self.request_log is not None:
            self.request_log.close()

    # -- outcomes --------------------------------------------------------------------------------

    def rejected(self, reason: RejectReason, priority: str, model: str | None = None) -> None:
        self.metrics.reject(reason.value, priority, model)
        self.attainment.record(False)
        self.totals.judged(False)

    def failed(self, job: Job) -> None:
        labels = self.metrics.labels(job.slo.priority, job.model)
        self.metrics.requests.labels(**labels, outcome="error").inc()
        self.attainment.record(False)
        self.totals.judged(False)

    def finished(
        self,
        job: Job,
        *,
        prompt: str,
        streamed: bool,
        end: float,
        output_tokens: int,
        prompt_tokens: int | None,
        finish_reason: str,
    ) -> None:
        """Judge and record a request that ran to completion (``end`` on the dispatcher clock)."""
        m = self.metrics
        labels = m.labels(job.slo.priority, job.model)
        e2e = end - job.arrival
        ttft = None if job.first_token_at is None else job.first_token_at - job.arrival
        tpot = None
        if streamed and job.first_token_at is not None and output_tokens > 1:
            tpot = (end - job.first_token_at) / (output_tokens - 1)
        met = met_slo(
            job.slo,
            streamed=streamed,
            ttft_s=ttft,
            tpot_s=tpot,
            e2e_s=e2e,
            output_tokens=output_tokens,
        )
        m.requests.labels(**labels, outcome="met_slo" if met else "missed_slo").inc()
        self.attainment.record(met)
        self.totals.judged(met)
        self.totals.finished_one(job.prompt_tokens, output_tokens)
        if streamed and ttft is not None:
            m.ttft.labels(**labels).observe(ttft)
        if tpot is not None:
            m.tpot.labels(**labels).observe(tpot)
        m.e2e.labels(**labels).observe(e2e)
        m.output_tokens.observe(output_tokens)
        m.predicted_tokens.observe(job.prediction.p50)
        m.prediction_error.observe((job.prediction.p50 - output_tokens) / max(output_tokens, 1))
        m.generated_tokens.inc(output_tokens)
        self.predictor_for(job.model).observe(prompt, job.prompt_tokens, output_tokens)
        if self.request_log is not None:
            self.request_log.write(
                RequestRecord(
                    ts=time.time(),
                    deployment=self.config.deployment,
                    model=job.model or self.config.served_model_name,
                    request_id=job.request_id,
                    prompt=prompt,
                    prompt_tokens=prompt_tokens if prompt_tokens is not None else job.prompt_tokens,
                    max_tokens=job.max_tokens,
                    predicted_p50=job.prediction.p50,
                    predicted_p90=job.prediction.p90,
                    output_tokens=output_tokens,
                    finish_reason=finish_reason,
                )
            )


def _read_key(path: str | None) -> str | None:
    return None if path is None else Path(path).read_text().strip() or None


def _line(fit: LinearFit | None) -> str:
    return "?" if fit is None else f"{fit.intercept_s * 1e3:.1f}ms+{fit.slope_s * 1e3:.2f}ms*c"
