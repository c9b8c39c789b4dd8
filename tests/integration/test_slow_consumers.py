"""Slow consumers against a real `jalwa serve` process, its memory read from /proc.

The probe: a client that gets large frames and never reads made one server hold 489 MiB
(512 queued frames of ~700 KiB; the queue bounded frames, not bytes), and the dropped
socket stayed open. Here several hosts in paid calls stop reading while their callers
flood them with large (legal) offers; the server must cut each of them and its resident
memory must stay within a few MiB per connection.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.processes import serve
from tests.rawws import RawClient
from tests.wsutil import recv

PAIRS = 4
SDP = "v=0\r\n" + "a=x\r\n" * 9_000  # 54 KB, under the 60,000-character SDP cap
MIB = 1 << 20


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def dev_token(http: aiohttp.ClientSession, url: str, user: str, role: str) -> str:
    credit = "&credit=1000" if role == "caller" else ""
    resp = await http.get(f"{url}/v1/dev/token?user={user}&role={role}{credit}")
    assert resp.status == 200, await resp.text()
    token: str = (await resp.json())["token"]
    return token


async def test_slow_consumers_are_cut_and_memory_stays_bounded(tmp_path: Path) -> None:
    limits = {
        "JALWA_HUB__RATE_PER_S": "5000",
        "JALWA_HUB__RATE_BURST": "5000",
        "JALWA_HUB__HEARTBEAT_S": "120",  # only the queue bounds may act here
    }
    with serve(tmp_path, **limits) as server:
        pid = server.proc.pid
        async with aiohttp.ClientSession() as http:
            callers: list[aiohttp.ClientWebSocketResponse] = []
            hosts: list[RawClient] = []
            calls: list[str] = []
            for n in range(PAIRS):
                caller = await http.ws_connect(
                    f"{server.url}/v1/ws?token="
                    + await dev_token(http, server.url, f"c{n}", "caller")
                )
                await recv(caller, "welcome")
                host_token = await dev_token(http, server.url, f"h{n}", "host")
                host = await asyncio.to_thread(RawClient, server.port, host_token)
                assert (await asyncio.to_thread(host.receive_json))["type"] == "welcome"
                await caller.send_json({"type": "call.invite", "id": "i", "to": f"h{n}"})
                cid = (await recv(caller, "ack"))["call_id"]
                incoming = await asyncio.to_thread(host.receive_json)
                assert incoming["type"] == "call.incoming", incoming
                await asyncio.to_thread(host.send_json, {"type": "call.accept", "call_id": cid})
                await recv(caller, "call.started")
                callers.append(caller)
                hosts.append(host)
                calls.append(cid)
            baseline = rss_bytes(pid)
            peak = baseline
            # Each caller sends 16 MB of offers to a host that reads nothing: without a
            # byte bound the server would queue ~512 x 54 KB per host.
            started = time.monotonic()
            for _ in range(300):
                for caller, cid in zip(callers, calls, strict=True):
                    await caller.send_str(
                        '{"type":"rtc.offer","call_id":"'
                        + cid
                        + '","sdp":"'
                        + SDP.replace("\r\n", "\\r\\n")
                        + '"}'
                    )
                peak = max(peak, rss_bytes(pid))
            cut = await asyncio.gather(*(asyncio.to_thread(h.cut_within, 10.0) for h in hosts))
            peak = max(peak, rss_bytes(pid))
            flood_s = time.monotonic() - started
            for caller in callers:  # the callers were never affected
                await caller.send_json({"type": "presence.update", "id": "ok", "status": "away"})
                frame: dict[str, Any] = await recv(caller, "ack")
                assert frame["id"] == "ok"
            for host in hosts:
                host.close()
    growth = peak - baseline
    print(f"RSS {baseline / MIB:.1f} MiB -> peak {peak / MIB:.1f} MiB over {flood_s:.1f} s")
    assert cut == [True] * PAIRS, "a slow consumer's socket was left open"
    # The bound is send_queue_max_bytes (1 MiB) + one frame + socket buffers per host.
    # Measured: +8 MiB for 4 hosts; with the byte bound lifted the same run grew +54 MiB.
    assert growth < 6 * MIB * PAIRS, f"server RSS grew {growth / MIB:.1f} MiB"
