"""``edge-sim opcua``: an OPC UA server (asyncua) exposing the simulated plant.

Address space (namespace ``urn:edge-gateway:simulator``, index 2)::

    Objects/Plant/<line>/<equipment>/<sensor>     Double, EngineeringUnits + EURange
    Objects/Plant/<line>/<equipment>/running      Boolean (always true)
    Objects/Plant/<line>/<equipment>/firmware     String (not a measurement)
    Objects/Plant/load/load-NNN/vNN               Double, with --load N (--load-name)

Node ids are strings ``ns=2;s=<line>.<equipment>.<sensor>`` (e.g.
``ns=2;s=line-1.device-001.temperature``). Values change at the profile periods
through the pure `Plant` (same seeds and anomaly injection as ``edge-sim mqtt``);
every write carries a SourceTimestamp. All variables are writable, so a test
client can write a value with its own SourceTimestamp or a Bad status code.

``--secure`` serves only Basic256Sha256 (Sign and SignAndEncrypt) endpoints with a
self-signed server certificate generated into ``--cert-dir``, together with a
client certificate/key pair that the server trusts; ``--trust FILE`` replaces that
default so only the given client certificates are accepted.

``--status-file`` is rewritten (atomically) every 0.5 s with the server-side view:
sessions, subscriptions, monitored items (and the most items on any one node),
and the number of value changes written. Tests use it to prove that reconnects
leave no duplicate subscriptions or leaked sessions behind.

Modules: `server` (`PlantServer`: the address space, the value-changing tasks,
the status file), `certs` (self-signed application certificates), `command`
(the ``edge-sim opcua`` sub-command: arguments → `SimOptions` → `serve`). This
top level holds only the application/namespace URIs the others share. All of
them import asyncua (and cryptography) lazily, so the ``edge-sim`` parser stays
cheap.
"""

from __future__ import annotations

NAMESPACE_URI = "urn:edge-gateway:simulator"
SERVER_APP_URI = "urn:edge-gateway:simulator:server"
CLIENT_APP_URI = "urn:edge-gateway:client"

__all__ = ["CLIENT_APP_URI", "NAMESPACE_URI", "SERVER_APP_URI"]
