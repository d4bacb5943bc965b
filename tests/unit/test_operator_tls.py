"""spec.gateway.tls: the Service and endpoint turn to HTTPS, and the status says what is wrong
with the TLS Secret — missing, of another type, or a certificate the router would refuse —
while the workload is applied regardless and recovers by itself once the Secret is right."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes.client.exceptions import ApiException
from llmd_builders import make_body, make_node
from test_operator_reconcile import H100, FakeKube, _reconciler, _run

from goodput.api.llmdeployment import LLMDeployment
from goodput.operator import service, tls
from goodput.operator.permissions import RULES, TLS_SECRETS, cluster_role
from goodput.operator.status import find

TLS = {"tls": {"secretName": "llama-tls"}}


def _obj(**spec: Any) -> LLMDeployment:
    return LLMDeployment.model_validate(make_body(**spec))


def _certificate(*dns: str, days: float = 30) -> str:
    """A self-signed PEM certificate naming ``dns``, valid for ``days`` (negative: expired),
    base64-encoded as a Secret's data holds it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=60))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]), critical=False
        )
    pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    return base64.b64encode(pem).decode()


def _secret(certificate: str | None = None, kind: str = "kubernetes.io/tls") -> dict[str, Any]:
    data = {"tls.key": base64.b64encode(b"key").decode()}
    data["tls.crt"] = certificate if certificate is not None else _certificate("llama.ml.svc")
    return {"metadata": {"name": "llama-tls", "namespace": "ml"}, "type": kind, "data": data}


def test_with_tls_the_service_listens_on_443_and_the_endpoint_is_https() -> None:
    plain, secure = _obj(), _obj(gateway=TLS)
    (port,) = service.service(plain)["spec"]["ports"]
    assert (port["name"], port["port"], port["appProtocol"]) == ("http", 80, "http")
    assert service.endpoint(plain) == "http://llama.ml.svc:80/v1"
    (port,) = service.service(secure)["spec"]["ports"]
    assert (port["name"], port["port"], port["appProtocol"]) == ("https", 443, "https")
    assert port["targetPort"] == "http"  # the gateways' (or the router's) port, now HTTPS
    assert service.endpoint(secure) == "https://llama.ml.svc:443/v1"
    assert tls.server_name(secure) == "llama.ml.svc"


@pytest.mark.parametrize(
    ("secret", "reason", "words"),
    [
        (None, "TLSSecretNotFound", "does not exist in namespace ml"),
        (_secret(kind="Opaque"), "TLSSecretInvalid", "of type Opaque, not kubernetes.io/tls"),
        (_secret(base64.b64encode(b"not pem").decode()), "TLSSecretInvalid", "no PEM"),
        (_secret(_certificate("llama.ml.svc", days=-1)), "TLSSecretInvalid", "expired"),
        (_secret(_certificate("llama.other.svc")), "TLSSecretInvalid", "does not name llama.ml"),
        (_secret(_certificate()), "TLSSecretInvalid", "(its DNS names: none)"),
        (_secret(_certificate("*.svc")), "TLSSecretInvalid", "does not name"),
    ],
    ids=["missing", "opaque", "not-pem", "expired", "other-name", "no-names", "wide-wildcard"],
)
def test_what_is_wrong_with_the_secret_is_a_degraded_verdict(
    secret: dict[str, Any] | None, reason: str, words: str
) -> None:
    verdict = tls.problem(_obj(gateway=TLS), secret)
    assert verdict is not None
    assert (verdict.type, verdict.status, verdict.reason) == ("Degraded", "True", reason)
    assert "llama-tls" in verdict.message and words in verdict.message


def test_a_sound_secret_or_no_tls_is_no_problem() -> None:
    obj = _obj(gateway=TLS)
    assert tls.problem(obj, _secret()) is None
    assert tls.problem(obj, _secret(_certificate("x.ml.svc", "LLAMA.ml.svc."))) is None
    assert tls.problem(obj, _secret(_certificate("*.ml.svc"))) is None
    assert tls.problem(_obj(), None) is None  # no TLS asked for: the Secret is not looked at


class SecretKube(FakeKube):
    """The fake API with Secrets (``None``: read refused, 403)."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        super().__init__(nodes)
        self.secrets: dict[tuple[str, str], dict[str, Any]] | None = {}
        self.secret_reads = 0

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.secret_reads += 1
        if self.secrets is None:
            raise ApiException(status=403, reason="Forbidden")
        return self.secrets.get((namespace, name))


def _condition(kube: FakeKube, type_: str) -> Mapping[str, Any]:
    return next(c for c in kube.parent()["status"]["conditions"] if c["type"] == type_)


def test_a_missing_secret_is_reported_and_the_pods_start_once_it_exists() -> None:
    kube = SecretKube([make_node("gpu-0", H100)])
    kube.add_parent(make_body(gateway=TLS))
    r, _ = _reconciler(kube)
    outcome, status = _run(r, kube)
    # Applied regardless: pods wait in ContainerCreating and the kubelet mounts the Secret
    # once it exists, with nothing more to do here.
    (name,) = kube.deployments()
    volumes = kube.deployment(name)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "llama-tls"}} in volumes
    assert status["endpoint"] == "https://llama.ml.svc:443/v1"
    assert _condition(kube, "Placed")["status"] == "True"
    degraded = _condition(kube, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "TLSSecretNotFound")
    assert status["message"].startswith("Secret llama-tls (spec.gateway.tls.secretName)")
    assert [n.reason for n in outcome.notices if n.warning] == ["TLSSecretNotFound"]
    again, _ = _run(r, kube)
    assert not [n for n in again.notices if n.warning], "said once, as every Event"
    # The Secret appears, the pod starts: the Deployment watch's status write (no
    # convergence) reads the Secret again and the condition clears.
    kube.secrets = {("ml", "llama-tls"): _secret()}
    kube.ready()
    status = r.store_status("ml", "llama")
    assert status is not None and status["phase"] == "Available"
    degraded = _condition(kube, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("False", "AllReplicasReady")


def test_a_wrong_certificate_is_degraded_even_while_the_pods_run() -> None:
    kube = SecretKube([make_node("gpu-0", H100)])
    kube.secrets = {("ml", "llama-tls"): _secret(_certificate("gateway.local"))}
    kube.add_parent(make_body(gateway=TLS))
    r, _ = _reconciler(kube)
    _run(r, kube)
    kube.ready()
    status = r.store_status("ml", "llama")
    assert status is not None and status["phase"] == "Available"  # the pods do run
    degraded = _condition(kube, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "TLSSecretInvalid")
    assert "does not name llama.ml.svc (its DNS names: gateway.local)" in degraded["message"]


def test_without_tls_no_secret_is_read_and_an_operator_denied_secrets_still_converges() -> None:
    kube = SecretKube([make_node("gpu-0", H100)])
    kube.add_parent(make_body())
    r, _ = _reconciler(kube)
    _run(r, kube)
    assert kube.secret_reads == 0
    denied = SecretKube([make_node("gpu-0", H100)])
    denied.secrets = None
    denied.add_parent(make_body(gateway=TLS))
    r, _ = _reconciler(denied)
    _, status = _run(r, denied)
    assert find(status["conditions"], "Placed") is not None and denied.deployments()
    assert _condition(denied, "Degraded")["reason"] != "TLSSecretNotFound"


def test_reading_secrets_is_opt_in_and_never_list_or_watch() -> None:
    assert not any("secrets" in rule.resources for rule in RULES), "not by default"
    assert TLS_SECRETS.resources == ("secrets",) and TLS_SECRETS.verbs == ("get",)
    granted = cluster_role(read_tls_secrets=True)["rules"]
    assert TLS_SECRETS.policy_rule() in granted
    assert TLS_SECRETS.policy_rule() not in cluster_role()["rules"]
