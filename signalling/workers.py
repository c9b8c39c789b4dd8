"""`jalwa serve --workers N`: N worker processes on one machine sharing one port.

Each worker is a whole node (its own node id, ``<node_id>-w<i>``) on the shared stores, and
listens with SO_REUSEPORT, so the kernel spreads new connections over them; a user's two
connections may land on different workers, which the node bus handles as it does for
separate machines. This process only supervises: it starts the workers, starts again one
that dies (at most once a second per worker, so a worker that cannot start does not spin),
and on SIGTERM/SIGINT passes the signal on and waits for them to drain.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("jalwa.workers")
RESTART_EVERY_S = 1.0


@dataclass
class _Worker:
    index: int
    node_id: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = field(default=0.0)


class Supervisor:
    def __init__(
        self,
        *,
        workers: int,
        host: str,
        port: int,
        node_id: str,
        environ: Mapping[str, str],
        stop_timeout_s: float,
    ) -> None:
        self._host, self._port = host, port
        self._env = dict(environ)
        self._stop_timeout = stop_timeout_s
        self._workers = [_Worker(i, f"{node_id}-w{i}") for i in range(workers)]
        self._stopping = False

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for worker in self._workers:
                self._start(worker)
            log.info(
                "supervising %d workers on http://%s:%d", len(self._workers), self._host, self._port
            )
            while not self._stopping:
                for worker in self._workers:
                    self._restart_if_dead(worker)
                time.sleep(0.2)
            return self._drain()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:  # a second signal: no more waiting
            for worker in self._workers:
                if worker.proc is not None and worker.proc.poll() is None:
                    worker.proc.kill()
        self._stopping = True

    def _start(self, worker: _Worker) -> None:
        env = {**self._env, "JALWA_NODE_ID": worker.node_id}
        command = [sys.executable, "-m", "signalling.cli", "serve", "--reuse-port"]
        command += ["--host", self._host, "--port", str(self._port)]
        worker.proc = subprocess.Popen(command, env=env)  # noqa: S603 - our own interpreter
        worker.started_at = time.monotonic()
        log.info("worker %s started (pid %d)", worker.node_id, worker.proc.pid)

    def _restart_if_dead(self, worker: _Worker) -> None:
        assert worker.proc is not None
        code = worker.proc.poll()
        if code is None:
            return
        if time.monotonic() - worker.started_at < RESTART_EVERY_S:
            return  # it died young: wait a little before the next try
        log.warning("worker %s exited with %s; starting it again", worker.node_id, code)
        self._start(worker)

    def _drain(self) -> int:
        running = [w.proc for w in self._workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
        log.info("all workers stopped")
        return 0
