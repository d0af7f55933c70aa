"""The envelope of an /identify request: its ``api_key`` and ``identification`` fields, from any of
the three body formats the ingest endpoint reads.  Pure functions; unreadable input raises
``MalformedRequest`` (or ``UnsupportedContentType``) with a message safe to send back.

    application/x-www-form-urlencoded   what Amplitude clients send (also when no type is given)
    multipart/form-data                 parsed with the standard library's email package
    application/json                    {"api_key": "...", "identification": <value or JSON text>}

A form's identification is JSON percent-encoded: nearly every quote, colon, comma and brace is an
escape.  ``urllib.parse.parse_qs`` decodes escapes one at a time in Python and took 1.2 ms of a
24 kB, 100-record body, more than everything else the endpoint does with it; ``unquote_form``
first replaces the escapes JSON is made of with C-speed ``bytes.replace`` and leaves the rest to
``urllib.parse.unquote_to_bytes``: 0.27 ms, and the same bytes (a property test compares the two
on arbitrary input).  Values stay bytes, which orjson parses without another copy.
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

from producers.contract.errors import MalformedRequest, UnsupportedContentType

#: An /identify form has two fields; a few more are tolerated (and ignored), thousands are abuse.
MAX_FORM_FIELDS = 100
API_KEY_FIELDS = ("api_key", "api-key")

# The escapes of the characters JSON is made of, as encoders write them (upper case).  None decodes
# to '%' or a hex digit, so replacing them cannot create an escape that was not in the input, and
# decoding the rest afterwards gives exactly what decoding everything at once gives.
_JSON_ESCAPES = tuple(
    (f"%{ord(c):02X}".encode(), c.encode()) for c in '":,{}[]$/ @'
)  # fmt: skip


@dataclass(frozen=True)
class Envelope:
    """The credential the body carries, and the identification: JSON text, or (JSON body) a value."""

    api_key: str | None
    identification: Any = None
    #: The whole parsed body of a JSON request (None for a form), for checks made once the client
    #: is authenticated.
    document: Any = None


def read_envelope(content_type: str, content_encoding: str, body: bytes) -> Envelope:
    if content_encoding.strip().lower() not in ("", "identity"):
        raise UnsupportedContentType(
            f"Content-Encoding {content_encoding.strip()[:40]!r} is not supported; send the body uncompressed"
        )
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("", "application/x-www-form-urlencoded"):
        return _from_fields(form_fields(body))
    if media == "application/json" or media.endswith("+json"):
        return _from_json(body)
    if media == "multipart/form-data":
        return _from_fields(multipart_fields(content_type, body))
    raise UnsupportedContentType(
        f"Content-Type {media[:60]!r} is not supported; send application/x-www-form-urlencoded "
        "(as Amplitude clients do), multipart/form-data or application/json"
    )


def unquote_form(value: bytes) -> bytes:
    """A form value decoded as ``urllib.parse.unquote_plus`` does, to bytes, faster on JSON."""
    value = value.replace(b"+", b" ")
    if b"%" not in value:
        return value
    for escape, char in _JSON_ESCAPES:
        value = value.replace(escape, char)
    return unquote_to_bytes(value) if b"%" in value else value


def form_fields(body: bytes) -> dict[str, list[bytes]]:
    """Name -> values of a urlencoded body, as ``parse_qs(keep_blank_values=True)`` reads it."""
    parts = body.split(b"&")
    if len(parts) > MAX_FORM_FIELDS:
        raise MalformedRequest(f"Invalid request: more than {MAX_FORM_FIELDS} form fields")
    fields: dict[str, list[bytes]] = {}
    for part in parts:
        if part:
            name, _, value = part.partition(b"=")
            fields.setdefault(_text(unquote_form(name), "a form field name"), []).append(unquote_form(value))
    return fields


def multipart_fields(content_type: str, body: bytes) -> dict[str, list[bytes]]:
    # The email package is the standard library's MIME parser (cgi.FieldStorage is gone in 3.13).
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        raise MalformedRequest("Invalid request: the multipart body cannot be read (boundary missing or wrong)")
    fields: dict[str, list[bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields.setdefault(name, []).append(payload)
    return fields


def _from_fields(fields: dict[str, list[bytes]]) -> Envelope:
    for name in (*API_KEY_FIELDS, "identification"):
        if len(fields.get(name, ())) > 1:
            raise MalformedRequest(f"Invalid request: field {name} is given {len(fields[name])} times")
    api_key = next((fields[name][0] for name in API_KEY_FIELDS if name in fields), None)
    ident = fields.get("identification")
    return Envelope(None if api_key is None else _text(api_key, "api_key"), ident[0] if ident else None)


def _from_json(body: bytes) -> Envelope:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"Invalid request: the body is not valid JSON ({exc})") from None
    if type(doc) is not dict:
        raise MalformedRequest('Invalid request: a JSON body must be an object {"api_key": ..., "identification": ...}')
    api_key = doc.get("api_key", doc.get("api-key"))
    if api_key is not None and type(api_key) is not str:
        raise MalformedRequest("Invalid request: api_key must be a string")
    return Envelope(api_key, doc.get("identification"), doc)


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest(f"Invalid request: {what} is not UTF-8") from None
