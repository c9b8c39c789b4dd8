"""The ledger's audit (``Audit.check``): which invariants it checks, in the order it reports
them, and how a failed one is worded.

Each adapter finds the offending rows of its own books, ``PgLedger`` in SQL (``audit_pg``)
and ``MemoryLedger`` in Python (``audit_memory``), one item of text per row, worded the
same in both; this module turns what they found into ``Problem``s, so the two report the
same problems in the same words. The contract suite holds them to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from billing.ledger import Problem

# Check name -> what its offending items are; reported in this order, then "conservation".
CHECKS: dict[str, str] = {
    "balance_mismatch": "accounts whose balance is not the sum of their postings",
    "orphan_posting": "postings without their journal entry or account",
    "unbalanced_entry": "journal entries whose postings do not sum to zero",
    "negative_balance": "user accounts below zero",
    "minute_billed_twice": "call-minutes billed more than once",
    "call_minutes": "calls whose minutes or coins disagree with their cm entries",
    "minute_out_of_time": (
        "call-minutes charged at or after their call ended, or before they fell due"
    ),
    "withdrawal_steps": "withdrawals whose state disagrees with their journal steps",
}


def problem(check: str, what: str, items: Sequence[str]) -> Problem:
    """A failed invariant naming its offending rows (the first 20 of them)."""
    shown = "; ".join(items[:20])
    more = f" (and {len(items) - 20} more)" if len(items) > 20 else ""
    return Problem(check, f"{len(items)} {what}: {shown}{more}")


def report(
    found: Mapping[str, Iterable[str]], *, held: int, paid_in: int, paid_out: int
) -> list[Problem]:
    """The problems of one audit: the offending items ``found`` for every one of CHECKS,
    then conservation. Money held by users and the platform must be what came in
    (recharges, credits) minus what went out (paid withdrawals), the right side counted
    from the journal alone."""
    problems = [
        problem(check, what, items)
        for check, what in CHECKS.items()
        if (items := list(found[check]))
    ]
    if held != paid_in - paid_out:
        problems.append(
            problem(
                "conservation",
                "totals that disagree",
                [
                    f"users and platform hold {held}; recharges and credits {paid_in}"
                    f" - paid withdrawals {paid_out} = {paid_in - paid_out}"
                ],
            )
        )
    return problems
