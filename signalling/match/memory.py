"""The embedded match store: one process, in memory, same semantics as Redis (store.py).

It reads presence and the call directory straight from their embedded adapters (as the
Redis scripts read their keys), through the two lookups ``app.py`` gives it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from ..clock import Clock
from ..port import Located
from .store import Busy, Limits, Offer, Pair, Ticket, distance_km, fits


class MemoryMatch:
    def __init__(
        self,
        clock: Clock,
        live_record: Callable[[str], Located | None],
        in_call: Callable[[str], bool],
        limits: Limits,
    ) -> None:
        self._clock = clock
        self._record = live_record
        self._in_call = in_call
        self._limits = limits
        self._tickets: dict[str, Ticket] = {}
        self._waiting: dict[str, dict[str, None]] = {"random": {}, "nearby": {}}  # in order
        self._hosts: dict[str, Offer] = {}
        self._pools: dict[str, dict[str, None]] = {"random": {}, "nearby": {}}
        self._reserved: dict[str, float] = {}  # user id -> monotonic expiry
        self._recent: dict[str, dict[str, float]] = {}  # user id -> peer -> paired at

    # --- eligibility ------------------------------------------------------------------

    def _reserved_now(self, user_id: str) -> bool:
        until = self._reserved.get(user_id)
        return until is not None and until > self._clock.monotonic()

    def _live(self, user_id: str, session_id: str, *, host: bool) -> bool | None:
        """True: eligible; False: live but not free (kept stored); None: a ghost."""
        record = self._record(user_id)
        if record is None or record.session_id != session_id:
            return None
        if host and (record.status != "available" or record.role != "host"):
            return False
        return not (self._in_call(user_id) or self._reserved_now(user_id))

    def _recently(self, a: str, b: str) -> bool:
        at = self._recent.get(a, {}).get(b)
        return at is not None and at > self._clock.time() - self._limits.avoid_recent_s

    def _pairs(self, ticket: Ticket, host: Offer) -> bool:
        return fits(ticket, host) and not self._recently(ticket.user_id, host.user_id)

    # --- callers ----------------------------------------------------------------------

    async def request(self, ticket: Ticket, *, renew: bool = False, offset: int = 0) -> Pair | None:
        uid = ticket.user_id
        current = self._tickets.get(uid)
        if renew and (current is None or current.ticket_id != ticket.ticket_id):
            return None
        if self._in_call(uid) or self._reserved_now(uid):
            raise Busy(uid)
        if not renew:
            self._drop_ticket(uid)
        for host, distance in self._hosts_for(ticket, offset):
            if self._pairs(ticket, host):
                return self._pair(ticket, host, distance)
        self._tickets[uid] = ticket
        self._waiting[ticket.mode][uid] = None  # a renewed ticket keeps its place
        return None

    def _hosts_for(self, ticket: Ticket, offset: int) -> Iterable[tuple[Offer, float | None]]:
        scan = self._limits.scan_max
        if ticket.mode == "random":
            pool = self._pools["random"]
            start = offset if offset < len(pool) else 0
            found: list[tuple[str, float | None]]
            found = [(h, None) for h in itertools.islice(pool, start, start + scan)]
        else:
            if ticket.lat is None or ticket.lon is None:
                return
            found = self._nearest(self._pools["nearby"], ticket.lat, ticket.lon, ticket.radius_km)
        for uid, distance in found:
            host = self._hosts[uid]
            live = self._live(uid, host.session_id, host=True)
            if live is None:
                self._drop_host(uid)
            elif not live:
                self._unpool(uid)
            else:
                yield host, distance

    def _nearest(
        self, members: dict[str, None], lat: float, lon: float, radius_km: float
    ) -> list[tuple[str, float | None]]:
        located: list[tuple[str, float | None]] = []
        for uid in members:
            there = self._where(uid)
            if there is not None:
                d = distance_km(lat, lon, *there)
                if d <= radius_km:
                    located.append((uid, d))
        located.sort(key=lambda x: x[1] or 0.0)
        return located[: self._limits.scan_max]

    def _where(self, user_id: str) -> tuple[float, float] | None:
        item: Offer | Ticket | None = self._hosts.get(user_id) or self._tickets.get(user_id)
        if item is None or item.lat is None or item.lon is None:
            return None
        return item.lat, item.lon

    async def cancel(self, user_id: str, ticket_id: str | None = None) -> bool:
        current = self._tickets.get(user_id)
        if current is None or (ticket_id is not None and current.ticket_id != ticket_id):
            return False
        self._drop_ticket(user_id)
        return True

    def _drop_ticket(self, user_id: str) -> None:
        ticket = self._tickets.pop(user_id, None)
        if ticket is not None:
            self._waiting[ticket.mode].pop(user_id, None)

    # --- hosts ------------------------------------------------------------------------

    async def offer(self, host: Offer, *, only_if_absent: bool = False) -> Pair | None:
        uid = host.user_id
        if only_if_absent and (
            any(uid in pool for pool in self._pools.values()) or self._reserved_now(uid)
        ):
            return None
        if not self._live(uid, host.session_id, host=True):
            return None
        self._hosts[uid] = host
        for ticket, distance in self._waiters_for(host):
            if self._pairs(ticket, host):
                return self._pair(ticket, host, distance)
        for mode, pool in self._pools.items():
            wanted = mode in host.modes and (mode == "random" or host.lat is not None)
            if wanted:
                pool.setdefault(uid, None)  # an entry already pooled keeps its place
            else:
                pool.pop(uid, None)
        return None

    def _waiters_for(self, host: Offer) -> Iterable[tuple[Ticket, float | None]]:
        found: list[tuple[str, float | None]] = []
        if "random" in host.modes:
            waiting = self._waiting["random"]
            found += [(uid, None) for uid in itertools.islice(waiting, self._limits.scan_max)]
        if "nearby" in host.modes and host.lat is not None and host.lon is not None:
            max_km = self._limits.nearby_max_km
            found += self._nearest(self._waiting["nearby"], host.lat, host.lon, max_km)
        for uid, distance in found:
            ticket = self._tickets.get(uid)
            if ticket is None:
                continue  # paired earlier in this same scan's list
            live = self._live(uid, ticket.session_id, host=False)
            if not live:
                self._drop_ticket(uid)  # a ghost, or a caller now in a call
            elif distance is None or distance <= ticket.radius_km:
                yield ticket, distance

    async def reoffer(self, user_id: str) -> Pair | None:
        host = self._hosts.get(user_id)
        return None if host is None else await self.offer(host)

    async def withdraw(self, user_id: str, session_id: str) -> None:
        host = self._hosts.get(user_id)
        if host is not None and host.session_id == session_id:
            self._drop_host(user_id)

    def _unpool(self, user_id: str) -> None:
        for pool in self._pools.values():
            pool.pop(user_id, None)

    def _drop_host(self, user_id: str) -> None:
        self._unpool(user_id)
        self._hosts.pop(user_id, None)

    # --- pairing ----------------------------------------------------------------------

    def _pair(self, ticket: Ticket, host: Offer, distance: float | None) -> Pair:
        self._drop_ticket(ticket.user_id)
        self._unpool(host.user_id)
        until = self._clock.monotonic() + self._limits.reserve_s
        now = self._clock.time()
        for a, b in ((ticket.user_id, host.user_id), (host.user_id, ticket.user_id)):
            self._reserved[a] = until
            recent = self._recent.setdefault(a, {})
            recent[b] = now
            for peer in [p for p, at in recent.items() if at <= now - self._limits.avoid_recent_s]:
                del recent[peer]
        return Pair(ticket=ticket, host=host, distance_km=distance)

    async def release(self, user_ids: Iterable[str]) -> None:
        for uid in user_ids:
            self._reserved.pop(uid, None)

    async def waiting(self) -> dict[str, int]:
        counts = {mode: len(w) for mode, w in self._waiting.items()}
        counts.update({f"hosts_{mode}": len(p) for mode, p in self._pools.items()})
        return counts

    async def close(self) -> None:
        return None
