"""Procedural chest radiograph phantoms with pneumothoraces (the pixels; ``synth`` writes files).

Images are uint8 (H, W) as displayed (the patient's right on the image left); masks are bool (H, W).
Geometry is written in image fractions (x right, y down) of a template patient, then mapped through
a per-patient affine. A pneumothorax pulls part of the lung outline (apex or lateral wall) towards
the hilum: a dark crescent without lung markings, with a thin bright pleural line on its inner edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pneumoseg.errors import ConfigError

__all__ = ["MIN_SIZE", "POSITIVE_RATE", "Anatomy", "Phantom", "make_phantom", "render_phantom", "sample_anatomy"]

POSITIVE_RATE = 0.22  # share of positive images in the challenge's stage-2 training set
MIN_SIZE = 64

# Template lungs (x, y), closed contours. Points 0-7 run from the apex down the chest wall to the
# costophrenic angle: the part of the pleura where pneumothoraces are placed.
_LUNG_R = np.array([  # the patient's right lung, on the image left
    (0.33, 0.13), (0.25, 0.15), (0.19, 0.21), (0.155, 0.31), (0.135, 0.43), (0.128, 0.55),
    (0.13, 0.66), (0.14, 0.745), (0.19, 0.715), (0.26, 0.67), (0.34, 0.655), (0.41, 0.665),
    (0.445, 0.58), (0.445, 0.46), (0.425, 0.34), (0.41, 0.22), (0.385, 0.15)])
_LUNG_L = np.array([  # the patient's left lung: lower dome, notched by the heart
    (0.67, 0.13), (0.75, 0.15), (0.81, 0.21), (0.845, 0.31), (0.865, 0.43), (0.872, 0.55),
    (0.87, 0.67), (0.86, 0.765), (0.81, 0.735), (0.75, 0.70), (0.70, 0.69), (0.66, 0.665),
    (0.625, 0.58), (0.575, 0.46), (0.575, 0.34), (0.59, 0.22), (0.615, 0.15)])
_WALL = (0.0, 7.0 / 17.0)  # contour parameter range of the apical and lateral pleura
_HILA = np.array([(0.40, 0.43), (0.60, 0.43)])
_CLAVICLE = np.array([(0.455, 0.175), (0.37, 0.168), (0.26, 0.135), (0.13, 0.085)])
_CENTRE = np.array([0.5, 0.45])


@dataclass(frozen=True)
class Anatomy:
    """One patient's build: template scale, placement, organ sizes, bone and lung density."""

    scale: tuple[float, float]
    shift: tuple[float, float]
    angle: float  # degrees
    jitter: np.ndarray  # (2, 17, 2) per-vertex offsets of the two lung contours
    heart: float
    body_width: float
    rib_spacing: float
    rib_curve: float
    lung_dark: float
    bone: float
    female: bool
    arms: bool


@dataclass
class Phantom:
    """A rendered radiograph: ``image`` uint8 (H, W), ``masks`` one bool (H, W) per region
    (empty list = no pneumothorax), ``lungs`` bool (H, W) union of both lung fields, ``view``."""

    image: np.ndarray
    masks: list[np.ndarray]
    lungs: np.ndarray
    view: str


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's build."""
    return Anatomy(
        scale=(float(rng.uniform(0.88, 1.06)), float(rng.uniform(0.88, 1.08))),
        shift=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.04, 0.04))),
        angle=float(rng.uniform(-4, 4)),
        jitter=rng.normal(0, 0.008, size=(2, len(_LUNG_R), 2)),
        heart=float(rng.uniform(0.85, 1.2)),
        body_width=float(rng.uniform(0.43, 0.5)),
        rib_spacing=float(rng.uniform(0.06, 0.072)),
        rib_curve=float(rng.uniform(0.08, 0.13)),
        lung_dark=float(rng.uniform(0.3, 0.42)),
        bone=float(rng.uniform(0.8, 1.25)),
        female=bool(rng.random() < 0.45),
        arms=bool(rng.random() < 0.6),
    )


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


def _chaikin(points: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Corner-cut a closed (K, 2) polygon ``iterations`` times: (K * 2**iterations, 2), smooth."""
    for _ in range(iterations):
        nxt = np.roll(points, -1, axis=0)
        points = np.stack([0.75 * points + 0.25 * nxt, 0.25 * points + 0.75 * nxt], axis=1).reshape(-1, 2)
    return points


def _affine(anatomy: Anatomy, extra: np.ndarray) -> np.ndarray:
    """2x3 forward map template fractions -> image fractions (patient build + positioning ``extra``)."""
    a = np.deg2rad(anatomy.angle + extra[2])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.diag(anatomy.scale)
    offset = _CENTRE + np.array(anatomy.shift) + extra[:2] - rot @ _CENTRE
    return np.column_stack([rot, offset])


def _to_px(m: np.ndarray, pts: np.ndarray, size: int) -> np.ndarray:
    """Template fractions (K, 2) -> pixel coordinates (pixel centres at integers) through ``m``."""
    return (pts @ m[:, :2].T + m[:, 2]) * size - 0.5


def _fill(contour: np.ndarray, size: int) -> np.ndarray:
    """bool (size, size) inside a closed contour given in pixels (sub-pixel accurate)."""
    out = np.zeros((size, size), np.uint8)
    cv2.fillPoly(out, [np.round(contour * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return out.astype(bool)


def _lines(paths: list[np.ndarray], size: int, width: float, closed: bool = False) -> np.ndarray:
    """float32 (size, size) in [0, 1]: anti-aliased polylines (pixel coordinates) of ``width`` px."""
    out = np.zeros((size, size), np.uint8)
    if paths:
        pts = [np.round(p * 16).astype(np.int32) for p in paths]
        cv2.polylines(out, pts, closed, 255, max(1, round(width)), cv2.LINE_AA, shift=4)
    return out.astype(np.float32) / 255


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), max(sigma, 0.3))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """float32 (size, size) smooth noise of unit-ish amplitude with about ``cells`` bumps a side."""
    grid = rng.normal(size=(cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _walk(rng: np.random.Generator, start: np.ndarray, angle: np.ndarray, length: np.ndarray,
          steps: int) -> np.ndarray:
    """(N, steps + 1, 2) tortuous paths: ``steps`` equal steps whose heading drifts at random."""
    heading = angle[:, None] + np.cumsum(rng.normal(0, 0.18, (len(angle), steps)), axis=1)
    step = np.stack([np.cos(heading), np.sin(heading)], axis=2) * (length / steps)[:, None, None]
    return np.concatenate([start[:, None, :], start[:, None, :] + np.cumsum(step, axis=1)], axis=1)


def _vessels(rng: np.random.Generator, contour: np.ndarray, hilum: np.ndarray, size: int) -> np.ndarray:
    """float32 (size, size) tapering, branching vessel-like lines from ``hilum`` towards the pleura."""
    sc = size / 512
    ends = contour[rng.integers(0, len(contour), 16)] - hilum
    trunks = _walk(rng, np.repeat(hilum[None], 16, 0), np.arctan2(ends[:, 1], ends[:, 0]),
                   np.linalg.norm(ends, axis=1) * rng.uniform(0.4, 0.7, 16), 5)
    heads = np.arctan2(*(trunks[:, -1] - trunks[:, 0]).T[::-1])
    pick = rng.integers(2, 6, (16, 3))
    src1 = trunks[np.arange(16)[:, None], pick].reshape(-1, 2)
    ang1 = np.repeat(heads, 3) + rng.choice([-1, 1], 48) * rng.uniform(0.15, 0.7, 48)
    level1 = _walk(rng, src1, ang1, rng.uniform(50, 100, 48) * sc, 4)
    src2 = np.repeat(level1[:, -1], 2, 0)
    level2 = _walk(rng, src2, np.repeat(ang1, 2) + rng.uniform(-0.8, 0.8, 96), rng.uniform(15, 40, 96) * sc, 3)
    out = 0.8 * _lines(list(trunks), size, 2.6 * sc)
    out = np.maximum(out, 0.55 * _lines(list(level1), size, 1.6 * sc))
    return np.maximum(out, 0.4 * _lines(list(level2), size, 1.0 * sc))


def _place_regions(rng: np.random.Generator, k: int) -> list[tuple[int, float, float]]:
    """(lung, centre t, half-width) for ``k`` pleural sectors that do not touch each other."""
    out: list[tuple[int, float, float]] = []
    for _ in range(200):
        if len(out) == k:
            break
        lung = int(rng.integers(0, 2)) if not out or rng.random() < 0.3 else out[0][0]
        half = float(rng.uniform(0.035, 0.16)) if k == 1 else float(rng.uniform(0.03, 0.07))
        centre = float(rng.uniform(_WALL[0] - 0.02, _WALL[1] - 0.02))
        if all(o[0] != lung or abs(o[1] - centre) > o[2] + half + 0.03 for o in out):
            out.append((lung, centre, half))
    return out


def _bump(t: np.ndarray, centre: float, half: float) -> np.ndarray:
    """Raised-cosine window over the closed contour parameter ``t`` in [0, 1)."""
    d = np.abs((t - centre + 0.5) % 1.0 - 0.5)
    return np.where(d < half, np.cos(0.5 * np.pi * d / half) ** 2, 0.0)


def _fields(anatomy: Anatomy, m: np.ndarray, n: int, ap: bool) -> tuple[np.ndarray, ...]:
    """Smooth anatomy on an (n, n) grid: (soft tissue + heart + spine + clavicles, ribs, lung basal
    factor); rendered coarse and upsampled by the caller, since none has fine detail."""
    inv = cv2.invertAffineTransform(m)
    xx, yy = np.meshgrid(*[(np.arange(n, dtype=np.float32) + 0.5) / n] * 2)
    x = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]  # template coordinates of each pixel
    y = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    dx = np.abs(x - 0.5)
    # Body: neck widening into sloping shoulders; brighter where the tissue is thicker.
    hw = 0.085 + (anatomy.body_width - 0.085) * _smoothstep(y, 0.01, 0.2) ** 0.7
    thick = np.sqrt(np.clip(1 - (dx / hw) ** 2, 0, 1))
    base = _smoothstep(hw - dx, -0.004, 0.012) * (0.38 + 0.26 * thick + 0.08 * _smoothstep(y, 0.6, 0.85))
    if anatomy.arms:  # arms along the sides, down to the elbows
        arm = _smoothstep(dx - hw, -0.008, 0.004) * _smoothstep(hw + 0.13 - dx, 0.0, 0.02)
        base += arm * _smoothstep(0.55 - y, 0.0, 0.2) * _smoothstep(y, 0.05, 0.12) * 0.3
    hs = anatomy.heart * (1.12 if ap else 1.0)
    heart = ((x - 0.535) / (0.14 * hs)) ** 2 + ((y - 0.61) / (0.105 * hs)) ** 2
    base += 0.05 * _smoothstep(1.0 - heart, 0.0, 0.4)
    spine = _smoothstep(0.035 - dx, 0.0, 0.01) * (0.8 + 0.2 * np.cos(2 * np.pi * y / 0.045))
    base += 0.07 * spine * _smoothstep(y, 0.05, 0.12)
    if anatomy.female:
        breast = ((dx - 0.23) / 0.17) ** 2 + ((y - 0.7) / 0.1) ** 2
        base += 0.05 * _smoothstep(1.0 - breast, 0.0, 0.3) * _smoothstep(y, 0.6, 0.7)
    clav = _CLAVICLE + np.array([0.0, -0.03 if ap else 0.0])
    clavs = [_to_px(m, clav, n), _to_px(m, clav * [-1, 1] + [1, 0], n)]
    base += 0.14 * anatomy.bone * _blur(_lines(clavs, n, 0.02 * n), n / 256)
    # Ribs: posterior ones rise from the spine and bend down at the chest wall; anterior ones
    # slope down towards the midline.
    u = dx / 0.38
    e = max(0.06, 0.9 / (anatomy.rib_spacing * n))
    ph = (y - (1.5 - y) * anatomy.rib_curve * (u**4 - 0.6 * u) - 0.075) / anatomy.rib_spacing
    f = ph - np.floor(ph)
    rib = _smoothstep(f, 0, e) * _smoothstep(0.45 - f, 0, e) * ((ph >= 0) & (ph < 10))
    rib *= 0.7 + 0.6 * _smoothstep(f, 0.3, 0.45)  # brighter lower cortex
    ph2 = (y + 0.12 * u - 0.05 * u * u - 0.22) / (1.3 * anatomy.rib_spacing)
    f2 = ph2 - np.floor(ph2)
    rib2 = _smoothstep(f2, 0, e) * _smoothstep(0.3 - f2, 0, e) * ((ph2 >= 0) & (ph2 < 6)) * _smoothstep(u, 0.3, 0.6)
    ribs = (0.075 * rib + 0.03 * rib2) * _smoothstep(u, 0.1, 0.2) * _smoothstep(1.09 - u, 0.0, 0.06) * anatomy.bone
    basal = 1 - 0.45 * _smoothstep(y, 0.45, 0.78) - 0.25 * _smoothstep(0.12 - (dx - 0.12), 0.0, 0.12)
    return base, ribs, basal


def _pneumothoraces(rng: np.random.Generator, contours: list[np.ndarray], hila: np.ndarray,
                    lungs_each: list[np.ndarray], size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(masks bool (size, size) one per region, pleural lines (K, 2) px): 1 region, 10 % 2-3."""
    masks, pleura = [], []
    tt = np.arange(len(contours[0])) / len(contours[0])
    n_regions = 1 if rng.random() < 0.9 else int(rng.integers(2, 4))
    for lung, centre, half in _place_regions(rng, n_regions):
        c, h = contours[lung], hila[lung]
        reach = float(np.linalg.norm(c - h, axis=1).mean())
        depth = max(float(np.exp(rng.uniform(np.log(0.05), np.log(0.55)))), 3.0 / reach)
        pull = depth * _bump(tt, centre, half)
        collapsed = c + pull[:, None] * (h - c)
        region = lungs_each[lung] & ~_fill(collapsed, size)
        if region.sum() < 4:
            continue
        masks.append(region)
        arc = np.roll(np.arange(len(tt)), -int(np.floor((centre - half) * len(tt))))  # arc in order
        pleura.append(collapsed[arc[pull[arc] > 0.01 * depth]])
    return masks, pleura


def render_phantom(rng: np.random.Generator, size: int = 512, positive: bool | None = None,
                   anatomy: Anatomy | None = None, view: str | None = None) -> Phantom:
    """Render one procedural chest radiograph of ``size`` x ``size`` px.

    ``positive=None`` draws a pneumothorax with probability ``POSITIVE_RATE``; ``anatomy=None``
    draws a new patient; ``view`` is "PA" or "AP" (drawn when None). A pneumothorax is a crescent
    along the apical/lateral pleura: dark, with no lung markings, bounded by a thin bright line.
    """
    if size < MIN_SIZE:
        raise ConfigError(f"phantom size must be >= {MIN_SIZE} px, got {size}")
    if view not in (None, "PA", "AP"):
        raise ConfigError(f"phantom view must be 'PA' or 'AP', got {view!r}")
    positive = bool(rng.random() < POSITIVE_RATE) if positive is None else positive
    anatomy = sample_anatomy(rng) if anatomy is None else anatomy
    view = ("AP" if rng.random() < 0.45 else "PA") if view is None else view
    sc = size / 512
    m = _affine(anatomy, np.array([*rng.uniform(-0.015, 0.015, 2), rng.uniform(-2, 2)]))
    coarse = max(MIN_SIZE, size // 2)
    base, ribs, basal = (cv2.resize(f.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
                         for f in _fields(anatomy, m, coarse, view == "AP"))

    contours = [_to_px(m, _chaikin(t + j), size) for t, j in zip((_LUNG_R, _LUNG_L), anatomy.jitter, strict=True)]
    hila = _to_px(m, _HILA, size)
    lungs_each = [_fill(c, size) for c in contours]
    lungs = lungs_each[0] | lungs_each[1]
    lung_soft = _blur(lungs.astype(np.float32), 1.5 * sc)
    marks = np.maximum(_vessels(rng, contours[0], hila[0], size), _vessels(rng, contours[1], hila[1], size))
    ridge = np.clip(1 - np.abs(_smooth_noise(rng, size, 48)) / 0.25, 0, 1) ** 3
    marks = _blur(np.maximum(marks, 0.5 * ridge), 0.6 * sc) * lung_soft
    hilar = np.zeros((size, size), np.float32)
    cv2.fillPoly(hilar, [np.round(h + 18 * sc * _chaikin(np.array([[0, -1.5], [1, 0], [0, 1.5], [-1, 0]]), 2)
                                  ).astype(np.int32) for h in hila], 1.0)

    a = base - lung_soft * anatomy.lung_dark * basal + ribs * (0.3 + 0.7 * lung_soft)
    a += 0.08 * _blur(hilar, 10 * sc)
    masks, pleura = _pneumothoraces(rng, contours, hila, lungs_each, size) if positive else ([], [])
    if masks:
        ptx = _blur(np.logical_or.reduce(masks).astype(np.float32), 0.7 * sc)
        marks *= 1 - ptx
        a -= 0.08 * ptx
        a += 0.16 * _blur(_lines(pleura, size, 1.3 * sc), 0.4 * sc)
    a += (0.05 + 0.03 * rng.random()) * marks
    if rng.random() < 0.3:  # a tube or lead: a bright curve that is not a pleural line
        ctrl = rng.uniform(0.1, 0.9, (3, 2)) * size
        s = np.linspace(0, 1, 30)[:, None]
        a += 0.2 * _lines([(1 - s) ** 2 * ctrl[0] + 2 * s * (1 - s) * ctrl[1] + s**2 * ctrl[2]], size, 2.5 * sc)

    # Exposure: smooth shading, window, gamma, quantum noise.
    a += 0.05 * _smooth_noise(rng, size, 5) + 0.03 * _smooth_noise(rng, size, 12)
    lo, hi = rng.uniform(-0.05, 0.08), rng.uniform(0.85, 1.1)
    img = np.clip((a - lo) / (hi - lo), 0, 1) ** rng.uniform(0.8, 1.25)
    noise = rng.normal(0, rng.uniform(0.01, 0.035) * (1.3 if view == "AP" else 1.0), (size, size))
    img = np.clip(img + _blur(noise.astype(np.float32), 0.6 * sc), 0, 1)
    return Phantom((img * 255 + 0.5).astype(np.uint8), masks, lungs, view)


def make_phantom(rng: np.random.Generator, size: int = 512,
                 positive: bool | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return (image uint8 (size, size), masks: one bool (size, size) per region; [] = negative)."""
    phantom = render_phantom(rng, size, positive)
    return phantom.image, phantom.masks


# --- the data set on disk -------------------------------------------------------------------
