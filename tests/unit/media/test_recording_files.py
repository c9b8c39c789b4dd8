"""media/recording/files.py: file names and what a recording directory holds."""

from __future__ import annotations

from pathlib import Path

from media.recording.files import Recording, safe_name, scan_recordings


def test_safe_name_keeps_ids_in_one_directory() -> None:
    assert safe_name("call-1_a") == "call-1_a"
    for bad in ("../../etc", "a/b", "", ".", "ü"):
        name = safe_name(bad)
        assert "/" not in name and name not in ("", ".", "..") and not name.startswith(".")
    assert safe_name("a/b") != safe_name("a_b")


def test_scan_lists_finished_failed_and_orphaned_files(tmp_path: Path) -> None:
    done = tmp_path / "c1"
    done.mkdir()
    (done / "alice.webm").write_bytes(b"x" * 10)
    (done / "bob.failed.webm").write_bytes(b"x" * 5)
    crashed = tmp_path / "c2"
    crashed.mkdir()
    (crashed / "carol.webm.part").write_bytes(b"x")
    busy = tmp_path / "c3"
    busy.mkdir()
    (busy / "dan.webm.part").write_bytes(b"x")
    (busy / "notes.txt").write_bytes(b"x")
    known = {
        done / "alice.webm": Recording("c/1", "Alice!", done / "alice.webm", 10, 3.5, 0.2, True)
    }
    found = {r.path.name: r for r in scan_recordings(tmp_path, known, active={busy})}
    assert set(found) == {"alice.webm", "bob.failed.webm", "carol.webm.part"}
    assert found["alice.webm"] == Recording(
        "c/1", "Alice!", done / "alice.webm", 10, 3.5, 0.2, True
    )
    assert (found["bob.failed.webm"].party, found["bob.failed.webm"].complete) == ("bob", False)
    assert found["carol.webm.part"].complete is False
    assert found["carol.webm.part"].duration_s is None
    assert scan_recordings(tmp_path / "missing", {}) == []
