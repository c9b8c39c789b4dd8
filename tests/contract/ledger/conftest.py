"""The fixtures of the Ledger contract suite: ``books`` runs a test once per adapter and
then asserts ``check() == []``; ``pg_books`` is the PostgreSQL books alone (see books.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.contract.ledger.books import Books, PgBooks, open_books


@pytest.fixture(params=["memory", "postgres"])
async def books(request: pytest.FixtureRequest) -> AsyncIterator[Books]:
    async with open_books(request.param) as opened:
        yield opened
        if opened.expect_clean:
            assert await opened.ledger.check() == []


@pytest.fixture
async def pg_books() -> AsyncIterator[PgBooks]:
    async with open_books("postgres") as opened:
        assert isinstance(opened, PgBooks)
        yield opened
        if opened.expect_clean:
            assert await opened.ledger.check() == []
