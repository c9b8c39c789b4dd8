"""Presence on the hub (docs/protocol.md §4): publish each session's status, tell watchers
here and on other nodes when it changes, and clear what a dead node left behind.

A user's shown status is what they chose (``presence.update``) unless they are in a call:
then it is ``busy``. The calls wing answers "is this user in a call?" through the
``in_call`` callable ``app.py`` gives; the calls wing in turn calls ``refresh`` when a call
starts or ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..cluster.bus import PresenceNote
from ..errors import JalwaError
from ..port import DONE, Departure, HubPort, Outcome
from ..protocol import (
    Ack,
    CloseCode,
    ErrorCode,
    PresenceChanged,
    PresenceUnwatch,
    PresenceUpdate,
    PresenceWatch,
    ShownStatus,
    encode,
    shown_status,
)
from ..session import NOBODY, Session
from .store import PresenceRecord, PresenceStore


@dataclass(frozen=True, slots=True)
class _Told:
    updated: Callable[[Session, PresenceUpdate], Awaitable[None]]
    session: Session
    msg: PresenceUpdate

    async def run(self) -> None:
        await self.updated(self.session, self.msg)


class Presence:
    def __init__(
        self,
        port: HubPort,
        store: PresenceStore,
        *,
        watch_max: int,
        in_call: Callable[[str], bool],
        records_every: int = 1,
        logger: logging.Logger | None = None,
    ) -> None:
        self._port = port
        # The match wing, told after each presence.update (a host's pools, status, place).
        self.updated: Callable[[Session, PresenceUpdate], Awaitable[None]] | None = None
        self.store = store
        self._watch_max = watch_max
        self._in_call = in_call
        # The node's liveness is refreshed on every beat (it decides how soon a dead node is
        # noticed); the users' records, whose TTL is longer, on every ``records_every``-th.
        self._records_every = max(1, records_every)
        self._beats = 0
        self._log = logger or logging.getLogger(__name__)
        self._watchers: dict[str, set[Session]] = {}
        self._shown: dict[str, ShownStatus] = {}  # last status announced per local user

    def install(self) -> None:
        port = self._port
        port.register(PresenceUpdate, self._update)
        port.register(PresenceWatch, self._watch)
        port.register(PresenceUnwatch, self._unwatch)
        port.on_join(self._joined)
        port.on_leave(self._left)
        port.on_node_message(PresenceNote, self._from_other_node)

    # --- lifecycle ----------------------------------------------------------------------

    async def _joined(self, session: Session) -> None:
        await self.publish(session)
        current = self._port.session_of(session.user_id)
        if current is not session and current is not None:
            # A newer connect of this user overtook ours while we were publishing: its
            # record must be the one that stays, or presence would name a closed session.
            await self.publish(current)
        elif current is None:
            # Taken by a newer connect on another node, or banned, meanwhile: what we wrote
            # after that session's record was gone must not name a closed session.
            await self.store.clear(session.user_id, session.session_id)

    async def _left(self, session: Session, how: Departure) -> None:
        uid = session.user_id
        if how is Departure.DETACHED:
            # Parked for a resume (§3.1): offline to everyone (busy while a call waits for
            # them), but the record stays, never matched or rung, so frames for the user
            # still reach this node, and so do the changes of the users it watches.
            await self.publish(session, status=self._parked_status(uid))
            return
        self._unwatch_all(session)
        if how is Departure.REPLACED_HERE:
            return  # the newer session owns the user's presence
        shown = self._shown.pop(uid, None)
        if how is Departure.REFUSED:
            # The store is likely away (the record, not refreshed, runs out by itself).
            with contextlib.suppress(Exception):
                if await self.store.clear(uid, session.session_id):
                    await self._announce(uid, "offline")
            return
        # Gone, or moved to another node: which owns the record then, unless this session,
        # overtaken while it joined, wrote it again after the newer one had left.
        cleared = False
        try:
            cleared = await self.store.clear(uid, session.session_id)
        finally:
            # A record that is not ours any more belongs to a newer session (maybe on another
            # node): then the user is not offline. A parked one was shown offline already.
            if shown != "offline" and (cleared or uid not in await self.store.get_many([uid])):
                await self._announce(uid, "offline")

    async def beat(self) -> None:
        """Keep this node's presence alive and clear what dead nodes left behind."""
        records = self._beats % self._records_every == 0  # the first beat writes them
        self._beats += 1
        local = list(self._port.local_users()) if records else []
        missing, elsewhere = await self.store.beat(local)
        for uid in missing:
            # The store lost a live session's record (a Redis restart): without this the
            # user would look offline to everyone until they next changed status.
            await self.refresh(uid)
        for uid in elsewhere:
            session = self._port.session_of(uid)
            if session is not None and not session.joining:
                # A newer connect on another node claimed the user, and the close it sent
                # was lost (the node bus is at-most-once): one live session per user.
                session.close(CloseCode.REPLACED, "replaced by a newer session")
        for uid in await self.store.sweep():
            if self._port.session_of(uid) is None:
                await self._announce(uid, "offline")

    def _parked_status(self, user_id: str) -> ShownStatus:
        return "busy" if self._in_call(user_id) else "offline"

    async def refresh(self, user_id: str) -> None:
        """Publish the user's status again (a call started or ended); never raises."""
        session = self._port.session_of(user_id)
        parked = self._port.parked(user_id) if session is None else None
        if (session is None or session.joining) and parked is None:
            return  # (a joining one publishes once it has joined)
        try:
            if parked is not None:
                await self.publish(parked, status=self._parked_status(user_id))
            elif session is not None:
                await self.publish(session)
        except Exception:
            # Presence catches up at the user's next update; the call must go on.
            self._log.exception("presence update for %s failed", user_id)

    # --- handlers (§4) ------------------------------------------------------------------

    async def _update(self, session: Session, msg: PresenceUpdate) -> Outcome:
        session.status = msg.status
        if msg.location is not None:
            session.location = (msg.location.lat, msg.location.lon)
        await self.publish(session)
        if self.updated is not None:
            # After the ack: a host offered to the pools may be rung at once.
            return None, [_Told(self.updated, session, msg)]
        return DONE

    async def _watch(self, session: Session, msg: PresenceWatch) -> Outcome:
        wanted = set(msg.user_ids)
        if len(session.watching | wanted) > self._watch_max:
            raise JalwaError(
                f"at most {self._watch_max} watched users", code=ErrorCode.TOO_MANY_WATCHES
            )
        for uid in wanted:
            self._watchers.setdefault(uid, set()).add(session)
        session.watching |= wanted
        records = await self.store.get_many(wanted)
        shown: dict[str, ShownStatus] = {
            uid: shown_status(records[uid].status) if uid in records else "offline"
            for uid in wanted
        }
        return (Ack(id=msg.id, presence=shown) if msg.id is not None else None), []

    async def _unwatch(self, session: Session, msg: PresenceUnwatch) -> Outcome:
        for uid in msg.user_ids:
            if uid in session.watching:
                session.watching = (session.watching - {uid}) or NOBODY
                self._drop_watcher(uid, session)
        return DONE

    # --- publishing and fan-out ---------------------------------------------------------

    def shown_status(self, session: Session) -> ShownStatus:
        return "busy" if self._in_call(session.user_id) else session.status

    async def publish(self, session: Session, *, status: ShownStatus | None = None) -> None:
        """Write the session's record and announce a change; ``status`` overrides what
        would be shown (``offline`` for a parked session)."""
        status = status or self.shown_status(session)
        ident = session.identity
        # Where a user is stays on this node: only the match pools keep a location, and
        # only while the user is in one (§10).
        written = await self.store.set(
            PresenceRecord(
                user_id=ident.user_id,
                status=status,
                role=ident.role.value,
                name=ident.name,
                node_id=self.store.node_id,
                session_id=session.session_id,
            )
        )
        if not written:
            return  # a newer connect on another node holds the user: not ours to announce
        if self._shown.get(ident.user_id) != status:
            self._shown[ident.user_id] = status
            await self._announce(ident.user_id, status)

    async def _announce(self, user_id: str, status: ShownStatus) -> None:
        """Tell watchers here, and the other nodes for theirs."""
        self._notify(user_id, status)
        try:
            await self._port.broadcast(PresenceNote(user_id=user_id, status=status))
        except Exception:
            self._log.exception("presence broadcast for %s failed", user_id)

    def _from_other_node(self, note: PresenceNote) -> None:
        self._notify(note.user_id, shown_status(note.status))

    def _notify(self, user_id: str, status: ShownStatus) -> None:
        watchers = self._watchers.get(user_id)
        if watchers:
            frame = encode(PresenceChanged(user_id=user_id, status=status))
            for watcher in watchers:
                watcher.send_frame(frame)

    def _unwatch_all(self, session: Session) -> None:
        for uid in session.watching:
            self._drop_watcher(uid, session)
        session.watching = NOBODY

    def _drop_watcher(self, user_id: str, session: Session) -> None:
        watchers = self._watchers.get(user_id)
        if watchers is not None:
            watchers.discard(session)
            if not watchers:
                del self._watchers[user_id]
