"""HTTPS on an LLMDeployment's endpoint (``spec.gateway.tls``): one ``kubernetes.io/tls`` Secret,
mounted read-only at ``TLS_DIR`` in every gateway and router pod.

- Each gateway serves its API port (``http``, 8080) with ``tls.crt``/``tls.key``, and its probes
  switch to HTTPS (the kubelet does not verify a probe's certificate).
- The router serves its port with the same pair. The Service ``NAME`` leads to the router when
  routing is on and to the gateways otherwise, so one certificate naming ``NAME.NAMESPACE.svc``
  covers whichever answers.
- The router dials the gateways by pod IP, over HTTPS, and verifies them against ``ca.crt`` (the
  system's trust store where the Secret has none), expecting the Service's DNS name
  (``server_name``): an IP address is in no certificate, the Service's name is.
- The gateways' admin port (``/metrics``, the load report) stays plain HTTP: it carries counters,
  not prompts or keys, and plain HTTP is what lets one Prometheus scrape config serve every pod,
  with or without TLS. The chart's NetworkPolicy limits who reaches it.

The operator reads the Secret (``get``; it never lists or watches Secrets) only to say in the
status what is wrong with it. A pod whose Secret volume is missing waits in ContainerCreating, which
is how Kubernetes treats it, and starts by itself once the Secret exists; the Degraded condition
names the cause meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping
from typing import Any

from cryptography import x509

from goodput.api.llmdeployment import LLMDeployment
from goodput.operator import naming
from goodput.operator.status import DEGRADED, Verdict

TLS_DIR = "/etc/goodput-tls"
VOLUME = "tls"
SECRET_TYPE = "kubernetes.io/tls"
CERT_FILE = f"{TLS_DIR}/tls.crt"
KEY_FILE = f"{TLS_DIR}/tls.key"
CA_FILE = f"{TLS_DIR}/ca.crt"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
NOT_FOUND, INVALID = "TLSSecretNotFound", "TLSSecretInvalid"


def secret_name(obj: LLMDeployment) -> str | None:
    tls = obj.spec.gateway.tls
    return None if tls is None else tls.secret_name


def server_name(obj: LLMDeployment) -> str:
    """The name the certificate must carry: the Service's DNS name inside the cluster."""
    return f"{naming.service_name(obj.metadata.name)}.{obj.metadata.namespace}.svc"


def serve(container: dict[str, Any], volumes: list[dict[str, Any]], secret: str) -> None:
    """Make ``container`` (``goodput serve`` or ``goodput route``) serve HTTPS from ``secret``,
    probed over HTTPS."""
    volumes.append({"name": VOLUME, "secret": {"secretName": secret}})
    container["volumeMounts"].append({"name": VOLUME, "mountPath": TLS_DIR, "readOnly": True})
    container["command"] += ["--tls-cert", CERT_FILE, "--tls-key", KEY_FILE]
    for probe in PROBES:
        container[probe]["httpGet"]["scheme"] = "HTTPS"


def problem(obj: LLMDeployment, secret: Mapping[str, Any] | None) -> Verdict | None:
    """What is wrong with the TLS Secret (``None``: nothing, or no TLS asked for), as the
    Degraded condition that says so."""
    name = secret_name(obj)
    if name is None:
        return None
    namespace = obj.metadata.namespace
    if secret is None:
        return Verdict(
            DEGRADED,
            "True",
            NOT_FOUND,
            f"Secret {name} (spec.gateway.tls.secretName) does not exist in namespace "
            f"{namespace}; the pods wait in ContainerCreating until it does "
            f"(kubectl create secret tls {name} -n {namespace} --cert=tls.crt --key=tls.key)",
        )
    kind = secret.get("type") or "Opaque"
    if kind != SECRET_TYPE:
        return _invalid(f"Secret {name} is of type {kind}, not {SECRET_TYPE}")
    certificate = (secret.get("data") or {}).get("tls.crt")
    if certificate is None:  # the API server requires the key: a dry run's stand-in
        return None
    wrong = _certificate_problem(obj, certificate)
    return None if wrong is None else _invalid(f"Secret {name}: {wrong}")


def _invalid(message: str) -> Verdict:
    return Verdict(DEGRADED, "True", INVALID, message)


def _certificate_problem(obj: LLMDeployment, encoded: str) -> str | None:
    """Why the router (and clients using the Service's name) would refuse ``tls.crt``: not a
    certificate, expired, or not naming the Service."""
    try:
        cert = x509.load_pem_x509_certificate(base64.b64decode(encoded, validate=True))
    except (ValueError, binascii.Error):
        return "tls.crt holds no PEM certificate"
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        return f"its certificate expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    want = server_name(obj)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    if not any(_matches(pattern, want) for pattern in dns):
        return (
            f"its certificate does not name {want} (its DNS names: {', '.join(dns) or 'none'}); "
            "the router verifies the gateways by that name"
        )
    return None


def _matches(pattern: str, host: str) -> bool:
    """RFC 6125 matching as TLS clients do it: exact, or a wildcard for the left-most label."""
    pattern, host = pattern.lower().rstrip("."), host.lower()
    if pattern.startswith("*."):
        first, _, rest = host.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == host
