from adapters.mqtt.link import MqttLink, NotConnected

__all__ = ["MqttLink", "NotConnected"]
