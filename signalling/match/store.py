"""Matchmaking pools: hosts who offer themselves, callers who wait (docs/protocol.md §10).

``MatchStore`` is the interface the match wing uses; ``memory.MemoryMatch`` is the embedded
adapter and ``redis_store.RedisMatch`` the real one. One contract suite
(tests/contract/test_match_contract.py) runs against both.

Semantics both adapters keep:
- one ticket per caller: a ``request`` replaces the caller's previous ticket; one entry per
  host (``offer`` replaces it, ``withdraw`` removes it);
- pairing is atomic: a ``request`` takes the oldest (random) or nearest (nearby) eligible host
  from the pool, an ``offer`` the oldest random or nearest nearby waiter the host fits; both
  tickets leave the pools in the same step, so nobody is paired twice;
- eligible means live and free at that instant: the user's presence record names the same
  session, its node's liveness key exists, the user is in no call (call directory) and not
  in a pairing being connected (a short reservation); a host must also be ``available``
  with the host role. Entries that fail the liveness part are ghosts and are removed as a
  scan meets them; never a self-match, never two users either of whom excluded the other
  (blocks), never two users paired within ``avoid_recent_s``;
- a scan looks at ``scan_max`` entries (oldest or nearest first): the match wing rescans
  waiting tickets with filters from a further offset, so a narrow filter still finds a
  host deep in a large pool (docs/decisions.md, "Matchmaking").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

Mode = Literal["random", "nearby"]
MODES: tuple[Mode, ...] = ("random", "nearby")
# Redis GEO's earth radius (geohelper.c), so both adapters measure the same distances.
EARTH_RADIUS_M = 6372797.560856


@dataclass(frozen=True, slots=True)
class Filters:
    language: str | None = None
    gender: str | None = None
    tags: tuple[str, ...] = ()
    max_rate: int | None = None


@dataclass(frozen=True, slots=True)
class Ticket:
    """A caller waiting for a host."""

    ticket_id: str
    user_id: str
    name: str
    node_id: str
    session_id: str
    mode: Mode
    filters: Filters = field(default_factory=Filters)
    exclude: frozenset[str] = frozenset()  # blocks either way, hosts who turned this down
    lat: float | None = None
    lon: float | None = None
    radius_km: float = 0.0


@dataclass(frozen=True, slots=True)
class Offer:
    """A host in one or both pools, with what callers filter on."""

    user_id: str
    name: str
    node_id: str
    session_id: str
    rate: int
    modes: frozenset[Mode]
    languages: tuple[str, ...] = ()
    gender: str | None = None
    tags: tuple[str, ...] = ()
    exclude: frozenset[str] = frozenset()
    auto_accept: bool = False
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True, slots=True)
class Pair:
    ticket: Ticket
    host: Offer
    distance_km: float | None = None  # nearby only


@dataclass(frozen=True, slots=True)
class Limits:
    """What both adapters are built with (from MatchSettings)."""

    scan_max: int
    avoid_recent_s: float
    reserve_s: float
    nearby_max_km: float


class Busy(Exception):
    """The caller is in a call or a pairing of theirs is being connected."""


class MatchStore(Protocol):
    async def request(self, ticket: Ticket, *, renew: bool = False, offset: int = 0) -> Pair | None:
        """Pair the caller with a host now, or leave the ticket waiting (None). ``renew``:
        only if ``ticket`` is still the caller's current one (a wider radius, a rescan from
        ``offset`` into the random pool); a ticket already gone is left alone. Raises Busy."""

    async def cancel(self, user_id: str, ticket_id: str | None = None) -> bool:
        """Remove the caller's ticket (only this one, when given); True if removed."""

    async def offer(self, host: Offer, *, only_if_absent: bool = False) -> Pair | None:
        """Put the host in its pools, or pair them with a waiting caller at once. Not
        eligible: nothing is stored. ``only_if_absent``: no-op while the host is in a pool
        or reserved (the periodic resync)."""

    async def reoffer(self, user_id: str) -> Pair | None:
        """Offer the host again from their stored entry (a pairing did not become a call)."""

    async def withdraw(self, user_id: str, session_id: str) -> None:
        """Take the host out of the pools, if this is still their session's entry."""

    async def release(self, user_ids: Iterable[str]) -> None:
        """End the reservations of a pairing (its call is claimed, or it failed)."""

    async def waiting(self) -> dict[str, int]:
        """Callers waiting per mode and hosts pooled per mode (ghosts included until a
        scan removes them): ``{"random": n, "nearby": n, "hosts_random": n, ...}``."""

    async def close(self) -> None: ...


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance, as Redis GEO computes it (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a))) / 1000


def fits(ticket: Ticket, host: Offer) -> bool:
    """The host meets the caller's filters and neither excluded the other (no self-match).
    The recent-pair rule and liveness are the stores' to check."""
    f = ticket.filters
    return not (
        ticket.user_id == host.user_id
        or host.user_id in ticket.exclude
        or ticket.user_id in host.exclude
        or (f.max_rate is not None and host.rate > f.max_rate)
        or (f.language is not None and f.language not in host.languages)
        or (f.gender is not None and f.gender != host.gender)
        or not set(f.tags) <= set(host.tags)
    )
