"""Session.send_frame writes straight to the socket only when nothing waits before the
frame; otherwise the frame queues behind the others (the writer task's order)."""

from __future__ import annotations

from signalling.auth import Identity, Role
from signalling.clock import ManualClock
from signalling.session import Session


class Socket:
    """A write_now that takes frames while ``free``."""

    def __init__(self) -> None:
        self.free = True
        self.written: list[bytes] = []

    def __call__(self, frame: bytes) -> bool:
        if self.free:
            self.written.append(frame)
        return self.free


def session(socket: Socket) -> Session:
    s = Session(
        Identity("hal", Role.HOST, "Hal"),
        clock=ManualClock(),
        send_queue_max=8,
        send_queue_max_bytes=1024,
        rate_per_s=5,
        rate_burst=5,
        resume_frames=10,
        resume_bytes=4096,
    )
    s.write_now = socket
    s.count_from_here()
    return s


def test_nothing_queued_goes_straight_out_and_is_counted_for_a_resume() -> None:
    socket = Socket()
    s = session(socket)
    s.send_frame(b"one")
    s.send_frame(b"two")
    assert socket.written == [b"one", b"two"]
    assert s.pop() is None and s.queued_bytes == 0
    assert s.seq == 2
    first, kept = s.detach(lambda frame: None)
    assert (first, kept) == (1, [b"one", b"two"])  # a resume still gives them back


def test_a_frame_never_overtakes_one_that_queued() -> None:
    socket = Socket()
    s = session(socket)
    socket.free = False  # e.g. the socket has bytes pending
    s.send_frame(b"queued")
    socket.free = True  # the socket drained, but the writer has not taken the frame yet
    s.send_frame(b"after")
    assert socket.written == []
    assert s.pop() == b"queued" and s.pop() == b"after" and s.pop() is None
    s.send_frame(b"direct")  # the writer took everything: the next goes straight out
    assert socket.written == [b"direct"]


def test_queue_bounds_still_hold_when_the_socket_is_busy() -> None:
    socket = Socket()
    socket.free = False
    s = session(socket)
    for _ in range(9):
        s.send_frame(b"x" * 10)
    assert s.aborted and s.close_reason == "slow consumer"
