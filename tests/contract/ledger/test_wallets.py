"""Ledger contract: wallets and idempotency (balances, entries, recharge, credit; replays
and conflicts of every keyed operation)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from billing.errors import IdempotencyConflict, InvalidAmount
from billing.ledger import Balances, Gift
from tests.contract.ledger.books import SETTINGS, Books, funded, snapshot, terms


async def test_replays_return_the_first_result_and_change_nothing(books: Books) -> None:
    ledger = books.ledger
    await ledger.put_gift(Gift("rose", "Rose", 5, True))
    recharged = await ledger.recharge("play", "t1", "payer", 100)
    credited = await ledger.credit("k1", "payer", 10, admin="root")
    opened = await ledger.open_call(terms(rate=7))
    sent = await ledger.send_gift(
        "g1", sender="payer", receiver="host", gift_id="rose", share_bps=5000
    )
    asked = await ledger.request_withdrawal("w1", "host", 3)
    seen = await snapshot(books, "payer", "host")

    # Replays, after the balances moved on: the first results come back unchanged.
    assert await ledger.recharge("play", "t1", "payer", 100) == recharged == Balances(100, 0, 0)
    assert await ledger.credit("k1", "payer", 10, admin="root") == credited
    assert await ledger.open_call(terms(rate=7)) == opened
    assert opened.balance == 103
    again = await ledger.send_gift(
        "g1", sender="payer", receiver="host", gift_id="rose", share_bps=5000
    )
    # The replay is recognisable (same entry, flagged) so nobody is notified twice.
    assert not sent.replayed and again.replayed
    assert again == dataclasses.replace(sent, replayed=True)
    assert sent.sender_balance == 98
    assert await ledger.request_withdrawal("w1", "host", 3) == dataclasses.replace(
        asked, replayed=True
    )
    assert not asked.replayed

    assert await snapshot(books, "payer", "host") == seen


async def test_concurrent_replays_apply_once(books: Books) -> None:
    ledger = books.ledger
    results = await asyncio.gather(*(ledger.recharge("play", "t1", "u", 50) for _ in range(5)))
    assert results == [Balances(50, 0, 0)] * 5
    opened = await asyncio.gather(*(ledger.open_call(terms(payer="u", rate=7)) for _ in range(4)))
    assert {o.balance for o in opened} == {43}
    assert await ledger.balances("u") == Balances(43, 0, 0)


async def test_same_key_for_a_different_request_conflicts(books: Books) -> None:
    ledger = books.ledger
    await ledger.put_gift(Gift("rose", "Rose", 5, True))
    await ledger.put_gift(Gift("lily", "Lily", 6, True))
    await ledger.recharge("play", "t1", "payer", 100)
    await ledger.credit("k1", "payer", 10, admin="root")
    await ledger.open_call(terms(rate=7))
    await ledger.send_gift("g1", sender="payer", receiver="host", gift_id="rose", share_bps=5000)
    await ledger.request_withdrawal("w1", "host", 3)
    seen = await snapshot(books, "payer", "host", "other")

    conflicting = [
        ledger.recharge("play", "t1", "payer", 101),  # replayed receipt, another amount
        ledger.recharge("play", "t1", "other", 100),
        ledger.credit("k1", "payer", 11, admin="root"),
        ledger.open_call(terms(rate=8)),
        ledger.open_call(terms(host="other")),
        ledger.send_gift("g1", sender="payer", receiver="host", gift_id="lily", share_bps=5000),
        ledger.request_withdrawal("w1", "host", 4),
    ]
    for attempt in conflicting:
        with pytest.raises(IdempotencyConflict):
            await attempt

    assert await snapshot(books, "payer", "host", "other") == seen


async def test_invalid_amounts_are_refused_and_change_nothing(books: Books) -> None:
    ledger = books.ledger
    await ledger.recharge("play", "t0", "u", 100)
    seen = await snapshot(books, "u")
    too_much = SETTINGS.max_amount + 1

    for amount in (0, -5, too_much):
        with pytest.raises(InvalidAmount):
            await ledger.recharge("play", f"t{amount}", "u", amount)
        with pytest.raises(InvalidAmount):
            await ledger.credit(f"k{amount}", "u", amount, admin="root")
        with pytest.raises(InvalidAmount):
            await ledger.request_withdrawal(f"w{amount}", "u", amount)
        with pytest.raises(InvalidAmount):
            await ledger.put_gift(Gift("bad", "Bad", amount, True))
    with pytest.raises(InvalidAmount):
        await ledger.set_host_rate("u", -1)

    assert await snapshot(books, "u") == seen
    assert await ledger.gifts(active_only=False) == []
    assert await ledger.host_rate("u") is None
    # The limit itself is allowed.
    assert (await ledger.credit("max", "u", SETTINGS.max_amount, admin="root")).wallet == (
        100 + SETTINGS.max_amount
    )


async def test_a_retry_racing_its_original_gets_the_original_result(books: Books) -> None:
    """The retry waits for the original's locks, then must see its result, not the spent
    balance (found by the chaos test: it got InsufficientFunds for what had happened)."""
    await books.ledger.put_gift(Gift("rose", "Rose", 10, True))
    await funded(books, "fan", 10 + 7)
    results = await asyncio.gather(
        *(
            books.ledger.send_gift(
                "k1", sender="fan", receiver="host", gift_id="rose", share_bps=5000
            )
            for _ in range(2)
        )
    )
    # Exactly one of them moved the money; the other is told it was a replay.
    assert sorted(r.replayed for r in results) == [False, True]
    assert len({dataclasses.replace(r, replayed=False) for r in results}) == 1
    assert results[0].sender_balance == 7
    opened = await asyncio.gather(
        *(books.ledger.open_call(terms("c1", "fan", "host", 7)) for _ in range(2))
    )
    assert opened[0] == opened[1] and opened[0].balance == 0


async def test_balances_are_zero_for_unknown_users(books: Books) -> None:
    assert await books.ledger.balances("nobody") == Balances(0, 0, 0)
    assert await books.ledger.entries("nobody", limit=10, before=None) == []
    assert await books.ledger.withdrawals(host="nobody", state=None, limit=10) == []


async def test_entries_page_newest_first(books: Books) -> None:
    ledger = books.ledger
    await ledger.recharge("play", "t1", "u", 100)
    await ledger.credit("k1", "u", 5, admin="root")
    await ledger.open_call(terms(payer="u", rate=7))
    await ledger.recharge("play", "t2", "u", 1)

    everything = await ledger.entries("u", limit=10, before=None)
    assert [(e.key, e.kind, e.wallet_delta) for e in everything] == [
        ("rc:play:t2", "recharge", 1),
        ("cm:c1:1", "call_minute", -7),
        ("credit:k1", "credit", 5),
        ("rc:play:t1", "recharge", 100),
    ]
    assert [e.id for e in everything] == sorted((e.id for e in everything), reverse=True)
    assert all(e.earnings_delta == e.pending_delta == 0 for e in everything)
    assert everything[0].created_at >= everything[-1].created_at

    first = await ledger.entries("u", limit=2, before=None)
    second = await ledger.entries("u", limit=2, before=first[-1].id)
    third = await ledger.entries("u", limit=2, before=second[-1].id)
    assert first + second == everything
    assert third == []
    [host_entry] = await ledger.entries("host", limit=10, before=None)
    assert (host_entry.key, host_entry.earnings_delta, host_entry.wallet_delta) == (
        "cm:c1:1",
        3,
        0,
    )
