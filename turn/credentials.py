"""TURN REST API credentials (draft-uberti-behave-turn-rest, coturn ``use-auth-secret``).

username = ``<expiry unix seconds>:<user_id>``, password = base64(HMAC-SHA1(secret, username)).
coturn recomputes the password from its ``static-auth-secret`` and refuses expired usernames.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import TypedDict

from turn.settings import TurnSettings

SEPARATOR = ":"
# STUN USERNAME is at most 513 bytes (RFC 8489 §14.3); leave room for the expiry prefix.
MAX_USER_ID_BYTES = 400


class TurnError(Exception):
    """Root of the turn package's errors."""


class BadUserId(TurnError, ValueError):
    """A user id that cannot be put in a TURN username."""


@dataclass(frozen=True, slots=True)
class TurnCredential:
    username: str
    password: str
    expires_at: int  # unix seconds


class IceServer(TypedDict):
    """One RTCIceServer as WebRTC clients take it."""

    urls: list[str]
    username: str
    credential: str


def password_for(secret: bytes, username: str) -> str:
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def mint(secret: bytes, user_id: str, ttl_s: int, now: float) -> TurnCredential:
    """A credential valid until ``int(now) + ttl_s``."""
    if not secret:
        raise TurnError("empty TURN secret")
    if ttl_s <= 0:
        raise TurnError(f"ttl_s must be positive, not {ttl_s}")
    if not user_id or len(user_id.encode()) > MAX_USER_ID_BYTES or not user_id.isprintable():
        raise BadUserId(f"user id not usable in a TURN username: {user_id!r}")
    expires_at = int(now) + ttl_s
    username = f"{expires_at}{SEPARATOR}{user_id}"
    return TurnCredential(username, password_for(secret, username), expires_at)


def verify(secret: bytes, username: str, password: str, now: float) -> bool:
    """What coturn checks: the password matches the username and the expiry is not past."""
    expiry, sep, user_id = username.partition(SEPARATOR)
    if not sep or not user_id or not expiry.isdigit():
        return False
    expected = password_for(secret, username)
    ok = hmac.compare_digest(expected.encode(), password.encode())
    return ok and now <= int(expiry)


def ice_servers(settings: TurnSettings, user_id: str, now: float) -> list[IceServer]:
    """The RTCIceServer entries for ``user_id``; [] when TURN is not configured."""
    if settings.secret is None or not settings.urls:
        return []
    cred = mint(settings.secret.get_secret_value().encode(), user_id, settings.ttl_s, now)
    return [IceServer(urls=list(settings.urls), username=cred.username, credential=cred.password)]
