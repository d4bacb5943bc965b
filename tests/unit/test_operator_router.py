"""spec.routing made real: the router's objects, the Service turned to it, and everything
removed again when routing no longer asks for a router."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from llmd_builders import make_body, make_node
from pod_security import restricted_violations
from test_operator_reconcile import H100, FakeKube, _reconciler, _run

from goodput.api.llmdeployment import LLMDeployment
from goodput.api.router_config import RouterConfig
from goodput.operator import naming, router
from goodput.operator.settings import WorkloadSettings, parse_labels
from goodput.router.cli import route


def _obj(**spec: Any) -> LLMDeployment:
    body = make_body(**spec)
    body["metadata"]["uid"] = "uid-1"
    return LLMDeployment.model_validate(body)


def test_the_router_config_follows_spec_routing() -> None:
    obj = _obj(routing={"prefixAware": True, "router": {"boundedLoad": 2.0, "maxQueue": 10}})
    config = router.router_config(obj)
    assert [s.type for s in config.scorers] == ["prefix-cache", "slo-headroom", "least-load"]
    assert config.discovery is not None
    assert (config.discovery.namespace, config.discovery.service) == ("ml", "llama-replicas")
    assert config.bounded_load == 2.0 and config.flow.max_queue == 10
    both = router.router_config(_obj(routing={"prefixAware": True, "sessionAffinity": True}))
    assert [s.type for s in both.scorers][:2] == ["prefix-cache", "session-affinity"]
    lora = _obj(adapters=[{"name": "sql", "source": "org/sql"}])
    assert lora.spec.needs_router, "adapters need the router's adapter affinity"
    assert next(s.type for s in router.router_config(lora).scorers) == "adapter-affinity"
    # The ConfigMap holds what `goodput route --config` reads back.
    cm = router.config_map(obj)
    assert RouterConfig.model_validate(json.loads(cm["data"]["router.json"])) == config


def test_router_pods_are_small_restricted_and_reach_only_endpointslices() -> None:
    obj = _obj(routing={"prefixAware": True, "router": {"replicas": 2}})
    settings = WorkloadSettings(
        router_node_selector=parse_labels("pool=cpu"),
        router_tolerations=({"key": "k", "operator": "Exists", "effect": "NoSchedule"},),
        pod_api_server="172.20.0.1:6443",
    )
    dep = router.deployment(obj, settings)
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:4] == ["goodput", "route", "--config", "/etc/goodput/router.json"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["startupProbe"]["failureThreshold"] * 2 >= 180  # slow starts survive
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == "llama-router"
    assert pod["nodeSelector"] == {"pool": "cpu"} and pod["tolerations"][0]["key"] == "k"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBERNETES_SERVICE_HOST"] == "172.20.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert dep["spec"]["replicas"] == 2
    labels = dep["spec"]["template"]["metadata"]["labels"]
    # Not a serving pod: the gateways' selector and the replica bookkeeping must not match it.
    assert naming.LABEL_DEPLOYMENT not in labels and labels[naming.LABEL_ROUTER] == "llama"
    assert labels[naming.LABEL_NAME] == "goodput-router"
    account, role, binding = router.rbac(obj)
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    for item in router.objects(obj, settings):
        assert item["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_the_router_reads_load_reports_on_the_keyless_admin_port() -> None:
    obj = _obj(routing={"prefixAware": True})
    ports = router.replicas_service(obj)["spec"]["ports"]
    assert [(p["name"], p["port"], p["appProtocol"]) for p in ports] == [
        ("http", 8080, "http"),
        ("admin", 9090, "http"),
    ]
    config = router.router_config(obj)
    assert config.discovery is not None and config.discovery.load_port_name == "admin"
    assert config.upstream_tls is None


def test_with_tls_the_router_serves_https_and_verifies_the_gateways_by_the_services_name(
    tmp_path: Path,
) -> None:
    obj = _obj(routing={"prefixAware": True}, gateway={"tls": {"secretName": "llama-tls"}})
    config = router.router_config(obj)
    assert config.upstream_tls is not None
    assert config.upstream_tls.server_name == "llama.ml.svc"  # pods are dialled by IP
    assert config.upstream_tls.ca_file == "/etc/goodput-tls/ca.crt"
    # ... and `goodput route --config` reads it back.
    data = router.config_map(obj)["data"]["router.json"]
    assert RouterConfig.model_validate(json.loads(data)) == config
    ports = router.replicas_service(obj)["spec"]["ports"]
    assert [(p["name"], p["appProtocol"]) for p in ports] == [("http", "https"), ("admin", "http")]
    pod = router.deployment(obj, WorkloadSettings())["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    files = {f"/etc/goodput-tls/{n}": tmp_path / n for n in ("tls.crt", "tls.key")}
    files["/etc/goodput/router.json"] = tmp_path / "router.json"
    for path in files.values():
        path.write_text("{}")
    params = route.make_context("route", [str(files.get(a, a)) for a in container["command"][2:]])
    assert params.params["tls_cert"] == str(files["/etc/goodput-tls/tls.crt"])
    assert params.params["tls_key"] == str(files["/etc/goodput-tls/tls.key"])
    assert {"name": "tls", "mountPath": "/etc/goodput-tls", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert {"name": "tls", "secret": {"secretName": "llama-tls"}} in pod["volumes"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert not restricted_violations(pod, "router")
    plain = router.deployment(_obj(routing={"prefixAware": True}), WorkloadSettings())
    assert (
        "scheme"
        not in plain["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    )


def _kube(**spec: Any) -> FakeKube:
    kube = FakeKube([make_node("gpu-0", H100)])
    kube.add_parent(make_body(**spec))
    return kube


def test_routing_deploys_the_router_and_turning_it_off_removes_it() -> None:
    kube = _kube(replicas=2, routing={"prefixAware": True})
    r, _ = _reconciler(kube)
    _, status = _run(r, kube)
    kinds = sorted(k[0] for k in kube.objects)
    assert kinds == [
        "ConfigMap", "ConfigMap", "Deployment", "Deployment", "Deployment", "Role",
        "RoleBinding", "Service", "Service", "ServiceAccount",
    ]  # fmt: skip
    replicas = kube.list_deployments("ml", naming.selector_string("llama"))
    assert [d["metadata"]["name"] for d in replicas] == ["llama-r0", "llama-r1"]  # not the router
    assert status["router"] == "llama-router"
    svc = kube.objects[("Service", "ml", "llama")]
    assert svc["spec"]["selector"] == {naming.LABEL_ROUTER: "llama"}
    again = copy.deepcopy(kube.objects)
    _run(r, kube)
    assert kube.objects == again and not kube.deleted  # idempotent
    _, status = _run(r, kube, routing={"prefixAware": False})
    assert status["router"] is None
    assert sorted(kube.deleted) == sorted(
        f"{kind}/{name}" for kind, name in router.object_keys("llama")
    )
    assert sorted(k[0] for k in kube.objects) == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "Service",
    ]
    assert kube.objects[("Service", "ml", "llama")]["spec"]["selector"] == {
        naming.LABEL_DEPLOYMENT: "llama"
    }


def test_autoscaling_to_zero_puts_a_holding_router_before_the_replicas() -> None:
    """A deployment that may have no replica still needs something to take its requests: the
    router, which holds them (bounded) while the autoscaler brings a replica up."""
    autoscaled = {"enabled": True, "minReplicas": 0, "maxReplicas": 2}
    obj = _obj(replicas=0, autoscaling=autoscaled)
    assert obj.spec.needs_router and not obj.spec.routing.uses_router
    config = router.router_config(obj, WorkloadSettings(router_hold_s=42, router_hold_queue=7))
    assert (config.hold.max_queue, config.hold.max_wait_s) == (7, 42)
    assert [s.type for s in config.scorers] == ["slo-headroom", "least-load"]
    kept = _obj(replicas=1, autoscaling={**autoscaled, "minReplicas": 1})
    assert not kept.spec.needs_router  # never at zero: the Service leads to the gateways


CASCADE = {
    "cascade": {
        "models": [
            {"deployment": "mistral", "model": "mistral-7b",
             "qualityKey": "Mistral-7B-Instruct-v0.2"},
            {"deployment": "llama", "qualityKey": "gpt4_1106_preview", "multimodal": True,
             "tpotMs": 50},
        ],
        "maxLargeShare": 0.3,
    }
}  # fmt: skip


def test_a_cascade_routes_this_model_name_over_each_deployments_own_service() -> None:
    obj = _obj(routing=CASCADE)
    assert obj.spec.needs_router  # a cascade alone asks for a router
    config = router.router_config(obj)
    assert config.discovery is None and config.cascade is not None
    small, large = config.cascade.models
    assert (small.name, small.model, small.quality_key) == (
        "mistral", "mistral-7b", "Mistral-7B-Instruct-v0.2",
    )  # fmt: skip
    assert small.discovery is not None and small.discovery.service == "llama-cascade-0"
    # This deployment's own replicas, under its own model name.
    assert large.discovery is not None and large.discovery.service == "llama-replicas"
    assert (large.model, large.multimodal, large.tpot_s) == (obj.spec.model.name, True, 0.05)
    assert config.cascade.max_large_share == 0.3 and config.cascade.min_win_rate is None
    assert config.cascade.model_name == obj.spec.model.name  # what /v1/models lists
    assert config.filters[:3] == ["ready", "model-modality", "model-cascade"]
    services = {
        o["metadata"]["name"]: o for o in router.objects(obj, WorkloadSettings())
        if o["kind"] == "Service"
    }  # fmt: skip
    assert sorted(services) == ["llama-cascade-0", "llama-replicas"]
    other = services["llama-cascade-0"]
    assert other["spec"]["selector"] == naming.selector_labels("mistral")  # its gateways
    assert other["metadata"]["ownerReferences"][0]["name"] == "llama"  # owned here
    assert ("Service", "llama-cascade-0") in router.object_keys("llama")
    cm = router.config_map(obj)
    assert RouterConfig.model_validate(json.loads(cm["data"]["router.json"])) == config
