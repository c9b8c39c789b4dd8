"""Where the parties of calls are, across nodes (docs/architecture.md, "calls across nodes").

A call runs on its owner node. For the calls it owns, a node keeps the (node, session)
each party is on and reaches them there; for its own users in calls owned elsewhere, it
keeps the call's directory entry (to route their messages to the owner, to show them busy
and to put the call in their ``welcome``) and tells the owner when they come and go. On
each beat it ends what a dead node leaves behind: a party's node that died ends the call
at once (the party had the node's TTL to come back elsewhere), an owner that died ends the
call for the party here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from ..cluster.bus import PartyInCall, PartyMoved, UserFrame
from ..port import HubPort
from ..protocol import CallEnded, CallInfo, EndReason, ServerMessage, encode
from ..session import Session
from .directory import CallDirectory, CallEntry, PartyRef, decode_entry, encode_entry
from .hooks import EndFigures
from .machine import Call, CallBook, CallState, payer_and_host

NodesAlive = Callable[[Iterable[str]], Awaitable[frozenset[str]]]
Figures = Callable[[str, str], Awaitable[EndFigures]]  # (call id, payer) -> so far
# A remote call whose entry vanished while its owner lives is let go after this many beats
# (its end was announced on the bus, which is at-most-once).
VANISHED_BEATS = 3
NOWHERE = ("", "")


class Parties:
    def __init__(
        self,
        port: HubPort,
        book: CallBook,
        directory: CallDirectory,
        *,
        nodes_alive: NodesAlive,
        figures: Figures,
        refresh: Callable[[str], Awaitable[None]] | None,
        logger: logging.Logger,
    ) -> None:
        self._port = port
        self._book = book
        self.directory = directory
        self._nodes_alive = nodes_alive
        self._figures = figures
        self._refresh = refresh
        self._log = logger
        # Parties of the calls this node owns: user id -> (node, session) they are on.
        self._where: dict[str, tuple[str, str]] = {}
        # This node's users in calls owned by other nodes: user id -> the call's entry.
        self._remote: dict[str, CallEntry] = {}
        self._vanished: dict[str, int] = {}  # user id -> beats their remote call was missing

    def install(self, lost: Callable[[str], Awaitable[None]]) -> None:
        """``lost``: start the grace period of a party of a call owned here."""
        self._party_lost = lost
        self._port.on_node_message(PartyMoved, self._moved)
        self._port.on_node_message(PartyInCall, self._in_call)

    @property
    def node(self) -> str:
        return self._port.node_id

    async def alive(self, node: str) -> bool:
        return node in await self._nodes_alive([node])

    async def owner_of(self, user_id: str, call_id: str) -> str | None:
        """The other node that runs ``call_id`` with this node's user in it, if any. Asks
        the directory when this node has not heard of the call (a message that overtook
        the owner's note, or a note that was lost)."""
        entry = self._remote.get(user_id)
        if entry is None or entry.call_id != call_id:
            found = (await self.directory.of_users([user_id])).get(user_id)
            if found is None or found.call_id != call_id or found.owner == self.node:
                return None
            if self._port.session_of(user_id) is not None:
                self._remote[user_id] = entry = found
            else:
                return found.owner
        return entry.owner

    def remote_call(self, user_id: str) -> CallEntry | None:
        """The call this node's user is in, owned by another node."""
        return self._remote.get(user_id)

    def entry(self, call: Call) -> CallEntry:
        return CallEntry(
            call_id=call.call_id,
            owner=self.node,
            caller=PartyRef.of(call.caller),
            callee=PartyRef.of(call.callee),
            state="active" if call.state is CallState.ACTIVE else "ringing",
            record=call.record,
        )

    # --- this node owns the call ----------------------------------------------------------

    def joined(self, user_id: str, where: tuple[str, str]) -> None:
        """A party of a call owned here is on this (node, session)."""
        self._where[user_id] = where

    def is_current(self, user_id: str, session_id: str) -> bool:
        """Is this the party's latest session (not one they already left behind)?"""
        return self._where.get(user_id, ("", session_id))[1] == session_id

    async def send(self, user_id: str, message: ServerMessage) -> None:
        """To a party of a call owned here, on whichever node they are (a parked one gets it
        in its resume buffer; one gone for good gets nothing: their next welcome has it)."""
        if self._port.deliver(user_id, message):
            return
        node = self._where.get(user_id, NOWHERE)[0]
        if node not in ("", self.node):
            await self._port.to_node(node, UserFrame(user_id=user_id, frame=encode(message)))

    async def tell(self, entry: CallEntry, *, in_call: bool) -> None:
        """The nodes of the call's parties elsewhere: who is in the call (for busy, and for
        routing their messages here). Never raises: the directory is the fallback."""
        blob = encode_entry(entry) if in_call else b""
        for uid in entry.parties():
            node = self._where.get(uid, NOWHERE)[0]
            if node not in ("", self.node):
                note = PartyInCall(user_id=uid, call_id=entry.call_id, in_call=in_call, entry=blob)
                try:
                    await self._port.to_node(node, note)
                except Exception:
                    self._log.exception("telling %s about call %s failed", node, entry.call_id)

    def ended(self, call: Call) -> None:
        for uid in call.parties():
            self._where.pop(uid, None)

    async def _moved(self, moved: PartyMoved) -> None:
        """A party of a call owned here connected on (or left) another node."""
        call = self._book.get(moved.call_id)
        uid = moved.user_id
        if call is None or uid not in call.parties():
            if moved.node:  # the call is over: that node must not keep it for the user
                note = PartyInCall(user_id=uid, call_id=moved.call_id, in_call=False)
                await self._port.to_node(moved.node, note)
            return
        if moved.node:
            # A session the user has already left behind (a newer connect claimed them in
            # presence) must not take the call back: its note may come after the newer one's.
            now = (await self._port.locate([uid])).get(uid)
            if now is not None and (now.node_id, now.session_id) != (moved.node, moved.session_id):
                return
            self._where[uid] = (moved.node, moved.session_id)
            self._book.party_back(uid)
        elif self.is_current(uid, moved.session_id) and not self._book.is_lost(uid):
            await self._party_lost(uid)

    # --- another node owns the call -------------------------------------------------------

    async def welcome(self, session: Session) -> CallInfo | None:
        """The user's call owned by another node, if any; that node hears they are here."""
        uid = session.user_id
        entry = (await self.directory.of_users([uid])).get(uid)
        if entry is None or entry.owner == self.node or session.closing:
            return None
        self._remote[uid] = entry
        back = PartyMoved(
            user_id=uid, call_id=entry.call_id, session_id=session.session_id, node=self.node
        )
        await self._port.to_node(entry.owner, back)
        return entry.info(uid)

    async def left(self, session: Session, *, parked: bool = False) -> None:
        """The user's session here ended: the owner of their call elsewhere hears it. A
        ``parked`` one (dropped, resumable) keeps the call known here, so the user still
        shows busy, until it ends or the parking does."""
        uid = session.user_id
        entry = self._remote.get(uid) if parked else self._remote.pop(uid, None)
        if not parked:
            self._vanished.pop(uid, None)
        if entry is not None:
            lost = PartyMoved(user_id=uid, call_id=entry.call_id, session_id=session.session_id)
            await self._port.to_node(entry.owner, lost)

    async def _in_call(self, note: PartyInCall) -> None:
        """The owner of a call says one of this node's users is in it (or no longer)."""
        uid = note.user_id
        if note.in_call and note.entry and self._port.session_of(uid) is not None:
            self._remote[uid] = decode_entry(note.entry)
        elif not note.in_call:
            current = self._remote.get(uid)
            if current is None or current.call_id != note.call_id:
                return
            del self._remote[uid]
        if self._refresh is not None:
            await self._refresh(uid)

    # --- calls whose node died --------------------------------------------------------------

    async def beat(self, end_call: Callable[[str, EndReason], Awaitable[bool]]) -> None:
        """Keep this node's calls in the directory; end those of dead nodes (module doc)."""
        await self.directory.refresh([self.entry(call) for call in self._book.active_calls()])
        away = {
            node
            for uid, (node, _) in self._where.items()
            if node not in ("", self.node) and not self._book.is_lost(uid)
        }
        if away:
            dead = away - await self._nodes_alive(away)
            for uid, (node, _) in list(self._where.items()):
                call = self._book.call_of(uid)
                if node in dead and call is not None:
                    self._log.info("call %s: the node of %s died", call.call_id, uid)
                    await end_call(call.call_id, EndReason.PEER_LOST)
        if self._remote:
            await self._check_remote()

    async def _check_remote(self) -> None:
        remote = dict(self._remote)
        alive = await self._nodes_alive({entry.owner for entry in remote.values()})
        listed = await self.directory.of_users(remote)
        for uid, entry in remote.items():
            if entry.owner in alive:
                if uid in listed and listed[uid].call_id == entry.call_id:
                    self._vanished.pop(uid, None)
                    continue
                # Ended (the owner's word may still be on its way) or replaced: let go after
                # a few beats, so a user is never held busy by a lost message.
                self._vanished[uid] = self._vanished.get(uid, 0) + 1
                if self._vanished[uid] < VANISHED_BEATS:
                    continue
            self._vanished.pop(uid, None)
            if self._remote.get(uid) is not entry:
                continue  # changed while we looked
            del self._remote[uid]
            if entry.owner not in alive:
                self._log.info("call %s: its node %s died", entry.call_id, entry.owner)
                payer, _ = payer_and_host(entry.caller.identity(), entry.callee.identity())
                figures = await self._figures(entry.call_id, payer.user_id)
                # Both parties: the one who was on the dead node hears it wherever they
                # connect next (the ledger's own finding may have gone to the dead node).
                parties = entry.parties()
                await self.tell_ended(entry.call_id, EndReason.PEER_LOST, figures, parties)
            if self._refresh is not None:
                await self._refresh(uid)

    async def tell_ended(
        self, call_id: str, reason: EndReason, figures: EndFigures, parties: Iterable[str]
    ) -> None:
        """A call no node runs any more (its node died) ended: each party is told once, by
        whichever node gets there first, now or at their next connect."""
        ended = CallEnded(
            call_id=call_id, reason=reason, minutes=figures.minutes, coins=figures.coins
        )
        for uid in parties:
            if not await self.directory.first_to_tell(call_id, uid):
                continue
            if not await self._port.deliver_anywhere(uid, ended):
                await self.directory.leave_notice(uid, encode(ended))

    async def notices(self, session: Session) -> None:
        """Calls that ended while the user was offline (their node died): told now."""
        for frame in await self.directory.take_notices(session.user_id):
            session.send_frame(frame)
