"""SFU cost: encoded forwarding (media.Sfu) against aiortc's MediaRelay, in the same run.

Run: ``.venv/bin/python -m bench.sfu [--rounds 3] [--seconds 10] [--modes forward,relay]``

For each mode, a fresh server process (so its CPU and memory are its own) answers two
loopback clients (tests.mediautil.LoopbackClient, in this process): each publishes a moving
640x480 30 fps VP8 test pattern plus Opus audio and decodes what it receives. Everything
runs on 127.0.0.1 with no ICE servers.

- forward: ``media.Sfu`` as deployed (``media.forwarding = "rtp"``): each RTP packet is
  decrypted, its header rewritten and re-encrypted for the other party as it arrives.
- frame: ``media.Sfu`` with ``media.forwarding = "frame"``: aiortc reassembles encoded
  frames, which are re-packetized for the other party. Nothing is decoded or encoded in
  either mode.
- relay: the baseline, aiortc's ``MediaRelay``: the server decodes each incoming track and
  its ``RTCRtpSender`` re-encodes it for the subscriber (what DESIGN §6 rules out).

Reported per mode, over the measured window after the warm-up: server CPU (user+sys, all
threads) per video frame the subscribers decoded, subscriber fps / publisher fps, time from
the second answer to each client's first decoded video frame, server RSS growth, video
bitrate the clients sent. The modes alternate for ``--rounds`` rounds (this is a shared,
noisy machine); medians and the forward/relay CPU ratio (goal <= 0.12, ANCHORS.md) close the
report. Then one RTP-forwarding server is loaded with ``--capacity-calls`` calls (default 64;
bench/sfu_capacity.py) for forwarded 1 Mbps video legs per core (goal >= 150).
``--rounds 1 --seconds 300 --modes forward --capacity-calls 0`` is the 5-minute flat-RSS
check.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_APP, AnyRtcpPacket, RtcpPsfbPacket

from bench import sfu_capacity
from bench.loop import loop_factory
from media.codecs import pinned_codecs
from media.ice import IcePolicy
from media.leg import offer_media_kinds
from media.settings import Forwarding, MediaSettings
from media.sfu import Sfu
from tests.mediautil import LoopbackClient

PARTIES = ("caller", "host")
CALL = "bench-call"
VIDEO_BPS = 1_000_000


def pin_video_bitrate(pc: RTCPeerConnection, bps: int) -> asyncio.Task[None]:
    """Bench only: hold every video encoder of ``pc`` at ``bps`` so both modes carry the
    same load. aiortc adapts its encoders to REMB feedback; this drops REMB for these
    senders and sets the target once the (lazily created) encoder exists. Private aiortc
    attributes: acceptable in a benchmark, never on the call path."""
    senders = [s for s in pc.getSenders() if s.kind == "video"]
    for sender in senders:
        original = sender._handle_rtcp_packet

        async def without_remb(
            packet: AnyRtcpPacket, _original: Callable[[AnyRtcpPacket], Awaitable[None]] = original
        ) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                return
            await _original(packet)

        sender._handle_rtcp_packet = without_remb  # type: ignore[method-assign]

    async def set_targets() -> None:
        pending = list(senders)
        while pending:
            for sender in list(pending):
                encoder = getattr(sender, "_RTCRtpSender__encoder", None)
                if encoder is not None:
                    encoder.target_bitrate = bps
                    pending.remove(sender)
            await asyncio.sleep(0.05)

    return asyncio.ensure_future(set_targets())


@dataclass(frozen=True)
class ServerSample:
    user_s: float
    sys_s: float
    rss_bytes: int
    forwarded_video: int | None


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- server side (child process) -----------------------------------------------------------


class ForwardServer:
    def __init__(self, forwarding: Forwarding) -> None:
        settings = MediaSettings(
            host_addresses=("127.0.0.1",), include_loopback=True, forwarding=forwarding
        )
        self.sfu = Sfu(settings, RTCConfiguration(iceServers=[]))

    async def answer(self, party: str, sdp: str) -> str:
        return await self.sfu.answer(CALL, party, sdp)

    def forwarded_video(self) -> int | None:
        stats = self.sfu.stats(CALL)
        if stats is None:
            return 0
        return sum(leg.subscribed["video"].frames_forwarded for leg in stats.legs.values())

    async def close(self) -> None:
        await self.sfu.close()


class RelayServer:
    """The baseline: aiortc's MediaRelay, i.e. decode and re-encode for each subscriber."""

    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.transceivers: dict[str, dict[str, RTCRtpTransceiver]] = {}
        self.tracks: dict[str, dict[str, MediaStreamTrack]] = {}
        self.pinning: list[asyncio.Task[None]] = []

    async def answer(self, party: str, sdp: str) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs[party] = pc
        mine = self.transceivers[party] = {}
        tracks = self.tracks[party] = {}
        for kind in offer_media_kinds(sdp):
            transceiver = pc.addTransceiver(kind, direction="sendrecv")
            transceiver.setCodecPreferences(pinned_codecs(kind, "VP8"))
            mine[kind] = transceiver
        pc.on("track", lambda track: tracks.__setitem__(track.kind, track))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        other = next((p for p in self.pcs if p != party), None)
        if other is not None:
            for kind, transceiver in mine.items():
                transceiver.sender.replaceTrack(self.relay.subscribe(self.tracks[other][kind]))
            for kind, transceiver in self.transceivers[other].items():
                transceiver.sender.replaceTrack(self.relay.subscribe(tracks[kind]))
        IcePolicy.loopback_only().apply(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        self.pinning.append(pin_video_bitrate(pc, VIDEO_BPS))
        assert pc.localDescription is not None
        return pc.localDescription.sdp

    def forwarded_video(self) -> int | None:
        return None

    async def close(self) -> None:
        for task in self.pinning:
            task.cancel()
        await asyncio.gather(*(pc.close() for pc in self.pcs.values()))


def serve(conn: Connection, mode: str) -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(conn, mode))


async def _serve(conn: Connection, mode: str) -> None:
    server: ForwardServer | RelayServer = (
        RelayServer() if mode == "relay" else ForwardServer("frame" if mode == "frame" else "rtp")
    )
    loop = asyncio.get_running_loop()
    while True:
        msg: tuple[Any, ...] = await loop.run_in_executor(None, conn.recv)
        if msg[0] == "answer":
            conn.send(await server.answer(msg[1], msg[2]))
        elif msg[0] == "sample":
            times = os.times()
            conn.send(ServerSample(times.user, times.system, rss_bytes(), server.forwarded_video()))
        elif msg[0] == "close":
            await server.close()
            conn.send(None)
            return


# --- client side (this process) ------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    mode: str
    cpu_ms_per_frame: float
    user_ms_per_frame: float
    subscriber_fps: list[float]
    publisher_fps: list[float]
    first_frame_s: list[float]
    rss_start_mb: float
    rss_growth_mb: float
    video_kbps: list[float]
    forwarded_video: int | None
    decoded_video: int


class ServerProcess:
    def __init__(self, mode: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, mode), daemon=True)
        self.proc.start()

    async def call(self, *msg: Any) -> Any:
        self.conn.send(msg)
        return await asyncio.get_running_loop().run_in_executor(None, self.conn.recv)

    async def stop(self) -> None:
        await self.call("close")
        self.proc.join(5)


async def video_bytes_sent(client: LoopbackClient) -> int:
    total = 0
    for sender in client.pc.getSenders():
        if sender.track is not None and sender.track.kind == "video":
            for stat in (await sender.getStats()).values():
                if getattr(stat, "type", None) == "outbound-rtp":
                    total += int(stat.bytesSent)
    return total


async def run_mode(mode: str, seconds: float, warmup: float, audio: bool) -> Result:
    server = ServerProcess(mode)
    clients = [LoopbackClient(party, audio=audio) for party in PARTIES]
    try:
        idle: ServerSample = await server.call("sample")
        pinning = [pin_video_bitrate(c.pc, VIDEO_BPS) for c in clients]
        for party, client in zip(PARTIES, clients, strict=True):
            await client.accept(await server.call("answer", party, await client.offer()))
        joined = time.monotonic()
        deadline = joined + 15
        while any(c.frames("video") == 0 for c in clients):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mode}: no video after 15 s")
            await asyncio.sleep(0.01)
        first = [c.received["video"].first_frame_at or 0.0 for c in clients]
        await asyncio.sleep(warmup)

        s0: ServerSample = await server.call("sample")
        t0 = time.monotonic()
        decoded0 = [c.frames("video") for c in clients]
        sent0 = [c.video_source.frames_sent if c.video_source else 0 for c in clients]
        bytes0 = [await video_bytes_sent(c) for c in clients]
        await asyncio.sleep(seconds)
        s1: ServerSample = await server.call("sample")
        elapsed = time.monotonic() - t0
        decoded = [c.frames("video") - d for c, d in zip(clients, decoded0, strict=True)]
        sent = [
            (c.video_source.frames_sent if c.video_source else 0) - s
            for c, s in zip(clients, sent0, strict=True)
        ]
        sent_bytes = [await video_bytes_sent(c) - b for c, b in zip(clients, bytes0, strict=True)]
    finally:
        for task in pinning:
            task.cancel()
        await server.stop()
        await asyncio.gather(*(c.close() for c in clients))

    # Each client decodes what the *other* one published.
    publisher_fps = [sent[1] / elapsed, sent[0] / elapsed]
    forwarded = None
    if s1.forwarded_video is not None and s0.forwarded_video is not None:
        forwarded = s1.forwarded_video - s0.forwarded_video
    frames = max(1, sum(decoded))
    user_s = s1.user_s - s0.user_s
    return Result(
        mode=mode,
        cpu_ms_per_frame=(user_s + s1.sys_s - s0.sys_s) * 1000 / frames,
        user_ms_per_frame=user_s * 1000 / frames,
        subscriber_fps=[d / elapsed for d in decoded],
        publisher_fps=publisher_fps,
        first_frame_s=[f - joined for f in first],
        rss_start_mb=idle.rss_bytes / 2**20,
        rss_growth_mb=(s1.rss_bytes - s0.rss_bytes) / 2**20,
        video_kbps=[b * 8 / elapsed / 1000 for b in sent_bytes],
        forwarded_video=forwarded,
        decoded_video=sum(decoded),
    )


def show(r: Result) -> None:
    pairs = zip(r.subscriber_fps, r.publisher_fps, strict=True)
    fps = ", ".join(f"{s:.1f}/{p:.1f} ({s / p:.0%})" for s, p in pairs)
    first = ", ".join(f"{t:.3f} s" for t in r.first_frame_s)
    kbps = ", ".join(f"{k:.0f} kbps" for k in r.video_kbps)
    forwarded = f" (SFU forwarded {r.forwarded_video})" if r.forwarded_video is not None else ""
    print(f"[{r.mode}]")
    print(
        f"  server CPU per forwarded video frame : {r.cpu_ms_per_frame:.3f} ms"
        f" (user {r.user_ms_per_frame:.3f} ms)"
    )
    print(f"  subscriber/publisher fps (each way)  : {fps}")
    print(f"  first frame after both answered      : {first}")
    rss = f"{r.rss_start_mb:.1f} MB / {r.rss_growth_mb:+.1f} MB"
    print(f"  server RSS at start / growth         : {rss}")
    print(f"  video sent by clients                : {kbps}")
    print(f"  video frames decoded by subscribers  : {r.decoded_video}{forwarded}")


async def main(args: argparse.Namespace) -> int:
    print(
        f"bench.sfu: {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {args.rounds} round(s) of {args.seconds:.0f} s measured after "
        f"{args.warmup:.0f} s warm-up per mode, 640x480 30 fps VP8 at {VIDEO_BPS // 1000} kbps"
        f"{' + Opus' if args.audio else ' (no audio)'}, 1:1 call on 127.0.0.1, uvloop"
    )
    results: dict[str, list[Result]] = {mode: [] for mode in args.modes}
    ratios = []
    for n in range(args.rounds):
        # Modes alternate inside each round, so a noisy neighbour hits both alike.
        for mode in args.modes if n % 2 == 0 else reversed(args.modes):
            result = await run_mode(mode, args.seconds, args.warmup, args.audio)
            results[mode].append(result)
            print(f"round {n + 1}", end=" ")
            show(result)
        if "forward" in results and "relay" in results:
            fwd, relay = results["forward"][-1], results["relay"][-1]
            ratios.append(fwd.cpu_ms_per_frame / relay.cpu_ms_per_frame)
    for mode, runs in results.items():
        cpu = statistics.median(r.cpu_ms_per_frame for r in runs)
        print(f"{mode}: median server CPU per forwarded video frame {cpu:.3f} ms")
    if ratios:
        ratio = statistics.median(ratios)
        verdict = "meets" if ratio <= 0.12 else "misses"
        rounds = ", ".join(f"{r:.3f}" for r in ratios)
        print(f"forward / relay CPU per frame, median: {ratio:.3f} ({verdict} the <= 0.12 goal)")
        print(f"  per round: {rounds}")
    if "forward" in results:
        # One 30 fps video leg costs 30 forwarded frames a second (audio included in that).
        cpu = statistics.median(r.cpu_ms_per_frame for r in results["forward"])
        # One call wakes the server for nearly every packet: a floor, not a capacity.
        print(
            f"forwarded 30 fps legs per core (forward), extrapolated from one call: "
            f"{1000 / (30 * cpu):.0f}"
        )
    if args.capacity_calls:
        # The capacity: one server loaded with many calls (bench/sfu_capacity.py).
        clip = sfu_capacity.encode_clip()
        load = await sfu_capacity.run_calls(
            clip, args.capacity_calls, "rtp", args.seconds, args.warmup
        )
        sfu_capacity.show(load)
        verdict = "meets" if load.sustained and load.legs_per_core >= 150 else "misses"
        print(
            f"forwarded 1 Mbps video legs per core under load ({load.calls} calls): "
            f"{load.legs_per_core:.0f} ({verdict} the >= 150 goal"
            f"{'' if load.sustained else '; not sustained, a bound'})"
        )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sfu", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per mode (median)")
    parser.add_argument(
        "--audio",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="clients also send Opus audio (its forwarding cost is counted per video frame)",
    )
    parser.add_argument(
        "--capacity-calls",
        type=int,
        default=64,
        help="then load one RTP-forwarding server with this many calls (bench.sfu_capacity) "
        "for legs per core; 0 skips it",
    )
    parser.add_argument(
        "--modes",
        type=lambda s: [m for m in s.split(",") if m],
        default=["forward", "relay"],
        help="comma-separated: forward (RTP packets), frame (encoded frames), relay",
    )
    args = parser.parse_args(argv)
    unknown = set(args.modes) - {"forward", "frame", "relay"}
    if unknown:
        parser.error(f"unknown modes: {sorted(unknown)}")
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main(args))


if __name__ == "__main__":
    sys.exit(run())
