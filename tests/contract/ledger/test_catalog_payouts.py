"""Ledger contract: the catalog (host rates, gifts) and payouts (withdrawals)."""

from __future__ import annotations

import asyncio

import pytest

from billing.errors import InsufficientFunds, InvalidAmount, InvalidState, NotFound
from billing.ledger import Balances, Gift
from tests.contract.ledger.books import Books, earn, snapshot


async def test_host_rates(books: Books) -> None:
    assert await books.ledger.host_rate("h") is None
    await books.ledger.set_host_rate("h", 25)
    await books.ledger.set_host_rate("h", 30)
    await books.ledger.set_host_rate("free", 0)
    assert await books.ledger.host_rate("h") == 30
    assert await books.ledger.host_rate("free") == 0


async def test_gifts_catalog_and_sending(books: Books) -> None:
    ledger = books.ledger
    await ledger.put_gift(Gift("rose", "Rose", 9, True))
    await ledger.put_gift(Gift("cake", "Cake", 50, True))
    await ledger.put_gift(Gift("old", "Old", 3, False))
    await ledger.put_gift(Gift("cake", "Big cake", 40, True))  # replaced
    assert [g.gift_id for g in await ledger.gifts(active_only=True)] == ["rose", "cake"]
    assert [g.gift_id for g in await ledger.gifts(active_only=False)] == ["old", "rose", "cake"]
    assert (await ledger.gifts(active_only=True))[1] == Gift("cake", "Big cake", 40, True)
    await ledger.recharge("play", "t1", "fan", 45)

    sent = await ledger.send_gift(
        "g1", sender="fan", receiver="star", gift_id="rose", share_bps=9000
    )

    assert (sent.gift_id, sent.price, sent.host_credit, sent.sender_balance) == (
        "rose",
        9,
        8,
        36,
    )
    assert await ledger.balances("star") == Balances(0, 8, 0)
    [entry] = await ledger.entries("star", limit=5, before=None)
    assert (entry.key, entry.kind, entry.earnings_delta) == ("gift:fan:g1", "gift", 8)

    seen = await snapshot(books, "fan", "star")
    with pytest.raises(NotFound):
        await ledger.send_gift("g2", sender="fan", receiver="star", gift_id="nope", share_bps=0)
    with pytest.raises(NotFound):
        await ledger.send_gift("g3", sender="fan", receiver="star", gift_id="old", share_bps=0)
    with pytest.raises(InvalidAmount):
        await ledger.send_gift("g4", sender="fan", receiver="fan", gift_id="rose", share_bps=0)
    with pytest.raises(InvalidAmount):
        await ledger.send_gift("g5", sender="fan", receiver="star", gift_id="rose", share_bps=-1)
    with pytest.raises(InsufficientFunds):
        await ledger.send_gift("g6", sender="fan", receiver="star", gift_id="cake", share_bps=0)
    assert await snapshot(books, "fan", "star") == seen


async def test_only_earnings_can_be_withdrawn(books: Books) -> None:
    ledger = books.ledger
    await ledger.recharge("play", "t1", "host", 500)  # bought coins are not withdrawable
    await earn(books, "host", 30)
    seen = await snapshot(books, "host")

    with pytest.raises(InsufficientFunds):
        await ledger.request_withdrawal("w1", "host", 31)
    assert await snapshot(books, "host") == seen

    asked = await ledger.request_withdrawal("w1", "host", 30)
    assert (asked.host, asked.amount, asked.state, asked.decided_at) == (
        "host",
        30,
        "pending",
        None,
    )
    assert await ledger.balances("host") == Balances(500, 0, 30)
    [entry] = await ledger.entries("host", limit=1, before=None)
    assert (entry.key, entry.earnings_delta, entry.pending_delta) == (
        f"wd:{asked.id}:request",
        -30,
        30,
    )


async def test_withdrawals_are_decided_exactly_once(books: Books) -> None:
    ledger = books.ledger
    await earn(books, "host", 100)
    paid = await ledger.request_withdrawal("a", "host", 40)
    rejected = await ledger.request_withdrawal("b", "host", 25)
    assert await ledger.balances("host") == Balances(0, 35, 65)

    done = await ledger.decide_withdrawal(paid.id, approve=True, admin="root")
    assert (done.state, done.amount) == ("paid", 40)
    assert done.decided_at is not None
    assert await ledger.balances("host") == Balances(0, 35, 25)
    with pytest.raises(InvalidState):
        await ledger.decide_withdrawal(paid.id, approve=True, admin="root")
    with pytest.raises(InvalidState):
        await ledger.decide_withdrawal(paid.id, approve=False, admin="root")

    back = await ledger.decide_withdrawal(rejected.id, approve=False, admin="root")
    assert back.state == "rejected"
    assert await ledger.balances("host") == Balances(0, 60, 0)
    with pytest.raises(InvalidState):
        await ledger.decide_withdrawal(rejected.id, approve=True, admin="root")
    with pytest.raises(NotFound):
        await ledger.decide_withdrawal(rejected.id + 1000, approve=True, admin="root")

    # A replayed request returns the same withdrawal, as it is now, marked as a replay.
    again = await ledger.request_withdrawal("a", "host", 40)
    assert (again.id, again.state, again.replayed) == (paid.id, "paid", True)
    listed = await ledger.withdrawals(host="host", state=None, limit=10)
    assert [(w.id, w.state) for w in listed] == [(rejected.id, "rejected"), (paid.id, "paid")]
    assert [w.id for w in await ledger.withdrawals(host=None, state="paid", limit=10)] == [paid.id]
    assert await ledger.withdrawals(host=None, state="pending", limit=10) == []
    assert len(await ledger.withdrawals(host=None, state=None, limit=1)) == 1


async def test_concurrent_decisions_pay_once(books: Books) -> None:
    await earn(books, "host", 10)
    asked = await books.ledger.request_withdrawal("a", "host", 10)

    outcomes = await asyncio.gather(
        *(
            books.ledger.decide_withdrawal(asked.id, approve=n % 2 == 0, admin="root")
            for n in range(6)
        ),
        return_exceptions=True,
    )

    decided = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(decided) == 1
    assert all(isinstance(o, InvalidState) for o in outcomes if isinstance(o, BaseException))
