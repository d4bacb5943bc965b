"""The serving Deployments: one per replica, each pod the vLLM engine and the Goodput gateway.

The engine is the official ``vllm/vllm-openai`` image, unchanged, listening on 127.0.0.1:8000
only; the gateway (``goodput serve``) is the pod's single port (8080) and owns its probes, since
kubelet probes reach the pod IP and could not see a loopback-only engine anyway.

One Deployment per replica (``replicas: 1``), pinned by required node affinity to the node the
placement solver chose for it: adding, removing or moving one replica touches only its own
Deployment, and a replica whose pod template is unchanged is never restarted. A rollout replaces
the pod without surge (``maxSurge: 0``): a surge pod would need GPUs that a right-sized cluster
does not have spare, and on a pinned node it could not fit anyway.
"""

from __future__ import annotations

from typing import Any

from goodput.api.llmdeployment import PVC_SOURCE, EnvVar, LLMDeployment
from goodput.operator import naming
from goodput.operator.gateway_config import CONFIG_DIR, CONFIG_PATH, ENGINE_PORT
from goodput.operator.gpu_selection import GPU_RESOURCE, LABEL_PRODUCT, Placement
from goodput.operator.service import GATEWAY_PORT_NAME
from goodput.operator.settings import WorkloadSettings

GATEWAY_PORT = 8080
MODELS_DIR = "/models"


class Volumes:
    """PersistentVolumeClaims named by ``pvc://`` sources, each mounted once, read-only."""

    def __init__(self) -> None:
        self.claims: dict[str, str] = {}  # claim -> volume name

    def path(self, source: str) -> str:
        """The in-pod path for a source: ``pvc://CLAIM/PATH`` becomes ``/models/CLAIM/PATH``."""
        m = PVC_SOURCE.match(source)
        if m is None:
            return source
        claim = m.group("claim")
        self.claims.setdefault(claim, f"pvc-{len(self.claims)}")
        return f"{MODELS_DIR}/{claim}{m.group('path') or ''}"

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
    """vLLM OpenAI-server arguments derived from the spec, then the user's own."""
    spec = obj.spec
    model, kv = spec.model, spec.kv_cache
    args = [
        "--model",
        volumes.path(spec.weights_source),
        "--served-model-name",
        model.name,
        "--host",
        "127.0.0.1",
        "--port",
        str(ENGINE_PORT),
        "--tensor-parallel-size",
        str(placement.tensor),
        "--pipeline-parallel-size",
        str(placement.pipeline),
        "--gpu-memory-utilization",
        f"{spec.resources.gpu_memory_utilization:g}",
    ]
    if model.max_model_len is not None:
        args += ["--max-model-len", str(model.max_model_len)]
    if model.dtype != "auto":
        args += ["--dtype", model.dtype]
    if model.quantization is not None:
        args += ["--quantization", model.quantization]
    if model.revision is not None:
        args += ["--revision", model.revision]
    args.append("--enable-prefix-caching" if kv.prefix_caching else "--no-enable-prefix-caching")
    if kv.dtype != "auto":
        args += ["--kv-cache-dtype", kv.dtype]
    if kv.cpu_offload_gib > 0:
        args += ["--kv-offloading-size", f"{kv.cpu_offload_gib:g}"]
    if spec.adapters:
        args += ["--enable-lora", "--max-loras", str(len(spec.adapters)), "--lora-modules"]
        args += [f"{a.name}={volumes.path(a.source)}" for a in spec.adapters]
    return args + list(spec.engine.args)


def _env(var: EnvVar) -> dict[str, Any]:
    if var.value_from is not None:
        ref = var.value_from.secret_key_ref
        return {"name": var.name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    return {"name": var.name, "value": var.value or ""}


def _http_probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": GATEWAY_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


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
    changes, ``node`` pins it."""
    spec, name = obj.spec, obj.metadata.name
    volumes = Volumes()
    args = engine_args(obj, placement, volumes)
    gpus = str(placement.gpus_per_replica)
    engine = {
        "name": "engine",
        "image": spec.engine.image or settings.engine_image,
        "args": args,
        "env": [_env(v) for v in spec.engine.env],
        "resources": {"requests": {GPU_RESOURCE: gpus}, "limits": {GPU_RESOURCE: gpus}},
        "volumeMounts": [
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "hf-cache", "mountPath": "/root/.cache/huggingface"},
            *volumes.mounts(),
        ],
    }
    gateway = {
        "name": "gateway",
        "image": spec.gateway.image or settings.gateway_image,
        "command": ["goodput", "serve", "--config", CONFIG_PATH],
        "ports": [{"name": GATEWAY_PORT_NAME, "containerPort": GATEWAY_PORT, "protocol": "TCP"}],
        "readinessProbe": _http_probe("/readyz", period=5, failures=3),
        "livenessProbe": _http_probe("/healthz", period=10, failures=6),
        "resources": {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"memory": "2Gi"},
        },
        "volumeMounts": [{"name": "gateway-config", "mountPath": CONFIG_DIR, "readOnly": True}],
    }
    return {
        "metadata": {
            "labels": {**naming.labels(name), naming.LABEL_REPLICA: str(replica)},
            "annotations": {naming.ANNOTATION_CONFIG_HASH: config_hash},
        },
        "spec": {
            "containers": [engine, gateway],
            "enableServiceLinks": False,
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
            "volumes": [
                {"name": "shm", "emptyDir": {"medium": "Memory"}},
                {"name": "hf-cache", "emptyDir": {}},
                {
                    "name": "gateway-config",
                    "configMap": {"name": naming.config_map_name(name)},
                },
                *volumes.volumes(),
            ],
        },
    }


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
