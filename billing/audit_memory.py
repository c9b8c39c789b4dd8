"""The ledger's audit in memory (``MemoryLedger.check``): the checks of ``audit`` in Python.

Its twin is ``audit_pg``, the same checks in SQL over PgLedger's tables; each item here is
worded, and the items sorted, as the SQL words and sorts them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from billing.audit import report
from billing.ledger import Problem
from billing.memory_books import Books, JournalEntry
from billing.rules import PAYOUTS, PLATFORM, WALLET


def audit(books: Books, now: float) -> list[Problem]:
    """Every check, on ``books`` at ``now`` (the ledger's clock)."""
    found: dict[str, Iterable[str]] = {
        "balance_mismatch": _balance_mismatches(books),
        "orphan_posting": (
            f"posting of {p.amount} to account {p.account_id} in entry {p.entry_id}"
            for entry_id in sorted(books.postings)
            for p in books.postings[entry_id]
            if p.entry_id not in books.journal or p.account_id not in books.accounts_by_id
        ),
        "unbalanced_entry": (
            f"entry {entry_id} {books.journal[entry_id].key} sums to {total}"
            for entry_id in sorted(books.postings)
            if (total := sum(p.amount for p in books.postings[entry_id])) != 0
        ),
        "negative_balance": (
            f"account {a.id} ({a.owner}/{a.kind}) balance {a.balance}"
            for a in sorted(books.accounts.values(), key=lambda a: a.id)
            if a.is_user and a.balance < 0
        ),
        **_call_minute_checks(books, now),
        "withdrawal_steps": _withdrawal_steps(books),
    }
    held, paid_in, paid_out = _conservation(books)
    return report(found, held=held, paid_in=paid_in, paid_out=paid_out)


def _balance_mismatches(books: Books) -> Iterable[str]:
    totals: defaultdict[int, int] = defaultdict(int)
    for postings in books.postings.values():
        for p in postings:
            totals[p.account_id] += p.amount
    for a in sorted(books.accounts.values(), key=lambda a: a.id):
        if a.balance != totals[a.id]:
            yield (
                f"account {a.id} ({a.owner}/{a.kind}) balance {a.balance}, postings {totals[a.id]}"
            )


def _call_minutes(books: Books) -> list[tuple[JournalEntry, str, int]]:
    """(entry, call id, minute) of every cm entry, parsed from its key like the SQL."""
    found = []
    for entry in books.journal.values():
        if not entry.key.startswith("cm:"):
            continue
        call_id, sep, minute = entry.key[3:].rpartition(":")
        if sep and minute.isascii() and minute.isdigit() and len(minute) <= 9:
            found.append((entry, call_id, int(minute)))
    return found


def _call_minute_checks(books: Books, now: float) -> dict[str, Iterable[str]]:
    minutes = _call_minutes(books)
    by_minute: defaultdict[tuple[str, int], list[str]] = defaultdict(list)
    per_call: defaultdict[str, list[int]] = defaultdict(list)
    debits: defaultdict[str, int] = defaultdict(int)
    stray: list[tuple[str, str]] = []
    late: list[str] = []
    for entry, call_id, minute in sorted(minutes, key=lambda m: (m[1], m[2])):
        by_minute[(call_id, minute)].append(entry.key)
        per_call[call_id].append(minute)
        call = books.calls.get(call_id)
        if call is None:
            stray.append((entry.key, f"entry {entry.id} {entry.key} bills no known call"))
            continue
        wallet = books.accounts.get((call.payer, WALLET))
        for p in books.postings[entry.id]:
            if wallet is not None and p.account_id == wallet.id:
                debits[call_id] -= p.amount
        due = call.started_at + (minute - 1) * call.minute_s
        if minute >= 2 and due >= (call.ended_at if call.ended_at is not None else now):
            if call.ended_at is None:
                late.append(f"{entry.key} (charged before it fell due)")
            else:
                late.append(f"{entry.key} (due at or after the call ended)")
    twice = [
        f"call {call_id} minute {minute}: {', '.join(sorted(keys))}"
        for (call_id, minute), keys in sorted(by_minute.items())
        if len(keys) > 1
    ]
    wrong: list[tuple[str, str]] = list(stray)  # (sort key, item) as the SQL sorts
    for call in books.calls.values():
        billed = per_call.get(call.call_id, [])
        last = max(billed, default=0)
        coins = debits.get(call.call_id, 0)
        if (
            len(billed) != call.minutes
            or last != call.minutes
            or coins != call.coins
            or call.coins != call.minutes * call.rate
        ):
            wrong.append(
                (
                    call.call_id,
                    f"call {call.call_id} has {call.minutes} minutes / {call.coins} coins;"
                    f" journal: {len(billed)} entries, last minute {last}, {coins} coins",
                )
            )
    return {
        "minute_billed_twice": twice,
        "call_minutes": [item for _, item in sorted(wrong)],
        "minute_out_of_time": late,
    }


def _withdrawal_steps(books: Books) -> Iterable[str]:
    steps: defaultdict[int, list[str]] = defaultdict(list)
    stray: list[tuple[int, str]] = []
    for entry in books.journal.values():
        if not entry.key.startswith("wd:"):
            continue
        wid, _, step = entry.key[3:].partition(":")
        if wid.isascii() and wid.isdigit() and step in ("request", "paid", "rejected"):
            steps[int(wid)].append(step)
            if int(wid) not in books.withdrawals:
                stray.append((int(wid), f"entry {entry.key} belongs to no withdrawal"))
        else:
            stray.append((0, f"entry {entry.key} belongs to no withdrawal"))
    expected = {"pending": "request", "paid": "paid,request", "rejected": "rejected,request"}
    wrong = [
        (w.id, f"withdrawal {w.id} is {w.state}, journal steps [{got}]")
        for w in books.withdrawals.values()
        if (got := ",".join(sorted(steps.get(w.id, [])))) != expected[w.state]
    ]
    return [item for _, item in sorted(wrong + stray)]


def _conservation(books: Books) -> tuple[int, int, int]:
    held = sum(a.balance for a in books.accounts.values() if a.is_user)
    held += books.balance(PLATFORM)
    paid_in = paid_out = 0
    payouts = books.accounts.get(PAYOUTS)
    for entry_id, postings in books.postings.items():
        kind = books.journal[entry_id].kind
        for p in postings:
            account = books.accounts_by_id.get(p.account_id)
            if account is None:
                continue  # an orphan posting, reported as such
            if kind in ("recharge", "credit") and account.owner.startswith("ext:"):
                paid_in -= p.amount
            elif kind == "withdrawal_paid" and payouts is not None and account is payouts:
                paid_out += p.amount
    return held, paid_in, paid_out
