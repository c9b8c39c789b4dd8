"""Part of the composition root: ``assemble`` builds the hub with its wings and wires them
to each other (what one wing needs of another it gets here as a callable). No I/O, so unit
tests assemble a hub too; ``app.py`` gives it the stores."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .calls.directory import CallDirectory, MemoryCallDirectory
from .calls.hooks import CallHooks
from .calls.machine import Call
from .calls.relay import MediaServer
from .calls.service import Calls
from .chat.handlers import ChatService
from .clock import Clock
from .cluster.bus import Router
from .cluster.resume import ResumeStore
from .hub import Hub
from .match.service import Matchmaking, Ring
from .match.store import MatchStore
from .port import HubPort
from .presence.service import Presence
from .presence.store import PresenceStore
from .protocol import EndReason, IceServerInfo
from .session import Session
from .settings import HubSettings, MatchSettings


@dataclass(frozen=True, slots=True)
class Wings:
    hub: Hub
    calls: Calls
    presence: Presence
    chat: ChatService | None
    match: Matchmaking | None = None


@dataclass(frozen=True, slots=True)
class MatchParts:
    """What the match wing needs from outside the hub: its store, and the money side."""

    store: MatchStore
    settings: MatchSettings
    rate_of: Callable[[str], Awaitable[int]]
    balance_of: Callable[[str], Awaitable[int | None]]
    cheapest_rate: int


def assemble(
    hub_settings: HubSettings,
    presence: PresenceStore,
    directory: CallDirectory | None = None,
    *,
    clock: Clock,
    hooks: CallHooks,
    router: Router | None = None,
    resume: ResumeStore | None = None,
    media_server: MediaServer | None = None,
    record_policy: str = "off",
    ice_servers: Callable[[str], list[IceServerInfo]] = lambda user_id: [],
    chat: Callable[[HubPort], ChatService] | None = None,
    new_call_id: Callable[[], str] | None = None,
    records_every: int = 1,
    match: MatchParts | None = None,
) -> Wings:
    """The hub with its wings installed and wired to each other: presence asks calls "in a
    call?", calls asks presence to republish and chat whether either party blocked the
    other. No I/O: unit tests assemble it too."""
    hub = Hub(
        settings=hub_settings,
        directory=presence,
        clock=clock,
        router=router,
        resume=resume,
        ice_servers=ice_servers,
        logger=logging.getLogger("jalwa.hub"),
    )
    chat_wing = chat(hub) if chat is not None else None
    calls: Calls | None = None
    match_wing: Matchmaking | None = None

    def in_call(user_id: str) -> bool:
        return calls is not None and calls.in_call(user_id)

    async def refresh(user_id: str) -> None:
        await presence_wing.refresh(user_id)
        if match_wing is not None:
            await match_wing.refresh(user_id)

    presence_wing = Presence(
        hub,
        presence,
        watch_max=hub_settings.presence_watch_max,
        in_call=in_call,
        records_every=records_every,
    )
    calls = Calls(
        hub,
        settings=hub_settings,
        clock=clock,
        hooks=hooks,
        # One process alone (unit tests) never loses its calls: they need no refresh.
        directory=directory or MemoryCallDirectory(clock, ttl_s=math.inf),
        nodes_alive=presence.nodes_alive,
        media_server=media_server,
        record_policy=record_policy,
        refresh_presence=refresh,
        invite_guards=[chat_wing.no_calls_when_blocked] if chat_wing is not None else [],
        new_call_id=new_call_id,
        logger=logging.getLogger("jalwa.calls"),
    )
    # Order matters where wings share a lifecycle step: a lost party's call goes back on
    # its grace timer before their presence is cleared.
    if match is not None:
        match_wing = _matchmaking(hub, calls, match, chat_wing, clock)
        presence_wing.updated = match_wing.updated
    calls.install()
    presence_wing.install()
    if chat_wing is not None:
        chat_wing.install()
    if match_wing is not None:
        match_wing.install()
    return Wings(hub, calls, presence_wing, chat_wing, match_wing)


def _matchmaking(
    hub: Hub, calls: Calls, parts: MatchParts, chat: ChatService | None, clock: Clock
) -> Matchmaking:
    async def invite(session: Session, host: str, auto_accept: bool) -> tuple[str, Ring]:
        return await calls.invite_matched(session, host, auto_accept=auto_accept)

    async def blocked_with(user_id: str, limit: int) -> frozenset[str]:
        return frozenset() if chat is None else await chat.store.blocked_with(user_id, limit)

    wing = Matchmaking(
        hub,
        parts.store,
        parts.settings,
        clock=clock,
        invite=invite,
        in_call=calls.in_call,
        current_call=calls.current_call,
        hang_up=calls.hang_up,
        rate_of=parts.rate_of,
        balance_of=parts.balance_of,
        blocked_with=blocked_with,
        cheapest_rate=parts.cheapest_rate,
        logger=logging.getLogger("jalwa.match"),
    )

    async def ended(call: Call) -> None:
        reason = call.end_reason or EndReason.HANGUP
        await wing.matched_ended(call.call_id, reason, call.answered_at is not None)

    calls.matched_ended = ended
    return wing
