"""Procedural synthetic concrete: the offline stand-in for the Özgenel crack data set.

Everything is rendered from a ``numpy.random.Generator`` so a (seed, label, index) triple always
gives the same image. Patches (227 px, like the real set) and full-size "photos" share one scene
renderer at the same pixel scale, so a classifier trained on patches sees the same crack and
texture statistics when it slides over a photo.

Design goals, in order:

* positives differ from negatives only by the crack (thin, dark, meandering, branching);
* negatives carry hard confusers (formwork joints, region edges, shadows, stains, scratches,
  straight dark lines, tie holes) so the crack shape, not "any dark line", must be learnt;
* global per-channel mean/std must not separate the classes (surface parameters are drawn
  independently of the label and confusers add comparable darkening/variance);
* vectorised numpy/scipy only, so a patch takes milliseconds and a photo about a second.
"""

from __future__ import annotations

import types
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from crackdet.core.params import SyntheticSource
from crackdet.data.images import PATCH_SIZE
from crackdet.data.sources.base import Brought, FetchContext, SourceKind, register_kind
from crackdet.data.sources.labelled import Imported

LABELS = ("Positive", "Negative")

# Reflectance ratios (R, G, B) of common concrete tints; brightness is drawn separately so
# colour family carries no information about the label.
_PALETTES = np.array(
    [
        [1.00, 1.00, 1.00],  # neutral grey
        [1.03, 1.00, 0.95],  # warm grey (the most common look in the real set)
        [1.06, 1.00, 0.88],  # beige / sandy
        [0.95, 0.99, 1.04],  # bluish grey
        [0.98, 1.01, 0.93],  # greenish / olive grey
    ],
    dtype=np.float32,
)
_PALETTE_P = np.array([0.25, 0.33, 0.17, 0.13, 0.12])

# JPEG chroma subsampling is pinned (4:2:0, like phone cameras) so output bytes never depend on
# a Pillow default.
_JPEG_SUBSAMPLING = 2


@dataclass
class _Canvas:
    """Per-image working buffers: a luminance multiplier, an RGB tint multiplier, and grids."""

    h: int
    w: int
    ys: np.ndarray  # (h, 1) float32 row coordinates
    xs: np.ndarray  # (1, w) float32 column coordinates
    shade: np.ndarray  # (h, w) float32, multiplies all channels
    tint: np.ndarray | None  # (h, w, 3) float32 per-channel multiplier (stains), lazily made

    @classmethod
    def new(cls, h: int, w: int) -> _Canvas:
        return cls(
            h=h,
            w=w,
            ys=np.arange(h, dtype=np.float32)[:, None],
            xs=np.arange(w, dtype=np.float32)[None, :],
            shade=np.ones((h, w), np.float32),
            tint=None,
        )


# --------------------------------------------------------------------------------------------
# Noise primitives
# --------------------------------------------------------------------------------------------


def _noise(
    rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float | None = None
) -> np.ndarray:
    """Smooth value noise (approx. unit variance) with feature size ``cell`` pixels.

    A small Gaussian grid is upsampled bicubically by Pillow (fast C code) and cropped at a random
    sub-cell offset, so the grid lattice does not line up between images.
    """
    cell_x = cell_y if cell_x is None else cell_x
    if cell_y <= 1 and cell_x <= 1:
        return rng.standard_normal((h, w), dtype=np.float32)
    # Two spare cells on each side keep the bicubic kernel off the clamped grid border.
    gh = int(np.ceil(h / cell_y)) + 5
    gw = int(np.ceil(w / cell_x)) + 5
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    # Resample only the needed window (``box`` in grid units): the output is exactly h x w,
    # however coarse the cell, instead of a large upsampled grid that is then cropped.
    oy, ox = rng.uniform(2.0, 3.0, 2)
    box = (ox, oy, ox + w / cell_x, oy + h / cell_y)
    up = Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC, box=box)
    # Bicubic interpolation of white noise loses variance; 1.25 roughly restores unit std.
    return np.asarray(up) * np.float32(1.25)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _spots(
    rng: np.random.Generator,
    h: int,
    w: int,
    density: float,
    sigma: float,
    amp: tuple[float, float],
) -> np.ndarray:
    """Sparse round spots (pores, sand grains): impulses blurred by a Gaussian of ``sigma``.

    Impulse amplitudes are scaled by 2*pi*sigma^2 so each spot peaks at its drawn amplitude.
    """
    n = rng.poisson(density * h * w)
    out = np.zeros((h, w), np.float32)
    if n == 0:
        return out
    iy = rng.integers(0, h, n)
    ix = rng.integers(0, w, n)
    np.add.at(out, (iy, ix), rng.uniform(amp[0], amp[1], n).astype(np.float32))
    out = _ndimage().gaussian_filter(out, sigma, mode="constant", truncate=3.0)
    return out * np.float32(2 * np.pi * sigma * sigma)


def _line_coords(cv: _Canvas, py: float, px: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """(along, across) coordinates relative to a line through (py, px) with angle ``theta``."""
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    dx, dy = cv.xs - np.float32(px), cv.ys - np.float32(py)
    return dx * c + dy * s, dy * c - dx * s


def _random_point(
    rng: np.random.Generator, cv: _Canvas, margin: float = 0.0
) -> tuple[float, float]:
    return (
        rng.uniform(-margin, 1 + margin) * cv.h,
        rng.uniform(-margin, 1 + margin) * cv.w,
    )


# --------------------------------------------------------------------------------------------
# Surface
# --------------------------------------------------------------------------------------------


def _surface(rng: np.random.Generator, cv: _Canvas) -> None:
    """Bare concrete: multi-scale tone, mottling, grain, sand specks and pores, into ``shade``."""
    h, w = cv.h, cv.w
    rough = rng.uniform(0.35, 1.5)  # overall texture strength, independent of label
    lum = 1.0 + rough * (
        rng.uniform(0.01, 0.04) * _noise(rng, h, w, rng.uniform(70, 140))
        + rng.uniform(0.01, 0.03) * _noise(rng, h, w, rng.uniform(24, 40))
        + rng.uniform(0.01, 0.03) * _noise(rng, h, w, rng.uniform(8, 14))
    )
    # Mottling: sharpened small-scale noise gives the patchy cement-paste look of the real
    # photos; a coarse mask makes it come and go instead of tiling the whole surface.
    mottle = rng.uniform(0.005, 0.06) * rough
    # Aggregate grain: near-white noise (the camera blur later softens it); it also roughens
    # the outlines of the mottling blots.
    grain = _noise(rng, h, w, rng.uniform(1.5, 2.5))
    blots = np.tanh(2.5 * _noise(rng, h, w, rng.uniform(3, 7)) + 0.9 * grain - 0.6)
    lum += mottle * blots * _sigmoid(2.0 * _noise(rng, h, w, 60) + 1.5)
    lum += rough * rng.uniform(0.01, 0.035) * grain
    # Sand grains catching light, and small dark pores / bug holes.
    lum += _spots(rng, h, w, rng.uniform(0, 6e-4), 0.7, (0.05, 0.25))
    pores = _spots(rng, h, w, rng.uniform(1e-4, 8e-4), 0.8, (0.15, 0.55))
    pores += _spots(rng, h, w, rng.uniform(0, 1.2e-4), rng.uniform(1.4, 2.6), (0.15, 0.5))
    lum *= 1.0 - np.clip(pores, 0.0, 0.8)
    cv.shade *= lum


def _lighting(rng: np.random.Generator, cv: _Canvas, strength: float) -> None:
    """Smooth illumination: a linear gradient plus a mild off-centre vignette."""
    theta = rng.uniform(0, 2 * np.pi)
    along, _ = _line_coords(cv, cv.h / 2, cv.w / 2, theta)
    scale = np.float32(max(cv.h, cv.w))
    cv.shade *= 1.0 + np.float32(rng.uniform(-strength, strength)) * along / scale
    cy, cx = _random_point(rng, cv, 0.3)
    r2 = ((cv.ys - cy) ** 2 + (cv.xs - cx) ** 2) / scale**2
    cv.shade *= 1.0 - np.float32(rng.uniform(0, strength)) * r2


# --------------------------------------------------------------------------------------------
# Confusers
# --------------------------------------------------------------------------------------------


def _axis_angle(rng: np.random.Generator) -> float:
    """Formwork and saw cuts follow the wall axes mostly, but patches may be rotated."""
    if rng.random() < 0.7:
        return rng.integers(0, 2) * np.pi / 2 + np.deg2rad(rng.normal(0, 2.0))
    return rng.uniform(0, np.pi)


def _formwork(
    rng: np.random.Generator, cv: _Canvas, spacing: tuple[float, float] = (90, 320)
) -> None:
    """Board-marked concrete: straight parallel joints, tone steps per board, faint wood grain."""
    theta = _axis_angle(rng)
    py, px = _random_point(rng, cv)
    _, d = _line_coords(cv, py, px, theta)
    period = rng.uniform(*spacing)
    k = np.floor(d / period)
    kmin = int(k.min())
    tones = 1.0 + rng.uniform(0.005, 0.05) * rng.standard_normal(int(k.max()) - kmin + 1)
    factor = tones.astype(np.float32)[(k - kmin).astype(np.intp)]
    r = d - period * np.round(d / period)  # signed distance to the nearest joint
    jw = rng.uniform(0.6, 2.2)
    factor *= 1.0 - rng.uniform(0.04, 0.3) * np.exp(-((r / jw) ** 2))
    lip = rng.choice([-1, 1]) * (jw + rng.uniform(0.8, 2.0))
    factor *= 1.0 + rng.uniform(0.0, 0.1) * np.exp(-(((r - lip) / 1.2) ** 2))
    # Wood grain imprint: 1-D noise across the boards, stretched along them.
    grain = rng.standard_normal(int(np.ceil(np.abs(d).max())) * 2 + 8).astype(np.float32)
    grain = _ndimage().gaussian_filter1d(grain, rng.uniform(1.0, 3.0))
    gi = np.clip((d + grain.size / 2).astype(np.intp), 0, grain.size - 1)
    factor *= 1.0 + rng.uniform(0.0, 0.04) * grain[gi]
    cv.shade *= factor


def _region_edge(rng: np.random.Generator, cv: _Canvas) -> None:
    """A hard tone edge (repair patch, pour line, paint) - a rectangle or a half plane."""
    theta = rng.uniform(0, np.pi)
    py, px = _random_point(rng, cv, -0.1)
    along, across = _line_coords(cv, py, px, theta)
    soft = rng.uniform(0.4, 2.0)
    wobble = rng.uniform(0, 3.0) * np.sin(along / rng.uniform(40, 200) + rng.uniform(0, 6.3))
    inside = _sigmoid((across + wobble) / soft)
    if rng.random() < 0.5:  # rectangle corner: intersect with a second, perpendicular edge
        inside = inside * _sigmoid((along - rng.uniform(-0.3, 0.3) * cv.w) / soft)
    delta = rng.choice([-1, 1]) * rng.uniform(0.05, 0.2)
    cv.shade *= 1.0 + np.float32(delta) * inside


def _soft_shadow(rng: np.random.Generator, cv: _Canvas) -> None:
    """A blurred cast shadow: curved half plane with a wide penumbra."""
    theta = rng.uniform(0, 2 * np.pi)
    py, px = _random_point(rng, cv)
    along, across = _line_coords(cv, py, px, theta)
    curve = rng.uniform(-0.4, 0.4) / max(cv.h, cv.w)
    pen = rng.uniform(6, 45)
    inside = _sigmoid((across + curve * along**2) / pen)
    cv.shade *= 1.0 - np.float32(rng.uniform(0.08, 0.35)) * inside


def _stain(rng: np.random.Generator, cv: _Canvas, radius: float | None = None) -> None:
    """Blotchy or streaky discolouration (water, rust, algae), tinted per channel.

    With ``radius`` the stain is confined to a soft disc (photos); without, it may cover the
    whole canvas (patches are small enough for that to look natural).
    """
    if rng.random() < 0.75:
        field = _noise(rng, cv.h, cv.w, rng.uniform(25, 80))
        thr = rng.uniform(0.2, 1.3)
    else:  # run-off streaks: sparse noise stretched along the vertical (or horizontal) axis
        field = _noise(rng, cv.h, cv.w, rng.uniform(90, 220), rng.uniform(10, 24))
        if cv.h == cv.w and rng.random() < 0.3:
            field = field.T.copy()
        thr = rng.uniform(0.9, 1.6)
    mask = _sigmoid((field - thr) / rng.uniform(0.12, 0.4))
    if radius is not None:
        cy, cx = _random_point(rng, cv)
        r2 = ((cv.ys - cy) ** 2 + (cv.xs - cx) ** 2) / np.float32(radius * radius)
        mask *= np.exp(-r2)
    tint = np.array(
        [[1.0, 1.0, 1.0], [1.0, 0.96, 0.9], [0.97, 1.0, 0.95], [0.98, 0.99, 1.0]], np.float32
    )[rng.integers(0, 4)]
    dark = np.float32(rng.uniform(0.04, 0.2))
    cv.shade *= 1.0 - dark * mask
    stain_tint = 1.0 - (1.0 - tint) * mask[..., None]
    cv.tint = stain_tint if cv.tint is None else cv.tint * stain_tint


def _scratch(rng: np.random.Generator, cv: _Canvas) -> None:
    """A thin light scratch: short, gently curved, brighter than the surface."""
    theta = rng.uniform(0, np.pi)
    py, px = _random_point(rng, cv)
    along, across = _line_coords(cv, py, px, theta)
    length = rng.uniform(20, 160)
    across = across + rng.uniform(-1, 1) * along**2 / 400.0
    ends = _sigmoid((length / 2 - np.abs(along)) / 3.0)
    lw = rng.uniform(0.4, 1.1)
    cv.shade *= 1.0 + np.float32(rng.uniform(0.05, 0.18)) * np.exp(-((across / lw) ** 2)) * ends


def _straight_line(rng: np.random.Generator, cv: _Canvas) -> None:
    """A ruler-straight dark line (saw cut, marker, cable) - too regular to be a crack."""
    theta = _axis_angle(rng) if rng.random() < 0.5 else rng.uniform(0, np.pi)
    py, px = _random_point(rng, cv)
    _, across = _line_coords(cv, py, px, theta)
    lw = rng.uniform(0.6, 2.5)
    dark = np.float32(rng.uniform(0.12, 0.5))
    prof = np.exp(-((across / lw) ** 2))
    if rng.random() < 0.35:  # double line, e.g. both arrises of a saw cut
        gap = rng.uniform(4, 14)
        prof = np.maximum(prof, np.exp(-(((across - gap) / lw) ** 2)))
    cv.shade *= 1.0 - dark * prof


def _tie_hole(rng: np.random.Generator, cv: _Canvas) -> None:
    """A round formwork tie hole / large void: dark disc with a soft rim."""
    cy, cx = _random_point(rng, cv)
    r = rng.uniform(3, 10)
    dist = np.sqrt((cv.ys - cy) ** 2 + (cv.xs - cx) ** 2)
    cv.shade *= 1.0 - np.float32(rng.uniform(0.25, 0.6)) * _sigmoid((r - dist) / 0.8)


# Negative confusers with the probability of appearing in a negative patch. Positives draw the
# same list at a lower rate so "has a joint" is never a label cue in either direction.
_CONFUSERS = (
    (_formwork, 0.3),
    (_region_edge, 0.22),
    (_soft_shadow, 0.25),
    (_stain, 0.35),
    (_scratch, 0.25),
    (_straight_line, 0.14),
    (_tie_hole, 0.08),
)
_POSITIVE_CONFUSER_RATE = 0.35


# --------------------------------------------------------------------------------------------
# Cracks
# --------------------------------------------------------------------------------------------


@dataclass
class _Polyline:
    pts: np.ndarray  # (n, 2) float, (y, x)
    width: np.ndarray  # (n,) full width in px
    contrast: np.ndarray  # (n,) fractional darkening at full depth


def _walk(
    rng: np.random.Generator,
    start: tuple[float, float] | np.ndarray,
    heading: float,
    length: float,
    wiggle: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A meandering path of 1-px steps; returns points (n, 2) and the local angle (n,).

    The heading deviation is an AR(1) process (persistent wander that reverts to the main
    direction, so the crack crosses the image instead of curling up) plus rare kinks that give
    the zig-zag of cracks following aggregate boundaries.
    """
    n = max(2, int(length))
    e = rng.normal(0, wiggle, n)
    kinks = rng.random(n) < 0.012
    e[kinks] += rng.normal(0, 0.45, int(kinks.sum()))
    dev = _ar1(e, 0.96)
    dev += _ndimage().gaussian_filter1d(rng.normal(0, 0.35, n), 1.0)  # pixel-scale jaggedness
    ang = heading + dev
    steps = np.stack([np.sin(ang), np.cos(ang)], axis=1)
    pts = np.asarray(start, float)[None, :] + np.cumsum(steps, axis=0)
    return pts, ang


def _ar1(innovations: np.ndarray, persistence: float) -> np.ndarray:
    """``y[n] = e[n] + a * y[n-1]``: the AR(1) recursion (what ``scipy.signal.lfilter([1],
    [1, -a], e)`` computes, bit for bit, without importing scipy.signal's ~1 s)."""
    out = np.empty_like(innovations)
    value = 0.0
    for i, step in enumerate(innovations.tolist()):
        value = step + persistence * value
        out[i] = value
    return out


def _width_along(
    rng: np.random.Generator, n: int, base: float, spread: float, widest: float
) -> np.ndarray:
    """Width along a crack: slowly varying around ``base`` (log-spread up to ``spread``) and
    clipped to 0.8-``widest`` px."""
    var = _ndimage().gaussian_filter1d(rng.standard_normal(n + 40), rng.uniform(8, 30))[20:-20]
    var /= var.std() + 1e-6
    return np.clip(base * np.exp(rng.uniform(0.1, spread) * var), 0.8, widest)


def _width_profile(rng: np.random.Generator, n: int, base: float) -> np.ndarray:
    """The classic renderer's widths: 0.8-6.5 px."""
    return _width_along(rng, n, base, 0.35, 6.5)


def _crack_shape(
    rng: np.random.Generator, faint_p: float = 0.25, wide_base: float | None = None
) -> _CrackShape:
    """A crack's look: the classic renderer's (a random width of 1-5.5 px, faint with
    probability ``faint_p``) or, given ``wide_base``, the randomised renderer's, of that width
    (wide cracks are deep, dark gaps; hairlines may be faint)."""
    heading = rng.uniform(0, 2 * np.pi)
    wiggle = rng.uniform(0.03, 0.09)
    if wide_base is None:
        base = float(np.exp(rng.uniform(np.log(1.0), np.log(5.5))))
        look = (_width_profile, (0.4, 0.8), 0.92)
    else:
        base = wide_base
        look = (_wide_width_profile, (0.2, 0.6), 0.95)
    if wide_base is not None and base > 5:
        contrast = rng.uniform(0.55, 0.92)
    else:
        contrast = rng.uniform(0.15, 0.4) if rng.random() < faint_p else rng.uniform(0.35, 0.85)
    return _CrackShape(heading, wiggle, base, contrast, *look)


@dataclass(frozen=True)
class _CrackShape:
    """What differs between the renderers' cracks; :func:`_crack_system` draws the rest."""

    heading: float
    wiggle: float
    base: float  # width in px
    contrast: float
    profile: Callable[[np.random.Generator, int, float], np.ndarray]  # width along the line
    branch_share: tuple[float, float]  # a branch's width relative to the crack where it joins
    darkest: float  # the largest contrast


def _crack_system(
    rng: np.random.Generator,
    centre: tuple[float, float],
    reach: tuple[float, float],
    n_branches: int,
    branch_len: tuple[float, float],
    shape: _CrackShape,
) -> list[_Polyline]:
    """A crack of ``shape`` through ``centre``, ``reach`` px each way, plus tapering branches."""
    fwd, a_f = _walk(rng, centre, shape.heading, reach[0], shape.wiggle)
    back, a_b = _walk(rng, centre, shape.heading + np.pi, reach[1], shape.wiggle)
    pts = np.concatenate([back[::-1], fwd])
    ang = np.concatenate([a_b[::-1] + np.pi, a_f])
    width = shape.profile(rng, len(pts), shape.base)
    # Cracks thin out to a tip where they end; ends outside the image are cut anyway.
    taper = np.minimum(np.arange(len(pts)) + 1, np.arange(len(pts))[::-1] + 1) / 25.0
    width = np.maximum(0.8, width * np.minimum(1.0, 0.3 + taper))
    cvar = _ndimage().gaussian_filter1d(rng.standard_normal(len(pts)), 15)
    con = shape.contrast * np.exp(0.15 * cvar / (cvar.std() + 1e-6))
    lines = [_Polyline(pts, width, np.clip(con, 0.08, shape.darkest))]
    for _ in range(n_branches):
        i = int(rng.integers(len(pts) // 8, max(len(pts) // 8 + 1, 7 * len(pts) // 8)))
        side = rng.choice([-1, 1])
        b_head = ang[i] + side * rng.uniform(np.deg2rad(20), np.deg2rad(75))
        b_len = rng.uniform(*branch_len)
        b_pts, _ = _walk(rng, pts[i], b_head, b_len, shape.wiggle * 1.3)
        tip = np.linspace(1.0, 0.25, len(b_pts))  # branches taper from the join to their tip
        b_base = width[i] * rng.uniform(*shape.branch_share)
        b_w = np.maximum(0.7, shape.profile(rng, len(b_pts), b_base))
        b_c = np.clip(con[i] * rng.uniform(0.6, 1.0) * (0.6 + 0.4 * tip), 0.08, shape.darkest)
        lines.append(_Polyline(b_pts, b_w * tip + 0.5 * (1 - tip), b_c))
    return lines


def _patch_cracks(
    rng: np.random.Generator, size: int, wide_base: float | None = None
) -> list[_Polyline]:
    """Crack layout for a patch: one crack (sometimes two) crossing it, maybe with branches
    (:func:`_crack_shape`'s, classic or, given ``wide_base``, randomised)."""
    lines: list[_Polyline] = []
    n_systems = 1 if rng.random() < 0.8 else 2
    for _ in range(n_systems):
        centre = (rng.uniform(0.25, 0.75) * size, rng.uniform(0.25, 0.75) * size)
        far = 1.6 * size  # long enough to leave the patch on both sides
        reach = (far, far if rng.random() < 0.85 else rng.uniform(0.15, 0.45) * size)
        lines += _crack_system(
            rng,
            centre,
            reach,
            rng.poisson(0.7),
            (0.15 * size, 0.7 * size),
            _crack_shape(rng, wide_base=wide_base),
        )
    return lines


@dataclass(frozen=True)
class _CrackField:
    """Every pixel's distance to the nearest crack centreline pixel, and that pixel's half width
    and contrast, in a window around the cracks on the canvas padded by ``pad`` px."""

    dist: np.ndarray
    half: np.ndarray
    contrast: np.ndarray
    in_window: tuple[slice, slice]  # the part of the window that lies on the canvas
    on_canvas: tuple[slice, slice]  # where that part lies on the canvas


def _crack_field(cv: _Canvas, lines: list[_Polyline], pad: int) -> _CrackField | None:
    """The distance field of ``lines`` (None when none of their points is within ``pad`` px of
    the canvas).

    Centreline pixels store width and contrast; one Euclidean distance transform with nearest
    indices then gives every pixel its distance to the crack and the local width, i.e. an
    anti-aliased variable-width stroke without per-segment drawing. The window reaches
    ``pad + 2`` px beyond the outermost points, which keeps the transform small on photos.
    """
    hh, ww = cv.h + 2 * pad, cv.w + 2 * pad
    pts = np.concatenate([line.pts for line in lines])
    wid = np.concatenate([line.width for line in lines])
    con = np.concatenate([line.contrast for line in lines])
    iy = np.rint(pts[:, 0]).astype(np.intp) + pad
    ix = np.rint(pts[:, 1]).astype(np.intp) + pad
    inside = (iy >= 0) & (iy < hh) & (ix >= 0) & (ix < ww)
    if not inside.any():
        return None
    iy, ix, wid, con = iy[inside], ix[inside], wid[inside], con[inside]
    m = pad + 2
    y0, y1 = max(0, iy.min() - m), min(hh, iy.max() + m + 1)
    x0, x1 = max(0, ix.min() - m), min(ww, ix.max() + m + 1)
    wmap = np.zeros((y1 - y0, x1 - x0), np.float32)
    cmap = np.zeros_like(wmap)
    np.maximum.at(wmap, (iy - y0, ix - x0), wid.astype(np.float32))
    np.maximum.at(cmap, (iy - y0, ix - x0), con.astype(np.float32))
    dist, (ny, nx) = _ndimage().distance_transform_edt(wmap == 0, return_indices=True)
    in_window = (
        slice(max(y0, pad) - y0, min(y1, pad + cv.h) - y0),
        slice(max(x0, pad) - x0, min(x1, pad + cv.w) - x0),
    )
    on_canvas = (
        slice(max(y0, pad) - pad, min(y1, pad + cv.h) - pad),
        slice(max(x0, pad) - pad, min(x1, pad + cv.w) - pad),
    )
    return _CrackField(
        dist.astype(np.float32), wmap[ny, nx] * 0.5, cmap[ny, nx], in_window, on_canvas
    )


def _render_cracks(rng: np.random.Generator, cv: _Canvas, lines: list[_Polyline]) -> np.ndarray:
    """Rasterise crack polylines (through :func:`_crack_field`) into ``shade``; returns the
    coverage map alpha in [0, 1]."""
    alpha = np.zeros((cv.h, cv.w), np.float32)
    field = _crack_field(cv, lines, 10)  # cracks passing just outside still darken its border
    if field is None:
        return alpha
    dist, half = field.dist, field.half
    # Ragged walls: perturb the distance with fine noise so edges are not perfectly smooth.
    dist += _noise(rng, *dist.shape, 2.0) * np.float32(rng.uniform(0.1, 0.45))
    a = np.clip(half + 0.5 - dist, 0.0, 1.0)
    core = np.clip(1.0 - dist / (half + 1.0), 0.0, 1.0)  # deepest (darkest) in the middle
    depth = a * (0.65 + 0.35 * core) * field.contrast
    # Damp/dirty halo some cracks have, and chipped bright arrises on wide ones.
    if rng.random() < 0.4:
        depth += np.float32(rng.uniform(0.03, 0.1)) * np.exp(-dist / rng.uniform(2, 6)) * (1 - a)
    factor = 1.0 - np.clip(depth, 0.0, 0.95)
    if rng.random() < 0.35:
        rim = np.clip(half + 2.0 - dist, 0.0, 1.0) - a
        chips = _noise(rng, *dist.shape, rng.uniform(6, 20)) > 0.3
        factor += np.float32(rng.uniform(0.05, 0.15)) * rim * chips * (half > 1.2)
    cv.shade[field.on_canvas] *= factor[field.in_window]
    alpha[field.on_canvas] = a[field.in_window]
    return alpha


# --------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------


def _develop(rng: np.random.Generator, cv: _Canvas) -> np.ndarray:
    """Colour, exposure, lens blur and sensor noise; returns uint8 RGB."""
    pal = _PALETTES[rng.choice(len(_PALETTES), p=_PALETTE_P)]
    # Jitter along a warm/cool axis and a green axis only: independent per-channel jitter
    # produces purple/magenta casts that concrete never has.
    warm, green = rng.normal(0, 0.012), rng.normal(0, 0.006)
    pal = pal * np.array([1 + warm, 1 + green, 1 - warm], np.float32)
    bright = np.float32(np.clip(rng.normal(0.69, 0.09), 0.4, 0.9))
    # Slow warm/cool colour drift across the surface, folded into the palette per pixel.
    drift = np.float32(rng.uniform(0, 0.012)) * _noise(rng, cv.h, cv.w, 80)
    lum = bright * cv.shade
    rgb = np.empty((cv.h, cv.w, 3), np.float32)
    rgb[..., 0] = lum * (1.0 + drift) * pal[0]
    rgb[..., 1] = lum * pal[1]
    rgb[..., 2] = lum * (1.0 - drift) * pal[2]
    if cv.tint is not None:
        rgb *= cv.tint
    sigma = rng.uniform(0.45, 1.1)
    rgb = _ndimage().gaussian_filter(rgb, (sigma, sigma, 0), truncate=2.5)
    # Sensor noise after the lens blur; luminance-only because JPEG discards chroma noise anyway.
    noise = rng.standard_normal((cv.h, cv.w), dtype=np.float32)
    rgb += (noise * np.float32(rng.uniform(0.002, 0.01)))[..., None]
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Randomised patches: crack widths from hairlines to gaping spalled gaps, at a random zoom
# --------------------------------------------------------------------------------------------

# Crack width at the canvas's own pixel scale, log-uniform: hairlines (UAV75's drone crops show
# 1-5 px lines) to the wide, dark, spalled gaps of close-up wall photos.
WIDE_BASE = (1.0, 24.0)
# The canvas is rendered at 227/z px and resized to 227: z < 1 shows cracks and texture z times
# thinner (a distant shot), z > 1 thicker (a close-up).
ZOOM = (1 / 3, 1.5)


def _wide_width_profile(rng: np.random.Generator, n: int, base: float) -> np.ndarray:
    """The randomised renderer's widths: up to 40 px (gaping cracks)."""
    return _width_along(rng, n, base, 0.4, 40.0)


def _render_wide_cracks(rng: np.random.Generator, cv: _Canvas, lines: list[_Polyline]) -> None:
    """Darken ``cv`` along the cracks like :func:`_render_cracks`, with the margin and the
    ragged walls scaled by the widest crack, a shadowed, textured interior in wide gaps and,
    sometimes, chipped bright edges."""
    wmax = float(max(line.width.max() for line in lines))
    field = _crack_field(cv, lines, int(10 + wmax))
    if field is None:
        return
    dist, half = field.dist, field.half
    # Ragged walls: the roughness grows with the width (chipped aggregate along wide cracks).
    rough = np.float32(rng.uniform(0.1, 0.45)) + np.float32(rng.uniform(0.05, 0.25)) * half
    near = dist < 1
    cell = max(2.0, float(np.median(half[near]))) if near.any() else 2.0
    dist += _noise(rng, *dist.shape, cell) * rough
    alpha = np.clip(half + 0.5 - dist, 0.0, 1.0)
    core = np.clip(1.0 - dist / (half + 1.0), 0.0, 1.0)
    depth = alpha * (0.65 + 0.35 * core) * field.contrast
    if wmax > 4:  # a shadowed gap: darker towards the core, blotchy (depth, debris)
        wide = np.clip((half - 2.0) / 4.0, 0.0, 1.0)
        texture = _noise(rng, *dist.shape, rng.uniform(2.0, 6.0))
        depth = depth * (1 + wide * (0.25 * core + 0.12 * texture))
    if rng.random() < 0.4:
        depth += (
            np.float32(rng.uniform(0.03, 0.1)) * np.exp(-dist / rng.uniform(2, 6)) * (1 - alpha)
        )
    factor = 1.0 - np.clip(depth, 0.0, 0.97)
    if rng.random() < 0.5:  # chipped, bright arrises
        rim = np.clip(half + 2.0 + 0.3 * half - dist, 0.0, 1.0) - alpha
        chips = _noise(rng, *dist.shape, rng.uniform(6, 20)) > 0.3
        factor += np.float32(rng.uniform(0.05, 0.2)) * rim * chips * (half > 1.2)
    cv.shade[field.on_canvas] *= factor[field.in_window]


def render_randomised_patch(rng: np.random.Generator, crack: bool) -> np.ndarray:
    """A 227-px patch at a random zoom with a crack of random width (hairline to gap): what no
    single photographed set shows, for models that must serve any camera distance."""
    zoom = float(np.exp(rng.uniform(np.log(ZOOM[0]), np.log(ZOOM[1]))))
    size = max(64, round(PATCH_SIZE / zoom))
    cv = _patch_canvas(rng, size, crack)
    if crack:
        base = float(np.exp(rng.uniform(np.log(WIDE_BASE[0]), np.log(WIDE_BASE[1]))))
        _render_wide_cracks(rng, cv, _patch_cracks(rng, size, wide_base=base))
    image = _develop(rng, cv)
    if size != PATCH_SIZE:
        resized = Image.fromarray(image).resize((PATCH_SIZE, PATCH_SIZE), Image.Resampling.BILINEAR)
        image = np.asarray(resized)
    return image


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _patch_canvas(rng: np.random.Generator, size: int, crack: bool) -> _Canvas:
    """A lit ``size`` x ``size`` concrete surface with confusers, ready for cracks."""
    cv = _Canvas.new(size, size)
    _surface(rng, cv)
    _lighting(rng, cv, 0.12)
    rate = _POSITIVE_CONFUSER_RATE if crack else 1.0
    # Positives get the same confusers at a lower rate: cracked walls have joints and stains
    # too, and the model must not learn "joint or shadow => no crack".
    for fn, p in _CONFUSERS:
        if rng.random() < p * rate:
            fn(rng, cv)
    return cv


def render_patch(rng: np.random.Generator, crack: bool, size: int = PATCH_SIZE) -> np.ndarray:
    """Render one ``size`` x ``size`` RGB uint8 concrete patch, with a crack if ``crack``."""
    if size < 16:
        raise ValueError(f"patch size must be at least 16 px, got {size}")
    cv = _patch_canvas(rng, size, crack)
    if crack:
        _render_cracks(rng, cv, _patch_cracks(rng, size))
    return _develop(rng, cv)


def render_photo(
    rng: np.random.Generator, width: int = 1600, height: int = 1200, n_cracks: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Render a wall/slab photo with ``n_cracks`` long cracks and confusers.

    Returns ``(image, mask)``: uint8 (height, width, 3) RGB and uint8 (height, width) with 255 on
    crack pixels. Texture and crack widths use the patch pixel scale so 227-px windows of the
    photo look like training patches.
    """
    if width < 64 or height < 64:
        raise ValueError(f"photo must be at least 64x64 px, got {width}x{height}")
    if n_cracks < 0:
        raise ValueError(f"n_cracks must be >= 0, got {n_cracks}")
    cv = _Canvas.new(height, width)
    _surface(rng, cv)
    _lighting(rng, cv, 0.25)
    area = width * height / PATCH_SIZE**2  # number of patch-sized tiles, to scale counts
    if rng.random() < 0.7:
        _formwork(rng, cv, spacing=(200, 450))
    for _ in range(rng.poisson(0.06 * area) + 1):
        _stain(rng, cv, radius=rng.uniform(120, 450))
    _soft_shadow(rng, cv)  # the brief's shadow gradient: always one large penumbra
    for fn, lam in ((_scratch, 0.25), (_tie_hole, 0.06), (_region_edge, 0.03)):
        for _ in range(rng.poisson(lam * area)):
            fn(rng, cv)
    if rng.random() < 0.4:
        _straight_line(rng, cv)
    lines: list[_Polyline] = []
    diag = float(np.hypot(width, height))
    for _ in range(n_cracks):
        centre = (rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width)
        reach = (rng.uniform(0.25, 0.45) * diag, rng.uniform(0.25, 0.45) * diag)
        # Fewer faint cracks than in patches: a photo's cracks should be visible to a person.
        lines += _crack_system(
            rng, centre, reach, 2 + rng.poisson(2.5), (80, 450), _crack_shape(rng, faint_p=0.1)
        )
    alpha = _render_cracks(rng, cv, lines) if lines else np.zeros((height, width), np.float32)
    mask = np.where(alpha >= 0.5, 255, 0).astype(np.uint8)
    return _develop(rng, cv), mask


def patch_rng(seed: int, label: str, index: int) -> np.random.Generator:
    """Independent generator for item ``index`` of ``label`` under ``seed``.

    Keyed by (seed, crc32(label), index) through SeedSequence, so image i never depends on how
    many other images are rendered or in which order.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(label.encode()), index]))


def _save_jpeg(arr: np.ndarray, path: Path, quality: int) -> None:
    Image.fromarray(arr).save(
        path, "JPEG", quality=quality, subsampling=_JPEG_SUBSAMPLING, optimize=False
    )


def write_patch_set(
    out_dir: Path,
    n_per_class: int,
    seed: int,
    size: int = PATCH_SIZE,
    quality: int = 90,
    style: str = "classic",
) -> list[tuple[str, str]]:
    """Write ``n_per_class`` patches per class as ``out_dir/{Positive,Negative}/00001.jpg``:
    ``classic`` (:func:`render_patch`, one scale) or ``randomised``
    (:func:`render_randomised_patch`, random zoom and crack width; always 227 px).

    Returns ``[(relative_posix_path, label), ...]`` sorted by path. Files already in
    ``out_dir`` are overwritten, never deleted; give an empty directory for a clean set.
    """
    if n_per_class < 0:
        raise ValueError(f"n_per_class must be >= 0, got {n_per_class}")
    if n_per_class > 99999:
        raise ValueError(f"n_per_class must fit 5-digit names (<= 99999), got {n_per_class}")
    out_dir = Path(out_dir)
    entries: list[tuple[str, str]] = []
    for label in LABELS:
        (out_dir / label).mkdir(parents=True, exist_ok=True)
        for i in range(1, n_per_class + 1):
            rng = patch_rng(seed, label, i)
            crack = label == "Positive"
            arr = (
                render_randomised_patch(rng, crack)
                if style == "randomised"
                else render_patch(rng, crack, size=size)
            )
            rel = f"{label}/{i:05d}.jpg"
            _save_jpeg(arr, out_dir / rel, quality)
            entries.append((rel, label))
    return sorted(entries)


def write_photo_set(
    out_dir: Path,
    n_photos: int,
    seed: int,
    width: int = 1600,
    height: int = 1200,
    quality: int = 85,
) -> list[Path]:
    """Write ``n_photos`` synthetic wall photos as ``out_dir/photo_01.jpg`` ... (JPEG only).

    Each photo gets ``render_photo``'s default number of cracks; the masks are not written.
    """
    if n_photos < 0:
        raise ValueError(f"n_photos must be >= 0, got {n_photos}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digits = max(2, len(str(n_photos)))
    paths: list[Path] = []
    for i in range(1, n_photos + 1):
        rng = patch_rng(seed, "photo", i)
        img, _ = render_photo(rng, width, height)
        path = out_dir / f"photo_{i:0{digits}d}.jpg"
        _save_jpeg(img, path, quality)
        paths.append(path)
    return paths


def _ndimage() -> types.ModuleType:
    # scipy.ndimage costs ~0.5 s to import, paid only when rendering: the source registry
    # imports this module in every stage and command that asks what a source kind is.
    from scipy import ndimage

    return ndimage


def _fetch_synthetic(ctx: FetchContext, source: SyntheticSource) -> Brought:
    write_patch_set(ctx.target, source.per_class, ctx.seed, style=source.style)
    return Brought(Imported(None, None, []), f"{ctx.key} (synthetic)")


register_kind(SourceKind("synthetic", SyntheticSource, _fetch_synthetic))
