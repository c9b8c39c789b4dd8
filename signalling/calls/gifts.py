"""``gift.send`` (docs/protocol.md §5.7): a caller pays a host for a catalog gift, in a call
or not. The ledger makes it exactly-once per idempotency key; a replay notifies nobody."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from billing.errors import BillingError
from billing.ledger import Catalog, Wallets
from billing.settings import BillingSettings

from ..auth import Identity, Role, user_info
from ..errors import CallError, JalwaError
from ..port import HubPort, Outcome
from ..protocol import Ack, ErrorCode, GiftReceived, GiftSend, WalletBalance
from ..session import Session
from .billing import protocol_error


class GiftLedger(Catalog, Wallets, Protocol):
    """What gifts use of the ledger: the catalog's send_gift and both parties' balances."""


class Gifts:
    """``gift.send`` (docs/protocol.md §5.7): a caller pays a host for a catalog gift."""

    def __init__(
        self,
        port: HubPort,
        active_peer: Callable[[str, str], Identity],
        ledger: GiftLedger,
        settings: BillingSettings,
    ) -> None:
        self._port = port
        self._active_peer = active_peer  # (user, call id) -> the peer, wherever the call runs
        self._ledger = ledger
        self._settings = settings

    def install(self) -> None:
        self._port.register(GiftSend, self._send)

    async def _send(self, session: Session, msg: GiftSend) -> Outcome:
        receiver = await self._receiver(session, msg)
        sender = session.identity
        try:
            sent = await self._ledger.send_gift(
                msg.idempotency_key,  # the ledger scopes it to the sender
                sender=sender.user_id,
                receiver=receiver.user_id,
                gift_id=msg.gift_id,
                share_bps=self._settings.host_share_bps,
            )
            mine = await self._ledger.balances(sender.user_id)
            theirs = await self._ledger.balances(receiver.user_id)
        except BillingError as exc:
            raise protocol_error(exc) from exc
        reply = (
            Ack(id=msg.id, balance=mine.wallet, entry_id=sent.entry_id)
            if msg.id is not None
            else None
        )
        if sent.replayed:
            # A retry of a gift already sent: the host heard of it the first time (§5.7).
            return reply, []
        gift = GiftReceived(
            sender=user_info(sender),
            gift_id=msg.gift_id,
            coins=sent.host_credit,
            entry_id=sent.entry_id,
            call_id=msg.call_id,
        )
        balance = WalletBalance(wallet=theirs.wallet, earnings=theirs.earnings)
        await self._port.deliver_anywhere(receiver.user_id, gift, balance)
        session.send(WalletBalance(wallet=mine.wallet, earnings=mine.earnings))
        return reply, []

    async def _receiver(self, session: Session, msg: GiftSend) -> Identity:
        """The host the gift is for: the peer of the named call, or any online host."""
        if msg.call_id is not None:
            receiver = self._active_peer(session.user_id, msg.call_id)
            if receiver.user_id != msg.to:
                raise CallError(f"{msg.to} is not in call {msg.call_id}", code=ErrorCode.FORBIDDEN)
        else:
            found = await self._port.find_user(msg.to)
            if found is None:
                raise JalwaError(f"{msg.to} is offline", code=ErrorCode.CALLEE_OFFLINE)
            receiver = found
        if receiver.role is not Role.HOST or receiver.user_id == session.user_id:
            raise JalwaError("gifts go from a caller to a host", code=ErrorCode.FORBIDDEN)
        return receiver
