"""Event bytes <-> typed records, for the three wire formats the topics accept.

- confluent: magic byte 0, 4-byte big-endian schema id (schemas/topics/registry.json), Avro binary body.
- avro: plain Avro binary; the writer's schema version travels in the `schema-version` header (else: latest).
- json: one JSON object; timestamps as epoch millis or ISO-8601, decimals as strings or numbers.

Records are dicts as fastavro reads them: timestamps are tz-aware UTC datetimes, decimals are Decimals.
Every failure is a DecodeError with a short, stable `reason` (it becomes the dead letter's reason).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import re
import struct
from decimal import Context, Decimal, InvalidOperation, localcontext

import fastavro

import schemas

FORMATS = ("confluent", "avro", "json")
CONTENT_TYPES = {
    "confluent": b"application/vnd.confluent.avro",
    "avro": b"avro/binary",
    "json": b"application/json",
}
_FORMAT_BY_CONTENT_TYPE = {v: k for k, v in CONTENT_TYPES.items()}
MAGIC_BYTE = 0
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class DecodeError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


Headers = list[tuple[str, bytes]]


def encode(topic: str, record: dict, fmt: str = "confluent", version: int | None = None) -> tuple[bytes, Headers]:
    """The value bytes and headers of one event, as a producer of that topic would write them."""
    schema = schemas.version(topic, version) if version else schemas.latest(topic)
    if fmt == "json":
        body = json.dumps(to_json(record), separators=(",", ":")).encode()
        return body, [("content-type", CONTENT_TYPES["json"])]
    buffer = io.BytesIO()
    if fmt == "confluent":
        buffer.write(struct.pack(">bI", MAGIC_BYTE, schema.schema_id))
    elif fmt != "avro":
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    fastavro.schemaless_writer(buffer, schema.parsed, record)
    headers = [("content-type", CONTENT_TYPES[fmt])]
    if fmt == "avro":
        headers.append(("schema-version", str(schema.version).encode()))
    return buffer.getvalue(), headers


def detect_format(value: bytes, headers: Headers | None) -> str:
    """The wire format: from the content-type header when there is one, else sniffed from the first byte."""
    for name, header_value in headers or ():
        if name == "content-type" and header_value in _FORMAT_BY_CONTENT_TYPE:
            return _FORMAT_BY_CONTENT_TYPE[header_value]
    if value[:1] == bytes([MAGIC_BYTE]):
        return "confluent"
    if value[:1] == b"{":
        return "json"
    return "avro"


def decode(topic: str, value: bytes | None, headers: Headers | None = None) -> dict:
    """The record in `value`, resolved to the topic's latest schema. Raises DecodeError."""
    if not value:
        raise DecodeError("empty_value", "the message has no value")
    reader = schemas.latest(topic)
    fmt = detect_format(value, headers)
    if fmt == "json":
        return _within_limits(reader, _decode_json(reader, value))
    if fmt == "confluent":
        if len(value) < 5 or value[0] != MAGIC_BYTE:
            raise DecodeError("bad_magic_byte", f"expected magic byte 0 and a 4-byte schema id, got {value[:5].hex()}")
        (schema_id,) = struct.unpack(">I", value[1:5])
        try:
            writer = schemas.by_id(schema_id)
        except KeyError:
            raise DecodeError("unknown_schema_id", f"schema id {schema_id} is not registered") from None
        if writer.topic != topic:
            raise DecodeError("wrong_topic_schema", f"schema id {schema_id} is {writer.topic}, not {topic}")
        body = value[5:]
    else:
        writer = _header_version(topic, headers) or reader
        body = value
    return _within_limits(reader, _decode_avro(writer, reader, body))


def _header_version(topic: str, headers: Headers | None) -> schemas.TopicSchema | None:
    for name, header_value in headers or ():
        if name == "schema-version":
            try:
                return schemas.version(topic, int(header_value))
            except (KeyError, ValueError):
                raise DecodeError("unknown_schema_version",
                                  f"{topic} has no schema version {_shown(header_value)}") from None
    return None


def _decode_avro(writer: schemas.TopicSchema, reader: schemas.TopicSchema, body: bytes) -> dict:
    buffer = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(buffer, writer.parsed, reader.parsed)
    except (EOFError, StopIteration):
        raise DecodeError("truncated_avro", f"the Avro body ends early ({len(body)} bytes)") from None
    except UnicodeDecodeError as error:
        raise DecodeError("invalid_utf8", f"a string is not UTF-8: {error}") from None
    except Exception as error:  # fastavro raises many types for garbage: all mean "not this schema"
        raise DecodeError("invalid_avro", f"{type(error).__name__}: {error}") from None
    if buffer.tell() != len(body):
        raise DecodeError("trailing_bytes", f"{len(body) - buffer.tell()} bytes after the record")
    return record


def _decode_json(reader: schemas.TopicSchema, value: bytes) -> dict:
    try:
        document = json.loads(value)
    except UnicodeDecodeError as error:
        raise DecodeError("invalid_utf8", str(error)) from None
    except RecursionError:
        raise DecodeError("json_too_deep", "nested deeper than the parser's recursion limit") from None
    except ValueError as error:
        raise DecodeError("invalid_json", str(error)) from None
    if not isinstance(document, dict):
        raise DecodeError("invalid_json", f"expected a JSON object, got {type(document).__name__}")
    return from_json(reader.definition, document)


# --- JSON <-> record, driven by the Avro schema ------------------------------------------------------------------

def to_json(value):
    """A record as plain JSON: ISO-8601 UTC timestamps with milliseconds, decimals as strings."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return str(value)
    return value


def from_json(schema, value, path: str = "", named: dict | None = None):
    """A JSON value checked against and converted to an Avro schema. Raises DecodeError naming the field."""
    named = {} if named is None else named
    where = path or "record"
    if isinstance(schema, str):
        if schema in named:
            return from_json(named[schema], value, path, named)
        return _primitive(schema, value, where)
    if isinstance(schema, list):  # union: first branch that takes the value
        if value is None:
            if "null" in schema:
                return None
            raise DecodeError("missing_field", f"{where} is null")
        errors = []
        for branch in schema:
            if branch == "null":
                continue
            try:
                return from_json(branch, value, path, named)
            except DecodeError as error:
                errors.append(error)
        raise errors[0] if errors else DecodeError("wrong_type", f"{where}: no union branch takes {_shown(value)}")
    kind = schema["type"]
    if "name" in schema:
        named[schema["name"]] = schema
    logical = schema.get("logicalType")
    if logical == "timestamp-millis":
        return _timestamp(value, where)
    if logical == "decimal":
        return _decimal(value, schema["scale"], schema["precision"], where)
    if kind == "record":
        if not isinstance(value, dict):
            raise DecodeError("wrong_type", f"{where} should be an object")
        out = {}
        for field in schema["fields"]:
            name = field["name"]
            if name in value:
                out[name] = from_json(field["type"], value[name], f"{path}.{name}" if path else name, named)
            elif "default" in field:
                out[name] = field["default"]
            else:
                raise DecodeError("missing_field", f"required field {path + '.' if path else ''}{name} is missing")
        return out
    if kind == "enum":
        if value not in schema["symbols"]:
            raise DecodeError("unknown_enum", f"{where}={_shown(value)} is not one of {schema['symbols']}")
        return value
    if kind == "array":
        if not isinstance(value, list):
            raise DecodeError("wrong_type", f"{where} should be an array")
        return [from_json(schema["items"], v, f"{where}[{i}]", named) for i, v in enumerate(value)]
    return from_json(kind, value, path, named)


def _primitive(kind: str, value, where: str):
    checks = {
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and -2**31 <= v < 2**31,
        "long": lambda v: isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63,
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "double": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "null": lambda v: v is None,
    }
    if kind not in checks:
        raise DecodeError("wrong_type", f"{where}: JSON cannot carry Avro type {kind}")
    if value is None:
        raise DecodeError("missing_field", f"{where} is null")
    if not checks[kind](value):
        raise DecodeError("wrong_type", f"{where} should be {kind}, got {type(value).__name__}")
    return float(value) if kind in ("float", "double") else value


def _timestamp(value, where: str) -> dt.datetime:
    if value is None:
        raise DecodeError("missing_field", f"{where} is null")
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return _EPOCH + dt.timedelta(milliseconds=value)
        if isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                raise DecodeError("wrong_type", f"{where}={_shown(value)} has no time zone")
            parsed = parsed.astimezone(dt.timezone.utc)
            return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)
    except (ValueError, OverflowError) as error:
        raise DecodeError("wrong_type", f"{where}={_shown(value)} is not a timestamp: {error}") from None
    raise DecodeError("wrong_type", f"{where} should be epoch millis or ISO-8601, got {type(value).__name__}")


def _decimal(value, scale: int, precision: int, where: str) -> Decimal:
    if value is None:
        raise DecodeError("missing_field", f"{where} is null")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DecodeError("wrong_type", f"{where} should be a decimal string or number")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise DecodeError("wrong_type", f"{where}={_shown(value)} is not a decimal") from None
    if not number.is_finite():
        raise DecodeError("wrong_type", f"{where}={_shown(value)} is not finite")
    # Checked before quantizing: quantizing 1e30 to cents needs more digits than the decimal context has.
    if number and number.adjusted() >= precision - scale:
        raise DecodeError("decimal_out_of_range", f"{where}={_shown(value)} exceeds {precision} digits")
    with localcontext(Context(prec=max(precision, 28))):
        quantized = number.quantize(Decimal(1).scaleb(-scale))
    if quantized != number:
        raise DecodeError("wrong_type", f"{where}={_shown(value)} has more than {scale} decimal places")
    return quantized


def _shown(value, limit: int = 80) -> str:
    """A value as an error message quotes it: cut short, since a dead letter's reason need not repeat its bytes."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


# --- Limits: what the schemas declare (maxLength, maxItems, a decimal's precision), and what no string may hold ------

DEFAULT_MAX_LENGTH = 2048  # a string field without its own maxLength: URLs are the longest our events carry
# C0 and C1 controls, zero-width spaces, bidirectional marks and overrides, the byte order mark: never part of an id,
# a URL or a campaign name, and printed raw they hide or reorder what a reader sees.
_HIDDEN_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_limit_checks: dict[int, object] = {}


def _within_limits(reader: schemas.TopicSchema, record: dict) -> dict:
    """`record` if every field is within the limits of the reader's schema; else DecodeError naming the field."""
    check = _limit_checks.get(reader.schema_id)
    if check is None:
        check = _limit_checks.setdefault(reader.schema_id, _checks(reader.definition, "", {}, {}))
    check(record)
    return record


def _checks(schema, where: str, field_limits: dict, named: dict):
    """A function that raises DecodeError where a decoded value of `schema` breaks a limit (None: nothing to check).
    `field_limits`: the maxLength / maxItems the enclosing field declares."""
    if isinstance(schema, str):
        if schema in named:
            return _checks(named[schema], where, field_limits, named)
        if schema == "string":
            return _string_check(where, field_limits.get("maxLength", DEFAULT_MAX_LENGTH))
        return None
    if isinstance(schema, list):
        branches = [(b, c) for b in schema if b != "null"
                    for c in [_checks(b, where, field_limits, named)] if c is not None]
        if not branches:
            return None
        if len(branches) == 1:
            (_, only), = branches
            return lambda value: value is None or only(value)
        return lambda value: value is None or next(
            (c for b, c in branches if isinstance(value, _PYTHON_TYPES.get(_type_name(b), object))), _none)(value)
    if "name" in schema:
        named[schema["name"]] = schema
    if schema.get("logicalType") == "decimal":
        return _decimal_check(where, schema["precision"], schema.get("scale", 0))
    kind = schema["type"]
    if kind == "record":
        fields = [(f["name"], c) for f in schema["fields"]
                  for c in [_checks(f["type"], f"{where}.{f['name']}" if where else f["name"], f, named)]
                  if c is not None]

        def check_record(record):
            for name, check in fields:
                check(record[name])
        return check_record
    if kind == "array":
        items = _checks(schema["items"], f"{where}[]", {}, named)
        most = field_limits.get("maxItems", schema.get("maxItems"))

        def check_array(values):
            if most is not None and len(values) > most:
                raise DecodeError("array_too_long", f"{where} has {len(values):,} items, more than {most:,}")
            if items is not None:
                for value in values:
                    items(value)
        return check_array
    return _checks(kind, where, field_limits, named) if isinstance(kind, str) and kind not in (
        "enum", "fixed", "map") else None


_PYTHON_TYPES = {"string": str, "bytes": Decimal, "array": list, "record": dict}


def _type_name(schema) -> str:
    return schema if isinstance(schema, str) else schema.get("type", "")


def _none(_value) -> None:
    return None


def _string_check(where: str, longest: int):
    def check(value: str):
        if len(value) > longest:
            raise DecodeError("string_too_long", f"{where} has {len(value):,} characters, more than {longest:,}")
        hidden = _HIDDEN_CHARACTERS.search(value)
        if hidden:
            raise DecodeError("hidden_characters", f"{where} holds the control or formatting character "
                                                   f"U+{ord(hidden.group()):04X} at {hidden.start()}")
    return check


def _decimal_check(where: str, precision: int, scale: int):
    def check(value: Decimal):
        # fastavro reads an unscaled integer of any size, rounded to the schema's precision: 1E+16 at precision 12
        # comes back as 1.00000000000E+16, which no column of that precision holds
        if value and value.adjusted() >= precision - scale:
            raise DecodeError("decimal_out_of_range", f"{where}={_shown(value)} exceeds {precision} digits")
    return check
