"""What the calls wing asks of the money side of the service (billing plugs in here).

``billing.LedgerHooks`` is the real implementation; ``FreeCalls`` charges nothing (tests,
and a hub without billing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..auth import Identity
from ..errors import JalwaError
from ..protocol import EndReason
from .machine import Call


@dataclass(frozen=True, slots=True)
class StartTerms:
    rate: int = 0
    balance: int | None = None
    # Set when fewer paid minutes remain than the warning threshold: the payer is warned
    # with call.started, not only at the next tick (§5.6).
    low_balance_minutes_left: int | None = None


@dataclass(frozen=True, slots=True)
class EndFigures:
    minutes: int = 0
    coins: int = 0


class CallRefused(JalwaError):
    """Raised by CallHooks.call_started to end a call that may not run (e.g. no money)."""

    def __init__(self, message: str, reason: EndReason) -> None:
        super().__init__(message)
        self.reason = reason


class CallHooks(Protocol):
    """Methods raise JalwaError subclasses with protocol error codes; ``call_started``
    raises CallRefused to end a call that may not run."""

    async def check_invite(self, payer: Identity, host: Identity) -> None:
        """Refuse (e.g. insufficient_balance) before anyone is rung."""

    async def call_started(self, call: Call) -> StartTerms: ...

    async def call_ended(self, call: Call) -> EndFigures: ...

    async def figures(self, call_id: str, payer: str) -> EndFigures:
        """What the call has cost so far (a call whose node died, ended elsewhere)."""


class FreeCalls:
    """Hooks for a hub without billing: nothing is charged and there are no gifts."""

    async def check_invite(self, payer: Identity, host: Identity) -> None:
        return None

    async def call_started(self, call: Call) -> StartTerms:
        return StartTerms()

    async def call_ended(self, call: Call) -> EndFigures:
        return EndFigures()

    async def figures(self, call_id: str, payer: str) -> EndFigures:
        return EndFigures()
