"""``GET /v1/admin/stats``: the platform's figures, read from the stores (the ledger, the
chat store, the match pools, the node board), so every node answers the same."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

from billing.reports import HOUR_S, Figures, Reports, day_start

from .board import NodeFigures

ROLES = ("caller", "host", "admin")


class Board(Protocol):
    async def post(self, figures: NodeFigures) -> None: ...

    async def all(self) -> list[NodeFigures]: ...


class Window(msgspec.Struct, frozen=True, kw_only=True):
    """One window's activity; coins are integer minor units."""

    calls_started: int
    call_minutes: int
    call_coins: int
    gifts: int
    gift_coins: int
    coins_spent: int
    platform_revenue: int
    messages: int


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    node: str  # the node that answered
    online: dict[str, int]  # live sessions by role, over every node
    waiting: dict[str, int]  # match pools: callers per mode, hosts per mode
    active_calls: int  # calls being charged (the ledger)
    today: Window  # since 00:00 UTC
    last_hour: Window
    nodes: list[NodeFigures]


class AdminStats:
    def __init__(
        self,
        *,
        node_id: str,
        reports: Reports,
        board: Board,
        local: Callable[[], NodeFigures],
        messages_since: Callable[[float], Awaitable[int]],
        waiting: Callable[[], Awaitable[dict[str, int]]],
        now: Callable[[], float],
    ) -> None:
        self._node_id = node_id
        self._reports = reports
        self._board = board
        self._local = local
        self._messages_since = messages_since
        self._waiting = waiting
        self._now = now

    async def post_own(self) -> None:
        """This node's figures on the board (every beat, and before answering)."""
        await self._board.post(self._local())

    async def stats(self) -> Stats:
        await self.post_own()  # the asked node's own figures are exact, not a beat old
        now = self._now()
        activity = await self._reports.activity()
        nodes = await self._board.all()
        online: Counter[str] = Counter({role: 0 for role in ROLES})
        for figures in nodes:
            online.update(figures.by_role)
        today = await self._messages_since(day_start(now))
        last_hour = await self._messages_since(now - HOUR_S)
        return Stats(
            node=self._node_id,
            online=dict(online),
            waiting=await self._waiting(),
            active_calls=activity.active_calls,
            today=_window(activity.today, today),
            last_hour=_window(activity.last_hour, last_hour),
            nodes=nodes,
        )


def _window(figures: Figures, messages: int) -> Window:
    return Window(
        calls_started=figures.calls_started,
        call_minutes=figures.call_minutes,
        call_coins=figures.call_coins,
        gifts=figures.gifts,
        gift_coins=figures.gift_coins,
        coins_spent=figures.coins_spent,
        platform_revenue=figures.platform_revenue,
        messages=messages,
    )
