"""Bytes <-> messages: ``decode`` a client frame, ``encode`` a server one.

A frame that does not decode becomes a ``DecodeFailure`` carrying the error code to send
(§6) and the request id when one can be read (§2), however broken the frame: a lone
surrogate or nesting too deep for msgspec still yields the id through Python's json or a
flat scan.
"""

from __future__ import annotations

import json
import re
from typing import NoReturn

import msgspec

from .client import CLIENT_TYPES, AnyClientMessage
from .codes import ErrorCode
from .server import ServerMessage


class _Envelope(msgspec.Struct):
    """What is readable of a frame that failed to decode: enough to address the error."""

    type: object = None
    id: object = None


_decoder = msgspec.json.Decoder(AnyClientMessage)
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_encoder = msgspec.json.Encoder()


class DecodeFailure(Exception):
    def __init__(self, code: ErrorCode, message: str, request_id: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def decode(frame: bytes | str) -> AnyClientMessage:
    """One frame -> a typed message, or DecodeFailure with the error code to send (§6)."""
    try:
        message: AnyClientMessage = _decoder.decode(frame)
    except (msgspec.DecodeError, RecursionError) as exc:
        _raise_decode_failure(frame, exc)
    return message


def _raise_decode_failure(frame: bytes | str, exc: Exception) -> NoReturn:
    try:
        env = _envelope_decoder.decode(frame)
    except (msgspec.DecodeError, RecursionError):
        _raise_unreadable(frame)
    rid = _request_id(env.id)
    if isinstance(exc, RecursionError):
        raise DecodeFailure(ErrorCode.INVALID_MESSAGE, TOO_DEEP, rid)
    if not isinstance(env.type, str):
        raise DecodeFailure(ErrorCode.INVALID_MESSAGE, "field `type` must be a string", rid)
    if env.type not in CLIENT_TYPES:
        raise DecodeFailure(ErrorCode.UNKNOWN_TYPE, f"unknown message type {env.type!r}", rid)
    raise DecodeFailure(ErrorCode.INVALID_MESSAGE, str(exc), rid)


TOO_DEEP = "frame is nested too deeply"
_LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _raise_unreadable(frame: bytes | str) -> NoReturn:
    """msgspec could not read even the envelope. Python's json is more lenient (it takes
    lone surrogate escapes): if it reads a JSON object, the frame has an id to answer."""
    text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
    try:
        value = json.loads(text)
    except RecursionError:
        raise DecodeFailure(ErrorCode.INVALID_MESSAGE, TOO_DEEP, _scan_id(text)) from None
    except ValueError:
        raise DecodeFailure(ErrorCode.BAD_JSON, "frame is not a JSON object", None) from None
    if not isinstance(value, dict):
        raise DecodeFailure(ErrorCode.BAD_JSON, "frame is not a JSON object", None)
    why = (
        "strings must be valid Unicode: a lone surrogate escape (\\ud800-\\udfff) is refused"
        if _LONE_SURROGATE.search(text)
        else "frame cannot be decoded"
    )
    raise DecodeFailure(ErrorCode.INVALID_MESSAGE, why, _request_id(value.get("id")))


# Strings and structural characters: enough to find the top-level "id" of a frame too deep
# for a recursive parser, in one flat pass.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]')


def _scan_id(text: str) -> str | None:
    """The top-level ``id`` of a JSON object, read without recursion; None unless the
    frame's brackets are complete and balanced (a truncated frame is not JSON, so it has no
    id to answer, however deep it was)."""
    opened: list[str] = []
    key: str | None = None
    in_value = False
    found: str | None = None
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "{[":
            if not opened and (token != "{" or text[: match.start()].strip()):
                return None
            opened.append("}" if token == "{" else "]")
        elif token in "}]":
            if not opened or opened.pop() != token:
                return None
            if not opened:  # the top-level object closed: nothing may follow it
                return found if not text[match.end() :].strip() else None
        elif len(opened) != 1:
            continue
        elif token == ":":
            in_value = True
        elif token == ",":
            key, in_value = None, False
        elif not in_value:
            key = token
        elif key == '"id"' and found is None:
            found = _request_id(json.loads(token))
    return None


def utf8_over(frame: str, limit: int) -> bool:
    """Is the frame over ``limit`` UTF-8 bytes? A str has at most 4 per character, so most
    frames are measured without encoding them."""
    return len(frame) > limit or (
        len(frame) * 4 > limit and len(frame.encode("utf-8", "surrogatepass")) > limit
    )


def peek_id(frame: bytes | str) -> str | None:
    """The ``id`` of a frame that will not be handled (e.g. over the rate limit), if readable."""
    try:
        return _request_id(_envelope_decoder.decode(frame).id)
    except (msgspec.DecodeError, RecursionError):
        # Too deep, or a lone surrogate somewhere: the flat scan still finds the id.
        return _scan_id(frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame)


def _request_id(value: object) -> str | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        return None  # a lone surrogate: it could not be sent back
    return value


def encode(message: ServerMessage) -> bytes:
    return _encoder.encode(message)
