"""The embedded presence store: one process, in memory, same semantics as Redis (store.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from ..clock import Clock
from .store import PresenceRecord


class MemoryWorld:
    """Shared state for several MemoryPresence nodes (one per node in tests)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.records: dict[str, tuple[PresenceRecord, float]] = {}  # uid -> (record, expires)
        self.nodes: dict[str, float] = {}  # node id -> liveness expiry

    def live(self, user_id: str) -> PresenceRecord | None:
        """The user's live record (for the embedded match store, which reads presence)."""
        entry = self.records.get(user_id)
        if entry is None:
            return None
        now = self.clock.monotonic()
        record, expires = entry
        return record if expires > now and self.nodes.get(record.node_id, 0.0) > now else None


class MemoryPresence:
    def __init__(
        self, world: MemoryWorld, node_id: str, *, ttl_s: float, node_ttl_s: float
    ) -> None:
        self.node_id = node_id
        self._world = world
        self._ttl = ttl_s
        self._node_ttl = node_ttl_s
        self._next_purge = float("-inf")  # a whole scan per beat is O(users): a third of ttl

    def _now(self) -> float:
        return self._world.clock.monotonic()

    def _live(self, rec: PresenceRecord, expires: float) -> bool:
        now = self._now()
        return expires > now and self._world.nodes.get(rec.node_id, 0.0) > now

    async def set(self, record: PresenceRecord) -> bool:
        entry = self._world.records.get(record.user_id)
        if entry is not None and entry[0].node_id != self.node_id and self._live(*entry):
            return False  # a newer connect on another node claimed it
        self._write(record)
        return True

    async def claim(
        self, user_id: str, session_id: str, role: str, name: str
    ) -> PresenceRecord | None:
        entry = self._world.records.get(user_id)
        self._write(PresenceRecord(user_id, "offline", role, name, self.node_id, session_id))
        mine = entry is not None and entry[0].node_id == self.node_id and entry[1] > self._now()
        return entry[0] if entry is not None and (mine or self._live(*entry)) else None

    def _write(self, record: PresenceRecord) -> None:
        record = replace(record, node_id=self.node_id)
        now = self._now()
        if self._world.nodes.get(self.node_id, 0.0) <= now:  # a node setting is alive
            self._world.nodes[self.node_id] = now + self._node_ttl
        self._world.records[record.user_id] = (record, now + self._ttl)

    async def clear(self, user_id: str, session_id: str) -> bool:
        entry = self._world.records.get(user_id)
        if entry is None or entry[0].session_id != session_id or entry[1] <= self._now():
            return False
        del self._world.records[user_id]
        return True

    async def get_many(self, user_ids: Iterable[str]) -> dict[str, PresenceRecord]:
        out = {}
        for uid in user_ids:
            entry = self._world.records.get(uid)
            if entry is not None and self._live(*entry):
                out[uid] = entry[0]
        return out

    async def available(self, role: str, limit: int) -> list[str]:
        out: list[str] = []
        if limit <= 0:
            return out
        for rec, expires in self._world.records.values():
            if rec.role == role and rec.status == "available" and self._live(rec, expires):
                out.append(rec.user_id)
                if len(out) >= limit:
                    break
        return out

    async def beat(self, user_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        now = self._now()
        self._world.nodes[self.node_id] = now + self._node_ttl
        missing, elsewhere = [], []
        for uid in user_ids:
            entry = self._world.records.get(uid)
            if entry is not None and entry[0].node_id == self.node_id and entry[1] > now:
                self._world.records[uid] = (entry[0], now + self._ttl)
            elif entry is not None and self._live(*entry):
                elsewhere.append(uid)
            else:
                missing.append(uid)
        return missing, elsewhere

    async def nodes_alive(self, node_ids: Iterable[str]) -> frozenset[str]:
        now = self._now()
        return frozenset(n for n in node_ids if self._world.nodes.get(n, 0.0) > now)

    async def sweep(self) -> list[str]:
        now = self._now()
        dead = {n for n, exp in self._world.nodes.items() if exp <= now}
        if not dead and now < self._next_purge:
            return []  # expired records are invisible to readers already; purge them later
        self._next_purge = now + self._ttl / 3
        # Expired records are simply gone (as Redis TTLs are); only a dead node's live
        # records are reported, since nobody else will say those users left.
        reported = []
        for uid, (rec, exp) in list(self._world.records.items()):
            if rec.node_id in dead or exp <= now:
                del self._world.records[uid]
                if rec.node_id in dead and exp > now:
                    reported.append(uid)
        for node in dead:
            del self._world.nodes[node]
        return reported

    async def retire(self) -> None:
        self._world.nodes.pop(self.node_id, None)
        for uid in [u for u, (r, _) in self._world.records.items() if r.node_id == self.node_id]:
            del self._world.records[uid]

    async def close(self) -> None:
        return None
