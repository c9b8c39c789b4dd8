"""The rules both ledger adapters share: account names, idempotency keys, the host's share,
request hashes and input checks. Pure functions; the contract suite pins them.
"""

from __future__ import annotations

import hashlib
import json

from billing.errors import InvalidAmount
from billing.ledger import CallTerms

WALLET = "wallet"
EARNINGS = "earnings"
PENDING = "withdrawal_pending"
USER_KINDS = (WALLET, EARNINGS, PENDING)  # also the order user accounts are locked in
PLATFORM = ("platform", "revenue")
PAYOUTS = ("ext:payouts", "clearing")
ADMIN_CLEARING = ("ext:admin", "clearing")
INSUFFICIENT_BALANCE = "insufficient_balance"
PEER_LOST = "peer_lost"


def clearing_account(provider: str) -> tuple[str, str]:
    return (f"ext:{provider}", "clearing")


def call_minute_key(call_id: str, minute: int) -> str:
    return f"cm:{call_id}:{minute}"


def host_part(coins: int, share_bps: int) -> int:
    """The host's floored share; the platform gets ``coins - host_part``."""
    return coins * share_bps // 10000


def request_hash(*parts: object) -> str:
    """What a key was first used for; a replay must hash the same."""
    text = json.dumps(parts, separators=(",", ":"))  # unambiguous, unlike joining strings
    return hashlib.sha256(text.encode()).hexdigest()


def check_amount(amount: int, max_amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount(f"amount must be an integer number of coins, got {amount!r}")
    if amount <= 0 or amount > max_amount:
        raise InvalidAmount(f"amount must be between 1 and {max_amount}, got {amount}")


def check_share(share_bps: int) -> None:
    if not 0 <= share_bps <= 10000:
        raise InvalidAmount(f"share_bps must be between 0 and 10000, got {share_bps}")


def check_terms(terms: CallTerms, max_amount: int) -> None:
    if terms.payer == terms.host:
        raise InvalidAmount("a user cannot call themselves")
    if not 0 <= terms.rate <= max_amount:
        raise InvalidAmount(f"rate must be between 0 and {max_amount}, got {terms.rate}")
    check_share(terms.share_bps)
