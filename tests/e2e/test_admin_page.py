"""The admin page in headless Chromium with an admin token: it shows the scripted
scenario's figures, ends a call and approves a withdrawal from its buttons. A screenshot
goes to test-output/admin-page.png (git-ignored) for a person to look at."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from signalling.app import create_app
from signalling.keys import LEDGER
from tests.admin_scenario import EXPECTED_WINDOW, RATE, auth, play
from tests.conftest import MakeSettings, MakeToken
from tests.e2e.browser import Browser, Cdp, chromium_binary, open_page
from tests.wsutil import recv

AiohttpClient = Any
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
SHOWN = "window.jalwaAdmin && window.jalwaAdmin.loaded"


def figure(key: str, column: int) -> str:
    """The text of one cell of the activity table, as the page shows it."""
    return f"document.querySelector('#activity tr[data-figure={key}]').cells[{column}].textContent"


async def test_the_admin_page_shows_the_scenario_and_acts(
    aiohttp_client: AiohttpClient,
    make_settings: MakeSettings,
    token_for: MakeToken,
    tmp_path: Path,
) -> None:
    app = create_app(make_settings(billing={"default_rate": RATE}))
    client: TestClient[Any, Any] = await aiohttp_client(app)
    played = await play(client, client, token_for)
    bob_host = auth(token_for("bob", "host"))
    resp = await client.post(
        "/v1/withdrawals", json={"amount": 5, "idempotency_key": "w1"}, headers=bob_host
    )
    assert resp.status == 201, await resp.text()
    withdrawal = (await resp.json())["id"]

    browser = Browser(chromium_binary(), tmp_path / "profile")
    try:
        port = await asyncio.wait_for(browser.devtools_port(), 20)
        async with aiohttp.ClientSession() as http:
            page = Cdp(await open_page(http, port))
            await page.call("Page.enable")
            await page.call(  # tall enough for every table in the screenshot
                "Emulation.setDeviceMetricsOverride",
                width=1000,
                height=1300,
                deviceScaleFactor=1,
                mobile=False,
            )
            url = client.make_url(f"/admin?token={token_for('root', 'admin')}")
            await page.call("Page.navigate", url=str(url))
            await page.wait_for(SHOWN, 15, "the admin page's first figures")
            # The token left the address bar (and so the history) at once.
            assert "token" not in await page.js("location.href")
            for key, value in EXPECTED_WINDOW.items():
                assert await page.js(figure(key, 2)) == str(value), key  # last hour
            cards = await page.js(
                "Object.fromEntries([...document.querySelectorAll('.card')]"
                ".map(c => [c.dataset.figure, c.querySelector('b').textContent]))"
            )
            assert cards["callers online"] == "2" and cards["hosts online"] == "2"
            assert cards["active calls"] == "1"
            row = f"#calls tr[data-call='{played.running_call}']"
            pending = f"#withdrawals tr[data-withdrawal='{withdrawal}']"
            assert await page.js(f'!!document.querySelector("{row}")')
            assert await page.js(f'!!document.querySelector("{pending}")')
            shot = await page.call("Page.captureScreenshot", format="png")
            OUTPUT.mkdir(exist_ok=True)
            (OUTPUT / "admin-page.png").write_bytes(base64.b64decode(shot["data"]))

            # The buttons act: end carol's call, approve bob's withdrawal.
            await page.js(f'document.querySelector("{row} button").click()')
            assert (await recv(played.sockets["dave"], "call.ended"))["reason"] == "admin"
            await page.js(f'document.querySelector("{pending} button").click()')
            await page.wait_for(
                "window.jalwaAdmin.withdrawals.withdrawals.length === 0"
                " && window.jalwaAdmin.calls.calls.length === 0",
                10,
                "the page to show the call ended and the withdrawal decided",
            )
            await page.ws.close()
    finally:
        browser.kill()
    mine = await (await client.get("/v1/withdrawals", headers=bob_host)).json()
    assert [w["state"] for w in mine["withdrawals"]] == ["paid"]
    for ws in played.sockets.values():
        await ws.close()
    assert await app[LEDGER].check() == []
