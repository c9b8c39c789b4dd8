"""The demo app at ``/`` in two headless Chromiums, one the caller and one the host, through
the page only: signing in, matching, the SFU call's video both ways, billing ticks, a gift,
chat with read ticks, the end when the coins run out; then double clicks, hanging up while
it rings and a reload in the middle of a call. The ledger is PostgreSQL and ``jalwa ledger
check`` must be clean after each scenario (issue 13).

Screenshots of both pages at each step go to test-output/web-app/ (git-ignored). The host's
browser is at phone size, the caller's at laptop size.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from signalling.app import create_app
from signalling.keys import CALLS, LEDGER
from tests.conftest import MakeSettings
from tests.contract.ledger.books import fresh_database
from tests.e2e.browser import LOOPBACK_ONLY_JS, Browser, Cdp, chromium_binary, open_page, serve

OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "web-app"
JALWA = str(Path(sys.executable).parent / "jalwa")
DECODED = "document.getElementById('remoteVideo').getVideoPlaybackQuality().totalVideoFrames"
SFU_ON_LOOPBACK = {"mode": "sfu", "host_addresses": ["127.0.0.1"], "include_loopback": True}
MINUTE_S = 10  # a short billed minute: the money runs out within the test
RATE = 10  # billing.default_rate
STATE = "window.jalwaApp.state"
LAPTOP = {"width": 1100, "height": 760, "deviceScaleFactor": 1, "mobile": False}
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}


@dataclass
class Page:
    """One person's browser on the app."""

    name: str
    cdp: Cdp
    browser: Browser

    async def js(self, expression: str) -> Any:
        return await self.cdp.js(expression)

    async def wait_for(self, expression: str, within_s: float, what: str) -> Any:
        return await self.cdp.wait_for(expression, within_s, f"{self.name}: {what}")

    async def click(self, selector: str, *, count: int = 1) -> None:
        await self.cdp.click(selector, count=count)

    async def shot(self, step: str) -> None:
        await self.cdp.screenshot(OUTPUT / f"{step}-{self.name}.png")

    async def frames(self) -> int:
        """Video frames the remote <video> element decoded (the browser's own count)."""
        return int(await self.js(DECODED))

    async def sign_in(self, base: str, user: str, *, pool: bool = False) -> None:
        """Pick a development user on the sign-in screen; ``pool``: a host waits until the
        page has put them in the random match pool."""
        await self.cdp.call("Page.navigate", url=f"{base}/")
        await self.wait_for("!!document.querySelector('#presets button')", 15, "the sign-in")
        await self.click(f"#presets button[data-user={user}]")
        await self.wait_for(
            f"{STATE}.link === 'online' && {STATE}.me && {STATE}.wallet !== null", 15, "online"
        )
        if pool:
            await self.wait_for(
                "/queue/.test(document.getElementById('hostState').textContent)", 10, "pooled"
            )

    async def problems(self) -> list[str]:
        """The error notices the page showed a person (double clicks must show none)."""
        shown = await self.js(f"{STATE}.notices.filter((n) => n.kind === 'bad').map((n) => n.text)")
        return list(shown)

    async def type_chat(self, text: str, *, send: bool = True) -> None:
        """Type into the chat box as a keyboard does (input events), then press Send."""
        await self.js("document.getElementById('chatText').focus()")
        await self.cdp.call("Input.insertText", text=text)
        if send:
            await self.click("#chatForm button")


@contextlib.asynccontextmanager
async def opened(
    tmp_path: Path, name: str, http: aiohttp.ClientSession, size: dict[str, Any]
) -> AsyncIterator[Page]:
    browser = Browser(chromium_binary(), tmp_path / f"chromium-{name}")
    try:
        port = await asyncio.wait_for(browser.devtools_port(), 20)
        cdp = Cdp(await open_page(http, port))
        await cdp.call("Page.enable")
        await cdp.call("Page.addScriptToEvaluateOnNewDocument", source=LOOPBACK_ONLY_JS)
        await cdp.call("Emulation.setDeviceMetricsOverride", **size)
        page = Page(name, cdp, browser)
        try:
            yield page
        except BaseException:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    print(
                        f"---- {name}: state ----\n"
                        + str(await page.js(f"JSON.stringify({STATE})"))
                    )
                    print(
                        f"---- {name}: toasts ----\n"
                        + str(await page.js("document.getElementById('toasts').innerText"))
                    )
            print(f"---- {name}: chromium stderr (tail) ----\n" + browser.stderr_tail())
            raise
        finally:
            await cdp.ws.close()
    finally:
        browser.kill()


@contextlib.asynccontextmanager
async def people(tmp_path: Path, http: aiohttp.ClientSession) -> AsyncIterator[tuple[Page, Page]]:
    """A host on a phone and a caller on a laptop."""
    async with (
        opened(tmp_path, "host", http, PHONE) as host,
        opened(tmp_path, "caller", http, LAPTOP) as caller,
    ):
        yield host, caller


@contextlib.asynccontextmanager
async def the_app(
    make_settings: MakeSettings, media: dict[str, Any] = SFU_ON_LOOPBACK
) -> AsyncIterator[tuple[str, web.Application, str]]:
    async with fresh_database() as dsn:
        settings = make_settings(
            media=media,
            database_url=dsn,
            billing={"minute_seconds": MINUTE_S, "default_rate": RATE},
            hub={"demo_gifts": True},
        )
        app = create_app(settings)
        async with serve(app) as base:
            yield base, app, dsn


async def ledger_check(dsn: str) -> None:
    """`jalwa ledger check` on the database, as an operator runs it: it must be clean."""
    check = await asyncio.to_thread(
        subprocess.run,
        [JALWA, "ledger", "check"],
        env={"PATH": "/usr/bin:/bin", "JALWA_DATABASE_URL": dsn},
        capture_output=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


async def call_is_up(caller: Page, host: Page) -> None:
    """Both sides show the call and decode the other's video."""
    for page in (caller, host):
        await page.wait_for(f"{STATE}.call && {STATE}.call.state === 'active'", 10, "in the call")
    for page in (caller, host):
        await page.wait_for(
            f"{DECODED} > 0 && {STATE}.remoteFrames > 0",
            30,
            "the other side's video playing",
        )


async def test_a_paid_random_call_between_two_browsers(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    async with the_app(make_settings) as (base, app, dsn), aiohttp.ClientSession() as http:
        async with people(tmp_path, http) as (host, caller):
            await host.sign_in(base, "meera", pool=True)
            await caller.sign_in(base, "ravi")  # a caller with 30 coins: three minutes at 10
            assert await caller.js(f"{STATE}.wallet") == 30
            await caller.shot("1-lobby")
            await host.shot("1-lobby")

            clicked = time.monotonic()
            await caller.click("#matchRandom")
            await host.wait_for("!document.getElementById('ringing').hidden", 10, "ringing")
            rung = time.monotonic()
            assert "is calling" in await host.js("document.getElementById('ringText').textContent")
            await host.shot("2-ringing")
            accepted = time.monotonic()
            await host.click("#acceptCall")
            await call_is_up(caller, host)
            playing = time.monotonic()
            print(
                f"\nweb app: Random to the host's ring {rung - clicked:.2f} s; Accept to video"
                f" playing on both sides {playing - accepted:.2f} s (the SFU, two Chromiums)"
            )
            assert await caller.js(f"{STATE}.call.matched") is True
            assert await caller.js(f"{STATE}.wallet") == 20  # the first minute, paid at the start
            await caller.shot("3-video")
            await host.shot("3-video")

            # A gift from the catalog: the host sees it arrive.
            await caller.click("#giftButton")
            await caller.wait_for("!document.getElementById('gifts').hidden", 5, "the gift sheet")
            await caller.click("#giftList button[data-gift=rose]")
            await host.wait_for(f"{STATE}.gifts.length === 1", 10, "the gift")
            assert await host.js(f"{STATE}.gifts[0].gift_id") == "rose"
            await host.wait_for(
                "/sent you a Rose/.test(document.getElementById('toasts').innerText)",
                5,
                "the gift toast",
            )
            await host.shot("4-gift")

            # Chat: the host reads it (the chat is on screen), the caller sees it read.
            await caller.type_chat("hello from ravi", send=False)
            await host.wait_for("!document.getElementById('typing').hidden", 5, "typing…")
            await caller.click("#chatForm button")
            mine = "#messages li.mine"
            await host.wait_for(
                "/hello from ravi/.test(document.getElementById('messages').innerText)",
                10,
                "the message",
            )
            await caller.wait_for(
                f"document.querySelector('{mine}')?.dataset.status === 'read'", 10, "the read tick"
            )
            await caller.shot("5-chat")
            await host.shot("5-chat")

            # The next minute is charged: the page shows the new balance and the warning.
            await caller.wait_for(
                f"{STATE}.call && {STATE}.call.minute === 2", MINUTE_S + 10, "a billing tick"
            )
            assert await caller.js(f"{STATE}.wallet") == 5  # 30 - 10 - 5 (gift) - 10
            assert await caller.js("document.getElementById('coins').textContent") == "5 coins"
            assert await caller.js("!document.getElementById('lowBalance').hidden")
            await caller.shot("6-tick")

            # No coins for a third minute: the call ends by itself on both sides.
            for page in (caller, host):
                await page.wait_for(
                    "document.getElementById('summary').dataset.reason === 'insufficient_balance'"
                    " && !document.getElementById('summary').hidden",
                    MINUTE_S + 10,
                    "the end for insufficient balance",
                )
            assert (
                await caller.js("document.getElementById('summaryFigures').textContent")
                == "2 min · 20 coins paid"
            )
            assert await caller.js(f"{STATE}.media") is None  # the page closed its connection
            await caller.shot("7-ended")
            await host.shot("7-ended")

        assert app[CALLS].book.active_calls() == []
        ledger = app[LEDGER]
        assert (await ledger.balances("ravi")).wallet == 5
        await ledger_check(dsn)


async def test_double_clicks_hanging_up_while_ringing_and_a_reload(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    async with the_app(make_settings) as (base, app, dsn), aiohttp.ClientSession() as http:
        async with people(tmp_path, http) as (host, caller):
            await host.sign_in(base, "kabir", pool=True)
            await caller.sign_in(base, "asha")  # 500 coins
            ledger = app[LEDGER]

            # Double clicks: one match, one accept, one gift.
            await caller.click("#matchRandom", count=2)
            await host.wait_for("!document.getElementById('ringing').hidden", 10, "ringing")
            await host.click("#acceptCall", count=2)
            await call_is_up(caller, host)
            await caller.click("#giftButton")
            await caller.wait_for("!document.getElementById('gifts').hidden", 5, "the gift sheet")
            await caller.click("#giftList button[data-gift=rose]", count=2)
            await host.wait_for(f"{STATE}.gifts.length >= 1", 10, "the gift")
            await caller.type_chat("before the reload")
            await host.wait_for(
                "/before the reload/.test(document.getElementById('messages').innerText)",
                10,
                "the message",
            )
            await asyncio.sleep(1)  # a second gift or accept would have arrived by now
            assert await host.js(f"{STATE}.gifts.length") == 1
            assert (await ledger.balances("asha")).wallet == 500 - RATE - 5
            assert len(app[CALLS].book.active_calls()) == 1

            # A reload in the middle of the call: the page comes back to the same call, the
            # video flows again both ways, the chat history is there.
            call_id = await caller.js(f"{STATE}.call.id")
            host_frames = await host.frames()
            await caller.cdp.call("Page.reload")
            await caller.wait_for(
                f"window.jalwaApp && {STATE}.call && {STATE}.call.id === {call_id!r}",
                15,
                "back in the call",
            )
            await call_is_up(caller, host)
            await host.wait_for(
                f"{DECODED} > {host_frames + 30}",
                20,
                "video again after the reload",
            )
            await caller.wait_for(
                "/before the reload/.test(document.getElementById('messages').innerText)",
                10,
                "the chat history",
            )
            assert await caller.js(f"{STATE}.call.rate") == RATE  # kept over the reload
            await caller.shot("8-reloaded")
            assert len(app[CALLS].book.active_calls()) == 1

            # Hang up with a double click: one end, seen by both.
            await caller.click("#hangUp", count=2)
            for page in (caller, host):
                await page.wait_for(
                    "document.getElementById('summary').dataset.reason === 'hangup'", 10, "the end"
                )
            await caller.click("#closeSummary")
            await host.click("#closeSummary")

            # Hanging up while it rings: a direct call from the hosts list, cancelled.
            await caller.wait_for(
                "!!document.querySelector('#hosts li[data-user=kabir] button')",
                15,
                "kabir in the list",
            )
            await caller.click("#hosts li[data-user=kabir] button")
            await host.wait_for("!document.getElementById('ringing').hidden", 10, "ringing again")
            await caller.wait_for(
                "!document.getElementById('cancelCall').hidden", 5, "the cancel button"
            )
            await caller.shot("9-ringing")
            await caller.click("#cancelCall", count=2)
            for page in (caller, host):
                await page.wait_for(
                    f"!{STATE}.call && document.getElementById('ringing').hidden",
                    10,
                    "the ringing gone",
                )
            # The host heard of the ring that did not happen; nobody saw an error.
            assert "hung up before you answered" in await host.js(
                "document.getElementById('toasts').innerText"
            )
            assert await caller.problems() == [] and await host.problems() == []

        assert app[CALLS].book.active_calls() == []
        calls = await ledger.calls("asha", limit=10, before=None)
        assert [c.end_reason for c in calls] == ["hangup"], (
            calls
        )  # a cancelled ring charges nothing
        paid = calls[0]
        assert paid.coins == paid.minutes * RATE and paid.minutes >= 1
        assert (await ledger.balances("asha")).wallet == 500 - paid.coins - 5
        await ledger_check(dsn)


async def test_nearby_and_a_direct_call_in_p2p_mode(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    """The same page when the server relays media negotiation (``media.mode=p2p``). A nearby
    match the host declines (the caller waits on, then cancels); then a direct call from the
    hosts list, where JalwaMedia lets the side that rang offer and the two browsers send their
    video to each other (over loopback)."""
    p2p = {"mode": "p2p"}
    async with the_app(make_settings, p2p) as (base, app, dsn), aiohttp.ClientSession() as http:
        async with people(tmp_path, http) as (host, caller):
            await host.sign_in(base, "meera", pool=True)
            await host.click("#poolNearby")  # at the place its lobby shows (Mumbai)
            await caller.sign_in(base, "asha")
            assert await caller.js("window.jalwaApp.client.welcome.media") == "p2p"

            await caller.js("document.getElementById('lat').value = '19.12'")  # ~5 km north
            await caller.click("#matchNearby")
            await host.wait_for("!document.getElementById('ringing').hidden", 10, "ringing")
            assert await caller.wait_for(
                "/km away/.test(document.getElementById('ringText').textContent)", 5, "the distance"
            )
            await caller.shot("p2p-nearby")
            await host.click("#declineCall")
            await caller.wait_for(
                "!document.getElementById('queue').hidden", 10, "waiting for another host"
            )
            await caller.click("#cancelMatch")
            await caller.wait_for("document.getElementById('queue').hidden", 5, "the queue left")

            await caller.wait_for(
                "!!document.querySelector('#hosts li[data-user=meera] button')", 15, "the list"
            )
            await caller.click("#hosts li[data-user=meera] button")
            await host.wait_for("!document.getElementById('ringing').hidden", 10, "ringing")
            await host.click("#acceptCall")
            await call_is_up(caller, host)
            await caller.shot("p2p-video")
            await host.click("#hangUp")
            for page in (caller, host):
                await page.wait_for(
                    "document.getElementById('summary').dataset.reason === 'hangup'", 10, "the end"
                )
                assert await page.js(f"{STATE}.media") is None
            assert await caller.problems() == [] and await host.problems() == []
        assert app[CALLS].book.active_calls() == []
        await ledger_check(dsn)
