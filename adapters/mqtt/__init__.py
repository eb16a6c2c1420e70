from adapters.mqtt.link import MAX_BATCH, MqttLink, NotConnected

__all__ = ["MAX_BATCH", "MqttLink", "NotConnected"]
