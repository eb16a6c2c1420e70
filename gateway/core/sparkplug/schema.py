"""The Sparkplug B payload schema, built in code from the Sparkplug 3.0.0 specification
(chapter 6, "Payloads"), and the `protobuf` message classes made from it (pure).

Written from the specification's field tables rather than shipped as the Eclipse Tahu
``.proto`` file (EPL-2.0). It is a *reader's view* of ``org.eclipse.tahu.protobuf.Payload``:
field numbers and wire types are the specification's, so every Sparkplug B payload parses
and what we encode (NCMD rebirth requests, the simulator's edge node) is a valid one. The
nested messages we never look inside (``DataSet``, ``Template``, ``MetaData``, property
set lists and the extension values) are declared as ``bytes``: a length-delimited field
reads the same either way, and their metrics are not readings (they are counted).

>>> p = Payload(timestamp=1, seq=2)
>>> m = p.metrics.add(name="Hydraulic/Temperature", alias=5, datatype=FLOAT, float_value=1.5)
>>> Payload.FromString(p.SerializeToString()).metrics[0].WhichOneof("value")
'float_value'
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE: Final = "edgegateway.sparkplug_b"

# Sparkplug B metric datatypes (spec 6.4.16, "Datatypes").
UNKNOWN: Final = 0
INT8: Final = 1
INT16: Final = 2
INT32: Final = 3
INT64: Final = 4
UINT8: Final = 5
UINT16: Final = 6
UINT32: Final = 7
UINT64: Final = 8
FLOAT: Final = 9
DOUBLE: Final = 10
BOOLEAN: Final = 11
STRING: Final = 12
DATETIME: Final = 13
TEXT: Final = 14
UUID: Final = 15
DATASET: Final = 16
BYTES: Final = 17
FILE: Final = 18
TEMPLATE: Final = 19
PROPERTYSET: Final = 20
PROPERTYSETLIST: Final = 21
# 22..34: Int8Array .. DateTimeArray (packed in bytes_value)
ARRAY_FIRST: Final = 22
ARRAY_LAST: Final = 34

_F = descriptor_pb2.FieldDescriptorProto
_OPT = _F.LABEL_OPTIONAL
_REP = _F.LABEL_REPEATED
_T = {
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
    "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}

# (name, number, type or ".Message", repeated, oneof index or None); spec 6.4.
_PROPERTY_VALUE = (
    ("type", 1, "uint32", False, None),
    ("is_null", 2, "bool", False, None),
    ("int_value", 3, "uint32", False, 0),
    ("long_value", 4, "uint64", False, 0),
    ("float_value", 5, "float", False, 0),
    ("double_value", 6, "double", False, 0),
    ("boolean_value", 7, "bool", False, 0),
    ("string_value", 8, "string", False, 0),
    ("propertyset_value", 9, ".PropertySet", False, 0),
    ("propertysets_value", 10, "bytes", False, 0),  # PropertySetList
    ("extension_value", 11, "bytes", False, 0),
)
_PROPERTY_SET = (
    ("keys", 1, "string", True, None),
    ("values", 2, ".PropertyValue", True, None),
)
_METRIC = (
    ("name", 1, "string", False, None),
    ("alias", 2, "uint64", False, None),
    ("timestamp", 3, "uint64", False, None),
    ("datatype", 4, "uint32", False, None),
    ("is_historical", 5, "bool", False, None),
    ("is_transient", 6, "bool", False, None),
    ("is_null", 7, "bool", False, None),
    ("metadata", 8, "bytes", False, None),  # MetaData
    ("properties", 9, ".PropertySet", False, None),
    ("int_value", 10, "uint32", False, 0),
    ("long_value", 11, "uint64", False, 0),
    ("float_value", 12, "float", False, 0),
    ("double_value", 13, "double", False, 0),
    ("boolean_value", 14, "bool", False, 0),
    ("string_value", 15, "string", False, 0),
    ("bytes_value", 16, "bytes", False, 0),
    ("dataset_value", 17, "bytes", False, 0),  # DataSet
    ("template_value", 18, "bytes", False, 0),  # Template
    ("extension_value", 19, "bytes", False, 0),
)
_PAYLOAD = (
    ("timestamp", 1, "uint64", False, None),
    ("metrics", 2, ".Metric", True, None),
    ("seq", 3, "uint64", False, None),
    ("uuid", 4, "string", False, None),
    ("body", 5, "bytes", False, None),
)


def _message(
    fd: descriptor_pb2.FileDescriptorProto,
    name: str,
    fields: tuple[tuple[str, int, str, bool, int | None], ...],
) -> None:
    msg = fd.message_type.add(name=name)
    if any(f[4] is not None for f in fields):
        msg.oneof_decl.add(name="value")
    for fname, number, ftype, repeated, oneof in fields:
        f = msg.field.add(name=fname, number=number, label=_REP if repeated else _OPT)
        if ftype.startswith("."):
            f.type = _F.TYPE_MESSAGE
            f.type_name = f".{PACKAGE}{ftype}"
        else:
            f.type = _T[ftype]
        if oneof is not None:
            f.oneof_index = oneof


def _build() -> tuple[Any, Any, Any, Any]:
    fd = descriptor_pb2.FileDescriptorProto(
        name="edgegateway_sparkplug_b.proto", package=PACKAGE, syntax="proto2"
    )
    _message(fd, "PropertyValue", _PROPERTY_VALUE)
    _message(fd, "PropertySet", _PROPERTY_SET)
    _message(fd, "Metric", _METRIC)
    _message(fd, "Payload", _PAYLOAD)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    classes = [
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{n}"))
        for n in ("Payload", "Metric", "PropertySet", "PropertyValue")
    ]
    return classes[0], classes[1], classes[2], classes[3]


Payload, Metric, PropertySet, PropertyValue = _build()

# DecodeError of the active protobuf implementation (upb, cpp or python)
from google.protobuf.message import DecodeError  # noqa: E402

__all__ = ["DecodeError", "Metric", "Payload", "PropertySet", "PropertyValue"]
