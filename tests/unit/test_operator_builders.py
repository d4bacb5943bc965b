"""The owned objects built from an LLMDeployment: Deployment, Service, gateway ConfigMap."""

from __future__ import annotations

import json
from typing import Any

from llmd_builders import make_body

from goodput.api.gateway_config import AdapterCatalog, GatewayConfig
from goodput.api.llmdeployment import LLMDeployment
from goodput.operator import gateway_config, naming, service, workload
from goodput.operator.placement.selection import Placement
from goodput.operator.settings import WorkloadSettings, parse_toleration

H100 = "NVIDIA-H100-80GB-HBM3"
SETTINGS = WorkloadSettings(engine_image="vllm/vllm-openai:test", gateway_image="goodput:test")


def _obj(**spec: Any) -> LLMDeployment:
    return LLMDeployment.model_validate(make_body(**spec))


def _placement(tp: int = 1, pp: int = 1) -> Placement:
    return Placement(H100, tp, pp, ("n1",))


def _containers(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_engine_args_follow_the_spec() -> None:
    obj = _obj(
        model={
            "name": "llama",
            "source": "meta-llama/Meta-Llama-3-70B-Instruct",
            "maxModelLen": 8192,
            "dtype": "bfloat16",
            "revision": "abc",
        },
        kvCache={"prefixCaching": False, "dtype": "fp8", "cpuOffloadGiB": 16},
        resources={"gpuMemoryUtilization": 0.85},
        engine={"args": ["--max-num-seqs", "64"]},
    )
    args = workload.engine_args(obj, _placement(4, 2), workload.Volumes())
    assert _flag(args, "--model") == "meta-llama/Meta-Llama-3-70B-Instruct"
    assert _flag(args, "--served-model-name") == "llama"
    assert _flag(args, "--tensor-parallel-size") == "4"
    assert _flag(args, "--pipeline-parallel-size") == "2"
    assert _flag(args, "--max-model-len") == "8192"
    assert _flag(args, "--gpu-memory-utilization") == "0.85"
    assert _flag(args, "--dtype") == "bfloat16"
    assert _flag(args, "--revision") == "abc"
    assert _flag(args, "--kv-cache-dtype") == "fp8"
    assert _flag(args, "--kv-offloading-size") == "16"
    assert _flag(args, "--host") == "127.0.0.1" and _flag(args, "--port") == "8000"
    assert "--no-enable-prefix-caching" in args and "--enable-prefix-caching" not in args
    assert args[-2:] == ["--max-num-seqs", "64"], "user args come last so they win"


def test_lora_capacity_is_in_the_args_and_adapters_claims_are_mounted_once() -> None:
    obj = _obj(
        model={"name": "mistral", "source": "pvc://models/mistral-7b"},
        adapters=[
            {"name": "sql", "source": "pvc://models/adapters/sql"},
            {"name": "chat", "source": "org/chat-lora"},
        ],
    )
    dep = workload.deployment(obj, _placement(), SETTINGS, "h")
    engine = _containers(dep)["engine"]
    args = engine["args"]
    assert _flag(args, "--model") == "/models/models/mistral-7b"
    assert "--enable-lora" in args and _flag(args, "--max-loras") == "4"
    assert (_flag(args, "--max-lora-rank"), _flag(args, "--max-cpu-loras")) == ("16", "16")
    assert "--lora-modules" not in args, "the gateway loads adapters at runtime"
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in engine["env"]
    catalog = AdapterCatalog.model_validate_json(
        gateway_config.config_map(obj)["data"]["adapters.json"]
    )
    assert [(a.name, a.path) for a in catalog.adapters] == [
        ("sql", "/models/models/adapters/sql"),
        ("chat", "org/chat-lora"),
    ]
    pvcs = [v for v in dep["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert pvcs == [
        {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    ]
    assert {"name": "pvc-0", "mountPath": "/models/models", "readOnly": True} in engine[
        "volumeMounts"
    ]


def test_deployment_pod_shape() -> None:
    obj = _obj(
        replicas=3,
        engine={
            "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}}]
        },
    )
    settings = WorkloadSettings(
        engine_image="e:1",
        gateway_image="g:1",
        tolerations=(parse_toleration("kwok=fake:NoSchedule"),),
    )
    dep = workload.deployment(obj, _placement(2), settings, "cafe", replica=2, node="gpu-7")
    meta, spec = dep["metadata"], dep["spec"]
    assert meta["name"] == "llama-r2"
    assert meta["ownerReferences"][0] == {
        "apiVersion": "goodput.dev/v1alpha1",
        "kind": "LLMDeployment",
        "name": "llama",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert meta["labels"][naming.LABEL_MANAGED_BY] == "goodput"
    assert meta["labels"][naming.LABEL_DEPLOYMENT] == "llama"
    assert meta["labels"][naming.LABEL_REPLICA] == "2"
    assert spec["replicas"] == 1, "one Deployment per replica"
    assert spec["selector"]["matchLabels"] == {
        naming.LABEL_DEPLOYMENT: "llama",
        naming.LABEL_REPLICA: "2",
    }
    pod = spec["template"]
    assert pod["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH] == "cafe"
    assert pod["metadata"]["labels"][naming.LABEL_DEPLOYMENT] == "llama"
    assert pod["metadata"]["labels"][naming.LABEL_REPLICA] == "2"
    engine, gateway = _containers(dep)["engine"], _containers(dep)["gateway"]
    assert engine["image"] == "e:1" and gateway["image"] == "g:1"
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "ports" not in engine, "the engine listens on loopback only"
    assert engine["env"][-1] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}},
    }, "the spec's env last, after the engine's own"
    assert gateway["command"][:4] == ["goodput", "serve", "--config", "/etc/goodput/gateway.json"]
    assert gateway["command"][gateway["command"].index("--host") + 1] == "0.0.0.0"
    assert gateway["ports"][0]["containerPort"] == 8080
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    term = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": [H100]}
    ]
    assert term["nodeSelectorTerms"][0]["matchFields"] == [
        {"key": "metadata.name", "operator": "In", "values": ["gpu-7"]}
    ]
    unpinned = workload.deployment(obj, _placement(2), settings, "cafe")["spec"]["template"]
    (any_node,) = unpinned["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert "matchFields" not in any_node, "no node chosen: any node of the GPU type"
    tolerations = pod["spec"]["tolerations"]
    assert {"key": "kwok", "operator": "Equal", "value": "fake", "effect": "NoSchedule"} in (
        tolerations
    )
    cm_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "gateway-config")
    assert cm_volume["configMap"]["name"] == naming.config_map_name("llama")


def test_spec_images_override_the_operator_defaults() -> None:
    obj = _obj(engine={"image": "vllm/vllm-openai:v9"}, gateway={"image": "gw:9"})
    containers = _containers(workload.deployment(obj, _placement(), SETTINGS, "h"))
    assert containers["engine"]["image"] == "vllm/vllm-openai:v9"
    assert containers["gateway"]["image"] == "gw:9"


def test_gateway_config_round_trips_through_the_contract() -> None:
    obj = _obj(
        slo={"ttftMs": 300, "tpotMs": 40, "e2eMs": 9000, "percentile": 95},
        adapters=[{"name": "a1", "source": "x/y"}],
        scheduling={
            "policy": "fcfs",
            "overload": "best-effort",
            "maxQueueDelayMs": 2000,
            "priorityClasses": [
                {"name": "gold", "rank": 0},
                {"name": "bulk", "rank": 5, "sloScale": 3},
            ],
            "defaultPriority": "bulk",
        },
    )
    cm = gateway_config.config_map(obj)
    parsed = GatewayConfig.model_validate(json.loads(cm["data"]["gateway.json"]))
    assert parsed.deployment == "llama" and parsed.namespace == "ml"
    assert parsed.served_model_name == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert parsed.lora is not None and parsed.lora.catalog_path == "/etc/goodput/adapters.json"
    assert (parsed.slo.ttft_ms, parsed.slo.tpot_ms, parsed.slo.e2e_ms) == (300, 40, 9000)
    assert parsed.slo.percentile == 95
    assert (parsed.policy, parsed.overload) == ("fcfs", "best-effort")
    assert parsed.max_queue_delay_ms == 2000
    assert [(p.name, p.rank, p.slo_scale) for p in parsed.priority_classes] == [
        ("gold", 0, 1.0),
        ("bulk", 5, 3.0),
    ]
    assert parsed.default_priority == "bulk"
    assert parsed.engine_url == "http://127.0.0.1:8000"


def test_config_hash_changes_only_with_content() -> None:
    a = gateway_config.config_map(_obj())["data"]["gateway.json"]
    b = gateway_config.config_map(_obj())["data"]["gateway.json"]
    c = gateway_config.config_map(_obj(scheduling={"policy": "fcfs"}))["data"]["gateway.json"]
    assert gateway_config.config_hash(a) == gateway_config.config_hash(b)
    assert gateway_config.config_hash(a) != gateway_config.config_hash(c)


def test_service_and_endpoint() -> None:
    svc = service.service(_obj())
    assert svc["spec"]["selector"] == {naming.LABEL_DEPLOYMENT: "llama"}
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["sessionAffinity"] == "None"
    # With routing asked for, the Service leads to the router (which keeps the sessions).
    routed = service.service(_obj(routing={"sessionAffinity": True}))
    assert routed["spec"]["selector"] == {naming.LABEL_ROUTER: "llama"}
    assert routed["spec"]["sessionAffinity"] == "None"
    assert service.endpoint(_obj()) == "http://llama.ml.svc:80/v1"


def test_adding_or_removing_an_adapter_leaves_the_pod_template_as_it_is() -> None:
    """Adapters are tenants of running pods: only the catalog (outside the rolling hash)
    changes, so no rollout restarts the replicas."""

    def template(adapters: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        obj = _obj(lora={"enabled": True}, adapters=adapters)
        cm = gateway_config.config_map(obj)
        digest = gateway_config.rolling_hash(cm)
        return workload.pod_template(obj, _placement(), SETTINGS, digest), cm

    none, cm0 = template([])
    one, cm1 = template([{"name": "sql", "source": "org/sql-lora", "priority": "default"}])
    two, cm2 = template(
        [
            {"name": "sql", "source": "org/sql-lora"},
            {"name": "chat", "source": "org/chat-lora", "slo": {"ttftMs": 900}},
        ]
    )
    assert none == one == two
    assert (
        cm0["data"]["adapters.json"] != cm1["data"]["adapters.json"] != cm2["data"]["adapters.json"]
    )
    assert cm0["data"]["gateway.json"] == cm2["data"]["gateway.json"]
