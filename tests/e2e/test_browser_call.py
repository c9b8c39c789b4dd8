"""A real browser in a call through the SFU (DESIGN §7, e2e tier).

The app runs on 127.0.0.1 in sfu mode with the protocol console at /console. Headless
Chromium (Debian's ``chromium``, with its fake camera and microphone) opens the console as
caller alice and calls host bob, an aiortc ``LoopbackClient`` on its own WebSocket. Both
negotiate with the SFU: the page by itself, bob as tests/integration/test_sfu_hub.py does.
Bob must decode the browser's camera and microphone, the page must render bob's test
pattern, and when the browser hangs up bob gets call.ended and its peer connection is
closed within 1 s.

Chromium is driven over the DevTools protocol (its WebSocket, with aiohttp): no
chromedriver, selenium or playwright. Every packet stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from signalling.app import create_app
from tests.conftest import MakeSettings
from tests.e2e.browser import LOOPBACK_ONLY_JS, Browser, Cdp, chromium_binary, open_page, serve
from tests.mediautil import LoopbackClient
from tests.wsutil import until

SFU_ON_LOOPBACK = {"mode": "sfu", "host_addresses": ["127.0.0.1"], "include_loopback": True}
# Bounds (a run takes about 3 s): Chromium's start and the DevTools connection, then the call.
START_BUDGET_S = 20.0
CALL_BUDGET_S = 35.0


class HubSocket:
    """A party's WebSocket with a reader task, so pings are answered while the test waits."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.frames.put_nowait(json.loads(msg.data))

    async def expect(self, kind: str, within_s: float = 10) -> dict[str, Any]:
        """The next frame of this type (other types are skipped)."""
        async with asyncio.timeout(within_s):
            while True:
                frame = await self.frames.get()
                if frame["type"] == kind:
                    return frame

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_json(frame)

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


STATE = "window.jalwaDemo.state"


async def test_browser_publishes_through_the_sfu_and_receives_the_other_side(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    binary = chromium_binary()
    settings = make_settings(media=SFU_ON_LOOPBACK)
    assert settings.env == "development" and settings.hub.demo_page
    browser = Browser(binary, tmp_path / "chromium-profile")
    bob = LoopbackClient("bob")
    try:
        async with serve(create_app(settings)) as base, aiohttp.ClientSession() as http:
            async with asyncio.timeout(START_BUDGET_S):
                cdp = Cdp(await open_page(http, await browser.devtools_port()))
            try:
                async with asyncio.timeout(CALL_BUDGET_S):
                    await call_from_the_browser(cdp, http, base, bob)
            except BaseException:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        page_log = await cdp.js("document.getElementById('log').innerText")
                    print("---- demo page log ----\n" + str(page_log))
                raise
            finally:
                await cdp.ws.close()
    except BaseException:
        print("---- chromium stderr (tail) ----\n" + browser.stderr_tail())
        raise
    finally:
        await bob.close()
        browser.kill()


async def call_from_the_browser(
    cdp: Cdp, http: aiohttp.ClientSession, base: str, bob: LoopbackClient
) -> None:
    started = time.monotonic()
    await cdp.call("Page.enable")
    await cdp.call("Page.addScriptToEvaluateOnNewDocument", source=LOOPBACK_ONLY_JS)
    await cdp.call("Page.navigate", url=f"{base}/console?user=alice&role=caller&name=Alice")
    await cdp.wait_for(
        "document.readyState === 'complete' && !!window.jalwaDemo", 15, "the demo page"
    )
    await cdp.js(
        "document.getElementById('credit').value = '500';document.getElementById('connect').click()"
    )
    welcome = await cdp.wait_for(f"{STATE}.welcome", 10, "welcome in the browser")
    assert welcome["media"] == "sfu" and welcome["user"]["id"] == "alice"

    async with http.get(f"{base}/v1/dev/token", params={"user": "bob", "role": "host"}) as r:
        assert r.status == 200, await r.text()
        token = (await r.json())["token"]
    bob_ws = HubSocket(await http.ws_connect(f"{base}/v1/ws", params={"token": token}))
    try:
        assert (await bob_ws.expect("welcome"))["media"] == "sfu"

        # alice (the browser) calls bob; bob accepts on his socket.
        await cdp.js(
            "document.getElementById('callee').value = 'bob';"
            "document.getElementById('invite').click()"
        )
        incoming = await bob_ws.expect("call.incoming")
        cid = incoming["call_id"]
        assert incoming["caller"]["id"] == "alice"
        await bob_ws.send({"type": "call.accept", "id": "a", "call_id": cid})
        assert (await bob_ws.expect("call.started"))["media"] == "sfu"

        # bob negotiates with the SFU; the page does so by itself on call.started.
        await bob_ws.send(
            {"type": "rtc.offer", "id": "o", "call_id": cid, "sdp": await bob.offer()}
        )
        answer = await bob_ws.expect("rtc.answer", 15)
        assert answer["from"] == "sfu"
        await bob.accept(answer["sdp"])

        async def browser_frames() -> int:
            return int(await cdp.js(f"{STATE}.remoteFrames") or 0)

        deadline = time.monotonic() + 30
        while True:
            seen = await browser_frames()
            if bob.frames("video") > 30 and bob.frames("audio") > 10 and seen > 10:
                break
            media_error = await cdp.js(f"{STATE}.mediaError")
            assert media_error is None, f"the page reports a media error: {media_error}"
            assert time.monotonic() < deadline, (
                f"media did not flow within 30 s: bob decoded {bob.frames('video')} video and "
                f"{bob.frames('audio')} audio frames, the browser rendered {seen} frames; "
                f"browser pc {await cdp.js(STATE + '.pcState')}, bob pc {bob.pc.connectionState}"
            )
            await asyncio.sleep(0.2)
        flowing_at = time.monotonic()
        assert await cdp.js(f"{STATE}.mediaError") is None
        assert await cdp.js(f"{STATE}.pcState") == "connected"
        assert await cdp.js(f"{STATE}.callState") == "active"
        candidates = await cdp.js("window.loopbackOnly")
        assert candidates["sent"] > 0, candidates
        sizes = sorted(bob.received["video"].sizes)

        # The browser hangs up: bob hears why, and the SFU closes bob's leg within 1 s.
        await cdp.js("document.getElementById('hangup').click()")
        ended = await bob_ws.expect("call.ended")
        ended_at = time.monotonic()
        assert ended["reason"] == "hangup"
        await until(
            lambda: bob.ended() or bob.pc.connectionState in ("closed", "failed"),
            1.0,
            "bob's peer connection to be closed by the server",
        )
        assert time.monotonic() - ended_at < 1.0
        await cdp.wait_for(f"{STATE}.callState === 'ended'", 5, "the page to show the end")
        assert await cdp.js(f"{STATE}.pcState") is None  # the page closed its peer connection
        print(
            f"\nbrowser e2e: media flowing {flowing_at - started:.1f}s after navigation; "
            f"bob decoded {bob.frames('video')} video frames {sizes} and "
            f"{bob.frames('audio')} audio frames; the browser rendered {await browser_frames()} "
            f"frames; whole call {time.monotonic() - started:.1f}s; browser candidates {candidates}"
        )
    finally:
        await bob_ws.close()
