"""`helm template` of the chart for the main value combinations, and `helm lint`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helm_chart import CHART, PROMETHEUS_OPERATOR_APIS, REPO, ChartRenderer, RenderError

MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def operator_pod(rendered: Any) -> dict[str, Any]:
    spec: dict[str, Any] = rendered.one("StatefulSet")["spec"]["template"]["spec"]
    return spec


def operator_container(rendered: Any) -> dict[str, Any]:
    containers = operator_pod(rendered)["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def test_helm_lint_is_clean(helm: Path) -> None:
    for extra in ([], ["--set", "operator.watchNamespace=team-a"]):
        proc = subprocess.run(
            [str(helm), "lint", "--strict", str(CHART), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "0 chart(s) failed" in proc.stdout
        assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_defaults_run_two_peered_replicas_cluster_wide(chart: ChartRenderer) -> None:
    r = chart.render()
    sts = r.one("StatefulSet")
    assert sts["metadata"]["namespace"] == "goodput-system"
    assert sts["spec"]["replicas"] == 2
    args = operator_container(r)["args"]
    assert args[:2] == ["operator", "run"]
    assert "--all-namespaces" in args
    assert not any(a.startswith("--namespace") for a in args)
    assert "--peering=gp-goodput" in args
    assert "--metrics-port=8080" in args
    assert "--metrics-host=0.0.0.0" in args, "Prometheus scrapes the pod IP"
    assert "--liveness-endpoint=http://0.0.0.0:8081/healthz" in args
    # Distinct kopf priorities per replica: the StatefulSet index, through the downward API.
    assert "--priority=$(GOODPUT_PEERING_PRIORITY)" in args
    env = {e["name"]: e for e in operator_container(r)["env"]}
    field = env["GOODPUT_PEERING_PRIORITY"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.labels['apps.kubernetes.io/pod-index']"
    peering = r.one("ClusterKopfPeering")
    assert peering["metadata"]["name"] == "gp-goodput"
    assert not r.all("KopfPeering")
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert "podAntiAffinity" in operator_pod(r)["affinity"]
    assert operator_pod(r)["serviceAccountName"] == r.one("ServiceAccount")["metadata"]["name"]


def test_crds_include_llmdeployment_and_kopf_peerings(chart: ChartRenderer) -> None:
    names = {d["metadata"]["name"] for d in chart.render().all("CustomResourceDefinition")}
    assert names == {
        "llmdeployments.goodput.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }


def test_chart_crds_are_the_repository_crds() -> None:
    """crds/ is the one source: the chart's crds/ links to it (Helm follows the link when it loads
    or packages the chart), so there is no copy to keep in step."""
    sources = sorted((REPO / "crds").glob("*.yaml"))
    assert sources, "no CRDs in crds/"
    for source in sources:
        link = CHART / "crds" / source.name
        assert link.is_symlink(), f"{link} must be a link: ln -s ../../../crds/{source.name} {link}"
        assert link.resolve() == source.resolve()


def test_pod_security_is_restricted(chart: ChartRenderer) -> None:
    r = chart.render()
    pod = operator_pod(r)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = operator_container(r)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_probes_and_resources(chart: ChartRenderer) -> None:
    c = operator_container(chart.render())
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert c["resources"]["limits"]["memory"] == "512Mi"


def test_no_monitoring_objects_without_the_prometheus_operator(chart: ChartRenderer) -> None:
    r = chart.render()
    assert not MONITORING_KINDS & set(r.kinds())
    assert r.notes is not None
    assert "No Prometheus Operator API was found" in r.notes


def test_monitoring_objects_when_the_prometheus_operator_is_served(chart: ChartRenderer) -> None:
    r = chart.render(
        {"monitoring": {"labels": {"release": "kps"}}}, api_versions=PROMETHEUS_OPERATOR_APIS
    )
    assert set(r.kinds()) >= MONITORING_KINDS
    sm = r.one("ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["selector"]["matchLabels"] == r.one("Service")["spec"]["selector"]
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    pm = r.one("PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert pm["spec"]["podMetricsEndpoints"][0]["relabelings"] == [
        {"targetLabel": "job", "replacement": "goodput-gateway"}
    ]
    forced = chart.render({"monitoring": {"prometheusOperator": "always"}})
    assert forced.notes is not None
    assert "ServiceMonitor/PodMonitor/PrometheusRule were created" in forced.notes


def test_prometheus_rule_embeds_the_rules_file(chart: ChartRenderer) -> None:
    plain = yaml.safe_load((CHART / "rules" / "goodput.rules.yaml").read_text())
    r = chart.render(api_versions=PROMETHEUS_OPERATOR_APIS)
    assert r.one("PrometheusRule")["spec"] == plain

    custom = chart.render(
        {"monitoring": {"prometheusOperator": "always", "rules": {"sloObjective": 0.999}}}
    )
    rules = [rule for g in custom.one("PrometheusRule")["spec"]["groups"] for rule in g["rules"]]
    objective = [rule for rule in rules if rule.get("record") == "goodput:slo_objective:ratio"]
    assert [rule["expr"] for rule in objective] == ["vector(0.999)"]
    assert custom.notes is not None
    assert "objective of 0.999" in custom.notes


@pytest.mark.parametrize(
    ("mode", "api_versions", "expected"),
    [
        ("always", (), MONITORING_KINDS),
        ("never", PROMETHEUS_OPERATOR_APIS, set()),
        ("auto", ("monitoring.coreos.com/v1/ServiceMonitor",), {"ServiceMonitor"}),
    ],
)
def test_prometheus_operator_mode(
    chart: ChartRenderer, mode: str, api_versions: tuple[str, ...], expected: set[str]
) -> None:
    r = chart.render({"monitoring": {"prometheusOperator": mode}}, api_versions=api_versions)
    assert MONITORING_KINDS & set(r.kinds()) == expected


def test_monitoring_parts_can_be_turned_off(chart: ChartRenderer) -> None:
    values = {
        "monitoring": {
            "operator": {"enabled": False},
            "gateway": {"enabled": False},
            "rules": {"enabled": False},
            "dashboards": {"enabled": False},
        }
    }
    r = chart.render(values, api_versions=PROMETHEUS_OPERATOR_APIS)
    assert not MONITORING_KINDS & set(r.kinds())
    assert not r.all("ConfigMap")


def test_dashboards_are_configmaps_for_the_grafana_sidecar(chart: ChartRenderer) -> None:
    r = chart.render({"monitoring": {"dashboards": {"namespace": "monitoring"}}})
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    maps = r.all("ConfigMap")
    assert len(maps) == len(files) == 6
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["namespace"] == "monitoring"
        ((name, body),) = cm["data"].items()
        assert name in files
        assert json.loads(body) == json.loads((CHART / "dashboards" / name).read_text())


def test_single_namespace(chart: ChartRenderer) -> None:
    r = chart.render(
        {"operator": {"watchNamespace": "team-a"}, "monitoring": {"prometheusOperator": "always"}}
    )
    args = operator_container(r)["args"]
    assert "--namespace=team-a" in args
    assert "--all-namespaces" not in args
    peering = r.one("KopfPeering")
    assert peering["metadata"]["namespace"] == "team-a"
    assert not r.all("ClusterKopfPeering")
    assert r.one("PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    assert r.notes is not None
    assert "kopfpeering -n team-a" in r.notes


def test_ha_off(chart: ChartRenderer) -> None:
    r = chart.render({"operator": {"replicas": 1}})
    assert r.one("StatefulSet")["spec"]["replicas"] == 1
    assert not r.all("PodDisruptionBudget")
    assert "affinity" not in operator_pod(r)
    assert r.notes is not None
    assert "no standby replica" in r.notes


def test_custom_images(chart: ChartRenderer) -> None:
    r = chart.render(
        {
            "image": {
                "repository": "registry.example/goodput",
                "tag": "1.2.3",
                "pullPolicy": "Always",
            },
            "imagePullSecrets": [{"name": "regcred"}],
        }
    )
    c = operator_container(r)
    assert c["image"] == "registry.example/goodput:1.2.3"
    assert c["imagePullPolicy"] == "Always"
    assert operator_pod(r)["imagePullSecrets"] == [{"name": "regcred"}]
    digest = "sha256:" + "a" * 64
    pinned = chart.render({"image": {"repository": "registry.example/goodput", "digest": digest}})
    assert operator_container(pinned)["image"] == f"registry.example/goodput@{digest}"
    default = operator_container(chart.render())["image"]
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert default.endswith(f":{app_version}")


def test_serving_pod_defaults(chart: ChartRenderer) -> None:
    default = operator_container(chart.render())
    env = {e["name"]: e.get("value") for e in default["env"]}
    assert env["GOODPUT_GATEWAY_IMAGE"] == default["image"], "the gateway runs the same image"
    assert "GOODPUT_ENGINE_IMAGE" not in env
    assert env["GOODPUT_IMAGE_PULL_POLICY"] == "IfNotPresent"
    assert "GOODPUT_ENGINE_CPU" not in env and "GOODPUT_ENGINE_MEMORY_GIB" not in env
    c = operator_container(
        chart.render(
            {
                "serving": {
                    "gatewayImage": "registry.example/gw:1",
                    "engineImage": "registry.example/vllm:2",
                    "imagePullPolicy": "Never",
                    "engineCPU": "500m",
                    "engineMemoryGiB": 2.5,
                    "tolerations": ["dedicated=llm:NoSchedule"],
                }
            }
        )
    )
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["GOODPUT_GATEWAY_IMAGE"] == "registry.example/gw:1"
    assert env["GOODPUT_ENGINE_IMAGE"] == "registry.example/vllm:2"
    assert env["GOODPUT_IMAGE_PULL_POLICY"] == "Never"
    assert env["GOODPUT_ENGINE_CPU"] == "500m" and env["GOODPUT_ENGINE_MEMORY_GIB"] == "2.5"
    assert "--toleration=dedicated=llm:NoSchedule" in c["args"]


def test_router_placement_reaches_the_operator(chart: ChartRenderer) -> None:
    env = {e["name"]: e.get("value") for e in operator_container(chart.render())["env"]}
    assert "GOODPUT_ROUTER_NODE_SELECTOR" not in env and "GOODPUT_ROUTER_TOLERATIONS" not in env
    values = {
        "router": {
            "nodeSelector": {"pool": "cpu", "zone": "a"},
            "tolerations": ["dedicated=edge:NoSchedule", "spot:NoExecute"],
        }
    }
    env = {e["name"]: e.get("value") for e in operator_container(chart.render(values))["env"]}
    assert env["GOODPUT_ROUTER_NODE_SELECTOR"] == "pool=cpu,zone=a"
    assert env["GOODPUT_ROUTER_TOLERATIONS"] == "dedicated=edge:NoSchedule spot:NoExecute"


def test_existing_service_account(chart: ChartRenderer) -> None:
    r = chart.render({"serviceAccount": {"create": False, "name": "ops"}})
    assert not r.all("ServiceAccount")
    assert operator_pod(r)["serviceAccountName"] == "ops"


@pytest.mark.parametrize(
    "values",
    [
        {"operator": {"replicas": -1}},
        {"operator": {"replicaCount": 2}},
        {"operator": {"watchNamespace": "Team_A"}},
        {"monitoring": {"prometheusOperator": "maybe"}},
        {"monitoring": {"rules": {"sloObjective": 1.5}}},
        {"monitoring": {"interval": "often"}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"image": {"digest": "latest"}},
        {"operator": {"resources": {"requests": {"cpu": "lots"}}}},
        {"serving": {"tolerations": ["no-effect"]}},
        {"serving": {"imagePullPolicy": "Sometimes"}},
        {"serving": {"engineCPU": "four"}},
        {"router": {"tolerations": ["no-effect"]}},
        {"router": {"nodeSelector": {"a=b": "c"}}},
        {"unknownTopLevel": True},
    ],
)
def test_schema_rejects_bad_values(chart: ChartRenderer, values: dict[str, Any]) -> None:
    with pytest.raises(RenderError, match="values don't meet the specifications of the schema"):
        chart.render(values)


def test_every_namespaced_object_is_in_the_release_namespace(chart: ChartRenderer) -> None:
    r = chart.render(api_versions=PROMETHEUS_OPERATOR_APIS)
    cluster_scoped = {
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterKopfPeering",
    }
    for doc in r.docs:
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in doc["metadata"], doc["metadata"]
        else:
            assert doc["metadata"]["namespace"] == "goodput-system", doc["metadata"]


def test_network_policies_let_only_the_router_prometheus_and_the_operator_reach_serving_pods(
    chart: ChartRenderer,
) -> None:
    assert not chart.render().all("NetworkPolicy")  # all namespaces watched: none known
    watched = chart.render({"operator": {"watchNamespace": "team-a"}}).one("NetworkPolicy")
    assert watched["metadata"]["namespace"] == "team-a"
    assert watched["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "goodput",
        "app.kubernetes.io/name": "goodput-llm",
    }
    assert watched["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = watched["spec"]["ingress"]
    assert [
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]
    ] == [
        "goodput-router",
        "prometheus",
        "goodput",  # the operator: its autoscaler reads the gateways' load reports
    ]
    operator = rule["from"][-1]
    assert operator["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert operator["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "goodput-system"
    }
    listed = chart.render({"networkPolicy": {"namespaces": ["a", "b"]}}).all("NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in listed) == ["a", "b"]
    off = {"operator": {"watchNamespace": "team-a"}, "networkPolicy": {"enabled": False}}
    assert not chart.render(off).all("NetworkPolicy")


def test_api_keys_reach_the_operator_and_the_pod_monitor_scrapes_the_admin_port(
    chart: ChartRenderer,
) -> None:
    plain = chart.render(api_versions=PROMETHEUS_OPERATOR_APIS)
    env = {e["name"]: e.get("value") for e in operator_container(plain)["env"]}
    assert "GOODPUT_GATEWAY_KEYS_SECRET" not in env
    # Keys or not, TLS or not: every gateway serves /metrics on its plain, keyless admin port.
    assert plain.one("PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] == "admin"
    keys = {"serving": {"auth": {"keysSecret": "gateway-keys"}}}
    keyed = chart.render(keys, api_versions=PROMETHEUS_OPERATOR_APIS)
    env = {e["name"]: e.get("value") for e in operator_container(keyed)["env"]}
    assert env["GOODPUT_GATEWAY_KEYS_SECRET"] == "gateway-keys"
    assert env["GOODPUT_GATEWAY_ANONYMOUS"] == "false"  # the chart's default: keys required
    assert keyed.one("PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] == "admin"
    # Without keys the notes warn that the gateways answer anyone.
    warned, quiet = chart.render().notes, chart.render(keys).notes
    assert warned is not None and "without an API key" in warned
    assert quiet is not None and "without an API key" not in quiet


def test_autoscaling_and_the_routers_hold_reach_the_operator(chart: ChartRenderer) -> None:
    env = {e["name"]: e.get("value") for e in operator_container(chart.render())["env"]}
    assert env["GOODPUT_AUTOSCALING_INTERVAL_S"] == "15"
    assert (env["GOODPUT_ROUTER_HOLD_S"], env["GOODPUT_ROUTER_HOLD_QUEUE"]) == ("300", "256")
    assert "GOODPUT_AUTOSCALING_REPLICA_RPS" not in env  # the profiler's prediction
    measured = {"autoscaling": {"replicaRPS": 0.5, "coldStartSeconds": 40}}
    env = {e["name"]: e.get("value") for e in operator_container(chart.render(measured))["env"]}
    assert (env["GOODPUT_AUTOSCALING_REPLICA_RPS"], env["GOODPUT_AUTOSCALING_COLD_START_S"]) == (
        "0.5",
        "40",
    )
