"""SFU capacity: how many forwarded 1 Mbps video legs one core of ``media.Sfu`` sustains.

Run: ``.venv/bin/python -m bench.sfu_capacity [--calls 8,32,64] [--seconds 10] [--warmup 3]
[--forwarding rtp|frame]``

bench/sfu.py loads the server with two real aiortc clients that encode and decode video;
they cost far more CPU than the SFU, so they cannot load it. Here the clients only set up
the calls with aiortc (offer, the server's answer, ICE, DTLS) and then leave aiortc's media
path out entirely:

- a publisher replays a pre-encoded 640x480 30 fps VP8 clip of about 1 Mbps (encoded once
  at start with PyAV, packetized with aiortc's VP8 packetizer, a keyframe every 2 s): this
  process builds each RTP header itself (sequence numbers, timestamps and VP8 picture ids
  keep counting up across loops of the clip), protects it with the client's SRTP session
  and writes it to the client's nominated ICE pair socket. One ticker paces every
  publisher in real time, spread over the frame interval; publishers start staggered so
  their keyframes are not all sent at once;
- a subscriber is the client's aioice ``Connection.data_received``, replaced to count the
  RTP packets the SFU forwards and to check each one with the client's SRTP session
  (authentic, counted by marker bit as frames, sequence gaps counted as loss). STUN, DTLS
  and RTCP still go to aiortc, so the connection stays up.

Each number of calls runs against a fresh server process (its CPU is its own): the real
``media.Sfu`` on uvloop, ``MediaSettings(host_addresses=("127.0.0.1",),
include_loopback=True, forwarding=...)``, answering each party's offer over a pipe. Every
call is video only (no audio), parties "caller" and "host", everything on 127.0.0.1 with no
ICE servers.

Over the measured window after the warm-up it reports per run: per-leg bitrate sent and
received, delivered/sent packets and frames, SRTP failures, sequence gaps, the SFU's own
forwarded counts, server CPU (user+sys, all threads) as % of a core and per forwarded
frame (and, measured for 2 s before any media, with every call connected and idle), and
"forwarded 1 Mbps video legs per core" = legs / (server CPU seconds per second), one leg
being one publisher's video forwarded to one subscriber (2 per call; goal >= 150,
../shared/ANCHORS.md); also the same figure counting only the frames the SFU
forwarded. The load generator's own CPU and how late its ticker ran are printed too, with
the machine's busy and stolen CPU share and UDP receive-buffer drops. A run is marked not
sustained (its figure a bound, not a capacity) when delivered/sent is off by over 1%, the
server is above 95% of a core (saturated: it falls behind) or waited for a CPU over 5% of
the window (contended), or the generator was not offering the nominal load (above 90% of
a core, or late by a frame in over 1% of its wake-ups). On two cores, server and
generator each need one: the machine, not the SFU, caps how many calls a run can offer.
The machine is shared and noisy: repeat a size to see the spread (``--calls 64,64,64``).

Private aiortc / aioice attributes (``RTCDtlsTransport._tx_srtp`` / ``_rx_srtp``,
``RTCIceTransport._connection``, ``Connection._nominated`` and ``data_received``,
``RTCRtpSender._ssrc``, ``RTCRtpTransceiver._codecs``) are used on the client side: acceptable
in a benchmark (verified on aiortc 1.16 / aioice 0.13), never on the call path.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import random
import statistics
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import Connection
from typing import Any, Final

import av
import pylibsrtp
from aiortc import (
    RTCConfiguration,
    RTCDtlsTransport,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.frame import Frame
from av.packet import Packet

from bench.loop import loop_factory
from bench.stalls import cpu_of
from media.codecs import pinned_codecs
from media.ice import IcePolicy
from media.rtp import is_rtcp
from media.settings import Forwarding, MediaSettings
from media.sfu import Sfu

PARTIES: Final = ("caller", "host")
WIDTH: Final = 640
HEIGHT: Final = 480
FPS: Final = 30
VIDEO_BPS: Final = 1_000_000
CLIP_FRAMES: Final = 120
"""4 s of video, looped."""
KEYFRAME_EVERY: Final = 60
"""Frames between keyframes in the clip (2 s): a gated subscriber waits at most this long."""
TS_STEP: Final = 90_000 // FPS
SLOTS: Final = 8
"""Ticker wake-ups per frame interval; each publisher sends in one of them."""
NOISE_BLOCK: Final = 128
"""Side of the moving noise square in the test pattern (brings the clip to ~1 Mbps)."""
MAX_DELIVERY_ERROR: Final = 0.01
"""A sustained window delivers sent packets within 1% (more than sent: a backlog drained)."""
MAX_SERVER_CPU: Final = 0.95
"""Above this share of a core the server is saturated: its figure is not sustained."""
IDLE_SECONDS: Final = 2.0
"""How long the server's CPU is measured with the calls connected, before any media."""
MAX_SERVER_WAIT: Final = 0.05
"""Above this share of the window waiting for a CPU, other work (the generator, another
process) contended with the server: it batches more per wake-up and its CPU per packet is
not the uncontended figure."""
MAX_GENERATOR_CPU: Final = 0.9
MAX_LATE_TICKS: Final = 0.01
"""A window is sustained if at most this share of the ticker's wake-ups ran a frame late."""

# RTP header (RFC 3550) and the 4-byte VP8 payload descriptor of aiortc's packetizer
# (X=1; I=1 with a 15-bit PictureID, RFC 7741 §4.2), packed in one go.
_HEADER: Final = struct.Struct("!BBHIIBBH")
_RTP_HEADER_LEN: Final = 12
_MARKER: Final = 0x80


# --- the clip ------------------------------------------------------------------------------

VideoPacket = tuple[int, int, int, bytes]
"""(marker bit, descriptor byte 0, descriptor byte 1, payload after the picture id)."""


@dataclass(frozen=True)
class Clip:
    frames: list[list[VideoPacket]]
    keyframes: list[int]
    bps: float
    """Bitrate of the encoded frames (VP8 data, no RTP/SRTP overhead)."""
    packets_per_second: float


def encode_clip() -> Clip:
    """Encode a moving 640x480 test pattern at 1 Mbps with libvpx, packetized by aiortc."""
    rnd = random.Random(1)
    base = bytes(
        (x * 2 + y + ((x // 16 + y // 16) % 2) * 60) & 0xFF
        for y in range(HEIGHT)
        for x in range(WIDTH)
    )
    area = WIDTH * HEIGHT
    noise = rnd.randbytes(area * 2)
    chroma = bytes([128]) * (area // 4)
    codec = av.CodecContext.create("libvpx", "w")
    assert isinstance(codec, av.VideoCodecContext)
    codec.width = WIDTH
    codec.height = HEIGHT
    codec.bit_rate = VIDEO_BPS
    codec.pix_fmt = "yuv420p"
    codec.time_base = Fraction(1, FPS)
    codec.framerate = Fraction(FPS, 1)
    codec.gop_size = KEYFRAME_EVERY
    # aiortc's own realtime CBR settings (aiortc/codecs/vpx.py).
    codec.options = {
        "bufsize": str(VIDEO_BPS),
        "cpu-used": "-6",
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(VIDEO_BPS),
        "maxrate": str(VIDEO_BPS),
        "overshoot-pct": "15",
        "undershoot-pct": "100",
    }
    encoded: list[Packet[Any]] = []
    for i in range(CLIP_FRAMES):
        shift = (i * 7 * WIDTH + i * 5) % area
        luma = bytearray(base[shift:] + base[:shift])
        bx = (i * 9) % (WIDTH - NOISE_BLOCK)
        by = (i * 5) % (HEIGHT - NOISE_BLOCK)
        for row in range(NOISE_BLOCK):
            at = (by + row) * WIDTH + bx
            src = (i * 997 + row * WIDTH) % area
            luma[at : at + NOISE_BLOCK] = noise[src : src + NOISE_BLOCK]
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        frame.planes[0].update(bytes(luma))
        frame.planes[1].update(chroma)
        frame.planes[2].update(chroma)
        frame.pts = i
        frame.time_base = Fraction(1, FPS)
        if i % KEYFRAME_EVERY == 0:
            frame.pict_type = av.video.frame.PictureType.I
        encoded.extend(codec.encode(frame))
    encoded.extend(codec.encode(None))
    if len(encoded) != CLIP_FRAMES or not encoded[0].is_keyframe:
        raise RuntimeError(f"libvpx gave {len(encoded)} frames (first a keyframe: no)")

    packetizer = Vp8Encoder()
    frames: list[list[VideoPacket]] = []
    for packet in encoded:
        payloads, _ = packetizer.pack(packet)
        packets: list[VideoPacket] = []
        for k, payload in enumerate(payloads):
            if payload[0] & 0x80 == 0 or payload[1] & 0x80 == 0 or payload[2] & 0x80 == 0:
                raise RuntimeError("aiortc's VP8 descriptor no longer has a 15-bit picture id")
            marker = _MARKER if k == len(payloads) - 1 else 0
            packets.append((marker, payload[0], payload[1], payload[4:]))
        frames.append(packets)
    seconds = CLIP_FRAMES / FPS
    return Clip(
        frames=frames,
        keyframes=[i for i, p in enumerate(encoded) if p.is_keyframe],
        bps=sum(p.size for p in encoded) * 8 / seconds,
        packets_per_second=sum(len(f) for f in frames) / seconds,
    )


# --- server side (child process) -----------------------------------------------------------


@dataclass(frozen=True)
class ServerSample:
    user_s: float
    sys_s: float
    legs_connected: int
    packets_forwarded: int
    frames_forwarded: int
    frames_dropped: int
    frames_skipped: int
    decoded_frames: int
    wait_s: float
    """Time the server's event-loop thread spent runnable but waiting for a CPU (Linux)."""


def call_id(n: int) -> str:
    return f"call-{n}"


def sample(sfu: Sfu, calls: int) -> ServerSample:
    times = os.times()
    connected = packets = frames = dropped = skipped = decoded = 0
    for n in range(calls):
        stats = sfu.stats(call_id(n))
        if stats is None:
            continue
        for leg in stats.legs.values():
            connected += leg.connection_state == "connected"
            decoded += leg.decoded_frames
            video = leg.subscribed.get("video")
            if video is not None:
                packets += video.packets_forwarded
                frames += video.frames_forwarded
                dropped += video.frames_dropped
                skipped += video.frames_skipped
    return ServerSample(
        times.user,
        times.system,
        connected,
        packets,
        frames,
        dropped,
        skipped,
        decoded,
        run_queue_wait_s(),
    )


# --- machine diagnostics (Linux /proc; zeros elsewhere) ------------------------------------


def run_queue_wait_s() -> float:
    """This thread's time waiting on a run queue (/proc/thread-self/schedstat)."""
    return cpu_of("thread-self").waiting_s


@dataclass(frozen=True)
class MachineSample:
    cpu_ticks: list[int]
    """/proc/stat's all-CPU line: user nice system idle iowait irq softirq steal ..."""
    udp_rcvbuf_errors: int
    """Datagrams dropped system-wide because a socket's receive buffer was full."""


def machine_sample() -> MachineSample:
    ticks: list[int] = []
    drops = 0
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/net/snmp") as f:
            udp = [line.split() for line in f if line.startswith("Udp:")]
        drops = int(udp[1][udp[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        pass
    return MachineSample(ticks, drops)


def serve(conn: Connection, forwarding: Forwarding, calls: int) -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(conn, forwarding, calls))


async def _serve(conn: Connection, forwarding: Forwarding, calls: int) -> None:
    settings = MediaSettings(
        host_addresses=("127.0.0.1",), include_loopback=True, forwarding=forwarding
    )
    sfu = Sfu(settings, RTCConfiguration(iceServers=[]))
    loop = asyncio.get_running_loop()
    try:
        while True:
            # EOFError here (the parent went away) ends the server too.
            msg: tuple[Any, ...] = await loop.run_in_executor(None, conn.recv)
            if msg[0] == "answer":
                try:
                    conn.send(("ok", await sfu.answer(msg[1], msg[2], msg[3])))
                except Exception as exc:
                    conn.send(("error", repr(exc)))
            elif msg[0] == "sample":
                conn.send(sample(sfu, calls))
            elif msg[0] == "close":
                break
    finally:
        await sfu.close()
    conn.send(None)


class ServerProcess:
    def __init__(self, forwarding: Forwarding, calls: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, forwarding, calls), daemon=True)
        self.proc.start()
        child.close()

    def _recv(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"the server did not answer within {timeout:.0f} s")
        return self.conn.recv()

    async def call(self, *msg: Any, limit_s: float = 30.0) -> Any:
        self.conn.send(msg)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._recv, limit_s)

    async def answer(self, call: str, party: str, sdp: str) -> str:
        status, text = await self.call("answer", call, party, sdp)
        if status != "ok":
            raise RuntimeError(f"the SFU refused {call}/{party}: {text}")
        assert isinstance(text, str)
        return text

    async def stop(self) -> None:
        if self.proc.is_alive():
            try:
                await self.call("close", limit_s=30.0)
            except (OSError, EOFError, TimeoutError) as exc:
                print(f"  (server did not close cleanly: {exc!r})")
        await asyncio.get_running_loop().run_in_executor(None, self.proc.join, 10.0)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5.0)
        self.conn.close()


# --- load generator (this process) ---------------------------------------------------------


class IdleTrack(MediaStreamTrack):
    """The client sender's track: never yields a frame (the publisher writes the packets),
    so aiortc's sender waits on it instead of polling for a track every 20 ms."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._ended = asyncio.Event()

    async def recv(self) -> Frame:
        await self._ended.wait()
        raise MediaStreamError

    def stop(self) -> None:
        self._ended.set()
        super().stop()


@dataclass
class Counts:
    packets: int = 0
    bytes: int = 0
    frames: int = 0
    failures: int = 0
    gaps: int = 0


class Party:
    """One party's aiortc peer connection with the SFU, its media path replaced."""

    def __init__(self, call: str, party: str) -> None:
        self.call = call
        self.party = party
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = IdleTrack()
        self.transceiver: RTCRtpTransceiver = self.pc.addTransceiver(
            self.track, direction="sendrecv"
        )
        self.transceiver.setCodecPreferences(pinned_codecs("video", "VP8"))
        self.sent = Counts()
        self.received = Counts()
        self._last_seq: int | None = None
        # Set by attach(), once connected.
        self._protect: Callable[[bytes], bytes] | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._addr: tuple[str, int] = ("", 0)
        self._payload_type = 0
        self._ssrc = 0
        self._delay = 0
        self._seq = 0
        self._ts0 = 0
        self._pid0 = 0

    async def offer(self) -> str:
        IcePolicy.loopback_only().apply(self.pc)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    def attach(self, start_delay_frames: int) -> None:
        """Take over the connected client's media path (see the module docstring)."""
        dtls = self.transceiver.sender.transport
        assert isinstance(dtls, RTCDtlsTransport)
        connection = dtls.transport._connection
        pair = connection._nominated.get(1)
        tx, rx = dtls._tx_srtp, dtls._rx_srtp
        codecs = self.transceiver._codecs
        if pair is None or tx is None or rx is None or not codecs:
            raise RuntimeError(f"{self.call}/{self.party}: connected without SRTP or ICE pair")
        payload_type = codecs[0].payloadType
        assert payload_type is not None
        self._protect = tx.protect
        self._transport = pair.protocol.transport
        self._addr = pair.remote_addr
        self._payload_type = payload_type
        self._ssrc = self.transceiver.sender._ssrc
        self._delay = start_delay_frames
        self._seq = random.randrange(1 << 16)
        self._ts0 = random.randrange(1 << 32)
        self._pid0 = random.randrange(1 << 15)

        aiortc_path = connection.data_received
        unprotect = rx.unprotect
        got = self.received

        def data_received(data: bytes, component: int) -> None:
            if len(data) > _RTP_HEADER_LEN and 127 < data[0] < 192 and not is_rtcp(data):
                try:
                    plain = unprotect(data)
                except pylibsrtp.Error:
                    got.failures += 1
                    return
                got.packets += 1
                got.bytes += len(data)
                if plain[1] & _MARKER:
                    got.frames += 1
                seq = (plain[2] << 8) | plain[3]
                last = self._last_seq
                if last is not None:
                    gap = (seq - last - 1) & 0xFFFF
                    if gap < 0x8000:
                        got.gaps += gap
                        self._last_seq = seq
                else:
                    self._last_seq = seq
            else:
                aiortc_path(data, component)

        connection.data_received = data_received  # type: ignore[method-assign]

    def send_frame(self, clip: list[list[VideoPacket]], frame_tick: int) -> None:
        """Send frame number ``frame_tick - start delay`` of the looped clip."""
        n = frame_tick - self._delay
        transport = self._transport
        protect = self._protect
        if n < 0 or transport is None or protect is None or transport.is_closing():
            return
        timestamp = (self._ts0 + n * TS_STEP) & 0xFFFFFFFF
        picture_id = 0x8000 | ((self._pid0 + n) & 0x7FFF)
        payload_type, ssrc, addr, pack = self._payload_type, self._ssrc, self._addr, _HEADER.pack
        seq = self._seq
        size = 0
        packets = clip[n % len(clip)]
        for marker, d0, d1, rest in packets:
            data = protect(
                pack(0x80, payload_type | marker, seq, timestamp, ssrc, d0, d1, picture_id) + rest
            )
            transport.sendto(data, addr)
            size += len(data)
            seq = (seq + 1) & 0xFFFF
        self._seq = seq
        sent = self.sent
        sent.packets += len(packets)
        sent.bytes += size
        sent.frames += 1

    async def close(self) -> None:
        self.track.stop()
        await self.pc.close()


@dataclass
class TickerStats:
    ticks: int = 0
    late: int = 0
    """Ticks that ran more than one frame interval after their time."""
    max_lag_s: float = 0.0


async def pace(parties: list[Party], clip: list[list[VideoPacket]], stats: TickerStats) -> None:
    """Every publisher's frames in real time: FPS x SLOTS wake-ups a second, publisher i
    sending in slot i % SLOTS of each frame interval."""
    loop = asyncio.get_running_loop()
    by_slot = [parties[s::SLOTS] for s in range(SLOTS)]
    interval = 1 / (FPS * SLOTS)
    start = loop.time()
    tick = 0
    while True:
        lag = loop.time() - (start + tick * interval)
        if lag < 0:
            await asyncio.sleep(-lag)
        else:
            stats.max_lag_s = max(stats.max_lag_s, lag)
            if lag > 1 / FPS:
                stats.late += 1
            await asyncio.sleep(0)  # let the subscribers' datagrams in
        frame_tick, slot = divmod(tick, SLOTS)
        for party in by_slot[slot]:
            party.send_frame(clip, frame_tick)
        tick += 1
        stats.ticks = tick


def totals(parties: list[Party]) -> tuple[Counts, Counts]:
    sent, got = Counts(), Counts()
    for p in parties:
        for total, c in ((sent, p.sent), (got, p.received)):
            total.packets += c.packets
            total.bytes += c.bytes
            total.frames += c.frames
            total.failures += c.failures
            total.gaps += c.gaps
    return sent, got


def delta(a: Counts, b: Counts) -> Counts:
    return Counts(
        b.packets - a.packets,
        b.bytes - a.bytes,
        b.frames - a.frames,
        b.failures - a.failures,
        b.gaps - a.gaps,
    )


@dataclass(frozen=True)
class Result:
    forwarding: str
    calls: int
    legs: int
    elapsed_s: float
    sent: Counts
    received: Counts
    leg_mbps: list[float]
    """Received bitrate of each subscriber (SRTP datagrams)."""
    server_cpu_s: float
    server_user_s: float
    server_packets: int
    server_frames: int
    server_dropped: int
    server_skipped: int
    server_decoded: int
    generator_cpu_s: float
    ticker: TickerStats
    setup_s: float
    idle_cores: float
    """Server CPU (share of a core) with every call connected and no media yet."""
    server_wait_s: float
    machine_busy: float
    """Share of all CPUs' time not idle (any process), over the window."""
    machine_steal: float
    """Share of all CPUs' time stolen by the hypervisor."""
    udp_drops: int

    @property
    def server_cores(self) -> float:
        return self.server_cpu_s / self.elapsed_s

    @property
    def generator_cores(self) -> float:
        return self.generator_cpu_s / self.elapsed_s

    @property
    def delivered(self) -> float:
        return self.received.packets / max(1, self.sent.packets)

    @property
    def legs_per_core(self) -> float:
        return self.legs / self.server_cores if self.server_cpu_s > 0 else float("inf")

    @property
    def forwarded_legs_per_core(self) -> float:
        """Legs per core counting only what the SFU forwarded (legs x forwarded / sent
        frames): the same as ``legs_per_core`` when everything was forwarded."""
        if self.server_cpu_s <= 0 or self.sent.frames == 0:
            return float("inf")
        return self.legs * self.server_frames / self.sent.frames / self.server_cores

    @property
    def sustained(self) -> bool:
        return (
            abs(self.delivered - 1) <= MAX_DELIVERY_ERROR
            and self.server_cores < MAX_SERVER_CPU
            and self.server_wait_s < MAX_SERVER_WAIT * self.elapsed_s
            and self.received.failures == 0
            and self.generator_cores < MAX_GENERATOR_CPU
            and self.ticker.late <= MAX_LATE_TICKS * max(1, self.ticker.ticks)
        )


async def wait_connected(
    server: ServerProcess, parties: list[Party], calls: int, limit_s: float
) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        states = [p.pc.connectionState for p in parties]
        failed = [
            f"{p.call}/{p.party}"
            for p, s in zip(parties, states, strict=True)
            if s in ("failed", "closed")
        ]
        if failed:
            raise RuntimeError(f"connection failed: {', '.join(failed[:5])}")
        if all(s == "connected" for s in states):
            s: ServerSample = await server.call("sample")
            if s.legs_connected == 2 * calls:
                return
        if time.monotonic() > deadline:
            waiting = sum(s != "connected" for s in states)
            raise RuntimeError(
                f"{waiting} of {len(parties)} clients not connected after {limit_s:.0f} s"
            )
        await asyncio.sleep(0.1)


async def run_calls(
    clip: Clip, calls: int, forwarding: Forwarding, seconds: float, warmup: float
) -> Result:
    setup_start = time.monotonic()
    server = ServerProcess(forwarding, calls)
    parties = [Party(call_id(n), party) for n in range(calls) for party in PARTIES]
    ticker = TickerStats()
    pacing: asyncio.Task[None] | None = None
    try:
        await server.call("sample", limit_s=60.0)  # the child is up (spawn imports)
        offers = await asyncio.gather(*(p.offer() for p in parties))
        for party, offer in zip(parties, offers, strict=True):
            await party.accept(await server.answer(party.call, party.party, offer))
        await wait_connected(server, parties, calls, limit_s=30.0 + 0.5 * calls)
        setup_s = time.monotonic() - setup_start
        # What the connected calls cost with no media (ICE consent checks, RTCP timers).
        idle0: ServerSample = await server.call("sample")
        idle_t0 = time.monotonic()
        await asyncio.sleep(IDLE_SECONDS)
        idle1: ServerSample = await server.call("sample")
        idle_cores = (idle1.user_s + idle1.sys_s - idle0.user_s - idle0.sys_s) / (
            time.monotonic() - idle_t0
        )
        # Staggered starts over one keyframe interval: keyframes spread, not all at once.
        for i, party in enumerate(parties):
            party.attach(start_delay_frames=i * KEYFRAME_EVERY // len(parties))
        pacing = asyncio.ensure_future(pace(parties, clip.frames, ticker))
        await asyncio.sleep(KEYFRAME_EVERY / FPS + warmup)
        if pacing.done():
            pacing.result()  # raises what stopped it

        ticks0 = ticker.ticks
        ticker.late = 0  # count lateness in the measured window only
        ticker.max_lag_s = 0.0
        s0: ServerSample = await server.call("sample")
        g0 = os.times()
        m0 = machine_sample()
        t0 = time.monotonic()
        sent0, got0 = totals(parties)
        bytes0 = [p.received.bytes for p in parties]
        await asyncio.sleep(seconds)
        s1: ServerSample = await server.call("sample")
        g1 = os.times()
        m1 = machine_sample()
        elapsed = time.monotonic() - t0
        sent1, got1 = totals(parties)
        bytes1 = [p.received.bytes for p in parties]
        window = TickerStats(ticker.ticks - ticks0, ticker.late, ticker.max_lag_s)
        if pacing.done():
            pacing.result()
    finally:
        if pacing is not None:
            pacing.cancel()
            await asyncio.gather(pacing, return_exceptions=True)
        closing = asyncio.gather(*(p.close() for p in parties), return_exceptions=True)
        try:
            await asyncio.wait_for(closing, timeout=30.0)
        except TimeoutError:
            print("  (some client peer connections did not close within 30 s)")
        await server.stop()

    return Result(
        forwarding=forwarding,
        calls=calls,
        legs=2 * calls,
        elapsed_s=elapsed,
        sent=delta(sent0, sent1),
        received=delta(got0, got1),
        leg_mbps=[(b1 - b0) * 8 / elapsed / 1e6 for b0, b1 in zip(bytes0, bytes1, strict=True)],
        server_cpu_s=(s1.user_s + s1.sys_s) - (s0.user_s + s0.sys_s),
        server_user_s=s1.user_s - s0.user_s,
        server_packets=s1.packets_forwarded - s0.packets_forwarded,
        server_frames=s1.frames_forwarded - s0.frames_forwarded,
        server_dropped=s1.frames_dropped - s0.frames_dropped,
        server_skipped=s1.frames_skipped - s0.frames_skipped,
        server_decoded=s1.decoded_frames,
        generator_cpu_s=(g1.user + g1.system) - (g0.user + g0.system),
        ticker=window,
        setup_s=setup_s,
        idle_cores=idle_cores,
        server_wait_s=s1.wait_s - s0.wait_s,
        machine_busy=1 - share(m0, m1, 3, 4),
        machine_steal=share(m0, m1, 7),
        udp_drops=m1.udp_rcvbuf_errors - m0.udp_rcvbuf_errors,
    )


def share(m0: MachineSample, m1: MachineSample, *fields: int) -> float:
    """The share of all CPU ticks between two samples that went to ``fields`` of /proc/stat."""
    if len(m0.cpu_ticks) < 8 or len(m1.cpu_ticks) < 8:
        return 0.0
    # guest time (fields 8, 9) is already counted in user and nice
    diff = [b - a for a, b in zip(m0.cpu_ticks[:8], m1.cpu_ticks[:8], strict=True)]
    total = sum(diff)
    return sum(diff[f] for f in fields) / total if total > 0 else 0.0


def show(r: Result) -> None:
    e = r.elapsed_s
    sent_mbps = r.sent.bytes * 8 / e / 1e6 / r.legs
    got_mbps = statistics.fmean(r.leg_mbps)
    frames_ratio = r.received.frames / max(1, r.sent.frames)
    unit = "frames" if r.forwarding == "frame" else "packets"
    print(
        f"[{r.forwarding}] {r.calls} calls, {r.legs} legs, {e:.1f} s measured"
        f" (set-up {r.setup_s:.1f} s)"
    )
    print(
        f"  sent by publishers         : {r.sent.packets / e:.0f} pkt/s, {r.sent.frames / e:.0f}"
        f" frames/s, {sent_mbps:.3f} Mbps per leg"
    )
    print(
        f"  received by subscribers    : {r.received.packets / e:.0f} pkt/s,"
        f" {r.received.frames / e:.0f} frames/s, {got_mbps:.3f} Mbps per leg"
        f" (min {min(r.leg_mbps):.3f}, max {max(r.leg_mbps):.3f})"
    )
    print(
        f"  delivered / sent           : packets {r.delivered:.4f}, frames {frames_ratio:.4f};"
        f" SRTP unprotect failures {r.received.failures}, sequence gaps {r.received.gaps}"
    )
    packets = f"{r.server_packets} packets, " if r.server_packets else ""
    print(
        f"  SFU forwarded              : {packets}{r.server_frames} frames"
        f" (dropped {r.server_dropped}, skipped {r.server_skipped} {unit};"
        f" decoded by aiortc {r.server_decoded})"
    )
    per_frame = r.server_cpu_s * 1000 / max(1, r.server_frames)
    per_packet = (
        f", {r.server_cpu_s * 1e6 / r.server_packets:.1f} us per packet" if r.server_packets else ""
    )
    print(
        f"  server CPU                 : {r.server_cores:.1%} of a core"
        f" (user {r.server_user_s / e:.1%}), {per_frame:.3f} ms per forwarded frame{per_packet};"
        f" {r.idle_cores:.1%} with no media"
    )
    print(
        f"  load generator CPU         : {r.generator_cores:.1%} of a core; ticks late by"
        f" > 1 frame {r.ticker.late} of {r.ticker.ticks},"
        f" max lag {r.ticker.max_lag_s * 1000:.1f} ms"
    )
    print(
        f"  machine                    : all CPUs {r.machine_busy:.0%} busy,"
        f" {r.machine_steal:.0%} stolen; server waited for a CPU"
        f" {r.server_wait_s / e:.1%} of the time; UDP receive-buffer drops {r.udp_drops}"
        f" (system-wide)"
    )
    verdict = "" if r.sustained else "  (lower bound / not sustained: see above)"
    print(
        f"  forwarded 1 Mbps video legs per core: {r.legs_per_core:.0f}{verdict};"
        f" by frames the SFU forwarded: {r.forwarded_legs_per_core:.0f}"
    )


async def main(args: argparse.Namespace) -> int:
    print(
        f"bench.sfu_capacity: {platform.python_implementation()} {platform.python_version()},"
        f" {os.cpu_count()} CPUs, media.forwarding={args.forwarding}, calls {args.calls},"
        f" {args.seconds:.0f} s measured after {KEYFRAME_EVERY / FPS + args.warmup:.0f} s"
        f" (staggered start + warm-up), video only, 127.0.0.1, uvloop"
    )
    t = time.perf_counter()
    clip = encode_clip()
    print(
        f"clip: {CLIP_FRAMES} frames {WIDTH}x{HEIGHT} {FPS} fps VP8, keyframes at"
        f" {clip.keyframes}, {clip.bps / 1e6:.3f} Mbps encoded,"
        f" {clip.packets_per_second:.0f} packets/s (encoded in {time.perf_counter() - t:.1f} s)"
    )
    results = []
    for calls in args.calls:
        result = await run_calls(clip, calls, args.forwarding, args.seconds, args.warmup)
        show(result)
        results.append(result)
    print(f"summary ({args.forwarding}):")
    print(
        "  calls  legs  Mbps/leg  delivered  server CPU  ms/frame  gen CPU  legs/core  by forwarded"
    )
    for r in results:
        mark = "" if r.sustained else "  *"
        print(
            f"  {r.calls:5d} {r.legs:5d} {statistics.fmean(r.leg_mbps):9.3f}"
            f" {r.delivered:10.4f} {r.server_cores:10.1%}"
            f" {r.server_cpu_s * 1000 / max(1, r.server_frames):9.3f}"
            f" {r.generator_cores:8.1%} {r.legs_per_core:10.0f}"
            f" {r.forwarded_legs_per_core:13.0f}{mark}"
        )
    if any(not r.sustained for r in results):
        print(
            f"  * not a sustained figure: delivered/sent off by over {MAX_DELIVERY_ERROR:.0%},"
            f" server above {MAX_SERVER_CPU:.0%} of a core or waiting for a CPU over"
            f" {MAX_SERVER_WAIT:.0%} of the time, SRTP failures, the generator above"
            f" {MAX_GENERATOR_CPU:.0%} of a core or its ticker late by a"
            f" frame in over {MAX_LATE_TICKS:.0%} of its wake-ups"
        )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sfu_capacity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--calls",
        type=lambda s: [int(n) for n in s.split(",") if n],
        default=[8, 32, 64],
        help="comma-separated numbers of 1:1 calls, one fresh server each (default 8,32,64)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds after the staggered start"
    )
    parser.add_argument(
        "--forwarding",
        choices=["rtp", "frame"],
        default="rtp",
        help="media.forwarding of the SFU (default rtp)",
    )
    args = parser.parse_args(argv)
    if not args.calls or min(args.calls) < 1:
        parser.error("--calls needs positive numbers")
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main(args))


if __name__ == "__main__":
    sys.exit(run())
