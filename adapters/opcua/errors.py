"""Why an OPC UA session ended: `OpcuaFailure` and `classify()`.

`classify` turns whatever asyncua or the network raised into one failure kind
(the ``kind`` label of ``edge_opcua_errors_total``: ``certificate``, ``login``,
``timeout``, ``protocol``, ``security``, ``connect``, ``error``) and a message
fit for one log line. The other kinds (``watchdog``, ``subscription``, ``node``,
``browse``, ``config``) are raised directly where they are detected.
"""

from __future__ import annotations

from asyncua import ua

_CERT_ERRORS = (
    ua.uaerrors.BadCertificateUntrusted,
    ua.uaerrors.BadCertificateInvalid,
    ua.uaerrors.BadCertificateTimeInvalid,
    ua.uaerrors.BadCertificateUriInvalid,
    ua.uaerrors.BadCertificateHostNameInvalid,
    ua.uaerrors.BadCertificateUseNotAllowed,
    ua.uaerrors.BadCertificateRevoked,
    ua.uaerrors.BadCertificateChainIncomplete,
    ua.uaerrors.BadCertificatePolicyCheckFailed,
    ua.uaerrors.BadNoValidCertificates,
    ua.uaerrors.BadSecurityChecksFailed,
    ua.uaerrors.BadSecurityPolicyRejected,
    ua.uaerrors.BadSecurityModeRejected,
)
_LOGIN_ERRORS = (
    ua.uaerrors.BadUserAccessDenied,
    ua.uaerrors.BadIdentityTokenInvalid,
    ua.uaerrors.BadIdentityTokenRejected,
)


class OpcuaFailure(Exception):
    """Why a session ended: `kind` is the label of edge_opcua_errors_total."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def classify(exc: BaseException) -> OpcuaFailure:
    """An exception from asyncua (or the network) as a failure kind and a clear message."""
    if isinstance(exc, OpcuaFailure):
        return exc
    if isinstance(exc, _CERT_ERRORS):
        return OpcuaFailure(
            "certificate", f"certificate refused: {type(exc).__name__} ({_ua_text(exc)})"
        )
    if isinstance(exc, _LOGIN_ERRORS):
        return OpcuaFailure("login", f"login refused: {type(exc).__name__} ({_ua_text(exc)})")
    if isinstance(exc, TimeoutError):
        return OpcuaFailure("timeout", "no answer from the server in time")
    if isinstance(exc, ua.UaStatusCodeError):
        return OpcuaFailure("protocol", f"{type(exc).__name__} ({_ua_text(exc)})")
    if isinstance(exc, ua.UaError) and "No matching endpoints" in str(exc):
        return OpcuaFailure(
            "security", f"server offers no endpoint for our security settings ({exc})"
        )
    if isinstance(exc, ConnectionRefusedError):
        return OpcuaFailure("connect", "connection refused")
    if isinstance(exc, OSError | ConnectionError):
        return OpcuaFailure("connect", str(exc) or type(exc).__name__)
    return OpcuaFailure("error", f"{type(exc).__name__}: {exc}")


def _ua_text(exc: BaseException) -> str:
    text = str(exc)
    cut = text.rfind("(")
    return (text[:cut] if cut > 0 else text).strip().rstrip(".")
