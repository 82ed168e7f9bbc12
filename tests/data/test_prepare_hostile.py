"""prepare with hostile input: unsafe names, outputs overlapping inputs, --overwrite, write failures,
a killed parent, label matching, and the full-resolution truth / mask rules. Synthetic: runs everywhere."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import typer
from typer.testing import CliRunner

from pneumoseg.data.cache import read_truth
from pneumoseg.data.prepare import prepare_dicom, prepare_png
from pneumoseg.errors import DataError
from pneumoseg.io.images import read_image, read_mask, resize_mask, write_png
from pneumoseg.io.rle import rle_encode
from tests.helpers.dicom import NO_UID, write_dicom

RNG = np.random.default_rng(7)


def _app() -> typer.Typer:
    from pneumoseg.cli import prepare as cmd

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    cmd.register(app)
    app.callback()(lambda: None)  # keep `prepare` a sub-command
    return app


def _invoke(*args: str) -> tuple[int, list[str]]:
    res = CliRunner().invoke(_app(), ["prepare", *args, "--no-progress"])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception  # no traceback
    return res.exit_code, [line for line in res.output.splitlines() if line.strip()]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _image(h: int = 300, w: int = 400) -> np.ndarray:
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def _blob(h: int = 300, w: int = 400, cy: int = 120, cx: int = 150, r: int = 60) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + ((xx - cx) * 0.7) ** 2 < r**2


def _png_dir(root: Path, names: dict[str, np.ndarray | None]) -> Path:
    for name, mask in names.items():
        write_png(root / "images" / f"{name}.png", _image())
        if mask is not None:
            write_png(root / "masks" / f"{name}.png", mask)
    return root


# ---------------------------------------------------------------- 1. names from the input


def test_unsafe_uids_and_stems_fail_alone_and_write_nothing_outside(tmp_path):
    src, out = tmp_path / "dcm", tmp_path / "cache"
    good = write_dicom(src / "scan one.dcm", _image())  # an unsafe stem is fine: the UID names the file
    write_dicom(src / "evil.dcm", _image(), uid="../../escaped")
    write_dicom(src / "nul.dcm", _image(), uid="1.2.3\x00.4")
    write_dicom(src / "long.dcm", _image(), uid="1." + "2" * 70)
    write_dicom(src / "noid ok.dcm", _image(), uid=NO_UID)  # no UID: the stem would name the file
    write_dicom(src / "noid_ok.dcm", _image(), uid=NO_UID)
    (tmp_path / "rle.csv").write_text(f"ImageId, EncodedPixels\n{good}, {rle_encode(_blob())}\n")
    result = prepare_dicom(src, tmp_path / "rle.csv", out, size=256, workers=1, progress=False)
    assert result.n_done == 2 and result.n_failed == 4
    for name in ("evil.dcm", "nul.dcm", "long.dcm", "noid ok.dcm"):
        [line] = [f for f in result.failures if f"{name}:" in f]
        assert line.isprintable(), line  # the NUL is shown escaped, on one line
    assert "SOPInstanceUID '1.2.3\\\\x00.4' is not a valid DICOM UID" in " ".join(result.failures)
    assert sorted(pd.read_csv(out / "index.csv", dtype=str)["image_id"]) == sorted([good, "noid_ok"])
    assert not list(tmp_path.rglob("*escaped*"))
    assert {p.parent.name for p in out.rglob("*.png")} == {"images", "masks", "truth"}
    code, lines = _invoke("--dicom-dir", str(src), "--rle", str(tmp_path / "rle.csv"), "--out", str(out),
                          "--size", "256", "--workers", "2")
    assert code == 2 and lines[-1].startswith("error: 4 item(s) could not be prepared")


def test_png_stems_that_cannot_name_a_file_fail_alone(tmp_path):
    src = _png_dir(tmp_path / "png", {"ok": _blob(), "-rf": None, "a b": None, "x" * 201: None})
    result = prepare_png(src, tmp_path / "cache", size=256, workers=1, progress=False)
    assert result.n_done == 1 and result.n_failed == 3
    assert all("cannot name an output file" in f for f in result.failures)
    assert [p.name for p in (tmp_path / "cache" / "images").iterdir()] == ["ok.png"]


def test_two_files_with_one_uid_write_one_image(tmp_path):
    src = tmp_path / "dcm"
    uid = write_dicom(src / "a.dcm", _image())
    write_dicom(src / "b.dcm", _image(), uid=uid)  # a copy under another name: same output file
    (tmp_path / "rle.csv").write_text(f"ImageId, EncodedPixels\n{uid}, -1\n")
    result = prepare_dicom(src, tmp_path / "rle.csv", tmp_path / "cache", size=256, workers=2, progress=False)
    assert result.n_done == 1 and len(result.failures) == 1
    assert "b.dcm: duplicate image id" in result.failures[0] and "a.dcm" in result.failures[0]


# ---------------------------------------------------------------- 2. outputs that clobber inputs


def test_output_overlapping_an_input_is_refused_before_any_write(tmp_path):
    src = _png_dir(tmp_path / "png", {"a": _blob(), "b": None})
    before = _digest(tmp_path)
    for out in (src, src / "cache", src / "images", tmp_path):
        with pytest.raises(DataError, match="overlaps the input"):
            prepare_png(src, out, size=256, progress=False)
    dcm = tmp_path / "dcm"
    write_dicom(dcm / "a.dcm", _image())
    (dcm / "rle.csv").write_text("ImageId, EncodedPixels\na, -1\n")
    before = _digest(tmp_path)
    for out in (dcm, dcm / "sub", tmp_path):
        code, lines = _invoke("--dicom-dir", str(dcm), "--rle", str(dcm / "rle.csv"), "--out", str(out))
        assert code == 2 and len(lines) == 1 and "overlaps the input" in lines[0]
    assert _digest(tmp_path) == before and not (dcm / "sub").exists()


def test_overwrite_deletes_only_what_a_cache_owns(tmp_path):
    src = _png_dir(tmp_path / "png", {"a": _blob(), "b": None})
    user = tmp_path / "photos"
    (user / "images").mkdir(parents=True)
    (user / "images" / "holiday.png").write_bytes(b"precious")
    (user / "index.csv").write_text("mine\n")
    for overwrite in (False, True):
        with pytest.raises(DataError, match="not a pneumoseg cache"):
            prepare_png(src, user, size=256, progress=False, overwrite=overwrite)
    assert (user / "images" / "holiday.png").read_bytes() == b"precious" and (user / "index.csv").exists()
    cache = tmp_path / "cache"
    prepare_png(src, cache, size=256, workers=1, progress=False)
    (cache / "notes.txt").write_text("keep")
    (cache / "images" / "keep.jpg").write_bytes(b"keep")
    with pytest.raises(DataError, match="--overwrite"):
        prepare_png(src, cache, size=512, progress=False)
    result = prepare_png(src, cache, size=512, workers=1, progress=False, overwrite=True)
    assert result.n_done == 2 and json.loads((cache / "cache.json").read_text())["size"] == 512
    assert (cache / "notes.txt").read_text() == "keep" and (cache / "images" / "keep.jpg").exists()
    assert read_image(cache / "images" / "a.png").shape == (512, 512)


# ---------------------------------------------------------------- 5. labels: UID first, then stem


def test_labels_are_matched_by_uid_then_stem_as_explore_does(tmp_path):
    from pneumoseg.data.explore import explore

    src = tmp_path / "dcm"
    mask = _blob()
    by_uid = write_dicom(src / "scan_0001.dcm", _image())  # the CSV names the UID, not the file
    write_dicom(src / "legacy_name.dcm", _image())  # the CSV names the file
    healthy = write_dicom(src / "other.dcm", _image())  # no row at all
    rows = [f"{by_uid}, {rle_encode(mask)}", f"legacy_name, {rle_encode(mask[::-1])}"]
    (tmp_path / "rle.csv").write_text("ImageId, EncodedPixels\n" + "\n".join(rows) + "\n")
    result = prepare_dicom(src, tmp_path / "rle.csv", tmp_path / "cache", size=256, workers=1, progress=False)
    assert any("1 image(s) matched to their annotation rows by file name" in w for w in result.warnings)
    index = pd.read_csv(tmp_path / "cache" / "index.csv", dtype={"image_id": str}).set_index("image_id")
    assert index["matched_by"].to_dict() == {by_uid: "uid", "legacy_name": "stem", healthy: "none"}
    assert index["has_pneumothorax"].to_dict() == {by_uid: 1, "legacy_name": 1, healthy: 0}
    assert np.array_equal(read_truth(tmp_path / "cache", by_uid), mask)
    summary = explore(src, tmp_path / "rle.csv", tmp_path / "explore", n_samples=0, progress=False)
    meta = pd.read_csv(tmp_path / "explore" / "metadata.csv", dtype={"image_id": str}).set_index("image_id")
    for col in ("matched_by", "has_pneumothorax", "mask_area_px"):
        assert meta[col].to_dict() == index[col].to_dict(), col
    assert summary["n_matched_by_stem"] == 1 and summary["failures"] == []


# ---------------------------------------------------------------- 7. write failures


def test_write_failures_are_one_line_before_or_during_the_run(tmp_path, monkeypatch):
    src = _png_dir(tmp_path / "png", {"a": _blob(), "b": None})
    (tmp_path / "afile").write_text("x")
    code, lines = _invoke("--png-dir", str(src), "--out", str(tmp_path / "afile" / "cache"))
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "afile" in lines[0]
    import pneumoseg.data.prepare_items as prep

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(prep, "atomic_write_bytes", disk_full)
    code, lines = _invoke("--png-dir", str(src), "--out", str(tmp_path / "cache"), "--workers", "1")
    assert code == 2 and len(lines) == 1 and "No space left on device" in lines[0]
    assert not list((tmp_path / "cache").rglob("*.png"))


# ---------------------------------------------------------------- 8. killed parent, empty input, leftovers


def test_workers_die_with_a_killed_parent(tmp_path):
    src = tmp_path / "dcm"
    for k in range(100):
        write_dicom(src / f"f{k:03d}.dcm", _image(512, 512))
    (tmp_path / "rle.csv").write_text("ImageId, EncodedPixels\nf000, -1\n")
    out = tmp_path / "cache"
    code = (f"from pneumoseg.data.prepare import prepare_dicom\nif __name__ == '__main__':\n"
            f"    prepare_dicom({str(src)!r}, {str(tmp_path / 'rle.csv')!r}, {str(out)!r}, size=256, workers=2, "
            f"progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    family: list[psutil.Process] = []
    while time.monotonic() < deadline and proc.poll() is None:
        family = parent.children(recursive=True)
        if len(family) >= 3 and list((out / ".parts").glob("rec-*.json")):  # forkserver + 2 workers at work
            break
        time.sleep(0.01)
    assert proc.poll() is None and not (out / "index.csv").exists(), "prepare ended before it could be killed"
    family = parent.children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        p.kill()
    assert alive == [], [(p.pid, p.name()) for p in alive]


def test_empty_input_leaves_nothing_that_blocks_another_size(tmp_path):
    empty, out = tmp_path / "empty", tmp_path / "cache"
    empty.mkdir()
    (tmp_path / "rle.csv").write_text("ImageId, EncodedPixels\na, -1\n")
    with pytest.raises(DataError, match=r"no \.dcm files"):
        prepare_dicom(empty, tmp_path / "rle.csv", out, size=512, progress=False)
    assert not (out / ".parts").exists()
    # A run that recorded nothing (killed at once) does not block one at another size either.
    (out / ".parts").mkdir(parents=True)
    (out / ".parts" / "_run.json").write_text('{"layout": "dicom", "size": 1024}')
    write_dicom(tmp_path / "dcm" / "a.dcm", _image())
    assert prepare_dicom(tmp_path / "dcm", tmp_path / "rle.csv", out, size=256, progress=False).n_done == 1


# ---------------------------------------------------------------- truth at the source size, mask rules


@pytest.mark.parametrize("rule", ["any", "fraction", "soft"])
def test_truth_keeps_the_source_mask_and_masks_follow_the_rule(tmp_path, rule):
    mask = _blob() | _blob(cy=250, cx=350, r=3)  # a big region and a small one
    src = _png_dir(tmp_path / "png", {"pos": mask, "neg": None})
    out = tmp_path / "cache"
    code, lines = _invoke("--png-dir", str(src), "--out", str(out), "--size", "256", "--mask-rule", rule)
    assert code == 0, lines
    assert json.loads((out / "cache.json").read_text())["mask_rule"] == rule
    stored = read_image(out / "masks" / "pos.png")
    expected = resize_mask(mask, 256, rule=rule)  # type: ignore[arg-type]
    assert np.array_equal(stored, expected if rule == "soft" else expected.astype(np.uint8) * 255)
    assert np.array_equal(read_truth(out, "pos"), mask) and not read_truth(out, "neg").any()
    assert read_truth(out, "neg").shape == (300, 400)
    index = pd.read_csv(out / "index.csv").set_index("image_id")
    assert (index.loc["pos", "orig_height"], index.loc["pos", "orig_width"]) == (300, 400)
    assert index.loc["pos", "mask_area_px"] == mask.sum()
    other = "any" if rule != "any" else "soft"
    code, lines = _invoke("--png-dir", str(src), "--out", str(out), "--size", "256", "--mask-rule", other)
    assert code == 2 and "--overwrite" in lines[-1] and f"mask rule {rule!r}" in lines[-1]


def test_read_truth_errors_and_bad_rule(tmp_path):
    src = _png_dir(tmp_path / "png", {"pos": _blob()})
    out = tmp_path / "cache"
    prepare_png(src, out, size=256, workers=1, progress=False)
    for bad in ("../png/images/pos", "a/b", ""):
        with pytest.raises(DataError, match="cannot name an output file"):
            read_truth(out, bad)
    with pytest.raises(DataError, match="ImageId ghost not found"):
        read_truth(out, "ghost")
    for p in (out / "truth").iterdir():
        p.unlink()
    (out / "truth").rmdir()  # as a cache made before truth/ existed
    with pytest.raises(DataError, match=r"older pneumoseg.*re-run"):
        read_truth(out, "pos")
    assert read_mask(out / "masks" / "pos.png").any()
    code, lines = _invoke("--png-dir", str(src), "--out", str(tmp_path / "c2"), "--mask-rule", "max")
    assert code == 2 and len(lines) == 1 and "any, fraction, soft" in lines[0]


def test_png_set_without_masks_is_refused_before_any_write(tmp_path):
    """Issue 21: a PNG set with no masks/ (or an empty one) was prepared with every image labelled healthy."""
    src = _png_dir(tmp_path / "png", {"a": None, "b": None})
    out = tmp_path / "cache"
    for _ in range(2):  # no masks/ at all, then an empty masks/
        with pytest.raises(DataError, match=r"masks: no masks .*prepared as healthy.*pneumoseg predict"):
            prepare_png(src, out, size=256, workers=1, progress=False)
        code, lines = _invoke("--png-dir", str(src), "--out", str(out))
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "no masks" in lines[0]
        assert not out.exists()
        (src / "masks").mkdir(exist_ok=True)
