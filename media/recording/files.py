"""Recording files on disk: where they go, how they are named, what a directory holds.

``<record_dir>/<call_id>/<party>.webm`` (``.mkv`` for H264) holds one party's audio and
video; ids are made safe as path components (``safe_name``). A file is written as
``<party>.webm.part`` and renamed to ``<party>.webm`` once closed cleanly. A file whose
muxing failed is closed as far as possible and renamed ``<party>.failed.webm`` (logged); one
that got no media is removed. A ``.part`` left by a crashed process is listed as incomplete
by ``scan_recordings``. A name is never reused: a second recording of the same party in the
same call (e.g. after a restart) is ``<party>-2.webm``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class Recording:
    """One finished recording file: one party of one call."""

    call_id: str
    """The call id (for a file only found on disk: its directory's name, the id made safe)."""
    party: str
    path: Path
    size_bytes: int
    duration_s: float | None
    """From the party's first to its last packet; None if not known (an earlier process)."""
    start_s: float | None
    """Where the file starts on the call's timeline (its first pts); None if not known."""
    complete: bool
    """False for a file whose muxing failed or that a crashed process never finished."""


@dataclass(frozen=True, slots=True)
class PartyPaths:
    """Where one party's file is written (``part``), and where it ends up."""

    part: Path
    final: Path
    failed: Path


def safe_name(text: str) -> str:
    """``text`` as one path component: [A-Za-z0-9_-] kept, anything else replaced, plus a
    digest of the original when something had to be replaced (so names stay distinct)."""
    safe = _SAFE.sub("_", text)[:80]
    if safe != text or not safe:
        safe = f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    return safe


def claim_paths(directory: Path, party: str, suffix: str) -> PartyPaths:
    """A name for ``party``'s new file in ``directory`` that no earlier file has: its
    ``.part`` is created (empty) here, so a concurrent writer cannot take it too."""
    base = safe_name(party)
    for n in range(1, 1000):
        stem = base if n == 1 else f"{base}-{n}"
        final = directory / f"{stem}{suffix}"
        part = directory / f"{stem}{suffix}.part"
        if final.exists() or (directory / f"{stem}.failed{suffix}").exists():
            continue
        try:
            os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))
        except FileExistsError:
            continue
        return PartyPaths(part, final, directory / f"{stem}.failed{suffix}")
    # A thousand recordings of one party in one call.
    raise FileExistsError(f"no free file name for {party!r} in {directory}")  # pragma: no cover


def scan_recordings(
    record_dir: Path, known: Mapping[Path, Recording], active: Iterable[Path] = ()
) -> list[Recording]:
    """Every recording file under ``record_dir`` (blocking I/O: run it in a thread).

    ``known`` supplies what this process measured (party, duration); ``active`` are call
    directories still being written, whose ``.part`` files are skipped.
    """
    busy = {p.resolve() for p in active}
    found: list[Recording] = []
    try:
        call_dirs = sorted(p for p in record_dir.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    for call_dir in call_dirs:
        for path in sorted(call_dir.iterdir()):
            name = path.name
            if name.endswith(".part"):
                if call_dir.resolve() in busy:
                    continue
                stem, complete = name.removesuffix(".part"), False
            elif name.endswith((".webm", ".mkv")):
                stem = name.rsplit(".", 1)[0]
                complete = not stem.endswith(".failed")
            else:
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            seen = known.get(path)
            party = seen.party if seen is not None else stem.split(".", 1)[0]
            found.append(
                Recording(
                    call_id=seen.call_id if seen is not None else call_dir.name,
                    party=party,
                    path=path,
                    size_bytes=size,
                    duration_s=seen.duration_s if seen is not None else None,
                    start_s=seen.start_s if seen is not None else None,
                    complete=complete and (seen.complete if seen is not None else True),
                )
            )
    return found
