"""The CRD and the pydantic model are one source: these tests keep them so."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from goodput.api import crd as crdgen
from goodput.api.llmdeployment import LLMDeployment, LLMDeploymentSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MINIMAL: dict[str, Any] = {
    "model": {"name": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "slo": {"ttftMs": 500, "tpotMs": 50},
}


def _schema() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "crds" / "llmdeployment.yaml").read_text())
    (version,) = doc["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_committed_crd_is_the_generator_output() -> None:
    committed = (ROOT / "crds" / "llmdeployment.yaml").read_text()
    assert committed == crdgen.render(), "run: python -m goodput.api.crd"


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += _walk(child, f"{path}.{name}")
    if "items" in node:
        found += _walk(node["items"], f"{path}[]")
    return found


def test_every_field_is_documented_and_structural() -> None:
    for path, node in _walk(_schema(), ""):
        assert "type" in node, path
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "additionalProperties", "title"):
            assert banned not in node, f"{path} has {banned}"
    for path, node in _walk(_schema(), ""):
        for name, child in node.get("properties", {}).items():
            if f"{path}.{name}" != ".metadata":  # the API server forbids anything but its type
                assert child.get("description"), f"{path}.{name} lacks a description"


def _apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Kubernetes' structural defaulting: parent defaults first, then into the children."""
    if isinstance(value, dict) and "properties" in schema:
        for name, child in schema["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = _apply_defaults(value[name], child)
    elif isinstance(value, list) and "items" in schema:
        return [_apply_defaults(v, schema["items"]) for v in value]
    return value


def test_api_server_defaults_equal_pydantic_defaults() -> None:
    spec_schema = _schema()["properties"]["spec"]
    defaulted = _apply_defaults(copy.deepcopy(MINIMAL), spec_schema)
    from_server = LLMDeploymentSpec.model_validate(defaulted)
    from_python = LLMDeploymentSpec.model_validate(MINIMAL)
    assert from_server == from_python
    # and defaulting filled every optional object the operator reads
    assert set(defaulted) >= {"autoscaling", "resources", "scheduling", "kvCache", "routing"}
    assert defaulted["scheduling"]["priorityClasses"][0]["name"] == "default"


def _rule_messages() -> set[str]:
    return {
        rule["message"]
        for _, node in _walk(_schema(), "")
        for rule in node.get("x-kubernetes-validations", [])
    }


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("zero ttft", {"slo": {"ttftMs": 0, "tpotMs": 50}}, "slo.ttftMs must be a positive"),
    ("percentile 100", {"slo": {"ttftMs": 1, "tpotMs": 1, "percentile": 100}}, "slo.percentile"),
    ("attainment > 1", {"slo": {"ttftMs": 1, "tpotMs": 1, "attainment": 1.5}}, "slo.attainment"),
    (
        "min > max",
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        "autoscaling.minReplicas must not exceed",
    ),
    (
        "replicas outside bounds",
        {"replicas": 9, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}},
        "replicas must lie within",
    ),
    (
        "idle period without scale to zero",
        {"autoscaling": {"minReplicas": 1, "scaleToZeroAfterSeconds": 600}},
        "autoscaling.scaleToZeroAfterSeconds needs minReplicas 0",
    ),
    (
        "tp*pp != gpus",
        {"resources": {"gpusPerReplica": 4, "parallelism": {"tensor": 2, "pipeline": 1}}},
        "resources.gpusPerReplica must equal parallelism.tensor * parallelism.pipeline",
    ),
    (
        "gpus not a multiple of tp",
        {"resources": {"gpusPerReplica": 3, "parallelism": {"tensor": 2}}},
        "resources.gpusPerReplica must be a multiple of parallelism.tensor",
    ),
    (
        "duplicate adapters",
        {"adapters": [{"name": "a", "source": "x"}, {"name": "a", "source": "y"}]},
        "adapters names must be unique",
    ),
    (
        "adapter named like the model",
        {"model": {"name": "m"}, "adapters": [{"name": "m", "source": "x"}]},
        "an adapter may not be named like spec.model.name",
    ),
    (
        "adapter with an unknown priority class",
        {"adapters": [{"name": "a", "source": "x", "priority": "gold"}]},
        "an adapter's priority must name one of scheduling.priorityClasses",
    ),
    (
        "adapter with a zero ttft",
        {"adapters": [{"name": "a", "source": "x", "slo": {"ttftMs": 0}}]},
        "an adapter's slo.ttftMs must be a positive",
    ),
    ("cpu loras below loras", {"lora": {"maxLoras": 8, "maxCpuLoras": 4}}, "lora.maxCpuLoras"),
    ("lora rank vLLM refuses", {"lora": {"maxRank": 12}}, "lora.maxRank must be one of"),
    (
        "unknown default priority",
        {"scheduling": {"defaultPriority": "gold"}},
        "scheduling.defaultPriority must name one of",
    ),
    (
        "duplicate priority classes",
        {"scheduling": {"priorityClasses": [{"name": "a"}, {"name": "a"}], "defaultPriority": "a"}},
        "scheduling.priorityClasses names must be unique",
    ),
    (
        "utilization > 1",
        {"resources": {"gpuMemoryUtilization": 1.2}},
        "resources.gpuMemoryUtilization is a fraction",
    ),
    (
        "env value and valueFrom",
        {
            "engine": {
                "env": [
                    {
                        "name": "A",
                        "value": "1",
                        "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                    }
                ]
            }
        },
        "either value or valueFrom",
    ),
    (
        "tls secret name",
        {"gateway": {"tls": {"secretName": "Serving_Cert"}}},
        "gateway.tls.secretName must name a Secret",
    ),
    (
        "cascade with two targets",
        {
            "routing": {
                "cascade": {
                    "models": [{"deployment": "small"}, {"deployment": "large"}],
                    "maxLargeShare": 0.3,
                    "minWinRate": 0.2,
                }
            }
        },
        "routing.cascade sets exactly one target",
    ),
    (
        "cascade without a target",
        {"routing": {"cascade": {"models": [{"deployment": "a"}, {"deployment": "b"}]}}},
        "routing.cascade sets exactly one target",
    ),
    (
        "cascade naming a deployment twice",
        {
            "routing": {
                "cascade": {
                    "models": [{"deployment": "small"}, {"deployment": "small"}],
                    "minWinRate": 0.2,
                }
            }
        },
        "routing.cascade.models must name each deployment once",
    ),
    (
        "tls secret name with a trailing newline",
        {"gateway": {"tls": {"secretName": "cert\n"}}},
        "gateway.tls.secretName must name a Secret",
    ),
]


@pytest.mark.parametrize(("case", "patch", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_python_rejects_what_cel_rejects_with_the_same_message(
    case: str, patch: dict[str, Any], message: str
) -> None:
    assert any(message in m for m in _rule_messages()), f"no CEL rule says {message!r}"
    with pytest.raises(ValidationError, match=message.replace("*", r"\*").replace("(", r"\(")):
        LLMDeploymentSpec.model_validate({**MINIMAL, **patch})


def test_consistent_parallelism_is_accepted() -> None:
    spec = LLMDeploymentSpec.model_validate(
        {**MINIMAL, "resources": {"gpusPerReplica": 4, "parallelism": {"tensor": 2, "pipeline": 2}}}
    )
    assert spec.resources.parallelism.tensor == 2


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_parse(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "LLMDeployment":
            obj = LLMDeployment.model_validate(doc)
            assert obj.spec.slo.ttft_ms > 0


def test_generator_check_mode(tmp_path: Path) -> None:
    out = tmp_path / "crd.yaml"
    assert crdgen.main(["-o", str(out)]) == 0
    assert crdgen.main(["-o", str(out), "--check"]) == 0
    out.write_text(out.read_text() + "# edited\n")
    assert crdgen.main(["-o", str(out), "--check"]) == 1


def test_committed_reference_is_the_generator_output() -> None:
    from goodput.api import crd_reference

    committed = (ROOT / "docs" / "crd-reference.md").read_text()
    assert committed == crd_reference.render(), "run: python -m goodput.api.crd_reference"
    # every field of the schema appears in the reference
    for path, _node in _walk(_schema()["properties"]["spec"], "spec"):
        if path != "spec" and not path.endswith("[]"):
            assert f"`{path}`" in committed, path
