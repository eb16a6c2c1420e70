"""Security set-up of an asyncua `Client` before it connects: `secure(client, cfg)`.

Basic256Sha256 with the configured mode (Sign or SignAndEncrypt): the client's
ApplicationUri is taken from its certificate, the endpoint is looked up with
GetEndpoints, and the server certificate is taken from that endpoint or, when
``server_certificate`` is configured, compared with the pinned one. Every problem
is an `OpcuaFailure` of kind ``certificate`` or ``security``.
"""

from __future__ import annotations

from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import security_policies

from adapters.opcua.errors import OpcuaFailure
from gateway.config import OpcuaServer


async def secure(client: Client, cfg: OpcuaServer) -> None:
    """Look up the endpoint and set the client's security (call before `connect()`)."""
    assert cfg.certificate and cfg.private_key
    mode = getattr(ua.MessageSecurityMode, cfg.security_mode)
    policy = security_policies.SecurityPolicyBasic256Sha256
    try:
        cert_bytes = Path(cfg.certificate).read_bytes()
        Path(cfg.private_key).read_bytes()
    except OSError as e:
        raise OpcuaFailure("certificate", f"cannot read {e.filename}: {e.strerror}") from None
    uri = certificate_uri(cert_bytes)
    if uri:
        client.application_uri = uri
    endpoints = await client.connect_and_get_server_endpoints()
    chosen = [e for e in endpoints if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode]
    if not chosen:
        offered = sorted(
            {f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints}
        )
        raise OpcuaFailure(
            "security",
            f"server offers no {cfg.security_policy}/{cfg.security_mode} endpoint "
            f"(offered: {', '.join(offered)})",
        )
    server_der = first_der(chosen[0].ServerCertificate)
    if cfg.server_certificate:
        try:
            pinned = load_der(Path(cfg.server_certificate).read_bytes())
        except (OSError, ValueError) as e:
            raise OpcuaFailure(
                "certificate", f"cannot load server_certificate {cfg.server_certificate}: {e}"
            ) from None
        if pinned != server_der:
            raise OpcuaFailure(
                "certificate",
                f"server certificate does not match the pinned {cfg.server_certificate}",
            )
    await client.set_security(
        policy,
        cfg.certificate,
        cfg.private_key,
        server_certificate=server_der,
        mode=mode,
    )


def certificate_uri(data: bytes) -> str:
    """The URI SubjectAltName of a PEM or DER certificate (the client's ApplicationUri)."""
    from cryptography import x509

    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(data)
        )
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return ""
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else ""


def load_der(data: bytes) -> bytes:
    """A PEM or DER certificate as DER bytes."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return x509.load_der_x509_certificate(data).public_bytes(Encoding.DER)


def first_der(chain: bytes) -> bytes:
    """The first certificate of a DER chain (servers may send theirs with its CA)."""
    from asyncua.crypto import uacrypto
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = uacrypto.x509_from_der(chain)
    if cert is None:
        raise OpcuaFailure("certificate", "server sent no certificate with its endpoint")
    return cert.public_bytes(Encoding.DER)
