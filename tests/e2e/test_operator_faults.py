"""The operator under faults, on the real local control plane (docs/operator.md, "Fault model").

Each test runs its own operator process(es) in its own namespace, and places onto simulated
A100 80 GB nodes of its own (the shared fleet has none), so the GPUs it counts are its alone:

- many LLMDeployments created at once: no GPU booked twice (the real kube-scheduler binds every
  pod the operator pinned);
- the operator SIGKILLed at random points while the LLMDeployments change, many times: it
  converges, with no duplicate or orphaned object (``GOODPUT_FAULT_KILLS``, default 8);
- two peered replicas: exactly one acts, the other takes over when it is SIGKILLed;
- the API server restarted under a running operator: it recovers without a restart;
- random and mutated specs (Hypothesis) against the API server: each is rejected with a message
  or reconciled to a status with conditions, and the operator never exits or logs a traceback
  (``GOODPUT_FUZZ_SPECS``, default 120).

A node deleted under its replicas is test_placement_e2e's
``test_deleting_a_node_re_places_only_the_replica_on_it``.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from goodput.dev.stack import apply_crds

from .operator_process import OperatorProcess
from .own_nodes import own_nodes
from .waiting import wait_for

if TYPE_CHECKING:
    from goodput.dev.cluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CRDS = [
    ROOT / "crds" / "llmdeployment.yaml",
    ROOT / "charts" / "goodput" / "crds" / "kopf-peering.yaml",
]
A100 = "NVIDIA-A100-SXM4-80GB"
GPUS_PER_NODE = 8
NODES = 4
KILLS = int(os.environ.get("GOODPUT_FAULT_KILLS", "8"))
MAX_CHURNED = 4
FUZZ_SPECS = int(os.environ.get("GOODPUT_FUZZ_SPECS", "120"))
MANAGED = "app.kubernetes.io/managed-by=goodput"
LLAMA_8B = {
    "name": "meta-llama/Meta-Llama-3-8B-Instruct",
    "architecture": "llama-3-8b",
    "maxModelLen": 4096,
}


def spec(replicas: int = 1, tensor: int = 1, **more: Any) -> dict[str, Any]:
    """A spec placed on this module's nodes only."""
    return {
        "model": LLAMA_8B,
        "slo": {"ttftMs": 2000, "tpotMs": 100},
        "replicas": replicas,
        "resources": {"gpuTypes": ["A100-80GB"], "parallelism": {"tensor": tensor, "pipeline": 1}},
        **more,
    }


def manifest(name: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "goodput.dev/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": body,
    }


def get(cluster: LocalCluster, ns: str, *what: str) -> Any:
    out = cluster.kubectl("get", *what, "-n", ns, "-o", "json", check=False)
    return json.loads(out) if out.strip() else None


def items(cluster: LocalCluster, ns: str, kind: str, *selector: str) -> list[dict[str, Any]]:
    """Live objects (not being deleted)."""
    listed = get(cluster, ns, kind, *selector) or {"items": []}
    return [o for o in listed["items"] if not o["metadata"].get("deletionTimestamp")]


def placed(obj: dict[str, Any]) -> dict[str, Any] | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Placed"), None)


@pytest.fixture(scope="module")
def crds(cluster: LocalCluster) -> LocalCluster:
    apply_crds(cluster, CRDS)
    return cluster


@pytest.fixture(scope="module")
def a100_nodes(crds: LocalCluster) -> Iterator[list[str]]:
    """Simulated A100 80 GB nodes (8 GPUs each) of this module's own, labelled like the dev
    fleet's but outside it."""
    pool = {
        "name": "a100-80",
        "gpu": {"product": A100, "memoryMiB": 81920, "family": "ampere",
                "computeCapability": "8.0"},
        "gpusPerNode": GPUS_PER_NODE, "interconnect": "nvlink", "count": NODES,
        "zones": ["local-1a", "local-1b"], "nodesPerRack": 2,
        "instanceType": "sim.a100-80.8x", "cpu": 96, "memoryGiB": 1152,
    }  # fmt: skip
    with own_nodes(crds, pool, "fault") as names:
        yield names


@pytest.fixture
def ns(crds: LocalCluster, a100_nodes: list[str]) -> Iterator[str]:
    cluster = crds
    name = f"fault-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    # Free this module's nodes for the next test: delete the LLMDeployments (the garbage
    # collector takes their workloads) and wait for their pods to go.
    cluster.kubectl("delete", "llmd", "--all", "-n", name, "--wait=false", check=False)
    wait_for(lambda: not items(cluster, name, "pods"), timeout=120, what="its pods to go")
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def operator_in(
    cluster: LocalCluster, ns: str, tmp_path: Path, name: str = "operator", **kwargs: Any
) -> OperatorProcess:
    return OperatorProcess(cluster.kubeconfig, ns, tmp_path / f"{name}.log", **kwargs)


def apply(cluster: LocalCluster, ns: str, *docs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump_all(docs))


def gpus_of(template: dict[str, Any]) -> int:
    containers = template["spec"]["containers"]
    return sum(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in containers)


def bookings(cluster: LocalCluster, ns: str) -> Counter[str]:
    """GPUs the replica Deployments pin to each node."""
    out: Counter[str] = Counter()
    for dep in items(cluster, ns, "deployments", "-l", MANAGED):
        node = (dep["metadata"].get("annotations") or {}).get("goodput.dev/node")
        if node:
            out[node] += gpus_of(dep["spec"]["template"])
    return out


def bound_where_pinned(cluster: LocalCluster, ns: str) -> bool:
    """Every replica Deployment has exactly one live pod, bound to its pinned node."""
    deployments = items(cluster, ns, "deployments", "-l", MANAGED)
    pods = items(cluster, ns, "pods", "-l", "goodput.dev/deployment")
    where: dict[tuple[str, str], list[str]] = {}
    for pod in pods:
        labels = pod["metadata"]["labels"]
        key = (labels["goodput.dev/deployment"], labels["goodput.dev/replica"])
        where.setdefault(key, []).append(pod["spec"].get("nodeName") or "")
    for dep in deployments:
        labels = dep["metadata"]["labels"]
        key = (labels["goodput.dev/deployment"], labels["goodput.dev/replica"])
        if where.get(key) != [dep["metadata"]["annotations"]["goodput.dev/node"]]:
            return False
    return True


def test_concurrent_creations_book_no_gpu_twice(
    cluster: LocalCluster, ns: str, a100_nodes: list[str], tmp_path: Path
) -> None:
    """16 LLMDeployments of one 4-GPU replica each, created in one go, on 4 nodes of 8 GPUs:
    exactly 8 fit. Before the inventory held reservations, every reconcile saw all 32 GPUs free
    (no pod bound yet) and more than 8 were placed, their pods Pending."""
    operator = operator_in(cluster, ns, tmp_path)
    operator.start()
    try:
        wanted = 2 * len(a100_nodes) * GPUS_PER_NODE // 4
        apply(cluster, ns, *(manifest(f"c{i:02d}", spec(tensor=4)) for i in range(wanted)))

        def decided() -> list[dict[str, Any]] | None:
            objs = items(cluster, ns, "llmd")
            return objs if len(objs) == wanted and all(placed(o) for o in objs) else None

        objs = wait_for(decided, what="a Placed condition on every LLMDeployment")
        verdicts = Counter((placed(o) or {}).get("reason") for o in objs)
        booked = bookings(cluster, ns)
        assert max(booked.values()) <= GPUS_PER_NODE, (booked, operator.tail())
        assert verdicts == {"GPUsChosen": wanted // 2, "InsufficientGPUs": wanted // 2}, verdicts
        assert sum(booked.values()) == len(a100_nodes) * GPUS_PER_NODE
        # The real scheduler agrees: every pinned pod is bound, none waits for GPUs.
        wait_for(lambda: bound_where_pinned(cluster, ns), what="every pod bound where pinned")
        assert "Traceback" not in operator.text()
    finally:
        operator.stop()


class Churn:
    """Random changes to a few LLMDeployments, as users and autoscalers make them."""

    def __init__(self, cluster: LocalCluster, ns: str, rng: random.Random) -> None:
        self.cluster, self.ns, self.rng = cluster, ns, rng
        self.serial = 0
        self.done: Counter[str] = Counter()

    def names(self) -> list[str]:
        return sorted(o["metadata"]["name"] for o in items(self.cluster, self.ns, "llmd"))

    def step(self) -> None:
        """One change; at most ``MAX_CHURNED`` LLMDeployments of at most 6 GPUs each, so that
        all of them always fit on this module's 32 GPUs."""
        names = self.names()
        actions = ["scale", "roll", "delete"] + (["create"] if len(names) < MAX_CHURNED else [])
        action = self.rng.choice(actions) if len(names) > 1 else "create"
        if action == "create":
            self.serial += 1
            body = spec(replicas=self.rng.randint(1, 3), tensor=self.rng.choice([1, 2]))
            apply(self.cluster, self.ns, manifest(f"k{self.serial:03d}", body))
        elif action == "scale":
            self.scale(self.rng.choice(names), self.rng.randint(0, 3))
        elif action == "roll":
            patch = {
                "spec": {"engine": {"args": ["--max-num-seqs", str(self.rng.randint(8, 256))]}}
            }
            name = self.rng.choice(names)
            self.cluster.kubectl(
                "patch",
                "llmd",
                name,
                "-n",
                self.ns,
                "--type=merge",
                "-p",
                json.dumps(patch),
                check=False,
            )
        else:
            name = self.rng.choice(names)
            self.cluster.kubectl("delete", "llmd", name, "-n", self.ns, "--wait=false", check=False)
        self.done[action] += 1

    def scale(self, name: str, replicas: int) -> None:
        self.cluster.kubectl(
            "scale", "llmd", name, "-n", self.ns, f"--replicas={replicas}", check=False
        )


def converged(cluster: LocalCluster, ns: str) -> list[str]:
    """What is not yet as the LLMDeployments ask (empty once converged): each one's status is
    current and placed, and its replica Deployments are exactly ``NAME-r0`` .. ``r<n-1>``."""
    problems = []
    workloads = Counter(d["metadata"]["labels"]["goodput.dev/deployment"]
                        for d in items(cluster, ns, "deployments", "-l", MANAGED))  # fmt: skip
    for obj in items(cluster, ns, "llmd"):
        name, st = obj["metadata"]["name"], obj.get("status") or {}
        verdict = placed(obj) or {}
        if st.get("observedGeneration") != obj["metadata"]["generation"]:
            problems.append(f"{name}: observedGeneration {st.get('observedGeneration')}")
        elif verdict.get("status") != "True":
            problems.append(f"{name}: Placed {verdict}")
        elif workloads[name] != obj["spec"]["replicas"]:
            problems.append(f"{name}: {workloads[name]} workloads for {obj['spec']['replicas']}")
        elif st.get("ready") != f"{obj['spec']['replicas']}/{obj['spec']['replicas']}":
            problems.append(f"{name}: ready {st.get('ready')}")
    return problems


def ownership_problems(cluster: LocalCluster, ns: str) -> list[str]:
    """Duplicates and orphans among everything the operator owns: each object has one
    controller owner reference, to a live LLMDeployment of the name in its labels, and is the
    only one of its kind and role (one ConfigMap and Service per LLMDeployment, one Deployment
    per replica, one live pod per replica)."""
    parents = {o["metadata"]["name"]: o["metadata"]["uid"] for o in items(cluster, ns, "llmd")}
    problems = []
    roles: Counter[tuple[str, ...]] = Counter()
    for kind in ("configmaps", "services", "deployments", "poddisruptionbudgets"):
        for obj in items(cluster, ns, kind, "-l", MANAGED):
            meta = obj["metadata"]
            owner = meta["labels"].get("goodput.dev/deployment")
            refs = [r for r in meta.get("ownerReferences") or () if r.get("controller")]
            if [(r["kind"], r["name"], r["uid"]) for r in refs] != [
                ("LLMDeployment", owner, parents.get(owner or ""))
            ]:
                problems.append(f"orphan {kind}/{meta['name']}: owner {refs}")
            roles[(kind, owner or "", meta["labels"].get("goodput.dev/replica", ""))] += 1
    for pod in items(cluster, ns, "pods", "-l", "goodput.dev/deployment"):
        labels = pod["metadata"]["labels"]
        roles[("pods", labels["goodput.dev/deployment"], labels["goodput.dev/replica"])] += 1
    problems += [f"{n} x {role}" for role, n in sorted(roles.items()) if n > 1]
    return problems


@pytest.mark.timeout(max(900, 40 * KILLS))  # a loaded machine's start-up: up to 30 s a kill
def test_sigkill_at_random_points_converges_without_duplicates_or_orphans(
    cluster: LocalCluster, ns: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("GOODPUT_FAULT_SEED", str(time.time_ns() % 2**32)))
    rng = random.Random(seed)
    churn = Churn(cluster, ns, rng)
    operator = operator_in(cluster, ns, tmp_path)
    kills: Counter[str] = Counter()
    try:
        for _ in range(3):
            churn.step()
        for _ in range(KILLS):
            operator.start()
            # A fifth of the kills land during start-up (imports, login, listing: seconds on a
            # busy machine); the rest 0-3 s after it, while every LLMDeployment resumes and the
            # changes made meanwhile are reconciled.
            early = rng.random() < 0.2
            if not early:
                wait_for(operator.started_up, timeout=120, what="start-up")
            deadline = time.monotonic() + rng.uniform(0.0, 3.0 if not early else 2.0)
            while time.monotonic() < deadline:
                if rng.random() < 0.4:
                    churn.step()
                time.sleep(min(0.3, max(0.0, deadline - time.monotonic())))
            assert operator.running, f"the operator exited by itself:\n{operator.tail()}"
            log = operator.this_run()
            operator.kill()
            if "startup' succeeded" not in log:
                kills["during start-up"] += 1
            elif "goodput.operator:" in log:
                kills["after a reconcile posted a notice"] += 1
            else:
                kills["after start-up, before any notice"] += 1
        # One LLMDeployment always ends scaled to 0: the solver's one-replica minimum once kept
        # replica 0 there, which this test caught only when the draws happened to end at 0.
        if names := churn.names():
            churn.scale(rng.choice(names), 0)
            churn.done["scale to 0 at the end"] += 1
        operator.start()
        wait_for(
            lambda: not converged(cluster, ns) and bound_where_pinned(cluster, ns),
            timeout=240,
            what=f"convergence after {KILLS} kills {dict(kills)} (seed {seed})",
            explain=lambda: "\n".join(converged(cluster, ns)) + "\n" + operator.tail(),
        )
        # What the garbage collector does not do in an instant: a scaled-down replica's pod.
        wait_for(
            lambda: ownership_problems(cluster, ns) == [] or None,
            timeout=60,
            what="no duplicate or orphaned object",
            explain=lambda: "\n".join(ownership_problems(cluster, ns)),
        )
        text = operator.text()
        assert "Traceback" not in text, text[-4000:]
        booked = bookings(cluster, ns)
        assert max(booked.values(), default=0) <= GPUS_PER_NODE, booked
    finally:
        operator.stop()
    report = {"seed": seed, "kills": dict(kills), "changes": dict(churn.done)}
    (tmp_path / "kills.json").write_text(json.dumps(report))
    print(f"SIGKILL test: {json.dumps(report)}")


def test_two_peered_replicas_one_acts_and_the_other_takes_over(
    cluster: LocalCluster, ns: str, tmp_path: Path
) -> None:
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "goodput"}}
    apply(cluster, ns, peering)
    lifetime = 15
    active, standby = (
        operator_in(cluster, ns, tmp_path, name, peering="goodput", priority=priority,
                    peering_lifetime_s=lifetime)
        for name, priority in (("active", 2), ("standby", 1))
    )  # fmt: skip
    try:
        active.start()
        standby.start()
        # Both keep their record in the peering object; the standby stays paused (kopf starts
        # every peered replica paused until it knows it has the highest priority).
        wait_for(
            lambda: (
                len((get(cluster, ns, "kopfpeering", "goodput") or {}).get("status") or {}) == 2
            ),
            what="both replicas in the peering",
        )
        apply(cluster, ns, manifest("peer", spec()))
        wait_for(
            lambda: (placed(get(cluster, ns, "llmd", "peer") or {}) or {}).get("status") == "True",
            what="peer placed",
            explain=lambda: active.tail() + "\n---\n" + standby.tail(),
        )
        time.sleep(2)
        assert f"{ns}/peer" in active.text()
        assert f"{ns}/peer" not in standby.text(), standby.tail()

        active.kill()  # no goodbye: its peering record lapses after `lifetime`
        killed = time.monotonic()
        cluster.kubectl("scale", "llmd", "peer", "-n", ns, "--replicas=2")
        wait_for(
            lambda: len(items(cluster, ns, "deployments", "-l", MANAGED)) == 2,
            timeout=lifetime + 60,
            what="the standby to take over and scale",
            explain=standby.tail,
        )
        failover = time.monotonic() - killed
        assert "Resuming operations after the pause" in standby.text()
        wait_for(lambda: f"{ns}/peer" in standby.text(), timeout=30, what="the standby's notice")
        assert failover < lifetime + 30, failover
        assert "Traceback" not in standby.text() + active.text()
        print(f"peering failover after SIGKILL: {failover:.1f}s (lifetime {lifetime}s)")
    finally:
        active.stop()
        standby.stop()


def test_api_server_restart_is_ridden_out_without_a_restart(
    cluster: LocalCluster, ns: str, tmp_path: Path
) -> None:
    operator = operator_in(cluster, ns, tmp_path)
    operator.start()
    try:
        apply(cluster, ns, manifest("steady", spec()))
        wait_for(
            lambda: not converged(cluster, ns) and items(cluster, ns, "llmd"),
            what="steady converged",
            explain=operator.tail,
        )
        pid = operator.proc.pid if operator.proc else None
        cluster.restart("kube-apiserver", down_s=5)
        restarted = time.monotonic()
        # New work, and the loss of an owned object (the Deployment watch must be back).
        cluster.kubectl("scale", "llmd", "steady", "-n", ns, "--replicas=2")
        apply(cluster, ns, manifest("after", spec()))
        wait_for(
            lambda: not converged(cluster, ns) and len(items(cluster, ns, "llmd")) == 2,
            timeout=240,
            what="changes after the restart reconciled",
            explain=lambda: "\n".join(converged(cluster, ns)) + "\n" + operator.tail(),
        )
        cluster.kubectl("delete", "deployment", "steady-r0", "-n", ns)
        wait_for(
            lambda: not converged(cluster, ns) and bound_where_pinned(cluster, ns),
            timeout=120,
            what="the deleted replica Deployment re-created",
            explain=operator.tail,
        )
        assert operator.running and operator.proc is not None and operator.proc.pid == pid
        assert ownership_problems(cluster, ns) == []
        print(f"API server restart: recovered {time.monotonic() - restarted:.1f}s after it")
    finally:
        operator.stop()


# ----- CR fuzz ---------------------------------------------------------------------------------

# Every code point, surrogates and characters beyond the Basic Multilingual Plane included: the
# latter once made every apply of the objects carrying them fail (the client escaped them as
# surrogate pairs, which the API server's YAML decoder refuses) and the operator retry for ever.
TEXT = st.characters()
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(TEXT, max_size=40),
    st.lists(st.text(TEXT, max_size=8), max_size=3),
    st.dictionaries(st.text(TEXT, max_size=8), st.integers(), max_size=3),
)


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRDS[0].read_text())
    spec_schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(spec_schema["properties"]["spec"])


def _paths(
    schema: dict[str, Any], prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Any]]:
    """Every field path of the spec's schema, with its schema (``[]``: an array's first item)."""
    out: list[tuple[tuple[str, ...], Any]] = []
    for key, sub in (schema.get("properties") or {}).items():
        path = (*prefix, key)
        out.append((path, sub))
        if sub.get("type") == "object":
            out += _paths(sub, path)
        items_schema = sub.get("items") or {}
        if sub.get("type") == "array" and items_schema.get("type") == "object":
            out += _paths(items_schema, (*path, "[]"))
    return out


def typed(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of the field's type, bounds included and crossed (the API server's job)."""
    kind = schema.get("type")
    if "enum" in schema:
        return st.one_of(st.sampled_from(schema["enum"]), st.text(TEXT, max_size=12))
    if kind == "integer":
        low, high = schema.get("minimum", -(2**31)), schema.get("maximum", 2**31)
        edges = st.sampled_from([low - 1, low, high, high + 1, 0, -1])
        inside = st.integers(min_value=int(low), max_value=int(min(high, 4096)))
        return st.one_of(edges, inside, inside)
    if kind == "number":
        return st.one_of(
            st.sampled_from([0, -1, 1e-9, 0.5, 1, 99.9, 100, 1e12, 1.79e308]),
            st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return st.one_of(
            st.text(TEXT, max_size=schema.get("maxLength", 64) + 2), st.text("ab-", max_size=8)
        )
    if kind == "array":
        return st.lists(typed(schema.get("items") or {}), max_size=4)
    if kind == "object":
        props, required = schema.get("properties") or {}, set(schema.get("required") or ())
        return st.fixed_dictionaries(
            {k: typed(v) for k, v in props.items() if k in required},
            optional={k: typed(v) for k, v in props.items() if k not in required},
        )
    return JUNK


BASE_SPECS = [
    spec(),
    spec(
        replicas=2,
        scheduling={
            "policy": "slo",
            "priorityClasses": [{"name": "interactive", "rank": 0}, {"name": "batch", "rank": 1}],
            "defaultPriority": "batch",
        },
        adapters=[{"name": "sql", "source": "org/sql-lora"}],
        autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 3},
        engine={"args": ["--max-num-seqs", "64"], "env": [{"name": "A", "value": "b"}]},
    ),
]
PATHS = _paths(_schema())


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any, delete: bool) -> None:
    """Set (or delete) ``path`` in ``doc``, creating parents; ``[]`` is an array's first item."""
    node: Any = doc
    for key in path[:-1]:
        if key == "[]":
            if not isinstance(node, list):
                return
            if not node:
                node.append({})
            node = node[0]
        else:
            if not isinstance(node, dict):
                return
            if not isinstance(node.get(key), dict | list):
                node[key] = [] if path[path.index(key) + 1] == "[]" else {}
            node = node[key]
    if isinstance(node, dict):
        if delete:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value


@st.composite
def fuzzed_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec with 1-3 fields set to typed or junk values, or deleted; or pure junk.
    Which fields and what to do come from a seeded ``random`` (uniform, where Hypothesis's own
    choices lean towards the first field); the values from Hypothesis."""
    rnd = draw(st.randoms(use_true_random=True))
    if rnd.random() < 0.05:
        return draw(st.dictionaries(st.sampled_from([p[0] for p, _ in PATHS]), JUNK, max_size=4))
    doc = copy.deepcopy(rnd.choice(BASE_SPECS))
    for _ in range(rnd.randint(1, 3)):
        path, schema = rnd.choice(PATHS)
        value = draw(typed(schema) if rnd.random() < 0.8 else JUNK)
        _set(doc, path, value, delete=rnd.random() < 0.15)
    # Never on the shared fleet's GPUs (nor the real node's): this module's nodes or none.
    if isinstance(doc.get("resources"), dict):
        doc["resources"]["gpuTypes"] = draw(
            st.sampled_from([["A100-80GB"], ["ZZ-nothing"], ["A100-80GB", "ZZ-nothing"]])
        )
    return dict(doc)


def test_fuzzed_specs_are_rejected_with_a_message_or_reconciled(
    cluster: LocalCluster, ns: str, tmp_path: Path
) -> None:
    """Each random spec is either refused by the API server (schema or CEL) with a message
    naming the field, or accepted and then reconciled to a status with a Placed condition; the
    operator never exits and never logs a traceback."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = cluster.api_client()
    custom = client.CustomObjectsApi(api)
    operator = operator_in(cluster, ns, tmp_path)
    operator.start()
    accepted: dict[str, dict[str, Any]] = {}
    rejected: Counter[int] = Counter()
    examples: dict[str, str] = {}

    @settings(
        max_examples=FUZZ_SPECS,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=fuzzed_specs())
    def apply_one(body: dict[str, Any]) -> None:
        name = f"fz{len(accepted) + sum(rejected.values()):04d}"
        doc = manifest(name, body)
        try:
            custom.create_namespaced_custom_object(
                "goodput.dev", "v1alpha1", ns, "llmdeployments", doc
            )
        except ApiException as err:
            assert err.status in (400, 422), (err.status, err.body, body)
            message = json.loads(err.body or "{}").get("message", "")
            assert message and ("spec" in message or "json" in message.lower()), message
            rejected[err.status] += 1
            examples.setdefault(
                message.split(":")[1].strip() if ":" in message else message, message
            )
            return
        accepted[name] = body

    # Beyond the Basic Multilingual Plane, and a lone surrogate, for certain (not by chance).
    for name, source in (("fz-astral", "org/m\U0001f600\U0001c097"), ("fz-lone", "org/m\ud800")):
        body = spec(model={**LLAMA_8B, "source": source})
        custom.create_namespaced_custom_object(
            "goodput.dev", "v1alpha1", ns, "llmdeployments", manifest(name, body)
        )
        accepted[name] = body
    try:
        apply_one()

        def undecided() -> list[str]:
            objs = {o["metadata"]["name"]: o for o in items(cluster, ns, "llmd")}
            return [n for n in accepted if not placed(objs.get(n, {}))]

        wait_for(
            lambda: not undecided() or None,
            timeout=240,
            what="a Placed condition on every accepted spec",
            explain=lambda: (
                json.dumps({n: accepted[n] for n in undecided()[:5]}, indent=1)
                + "\n"
                + operator.tail(60)
            ),
        )
        assert operator.running, operator.tail()
        text = operator.text()
        assert "Traceback" not in text, text[text.index("Traceback") - 2000 :][:6000]
    finally:
        operator.stop()
        api.close()
    objs = {o["metadata"]["name"]: o for o in items(cluster, ns, "llmd")}
    for name in ("fz-astral", "fz-lone"):
        assert (placed(objs[name]) or {}).get("reason") != "WorkloadRejected", objs[name]
    verdicts = Counter((placed(o) or {}).get("reason") for o in objs.values())
    report = {"specs": FUZZ_SPECS, "accepted": len(accepted), "rejected": dict(rejected),
              "placed": dict(verdicts)}  # fmt: skip
    print(f"CR fuzz: {json.dumps(report)}")
    assert accepted and rejected, report
