"""images.py: reading (gray, RGB, 16-bit, masks), deterministic atomic PNG writes, resizing rules."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pneumoseg.errors import DataError
from pneumoseg.io.images import encode_bilevel_png, encode_png, read_image, read_mask, resize_image, resize_mask, write_png
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


def test_bilevel_png_roundtrip_and_pillow_agrees(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    mask = rng.random((37, 53)) > 0.7  # odd width: rows are padded to whole bytes in the file
    path = tmp_path / "m.png"
    path.write_bytes(encode_bilevel_png(mask))
    assert encode_bilevel_png(mask) == encode_bilevel_png(mask.astype(np.uint8) * 7)
    assert encode_bilevel_png(mask) == encode_bilevel_png(np.asfortranarray(mask))
    assert np.array_equal(read_mask(path), mask)
    assert set(np.unique(read_image(path)).tolist()) == {0, 255}
    with Image.open(path) as im:
        assert im.mode == "1" and np.array_equal(np.asarray(im), mask)
    with pytest.raises(DataError, match="2-D"):
        encode_bilevel_png(np.zeros((2, 2, 2), bool))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (37, 53), (64, 64), (257, 255)])
def test_fast_png_settings_decode_to_the_same_pixels_as_before(shape):
    """encode_png's filter/strategy and the numpy bilevel writer change the bytes, never the pixels:
    OpenCV and Pillow decode them to exactly the array OpenCV's former level-1 PNGs gave."""
    import io

    from PIL import Image

    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    img[: shape[0] // 2] = np.minimum(img[: shape[0] // 2], 3)  # long runs too, as in masks and borders
    mask = rng.random(shape) > 0.8
    mask[:, : shape[1] // 3] = False
    old_params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    cases = [(encode_png(img), cv2.imencode(".png", img, old_params)[1], img),
             (encode_png(np.asfortranarray(img)), cv2.imencode(".png", img, old_params)[1], img),
             (encode_bilevel_png(mask), cv2.imencode(".png", mask.view(np.uint8), [*old_params, cv2.IMWRITE_PNG_BILEVEL, 1])[1],
              mask.view(np.uint8) * np.uint8(255)),
             (encode_bilevel_png(np.asfortranarray(mask)), None, mask.view(np.uint8) * np.uint8(255))]
    for new, old, want in cases:
        got = cv2.imdecode(np.frombuffer(new, np.uint8), cv2.IMREAD_UNCHANGED)
        assert got.dtype == np.uint8 and got.shape == shape and np.array_equal(got, want)
        if old is not None:
            assert np.array_equal(got, cv2.imdecode(old, cv2.IMREAD_UNCHANGED))
        with Image.open(io.BytesIO(new)) as im:
            pil = np.asarray(im)
            assert np.array_equal(pil.astype(np.uint8) * np.uint8(255) if im.mode == "1" else pil, want)


def test_bilevel_png_refuses_an_empty_mask():
    with pytest.raises(DataError, match="non-empty 2-D"):
        encode_bilevel_png(np.zeros((0, 4), bool))


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


def _exact_fraction(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Reference covered fraction (float64, exact): replicate each source pixel h x w times
    (sizes become H*h x W*w, divisible by h and w), then average the (H x W)-pixel blocks."""
    big = np.repeat(np.repeat(mask.astype(np.float64), h, axis=0), w, axis=1)
    src_h, src_w = mask.shape
    return big.reshape(h, src_h, w, src_w).mean(axis=(1, 3))


@pytest.mark.parametrize(("src", "dst"), [((64, 64), (16, 16)), ((100, 70), (30, 21)), ((97, 61), (40, 25))])
def test_resize_mask_rules_match_exact_area_fractions(src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    # Blobs with boundaries, plus noise: every covered fraction from 0 to 1 occurs.
    mask = cv2.GaussianBlur(rng.random(src), (0, 0), 3) > 0.5
    mask ^= rng.random(src) > 0.97
    frac = _exact_fraction(mask, *dst)
    # Fractions within float32 noise of 0.5 may go either way; all others must agree exactly.
    clear = np.abs(frac - 0.5) > 1e-5
    for order in (mask, np.asfortranarray(mask)):  # row- or column-major input (RLE decodes the latter)
        fraction = resize_mask(order, dst, rule="fraction")
        assert fraction.dtype == bool and np.array_equal(fraction[clear], (frac >= 0.5)[clear])
        soft = resize_mask(order, dst, rule="soft")
        assert soft.dtype == np.uint8 and np.abs(soft.astype(int) - np.rint(255 * frac)).max() <= 1
        assert np.array_equal(resize_mask(order, dst, rule="any"), frac > 0)
        assert np.array_equal(resize_mask(order, dst), frac > 0)  # "any" stays the default


def test_resize_mask_fraction_keeps_area_any_grows_it():
    mask = np.zeros((1024, 1024), dtype=bool)
    cv2.circle(mask.view(np.uint8), (400, 500), 150, 1, -1)
    area = mask.sum() / 16  # expected area at 256 px
    assert abs(resize_mask(mask, 256, rule="fraction").sum() - area) / area < 0.01
    assert resize_mask(mask, 256, rule="any").sum() > 1.01 * area
    assert abs(resize_mask(mask, 256, rule="soft").sum() / 255 - area) / area < 0.001
    # Exactly half a 2x2 block is kept; a quarter is not (any keeps both).
    small = np.zeros((4, 4), dtype=bool)
    small[0, :2] = True  # half of block (0, 0)
    small[2, 2] = True  # a quarter of block (1, 1)
    assert resize_mask(small, 2, rule="fraction").tolist() == [[True, False], [False, False]]
    assert resize_mask(small, 2, rule="soft").tolist() == [[128, 0], [0, 64]]
    assert resize_mask(small, 2, rule="any").tolist() == [[True, False], [False, True]]


def test_resize_mask_soft_upscale_identity_and_empty():
    mask = np.array([[1, 0], [0, 1]], dtype=bool)
    assert resize_mask(mask, 4, rule="soft").tolist() == [[255, 255, 0, 0], [255, 255, 0, 0],
                                                          [0, 0, 255, 255], [0, 0, 255, 255]]
    assert resize_mask(mask, 2, rule="soft").tolist() == [[255, 0], [0, 255]]
    empty = resize_mask(np.zeros((9, 9), bool), (3, 5), rule="soft")
    assert empty.dtype == np.uint8 and empty.shape == (3, 5) and not empty.any()
    tall = np.zeros((8, 2), dtype=bool)
    tall[4:6, 1] = True  # height shrinks (rule), width grows (nearest)
    assert resize_mask(tall, (4, 4), rule="fraction").tolist() == [[0] * 4, [0] * 4, [0, 0, 1, 1], [0] * 4]
    with pytest.raises(DataError, match=r"unknown mask rule 'max'.*any, fraction, soft"):
        resize_mask(mask, 1, rule="max")  # type: ignore[arg-type]


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
