"""Presence: who is online, on which node and session, with what status.

``PresenceStore`` is the interface the presence wing (and the hub's routing) uses;
``memory.MemoryPresence`` is the embedded adapter and ``redis_store.RedisPresence`` the real
one. One contract suite
(tests/contract/test_presence_contract.py) runs against both.

Semantics both adapters keep:
- a record is owned by (node, session); ``clear`` only removes the caller's own session's
  record, so a replaced session's late cleanup cannot wipe the newer one;
- a connect ``claim``s the record in one step, whoever holds it (the newest connect wins,
  and learns whose session to close); ``set`` never overwrites a record another live node
  holds, so an overtaken session's late publish cannot take the user back;
- a record is live while its TTL has not run out AND its node's liveness key exists:
  a node that stops beating takes its users offline at once for readers, and
  ``sweep`` removes what a dead node left behind;
- ``available(role)`` lists live users whose status is available.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PresenceRecord:
    user_id: str
    status: str  # available | busy | away, or offline (parked, or claimed and not joined)
    role: str
    name: str
    node_id: str
    session_id: str
    lat: float | None = None
    lon: float | None = None


class PresenceStore(Protocol):
    node_id: str

    async def set(self, record: PresenceRecord) -> bool:
        """Create or replace the user's record (this node, this session) unless another
        live node holds it; True if written."""

    async def claim(
        self, user_id: str, session_id: str, role: str, name: str
    ) -> PresenceRecord | None:
        """Make the record this node's and this session's (status offline until the
        session publishes one), whoever held it; returns the live record it replaced."""

    async def clear(self, user_id: str, session_id: str) -> bool:
        """Remove the record if it still belongs to ``session_id``; True if removed."""

    async def get_many(self, user_ids: Iterable[str]) -> dict[str, PresenceRecord]:
        """Live records of these users; offline users are absent."""

    async def available(self, role: str, limit: int) -> list[str]:
        """Up to ``limit`` live users with this role and status available."""

    async def beat(self, user_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Mark this node alive and refresh the TTL of its users' records. Returns (those
        of ``user_ids`` with no record, run out or lost (a Redis restarted without
        persistence), or with one a dead node left: the caller, whose sessions they are,
        publishes them again; those whose record another live node holds: a newer connect
        there claimed them, and the caller closes its session if that one's close was
        lost). Records another node holds are never refreshed."""

    async def nodes_alive(self, node_ids: Iterable[str]) -> frozenset[str]:
        """Those of these nodes whose liveness key has not run out."""

    async def sweep(self) -> list[str]:
        """Remove records of nodes that stopped beating; returns the users removed."""

    async def retire(self) -> None:
        """Orderly exit: drop this node's liveness and all its records."""

    async def close(self) -> None: ...
