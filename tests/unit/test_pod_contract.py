"""The serving pod's contract (docs/operator.md, "Pod contract"): where each container listens,
the probes, the stop sequence, security and requests, read from the pod template the operator
applies."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from llmd_builders import make_body
from pod_security import restricted_violations

from goodput.api.llmdeployment import LLMDeployment
from goodput.operator import workload
from goodput.operator.gateway_config import STATE_DIR, config_map
from goodput.operator.placement.selection import Placement
from goodput.operator.settings import (
    ENGINE_STOP_SECONDS,
    GATEWAY_EXIT_SECONDS,
    WorkloadSettings,
)
from goodput.serving.cli import serve

SETTINGS = WorkloadSettings(engine_image="vllm:test", gateway_image="goodput:test")


def _pod(settings: WorkloadSettings = SETTINGS, **spec: Any) -> dict[str, Any]:
    obj = LLMDeployment.model_validate(make_body(**spec))
    template = workload.pod_template(
        obj, Placement("NVIDIA-H100-80GB-HBM3", 1, 1, ("n1",)), settings, "h"
    )
    pod: dict[str, Any] = template["spec"]
    return pod


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == name)


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_gateway_listens_on_the_pods_network_as_serve_parses_its_command(
    tmp_path: Path,
) -> None:
    gateway = _container(_pod(), "gateway")
    command = gateway["command"]
    assert command[:2] == ["goodput", "serve"]
    # Parse with `goodput serve`'s own options (a config file must exist for --config).
    config = tmp_path / "gateway.json"
    config.write_text("{}")
    args = [str(config) if a == "/etc/goodput/gateway.json" else a for a in command[2:]]
    params = serve.make_context("serve", args).params
    assert params["host"] == "0.0.0.0", "probes, the Service and Prometheus reach the pod IP"
    port, admin = gateway["ports"]
    assert params["port"] == port["containerPort"] == 8080 and port["name"] == "http"
    # /metrics and load reports on a plain, keyless port of every pod: one scrape config
    assert params["admin_port"] == admin["containerPort"] == 9090 and admin["name"] == "admin"
    assert params["tls_cert"] is None and params["keys_dir"] is None
    assert params["drain_timeout"] == SETTINGS.drain_seconds


def test_the_engine_listens_on_loopback_only() -> None:
    engine = _container(_pod(), "engine")
    assert _flag(engine["args"], "--host") == "127.0.0.1"
    assert "ports" not in engine
    body = make_body()
    engine_url = json.loads(config_map(LLMDeployment.model_validate(body))["data"]["gateway.json"])[
        "engineUrl"
    ]
    assert engine_url == f"http://127.0.0.1:{_flag(engine['args'], '--port')}"


@pytest.mark.parametrize("name", ["engine", "gateway"])
def test_both_containers_meet_the_restricted_pod_security_profile(name: str) -> None:
    pod = _pod(adapters=[{"name": "sql", "source": "pvc://models/sql"}])
    assert restricted_violations(pod, name) == []
    assert pod["automountServiceAccountToken"] is False, "no container talks to the API"


def test_the_restricted_checker_catches_what_it_should() -> None:
    pod = _pod()
    gateway = _container(pod, "gateway")
    gateway["securityContext"] = {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}
    pod["securityContext"] = {"runAsUser": 0}
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = " ".join(restricted_violations(pod, "gateway"))
    for control in (
        "Privileged",
        "Privilege escalation",
        "runAsNonRoot",
        "runAsUser",
        "Seccomp",
        "drop ALL",
        "NET_BIND_SERVICE",
        "HostPath",
        "Volume types",
    ):
        assert control in problems


def test_the_gateway_writes_only_to_its_volumes() -> None:
    pod = _pod()
    gateway = _container(pod, "gateway")
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts[STATE_DIR] == "gateway-state" and "emptyDir" in volumes["gateway-state"]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert {"name": "HOME", "value": "/tmp"} in gateway["env"]


def test_the_engine_has_a_writable_home_for_its_caches() -> None:
    engine = _container(_pod(), "engine")
    env = {v["name"]: v.get("value") for v in engine["env"]}
    mounts = {m["mountPath"] for m in engine["volumeMounts"]}
    assert env["HOME"] in mounts and env["HF_HOME"].startswith(env["HOME"] + "/")
    nested = [m for m in mounts if m.startswith(env["HOME"] + "/")]
    assert not nested, "a mount inside HOME makes root-owned parents the engine cannot write"
    assert not any(m.startswith("/root") for m in mounts), "the engine does not run as root"
    overridden = _container(_pod(engine={"env": [{"name": "HF_HOME", "value": "/x"}]}), "engine")
    assert [v for v in overridden["env"] if v["name"] == "HF_HOME"] == [
        {"name": "HF_HOME", "value": "/x"}
    ], "the spec's env wins, without a duplicate"


def test_probes_point_at_the_gateways_named_port_and_spare_a_loading_pod() -> None:
    gateway = _container(_pod(), "gateway")
    ports = {p["name"] for p in gateway["ports"]}
    probes = {k: gateway[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert all(p["httpGet"]["port"] in ports for p in probes.values())
    # /readyz follows the engine's /health (tests/gateway: engine down -> 503, /healthz 200).
    assert probes["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = probes["startupProbe"]
    patience = startup["periodSeconds"] * startup["failureThreshold"]
    assert patience >= SETTINGS.startup_timeout_seconds >= 600, "a large model loads for minutes"
    slow = dataclasses.replace(SETTINGS, startup_timeout_seconds=3600)
    slow_startup = _container(_pod(slow), "gateway")["startupProbe"]
    assert slow_startup["periodSeconds"] * slow_startup["failureThreshold"] >= 3600


def test_the_grace_period_covers_the_drain_then_the_engines_stop() -> None:
    pod = _pod()
    grace = pod["terminationGracePeriodSeconds"]
    gateway, engine = _container(pod, "gateway"), _container(pod, "engine")
    drain = float(_flag(gateway["command"], "--drain-timeout"))
    command = engine["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:3] == ["python3", "-c", workload.WAIT_FOR_GATEWAY]
    engine_waits, port = float(command[3]), int(command[4])
    assert port == gateway["ports"][0]["containerPort"]
    assert drain + GATEWAY_EXIT_SECONDS <= engine_waits, "the engine outlives the gateway"
    assert engine_waits + ENGINE_STOP_SECONDS <= grace, "and still stops before SIGKILL"
    with pytest.raises(ValueError, match="no time to drain"):
        WorkloadSettings(termination_grace_seconds=ENGINE_STOP_SECONDS + GATEWAY_EXIT_SECONDS)


def _wait_for_gateway(port: int, bound_s: float) -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", workload.WAIT_FOR_GATEWAY, str(bound_s), str(port)], check=True
    )
    return time.monotonic() - started


def test_the_engines_prestop_waits_until_the_gateway_stops_listening() -> None:
    listener = socket.create_server(("0.0.0.0", 0))
    port = listener.getsockname()[1]
    threading.Timer(1.5, listener.close).start()
    waited = _wait_for_gateway(port, bound_s=30)
    assert 1.5 <= waited < 10
    assert _wait_for_gateway(port, bound_s=30) < 2, "no gateway: the engine stops at once"
    with socket.create_server(("0.0.0.0", 0)) as stuck:
        assert _wait_for_gateway(stuck.getsockname()[1], bound_s=1) < 4, "bounded"


def test_cpu_and_memory_requests_on_both_containers() -> None:
    pod = _pod()
    for container in pod["containers"]:
        requests = container["resources"]["requests"]
        assert requests["cpu"] and requests["memory"], container["name"]
    engine = _container(pod, "engine")["resources"]
    assert engine["requests"]["memory"] == "16Gi"
    assert "cpu" not in engine.get("limits", {}), "a throttled engine stalls every stream"
    offload = _container(_pod(kvCache={"cpuOffloadGiB": 32}), "engine")["resources"]
    assert offload["requests"]["memory"] == "48Gi", "CPU KV offload lives in host memory"
    small = dataclasses.replace(SETTINGS, engine_cpu="500m", engine_memory_gib=1.5)
    requests = _container(_pod(small), "engine")["resources"]["requests"]
    assert requests["cpu"] == "500m" and requests["memory"] == "1536Mi"


def test_image_pull_policy_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {c["imagePullPolicy"] for c in _pod()["containers"]} == {"IfNotPresent"}
    monkeypatch.setenv("GOODPUT_IMAGE_PULL_POLICY", "Never")
    assert {c["imagePullPolicy"] for c in _pod(WorkloadSettings())["containers"]} == {"Never"}
    monkeypatch.setenv("GOODPUT_IMAGE_PULL_POLICY", "Sometimes")
    with pytest.raises(ValueError, match="pull policy"):
        WorkloadSettings()


def test_with_api_keys_the_gateway_mounts_them_and_serves_metrics_keyless_on_the_admin_port(
    tmp_path: Path,
) -> None:
    settings = dataclasses.replace(SETTINGS, gateway_keys_secret="gateway-keys")
    pod = _pod(settings)
    gateway = _container(pod, "gateway")
    config = tmp_path / "gateway.json"
    config.write_text("{}")
    args = [str(config) if a == "/etc/goodput/gateway.json" else a for a in gateway["command"][2:]]
    params = serve.make_context("serve", args).params
    assert params["keys_dir"] == workload.GATEWAY_KEYS_DIR
    assert params["anonymous"] is False  # keys on: callers without one are refused
    assert params["admin_port"] == 9090
    assert {"name": "admin", "containerPort": 9090, "protocol": "TCP"} in gateway["ports"]
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "gateway-keys")
    assert mount == {"name": "gateway-keys", "mountPath": "/etc/goodput-keys", "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "gateway-keys")
    assert volume["secret"] == {"secretName": "gateway-keys"}
    assert not restricted_violations(pod, "gateway")
    open_pod = _pod(dataclasses.replace(settings, gateway_anonymous=True))
    assert "--anonymous" in _container(open_pod, "gateway")["command"]
    assert "--keys-dir" not in _container(_pod(), "gateway")["command"]  # no keys: as before


def test_with_tls_the_gateway_serves_https_from_the_secret_and_is_probed_over_https(
    tmp_path: Path,
) -> None:
    pod = _pod(gateway={"tls": {"secretName": "llama-tls"}})
    gateway, engine = _container(pod, "gateway"), _container(pod, "engine")
    # `goodput serve` parses the command (its options want the files to exist).
    files = {f"/etc/goodput-tls/{n}": tmp_path / n for n in ("tls.crt", "tls.key")}
    files["/etc/goodput/gateway.json"] = tmp_path / "gateway.json"
    for path in files.values():
        path.write_text("{}")
    params = serve.make_context("serve", [str(files.get(a, a)) for a in gateway["command"][2:]])
    assert params.params["tls_cert"] == str(files["/etc/goodput-tls/tls.crt"])
    assert params.params["tls_key"] == str(files["/etc/goodput-tls/tls.key"])
    assert params.params["admin_port"] == 9090  # Prometheus and the router: plain HTTP
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "tls")
    assert mount == {"name": "tls", "mountPath": "/etc/goodput-tls", "readOnly": True}
    assert {"name": "tls", "secret": {"secretName": "llama-tls"}} in pod["volumes"]
    assert not any(m["name"] == "tls" for m in engine["volumeMounts"]), "the engine needs none"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"]["scheme"] == "HTTPS"
        assert gateway[probe]["httpGet"]["port"] == "http"
    # The engine's preStop hook only connects (TCP), which TLS does not change.
    assert int(engine["lifecycle"]["preStop"]["exec"]["command"][4]) == 8080
    assert not restricted_violations(pod, "gateway")
    plain = _container(_pod(), "gateway")
    assert "scheme" not in plain["readinessProbe"]["httpGet"]  # HTTP, the default
    assert not any(v["name"] == "tls" for v in _pod()["volumes"])
