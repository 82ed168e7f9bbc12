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
