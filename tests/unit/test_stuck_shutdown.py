"""A shutdown that does not end logs what every pending task waits on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from signalling.drain import log_task_stacks


async def waits_for_a_reply_that_never_comes(never: asyncio.Event) -> None:
    await never.wait()


async def test_the_log_names_each_pending_task_and_where_it_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = asyncio.Event()
    task = asyncio.create_task(waits_for_a_reply_that_never_comes(never))
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="jalwa"):
        assert log_task_stacks("shutdown not over") >= 1
    (record,) = [r for r in caplog.records if "shutdown not over" in r.getMessage()]
    text = record.getMessage()
    assert "waits_for_a_reply_that_never_comes" in text and "never.wait()" in text
    assert "test_the_log_names_each_pending_task" not in text  # not the caller itself
    task.cancel()
