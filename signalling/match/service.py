"""Matchmaking on the hub (docs/protocol.md §10): callers queue (``match.request``), hosts
offer themselves with ``presence.update``, the store pairs them atomically, and a pairing
becomes an ordinary paid call rung by the caller's node.

The caller's node owns the ticket: it answers the request, times the queue out, widens a
nearby search, rescans for a caller with filters, and re-queues its caller when a matched
host turns the call down. A host's node keeps the host's entry in the pools in step with
their status and calls. A pairing made on the host's node (a host came while a caller
waited) is sent to the caller's node (``MatchMade``), which rings as for its own.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import msgspec

from ..auth import Role
from ..clock import Clock
from ..cluster.bus import MatchMade
from ..errors import JalwaError
from ..port import DONE, Departure, HubPort, Outcome
from ..protocol import (
    Ack,
    EndReason,
    ErrorCode,
    MatchCancel,
    MatchFound,
    MatchNext,
    MatchPeer,
    MatchPools,
    MatchQueued,
    MatchRequest,
    MatchTimeout,
    PresenceUpdate,
)
from ..session import Session
from ..settings import MatchSettings
from .store import Busy, Filters, MatchStore, Mode, Offer, Pair, Ticket

Ring = Callable[[], Awaitable[None]]
Invite = Callable[[Session, str, bool], Awaitable[tuple[str, Ring]]]
MAX_GEO_LAT = 85.05112878  # Redis GEO (Web Mercator) covers no further north or south
TICK_S = 0.25
_PAIRS = msgspec.msgpack.Encoder()
_PAIR_DECODER = msgspec.msgpack.Decoder(Pair)


class MatchError(JalwaError):
    """A match request refused (protocol error code in ``code``)."""


@dataclass
class _Want:
    """What the caller asked for: queued again after a host said no, or on match.next."""

    mode: Mode
    radius_km: float
    filters: Filters
    lat: float | None
    lon: float | None
    turned_down: set[str] = field(default_factory=set)  # hosts who rejected this caller


@dataclass
class _Waiting:
    ticket: Ticket
    since: float
    deadline: float
    next_widen: float
    next_rescan: float
    offset: int = 0


@dataclass(frozen=True, slots=True)
class _Then:
    job: Callable[[], Awaitable[None]]

    async def run(self) -> None:
        await self.job()


class Matchmaking:
    def __init__(
        self,
        port: HubPort,
        store: MatchStore,
        settings: MatchSettings,
        *,
        clock: Clock,
        invite: Invite,
        in_call: Callable[[str], bool],
        current_call: Callable[[str], str | None],
        hang_up: Callable[[Session, str], Awaitable[None]],
        rate_of: Callable[[str], Awaitable[int]],
        balance_of: Callable[[str], Awaitable[int | None]],
        blocked_with: Callable[[str, int], Awaitable[frozenset[str]]],
        cheapest_rate: int,
        logger: logging.Logger | None = None,
    ) -> None:
        self._port = port
        self.store = store
        self._s = settings
        self._clock = clock
        self._invite = invite
        self._in_call = in_call
        self._current_call = current_call
        self._hang_up = hang_up
        self._rate_of = rate_of
        self._balance_of = balance_of
        self._blocked_with = blocked_with
        self._cheapest = cheapest_rate
        self._log = logger or logging.getLogger(__name__)
        self._wants: dict[str, _Want] = {}
        self._waiting: dict[str, _Waiting] = {}
        self._pools: dict[str, MatchPools] = {}  # local hosts' choice of pools
        self._offers: dict[str, Offer] = {}  # local hosts' last offer (the resync's copy)
        self._matched: dict[str, tuple[str, str]] = {}  # call id -> (caller, host)
        self.wait_times: deque[float] = deque(maxlen=1000)  # s from request to match.found
        self.on_waited: Callable[[str, float], None] | None = None  # (mode, s): the metrics

    def install(self) -> None:
        port = self._port
        port.register(MatchRequest, self._request)
        port.register(MatchCancel, self._cancel)
        port.register(MatchNext, self._next)
        port.on_leave(self._left)
        port.on_node_message(MatchMade, self._made_elsewhere)

    # --- callers --------------------------------------------------------------------------

    async def _request(self, session: Session, msg: MatchRequest) -> Outcome:
        if session.identity.role is not Role.CALLER:
            raise MatchError("only callers queue for a match", code=ErrorCode.FORBIDDEN)
        location = msg.location
        lat, lon = (
            (location.lat, location.lon)
            if location is not None
            else session.location or (None, None)
        )
        if msg.mode == "nearby":
            if lat is None or lon is None:
                raise MatchError(
                    "nearby needs a location (here or in presence.update)",
                    code=ErrorCode.LOCATION_REQUIRED,
                )
            if abs(lat) > MAX_GEO_LAT:
                raise MatchError(
                    f"nearby covers latitudes up to ±{MAX_GEO_LAT:.2f}",
                    code=ErrorCode.LOCATION_REQUIRED,
                )
        f = msg.filters
        want = _Want(
            mode=msg.mode,
            radius_km=min(msg.radius_km or self._s.nearby_start_km, self._s.nearby_max_km),
            filters=Filters(
                language=f.language, gender=f.gender, tags=tuple(f.tags), max_rate=f.max_rate
            )
            if f is not None
            else Filters(),
            lat=lat if msg.mode == "nearby" else None,
            lon=lon if msg.mode == "nearby" else None,
        )
        return await self._queued(session, msg.id, want)

    async def _queued(self, session: Session, request_id: str | None, want: _Want) -> Outcome:
        """The ack with the ticket, then ``match.found`` (a host was free) or ``match.queued``."""
        ticket, pair = await self._queue(session, want)
        reply = Ack(id=request_id, ticket=ticket.ticket_id) if request_id is not None else None
        return reply, [_Then(lambda: self._after(session, ticket, pair))]

    async def _after(self, session: Session, ticket: Ticket, pair: Pair | None) -> None:
        if pair is not None:
            await self._connect(pair)
        else:
            await self._told_queued(session, ticket)

    async def _queue(self, session: Session, want: _Want) -> tuple[Ticket, Pair | None]:
        """Ask the store for a host now; the ticket waits if none is free. Raises MatchError."""
        uid = session.user_id
        if self._in_call(uid):
            raise MatchError("you are in a call", code=ErrorCode.ALREADY_IN_CALL)
        balance = await self._balance_of(uid)
        max_rate = want.filters.max_rate
        if balance is not None:
            needed = min(self._cheapest, max_rate if max_rate is not None else self._cheapest)
            if balance < needed:
                raise MatchError(
                    f"a minute costs at least {needed} coins and the wallet has {balance}",
                    code=ErrorCode.INSUFFICIENT_BALANCE,
                )
            max_rate = balance if max_rate is None else min(max_rate, balance)
        exclude = await self._blocked_with(uid, self._s.exclude_max) | want.turned_down
        ticket = Ticket(
            ticket_id="mt_" + secrets.token_urlsafe(9),
            user_id=uid,
            name=session.identity.name,
            node_id=self._port.node_id,
            session_id=session.session_id,
            mode=want.mode,
            filters=replace(want.filters, max_rate=max_rate),
            exclude=frozenset(exclude),
            lat=want.lat,
            lon=want.lon,
            radius_km=want.radius_km,
        )
        try:
            pair = await self.store.request(ticket)
        except Busy as exc:
            raise MatchError(
                "a match of yours is being connected", code=ErrorCode.MATCH_PENDING
            ) from exc
        self._wants[uid] = want
        now = self._clock.monotonic()
        previous = self._waiting.pop(uid, None)
        self._waiting[uid] = _Waiting(
            ticket=ticket,
            since=previous.since if previous is not None else now,
            deadline=now + self._s.timeout_s,
            next_widen=now + self._s.widen_every_s,
            next_rescan=now + self._s.rescan_s,
        )
        return ticket, pair

    async def _told_queued(self, session: Session, ticket: Ticket) -> None:
        waiting = self._waiting.get(session.user_id)
        if waiting is not None and waiting.ticket.ticket_id == ticket.ticket_id:
            session.send(MatchQueued(ticket=ticket.ticket_id, mode=ticket.mode))

    async def _cancel(self, session: Session, msg: MatchCancel) -> Outcome:
        waiting = self._waiting.pop(session.user_id, None)
        self._wants.pop(session.user_id, None)
        if waiting is not None:
            await self.store.cancel(session.user_id, waiting.ticket.ticket_id)
        return DONE

    async def _next(self, session: Session, msg: MatchNext) -> Outcome:
        uid = session.user_id
        want = self._wants.get(uid)
        if want is None:
            raise MatchError("no match request to repeat", code=ErrorCode.NOT_MATCHED)
        call_id = self._current_call(uid)
        if call_id is not None:
            if call_id not in self._matched:
                raise MatchError("your call is not a matched one", code=ErrorCode.NOT_MATCHED)
            await self._hang_up(session, call_id)
        want.turned_down.clear()
        return await self._queued(session, msg.id, want)

    async def _again(self, session: Session, want: _Want) -> None:
        try:
            ticket, pair = await self._queue(session, want)
        except MatchError as exc:
            self._log.info("could not queue %s again: %s", session.user_id, exc.message)
            return
        await self._after(session, ticket, pair)

    # --- pairings -------------------------------------------------------------------------

    async def _route(self, pair: Pair) -> None:
        """Ring on the caller's node: here, or there through the bus."""
        if pair.ticket.node_id == self._port.node_id:
            await self._connect(pair)
        else:
            made = MatchMade(pair=_PAIRS.encode(pair), user_id=pair.ticket.user_id)
            await self._port.to_node(pair.ticket.node_id, made)

    async def _made_elsewhere(self, message: MatchMade) -> None:
        await self._connect(_PAIR_DECODER.decode(message.pair))

    async def _connect(self, pair: Pair) -> None:
        uid, host = pair.ticket.user_id, pair.host.user_id
        waiting = self._waiting.get(uid)
        if waiting is not None and waiting.ticket.ticket_id == pair.ticket.ticket_id:
            del self._waiting[uid]
        session = self._port.session_of(uid)
        if session is None or session.session_id != pair.ticket.session_id or not session.reachable:
            await self.store.release([uid, host])
            await self._reoffer(host)
            return
        try:
            call_id, ring = await self._invite(session, host, pair.host.auto_accept)
        except JalwaError as exc:
            self._log.info("matched %s with %s, but: %s", uid, host, exc.message)
            await self.store.release([uid, host])
            await self._reoffer(host)
            want = self._wants.get(uid)
            if want is not None:
                want.turned_down.add(host)
                await self._again(session, want)
            return
        await self.store.release([uid, host])  # both are in the call directory now
        self._matched[call_id] = (uid, host)
        if waiting is not None:
            waited = self._clock.monotonic() - waiting.since
            self.wait_times.append(waited)
            if self.on_waited is not None:
                self.on_waited(pair.ticket.mode, waited)
        distance = None if pair.distance_km is None else max(1, round(pair.distance_km))
        peer = MatchPeer(id=host, name=pair.host.name, rate=pair.host.rate, distance_km=distance)
        session.send(MatchFound(ticket=pair.ticket.ticket_id, call_id=call_id, peer=peer))
        await ring()

    async def matched_ended(self, call_id: str, reason: EndReason, answered: bool) -> None:
        """A matched call ended (on the caller's node, which owns it): a host who turned
        it down (or vanished while ringing) is replaced without the caller asking."""
        parties = self._matched.pop(call_id, None)
        if parties is None or answered:
            return
        if reason not in (EndReason.REJECTED, EndReason.TIMEOUT, EndReason.PEER_LOST):
            return
        caller, host = parties
        session, want = self._port.session_of(caller), self._wants.get(caller)
        if session is None or want is None or caller in self._waiting:
            return
        want.turned_down.add(host)
        await self._again(session, want)

    # --- hosts ----------------------------------------------------------------------------

    async def updated(self, session: Session, msg: PresenceUpdate) -> None:
        """After a ``presence.update``: a host's pools, status or place may have changed."""
        if session.identity.role is not Role.HOST:
            return
        if msg.match is not None:
            self._pools[session.user_id] = msg.match
        await self.refresh(session.user_id)

    async def refresh(self, user_id: str) -> None:
        """Put a local host in (or take them out of) the pools as their state says: after
        an update, and when a call of theirs starts or ends. Never raises."""
        if user_id not in self._pools:
            return
        try:
            await self._sync_host(user_id)
        except Exception:
            self._log.exception("match pools of %s not updated", user_id)

    async def _sync_host(self, user_id: str) -> None:
        session = self._port.session_of(user_id)
        pools = self._pools.get(user_id)
        if session is None or pools is None:
            return
        modes: set[Mode] = set()
        if pools.random:
            modes.add("random")
        place = session.location
        if pools.nearby and place is not None and abs(place[0]) <= MAX_GEO_LAT:
            modes.add("nearby")
        if (
            not modes
            or session.status != "available"
            or self._in_call(user_id)
            or not session.reachable  # its connection just went: not a partner for anyone
        ):
            self._offers.pop(user_id, None)
            await self.store.withdraw(user_id, session.session_id)
            return
        ident = session.identity
        near = "nearby" in modes and place is not None
        offer = Offer(
            user_id=user_id,
            name=ident.name,
            node_id=self._port.node_id,
            session_id=session.session_id,
            rate=await self._rate_of(user_id),
            modes=frozenset(modes),
            languages=ident.profile.languages,
            gender=ident.profile.gender,
            tags=ident.profile.tags,
            exclude=await self._blocked_with(user_id, self._s.exclude_max),
            auto_accept=pools.auto_accept,
            lat=place[0] if near and place is not None else None,
            lon=place[1] if near and place is not None else None,
        )
        self._offers[user_id] = offer
        pair = await self.store.offer(offer)
        if pair is not None:
            await self._route(pair)

    async def _reoffer(self, host: str) -> None:
        pair = await self.store.reoffer(host)
        if pair is not None:
            await self._route(pair)

    async def resync(self) -> None:
        """With the beat: a local host who should be pooled but is not (a pairing that was
        never rung, its caller's node died) goes back in."""
        for uid, offer in list(self._offers.items()):
            session = self._port.session_of(uid)
            if self._in_call(uid) or session is None or not session.reachable:
                continue
            pair = await self.store.offer(offer, only_if_absent=True)
            if pair is not None:
                await self._route(pair)

    # --- lifecycle and timers -------------------------------------------------------------

    async def _left(self, session: Session, how: Departure) -> None:
        uid = session.user_id
        waiting = self._waiting.get(uid)
        if waiting is not None and waiting.ticket.session_id == session.session_id:
            del self._waiting[uid]
            self._wants.pop(uid, None)
            await self.store.cancel(uid, waiting.ticket.ticket_id)
        if uid in self._pools and how is not Departure.REPLACED_HERE:
            self._pools.pop(uid, None)
        offer = self._offers.get(uid)
        if offer is not None and offer.session_id == session.session_id:
            del self._offers[uid]
            await self.store.withdraw(uid, session.session_id)

    async def tick(self) -> None:
        """Time queues out, widen nearby searches, rescan for callers with filters."""
        now = self._clock.monotonic()
        for uid, w in list(self._waiting.items()):
            ticket = w.ticket
            if now >= w.deadline:
                if await self.store.cancel(uid, ticket.ticket_id):
                    self._waiting.pop(uid, None)
                    self._port.deliver(uid, MatchTimeout(ticket=ticket.ticket_id))
                continue
            renewed: Ticket | None = None
            if ticket.mode == "nearby" and now >= w.next_widen:
                w.next_widen = now + self._s.widen_every_s
                if ticket.radius_km < self._s.nearby_max_km:
                    radius = min(ticket.radius_km * 2, self._s.nearby_max_km)
                    renewed = w.ticket = replace(ticket, radius_km=radius)
            elif ticket.mode == "random" and now >= w.next_rescan and _narrow(ticket):
                w.next_rescan = now + self._s.rescan_s
                w.offset += self._s.scan_max
                renewed = ticket
            if renewed is None:
                continue
            try:
                pair = await self.store.request(renewed, renew=True, offset=w.offset)
            except Busy:
                continue  # a pairing of theirs is being rung
            if pair is not None:
                await self._connect(pair)

    async def run(self) -> None:
        while True:
            await self._clock.sleep(TICK_S)
            try:
                await self.tick()
            except Exception:
                self._log.exception("match timers failed")

    async def stats(self) -> dict[str, float]:
        """Users waiting per mode (every node's) and this node's recent wait times."""
        out: dict[str, float] = dict(await self.store.waiting())
        times = sorted(self.wait_times)
        if times:
            out["wait_median_s"] = times[len(times) // 2]
            out["wait_p99_s"] = times[min(len(times) - 1, math.ceil(len(times) * 0.99) - 1)]
        return out


def _narrow(ticket: Ticket) -> bool:
    """A random ticket that may skip hosts at the head of the pool (so it rescans deeper)."""
    f = ticket.filters
    return bool(ticket.exclude or f.language or f.gender or f.tags or f.max_rate is not None)
