from __future__ import annotations

import os
import stat

import pytest

from pneumoseg.util.atomic import atomic_path, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix.endswith(".png") and tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_long_name_that_fits_is_written(tmp_path) -> None:
    """A 240-character stem + ".png" fits in 255 bytes; its temporary name must fit too."""
    target = tmp_path / ("a" * 240 + ".png")
    with atomic_path(target) as tmp:
        assert len(tmp.name) < 60 and tmp.name.startswith(".") and tmp.suffix == ".png"
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    atomic_write_text(tmp_path / ("b" * 250), "no suffix")  # 250 characters, no extension
    assert (tmp_path / ("b" * 250)).read_text() == "no suffix"


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths passed to os.fsync from now on (read from /proc/self/fd at the call)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_durable_writes_fsync_the_file_and_its_folder(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20 item 8: nothing was fsync'd, so the node's "on disk before acknowledging" did not survive a
    power loss. Durable writes sync the file before the rename and the folder after; plain ones sync nothing."""
    synced = _record_fsyncs(monkeypatch)
    atomic_write_text(tmp_path / "plain.txt", "x")
    assert synced == []
    atomic_write_text(tmp_path / "durable.txt", "x", durable=True)
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".durable.")) and synced[1] == str(tmp_path)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_queue_manifest_and_parts_are_durable(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pneumoseg.inference.archive.manifest import record_invocation
    from pneumoseg.inference.archive.writers import PartFiles
    from pneumoseg.pacs.queue import InstanceQueue

    synced = _record_fsyncs(monkeypatch)
    q = InstanceQueue(tmp_path / "q")
    q.offer("1.2.3", b"data")
    q.close()
    folders = {p for p in synced if not os.path.basename(p).startswith(".")}
    assert {str(tmp_path / "q" / "instances"), str(tmp_path / "q" / "state")} <= folders
    synced.clear()
    PartFiles(tmp_path / "out", "tok", 0).commit([{"key": "a"}])
    assert str(tmp_path / "out" / ".parts") in synced
    synced.clear()
    record_invocation(tmp_path / "out", {"settings": 1}, None, {"argv": []})
    assert str(tmp_path / "out") in synced


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_names_the_path(tmp_path) -> None:
    """Issue 20 item 8: a write on a full disk raised an OSError naming no file ("cannot write (OSError)")."""
    from pneumoseg.util.paths import os_error_line

    target = tmp_path / "out.png"
    with pytest.raises(OSError) as info, atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
        with open("/dev/full", "wb") as full:  # the kernel's always-full device: ENOSPC on flush
            full.write(b"x" * 8192)
    assert info.value.filename == str(target)
    assert os_error_line(info.value) == f"{target}: cannot write (No space left on device)"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
