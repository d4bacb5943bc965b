"""Pieces of the local control plane that need no binaries: PKI, ports, go.mod rendering."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from cryptography import x509

from goodput.dev import pki
from goodput.dev.binaries import BinaryCache, recipe_fingerprint, staging_modules
from goodput.dev.cli import dev
from goodput.dev.cluster import ClusterPorts, LocalCluster, checkout_cluster_name
from goodput.dev.processes import ProcessSpec, Supervisor, process_alive, start_ticks
from goodput.dev.versions import KUBERNETES, GoComponent


def test_dev_and_test_clusters_get_distinct_fixed_ports() -> None:
    dev, test = ClusterPorts.for_name("goodput-dev"), ClusterPorts.for_name("goodput-test")
    assert dev == ClusterPorts.for_name("goodput-dev")
    assert not set(dev.all()) & set(test.all())
    assert all(1024 < port < 32768 for port in dev.all() + test.all())


def test_staging_modules_are_read_from_kubernetes_go_mod() -> None:
    go_mod = """
module k8s.io/kubernetes
require k8s.io/api v0.0.0
replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tgithub.com/x/y => github.com/x/z v1.0.0
)
"""
    assert staging_modules(go_mod) == ["k8s.io/api", "k8s.io/client-go"]


def test_recipe_fingerprint_tracks_version_and_flags() -> None:
    other = GoComponent(**{**KUBERNETES.__dict__, "version": "v1.36.99"})
    assert recipe_fingerprint(KUBERNETES) != recipe_fingerprint(other)
    assert BinaryCache().component_dir(KUBERNETES).name == f"kubernetes-{KUBERNETES.version}"


def test_pki_issues_certificates_for_each_identity(tmp_path: Path) -> None:
    cluster_pki = pki.ClusterPKI(tmp_path / "pki")
    cluster_pki.ensure()
    ca = x509.load_pem_x509_certificate(cluster_pki.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(cluster_pki.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    admin = x509.load_pem_x509_certificate(cluster_pki.client_cert(pki.ADMIN).read_bytes())
    admin.verify_directly_issued_by(ca)
    assert admin.subject.rfc4514_string() == "CN=goodput-admin,O=system:masters"
    before = cluster_pki.client_cert(pki.SCHEDULER).read_bytes()
    cluster_pki.ensure()  # idempotent: valid certificates are kept
    assert cluster_pki.client_cert(pki.SCHEDULER).read_bytes() == before
    assert oct(cluster_pki.ca_key.stat().st_mode & 0o777) == "0o600"

    kubeconfig = tmp_path / "kubeconfig"
    cluster_pki.write_kubeconfig(kubeconfig, pki.ADMIN, "https://127.0.0.1:1", "c")
    config = yaml.safe_load(kubeconfig.read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1"
    assert config["current-context"] == "c"


def test_supervisor_stops_its_processes_and_finds_lost_ones(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path) + "/marker"]
    record = supervisor.start(ProcessSpec("sleeper", sleeper))
    assert supervisor.alive("sleeper")
    supervisor.stop("sleeper", timeout=5)
    assert not process_alive(record.pid, record.start_ticks)
    assert supervisor.record("sleeper") is None
    # A process of an unmanaged program is never treated as a stray, whatever its arguments.
    assert supervisor.strays() == []
    assert start_ticks(2**22 + 1) == -1


def test_supervisor_outlives_its_parent(tmp_path: Path) -> None:
    # `goodput dev up` exits while the cluster keeps running: the child must survive its parent.
    script = (
        "import sys; from pathlib import Path; from goodput.dev.processes import *;"
        "s = Supervisor(Path(sys.argv[1]));"
        "s.start(ProcessSpec('sleeper', [sys.executable, '-c', 'import time; time.sleep(60)']))"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    supervisor = Supervisor(tmp_path)
    assert supervisor.alive("sleeper")
    supervisor.stop_all(timeout=5)
    assert not supervisor.alive("sleeper")


def test_env_command_prints_kubeconfig_and_bin_dir(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("GOODPUT_CACHE_DIR", str(tmp_path))
    result = CliRunner().invoke(dev, ["env", "--name", "demo"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"export KUBECONFIG={tmp_path}/clusters/demo/kubeconfig"
    assert lines[1].startswith(f"export PATH={tmp_path}/bin/path-") and lines[1].endswith(":$PATH")


def test_a_cluster_whose_ports_are_taken_moves_to_the_next_free_block(tmp_path: Path) -> None:
    cluster = LocalCluster("ports-demo", state_root=tmp_path)
    preferred = cluster.ports
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", preferred.apiserver))
        squatter.listen()
        cluster._claim_ports(lambda _message: None, settle=0)
    assert cluster.ports.index != preferred.index
    assert LocalCluster("ports-demo", state_root=tmp_path).ports == cluster.ports


def test_checkout_cluster_name_is_stable_and_distinct_per_prefix() -> None:
    assert checkout_cluster_name("goodput-test") == checkout_cluster_name("goodput-test")
    assert checkout_cluster_name("a") != checkout_cluster_name("b")
