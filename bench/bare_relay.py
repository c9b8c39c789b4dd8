"""The baseline of bench/signalling.py: a bare aiohttp WebSocket relay, no auth, no
validation, no limits. ``/ws?user=a&peer=b``: every text frame is JSON-decoded, re-stamped
with its sender (as the hub's rtc relay does) and sent to the peer.

Run by the bench as a separate process: ``python -m bench.bare_relay --port P``.
"""

from __future__ import annotations

import argparse
import asyncio

import msgspec
import uvloop
from aiohttp import WSMsgType, web

SOCKETS = web.AppKey("sockets", dict[str, web.WebSocketResponse])
_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


async def relay(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    user, peer = request.query["user"], request.query["peer"]
    sockets = request.app[SOCKETS]
    sockets[user] = ws
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                data = _decode.decode(msg.data)
                data["from"] = user
                other = sockets.get(peer)
                if other is not None:
                    await other.send_frame(_encode.encode(data), WSMsgType.TEXT)
    finally:
        sockets.pop(user, None)
    return ws


async def serve(port: int) -> None:
    app = web.Application()
    app[SOCKETS] = {}
    app.router.add_get("/ws", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()  # until the bench terminates us


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The same event loop as `jalwa serve` (uvloop), so the ratio compares the code only.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.port))


if __name__ == "__main__":
    main()
