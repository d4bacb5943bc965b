"""Several models behind one model name: which model gets a request (``CascadeConfig``).

Two filters, run after readiness and before the SLO stages, so those judge the chosen model's
replicas only:

- ``model-modality`` (hard): a request with image content goes only to models declared
  ``multimodal``; the others may not get it even as a retry.
- ``model-cascade`` (soft): one model per request; the other models' replicas stay retries of
  last resort (a 429 from every replica of the chosen model is worse than a lesser answer).

The choice, in order:

1. **Session.** A conversation (session header, else the OpenAI ``user``) stays on the model it
   started on; it moves up only when its current turn alone would go to a larger model
   (escalation), never down.
2. **Quality.** The quality predictor gives each model's predicted win-rate against the
   reference for this prompt (its last user message: what the model must answer now). With
   ``minWinRate``: the cheapest model that reaches it, else the best predicted. With
   ``maxLargeShare``: the request goes past the first model when the predicted gain of the best
   larger model is above the ``1 - share`` quantile of the gains of the last ``windowRequests``
   requests (before any traffic: of the training prompts), lowered while the window's actual
   share runs over the target (sessions and spills count too). The decision is a function of
   the prompt and the window's quantile: routers seeing alike traffic decide alike, with no
   shared store.
3. **Spill.** When every replica of the chosen model is predicted to miss its TTFT objective
   (``PrefixKnowledge``: predicted wait + first token + prefill of what it does not hold) and
   another allowed model has one predicted to meet it, the request spills there — to the one
   predicted to finish first, the request's predicted output length times the model's
   ``tpotS`` included. The SLO comes before the share target: spills up are counted, not capped.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from goodput.api.router_config import CascadeConfig, CascadeModel
from goodput.profiler.length_model_io import load_default_length_model
from goodput.profiler.length_predictor import LengthPredictor
from goodput.profiler.quality_model_io import load_default_quality_model, load_quality_model
from goodput.profiler.quality_predictor import QualityPredictor
from goodput.router.endpoints import Endpoint
from goodput.router.stages import PrefixKnowledge, RoutingPipeline, RoutingRequest

_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
# Requests whose gain the share threshold is taken over, before the window has this many.
_MIN_WINDOW = 50


def request_content(body: Mapping[str, Any]) -> tuple[str, bool]:
    """The text the quality predictor judges (a chat's last user message, else the completion
    prompt) and whether the request carries an image."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        prompt = body.get("prompt")
        return (prompt if isinstance(prompt, str) else ""), False
    images = False
    last_user = ""
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        text = content if isinstance(content, str) else ""
        if isinstance(content, list):
            parts = [p for p in content if isinstance(p, dict)]
            images = images or any(p.get("type") in _IMAGE_PARTS for p in parts)
            text = " ".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")
        if message.get("role") == "user":
            last_user = text
    return last_user, images


class CascadeChoice(NamedTuple):
    """The model for a request and why: ``quality``, ``session``, ``escalated``, ``spill``,
    ``only-model`` (one allowed)."""

    model: str
    reason: str


class ModelModalityFilter:
    """Only models that can read the request: image content needs a ``multimodal`` model.
    Where none is, all stay (the engine's own error is clearer than a 503)."""

    name = "model-modality"
    soft = False

    def __init__(self, config: CascadeConfig) -> None:
        self.multimodal = {m.name for m in config.models if m.multimodal}

    def filter(self, request: RoutingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        if not request.images:
            return endpoints
        return [e for e in endpoints if e.group in self.multimodal] or endpoints


class ModelCascadeFilter:
    """Keeps the replicas of the one model chosen for the request (see the module's notes)."""

    name = "model-cascade"
    soft = True

    def __init__(
        self,
        config: CascadeConfig,
        quality: QualityPredictor,
        knowledge: PrefixKnowledge,
        length: LengthPredictor | None = None,
    ) -> None:
        self.config = config
        self.quality = quality
        self.knowledge = knowledge
        self.length = length
        self.models: dict[str, CascadeModel] = {m.name: m for m in config.models}
        self.order = [m.name for m in config.models]
        self._sessions: OrderedDict[str, str] = OrderedDict()
        self._gains: deque[float] = deque(maxlen=config.window_requests)
        self._sorted: list[float] = []
        self._window: deque[tuple[bool, bool]] = deque(maxlen=config.window_requests)
        """Per recent request: went past the first model; its model was the quality choice."""
        self._gain: float | None = None
        """The gain of the request being decided, recorded once its choice is known to be free."""
        self.decisions: Counter[tuple[str, str]] = Counter()
        """Requests per (model, reason), for the router's status and the benchmark."""
        self._prior = self._prior_gains()

    # -- the stage -------------------------------------------------------------------------------

    def filter(self, request: RoutingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        choice = self.choose(request, endpoints)
        return [e for e in endpoints if e.group == choice.model] or endpoints

    def choose(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> CascadeChoice:
        """The model for ``request`` among those ``endpoints`` belong to; remembered for its
        session and counted in the share window."""
        present = {e.group for e in endpoints}
        allowed = [name for name in self.order if name in present]
        if len(allowed) <= 1:
            choice = CascadeChoice(allowed[0] if allowed else self.order[0], "only-model")
        else:
            choice = self._by_quality(request, allowed)
            if request.session is not None:
                choice = self._by_session(request.session, choice, allowed)
            choice = self._spill(request, choice, allowed, endpoints)
        if request.session is not None and self.config.sessions:
            self._sessions[request.session] = choice.model
            self._sessions.move_to_end(request.session)
            while len(self._sessions) > self.config.sessions:
                self._sessions.popitem(last=False)
        free = choice.reason in ("quality", "escalated")
        self._window.append((choice.model != self.order[0], free))
        if free and self._gain is not None:
            self._record_gain(self._gain)
        self._gain = None
        self.decisions[(choice.model, choice.reason)] += 1
        return choice

    # -- judgements ------------------------------------------------------------------------------

    def _by_quality(self, request: RoutingRequest, allowed: list[str]) -> CascadeChoice:
        keys = [self.models[n].quality_key or self.models[n].model or n for n in allowed]
        rates = self.quality.predict_models(request.prompt, keys)
        if self.config.min_win_rate is not None:
            for name, rate in zip(allowed, rates, strict=True):
                if rate >= self.config.min_win_rate:
                    return CascadeChoice(name, "quality")
            return CascadeChoice(allowed[int(np.argmax(rates))], "quality")
        best = 1 + int(np.argmax(rates[1:]))  # first of equals: the cheaper
        gain = float(rates[best] - rates[0])
        self._gain = gain
        escalate = gain > self.threshold(request.key)
        return CascadeChoice(allowed[best] if escalate else allowed[0], "quality")

    def _by_session(self, session: str, choice: CascadeChoice, allowed: list[str]) -> CascadeChoice:
        held = self._sessions.get(session)
        if held is None or held not in allowed:
            return choice
        if allowed.index(choice.model) > allowed.index(held):
            return CascadeChoice(choice.model, "escalated")
        return CascadeChoice(held, "session")

    def _spill(
        self,
        request: RoutingRequest,
        choice: CascadeChoice,
        allowed: list[str],
        endpoints: Sequence[Endpoint],
    ) -> CascadeChoice:
        if self._meets(request, choice.model, endpoints) is not False:
            return choice
        finish: dict[str, float] = {}
        for name in allowed:
            if name != choice.model and self._meets(request, name, endpoints):
                finish[name] = self._finish_s(request, name, endpoints)
        if not finish:
            return choice
        return CascadeChoice(min(finish, key=lambda n: (finish[n], allowed.index(n))), "spill")

    def _ttfts(
        self, request: RoutingRequest, model: str, endpoints: Sequence[Endpoint]
    ) -> list[tuple[float, float]]:
        """(predicted TTFT, objective) of the model's replicas that report both."""
        out = []
        for e in endpoints:
            if e.group != model:
                continue
            ttft = self.knowledge.predicted_ttft_s(request, e)
            objective = request.ttft_objective_s
            if objective is None and e.report is not None:
                objective = e.report.ttft_objective_s
            if ttft is not None and objective is not None:
                out.append((ttft, objective))
        return out

    def _meets(
        self, request: RoutingRequest, model: str, endpoints: Sequence[Endpoint]
    ) -> bool | None:
        """Some replica of ``model`` is predicted to meet the TTFT objective; ``None``: not
        known (no report yet), which never causes a spill."""
        known = self._ttfts(request, model, endpoints)
        if not known:
            return None
        return any(ttft <= objective for ttft, objective in known)

    def _finish_s(
        self, request: RoutingRequest, model: str, endpoints: Sequence[Endpoint]
    ) -> float:
        """Predicted time to the last token on ``model``'s best replica."""
        ttft = min(t for t, _ in self._ttfts(request, model, endpoints))
        spec = self.models[model]
        if spec.tpot_s is None or self.length is None:
            return ttft
        key = spec.quality_key or spec.model or model
        p50, _ = self.length.predict_request(request.prompt, key)
        return ttft + p50 * spec.tpot_s

    # -- the share window ------------------------------------------------------------------------

    def threshold(self, key: int) -> float:
        """The gain a request needs to go past the first model: the ``1 - s`` quantile of recent
        gains (the training prompts' until the window holds enough), where ``s`` is the share
        left to quality choices once the window's forced ones (sessions held, spills) are
        counted. Between two recorded gains the request's key decides, alike on every
        router."""
        target = self.config.max_large_share
        assert target is not None
        share = target
        if self._window:
            n = len(self._window)
            forced = sum(past and not free for past, free in self._window) / n
            free_share = sum(free for _, free in self._window) / n
            share = (target - forced) / free_share if free_share > 0 else 0.0
        if share >= 1.0:
            return -math.inf
        gains = self._sorted if len(self._sorted) >= _MIN_WINDOW else self._prior
        if share <= 0.0 or not gains:
            return math.inf
        level = (1.0 - share) * (len(gains) - 1)
        low = gains[math.floor(level)]
        high = gains[math.ceil(level)]
        # Between two recorded gains, where exactly the threshold sits is a coin the request's
        # key tosses: equal gains then split at the target share on every router.
        return low + (high - low) * ((key % 1024) / 1023.0)

    def _record_gain(self, gain: float) -> None:
        if len(self._gains) == self._gains.maxlen:
            old = self._gains[0]
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._gains.append(gain)
        bisect.insort(self._sorted, gain)

    def _prior_gains(self) -> list[float]:
        """Gains of the first model's best rival at the training prompts' score quantiles."""
        scores = np.asarray(self.quality.score_quantiles_, dtype=np.float64)
        keys = [m.quality_key or m.model or m.name for m in self.config.models]
        rates = np.array([self.quality.win_rate(scores, k) for k in keys])
        return sorted(float(g) for g in rates[1:].max(axis=0) - rates[0])

    def status(self) -> dict[str, object]:
        """Decisions per model and reason, and the window's share past the first model."""
        past = [p for p, _ in self._window]
        share = sum(past) / len(past) if past else None
        return {
            "decisions": [
                {"model": m, "reason": r, "requests": n}
                for (m, r), n in sorted(self.decisions.items())
            ],
            "windowShareBeyondFirst": share,
        }


def cascade_stages(
    config: CascadeConfig, knowledge: PrefixKnowledge
) -> tuple[ModelModalityFilter, ModelCascadeFilter]:
    """The two filters for ``config``: its quality model (else the shipped one), and the
    shipped length model only when some model prices decode (``tpotS``)."""
    if config.quality_model is None:
        quality = load_default_quality_model()
    else:
        quality = load_quality_model(config.quality_model)
    length = None
    if any(m.tpot_s is not None for m in config.models):
        length = load_default_length_model()
    return ModelModalityFilter(config), ModelCascadeFilter(config, quality, knowledge, length)


def cascade_of(pipeline: RoutingPipeline) -> ModelCascadeFilter | None:
    """The pipeline's cascade stage, if it has one."""
    return next((f for f in pipeline.filters if isinstance(f, ModelCascadeFilter)), None)
