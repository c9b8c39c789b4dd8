"""jalwa.js in headless Chromium against a real hub: requests resolve on the ack and reject
with the error's code, events reach subscribers, and a dropped connection comes back by
itself, resumed, with what was sent meanwhile delivered exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from signalling.app import create_app
from tests.conftest import MakeSettings, MakeToken
from tests.e2e.browser import Browser, Cdp, chromium_binary, open_page
from tests.wsutil import connect, recv

AiohttpClient = Any

# Runs in the page (an ES module import from the server itself); results go on window.
SCRIPT = """
(async () => {
  const { JalwaClient, JalwaError } = await import("/jalwa.js");
  const out = window.clientTest = { events: [], chat: [] };
  const jalwa = window.jalwa = new JalwaClient({ token: %(token)r });
  jalwa.on("chat.message", (m) => out.chat.push(m.message.text));
  jalwa.on("*", (m) => out.events.push(m.type));
  jalwa.on("close", (e) => out.events.push("close:" + e.code));
  const welcome = await jalwa.connect();
  out.user = welcome.user.id;
  out.resumable = !!welcome.resume_token;
  out.ack = (await jalwa.setStatus("away")).type;
  try {
    await jalwa.invite("alice");
    out.refused = null;
  } catch (e) {
    out.refused = { code: e.code, isJalwaError: e instanceof JalwaError };
  }
  out.ready = true;
})();
"""


async def test_jalwa_js_requests_events_and_resume(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken, tmp_path: Path
) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(make_settings()))
    bob = await connect(client, token_for("bob", "host"))
    browser = Browser(chromium_binary(), tmp_path / "profile")
    try:
        port = await asyncio.wait_for(browser.devtools_port(), 20)
        async with aiohttp.ClientSession() as http:
            page = Cdp(await open_page(http, port))
            await page.call("Page.navigate", url=str(client.make_url("/healthz")))
            await page.wait_for("document.readyState === 'complete'", 10, "a page on the server")
            await page.js(SCRIPT % {"token": token_for("alice")})
            await page.wait_for("window.clientTest && window.clientTest.ready", 10, "the client")
            result = await page.js("window.clientTest")
            assert result["user"] == "alice" and result["resumable"]
            assert result["ack"] == "ack"
            assert result["refused"] == {"code": "self_call", "isJalwaError": True}

            # A message while connected, then the connection drops (not a clean close).
            await bob.send_json(
                {"type": "chat.send", "id": "1", "to": "alice", "client_msg_id": "a", "text": "one"}
            )
            await page.wait_for("window.clientTest.chat.length === 1", 5, "the first message")
            await page.js("window.jalwa._ws.close(4000, 'network gone')")
            await page.wait_for("!window.jalwa.connected", 5, "the drop")
            await bob.send_json(
                {"type": "chat.send", "id": "2", "to": "alice", "client_msg_id": "b", "text": "two"}
            )
            await recv(bob, "ack")
            await page.wait_for(
                "window.jalwa.connected && window.jalwa.welcome.resumed", 10, "the resume"
            )
            await page.wait_for("window.clientTest.chat.length >= 2", 5, "the missed message")
            await asyncio.sleep(0.3)
            assert await page.js("window.clientTest.chat") == ["one", "two"]  # once each, in order
            events = await page.js("window.clientTest.events")
            assert events.count("welcome") == 2  # the first session and its resume
            assert any(e.startswith("close:") for e in events)
            # Closed for good: no reconnect.
            await page.js("window.jalwa.close()")
            await asyncio.sleep(1.0)
            assert not await page.js("window.jalwa.connected")
            await page.ws.close()
    finally:
        browser.kill()
        await bob.close()
