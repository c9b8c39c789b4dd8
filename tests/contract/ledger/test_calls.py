"""Ledger contract: call billing (open_call, bill_due, touch_calls, close_call, calls)."""

from __future__ import annotations

import asyncio

import pytest

from billing.errors import InsufficientFunds, InvalidAmount, NotFound
from billing.ledger import UNLIMITED_MINUTES, Balances, BillingRound
from tests.contract.ledger.books import (
    MINUTE,
    SETTINGS,
    Books,
    funded,
    snapshot,
    terms,
)


@pytest.mark.parametrize(("share", "host_gets"), [(5000, 3), (9000, 6), (0, 0), (10000, 7)])
async def test_open_call_charges_minute_one_with_floored_host_share(
    books: Books, share: int, host_gets: int
) -> None:
    await funded(books, "payer", 100)

    opened = await books.ledger.open_call(terms(rate=7, share=share))

    assert (opened.call_id, opened.rate, opened.balance) == ("c1", 7, 93)
    assert await books.ledger.balances("payer") == Balances(93, 0, 0)
    assert await books.ledger.balances("host") == Balances(0, host_gets, 0)
    [minute] = await books.ledger.entries("payer", limit=1, before=None)
    assert (minute.key, minute.kind, minute.wallet_delta) == ("cm:c1:1", "call_minute", -7)
    [call] = await books.ledger.calls("payer", limit=10, before=None)
    assert (call.state, call.minutes, call.coins, call.share_bps) == ("active", 1, 7, share)
    assert call.ended_at is None and call.end_reason is None


async def test_open_call_without_a_minute_of_balance_records_nothing(books: Books) -> None:
    await funded(books, "payer", 6)
    before = await snapshot(books, "payer", "host")

    with pytest.raises(InsufficientFunds):
        await books.ledger.open_call(terms(rate=7))

    assert await snapshot(books, "payer", "host") == before
    # The key was not burnt: once funded, the same call opens.
    await funded(books, "payer", 1)
    assert (await books.ledger.open_call(terms(rate=7))).balance == 0


async def test_open_call_rejects_bad_terms(books: Books) -> None:
    await funded(books, "payer", 100)
    for bad in (
        terms(rate=-1),
        terms(rate=SETTINGS.max_amount + 1),
        terms(share=-1),
        terms(share=10001),
        terms(host="payer"),
    ):
        with pytest.raises(InvalidAmount):
            await books.ledger.open_call(bad)
    assert await books.ledger.calls("payer", limit=10, before=None) == []
    assert await books.ledger.balances("payer") == Balances(100, 0, 0)


async def test_bill_due_charges_the_next_minute_only_once_it_is_due(books: Books) -> None:
    await funded(books, "payer", 100)
    await books.ledger.open_call(terms(rate=7))
    for _ in range(3):
        assert (await books.ledger.bill_due(100)).ticks == []
    await books.advance(MINUTE - 5)  # leaves PostgreSQL's real clock 5 s of slack
    assert (await books.ledger.bill_due(100)).ticks == []
    await books.advance(6)

    billed = await books.ledger.bill_due(100)

    assert billed.stopped == []
    [tick] = billed.ticks
    assert (tick.call_id, tick.payer, tick.host, tick.minute, tick.charged) == (
        "c1",
        "payer",
        "host",
        2,
        7,
    )
    assert (tick.balance, tick.minutes_left) == (86, 86 // 7)
    for _ in range(5):
        assert (await books.ledger.bill_due(100)).ticks == []
    [call] = await books.ledger.calls("payer", limit=10, before=None)
    assert (call.minutes, call.coins) == (2, 14)
    assert await books.ledger.balances("payer") == Balances(86, 0, 0)
    assert await books.ledger.balances("host") == Balances(0, 6, 0)  # 7 * 50% floored, twice


async def test_a_call_behind_by_several_minutes_gets_one_minute_per_round(books: Books) -> None:
    await funded(books, "payer", 100)
    await books.ledger.open_call(terms(rate=5))
    await books.advance(3 * MINUTE + 1)  # minutes 2, 3 and 4 are all due

    minutes = []
    for _ in range(5):
        minutes += [tick.minute for tick in (await books.ledger.bill_due(100)).ticks]

    assert minutes == [2, 3, 4]
    [call] = await books.ledger.calls("payer", limit=1, before=None)
    assert (call.minutes, call.coins) == (4, 20)


async def test_bill_due_respects_the_limit_in_due_order(books: Books) -> None:
    for n in range(5):
        await funded(books, f"p{n}", 50)
        await books.ledger.open_call(terms(f"c{n}", f"p{n}", f"h{n}", rate=5))
        await books.advance(1)
    await books.advance(MINUTE)

    first = await books.ledger.bill_due(2)
    rest = await books.ledger.bill_due(100)

    assert [tick.call_id for tick in first.ticks] == ["c0", "c1"]
    assert [tick.call_id for tick in rest.ticks] == ["c2", "c3", "c4"]
    assert (await books.ledger.bill_due(0)).ticks == []


async def test_concurrent_rounds_bill_each_minute_exactly_once(books: Books) -> None:
    calls = 40
    for n in range(calls):
        await funded(books, f"p{n}", 100)
        await books.ledger.open_call(terms(f"c{n}", f"p{n}", f"h{n % 7}", rate=3, share=9000))

    for expected_minute in (2, 3):
        await books.advance(MINUTE + 1)
        billed: list[str] = []
        while True:
            rounds = await asyncio.gather(*(books.ledger.bill_due(7) for _ in range(6)))
            found = [tick for one in rounds for tick in one.ticks]
            if not found:
                break
            assert {tick.minute for tick in found} == {expected_minute}
            billed += [tick.call_id for tick in found]
        assert sorted(billed) == sorted(f"c{n}" for n in range(calls))

    for n in range(calls):
        assert (await books.ledger.balances(f"p{n}")).wallet == 100 - 3 * 3
    assert (await books.ledger.balances("h0")).earnings == 6 * 2 * 3  # c0, c7, ..., c35


async def test_payer_who_runs_out_is_stopped_with_totals(books: Books) -> None:
    await funded(books, "payer", 20)
    await books.ledger.open_call(terms(rate=7))
    await books.advance(MINUTE + 1)
    [tick] = (await books.ledger.bill_due(10)).ticks
    assert (tick.balance, tick.minutes_left) == (6, 0)  # a low-balance warning is due
    await books.advance(MINUTE)

    billed = await books.ledger.bill_due(10)

    assert billed.ticks == []
    [stop] = billed.stopped
    assert (stop.call_id, stop.payer, stop.host, stop.minutes, stop.coins) == (
        "c1",
        "payer",
        "host",
        2,
        14,
    )
    [call] = await books.ledger.calls("payer", limit=1, before=None)
    assert (call.state, call.end_reason, call.minutes, call.coins) == (
        "ended",
        "insufficient_balance",
        2,
        14,
    )
    assert call.ended_at is not None
    assert await books.ledger.balances("payer") == Balances(6, 0, 0)
    await books.advance(10 * MINUTE)
    assert await books.ledger.bill_due(10) == BillingRound([], [])
    totals = await books.ledger.close_call("c1", "hangup")
    assert (totals.minutes, totals.coins) == (2, 14)
    [call] = await books.ledger.calls("payer", limit=1, before=None)
    assert call.end_reason == "insufficient_balance"


async def test_a_payer_with_several_due_calls_pays_them_in_due_order(books: Books) -> None:
    await funded(books, "payer", 7 * 3)
    await books.ledger.open_call(terms("a", host="h1", rate=7))
    await books.advance(1)
    await books.ledger.open_call(terms("b", host="h2", rate=7))
    await books.advance(MINUTE + 1)

    billed = await books.ledger.bill_due(10)

    assert [(tick.call_id, tick.balance) for tick in billed.ticks] == [("a", 0)]
    assert [stop.call_id for stop in billed.stopped] == ["b"]
    assert await books.ledger.balances("payer") == Balances(0, 0, 0)


async def test_a_free_call_is_billed_zero_and_never_runs_out(books: Books) -> None:
    await books.ledger.open_call(terms(rate=0))
    await books.advance(MINUTE + 1)

    [tick] = (await books.ledger.bill_due(10)).ticks

    assert (tick.minute, tick.charged, tick.balance) == (2, 0, 0)
    assert tick.minutes_left == UNLIMITED_MINUTES
    totals = await books.ledger.close_call("c1", "hangup")
    assert (totals.minutes, totals.coins) == (2, 0)


async def test_close_call_returns_totals_is_idempotent_and_stops_billing(books: Books) -> None:
    await funded(books, "payer", 100)
    await books.ledger.open_call(terms(rate=7))
    await books.advance(MINUTE + 1)
    await books.ledger.bill_due(10)

    first = await books.ledger.close_call("c1", "hangup")
    again = await books.ledger.close_call("c1", "admin")

    assert first == again
    assert (first.call_id, first.minutes, first.coins) == ("c1", 2, 14)
    await books.advance(10 * MINUTE)
    assert (await books.ledger.bill_due(10)).ticks == []
    [call] = await books.ledger.calls("host", limit=1, before=None)
    assert (call.state, call.end_reason, call.minutes) == ("ended", "hangup", 2)
    assert call.ended_at is not None and call.ended_at >= call.started_at
    with pytest.raises(NotFound):
        await books.ledger.close_call("nope", "hangup")


async def test_a_minute_due_at_the_instant_of_closing_is_not_charged(books: Books) -> None:
    await funded(books, "payer", 100)
    await books.ledger.open_call(terms(rate=7))
    await books.advance(MINUTE)  # minute 2 falls due now; closing now must not charge it

    await books.ledger.close_call("c1", "hangup")

    assert (await books.ledger.bill_due(10)).ticks == []
    assert await books.ledger.balances("payer") == Balances(93, 0, 0)


async def test_calls_history_newest_first_with_minutes_and_coins(books: Books) -> None:
    await funded(books, "payer", 1000)
    await books.ledger.open_call(terms("old", host="h1", rate=10))
    await books.advance(MINUTE + 1)
    await books.ledger.bill_due(10)
    await books.ledger.close_call("old", "hangup")
    await books.advance(5)
    await books.ledger.open_call(terms("new", host="h2", rate=4))

    history = await books.ledger.calls("payer", limit=10, before=None)

    assert [(c.call_id, c.minutes, c.coins, c.state) for c in history] == [
        ("new", 1, 4, "active"),
        ("old", 2, 20, "ended"),
    ]
    assert history[0].started_at > history[1].started_at
    older = await books.ledger.calls("payer", limit=10, before=history[0].started_at)
    assert [c.call_id for c in older] == ["old"]
    assert [c.call_id for c in await books.ledger.calls("h1", limit=10, before=None)] == ["old"]
    assert [c.call_id for c in await books.ledger.calls("payer", limit=1, before=None)] == ["new"]
    assert await books.ledger.calls("stranger", limit=10, before=None) == []


async def test_a_call_its_node_stopped_touching_ends_unbilled(books: Books) -> None:
    await funded(books, "p1", 10_000)
    await funded(books, "p2", 10_000)
    await books.ledger.open_call(terms("kept", "p1", "h1", rate=5))
    await books.ledger.open_call(terms("lost", "p2", "h2", rate=5))
    ticks: dict[str, int] = {"kept": 0, "lost": 0}
    stops = []
    [opened_lost] = await books.ledger.calls("p2", limit=1, before=None)
    for _ in range(40):  # 40 minutes; "kept" is touched every minute, "lost" never
        await books.advance(MINUTE, alive=False)
        await books.ledger.touch_calls(["kept", "no-such-call"])
        billed = await books.ledger.bill_due(100)
        for tick in billed.ticks:
            ticks[tick.call_id] += 1
        stops += billed.stopped
    assert [(s.call_id, s.reason) for s in stops] == [("lost", "peer_lost")]
    assert ticks["kept"] in (39, 40)  # minute n is due strictly after its start
    # Nothing after its node's last sign of life (its opening): only the prepaid minute.
    assert ticks["lost"] == 0
    [lost] = await books.ledger.calls("p2", limit=1, before=None)
    assert (lost.state, lost.end_reason, lost.minutes) == ("ended", "peer_lost", 1)
    # It ended at that last sign of life, not when the orphan was found.
    assert lost.ended_at is not None
    assert lost.ended_at - opened_lost.started_at < MINUTE


async def test_a_minute_waits_for_its_node_to_show_life(books: Books) -> None:
    """A due minute is charged only after a touch that follows its start: a node that went
    quiet (crashed, or cut off) costs nobody a minute it did not run."""
    await funded(books, "p1", 100)
    await books.ledger.open_call(terms("c1", "p1", "h1", rate=5))
    await books.advance(MINUTE + 1, alive=False)
    assert (await books.ledger.bill_due(10)).ticks == []  # due, but not shown alive since
    assert (await books.ledger.balances("p1")).wallet == 95
    await books.ledger.touch_calls(["c1"])
    [tick] = (await books.ledger.bill_due(10)).ticks  # the node is back: charged late
    assert (tick.call_id, tick.minute, tick.balance) == ("c1", 2, 90)


async def test_touch_reports_calls_the_ledger_already_ended(books: Books) -> None:
    await funded(books, "p1", 7)
    await books.ledger.open_call(terms("c1", "p1", "h1", rate=7))
    assert await books.ledger.touch_calls(["c1", "unknown"]) == {}
    await books.advance(MINUTE + 1)
    [stop] = (await books.ledger.bill_due(10)).stopped  # out of money
    assert stop.call_id == "c1"
    assert await books.ledger.touch_calls(["c1"]) == {"c1": "insufficient_balance"}
