"""Certificates for the simulator and its test clients: `make_certificate`, `CertFiles`.

Self-signed RSA-2048 application certificates (DER) with their keys (PEM), as
``--secure`` writes them into ``--cert-dir``; tests use `make_certificate` for
clients the server does not trust. cryptography is imported when a certificate is
made, not with this module.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from simulator.opcua import CLIENT_APP_URI, SERVER_APP_URI


def make_certificate(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    app_uri: str,
    common_name: str,
    *,
    days: int = 365,
) -> None:
    """Write a self-signed RSA-2048 application certificate (DER) and key (PEM).

    The certificate names ``app_uri`` as a URI SubjectAltName and covers
    localhost, this host name and 127.0.0.1, with the key usages OPC UA
    Basic256Sha256 needs; it is usable as client and as server certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    hosts = sorted({"localhost", socket.gethostname()})
    san = x509.SubjectAlternativeName(
        [
            x509.UniformResourceIdentifier(app_uri),
            *(x509.DNSName(h) for h in hosts),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.DER))
    Path(key_path).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)


@dataclass(frozen=True, slots=True)
class CertFiles:
    """The files ``--secure`` writes into the certificate directory."""

    dir: Path

    @property
    def server_cert(self) -> Path:
        return self.dir / "server-cert.der"

    @property
    def server_key(self) -> Path:
        return self.dir / "server-key.pem"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client-cert.der"

    @property
    def client_key(self) -> Path:
        return self.dir / "client-key.pem"

    def ensure(self) -> None:
        """Generate the server and the default client pair unless present."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.server_cert.exists() and self.server_key.exists()):
            make_certificate(self.server_cert, self.server_key, SERVER_APP_URI, "edge-sim opcua")
        if not (self.client_cert.exists() and self.client_key.exists()):
            make_certificate(self.client_cert, self.client_key, CLIENT_APP_URI, "edge-gateway")
