from adapters.influx.sink import InfluxSink

__all__ = ["InfluxSink"]
