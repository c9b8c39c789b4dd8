"""Node bus lanes: in order within a lane, never behind another lane's slow handler."""

from __future__ import annotations

import asyncio

from signalling.cluster.lanes import Lanes


async def test_a_slow_lane_holds_back_only_its_own_messages() -> None:
    lanes = Lanes()
    seen: list[str] = []
    gate = asyncio.Event()

    async def slow(message: str) -> None:
        await gate.wait()
        seen.append(message)

    def quick(message: str) -> None:
        seen.append(message)

    lanes.run("u:ann", slow, "ann-1")
    lanes.run("u:ann", quick, "ann-2")  # behind ann-1, though it needs no wait
    lanes.run("u:bob", quick, "bob-1")  # another lane: at once, no task
    assert seen == ["bob-1"] and lanes.busy() == 1
    gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == ["bob-1", "ann-1", "ann-2"] and lanes.busy() == 0


async def test_a_failing_handler_does_not_stop_its_lane() -> None:
    lanes = Lanes()
    seen: list[str] = []

    async def boom(message: str) -> None:
        await asyncio.sleep(0)
        raise RuntimeError(message)

    def bad(message: str) -> None:
        raise RuntimeError(message)

    async def ok(message: str) -> None:
        seen.append(message)

    lanes.run("u:ann", boom, "1")
    lanes.run("u:ann", bad, "2")
    lanes.run("u:ann", ok, "3")
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == ["3"] and lanes.busy() == 0
    lanes.run("u:ann", bad, "4")  # idle lane, failing at once: logged, nothing kept
    assert lanes.busy() == 0
    await lanes.close()
