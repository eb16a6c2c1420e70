from adapters.file.sink import FileSink

__all__ = ["FileSink"]
