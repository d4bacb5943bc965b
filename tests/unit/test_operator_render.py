"""``goodput operator render``: the operator's dry run, on the default dev fleet's nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from llmd_builders import make_body, make_node
from pod_security import restricted_violations

from goodput.cli import main
from goodput.dev.fleet import Fleet
from goodput.operator.cli import operator
from goodput.operator.render import render
from goodput.operator.settings import WorkloadSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SETTINGS = WorkloadSettings(engine_image="vllm:test", gateway_image="goodput:test")


def _render(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["operator", "render", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_renders_as_the_operator_would_apply_it(path: Path) -> None:
    code, out, err = _render("-f", str(path))
    assert code == 0, err
    docs = [d for d in yaml.safe_load_all(out) if d]
    manifest = yaml.safe_load(path.read_text())
    kinds = [d["kind"] for d in docs]
    replicas = manifest["spec"].get("replicas", 1)
    routing = manifest["spec"].get("routing") or {}
    router = (
        ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Service", "Deployment"]
        if routing.get("prefixAware")
        or routing.get("sessionAffinity")
        or manifest["spec"].get("adapters")  # adapter affinity
        else []
    )
    assert kinds == [
        "ConfigMap", *router, "Service", *["Deployment"] * replicas, "LLMDeployment"
    ]  # fmt: skip
    llmd = docs[-1]
    assert llmd["metadata"]["name"] == manifest["metadata"]["name"]
    assert llmd["spec"] == manifest["spec"]
    status = llmd["status"]
    placed = next(c for c in status["conditions"] if c["type"] == "Placed")
    assert placed["status"] == "True", placed["message"]
    fleet = {n["metadata"]["name"]: n for n in Fleet.load("default").all_nodes()}
    deployments = [
        d
        for d in docs
        if d["kind"] == "Deployment" and not d["metadata"]["name"].endswith("-router")
    ]
    for replica, dep in zip(status["placement"], deployments, strict=True):
        node = dep["metadata"]["annotations"]["goodput.dev/node"]
        assert replica["nodes"] == [node] and node in fleet, "placed on a node of the fleet"
        assert fleet[node]["metadata"]["labels"]["nvidia.com/gpu.product"] == status["gpuType"]
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in ("engine", "gateway"):
            assert restricted_violations(pod, container) == []
        gateway = next(c for c in pod["containers"] if c["name"] == "gateway")
        assert "0.0.0.0" in gateway["command"] and "startupProbe" in gateway
    assert f"Placed: {placed['message']}" in out, "the Events it would post, as comments"


def test_each_manifest_sees_the_gpus_the_ones_before_it_hold() -> None:
    nodes = [make_node("only", "NVIDIA-H100-80GB-HBM3", gpus=8)]
    first = make_body(replicas=8, resources={"gpuTypes": ["H100"]})
    second = make_body(resources={"gpuTypes": ["H100"]})
    second["metadata"] = {"name": "other"}
    a, b = render([first, second], nodes, SETTINGS)
    assert a.placed and [p["spec"]["nodeName"] for p in a.pods] == ["only"] * 8
    assert not b.placed and b.objects == ()
    placed = next(c for c in b.llmdeployment["status"]["conditions"] if c["type"] == "Placed")
    assert placed["reason"] == "InsufficientGPUs"


def test_an_unplaceable_manifest_renders_its_status_and_says_so() -> None:
    body = make_body(resources={"gpuTypes": ["B200"]})
    code, out, err = _render("-f", "-", stdin=yaml.safe_dump(body))
    assert code == 0
    (llmd,) = [d for d in yaml.safe_load_all(out) if d]
    assert llmd["status"]["phase"] == "Pending"
    assert "would not be placed" in err


def test_an_invalid_manifest_is_a_clear_error(tmp_path: Path) -> None:
    bad = make_body(slo={"ttftMs": -1, "tpotMs": 50})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all([make_body(), bad]))
    code, out, err = _render("-f", str(path))
    assert code == 1 and out == ""
    assert f"{path}: document 2 (LLMDeployment llama) is invalid" in err
    assert "slo.ttftMs must be a positive number of milliseconds" in err, "the CEL message"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Service"}))
    code, _, err = _render("-f", str(path))
    assert code == 1 and "document 1 is a Service, not an LLMDeployment" in err
    path.write_text("a: [")
    code, _, err = _render("-f", str(path))
    assert code == 1 and "not YAML" in err


def test_settings_flags_reach_the_rendered_pods() -> None:
    code, out, _ = _render(
        "-f", str(ROOT / "examples" / "llmdeployment.yaml"), "--image-pull-policy", "Never"
    )
    assert code == 0
    dep = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")
    containers: list[dict[str, Any]] = dep["spec"]["template"]["spec"]["containers"]
    assert {c["imagePullPolicy"] for c in containers} == {"Never"}


def test_the_operator_command_alone_has_no_fleet_to_render_against() -> None:
    """The dev fleets are wired in by the ``goodput`` command: the operator may not import
    ``goodput.dev``."""
    path = str(ROOT / "examples" / "llmdeployment.yaml")
    result = CliRunner().invoke(operator, ["render", "-f", path])
    assert result.exit_code == 2 and "--kubeconfig" in result.stderr


def test_a_clusters_nodes_and_the_gpus_its_pods_hold(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import goodput.operator.kube
    import goodput.operator.runner

    busy = {
        "metadata": {"name": "train", "namespace": "ml", "uid": "u1"},
        "spec": {
            "nodeName": "gpu-a",
            "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": "8"}}}],
        },
        "status": {"phase": "Running"},
    }

    class ClusterAPI:
        def __init__(self, api: object) -> None:
            assert api == "client of kubeconfig"

        def list_nodes(self) -> list[dict[str, Any]]:
            return [make_node(n, "NVIDIA-H100-80GB-HBM3") for n in ("gpu-a", "gpu-b")]

        def list_all_pods(self) -> list[dict[str, Any]]:
            return [busy]

    monkeypatch.setattr(goodput.operator.runner, "api_client", lambda _: "client of kubeconfig")
    monkeypatch.setattr(goodput.operator.kube, "Kube", ClusterAPI)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("")
    body = make_body(replicas=2, resources={"gpuTypes": ["H100"]})
    code, out, err = _render("-f", "-", "--kubeconfig", str(kubeconfig), stdin=yaml.safe_dump(body))
    assert code == 0, err
    nodes = {
        d["metadata"]["annotations"]["goodput.dev/node"]
        for d in yaml.safe_load_all(out)
        if d and d["kind"] == "Deployment"
    }
    assert nodes == {"gpu-b"}, "gpu-a's GPUs are all held by another pod"
    code, _, err = _render("-f", "-", "--kubeconfig", str(kubeconfig), "--fleet", "default")
    assert code == 2 and "exclude each other" in err
