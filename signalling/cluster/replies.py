"""Redis reply items as str or bytes, whether or not the caller's client was made with
``decode_responses`` (the adapters take the client they are given)."""

from __future__ import annotations


def as_str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
