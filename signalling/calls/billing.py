"""How calls meet billing: the calls wing's CallHooks on a Ledger, and the billing loop's
events delivered to users wherever they are. Billing errors become protocol error codes here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from billing.errors import (
    BillingError,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    NotFound,
)
from billing.ledger import CallBilling, CallTerms, Catalog, Stop, Tick, Wallets, minutes_left
from billing.settings import BillingSettings

from ..auth import Identity
from ..errors import JalwaError
from ..port import HubPort
from ..protocol import (
    BillingLowBalance,
    BillingTick,
    EndReason,
    ErrorCode,
    ServerMessage,
    WalletBalance,
)
from .hooks import CallRefused, EndFigures, StartTerms
from .machine import Call
from .service import Calls

log = logging.getLogger(__name__)
# Retries of a failed close: every second for two minutes (the billing loop also flushes
# them before each round), then less often.
CLOSE_RETRY_S = (0.5, *([1.0] * 120), 5, 10, 30, 60, 300)


def protocol_error(exc: BillingError) -> JalwaError:
    code = {
        InsufficientFunds: ErrorCode.INSUFFICIENT_BALANCE,
        InvalidAmount: ErrorCode.INVALID_AMOUNT,
        IdempotencyConflict: ErrorCode.IDEMPOTENCY_CONFLICT,
        NotFound: ErrorCode.UNKNOWN_GIFT,
    }.get(type(exc), ErrorCode.UNAVAILABLE)
    return JalwaError(exc.message, code=code)


async def rate_of(catalog: Catalog, settings: BillingSettings, host: str) -> int:
    """What a minute with ``host`` costs: the rate an admin set, else the default."""
    rate = await catalog.host_rate(host)
    return settings.default_rate if rate is None else rate


class HookLedger(CallBilling, Catalog, Wallets, Protocol):
    """What the call hooks use of the ledger: open and close calls, rates, balances."""


class LedgerHooks:
    """CallHooks backed by the ledger: a call opens (minute 1 paid) when it starts."""

    def __init__(self, ledger: HookLedger, settings: BillingSettings) -> None:
        self._ledger = ledger
        self._settings = settings
        # call id -> the open_call in flight; call_ended waits for it, so a call that ends
        # while it is being opened is still closed in the ledger (never billed on).
        self._opening: dict[str, asyncio.Future[None]] = {}
        self._retries: set[asyncio.Task[None]] = set()
        self._unclosed: dict[str, str] = {}  # call id -> end reason, not yet in the ledger

    async def rate_of(self, host: str) -> int:
        return await rate_of(self._ledger, self._settings, host)

    async def check_invite(self, payer: Identity, host: Identity) -> None:
        rate = await self.rate_of(host.user_id)
        wallet = (await self._ledger.balances(payer.user_id)).wallet
        if wallet < rate:
            raise JalwaError(
                f"a minute costs {rate} coins and the wallet has {wallet}",
                code=ErrorCode.INSUFFICIENT_BALANCE,
            )

    async def call_started(self, call: Call) -> StartTerms:
        done = asyncio.get_running_loop().create_future()
        self._opening[call.call_id] = done
        try:
            terms = CallTerms(
                call_id=call.call_id,
                payer=call.payer.user_id,
                host=call.host.user_id,
                rate=await self.rate_of(call.host.user_id),
                share_bps=self._settings.host_share_bps,
            )
            opened = await self._ledger.open_call(terms)
        except InsufficientFunds as exc:
            raise CallRefused(exc.message, EndReason.INSUFFICIENT_BALANCE) from exc
        finally:
            done.set_result(None)
            del self._opening[call.call_id]
        left = minutes_left(opened.balance, opened.rate)
        low = left if left < self._settings.low_balance_minutes else None
        return StartTerms(rate=opened.rate, balance=opened.balance, low_balance_minutes_left=low)

    async def call_ended(self, call: Call) -> EndFigures:
        opening = self._opening.get(call.call_id)
        if opening is not None:
            await asyncio.shield(opening)
        if call.answered_at is None:
            return EndFigures()  # never started: nothing was opened or charged
        reason = call.end_reason or EndReason.HANGUP
        try:
            totals = await self._ledger.close_call(call.call_id, reason)
        except NotFound:
            return EndFigures()  # refused at start: nothing was recorded
        except Exception:
            # Billing must stop even if the database blinked: keep trying in the background.
            log.exception("closing call %s failed; retrying", call.call_id)
            self._unclosed[call.call_id] = reason
            task = asyncio.create_task(self._close_later(call.call_id))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return EndFigures()
        return EndFigures(minutes=totals.minutes, coins=totals.coins)

    async def figures(self, call_id: str, payer: str) -> EndFigures:
        # The payer is in one call at a time, so theirs is among their latest few.
        for record in await self._ledger.calls(payer, limit=5, before=None):
            if record.call_id == call_id:
                return EndFigures(minutes=record.minutes, coins=record.coins)
        return EndFigures()

    async def _close_later(self, call_id: str) -> None:
        for delay in CLOSE_RETRY_S:
            await asyncio.sleep(delay)
            if call_id not in self._unclosed:
                return  # flush_closes got there first
            try:
                await self._close(call_id)
                return
            except Exception:
                log.warning("closing call %s failed again", call_id)
        log.error("call %s could not be closed in the ledger; `jalwa ledger check`", call_id)

    async def _close(self, call_id: str) -> None:
        reason = self._unclosed.get(call_id)
        if reason is None:
            return  # closed meanwhile (the retry and the flush may race; closing is idempotent)
        with contextlib.suppress(NotFound):
            await self._ledger.close_call(call_id, reason)
        self._unclosed.pop(call_id, None)

    async def flush_closes(self) -> None:
        """Close in the ledger every call that ended while it was unreachable; raises while
        it still is. The billing loop runs this before each round, so none of these calls
        is charged a minute that starts after it ended here."""
        for call_id in list(self._unclosed):
            await self._close(call_id)

    async def aclose(self) -> None:
        # Calls closed at shutdown must reach the ledger: give the retries a few seconds.
        if self._retries:
            await asyncio.wait(list(self._retries), timeout=5)
        for task in list(self._retries):
            task.cancel()


class HubBillingEvents:
    """The billing loop's events, delivered to the payer wherever they are connected."""

    def __init__(self, port: HubPort, calls: Calls) -> None:
        self._port = port
        self._calls = calls

    async def minute_charged(self, tick: Tick, *, low_balance: bool) -> None:
        tick_msg = BillingTick(
            call_id=tick.call_id, minute=tick.minute, charged=tick.charged, balance=tick.balance
        )
        messages: list[ServerMessage] = [tick_msg, WalletBalance(wallet=tick.balance)]
        if low_balance:
            messages.append(BillingLowBalance(call_id=tick.call_id, minutes_left=tick.minutes_left))
        await self._port.deliver_anywhere(tick.payer, *messages)

    async def ledger_unreachable(self) -> None:
        """No free minutes without bound: this node's running calls end, and are closed in
        the ledger (by the hooks' retries) as soon as it answers again."""
        for call in self._calls.book.active_calls():
            if call.answered_at is not None:
                await self._calls.end_call(call.call_id, EndReason.BILLING_UNAVAILABLE)

    async def out_of_money(self, stop: Stop) -> None:
        # Any node's loop may bill the call; the call itself runs on its owner node. One
        # that runs nowhere any more (its node died) is settled: its parties are told here.
        reason = EndReason(stop.reason)
        if not await self._calls.end_call_anywhere(stop.call_id, reason):
            figures = EndFigures(minutes=stop.minutes, coins=stop.coins)
            await self._calls.tell_ended(stop.call_id, reason, figures, (stop.payer, stop.host))

    async def keep_calls_alive(self, ledger: CallBilling) -> None:
        """Tell the ledger this node still runs its calls (see BillingSettings.orphan_after_s)."""
        book = self._calls.book
        active = [c.call_id for c in book.active_calls() if c.answered_at is not None]
        # Calls the ledger ended (out of money, found orphaned) that this node missed hearing
        # about (pub/sub is at-most-once; the payer may have been between connections).
        for call_id, reason in (await ledger.touch_calls(active)).items():
            try:
                end_reason = EndReason(reason)
            except ValueError:
                end_reason = EndReason.INSUFFICIENT_BALANCE
            await self._calls.end_call(call_id, end_reason)
