"""spec.gateway.tls on the real local control plane: the API server's CEL rule for the Secret's
name, the HTTPS workload the operator applies, and the status naming a missing Secret until it
exists (kwok runs the pods without mounting anything, so a pod restart stands in for the kubelet
mounting the Secret once it appears)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from goodput.dev.pki import ClusterPKI
from goodput.dev.stack import apply_crds

from .operator_process import OperatorProcess
from .waiting import wait_for

if TYPE_CHECKING:
    from goodput.dev.cluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "llmdeployment.yaml"
EXAMPLE = ROOT / "examples" / "llmdeployment.yaml"


@pytest.fixture(scope="module")
def ns(cluster: LocalCluster) -> Iterator[str]:
    apply_crds(cluster, [CRD])
    name = f"tls-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster, ns: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with OperatorProcess(cluster.kubeconfig, ns, log) as proc:
        yield proc


def _get(cluster: LocalCluster, ns: str, *what: str) -> Any:
    return json.loads(cluster.kubectl("get", *what, "-n", ns, "-o", "json"))


def _degraded(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any] | None:
    status = _get(cluster, ns, "llmdeployment", name).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "Degraded"), None)


def _manifest(name: str, secret: str) -> str:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["gateway"] = {"tls": {"secretName": secret}}
    return yaml.safe_dump(doc)


def test_a_bad_secret_name_is_refused_with_the_cel_message(cluster: LocalCluster, ns: str) -> None:
    from goodput.dev.cluster import ClusterError

    with pytest.raises(ClusterError) as err:
        cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=_manifest("bad", "Serving_Cert"))
    assert "gateway.tls.secretName must name a Secret" in str(err.value)


def test_https_workload_and_a_missing_secret_named_until_it_exists(
    cluster: LocalCluster, ns: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=_manifest("secure", "secure-tls"))

    def not_found() -> dict[str, Any] | None:
        degraded = _degraded(cluster, ns, "secure")
        return degraded if degraded and degraded["reason"] == "TLSSecretNotFound" else None

    degraded = wait_for(not_found, what="Degraded=True TLSSecretNotFound")
    assert degraded["status"] == "True" and f"namespace {ns}" in degraded["message"]
    events = _get(cluster, ns, "events", "--field-selector", "involvedObject.name=secure")
    assert [e["type"] for e in events["items"] if e["reason"] == "TLSSecretNotFound"] == ["Warning"]
    status = _get(cluster, ns, "llmdeployment", "secure")["status"]
    assert status["endpoint"] == f"https://secure.{ns}.svc:443/v1"
    (port,) = _get(cluster, ns, "service", "secure")["spec"]["ports"]
    assert (port["port"], port["appProtocol"]) == (443, "https")
    template = _get(cluster, ns, "deployment", "secure-r0")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "secure-tls", "defaultMode": 420}} in template[
        "volumes"
    ]
    gateway = next(c for c in template["containers"] if c["name"] == "gateway")
    assert gateway["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # The Secret appears (a certificate for the Service's name); the pod starts — here kwok's
    # pod is replaced — and the status write that follows finds the Secret sound.
    pki = ClusterPKI(tmp_path / "pki")
    pki.ensure()
    cert, key = pki.ensure_serving("secure", f"secure.{ns}.svc", (), (f"secure.{ns}.svc",))
    cluster.kubectl(
        "create", "secret", "tls", "secure-tls", "-n", ns, f"--cert={cert}", f"--key={key}"
    )
    cluster.kubectl("delete", "pod", "-n", ns, "-l", "goodput.dev/deployment=secure")

    def cleared() -> dict[str, Any] | None:
        status = _get(cluster, ns, "llmdeployment", "secure").get("status") or {}
        degraded = _degraded(cluster, ns, "secure")
        ok = status.get("phase") == "Available" and degraded and degraded["status"] == "False"
        return degraded if ok else None

    assert wait_for(cleared, what="Available, Degraded=False")["reason"] == "AllReplicasReady"
