"""Certificates, service-account keys and kubeconfigs for a loopback-only control plane.

One private CA per cluster signs the API server's serving certificate and one client certificate
per identity. Identities map onto Kubernetes' bootstrap RBAC (``system:kube-controller-manager``,
``system:kube-scheduler``) or onto ``system:masters`` (the admin user and kwok, which must write
node and pod status for every simulated node). ECDSA P-256 keeps generation instant.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=365)
_RENEW_BEFORE = dt.timedelta(days=7)
# The first address of the service CIDR is the in-cluster `kubernetes` Service.
SERVICE_CIDR = "10.96.0.0/16"
_KUBERNETES_SERVICE_IP = "10.96.0.1"
_SERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Identity:
    """A client certificate subject: ``user`` is the CN, ``groups`` the O fields."""

    file_stem: str
    user: str
    groups: tuple[str, ...] = ()


ADMIN = Identity("admin", "goodput-admin", ("system:masters",))
CONTROLLER_MANAGER = Identity("kube-controller-manager", "system:kube-controller-manager")
SCHEDULER = Identity("kube-scheduler", "system:kube-scheduler")
KWOK = Identity("kwok", "goodput-kwok", ("system:masters",))
# The API server's client for kubelets (logs, exec, port-forward); bound to
# system:kubelet-api-admin by the real node, no more.
KUBELET_CLIENT = Identity("kube-apiserver-kubelet-client", "goodput-kube-apiserver-kubelet-client")
CLIENT_IDENTITIES = (ADMIN, CONTROLLER_MANAGER, SCHEDULER, KWOK, KUBELET_CLIENT)


class ClusterPKI:
    """The files under ``<state>/pki``; ``ensure()`` (re)creates whatever is missing or expiring."""

    def __init__(self, directory: Path, server_ips: tuple[str, ...] = ()) -> None:
        self.directory = directory
        # Addresses beyond loopback the API server is reached at (the real node's bridge).
        self.server_ips = server_ips

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def service_account_public_key(self) -> Path:
        return self.directory / "sa.pub"

    def client_cert(self, identity: Identity) -> Path:
        return self.directory / f"{identity.file_stem}.crt"

    def client_key(self, identity: Identity) -> Path:
        return self.directory / f"{identity.file_stem}.key"

    def ensure(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not _valid(self.ca_cert) or not self.ca_key.exists():
            self._write_ca()
            # A new CA invalidates everything it signed.
            for path in self.directory.glob("*.crt"):
                if path != self.ca_cert:
                    path.unlink()
        ca_key = _load_key(self.ca_key)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        server_ips = ("127.0.0.1", _KUBERNETES_SERVICE_IP, *self.server_ips)
        if not _valid(self.server_cert, server_ips):
            self._write_leaf(
                ca_cert,
                ca_key,
                self.server_cert,
                self.server_key,
                "kube-apiserver",
                (),
                _SERVER_DNS_NAMES,
                server_ips,
            )
        for identity in CLIENT_IDENTITIES:
            self.ensure_client(identity)
        if not self.service_account_key.exists() or not self.service_account_public_key.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            _write_private(self.service_account_key, key)
            self.service_account_public_key.write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

    def ensure_client(self, identity: Identity) -> None:
        """A client certificate for ``identity`` (kept while valid)."""
        if _valid(self.client_cert(identity)):
            return
        self._write_leaf(
            *self._ca(),
            self.client_cert(identity),
            self.client_key(identity),
            identity.user,
            identity.groups,
        )

    def ensure_serving(
        self, stem: str, common_name: str, ips: tuple[str, ...], dns_names: tuple[str, ...] = ()
    ) -> tuple[Path, Path]:
        """A serving certificate for ``ips``/``dns_names`` (a kubelet's); ``(cert, key)``."""
        cert, key = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        if not _valid(cert, ips):
            self._write_leaf(*self._ca(), cert, key, common_name, (), dns_names, ips)
        return cert, key

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        return x509.load_pem_x509_certificate(self.ca_cert.read_bytes()), _load_key(self.ca_key)

    def write_kubeconfig(self, path: Path, identity: Identity, server: str, context: str) -> None:
        """A self-contained kubeconfig (certificates inlined) for ``identity``."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": context,
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": _b64(self.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": f"{context}-{identity.file_stem}",
                    "user": {
                        "client-certificate-data": _b64(self.client_cert(identity)),
                        "client-key-data": _b64(self.client_key(identity)),
                    },
                }
            ],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": f"{context}-{identity.file_stem}"},
                }
            ],
            "current-context": context,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.replace(path)

    def _write_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "goodput-dev-ca")])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_private(self.ca_key, key)
        self.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _write_leaf(
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        cert_path: Path,
        key_path: Path,
        common_name: str,
        organizations: tuple[str, ...],
        dns_names: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> None:
        """A leaf certificate: a server's when it names addresses, else a client's."""
        server = bool(dns_names or ips)
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = _now()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if server:
            names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_private(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _valid(path: Path, ips: tuple[str, ...] = ()) -> bool:
    """Present, not about to expire, and naming every address in ``ips``."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    if cert.not_valid_after_utc - _now() <= _RENEW_BEFORE:
        return False
    if not ips:
        return True
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    named = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    return set(ips) <= named


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return key


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.touch(mode=0o600)
    path.write_bytes(data)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()
