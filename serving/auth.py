"""Who may use the data path, what of the scheduler each caller may steer, and how much.

Kept free of any web framework so that every front door — the in-pod gateway and the cluster
router — checks a request the same way: ``KeyStore.authenticate(headers)`` gives the caller's
``Tenant`` or raises ``AccessDenied`` (which the HTTP layer turns into an OpenAI-format error),
and ``Quotas`` meters each tenant's requests and tokens.

Keys live in a directory mounted from a Kubernetes Secret, one file per tenant (the Secret's key
is the file name, ``<tenant>.yaml``)::

    keys: ["sha256:9f86d0…"]          # SHA-256 of each API key: the Secret never holds a key
    priorities: [default, interactive] # classes it may ask for; the first is its default
    slo: {minTtftMs: 200, minTpotMs: 40}  # the tightest objectives its headers may ask for
    requestsPerSecond: 5               # sustained rate, bursts up to ``burst``
    burst: 20
    tokensPerMinute: 200000            # prompt + output tokens

Only hashes are at rest, so reading the Secret (or a backup of etcd) reveals no key; API keys are
random and long, so a fast hash is enough (no password stretching). Kubernetes updates a mounted
Secret in place (an atomic swap of the directory's ``..data`` link): the store notices a change of
the files within ``reload_interval_s`` and swaps the tenants in without a restart; a broken update
is logged and the previous tenants stay.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
#: Tenant files: ``<name>.yaml`` / ``.yml`` / ``.json``; dot-files are the Secret volume's own.
_SUFFIXES = (".yaml", ".yml", ".json")


class AccessDenied(Exception):
    """A request turned away before it costs anything: 401 (no or bad key), 403 (asks for what its
    key does not allow) or 429 (over its quota, with ``retry_after_s``)."""

    def __init__(
        self, status: int, message: str, code: str, *, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after_s = retry_after_s


class SLOFloor(BaseModel):
    """The tightest objectives a tenant's ``x-goodput-slo-*`` headers may ask for (milliseconds);
    an objective left out may only be loosened, never tightened, by that tenant."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    min_ttft_ms: float | None = Field(default=None, gt=0, alias="minTtftMs")
    min_tpot_ms: float | None = Field(default=None, gt=0, alias="minTpotMs")
    min_e2e_ms: float | None = Field(default=None, gt=0, alias="minE2eMs")


class TenantSpec(BaseModel):
    """One tenant file, as written into the Secret."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    keys: list[str] = Field(min_length=1, description="'sha256:<hex>' of each API key.")
    priorities: list[str] | None = Field(
        default=None, description="Priority classes it may ask for (first: its default)."
    )
    slo: SLOFloor = Field(default_factory=SLOFloor)
    requests_per_second: float | None = Field(default=None, gt=0, alias="requestsPerSecond")
    burst: int | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0, alias="tokensPerMinute")


@dataclass(frozen=True, slots=True)
class Tenant:
    """An authenticated caller and what it may do. ``priorities`` ``None``: any class."""

    name: str
    priorities: tuple[str, ...] | None = None
    slo_floor: SLOFloor = field(default_factory=SLOFloor)
    requests_per_second: float | None = None
    burst: int | None = None
    tokens_per_minute: float | None = None

    @property
    def default_priority(self) -> str | None:
        return self.priorities[0] if self.priorities else None

    def may_use(self, priority: str) -> bool:
        return self.priorities is None or priority in self.priorities

    @classmethod
    def from_spec(cls, name: str, spec: TenantSpec) -> Tenant:
        return cls(
            name=name,
            priorities=None if spec.priorities is None else tuple(spec.priorities),
            slo_floor=spec.slo,
            requests_per_second=spec.requests_per_second,
            burst=spec.burst,
            tokens_per_minute=spec.tokens_per_minute,
        )


def hash_key(key: str) -> str:
    """How a key is written into a tenant file: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (what OpenAI clients send), else ``None``."""
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def load_tenants(directory: Path) -> dict[str, Tenant]:
    """Key hash → tenant, from every tenant file in ``directory``; raises ``ValueError`` on a
    broken file or a key hash claimed by two tenants."""
    by_hash: dict[str, Tenant] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.suffix not in _SUFFIXES or not path.is_file():
            continue
        name = path.stem
        try:
            spec = TenantSpec.model_validate(yaml.safe_load(path.read_text()))
        except (yaml.YAMLError, ValidationError, OSError) as exc:
            raise ValueError(f"tenant file {path.name}: {exc}") from exc
        tenant = Tenant.from_spec(name, spec)
        for digest in spec.keys:
            digest = digest.strip().lower()
            if not digest.startswith("sha256:") or len(digest) != 7 + 64:
                raise ValueError(f"tenant file {path.name}: a key is not 'sha256:<64 hex>'")
            if digest in by_hash:
                raise ValueError(
                    f"tenant file {path.name}: a key is also {by_hash[digest].name!r}'s"
                )
            by_hash[digest] = tenant
    return by_hash


class KeyStore:
    """API keys → tenants, from a directory of tenant files, reloaded when the files change.

    ``anonymous``: the tenant a request without a key is served as (``None``: it gets 401).
    Where there are keys, a request that presents one must present a valid one, anonymous
    access or not (a mistyped key is an error, not a silent downgrade); with no key directory
    at all, keys are not looked at and everyone is anonymous (OpenAI clients always send one).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        *,
        anonymous: Tenant | None = None,
        reload_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = None if directory is None else Path(directory)
        self.anonymous = anonymous
        self._reload_interval = reload_interval_s
        self._clock = clock
        self._checked_at = -math.inf
        self._signature: tuple[tuple[str, int, int], ...] = ()
        self._by_hash: dict[str, Tenant] = {}
        self._lock = threading.Lock()
        if self.directory is not None:
            self._signature = self._files_signature()
            self._by_hash = load_tenants(self.directory)  # a broken Secret fails the start
            self._checked_at = clock()

    @property
    def tenants(self) -> list[str]:
        return sorted({t.name for t in self._by_hash.values()})

    def authenticate(self, headers: Mapping[str, str]) -> Tenant:
        key = bearer_token(headers)
        if self.directory is None and self.anonymous is not None:
            return self.anonymous
        if key is None:
            if self.anonymous is not None:
                return self.anonymous
            raise AccessDenied(
                401,
                "Missing API key: send 'Authorization: Bearer <key>'.",
                "invalid_api_key",
            )
        self._maybe_reload()
        tenant = self._by_hash.get(hash_key(key))
        if tenant is None:
            raise AccessDenied(401, "Incorrect API key provided.", "invalid_api_key")
        return tenant

    def _files_signature(self) -> tuple[tuple[str, int, int], ...]:
        assert self.directory is not None
        entries = []
        try:
            for path in self.directory.iterdir():
                if path.name.startswith("."):
                    continue
                stat = path.stat()  # follows the Secret volume's links to the current data
                entries.append((path.name, stat.st_mtime_ns, stat.st_ino))
        except OSError:
            return ()
        return tuple(sorted(entries))

    def _maybe_reload(self) -> None:
        if self.directory is None:
            return
        now = self._clock()
        if now - self._checked_at < self._reload_interval:
            return
        with self._lock:
            self._checked_at = now
            signature = self._files_signature()
            if signature == self._signature:
                return
            self._signature = signature
            try:
                by_hash = load_tenants(self.directory)
            except (ValueError, OSError) as exc:
                log.error("API keys not reloaded, keeping the previous ones: %s", exc)
                return
            self._by_hash = by_hash
            log.info("API keys reloaded: %d keys of %d tenants", len(by_hash), len(self.tenants))


class _Bucket:
    """A token bucket: ``capacity`` at most, refilled at ``rate`` per second; may go negative
    (a debit after the fact), and then admits nothing until refilled above zero."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.at = now

    def refill(self, now: float) -> float:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        return self.level

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.rate)


class Quotas:
    """Each tenant's request rate (``requestsPerSecond``, ``burst``) and token budget
    (``tokensPerMinute``: prompt and output tokens, debited when a request ends — its size is
    known only then — so one request may overdraw the budget, and the next waits for it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    def admit(self, tenant: Tenant) -> None:
        """Take one request from the tenant's rate; raise ``AccessDenied`` (429) if over."""
        now = self._clock()
        tokens = self._token_bucket(tenant, now)
        if tokens is not None and tokens.refill(now) <= 0:
            raise AccessDenied(
                429,
                f"Tenant {tenant.name!r} used its {tenant.tokens_per_minute:.0f} tokens per "
                "minute; retry later.",
                "tokens_quota_exceeded",
                retry_after_s=tokens.seconds_until(1.0),
            )
        if tenant.requests_per_second is None:
            return
        bucket = self._requests.get(tenant.name)
        if bucket is None or bucket.rate != tenant.requests_per_second:
            burst = tenant.burst or max(1, math.ceil(tenant.requests_per_second))
            bucket = _Bucket(tenant.requests_per_second, burst, now)
            self._requests[tenant.name] = bucket
        if bucket.refill(now) < 1.0:
            raise AccessDenied(
                429,
                f"Tenant {tenant.name!r} is over its rate of {tenant.requests_per_second:g} "
                "requests per second; retry later.",
                "rate_limit_exceeded",
                retry_after_s=bucket.seconds_until(1.0),
            )
        bucket.level -= 1.0

    def charge(self, tenant: Tenant, tokens: float) -> None:
        """Debit the tokens a finished (or failed) request used."""
        bucket = self._token_bucket(tenant, self._clock())
        if bucket is not None and tokens > 0:
            bucket.refill(self._clock())
            bucket.level -= tokens

    def _token_bucket(self, tenant: Tenant, now: float) -> _Bucket | None:
        if tenant.tokens_per_minute is None:
            return None
        bucket = self._tokens.get(tenant.name)
        if bucket is None or bucket.capacity != tenant.tokens_per_minute:
            bucket = _Bucket(tenant.tokens_per_minute / 60.0, tenant.tokens_per_minute, now)
            self._tokens[tenant.name] = bucket
        return bucket
