"""images.py: reading (gray, RGB, 16-bit, masks), deterministic atomic PNG writes, resizing rules."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pneumoseg.errors import DataError
from pneumoseg.images import encode_png, read_image, read_mask, resize_image, resize_mask, write_png
from tests.shared_data import SIIM


def _ramp(h: int = 37, w: int = 53) -> np.ndarray:
    return (np.arange(h * w, dtype=np.int64).reshape(h, w) % 256).astype(np.uint8)


def test_write_then_read_roundtrip_and_no_temp_left(tmp_path):
    img = _ramp()
    write_png(tmp_path / "sub" / "a.png", img)
    assert np.array_equal(read_image(tmp_path / "sub" / "a.png"), img)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.png"]


def test_write_png_is_deterministic_bytes(tmp_path):
    img = _ramp(64, 64)
    write_png(tmp_path / "a.png", img)
    write_png(tmp_path / "b.png", img.copy())
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes() == encode_png(img)


def test_bool_mask_written_as_0_255(tmp_path):
    mask = np.zeros((8, 9), dtype=bool)
    mask[2:4, 3:7] = True
    write_png(tmp_path / "m.png", mask)
    raw = cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 255}
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)


def test_read_mask_accepts_0_1_masks(tmp_path):
    mask = np.zeros((5, 5), dtype=np.uint8)
    mask[1, 1] = 1
    write_png(tmp_path / "m01.png", mask)
    assert read_mask(tmp_path / "m01.png").sum() == 1


def test_rgb_is_converted_to_gray(tmp_path):
    bgr = np.zeros((4, 6, 3), dtype=np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 100, 200
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    gray = read_image(tmp_path / "c.png")
    assert gray.shape == (4, 6) and gray.dtype == np.uint8
    assert int(gray[0, 0]) == int(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[0, 0])


def test_rgba_and_jpeg(tmp_path):
    bgra = np.full((4, 4, 4), 77, dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "c.png"), bgra)
    assert read_image(tmp_path / "c.png").shape == (4, 4)
    cv2.imwrite(str(tmp_path / "j.jpg"), np.full((16, 16), 128, np.uint8))
    assert abs(int(read_image(tmp_path / "j.jpg")[8, 8]) - 128) <= 2


def test_16bit_png_is_scaled(tmp_path):
    deep = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    assert read_image(tmp_path / "d.png").tolist() == [[0, 1, 128, 255]]


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n truncated"])
def test_unreadable_file_names_it(tmp_path, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=r"bad\.png"):
        read_image(bad)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png"):
        read_mask(tmp_path / "nope.png")


def test_resize_image_area_interpolation():
    img = np.zeros((4, 4), np.uint8)
    img[:2, :2] = 200  # one 2x2 block -> one output pixel of mean 200; a 2x2 mixed block averages
    img[2, 2] = 100
    out = resize_image(img, 2)
    assert out.dtype == np.uint8 and out.tolist() == [[200, 0], [0, 25]]
    assert resize_image(_ramp(), (10, 20)).shape == (10, 20)


def test_resize_mask_keeps_single_pixel_and_thin_line():
    mask = np.zeros((1024, 1024), dtype=bool)
    mask[500, 3] = True  # a single pixel
    mask[:, 700] = True  # a 1-pixel-wide vertical line
    out = resize_mask(mask, 256)
    assert out.dtype == bool and out.shape == (256, 256)
    assert out[125, 0]  # 500 // 4, 3 // 4
    assert out[:, 175].all()  # 700 // 4: the line stays connected
    assert out.sum() == 1 + 256


def test_resize_mask_non_integer_factor_and_any_rule():
    mask = np.zeros((1000, 1000), dtype=bool)
    mask[999, 999] = True
    out = resize_mask(mask, 256)
    assert out[255, 255] and out.sum() == 1
    # Any foreground overlap counts: a downscaled mask covers the area-interpolated one.
    rng = np.random.default_rng(0)
    blob = rng.random((300, 300)) > 0.995
    covered = cv2.resize(blob.astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA) > 0
    assert np.array_equal(resize_mask(blob, 64), covered)


def test_resize_mask_upscale_is_nearest():
    mask = np.array([[1, 0], [0, 1]], dtype=bool)
    out = resize_mask(mask, 4)
    assert out.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


def test_resize_mask_mixed_axes_and_identity():
    mask = np.zeros((8, 2), dtype=bool)
    mask[5, 1] = True
    out = resize_mask(mask, (4, 4))  # height shrinks (any), width grows (nearest)
    assert out.tolist() == [[0] * 4, [0] * 4, [0, 0, 1, 1], [0] * 4]
    same = resize_mask(mask, (8, 2))
    assert np.array_equal(same, mask) and same is not mask


def test_resize_rejects_bad_size():
    with pytest.raises(DataError, match="positive"):
        resize_mask(np.zeros((4, 4), bool), 0)
    with pytest.raises(DataError, match="2-D"):
        resize_mask(np.zeros((4, 4, 3), bool), 2)


@pytest.mark.skipif(not (SIIM / "png").is_dir(), reason=f"real SIIM PNG sample not found at {SIIM}")
def test_real_png_sample_reads_as_uint8_gray_and_binary_mask():
    name = min((SIIM / "png" / "images").iterdir()).name
    img = read_image(SIIM / "png" / "images" / name)
    mask = read_mask(SIIM / "png" / "masks" / name)
    assert img.shape == mask.shape == (1024, 1024) and img.dtype == np.uint8 and mask.dtype == bool
    assert 0 < mask.sum() < mask.size
    small = resize_mask(mask, 256)
    assert small.sum() >= mask.sum() / 16  # the any-rule never loses area
