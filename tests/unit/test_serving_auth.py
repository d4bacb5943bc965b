"""Keys, tenants and quotas (``goodput.serving.auth``) and how a tenant's headers become its
objective (``goodput.serving.slo``): pure parts, with an injected clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from goodput.api.gateway_config import GatewayConfig
from goodput.serving.auth import AccessDenied, KeyStore, Quotas, SLOFloor, Tenant, hash_key
from goodput.serving.openai_errors import OpenAIError
from goodput.serving.slo import MAX_OBJECTIVE_MS, SLOResolver


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_a_broken_update_of_the_keys_keeps_the_previous_ones(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(json.dumps({"keys": [hash_key("k1")]}))
    clock = Clock()
    store = KeyStore(tmp_path, clock=clock)
    assert store.authenticate(bearer("k1")).name == "a"
    (tmp_path / "a.yaml").write_text("keys: [not-a-hash]")
    clock.now += 2
    assert store.authenticate(bearer("k1")).name == "a"  # logged, not applied
    (tmp_path / "b.yaml").write_text(json.dumps({"keys": [hash_key("k1")]}))
    (tmp_path / "a.yaml").unlink()
    clock.now += 2
    assert store.authenticate(bearer("k1")).name == "b"
    with pytest.raises(AccessDenied) as missing:
        store.authenticate({})
    assert missing.value.status == 401
    assert KeyStore(tmp_path, anonymous=Tenant("anonymous")).authenticate({}).name == "anonymous"


def test_a_key_claimed_by_two_tenants_fails_the_start(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(json.dumps({"keys": [hash_key("same")]}))
    with pytest.raises(ValueError, match="also"):
        KeyStore(tmp_path)


def test_token_quota_is_debited_after_the_fact_and_refills() -> None:
    clock = Clock()
    quotas = Quotas(clock)
    tenant = Tenant("t", tokens_per_minute=600)  # 10 tokens per second
    quotas.admit(tenant)
    quotas.charge(tenant, 900)  # one large request overdraws the budget
    with pytest.raises(AccessDenied) as over:
        quotas.admit(tenant)
    assert over.value.status == 429 and over.value.retry_after_s == pytest.approx(30.1)
    clock.now += 31
    quotas.admit(tenant)


CONFIG = GatewayConfig.model_validate(
    {
        "deployment": "d",
        "servedModelName": "m",
        "slo": {"ttftMs": 1000, "tpotMs": 100},
        "priorityClasses": [{"name": "default"}, {"name": "fast", "sloScale": 0.5}],
    }
)


def test_header_objectives_are_clamped_to_what_the_key_allows() -> None:
    resolve = SLOResolver(CONFIG).resolve
    anonymous = Tenant("anonymous", priorities=("default",))
    tight = resolve({"x-goodput-slo-tpot-ms": "45", "x-goodput-slo-ttft-ms": "1"}, anonymous)
    assert (tight.tpot_s, tight.ttft_s) == (0.1, 1.0)  # no right to tighten: the class's
    loose = resolve({"x-goodput-slo-tpot-ms": "1.79e308"}, anonymous)
    assert loose.tpot_s == MAX_OBJECTIVE_MS / 1000  # clamped, not an overflow
    assert resolve({"x-goodput-slo-e2e-ms": "5"}, anonymous).e2e_s is None  # none to add
    allowed = Tenant("t", slo_floor=SLOFloor(minTpotMs=40))
    own = resolve({"x-goodput-slo-tpot-ms": "45"}, allowed)
    assert own.tpot_s == 0.045 and own.batch_limit_tpot_s == 0.1  # its own, not the batch's
    assert resolve({"x-goodput-slo-tpot-ms": "1"}, allowed).tpot_s == 0.04
    fast = resolve({"x-goodput-priority": "fast"}, allowed)
    assert fast.batch_limit_tpot_s == 0.05  # a class the key allows may set the batch
    with pytest.raises(AccessDenied) as forbidden:
        resolve({"x-goodput-priority": "fast"}, anonymous)
    assert forbidden.value.status == 403
    for bad in ("nan", "-1", "0", "fast"):
        with pytest.raises(OpenAIError):
            resolve({"x-goodput-slo-ttft-ms": bad}, allowed)
