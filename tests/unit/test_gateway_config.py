import pytest
from pydantic import ValidationError

from goodput.api.gateway_config import GatewayConfig


def test_camel_case_config_parses() -> None:
    cfg = GatewayConfig.model_validate(
        {"deployment": "d", "servedModelName": "m", "slo": {"ttftMs": 500, "tpotMs": 50}}
    )
    assert cfg.slo.ttft_ms == 500
    assert cfg.policy == "slo"
    assert cfg.priority_classes[0].name == "default"


def test_unknown_default_priority_is_rejected() -> None:
    with pytest.raises(ValidationError, match="defaultPriority"):
        GatewayConfig.model_validate(
            {
                "deployment": "d",
                "servedModelName": "m",
                "slo": {"ttftMs": 500, "tpotMs": 50},
                "defaultPriority": "gold",
            }
        )
