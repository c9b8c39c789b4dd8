"""Session.reachable: false as soon as the connection's transport is closing, before the
hub has seen the session go (the wings ask it before offering or ringing a user)."""

from __future__ import annotations

import asyncio

from signalling.auth import Identity, Role
from signalling.clock import ManualClock
from signalling.protocol import CloseCode
from signalling.session import Session


class Transport(asyncio.BaseTransport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed


def session() -> Session:
    ident = Identity("hal", Role.HOST, "Hal")
    return Session(
        ident,
        clock=ManualClock(),
        send_queue_max=8,
        send_queue_max_bytes=1024,
        rate_per_s=5,
        rate_burst=5,
    )


def test_reachable_until_the_transport_closes_or_the_session_does() -> None:
    s = session()
    assert s.reachable  # no transport (an in-process session): nothing says it is gone
    s.transport = t = Transport()
    assert s.reachable
    t.closed = True  # the client went; the hub may still be handling its last frame
    assert not s.reachable
    other = session()
    other.close(CloseCode.NORMAL, "")
    assert not other.reachable
