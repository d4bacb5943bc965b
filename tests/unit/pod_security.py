"""The Kubernetes "restricted" Pod Security Standard, as a checker of a pod spec.

One rule per control of https://kubernetes.io/docs/concepts/security/pod-security-standards/
(the baseline controls, which restricted includes, then restricted's own), each returning what
breaks it, so a failing test names the control.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Obj = Mapping[str, Any]

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {
    None,
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
}
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: Obj, container_name: str) -> list[str]:
    """What in pod spec ``pod`` breaks the restricted profile for one of its containers (the
    pod-level controls included, as the admission controller judges them)."""
    container = next(c for c in pod["containers"] if c["name"] == container_name)
    psc: Obj = pod.get("securityContext") or {}
    csc: Obj = container.get("securityContext") or {}
    out: list[str] = []

    # Baseline.
    for sc in (psc, csc):
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append("HostProcess: windowsOptions.hostProcess must not be true")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"Host namespaces: {field} must not be true")
    if csc.get("privileged"):
        out.append("Privileged containers: privileged must not be true")
    if any(p.get("hostPort") for p in container.get("ports") or ()):
        out.append("Host ports: hostPort must be unset or 0")
    for sc in (psc, csc):
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append("AppArmor: the profile must not be Unconfined")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append("SELinux: only the container types, no user or role")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append("Seccomp: the profile must not be Unconfined")
    if csc.get("procMount") not in (None, "Default"):
        out.append("/proc mount type: procMount must be Default")
    for sysctl in psc.get("sysctls") or ():
        if sysctl["name"] not in SAFE_SYSCTLS:
            out.append(f"Sysctls: {sysctl['name']} is not in the safe set")
    for volume in pod.get("volumes") or ():
        if "hostPath" in volume:
            out.append(f"HostPath volumes: {volume['name']}")

    # Restricted.
    for volume in pod.get("volumes") or ():
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"Volume types: {volume['name']} is {sorted(kinds)}")
    if csc.get("allowPrivilegeEscalation") is not False:
        out.append("Privilege escalation: allowPrivilegeEscalation must be false")
    non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
    if non_root is not True:
        out.append("Running as non-root: runAsNonRoot must be true (pod or container)")
    if 0 in (psc.get("runAsUser"), csc.get("runAsUser")):
        out.append("Running as non-root user: runAsUser must not be 0")
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        out.append("Seccomp: RuntimeDefault or Localhost must be set (pod or container)")
    caps = csc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or ()):
        out.append("Capabilities: must drop ALL")
    added = set(caps.get("add") or ())
    if not added <= {"NET_BIND_SERVICE"}:
        out.append(f"Capabilities: may add only NET_BIND_SERVICE, adds {sorted(added)}")
    if not added <= BASELINE_CAPABILITIES:
        out.append(f"Capabilities: {sorted(added - BASELINE_CAPABILITIES)} beyond baseline")
    return out
