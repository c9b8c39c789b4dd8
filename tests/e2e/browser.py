"""Headless Chromium for the e2e tests (DESIGN §7), driven over the DevTools protocol (its
WebSocket, with aiohttp): no chromedriver, selenium or playwright. Every packet stays on
127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


# Run before the page's own script: the page trickles only its 127.0.0.1 candidates, so the
# SFU (which gathers on 127.0.0.1 only) never checks a pair towards another address of this
# machine (DESIGN §6: media tests send to loopback only). The pages' code is unchanged.
LOOPBACK_ONLY_JS = """
(() => {
  const seen = window.loopbackOnly = { sent: 0, dropped: 0 };
  const proto = RTCPeerConnection.prototype;
  const prop = Object.getOwnPropertyDescriptor(proto, 'onicecandidate');
  Object.defineProperty(proto, 'onicecandidate', {
    configurable: true,
    get() { return prop.get.call(this); },
    set(handler) {
      prop.set.call(this, typeof handler !== 'function' ? handler : (e) => {
        if (e.candidate && e.candidate.candidate) {
          if (e.candidate.address !== '127.0.0.1') { seen.dropped += 1; return; }
          seen.sent += 1;
        }
        return handler.call(this, e);
      });
    },
  });
})();
"""


def chromium_binary() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "Chromium is not installed: the browser e2e test needs Debian's chromium package; "
            "run 'apt-get install -y chromium' (scripts/test does it when run as root)"
        )
    return path


class Browser:
    """One headless Chromium process with its own profile; killed by its PID on close."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.profile = profile
        self.stderr_path = profile.parent / "chromium-stderr.log"
        profile.mkdir(parents=True)
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # its own process group: its helpers die with it
            )

    async def devtools_port(self, within_s: float = 20) -> int:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + within_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode}")
            with contextlib.suppress(FileNotFoundError):
                lines = port_file.read_text().splitlines()
                if len(lines) >= 2 and lines[0].isdigit():  # "port\n/devtools/browser/<id>"
                    return int(lines[0])  # else Chromium is still writing it
            assert time.monotonic() < deadline, f"no {port_file} after {within_s}s"
            await asyncio.sleep(0.05)

    def stderr_tail(self, lines: int = 40) -> str:
        """The end of Chromium's output, without its harmless D-Bus and ALSA complaints."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no stderr file)"
        noise = ("dbus/", "ALSA lib ", "alsa_util.cc")
        kept = [line for line in text.splitlines() if not any(n in line for n in noise)]
        return "\n".join(kept[-lines:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # group id == chromium's own PID
        self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


class Cdp:
    """The few DevTools protocol calls this test needs, on one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        call_id = self.next_id
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        async with asyncio.timeout(15):
            while True:
                msg = await self.ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"DevTools socket: {msg.type.name} {msg.data!r}")
                reply: dict[str, Any] = json.loads(msg.data)
                if reply.get("id") != call_id:
                    continue  # an event
                if "error" in reply:
                    raise AssertionError(f"{method} failed: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    async def js(self, expression: str) -> Any:
        """Evaluate in the page (promises awaited, as a user gesture); returns the value."""
        result = await self.call(
            "Runtime.evaluate",
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
            userGesture=True,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"page JS failed: {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, within_s: float, what: str) -> Any:
        deadline = time.monotonic() + within_s
        while not (value := await self.js(expression)):
            assert time.monotonic() < deadline, f"timed out after {within_s}s waiting for {what}"
            await asyncio.sleep(0.1)
        return value

    async def click(self, selector: str, *, count: int = 1) -> None:
        """Click the element as a person does: mouse events at its centre, through the
        browser's input pipeline (so the page sees trusted events). ``count=2`` is a double
        click: two presses in a row, the second with clickCount 2."""
        box = await self.js(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " if (!el) return null; el.scrollIntoView({block: 'center'});"
            " const r = el.getBoundingClientRect();"
            " return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()"
        )
        assert box is not None, f"no element {selector}"
        for n in range(1, count + 1):
            for kind in ("mousePressed", "mouseReleased"):
                await self.call(
                    "Input.dispatchMouseEvent",
                    type=kind,
                    x=box["x"],
                    y=box["y"],
                    button="left",
                    clickCount=n,
                )

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))  # noqa: ASYNC240 - a test's few files


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def open_page(
    http: aiohttp.ClientSession, devtools_port: int
) -> aiohttp.ClientWebSocketResponse:
    async with http.get(f"http://127.0.0.1:{devtools_port}/json/list") as resp:
        targets: list[dict[str, Any]] = await resp.json()
    page = next(t for t in targets if t["type"] == "page")
    return await http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
