"""`edge-gateway run --shard K/N`: two gateways from one base config on one broker.

Shard K keeps ``[[mqtt.subscriptions]]`` entry i with i mod N == K, and derives its
client id, spool directory and HTTP port (+K) from the base config
(gateway/config.py `shard_settings`). With one subscription per line, every reading
is stored exactly once in total and no series is written by both shards; a shard
SIGKILLed under load and restarted gets what its persistent session held, and the
other shard never notices.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.harness import GatewayProcess, MqttProbe, to_toml, uid
from tests.servers import HOST, Mosquitto, free_port
from tests.stores import Store, stored, wait_count

PER_LINE = 200
UNDER_LOAD = 1_500  # readings per line published while shard 1 is killed and restarted


def test_two_shards_split_the_lines_and_store_each_reading_once(
    mosquitto: Mosquitto, store: Store, tmp_path: Path
) -> None:
    lines = [uid("sa"), uid("sb")]
    subs = "".join(
        f'[[mqtt.subscriptions]]\ntopic = "plant/{ln}/+/+"\n'
        'template = "plant/{line}/{equipment}/{sensor}"\n'
        for ln in lines
    )
    base_id = uid("gw-shard")
    shards: list[GatewayProcess] = []
    try:
        for k in range(2):
            gw = GatewayProcess(
                mosquitto.port,
                store.url,
                tmp_path,
                client_id=f"{base_id}-{k}",  # one config file each; the same content
                extra_toml=subs,
                start=False,
                influx=store.gateway_influx,
                args=["--shard", f"{k}/2"],
            )
            # one base config: same client id, spool dir and HTTP port in both files
            gw.config["mqtt"]["client_id"] = base_id
            gw.config["spool"]["dir"] = str(tmp_path / "spool")
            if k == 0:
                base_port = free_port()
            gw.config["http"]["port"] = base_port
            gw.http_port = base_port + k
            gw.url = f"http://{HOST}:{gw.http_port}"
            gw.config_path.write_text(to_toml(gw.config) + "\n")
            shards.append(gw.start())
        assert [gw.metric("edge_mqtt_connected") for gw in shards] == [1, 1]
        with MqttProbe(mosquitto.port) as probe:
            t0 = int(time.time() * 1000) - 3_600_000  # within max_age_s
            for i in range(PER_LINE):
                for ln in lines:
                    probe.publish(f"plant/{ln}/eq/temp", {"value": float(i), "ts": t0 + i})
        for ln in lines:
            wait_count(store, PER_LINE, timeout=15.0, line=ln)
        for k, ln in enumerate(lines):
            distinct, extra, _ = stored(store, line=ln)
            assert (distinct, extra) == (PER_LINE, 0)
            # each line was received by its own shard only
            assert shards[k].metric("edge_readings_received_total", source="mqtt") == PER_LINE
        for k, gw in enumerate(shards):
            assert (tmp_path / "spool" / f"shard-{k}").is_dir()
            assert f"as {base_id}-shard{k}," in gw.log_text()

        # SIGKILL shard 1 under load on both lines, restart it while the load goes on
        def load() -> None:
            with MqttProbe(mosquitto.port) as pub:
                for i in range(PER_LINE, PER_LINE + UNDER_LOAD):
                    for ln in lines:
                        pub.publish(f"plant/{ln}/eq/temp", {"value": float(i), "ts": t0 + i})

        loader = threading.Thread(target=load)
        loader.start()
        shards[1].wait_metric(
            "edge_readings_received_total", lambda v: v >= PER_LINE + 200, source="mqtt"
        )
        shards[1].kill()
        time.sleep(0.5)
        shards[1].start()
        loader.join(timeout=60)
        assert not loader.is_alive()
        total = PER_LINE + UNDER_LOAD
        for ln in lines:
            wait_count(store, total, timeout=30.0, line=ln)
        # the one batch whose write was in flight at the kill is sent again (InfluxDB keeps
        # one point, VictoriaMetrics may keep it twice; docs/reliability.md): counted
        resent = shards[1].metric("edge_spool_resent_readings_total")
        for k, ln in enumerate(lines):
            distinct, extra, _ = stored(store, line=ln)
            assert distinct == total, ln  # nothing lost
            assert extra <= (resent if k == 1 else 0), (ln, extra, resent)  # nothing else twice
        # shard 0 never noticed: one connection, every reading of its line, none of the other
        assert shards[0].log_text().count("mqtt: connected to") == 1
        assert shards[0].metric("edge_readings_received_total", source="mqtt") == total
        assert shards[0].metric("edge_mqtt_connected") == 1
    finally:
        for gw in shards:
            if gw.running:
                gw.stop()
