"""The shipped secured broker (mosquitto/secure.conf + mosquitto/acl) with a real gateway.

A CA and a server certificate (SAN 127.0.0.1, localhost) and a password file with the
users device / gateway / scada are generated per module; mosquitto runs from
secure.conf rewritten only where a test must: the /mosquitto/... paths point into a temp
dir, the listener is a free port bound to 127.0.0.1. Everything else (no anonymous
logins, TLS 1.2 minimum, per_listener_settings) is the shipped file, and so is the ACL,
plus one appended account, ``acl-observer``, that reads and writes everything: it sees
what a publish delivered and publishes what a subscriber may or may not get. Its block
comes last, so it grants nobody else anything.

Shown here: the gateway logs in as "gateway" over TLS (CA verified, no tls_insecure); a
reading published by "device" reaches VictoriaMetrics; a threshold alert reaches
"scada" on alerts/#, and "scada" acknowledges it on alerts/ack; what "device" publishes
under alerts/... reaches nobody; anonymous and wrong-password logins are refused; a
plain MQTT connection to the TLS port gets no CONNACK; a gateway with a wrong password,
or without the CA, is not ready and logs why; each right of the ACL, allowed or
denied, is exercised on the broker (test_acl_rights).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import re
import secrets
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.config import AlertsConfig, MqttConfig
from tests.conftest import require_binary
from tests.harness import Gateways, MqttProbe, uid
from tests.servers import HOST, Mosquitto, VictoriaMetrics

ROOT = Path(__file__).resolve().parents[2]
SECURE_CONF = ROOT / "mosquitto" / "secure.conf"
ACL = ROOT / "mosquitto" / "acl"
USERS = ("device", "gateway", "scada")
OBSERVER = "acl-observer"  # test-only account: readwrite # (appended to the ACL)


# ------------------------------------------------------------------ certificates


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_certs(out: Path) -> None:
    """ca.crt, server.crt (SAN 127.0.0.1, localhost; signed by the CA), server.key."""
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key, server_key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-gateway test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, out / "server.key")


# ----------------------------------------------------------------------- broker


def render_secure_conf(broker: Mosquitto) -> str:
    """secure.conf with its paths in the broker's dir and its listener on a free port.

    Each rewrite must hit exactly once, so a change of the shipped file that the
    rewrite no longer covers fails here instead of testing something else.
    """
    text = SECURE_CONF.read_text()
    rewrites = [
        (r"^listener 8883$", f"listener {broker.port} {broker.host}"),
        (
            r"^persistence_location /mosquitto/data/$",
            f"persistence_location {broker.persistence_dir}/",
        ),
        (r"^password_file /mosquitto/config/passwd$", f"password_file {broker.dir}/passwd"),
        (r"^acl_file /mosquitto/config/acl$", f"acl_file {broker.dir}/acl"),
    ]
    for name in ("cafile", "certfile", "keyfile"):
        rewrites.append(
            (rf"^{name} /mosquitto/config/certs/(\S+)$", rf"{name} {broker.dir}/certs/\1")
        )
    for pattern, repl in rewrites:
        text, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
        assert n == 1, f"secure.conf: {pattern!r} matched {n} times"
    assert "/mosquitto/" not in re.sub(r"#.*", "", text), "a path was left unrewritten"
    return text


class SecureBroker(NamedTuple):
    server: Mosquitto
    ca_file: Path
    passwords: dict[str, str]

    @property
    def port(self) -> int:
        return self.server.port

    def tls(self) -> ssl.SSLContext:
        """A client context that trusts only the test CA and checks the host name."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def probe(
        self, user: str | None, subscribe: tuple[str, ...] = (), *, password: str | None = None
    ) -> MqttProbe:
        """A TLS client logged in as `user` (with its password unless one is given)."""
        if password is None and user is not None:
            password = self.passwords.get(user)
        return MqttProbe(self.port, subscribe, username=user, password=password, tls=self.tls())


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[SecureBroker]:
    require_binary(Mosquitto.binary)
    passwd = require_binary("mosquitto_passwd")
    server = Mosquitto(config=render_secure_conf)
    try:
        make_certs(server.dir / "certs")
        shipped_acl = ACL.read_text()
        assert OBSERVER not in shipped_acl
        (server.dir / "acl").write_text(
            f"{shipped_acl.rstrip()}\n\n# test only\nuser {OBSERVER}\ntopic readwrite #\n"
        )
        passwords = {u: secrets.token_urlsafe(12) for u in (*USERS, OBSERVER)}
        pwfile = server.dir / "passwd"
        pwfile.touch(mode=0o600)
        for user, pw in passwords.items():
            subprocess.run([passwd, "-b", str(pwfile), user, pw], check=True, timeout=30)
        server.start()
        yield SecureBroker(server, server.dir / "certs" / "ca.crt", passwords)
    finally:
        server.close()


@pytest.fixture
def secure_spawn(
    secure_broker: SecureBroker, victoria: VictoriaMetrics, tmp_path: Path
) -> Iterator[Gateways]:
    """Gateways on the secured broker; each must exit 0 on SIGTERM at teardown."""
    pool = Gateways(secure_broker.port, victoria.url, tmp_path)
    yield pool
    problems = pool.close()
    assert not problems, "\n".join(problems)


def gateway_toml(
    broker: SecureBroker, workdir: Path, *, password: str | None = None, ca_file: bool = True
) -> str:
    pw = workdir / "gateway.password"
    pw.write_text((password or broker.passwords["gateway"]) + "\n")
    pw.chmod(0o600)
    ca = f"ca_file = {json.dumps(str(broker.ca_file))}" if ca_file else ""
    return f"""
[mqtt]
username = "gateway"
password_file = {json.dumps(str(pw))}
tls = true
{ca}

[[rules]]
sensor = "temperature"
high = 85.0
"""


# ------------------------------------------------------------------------ tests


def test_gateway_over_tls_with_acl(
    secure_broker: SecureBroker,
    secure_spawn: Gateways,
    victoria: VictoriaMetrics,
    tmp_path: Path,
) -> None:
    gw = secure_spawn(gateway_toml(secure_broker, tmp_path))  # ready = logged in over TLS
    eq = uid("sec-eq")
    events = f"alerts/events/{eq}/temperature"
    with (
        secure_broker.probe("scada", ("alerts/#", f"status/{eq}", "gateway/+/status")) as scada,
        secure_broker.probe("device") as device,
    ):
        # the gateway's retained status is readable by scada (gateway/+/status)
        scada.wait_for(
            lambda m: m.topic == f"gateway/{gw.client_id}/status" and m.payload == b"online",
            timeout=5,
        )
        # device -> gateway -> VictoriaMetrics, over TLS with passwords all the way
        now_ms = int(time.time() * 1000)
        device.publish(f"plant/line-sec/{eq}/temperature", {"value": 21.5, "ts": now_ms - 1000})
        device.publish(f"plant/line-sec/{eq}/temperature", {"value": 99.0, "ts": now_ms})
        match = victoria.selector("readings_value", equipment=eq, sensor="temperature")
        victoria.wait_for_count(match, 2, timeout=5)
        assert [v for _, v in victoria.series_values("readings_value", equipment=eq)] == [
            21.5,
            99.0,
        ]

        # threshold alert: the event and the retained active alert reach scada
        raised = scada.wait_for(events, timeout=5)[0].json()
        assert (raised["state"], raised["kind"], raised["value"]) == (
            "raised",
            "threshold_high",
            99.0,
        )
        scada.wait_for(f"alerts/active/{eq}/temperature/threshold_high", timeout=5)
        scada.wait_for(f"status/{eq}", timeout=5)

        # device has no write access to alerts/#: a forged alert event and a forged
        # acknowledgement are accepted (PUBACK) but dropped by the broker
        device.publish(events, {"id": raised["id"], "state": "cleared", "forged": True})
        device.publish("alerts/ack", {"id": raised["id"], "by": "forged-by-device"})

        # scada acknowledges. Its ack reaches the gateway after device's (the broker took
        # device's publishes first), and the gateway's answer reaches scada after
        # anything the broker had delivered of device's: so if the ACL let either through,
        # it is visible by now.
        scada.publish("alerts/ack", {"id": raised["id"], "by": "operator-7"})
        acked = scada.wait_for(
            lambda m: m.topic == events and m.json().get("state") == "acknowledged", timeout=5
        )
        assert [m.json()["acknowledged_by"] for m in acked] == ["operator-7"]
        assert not scada.messages(lambda m: b"forged" in m.payload)
        assert [m.json()["state"] for m in scada.messages(events)] == ["raised", "acknowledged"]
    assert gw.metric("edge_readings_written_total") >= 2


@pytest.mark.parametrize(
    ("password", "ca_file", "logged"),
    [
        pytest.param("not-the-password", True, "Not authorized", id="wrong-password"),
        # without ca_file the system CAs are used, and they do not know the test CA
        pytest.param(None, False, "CERTIFICATE_VERIFY_FAILED", id="untrusted-server-cert"),
    ],
)
def test_gateway_not_ready_when_refused(
    secure_broker: SecureBroker,
    secure_spawn: Gateways,
    tmp_path: Path,
    password: str | None,
    ca_file: bool,
    logged: str,
) -> None:
    toml = gateway_toml(secure_broker, tmp_path, password=password, ca_file=ca_file)
    gw = secure_spawn(toml, start=False).start(wait=False)
    deadline = time.monotonic() + 10
    ready: tuple[int, Any] | None = None
    while ready is None or logged not in gw.log_text():  # it says why, and keeps retrying
        assert gw.running and time.monotonic() < deadline, gw.log_tail()
        time.sleep(0.05)
        with contextlib.suppress(OSError):
            ready = gw.readyz(timeout=1.0)
    status, body = gw.readyz()
    assert (status, body["checks"]["mqtt"]) == (503, False)


def test_logins_refused(secure_broker: SecureBroker) -> None:
    with pytest.raises(ConnectionRefusedError):
        secure_broker.probe(None)  # anonymous
    with pytest.raises(ConnectionRefusedError):
        secure_broker.probe("device", password="not-the-password")
    with pytest.raises(ConnectionRefusedError):
        secure_broker.probe("gateway", password=secure_broker.passwords["scada"])
    with pytest.raises(ConnectionRefusedError):
        secure_broker.probe("intruder", password="whatever")
    with secure_broker.probe("device"):  # the control: the right password gets in
        pass


def _mqtt_connect_packet(client_id: str, user: str, password: str) -> bytes:
    def s(x: str) -> bytes:
        b = x.encode()
        return len(b).to_bytes(2, "big") + b

    # MQTT 3.1.1 CONNECT: protocol name, level 4, flags (user, password, clean session)
    body = s("MQTT") + bytes([4, 0xC2]) + (30).to_bytes(2, "big")
    body += s(client_id) + s(user) + s(password)
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


def test_tls_is_required(secure_broker: SecureBroker) -> None:
    # plain MQTT with valid credentials: the TLS listener closes without a CONNACK
    packet = _mqtt_connect_packet(uid("plain"), "device", secure_broker.passwords["device"])
    with socket.create_connection((HOST, secure_broker.port), timeout=3) as sock:
        sock.sendall(packet)
        try:
            answer = sock.recv(64)
        except ConnectionResetError:
            answer = b""
    assert answer == b"" or answer[:1] != b"\x20", f"plain MQTT answered {answer!r}"

    # the server certificate is signed by our CA only and names 127.0.0.1 / localhost
    def handshake(ctx: ssl.SSLContext, name: str) -> str | None:
        with (
            socket.create_connection((HOST, secure_broker.port), timeout=3) as sock,
            ctx.wrap_socket(sock, server_hostname=name) as tls,
        ):
            return tls.version()

    assert handshake(secure_broker.tls(), "localhost") in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ssl.create_default_context(), HOST)  # system CAs do not trust it
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(secure_broker.tls(), "mqtt.example.com")  # not in the SAN


# ------------------------------------------------------------------- ACL, case by case

_A = AlertsConfig()
_DEFAULT_SUB = MqttConfig().subscriptions[0].topic.replace("+", "x").replace("#", "x")

ACL_CASES = [
    ("device", "write", "plant/line-1/device-001/temperature", True),
    ("device", "write", "alerts/events/device-001/temperature", False),
    ("device", "write", "alerts/ack", False),
    ("device", "write", "status/device-001", False),
    ("device", "read", "plant/line-1/device-001/temperature", False),
    ("gateway", "read", "plant/line-1/device-001/temperature", True),
    ("gateway", "read", "alerts/ack", True),
    ("gateway", "write", "alerts/events/device-001/temperature", True),
    ("gateway", "write", "alerts/active/device-001/temperature/zscore", True),
    ("gateway", "write", "status/device-001", True),
    ("gateway", "write", "gateway/edge-gateway-1/status", True),
    ("gateway", "write", "gateway/edge-gateway-1/deadletter", True),
    ("gateway", "write", "plant/line-1/device-001/temperature", False),
    ("scada", "read", "alerts/events/device-001/temperature", True),
    ("scada", "read", "alerts/active/device-001/temperature/zscore", True),
    ("scada", "read", "status/device-001", True),
    ("scada", "write", "alerts/ack", True),
    ("scada", "write", "alerts/events/x/y", False),
    ("scada", "write", "plant/line-1/device-001/temperature", False),
    # the topics of the gateway's defaults ([mqtt] subscriptions, [alerts] prefixes)
    ("gateway", "read", _DEFAULT_SUB, True),
    ("device", "write", _DEFAULT_SUB, True),
    ("gateway", "read", f"{_A.topic_prefix}/ack", True),
    ("scada", "write", f"{_A.topic_prefix}/ack", True),
    ("gateway", "write", f"{_A.status_prefix}/eq", True),
]

# Where each user may publish: the sentinel that ends a write case.
SENTINEL_TOPIC = {
    "device": "plant/acl/sentinel/value",
    "gateway": "status/acl-sentinel",
    "scada": "alerts/ack",
}


@pytest.fixture(scope="module")
def acl_clients(secure_broker: SecureBroker) -> Iterator[dict[str, MqttProbe]]:
    """One TLS client per user, and the observer subscribed to everything."""
    with contextlib.ExitStack() as stack:
        clients = {u: stack.enter_context(secure_broker.probe(u)) for u in USERS}
        clients[OBSERVER] = stack.enter_context(secure_broker.probe(OBSERVER, ("#",)))
        yield clients


@pytest.mark.parametrize(
    ("user", "access", "topic", "ok"),
    ACL_CASES,
    ids=[f"{u}-{a}-{t}-{'allowed' if ok else 'denied'}" for u, a, t, ok in ACL_CASES],
)
def test_acl_rights(
    acl_clients: dict[str, MqttProbe], user: str, access: str, topic: str, ok: bool
) -> None:
    """The broker itself decides: what it delivers is allowed, what it drops is not.

    Nothing is waited for blindly: the broker handles one client's packets in order and
    sends each client its packets in order, so a case ends on a positive marker that
    comes after anything the ACL let through. Allowed cases check the same ordering.
    """
    client, observer = acl_clients[user], acl_clients[OBSERVER]
    payload = uid(f"acl-{user}-{access}").encode()
    if access == "write":
        # user publishes, then publishes a sentinel where it may; the observer (#) gets
        # the sentinel after the first message, if the broker let that one through
        sentinel = uid("sentinel").encode()
        client.publish(topic, payload)
        client.publish(SENTINEL_TOPIC[user], sentinel)
        observer.wait_for(lambda m: m.payload == sentinel, timeout=5)
        delivered = observer.messages(lambda m: m.payload == payload)
    else:
        # user subscribes; the observer publishes (its PUBACK: the broker has routed the
        # message to every subscriber); then a SUBACK for the user, which the broker sends
        # it after anything it had routed to it
        client.subscribe(topic)
        observer.publish(topic, payload)
        client.subscribe(uid("acl-marker"))
        delivered = client.messages(lambda m: m.payload == payload)
    assert [m.topic for m in delivered] == ([topic] if ok else [])
