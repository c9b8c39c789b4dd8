"""Protocol fuzzing: hostile frames of every client message type into a hub with every wing
installed (calls with real ledger hooks, presence, chat, gifts) on the embedded stores.

Per example: the fuzzer's frames never make ``handle_frame`` raise, never log an unhandled
exception, every frame owed a reply gets exactly one ``ack``/``error`` with its id (and no
reply carries an id that was not owed), a bystander still gets its ack, and the books
balance. A bounded run in CI; the long mode (docs/security.md):

    JALWA_TEST_LIMIT_S=30000 JALWA_FUZZ_EXAMPLES=110000 .venv/bin/pytest -s \
        -p no:cacheprovider tests/hostile/test_fuzz_protocol.py --hypothesis-seed=1

twice, with two seeds, one per core (examples average about 4.7 frames, so 220,000 examples
are over 1M inputs; the per-test time limit of tests/conftest.py must be raised for it).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.ledger_memory import MemoryLedger
from billing.settings import BillingSettings
from signalling.app import assemble
from signalling.auth import Identity, Role
from signalling.calls.billing import LedgerHooks
from signalling.calls.gifts import Gifts
from signalling.chat.handlers import ChatService
from signalling.chat.memory import MemoryChat
from signalling.clock import ManualClock
from signalling.presence.memory import MemoryPresence, MemoryWorld
from signalling.session import Session
from signalling.settings import ChatSettings, HubSettings
from tests.hostile.frames import Frame, frames

EXAMPLES = int(os.environ.get("JALWA_FUZZ_EXAMPLES", "300"))
LONG, PROGRESS_EVERY = 10_000, 5_000
FUZZER = Identity("fuzzer", Role.CALLER, "Fuzzer")
BYSTANDERS = (Identity("bob", Role.HOST, "Bob"), Identity("carol", Role.CALLER, "Carol"))
TALLY: Counter[str] = Counter()  # what the run did, for docs/security.md


class _Unhandled(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None:
            self.records.append(record)


async def _run(batch: list[Frame]) -> None:
    clock = ManualClock()
    billing = BillingSettings(default_rate=1)
    ledger = MemoryLedger(billing, now=clock.time)
    hub_settings = HubSettings(rate_per_s=1e6, rate_burst=1_000_000, flood_close_after=10**6)
    wings = assemble(
        hub_settings,
        MemoryPresence(MemoryWorld(clock), "n1", ttl_s=15, node_ttl_s=10),
        clock=clock,
        hooks=LedgerHooks(ledger, billing),
        chat=lambda port: ChatService(
            MemoryChat(now=clock.time), port, ChatSettings(rate_per_s=1e6, rate_burst=10**6), clock
        ),
    )
    Gifts(wings.hub, wings.calls.active_peer, ledger, billing).install()
    await ledger.credit("seed", FUZZER.user_id, 50, admin="test")
    hub = wings.hub
    others = [await hub.connect(who) for who in BYSTANDERS]
    fuzzer = await hub.connect(FUZZER)
    fuzzer.take()
    watcher = _Unhandled()
    logging.getLogger().addHandler(watcher)
    try:
        replies: Counter[str] = Counter()
        owed: Counter[str] = Counter()
        for n, frame in enumerate(batch):
            data, rid = frame.numbered(n)
            if rid is not None:
                owed[rid] += 1
            await hub.handle_frame(fuzzer, data)
            for out in _decoded(fuzzer):
                if out["type"] in ("ack", "error") and "id" in out:
                    replies[out["id"]] += 1
                if out["type"] == "error":
                    TALLY[f"error:{out['code']}"] += 1
                    TALLY["refused"] += 1
            clock.advance(0.01)
            await wings.calls.tick()
        assert replies == owed, (replies, owed)
        assert watcher.records == [], [r.getMessage() for r in watcher.records]
        assert not fuzzer.closing, fuzzer.close_reason
        for session in others:
            assert not session.closing
            session.take()
            await hub.handle_frame(session, '{"type":"presence.update","id":"b","status":"away"}')
            assert _decoded(session)[-1] == {"type": "ack", "id": "b"}
        assert await ledger.check() == []
        TALLY["inputs"] += len(batch)
        TALLY["examples"] += 1
        if EXAMPLES >= LONG and TALLY["examples"] % PROGRESS_EVERY == 0:  # hours: show it moves
            print(
                f"fuzz progress: {TALLY['examples']} examples, {TALLY['inputs']} inputs", flush=True
            )
    finally:
        logging.getLogger().removeHandler(watcher)


def _decoded(session: Session) -> list[dict[str, Any]]:
    return [msgspec.json.decode(f) for f in session.take()]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(frames(), min_size=1, max_size=12))
def test_hostile_frames_never_hurt_the_hub(batch: list[Frame]) -> None:
    asyncio.run(_run(batch))


def test_zz_report_the_fuzz_figures() -> None:
    """Printed for docs/security.md (run with -s); also proves the run fuzzed something."""
    print(f"\nfuzz: {dict(sorted(TALLY.items()))}")
    assert TALLY["inputs"] > 0 and TALLY["refused"] > 0
