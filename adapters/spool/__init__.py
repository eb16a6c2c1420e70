from adapters.spool.segments import Record, Recovery, Spool

__all__ = ["Record", "Recovery", "Spool"]
