"""Which call each user is in, for every node (docs/architecture.md, "calls across nodes").

A call runs on one node, its owner (where it was invited); the other party may be connected
anywhere. The directory is how every node knows, for any user: in a call or not, which
call, owned by which node. The owner writes an entry when the call is invited (``claim``,
atomic over both parties: a user is in at most one call across all nodes), refreshes it
while the call lives and releases it when the call ends. Entries expire ``ttl_s`` after
the owner's last refresh, which is the owner node's liveness TTL: a node that dies takes
its calls out of the directory with its liveness key, so nobody is rung as busy (or routed
to) on behalf of a dead node.

It also keeps, per user, whether they were already told that a call ended (a call whose
node died is reported by whichever survivor notices first, exactly once) and the
``call.ended`` frames of users who were offline then, for their next ``welcome``.

``MemoryCallDirectory`` is the embedded adapter, ``directory_redis.RedisCallDirectory``
the real one; tests/contract/test_call_directory_contract.py runs against both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Protocol

import msgspec

from ..auth import Identity, Role, user_info
from ..clock import Clock
from ..protocol import CallInfo


class PartyRef(msgspec.Struct, frozen=True, array_like=True):
    user_id: str
    role: str
    name: str

    @classmethod
    def of(cls, identity: Identity) -> PartyRef:
        return cls(identity.user_id, identity.role.value, identity.name)

    def identity(self) -> Identity:
        return Identity(self.user_id, Role(self.role), self.name)


class CallEntry(msgspec.Struct, frozen=True, array_like=True):
    """A call as the directory knows it: enough for any node to route to it and to put it
    in a ``welcome``."""

    call_id: str
    owner: str  # the node that runs the call
    caller: PartyRef
    callee: PartyRef
    state: Literal["ringing", "active"] = "ringing"
    record: bool = False

    def parties(self) -> tuple[str, str]:
        return (self.caller.user_id, self.callee.user_id)

    def party(self, user_id: str) -> PartyRef:
        return self.caller if user_id == self.caller.user_id else self.callee

    def peer_of(self, user_id: str) -> PartyRef:
        return self.callee if user_id == self.caller.user_id else self.caller

    def info(self, user_id: str) -> CallInfo:
        """The call as ``welcome`` shows it to ``user_id`` (§3)."""
        return CallInfo(
            call_id=self.call_id,
            state=self.state,
            peer=user_info(self.peer_of(user_id).identity()),
            role="caller" if user_id == self.caller.user_id else "callee",
        )


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CallEntry)


def encode_entry(entry: CallEntry) -> bytes:
    return _encoder.encode(entry)


def decode_entry(raw: bytes) -> CallEntry:
    return _decoder.decode(raw)


class CallDirectory(Protocol):
    async def claim(self, entry: CallEntry) -> str | None:
        """Enter the call for both parties unless one of them is in another live call;
        then nothing changes and that party's user id is returned."""

    async def update(self, entry: CallEntry) -> None:
        """The call changed state (answered): rewrite it where it is still this call."""

    async def release(self, entry: CallEntry) -> None:
        """The call ended: remove it, for each party only if it is still this call."""

    async def refresh(self, entries: Iterable[CallEntry]) -> None:
        """The owner's beat: extend the entries' lifetime, writing back any that were lost
        (a Redis restarted without persistence), unless a party is in another call now."""

    async def of_users(self, user_ids: Iterable[str]) -> dict[str, CallEntry]:
        """The live call of each of these users that is in one."""

    async def by_id(self, call_id: str) -> CallEntry | None: ...

    async def first_to_tell(self, call_id: str, user_id: str) -> bool:
        """True once per (call, user): whoever gets True tells the user the call ended."""

    async def leave_notice(self, user_id: str, frame: bytes) -> None:
        """Keep a frame for the user's next connect (they were offline when it happened)."""

    async def take_notices(self, user_id: str) -> list[bytes]:
        """The frames kept for the user, oldest first; they are removed."""


NOTICE_TTL_S = 86_400  # a day: told at the next connect, or not at all (the ledger keeps it)
NOTICES_MAX = 20


class MemoryCallDirectory:
    """One process (several in tests, sharing one instance): dicts with expiry times."""

    def __init__(self, clock: Clock, *, ttl_s: float) -> None:
        self._clock = clock
        self._ttl = ttl_s
        self._calls: dict[str, tuple[CallEntry, float]] = {}  # call id -> (entry, expires)
        self._users: dict[str, str] = {}  # user id -> call id
        self._told: dict[tuple[str, str], float] = {}
        self._notices: dict[str, list[bytes]] = {}

    def _live(self, call_id: str | None) -> CallEntry | None:
        if call_id is None:
            return None
        found = self._calls.get(call_id)
        if found is None or found[1] <= self._clock.monotonic():
            return None
        return found[0]

    def busy(self, user_id: str) -> bool:
        """In a live call (for the embedded match store, which reads the directory)."""
        return self._live(self._users.get(user_id)) is not None

    async def claim(self, entry: CallEntry) -> str | None:
        for uid in entry.parties():
            current = self._live(self._users.get(uid))
            if current is not None and current.call_id != entry.call_id:
                return uid
        self._write(entry)
        return None

    def _write(self, entry: CallEntry) -> None:
        self._calls[entry.call_id] = (entry, self._clock.monotonic() + self._ttl)
        for uid in entry.parties():
            self._users[uid] = entry.call_id

    async def update(self, entry: CallEntry) -> None:
        if entry.call_id in self._calls:
            self._write(entry)

    async def release(self, entry: CallEntry) -> None:
        self._calls.pop(entry.call_id, None)
        for uid in entry.parties():
            if self._users.get(uid) == entry.call_id:
                del self._users[uid]

    async def refresh(self, entries: Iterable[CallEntry]) -> None:
        for entry in entries:
            taken = any(
                (other := self._live(self._users.get(uid))) is not None
                and other.call_id != entry.call_id
                for uid in entry.parties()
            )
            if not taken:
                self._write(entry)

    async def of_users(self, user_ids: Iterable[str]) -> dict[str, CallEntry]:
        out = {}
        for uid in user_ids:
            entry = self._live(self._users.get(uid))
            if entry is not None and uid in entry.parties():
                out[uid] = entry
        return out

    async def by_id(self, call_id: str) -> CallEntry | None:
        return self._live(call_id)

    async def first_to_tell(self, call_id: str, user_id: str) -> bool:
        now = self._clock.monotonic()
        key = (call_id, user_id)
        if self._told.get(key, 0.0) > now:
            return False
        self._told[key] = now + NOTICE_TTL_S
        return True

    async def leave_notice(self, user_id: str, frame: bytes) -> None:
        kept = self._notices.setdefault(user_id, [])
        kept.append(frame)
        del kept[:-NOTICES_MAX]

    async def take_notices(self, user_id: str) -> list[bytes]:
        return self._notices.pop(user_id, [])
