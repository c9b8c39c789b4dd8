"""Randomized concurrent billing on one PostgreSQL database (the issue's "Done when").

Several billing loops in separate processes (tests/integration/billing_worker.py) bill the
same fresh database while this process races recharges (new, replayed, conflicting),
admin credits, gifts (some with replayed keys, some sent twice at once), withdrawals
(requested, replayed, approved / rejected, some decided twice at once), new calls, call
closes, its own ``bill_due`` rounds and test-only time travel. One worker is killed with
SIGKILL in the middle of a batch (it kills itself right after its round's write statement,
before the commit; see the worker's docstring).

Afterwards every call is closed and the books must agree with what this test itself
recorded as having succeeded, not only with the ledger's own numbers:
- ``jalwa ledger check`` exits 0;
- every call's cm entries are exactly minutes 1..calls.minutes, and its charges are
  calls.coins == minutes * rate;
- every minute >= 2 was reported (as a Tick, by a surviving worker or by this process)
  exactly once, and every stop exactly once: nothing was charged twice, the killed batch
  was rolled back whole and billed again by the others;
- closing a call returns the same totals every time (nothing charged after the end);
- each user's wallet, earnings and pending, the platform revenue and the external
  accounts equal the model's figures (recharges + credits - charges - gifts; floored
  host shares computed here; withdrawals as decided here).
Finally one balance is corrupted on purpose and ``jalwa ledger check`` must exit 1 and
name the account.

Seed: JALWA_CHAOS_SEED=<n> reruns a failure's setup and each actor's choices (the
interleaving with the worker processes is up to the OS); the seed is printed and attached
to every failure. No assertion depends on timing or counts of how much got done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from billing.errors import (
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidState,
    NotFound,
)
from billing.ledger import (
    Balances,
    BillingRound,
    CallTerms,
    CallTotals,
    Gift,
    GiftSent,
    OpenedCall,
    Withdrawal,
)
from billing.ledger_pg import PgLedger
from billing.settings import BillingSettings
from tests.contract.ledger.books import fresh_database

ROOT = Path(__file__).resolve().parents[2]
JALWA = str(Path(sys.executable).parent / "jalwa")
SEED_ENV = "JALWA_CHAOS_SEED"

MINUTE_S = 1  # minutes fall due every second
MAX_AMOUNT = 1_000_000
WORKER_SECONDS = 7.0  # each worker stops by itself after this
VICTIM_DIES_AFTER = 1.0  # the victim kills itself in its first billing batch after this
SURVIVOR_BATCHES = (5, 13)  # small batches: many rounds, many races
VICTIM_BATCH = 5000  # takes everything due: its batch is big when it dies
VICTIM_MIN_KEYS = 20  # it dies in a batch of at least this many minutes (if one comes)
N_PAYERS = 40
N_HOSTS = 10
N_HOSTS_WHO_PAY = 3  # hosts who also call other hosts (wallet and earnings of one user)
N_ANCHORS = 10  # calls of rich payers never closed mid-run: the billers always have work
N_CALLS_BEFORE = 50  # opened before the workers start
N_CALLS_DURING = 12  # opened while everything runs
PROVIDERS = ("play", "appstore")
SHARES = (5000, 9000, 7333, 10000, 0)
GIFTS = (
    Gift("rose", "Rose", 1, True),
    Gift("heart", "Heart", 7, True),
    Gift("car", "Car", 50, True),
    Gift("castle", "Castle", 333, True),
)
RETIRED_GIFT = Gift("old", "Retired", 5, False)
TIMEOUT_S = 60  # per awaited process / phase: generous, only there to never hang

T = TypeVar("T")


@dataclass
class Model:
    """What the test saw succeed: the expectations the books are checked against."""

    seed: int
    terms: dict[str, CallTerms] = field(default_factory=dict)
    opened: dict[str, OpenedCall] = field(default_factory=dict)
    anchors: set[str] = field(default_factory=set)
    closed: dict[str, CallTotals] = field(default_factory=dict)
    recharges: dict[tuple[str, str], tuple[str, int, Balances]] = field(default_factory=dict)
    credits: dict[str, tuple[str, int, Balances]] = field(default_factory=dict)
    gifts: dict[tuple[str, str], tuple[str, str, int, GiftSent]] = field(default_factory=dict)
    withdrawals: dict[int, Withdrawal] = field(default_factory=dict)
    withdrawal_keys: dict[tuple[str, str], int] = field(default_factory=dict)
    ticks: list[tuple[str, str, int, int]] = field(default_factory=list)  # src, call, n, coins
    stops: list[tuple[str, str, int, int]] = field(default_factory=list)  # src, call, min, coins
    counts: Counter[str] = field(default_factory=Counter)

    def note(self, what: str) -> None:
        self.counts[what] += 1

    def record_round(self, source: str, billed: BillingRound) -> None:
        for tick in billed.ticks:
            assert tick.balance >= 0, tick
            self.ticks.append((source, tick.call_id, tick.minute, tick.charged))
        for stop in billed.stopped:
            self.stops.append((source, stop.call_id, stop.minutes, stop.coins))
        self.counts["test_ticks"] += len(billed.ticks)


def seeded(seed: int, actor: str) -> random.Random:
    return random.Random(f"{seed}/{actor}")


def payers() -> list[str]:
    return [f"p{i:02d}" for i in range(N_PAYERS)] + [f"h{i}" for i in range(N_HOSTS_WHO_PAY)]


def hosts() -> list[str]:
    return [f"h{i}" for i in range(N_HOSTS)]


async def race(*attempts: Awaitable[T]) -> list[T | BaseException]:
    """Run the same request several times at once; every outcome, in order."""
    return list(await asyncio.gather(*attempts, return_exceptions=True))


def as_first(result: T) -> T:
    """``result`` as the first use of its key returned it: a replay differs only in its
    ``replayed`` marker (GiftSent, Withdrawal)."""
    if isinstance(result, GiftSent | Withdrawal):
        return dataclasses.replace(result, replayed=False)
    return result


def replay_outcomes(outcomes: list[T | BaseException], model: Model) -> T | None:
    """Concurrent replays of one key: every success must be the same result, and if one
    attempt succeeded none may fail (a retry racing its original gets the original result;
    this test found PgLedger refusing such retries for money already spent, now fixed).
    Only when every attempt failed for want of money is it a plain refusal."""
    wins = [as_first(o) for o in outcomes if not isinstance(o, BaseException)]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if wins:
        assert not errors, f"a retry failed while its original succeeded: {outcomes}"
        assert all(w == wins[0] for w in wins), outcomes
        # Of replays racing a new key, one moved the money; the others say they replayed.
        firsts = [o for o in outcomes if not getattr(o, "replayed", False)]
        assert len(firsts) <= 1 or not hasattr(wins[0], "replayed"), outcomes
        return wins[0]
    for error in errors:
        if not isinstance(error, InsufficientFunds):
            raise error
    return None


class Chaos:
    """The actors of this process; each loops until ``stop`` is set."""

    def __init__(self, ledger: PgLedger, pool: asyncpg.Pool[asyncpg.Record], model: Model) -> None:
        self.ledger, self.pool, self.model = ledger, pool, model
        self.stop = asyncio.Event()
        self.rates: dict[str, int] = {}
        self.shares: dict[str, int] = {}
        self.next_id = 0

    def fresh(self, prefix: str) -> str:
        self.next_id += 1
        return f"{prefix}{self.next_id:05d}"

    async def pause(self, rng: random.Random, most: float) -> None:
        await asyncio.sleep(rng.uniform(0, most))

    # --- calls ----------------------------------------------------------------------------

    def new_terms(self, rng: random.Random, payer: str | None = None) -> CallTerms:
        payer = payer or rng.choice(payers())
        host = rng.choice([h for h in hosts() if h != payer])
        return CallTerms(self.fresh("call-"), payer, host, self.rates[host], self.shares[host])

    async def open_call(self, terms: CallTerms, *, twice: bool = False) -> OpenedCall | None:
        attempts = [self.ledger.open_call(terms) for _ in range(2 if twice else 1)]
        opened = replay_outcomes(await race(*attempts), self.model)
        if opened is None:
            self.model.note("open_refused")
            return None
        assert opened.rate == terms.rate and opened.balance >= 0, opened
        self.model.terms[terms.call_id] = terms
        self.model.opened[terms.call_id] = opened
        return opened

    async def opener(self, rng: random.Random) -> None:
        opened_now = 0
        while not self.stop.is_set():
            action = rng.random()
            known = sorted(self.model.opened)
            if action < 0.35 and opened_now < N_CALLS_DURING:
                opened_now += 1
                await self.open_call(self.new_terms(rng), twice=rng.random() < 0.5)
            elif action < 0.7 and known:
                call_id = rng.choice(known)  # a replay of minute 1 changes nothing
                assert (
                    await self.ledger.open_call(self.model.terms[call_id])
                    == (self.model.opened[call_id])
                )
                self.model.note("open_replayed")
            elif action < 0.9 and known:
                terms = self.model.terms[rng.choice(known)]
                other = CallTerms(terms.call_id, terms.payer, terms.host, terms.rate + 1, 5000)
                try:
                    await self.ledger.open_call(other)
                    raise AssertionError(f"reopening {terms.call_id} on other terms worked")
                except IdempotencyConflict:
                    self.model.note("open_conflict")
            else:
                try:
                    await self.ledger.open_call(CallTerms("self-call", "h1", "h1", 1, 5000))
                    raise AssertionError("a host called themselves")
                except InvalidAmount:
                    pass
            await self.pause(rng, 0.15)

    async def close(self, call_id: str) -> None:
        totals = await self.ledger.close_call(call_id, "hangup")
        first = self.model.closed.setdefault(call_id, totals)
        # Closing again (or after bill_due ended it) returns the same totals: nothing was
        # charged at or after the end.
        assert totals == first, (call_id, first, totals)

    async def closer(self, rng: random.Random) -> None:
        while not self.stop.is_set():
            candidates = sorted(set(self.model.terms) - self.model.anchors)
            closed = [c for c in candidates if c in self.model.closed]
            open_ = [c for c in candidates if c not in self.model.closed]
            action = rng.random()
            if action < 0.6 and open_ and len(closed) < 0.6 * len(candidates):
                await self.close(rng.choice(open_))
                self.model.note("closed")
            elif action < 0.9 and closed:
                await self.close(rng.choice(closed))
                self.model.note("close_replayed")
            else:
                try:
                    await self.ledger.close_call("no-such-call", "hangup")
                    raise AssertionError("closed an unknown call")
                except NotFound:
                    pass
            await self.pause(rng, 0.3)

    async def biller(self, rng: random.Random) -> None:
        """This process's own rounds, racing each other and the workers."""
        while not self.stop.is_set():
            rounds = await asyncio.gather(
                *(self.ledger.bill_due(rng.randint(1, 20)) for _ in range(rng.randint(1, 3)))
            )
            for billed in rounds:
                self.model.record_round("test", billed)
            await self.pause(rng, 0.05)

    async def time_traveller(self, rng: random.Random) -> None:
        """Test-only time travel (as the contract suite does): the database clock cannot
        move, so every active call moves back and minutes fall due in bursts."""
        while not self.stop.is_set():
            await self.pause(rng, 1.2)
            await self.pool.execute(
                "UPDATE calls SET started_at = started_at - $1 * interval '1 second',"
                " next_due = next_due - $1 * interval '1 second' WHERE state = 'active'",
                float(rng.choice((1, 2, 3))),
            )
            self.model.note("time_travel")

    # --- money in -------------------------------------------------------------------------

    async def recharge(self, rng: random.Random, user: str, amount: int) -> None:
        provider, txn = rng.choice(PROVIDERS), self.fresh("txn-")
        balances = await self.ledger.recharge(provider, txn, user, amount)
        self.model.recharges[(provider, txn)] = (user, amount, balances)

    async def recharger(self, rng: random.Random) -> None:
        while not self.stop.is_set():
            action = rng.random()
            known = sorted(self.model.recharges)
            if action < 0.3:
                await self.recharge(rng, rng.choice(payers()), rng.randint(1, 300))
            elif action < 0.45:
                # The same receipt twice at once with different amounts: exactly one
                # applies, the other conflicts, and the books follow the winner.
                provider, txn = rng.choice(PROVIDERS), self.fresh("txn-")
                user = rng.choice(payers())
                amounts = rng.sample(range(1, 300), 2)
                outcomes = await race(
                    *(self.ledger.recharge(provider, txn, user, a) for a in amounts)
                )
                kinds = sorted(type(o).__name__ for o in outcomes)
                assert kinds == ["Balances", "IdempotencyConflict"], outcomes
                won = 0 if isinstance(outcomes[0], Balances) else 1
                result = outcomes[won]
                assert isinstance(result, Balances)
                self.model.recharges[(provider, txn)] = (user, amounts[won], result)
                self.model.note("recharge_raced_conflict")
            elif action < 0.7 and known:
                provider, txn = rng.choice(known)
                user, amount, first = self.model.recharges[(provider, txn)]
                outcomes = await race(
                    *(self.ledger.recharge(provider, txn, user, amount) for _ in range(2))
                )
                assert outcomes == [first, first], (provider, txn, first, outcomes)
                self.model.note("recharge_replayed")
            elif action < 0.85 and known:
                provider, txn = rng.choice(known)
                user, amount, _ = self.model.recharges[(provider, txn)]
                try:
                    await self.ledger.recharge(provider, txn, user, amount + 1)
                    raise AssertionError(f"receipt {txn} applied twice with another amount")
                except IdempotencyConflict:
                    self.model.note("recharge_conflict")
            else:
                key = self.fresh("admin-")
                user, amount = rng.choice(payers()), rng.randint(1, 100)
                first = await self.ledger.credit(key, user, amount, admin="root")
                again = await self.ledger.credit(key, user, amount, admin="root")
                assert again == first, (key, first, again)
                self.model.credits[key] = (user, amount, first)
            await self.pause(rng, 0.05)

    # --- gifts ----------------------------------------------------------------------------

    async def gifter(self, rng: random.Random) -> None:
        active = [g for g in GIFTS if g.active]
        while not self.stop.is_set():
            action = rng.random()
            known = sorted(self.model.gifts)
            if action < 0.55:
                sender = rng.choice(payers())
                receiver = rng.choice([h for h in hosts() if h != sender])
                gift, share, key = rng.choice(active), rng.choice(SHARES), self.fresh("g")
                twice = rng.random() < 0.3
                attempts = [
                    self.ledger.send_gift(
                        key, sender=sender, receiver=receiver, gift_id=gift.gift_id, share_bps=share
                    )
                    for _ in range(2 if twice else 1)
                ]
                sent = replay_outcomes(await race(*attempts), self.model)
                if sent is None:
                    self.model.note("gift_refused")
                else:
                    assert (sent.price, sent.host_credit) == (
                        gift.price,
                        gift.price * share // 10000,
                    ), sent
                    self.model.gifts[(sender, key)] = (receiver, gift.gift_id, share, sent)
            elif action < 0.8 and known:
                sender, key = rng.choice(known)
                receiver, gift_id, share, first = self.model.gifts[(sender, key)]
                again = await self.ledger.send_gift(
                    key, sender=sender, receiver=receiver, gift_id=gift_id, share_bps=share
                )
                assert again.replayed and as_first(again) == first, (sender, key, first, again)
                self.model.note("gift_replayed")
            elif action < 0.9 and known:
                sender, key = rng.choice(known)
                receiver, gift_id, share, _ = self.model.gifts[(sender, key)]
                other = next(g.gift_id for g in active if g.gift_id != gift_id)
                try:
                    await self.ledger.send_gift(
                        key, sender=sender, receiver=receiver, gift_id=other, share_bps=share
                    )
                    raise AssertionError(f"gift key {key} reused for another gift")
                except IdempotencyConflict:
                    self.model.note("gift_conflict")
            else:
                try:
                    await self.ledger.send_gift(
                        self.fresh("g"),
                        sender="p01",
                        receiver="h1",
                        gift_id=RETIRED_GIFT.gift_id,
                        share_bps=5000,
                    )
                    raise AssertionError("a retired gift was sent")
                except NotFound:
                    pass
            await self.pause(rng, 0.05)

    # --- money out ------------------------------------------------------------------------

    async def withdrawer(self, rng: random.Random) -> None:
        """The only actor that takes earnings away, so a request sized from a fresh read
        of the earnings always has the money (billing and gifts only add)."""
        while not self.stop.is_set():
            action = rng.random()
            pending = sorted(w.id for w in self.model.withdrawals.values() if w.state == "pending")
            decided = sorted(w.id for w in self.model.withdrawals.values() if w.state != "pending")
            keys = sorted(self.model.withdrawal_keys)
            if action < 0.35:
                host = rng.choice(hosts())
                earnings = (await self.ledger.balances(host)).earnings
                if earnings > 0:
                    amount, key = rng.randint(1, earnings), self.fresh("wd-")
                    attempts = [
                        self.ledger.request_withdrawal(key, host, amount)
                        for _ in range(2 if rng.random() < 0.3 else 1)
                    ]
                    asked = replay_outcomes(await race(*attempts), self.model)
                    assert asked is not None, f"{host} could not withdraw {amount} of {earnings}"
                    assert (asked.host, asked.amount, asked.state) == (host, amount, "pending")
                    self.model.withdrawals[asked.id] = asked
                    self.model.withdrawal_keys[(host, key)] = asked.id
            elif action < 0.5 and keys:
                host, key = rng.choice(keys)
                known = self.model.withdrawals[self.model.withdrawal_keys[(host, key)]]
                again = await self.ledger.request_withdrawal(key, host, known.amount)
                # As it is now (maybe decided since), marked as a replay.
                assert again.replayed and as_first(again) == known, (known, again)
                try:
                    await self.ledger.request_withdrawal(key, host, known.amount + 1)
                    raise AssertionError(f"withdrawal key {key} reused for another amount")
                except IdempotencyConflict:
                    self.model.note("withdrawal_conflict")
            elif action < 0.85 and pending:
                wid = rng.choice(pending)
                votes = rng.choice(([True], [False], [True, True], [True, False], [False, True]))
                outcomes = await race(
                    *(self.ledger.decide_withdrawal(wid, approve=v, admin="root") for v in votes)
                )
                wins = [o for o in outcomes if isinstance(o, Withdrawal)]
                losses = [o for o in outcomes if not isinstance(o, Withdrawal)]
                assert len(wins) == 1, outcomes  # decided exactly once
                assert all(isinstance(o, InvalidState) for o in losses), outcomes
                decision = wins[0]
                expected = "paid" if votes[outcomes.index(decision)] else "rejected"
                assert decision.state == expected, (votes, outcomes)
                self.model.withdrawals[wid] = decision
                self.model.counts["withdrawal_decided_twice_at_once"] += len(losses)
            elif action < 0.95 and decided:
                wid = rng.choice(decided)
                try:
                    await self.ledger.decide_withdrawal(wid, approve=True, admin="root")
                    raise AssertionError(f"withdrawal {wid} decided twice")
                except InvalidState:
                    self.model.note("withdrawal_decided_again")
            else:
                try:
                    await self.ledger.decide_withdrawal(10**12, approve=True, admin="root")
                    raise AssertionError("decided an unknown withdrawal")
                except NotFound:
                    pass
            await self.pause(rng, 0.08)


# --- processes --------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    proc: asyncio.subprocess.Process
    stdout: Path
    stderr: Path
    ticks: Path

    def describe(self) -> str:
        return (
            f"worker {self.name} exit {self.proc.returncode}; stdout: "
            f"{self.stdout.read_text()!r}; stderr: {self.stderr.read_text()[-3000:]!r}"
        )


async def start_worker(
    tmp: Path, name: str, dsn: str, batch: int, die_after: float | None
) -> Worker:
    stdout, stderr, ticks = (tmp / f"{name}.{ext}" for ext in ("out", "err", "jsonl"))
    args = [sys.executable, "-m", "tests.integration.billing_worker", dsn]
    args += ["--minute-seconds", str(MINUTE_S), "--batch", str(batch)]
    args += ["--seconds", str(WORKER_SECONDS), "--ticks-out", str(ticks)]
    if die_after is not None:
        args += ["--die-after", str(die_after), "--die-min-keys", str(VICTIM_MIN_KEYS)]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, stdout=out, stderr=err)
    return Worker(name, proc, stdout, stderr, ticks)


async def wait_exit(worker: Worker) -> int:
    try:
        return await asyncio.wait_for(worker.proc.wait(), TIMEOUT_S)
    except TimeoutError:
        worker.proc.kill()
        await worker.proc.wait()
        raise AssertionError(f"{worker.describe()}: did not stop by itself") from None


def worker_reports(worker: Worker, model: Model) -> list[list[str]]:
    """Add the worker's committed rounds to the model; returns the keys it died holding."""
    dying: list[list[str]] = []
    if not worker.ticks.exists():
        return dying
    for line in worker.ticks.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "dying":
            dying.append(record["keys"])
            continue
        for call_id, minute, charged in record["ticks"]:
            model.ticks.append((worker.name, call_id, minute, charged))
        for call_id, minutes, coins in record["stops"]:
            model.stops.append((worker.name, call_id, minutes, coins))
    return dying


async def ledger_check(dsn: str) -> tuple[int, str]:
    env = {"PATH": os.environ.get("PATH", ""), "JALWA_DATABASE_URL": dsn}
    proc = await asyncio.create_subprocess_exec(
        JALWA,
        "ledger",
        "check",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


# --- the test ---------------------------------------------------------------------------


async def test_randomized_concurrent_billing_keeps_exact_books(tmp_path: Path) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"chaos seed {seed} (rerun with {SEED_ENV}={seed})")
    try:
        await run_chaos(seed, tmp_path)
    except BaseException as exc:
        exc.add_note(f"chaos seed {seed}: rerun with {SEED_ENV}={seed}")
        raise


async def run_chaos(seed: int, tmp: Path) -> None:
    started = time.monotonic()
    model = Model(seed)
    settings = BillingSettings(minute_seconds=MINUTE_S, max_amount=MAX_AMOUNT)
    async with fresh_database() as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=12)
        try:
            ledger = PgLedger(pool, settings)
            chaos = Chaos(ledger, pool, model)
            await set_up(chaos, seeded(seed, "setup"))
            victim_keys = await run_everything(chaos, seed, dsn, tmp)
            await settle(chaos)
            await check_books(pool, model, victim_keys)
            code, out = await ledger_check(dsn)
            assert code == 0, f"jalwa ledger check failed (seed {seed}):\n{out}"
            await prove_the_checker_can_fail(pool, dsn, model)
        finally:
            await pool.close()
    counts = ", ".join(f"{k}={v}" for k, v in sorted(model.counts.items()))
    print(
        f"chaos seed {seed}: {len(model.terms)} calls, {len(model.ticks)} minutes billed in"
        f" rounds, {len(model.stops)} stops, {time.monotonic() - started:.1f} s; {counts}"
    )


async def set_up(chaos: Chaos, rng: random.Random) -> None:
    """Users, rates, gifts and the first calls; nothing bills yet, so the model's wallets
    are exact here and every refused call must be one the payer could not afford."""
    ledger, model = chaos.ledger, chaos.model
    for host in hosts():
        chaos.rates[host] = rng.randint(1, 40)
        chaos.shares[host] = rng.choice(SHARES)
        await ledger.set_host_rate(host, chaos.rates[host])
    chaos.rates["h9"] = 0  # a free call never runs out and moves no money
    await ledger.set_host_rate("h9", 0)
    for gift in (*GIFTS, RETIRED_GIFT):
        await ledger.put_gift(gift)

    rich = payers()[:N_ANCHORS]
    wallet: dict[str, int] = {}
    for user in payers():
        size = rng.random()
        if user in rich:
            amount = rng.randint(200_000, 400_000)  # thousands of minutes at any rate
        elif size < 0.3:
            amount = rng.randint(1, 60)  # out of money within a few minutes, or at once
        else:
            amount = rng.randint(60, 3000)
        await chaos.recharge(rng, user, amount)
        wallet[user] = amount

    for i in range(N_CALLS_BEFORE):
        terms = chaos.new_terms(rng, payer=rich[i] if i < N_ANCHORS else None)
        opened = await chaos.open_call(terms)
        affordable = wallet[terms.payer] >= terms.rate
        assert (opened is not None) == affordable, (terms, wallet[terms.payer], opened)
        if opened is not None:
            wallet[terms.payer] -= terms.rate
            assert opened.balance == wallet[terms.payer], (terms, opened)
            if i < N_ANCHORS:
                model.anchors.add(terms.call_id)
    assert len(model.anchors) == N_ANCHORS


async def run_everything(chaos: Chaos, seed: int, dsn: str, tmp: Path) -> list[list[str]]:
    """Workers in processes plus every actor here; returns the keys the victim died
    holding (claimed, never committed)."""
    survivors = [
        await start_worker(tmp, f"w{i}", dsn, batch, None)
        for i, batch in enumerate(SURVIVOR_BATCHES)
    ]
    victim = await start_worker(tmp, "victim", dsn, VICTIM_BATCH, VICTIM_DIES_AFTER)
    actors: dict[str, Callable[[random.Random], Coroutine[Any, Any, None]]] = {
        "opener": chaos.opener,
        "closer": chaos.closer,
        "biller": chaos.biller,
        "time": chaos.time_traveller,
        "recharger": chaos.recharger,
        "gifter": chaos.gifter,
        "withdrawer": chaos.withdrawer,
    }
    running = [
        asyncio.create_task(actor(seeded(seed, name)), name=name) for name, actor in actors.items()
    ]

    async def until_the_workers_stop() -> None:
        try:
            await asyncio.gather(*(wait_exit(w) for w in (*survivors, victim)))
        finally:
            chaos.stop.set()

    running.append(asyncio.create_task(until_the_workers_stop(), name="workers"))
    try:
        # Everything races until every worker has stopped by itself (the victim by its own
        # SIGKILL, the others after WORKER_SECONDS). An actor that fails ends the run at
        # once with its error.
        await asyncio.wait_for(asyncio.gather(*running), 2 * TIMEOUT_S)
    finally:
        chaos.stop.set()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for worker in (*survivors, victim):
            if worker.proc.returncode is None:
                worker.proc.kill()
            await worker.proc.wait()

    for worker in survivors:
        lines = worker.stdout.read_text().strip().splitlines()
        assert worker.proc.returncode == 0 and lines, worker.describe()
        summary = json.loads(lines[-1])
        assert summary["errors"] == [], worker.describe()
        chaos.model.counts[f"{worker.name}_ticks"] = summary["ticks"]
        assert set(summary) == {"ticks", "stops", "rounds", "errors", "seconds"}
        worker_reports(worker, chaos.model)
    dying = worker_reports(victim, chaos.model)
    # The victim died by its own SIGKILL inside a batch that had minutes to charge; no
    # summary line, and its last round was never committed.
    assert victim.proc.returncode == -signal.SIGKILL, victim.describe()
    assert len(dying) == 1 and dying[0], victim.describe()
    assert victim.stdout.read_text() == "", victim.describe()
    chaos.model.counts["victim_died_holding"] = len(dying[0])
    return dying


async def settle(chaos: Chaos) -> None:
    """Close every call (some again), then prove nothing is left to bill."""
    for call_id in sorted(chaos.model.terms):
        await chaos.close(call_id)
    billed = await chaos.ledger.bill_due(10_000)
    assert billed.ticks == [] and billed.stopped == [], billed
    active = await chaos.pool.fetchval("SELECT count(*) FROM calls WHERE state = 'active'")
    assert active == 0


async def check_books(
    pool: asyncpg.Pool[asyncpg.Record], model: Model, victim_keys: list[list[str]]
) -> None:
    seed = model.seed
    calls = {row["call_id"]: row for row in await pool.fetch("SELECT * FROM calls")}
    # Exactly the calls the model saw open, on the terms it asked for.
    assert set(calls) == set(model.terms), (seed, set(calls) ^ set(model.terms))
    for call_id, terms in model.terms.items():
        row = calls[call_id]
        assert (row["payer"], row["host"], row["rate"], row["share_bps"]) == (
            terms.payer,
            terms.host,
            terms.rate,
            terms.share_bps,
        ), (seed, terms, dict(row))

    # The journal: no key twice, every call's cm entries are minutes 1..n and sum to coins.
    dupes = await pool.fetch("SELECT key FROM journal GROUP BY key HAVING count(*) > 1")
    assert dupes == [], (seed, dupes)
    charged: dict[str, dict[int, int]] = defaultdict(dict)
    rows = await pool.fetch(
        """
        SELECT j.key, -p.amount AS coins
        FROM journal j
        JOIN calls c ON j.key LIKE 'cm:' || c.call_id || ':%'
        LEFT JOIN postings p ON p.entry_id = j.id AND p.account_id = c.payer_wallet
        WHERE j.key LIKE 'cm:%'
        """
    )
    all_cm = await pool.fetchval("SELECT count(*) FROM journal WHERE key LIKE 'cm:%'")
    assert len(rows) == all_cm, (seed, "cm entries not matching exactly one call", rows)
    for row in rows:
        _, call_id, minute = row["key"].split(":")
        assert int(minute) not in charged[call_id], (seed, row["key"])
        charged[call_id][int(minute)] = row["coins"] or 0  # a free minute posts nothing
    for call_id, row in calls.items():
        entries = charged[call_id]
        assert sorted(entries) == list(range(1, row["minutes"] + 1)), (
            seed,
            call_id,
            row["minutes"],
            sorted(entries),
        )
        assert sum(entries.values()) == row["coins"] == row["minutes"] * row["rate"], (
            seed,
            call_id,
            dict(row),
            entries,
        )

    # Every minute >= 2 was reported by exactly one round that committed it: nothing was
    # charged twice, nothing charged silently; the victim's rolled-back batch included.
    reported = Counter((call_id, minute) for _, call_id, minute, _ in model.ticks)
    twice = sorted(k for k, n in reported.items() if n > 1)
    assert twice == [], (seed, "minutes reported twice", twice[:20])
    for call_id, row in calls.items():
        mine = sorted(m for (c, m) in reported if c == call_id)
        assert mine == list(range(2, row["minutes"] + 1)), (seed, call_id, row["minutes"], mine)
    for _, call_id, _, coins in model.ticks:
        assert coins == model.terms[call_id].rate, (seed, call_id, coins)
    # The victim's last batch was rolled back whole; whatever of it was billed since was
    # billed (and reported) by someone else.
    reporters = {(c, m): src for src, c, m, _ in model.ticks}
    for key in victim_keys[0]:
        _, call_id, minute = key.split(":")
        if (call_id, int(minute)) in reporters:
            assert reporters[(call_id, int(minute))] != "victim", (seed, key)
            model.note("victim_minutes_billed_by_others")

    # Stops: reported once each, exactly the calls that ran out, with their final totals.
    stops = Counter(call_id for _, call_id, _, _ in model.stops)
    assert all(n == 1 for n in stops.values()), (seed, stops.most_common(5))
    ran_out = {c for c, row in calls.items() if row["end_reason"] == "insufficient_balance"}
    assert set(stops) == ran_out, (seed, set(stops) ^ ran_out)
    for _, call_id, stopped_at, coins in model.stops:
        assert (stopped_at, coins) == (calls[call_id]["minutes"], calls[call_id]["coins"])
    for call_id, totals in model.closed.items():
        row = calls[call_id]
        assert (totals.minutes, totals.coins) == (row["minutes"], row["coins"]), (seed, totals)

    # Balances, from the model alone: what the test saw succeed.
    expected: Counter[tuple[str, str]] = Counter()
    platform = 0
    minutes_of = Counter(call_id for _, call_id, _, _ in model.ticks)
    for call_id, terms in model.terms.items():
        billed = 1 + minutes_of[call_id]  # minute 1 at open, the rest as reported
        host_share = terms.rate * terms.share_bps // 10000  # floored, per minute
        expected[(terms.payer, "wallet")] -= billed * terms.rate
        expected[(terms.host, "earnings")] += billed * host_share
        platform += billed * (terms.rate - host_share)
    for (provider, _), (user, amount, _) in model.recharges.items():
        expected[(user, "wallet")] += amount
        expected[(f"ext:{provider}", "clearing")] -= amount
    for user, amount, _ in model.credits.values():
        expected[(user, "wallet")] += amount
        expected[("ext:admin", "clearing")] -= amount
    for (sender, _), (receiver, gift_id, share, _) in model.gifts.items():
        price = next(g.price for g in GIFTS if g.gift_id == gift_id)
        expected[(sender, "wallet")] -= price
        expected[(receiver, "earnings")] += price * share // 10000
        platform += price - price * share // 10000
    for w in model.withdrawals.values():
        expected[(w.host, "earnings")] -= w.amount
        if w.state == "pending":
            expected[(w.host, "withdrawal_pending")] += w.amount
        elif w.state == "paid":
            expected[("ext:payouts", "clearing")] += w.amount
        else:
            expected[(w.host, "earnings")] += w.amount
    expected[("platform", "revenue")] += platform
    actual = {
        (row["owner"], row["kind"]): row["balance"]
        for row in await pool.fetch("SELECT owner, kind, balance FROM accounts")
    }
    want = {k: v for k, v in expected.items() if v != 0}
    got = {k: v for k, v in actual.items() if v != 0}
    wrong = {k: (want.get(k, 0), got.get(k, 0)) for k in set(want) | set(got)}
    wrong = {k: v for k, v in wrong.items() if v[0] != v[1]}
    assert wrong == {}, (seed, "account: (expected, actual)", sorted(wrong.items())[:20])

    # Withdrawals as decided here; money held == money in - money paid out.
    states = {row["id"]: row["state"] for row in await pool.fetch("SELECT * FROM withdrawals")}
    assert states == {w.id: w.state for w in model.withdrawals.values()}, seed
    paid_in = sum(a for _, a, _ in model.recharges.values()) + sum(
        a for _, a, _ in model.credits.values()
    )
    paid_out = sum(w.amount for w in model.withdrawals.values() if w.state == "paid")
    held = await pool.fetchval(
        "SELECT sum(balance) FROM accounts WHERE is_user OR owner = 'platform'"
    )
    assert held == paid_in - paid_out, (seed, held, paid_in, paid_out)


async def prove_the_checker_can_fail(
    pool: asyncpg.Pool[asyncpg.Record], dsn: str, model: Model
) -> None:
    """The clean result above means something only if the checker catches a lie."""
    victim = sorted({terms.payer for terms in model.terms.values()})[0]
    await pool.execute(
        "UPDATE accounts SET balance = balance + 1 WHERE owner = $1 AND kind = 'wallet'", victim
    )
    code, out = await ledger_check(dsn)
    assert code == 1, out
    assert "FAIL balance_mismatch" in out and f"({victim}/wallet)" in out, out
