"""The serving Deployments: one per replica, each pod the vLLM engine and the Goodput gateway.

One Deployment per replica (``replicas: 1``), pinned by required node affinity to the node the
placement solver chose for it: adding, removing or moving one replica touches only its own
Deployment, and a replica whose pod template is unchanged is never restarted. A rollout replaces
the pod without surge (``maxSurge: 0``): a surge pod would need GPUs that a right-sized cluster
does not have spare, and on a pinned node it could not fit anyway.

The pod contract (docs/operator.md, "Pod contract"):

- The engine (vLLM's OpenAI server, its image's own entrypoint) listens on 127.0.0.1:8000 only:
  nothing but the gateway may reach it. The gateway (``goodput serve``) listens on every
  interface of the pod (``0.0.0.0:8080``, port ``http``): the kubelet's probes, the Service and
  Prometheus reach the pod IP, and the engine's preStop hook reaches loopback. The wildcard
  rather than the pod IP from the downward API, because both of those must work, and the pod's
  network namespace holds nothing else to hide from. With ``spec.gateway.tls`` port ``http``
  speaks HTTPS (``operator/tls.py``); port ``admin`` (9090: ``/metrics``, load reports) is plain
  HTTP and keyless on every pod.
- Probes are the gateway's, since the kubelet could not see a loopback-only engine: the startup
  probe (``/readyz``, which follows the engine's ``/health``) gives the model
  ``startup_timeout_seconds`` to load, and holds off the liveness probe (``/healthz``, the
  gateway process alone) so a loading pod is never killed; readiness (``/readyz``) then follows
  the engine's health and turns false as soon as the gateway drains.
- Stopping: the gateway gets SIGTERM at once and drains (new requests 503, in-flight ones
  finish, at most ``drain_seconds``), then stops listening; the engine's preStop hook waits for
  exactly that, so the engine outlives every request the gateway still serves, then gets its own
  SIGTERM with ``ENGINE_STOP_SECONDS`` left of the grace period.
- Both containers run as UID 65532, non-root, without privilege escalation or capabilities,
  under the runtime's default seccomp profile (Pod Security "restricted"); the gateway's root
  filesystem is read-only besides its state volume (``STATE_DIR``) and ``/tmp``; the engine
  writes its caches to an emptyDir home.
"""

from __future__ import annotations

import math
from typing import Any

from goodput.api.llmdeployment import PVC_SOURCE, EnvVar, LLMDeployment
from goodput.operator import naming, tls
from goodput.operator.engine_args import MODELS_DIR, RUNTIME_LORA_ENV, in_pod_path
from goodput.operator.engine_args import build as build_engine_args
from goodput.operator.gateway_config import CONFIG_DIR, CONFIG_PATH, STATE_DIR
from goodput.operator.inventory import GPU_RESOURCE, LABEL_PRODUCT
from goodput.operator.model_memory import CatalogMemory
from goodput.operator.placement.selection import Placement
from goodput.operator.service import GATEWAY_PORT_NAME
from goodput.operator.settings import WorkloadSettings

GATEWAY_PORT = 8080
#: Every interface of the pod: its IP for probes, Service and Prometheus, loopback for the engine.
GATEWAY_HOST = "0.0.0.0"
#: The gateway's keyless, plain-HTTP port for /metrics and the router's load reports: one port
#: Prometheus scrapes on every pod, whatever its API port asks (a key, TLS).
GATEWAY_ADMIN_PORT = 9090
GATEWAY_ADMIN_PORT_NAME = "admin"
GATEWAY_KEYS_DIR = "/etc/goodput-keys"
#: Both containers' UID and GID: non-root, and the conventional "nonroot" of distroless images.
RUN_AS_USER = 65532
#: The engine's writable home (an emptyDir), for the caches vLLM, torch and Hugging Face keep.
ENGINE_HOME = "/home/engine"
HF_HOME = f"{ENGINE_HOME}/.cache/huggingface"
STARTUP_PERIOD_SECONDS = 10
#: The engine's preStop hook: wait while the gateway still listens on loopback (it stops once it
#: has drained), at most argv[1] seconds. Standard-library Python only: the engine image has
#: python3 but not Goodput.
WAIT_FOR_GATEWAY = """\
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=1).close()
    except OSError:
        break
    time.sleep(1)
"""


class Volumes:
    """PersistentVolumeClaims named by ``pvc://`` sources, each mounted once, read-only."""

    def __init__(self) -> None:
        self.claims: dict[str, str] = {}  # claim -> volume name

    def path(self, source: str) -> str:
        """The in-pod path for a source: ``pvc://CLAIM/PATH`` becomes ``/models/CLAIM/PATH``."""
        m = PVC_SOURCE.match(source)
        if m is None:
            return source
        self.claims.setdefault(m.group("claim"), f"pvc-{len(self.claims)}")
        return in_pod_path(source)

    def volumes(self) -> list[dict[str, Any]]:
        return [
            {"name": vol, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
            for claim, vol in self.claims.items()
        ]

    def mounts(self) -> list[dict[str, Any]]:
        return [
            {"name": vol, "mountPath": f"{MODELS_DIR}/{claim}", "readOnly": True}
            for claim, vol in self.claims.items()
        ]


def engine_args(obj: LLMDeployment, placement: Placement, volumes: Volumes) -> list[str]:
    """The engine's arguments (``goodput.operator.engine_args``: the contract), with ``pvc://``
    sources mounted through ``volumes``: the model's, and the claims adapters are on (the
    gateway loads those at runtime from the same paths, ``gateway_config.adapter_catalog``)."""
    args = build_engine_args(obj.spec, placement, volumes.path)
    for adapter in obj.spec.adapters:
        volumes.path(adapter.source)
    return args


def _env(var: EnvVar) -> dict[str, Any]:
    if var.value_from is not None:
        ref = var.value_from.secret_key_ref
        return {"name": var.name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    return {"name": var.name, "value": var.value or ""}


def http_probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": GATEWAY_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def container_security_context(read_only_root: bool) -> dict[str, Any]:
    """A container's half of the "restricted" Pod Security profile (the pod's half, non-root
    and seccomp, is in the pod's securityContext)."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
    }


def _lora_host_gib(obj: LLMDeployment, placement: Placement) -> float:
    """Host memory of the engine's adapter cache (``--max-cpu-loras`` whole adapters per
    worker), in whole MiB; 0 without LoRA or for a model the catalog does not know."""
    memory = CatalogMemory()
    arch = memory.architecture(obj.spec)
    lora = (
        None if arch is None else memory.lora(obj.spec, arch, placement.tensor, placement.pipeline)
    )
    return 0.0 if lora is None else math.ceil(lora.host_bytes / 2**20) / 1024


def _gib(value: float) -> str:
    return f"{value:g}Gi" if float(value).is_integer() else f"{round(value * 1024)}Mi"


def node_selector_term(placement: Placement, node: str | None) -> dict[str, Any]:
    """The GPU product, and the exact node when the placement solver chose one. The node is
    matched by name (``matchFields``), not by the ``kubernetes.io/hostname`` label, which some
    clouds set to something other than the Node's name."""
    term: dict[str, Any] = {
        "matchExpressions": [
            {"key": LABEL_PRODUCT, "operator": "In", "values": [placement.gpu_product]}
        ]
    }
    if node:
        term["matchFields"] = [{"key": "metadata.name", "operator": "In", "values": [node]}]
    return term


def pod_template(
    obj: LLMDeployment,
    placement: Placement,
    settings: WorkloadSettings,
    config_hash: str,
    replica: int = 0,
    node: str | None = None,
) -> dict[str, Any]:
    """One replica's pod template; ``config_hash`` rolls the pod when the gateway config
    changes, ``node`` pins it. The contract each container keeps is the module docstring's."""
    spec, name = obj.spec, obj.metadata.name
    volumes = Volumes()
    args = engine_args(obj, placement, volumes)
    gpus = str(placement.gpus_per_replica)
    user_env = [_env(v) for v in spec.engine.env]
    own_env = [
        {"name": "HOME", "value": ENGINE_HOME},
        {"name": "HF_HOME", "value": HF_HOME},
        # Python's getpass (torch names its caches with it) asks /etc/passwd about a UID the
        # image may not list; it reads $USER first.
        {"name": "USER", "value": "engine"},
    ]
    if spec.lora_capacity is not None:
        own_env.append({"name": RUNTIME_LORA_ENV, "value": "True"})
    overridden = {v["name"] for v in user_env}
    engine = {
        "name": "engine",
        "image": spec.engine.image or settings.engine_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": args,
        "env": [v for v in own_env if v["name"] not in overridden] + user_env,
        "resources": {
            "requests": {
                "cpu": settings.engine_cpu,
                "memory": _gib(
                    settings.engine_memory_gib
                    + spec.kv_cache.cpu_offload_gib
                    + _lora_host_gib(obj, placement)
                ),
                GPU_RESOURCE: gpus,
            },
            "limits": {GPU_RESOURCE: gpus},
        },
        "lifecycle": {
            "preStop": {
                "exec": {
                    "command": [
                        "python3",
                        "-c",
                        WAIT_FOR_GATEWAY,
                        str(settings.engine_stop_after_seconds),
                        str(GATEWAY_PORT),
                    ]
                }
            }
        },
        # vLLM, torch and Triton write caches and compiled kernels to paths of their own
        # choosing (under $HOME and /tmp mostly); a read-only root would break on the first
        # one nobody listed. Everything else of the restricted profile holds.
        "securityContext": container_security_context(read_only_root=False),
        "volumeMounts": [
            {"name": "shm", "mountPath": "/dev/shm"},
            # One volume: a mount nested inside it would make the runtime create its parent
            # directories as root, and the engine's user could not write its caches beside it.
            {"name": "engine-home", "mountPath": ENGINE_HOME},
            *volumes.mounts(),
        ],
    }
    gateway = {
        "name": "gateway",
        "image": spec.gateway.image or settings.gateway_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [
            "goodput",
            "serve",
            "--config",
            CONFIG_PATH,
            "--host",
            GATEWAY_HOST,
            "--port",
            str(GATEWAY_PORT),
            "--drain-timeout",
            str(settings.drain_seconds),
            "--admin-port",
            str(GATEWAY_ADMIN_PORT),
        ],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "ports": [
            {"name": GATEWAY_PORT_NAME, "containerPort": GATEWAY_PORT, "protocol": "TCP"},
            {
                "name": GATEWAY_ADMIN_PORT_NAME,
                "containerPort": GATEWAY_ADMIN_PORT,
                "protocol": "TCP",
            },
        ],
        "startupProbe": http_probe(
            "/readyz",
            period=STARTUP_PERIOD_SECONDS,
            failures=math.ceil(settings.startup_timeout_seconds / STARTUP_PERIOD_SECONDS),
        ),
        "readinessProbe": http_probe("/readyz", period=5, failures=2),
        "livenessProbe": http_probe("/healthz", period=10, failures=6),
        "resources": {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"memory": "2Gi"},
        },
        "securityContext": container_security_context(read_only_root=True),
        "volumeMounts": [
            {"name": "gateway-config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "gateway-state", "mountPath": STATE_DIR},
            {"name": "gateway-tmp", "mountPath": "/tmp"},
        ],
    }
    volumes_ = [
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
        {"name": "engine-home", "emptyDir": {}},
        {
            "name": "gateway-config",
            "configMap": {"name": naming.config_map_name(name)},
        },
        # The request log rotates at 64 MiB, keeping one old file.
        {"name": "gateway-state", "emptyDir": {"sizeLimit": "256Mi"}},
        {"name": "gateway-tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        *volumes.volumes(),
    ]
    if settings.gateway_keys_secret:
        _want_keys(gateway, volumes_, settings.gateway_keys_secret, settings.gateway_anonymous)
    if (secret := tls.secret_name(obj)) is not None:
        tls.serve(gateway, volumes_, secret)
    return {
        "metadata": {
            "labels": {**naming.labels(name), naming.LABEL_REPLICA: str(replica)},
            "annotations": {naming.ANNOTATION_CONFIG_HASH: config_hash},
        },
        "spec": {
            "containers": [engine, gateway],
            "enableServiceLinks": False,
            # Neither container talks to the Kubernetes API.
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS_USER,
                "runAsGroup": RUN_AS_USER,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationGracePeriodSeconds": settings.termination_grace_seconds,
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [node_selector_term(placement, node)]
                    }
                }
            },
            "tolerations": [
                {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
                *settings.tolerations,
            ],
            "volumes": volumes_,
        },
    }


def _want_keys(
    gateway: dict[str, Any], volumes: list[dict[str, Any]], secret: str, anonymous: bool
) -> None:
    """The gateway checks API keys from ``secret`` (mounted: rotated keys reach it without a
    restart); its admin port stays keyless for Prometheus and the router."""
    volumes.append({"name": "gateway-keys", "secret": {"secretName": secret}})
    gateway["volumeMounts"].append(
        {"name": "gateway-keys", "mountPath": GATEWAY_KEYS_DIR, "readOnly": True}
    )
    gateway["command"] += [
        "--keys-dir",
        GATEWAY_KEYS_DIR,
        "--anonymous" if anonymous else "--no-anonymous",
    ]


def deployment(
    obj: LLMDeployment,
    placement: Placement,
    settings: WorkloadSettings,
    config_hash: str,
    replica: int = 0,
    node: str | None = None,
) -> dict[str, Any]:
    """The apps/v1 Deployment running replica ``replica`` (one pod), on ``node`` when given."""
    meta = obj.metadata
    metadata = naming.object_meta(
        naming.replica_workload_name(meta.name, replica), meta.namespace, meta.name, meta.uid
    )
    metadata["labels"][naming.LABEL_REPLICA] = str(replica)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": naming.replica_labels(meta.name, replica)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "progressDeadlineSeconds": settings.progress_deadline_seconds,
            "revisionHistoryLimit": 3,
            "template": pod_template(obj, placement, settings, config_hash, replica, node),
        },
    }
