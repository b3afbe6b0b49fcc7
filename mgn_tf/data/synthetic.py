"""Built-in synthetic dataset: procedurally drawn pedestrians written in the Market-1501 layout.

Needs no download. An identity is a deterministic function of ``(seed, pid)``: clothing colours and
patterns, body proportions, hair, bags. A camera is a deterministic function of ``(seed, camera)``:
colour cast, gamma, background, blur, noise, typical viewpoint and zoom. Every image adds its own jitter
(position, scale, walking pose, viewpoint, clutter, occlusion, brightness), so re-identification across
cameras has to see past lighting and pose, yet a small CNN trained from scratch learns it in minutes.

Layout written under ``root`` (names ``PPPP_cCsS_FFFFFF_BB.jpg`` as in Market-1501):

- ``bounding_box_train/``: identities ``1..num_train_ids``;
- ``query/``: one image per (test identity, camera) it appears in;
- ``bounding_box_test/``: the other images of the test identities (ids ``num_train_ids + 1 ..``), plus
  ``num_distractors`` pid-``0000`` images (partial people, background crops, strangers).

Every identity appears in at least two cameras, so each query has a gallery match from another camera.
"""

from __future__ import annotations

import argparse
import colorsys
import inspect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["generate_synthetic", "ensure_synthetic", "SPLITS", "MARKER_NAME"]

SPLITS = ("bounding_box_train", "query", "bounding_box_test")
MARKER_NAME = "synthetic_complete.json"  # written last: its presence means the dataset is complete
_OWNER_NAME = ".mgn_synthetic"  # written first and kept: the split folders belong to this module
_FORMAT_VERSION = 1

# Independent random streams: (seed, stream, ...) -> numpy Generator.
_S_IDENTITY, _S_CAMERA, _S_IMAGE, _S_DISTRACTOR, _S_LAYOUT = range(5)

Colour = tuple[int, int, int]

# fmt: off
# Clothing palettes: (rgb, weight). Dark and neutral colours dominate, as in street scenes, so many
# people share a colour and identity has to come from the combination of attributes.
_UPPER_PALETTE: list[tuple[Colour, float]] = [
    ((28, 28, 32), 3.0), ((232, 232, 228), 2.5), ((128, 128, 130), 1.5), ((32, 42, 92), 1.5),
    ((55, 105, 195), 1.0), ((140, 180, 225), 0.8), ((185, 30, 38), 1.2), ((105, 22, 35), 0.7),
    ((40, 125, 65), 0.9), ((110, 112, 52), 0.6), ((225, 195, 45), 0.7), ((235, 120, 35), 0.5),
    ((235, 145, 175), 0.7), ((115, 50, 150), 1.0), ((110, 72, 42), 0.7), ((198, 178, 132), 0.8),
]
_LOWER_PALETTE: list[tuple[Colour, float]] = [
    ((25, 25, 30), 4.0), ((35, 45, 90), 2.0), ((65, 90, 135), 2.5), ((120, 120, 125), 1.2),
    ((195, 175, 130), 1.2), ((105, 70, 45), 0.8), ((225, 225, 220), 0.8), ((180, 35, 45), 0.4),
    ((50, 95, 60), 0.4), ((140, 175, 215), 0.6), ((225, 140, 170), 0.3),
]
_SHOE_PALETTE: list[tuple[Colour, float]] = [
    ((20, 20, 22), 4.0), ((235, 235, 235), 3.0), ((110, 75, 45), 1.0), ((120, 120, 125), 1.0),
    ((200, 40, 45), 0.5), ((50, 90, 180), 0.5),
]
_HAIR_PALETTE: list[tuple[Colour, float]] = [
    ((15, 13, 12), 5.0), ((55, 38, 25), 2.0), ((105, 70, 40), 1.0), ((200, 170, 110), 0.6),
    ((150, 150, 150), 0.4), ((130, 50, 25), 0.3),
]
_SCENE_PALETTE: list[Colour] = [
    (150, 150, 152), (120, 135, 150), (72, 100, 62), (52, 52, 56), (190, 180, 160), (150, 92, 72),
    (110, 110, 112), (170, 165, 155), (160, 105, 92), (95, 122, 72), (140, 140, 135), (85, 80, 75),
]
_OCCLUDER_COLOURS: list[Colour] = [(150, 150, 155), (90, 90, 95), (60, 60, 65), (170, 40, 40), (40, 60, 120)]
# fmt: on


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """Generator for one random stream; independent of generation order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[int(k) for k in keys]]))


def _pick(rng: np.random.Generator, palette: list[tuple[Colour, float]]) -> Colour:
    weights = np.array([w for _, w in palette])
    return palette[int(rng.choice(len(palette), p=weights / weights.sum()))][0]


def _jitter_colour(rng: np.random.Generator, rgb: Colour, hue: float = 0.02, sv: float = 0.12) -> Colour:
    """Perturb a colour in HSV space (hue shift in turns, relative saturation / value)."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    h = (h + rng.uniform(-hue, hue)) % 1.0
    s = float(np.clip(s * rng.uniform(1 - sv, 1 + sv), 0, 1))
    v = float(np.clip(v * rng.uniform(1 - sv, 1 + sv) + rng.uniform(-0.03, 0.03), 0.04, 1))
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def _skin(rng: np.random.Generator) -> Colour:
    t = rng.beta(1.6, 2.2)
    light, dark = np.array([238, 200, 172]), np.array([95, 62, 42])
    return tuple(int(c) for c in np.round(light + t * (dark - light)))  # type: ignore[return-value]


@dataclass(frozen=True)
class _Identity:
    skin: Colour
    hair: Colour
    upper: Colour
    upper2: Colour  # pattern / logo / inner-shirt colour
    lower: Colour
    shoes: Colour
    bag_colour: Colour
    hair_style: int  # 0 short, 1 long, 2 cap
    upper_pattern: int  # 0 plain, 1 horizontal stripes, 2 vertical stripes, 3 checks, 4 logo, 5 open jacket
    stripe_period: float  # fraction of body height
    long_sleeves: bool
    lower_style: int  # 0 trousers, 1 shorts, 2 skirt
    bag: int  # 0 none, 1 backpack, 2 shoulder bag on the left, 3 on the right
    width: float
    leg_ratio: float  # hip height / body height
    head: float
    height: float


def _make_identity(rng: np.random.Generator) -> _Identity:
    upper = _jitter_colour(rng, _pick(rng, _UPPER_PALETTE))
    upper2 = _jitter_colour(rng, _pick(rng, _UPPER_PALETTE))
    for _ in range(4):  # a pattern needs contrast to be visible
        if sum(abs(a - b) for a, b in zip(upper, upper2, strict=True)) > 120:
            break
        upper2 = _jitter_colour(rng, _pick(rng, _UPPER_PALETTE))
    lower_style = int(rng.choice(3, p=[0.68, 0.2, 0.12]))
    return _Identity(
        skin=_skin(rng),
        hair=_jitter_colour(rng, _pick(rng, _HAIR_PALETTE), sv=0.2),
        upper=upper,
        upper2=upper2,
        lower=_jitter_colour(rng, _pick(rng, _LOWER_PALETTE)),
        shoes=_jitter_colour(rng, _pick(rng, _SHOE_PALETTE), sv=0.1),
        bag_colour=_jitter_colour(rng, _pick(rng, _UPPER_PALETTE), sv=0.2),
        hair_style=int(rng.choice(3, p=[0.55, 0.33, 0.12])),
        upper_pattern=int(rng.choice(6, p=[0.42, 0.16, 0.08, 0.1, 0.14, 0.1])),
        stripe_period=float(rng.uniform(0.035, 0.075)),
        long_sleeves=bool(rng.random() < 0.4),
        lower_style=lower_style,
        bag=int(rng.choice(4, p=[0.45, 0.3, 0.125, 0.125])),
        width=float(rng.uniform(0.85, 1.2)),
        leg_ratio=float(rng.uniform(0.45, 0.54)),
        head=float(rng.uniform(0.88, 1.15)),
        height=float(rng.uniform(0.9, 1.0)),
    )


@dataclass(frozen=True)
class _Camera:
    gain: tuple[float, float, float]  # per-channel colour cast
    bias: tuple[float, float, float]
    gamma: float
    wall: Colour
    floor: Colour
    horizon: float  # fraction of the image height
    texture: int  # 0 paving tiles, 1 horizontal bands, 2 blotchy noise, 3 vertical bars (fence / bikes)
    texture_scale: float
    side_light: float  # brightness slope across the image
    blur: float
    noise: float
    zoom: float
    view_p: tuple[float, float, float, float]  # front, back, facing left, facing right


def _make_camera(rng: np.random.Generator) -> _Camera:
    gain = rng.uniform(0.78, 1.24, size=3)
    gain = gain / gain.mean() * rng.uniform(0.85, 1.12)
    view_p = rng.dirichlet([1.2, 1.2, 0.7, 0.7])
    return _Camera(
        gain=tuple(float(g) for g in gain),  # type: ignore[arg-type]
        bias=tuple(float(b) for b in rng.uniform(-18, 18, size=3)),  # type: ignore[arg-type]
        gamma=float(rng.uniform(0.78, 1.3)),
        wall=_jitter_colour(rng, _SCENE_PALETTE[int(rng.integers(len(_SCENE_PALETTE)))], sv=0.2),
        floor=_jitter_colour(rng, _SCENE_PALETTE[int(rng.integers(len(_SCENE_PALETTE)))], sv=0.2),
        horizon=float(rng.uniform(0.3, 0.62)),
        texture=int(rng.integers(4)),
        texture_scale=float(rng.uniform(0.7, 1.5)),
        side_light=float(rng.uniform(-0.35, 0.35)),
        blur=float(rng.choice([0.0, 0.4, 0.7, 1.0])),
        noise=float(rng.uniform(2.0, 7.0)),
        zoom=float(rng.uniform(0.9, 1.04)),
        view_p=tuple(float(p) for p in view_p),  # type: ignore[arg-type]
    )


def _background(rng: np.random.Generator, cam: _Camera, h: int, w: int) -> Image.Image:
    """Background: wall / foliage above a horizon, textured ground below, some clutter."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = (cam.horizon + rng.uniform(-0.05, 0.05)) * h
    wall = np.array(cam.wall, np.float32) * rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    floor = np.array(cam.floor, np.float32) * rng.uniform(0.94, 1.06, size=3).astype(np.float32)
    below = (yy >= horizon)[..., None]
    img = np.where(below, floor, wall) * (0.88 + 0.24 * (yy / h))[..., None]
    period = 0.22 * h * cam.texture_scale
    phase_y, phase_x = rng.uniform(0, period, size=2)
    if cam.texture == 0:  # paving tiles
        grid = (((yy + phase_y) % period) < 1.2) | (((xx + phase_x) % (period * 0.8)) < 1.2)
        img = img * np.where(below & grid[..., None], 0.8, 1.0)
    elif cam.texture == 1:  # horizontal bands: steps, kerbs, windows
        img = img * (1.0 - 0.1 * (((yy + phase_y) // (period * 0.5)) % 2))[..., None]
    elif cam.texture == 2:  # smooth blotches: foliage, shade
        coarse = rng.normal(0, 1, size=(max(2, h // 10), max(2, w // 10))).astype(np.float32)
        blot = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
        img = img * (1.0 + 0.09 * blot)[..., None]
    else:  # vertical bars above the horizon: railings, tree trunks
        bars = ((xx + phase_x) % (period * 0.6)) < period * 0.15
        img = np.where((~below) & bars[..., None], img * 0.6, img)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(0, 4))):  # clutter behind the person: boxes, bicycles
        colour = _jitter_colour(rng, _SCENE_PALETTE[int(rng.integers(len(_SCENE_PALETTE)))], sv=0.3)
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(0.1, 0.9) * h
        if rng.random() < 0.5:
            draw.rectangle(
                [x0, y0, x0 + rng.uniform(0.15, 0.5) * w, y0 + rng.uniform(0.1, 0.3) * h], fill=colour
            )
        else:
            rad = rng.uniform(0.1, 0.18) * h
            for dx in (0.0, 2.2 * rad):
                draw.ellipse(
                    [x0 + dx - rad, y0 - rad, x0 + dx + rad, y0 + rad],
                    outline=(40, 40, 45),
                    width=max(1, h // 64),
                )
    return out


def _rot(px: float, py: float, ox: float, oy: float, angle: float) -> tuple[float, float]:
    """Rotate point (px, py) by ``angle`` radians about (ox, oy)."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = px - ox, py - oy
    return ox + c * dx - s * dy, oy + s * dx + c * dy


def _limb(x: float, y: float, length: float, w0: float, w1: float, angle: float) -> list[tuple[float, float]]:
    """Quadrilateral hanging down from (x, y), widths w0 (top) and w1 (bottom), rotated by ``angle``."""
    pts = [(x - w0, y), (x + w0, y), (x + w1, y + length), (x - w1, y + length)]
    return [_rot(px, py, x, y, angle) for px, py in pts]


def _pattern(ident: _Identity, view: int, u: float, box: tuple[int, int, int, int], cx: float) -> np.ndarray:
    """RGB uint8 texture of the torso over ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    a, b = np.array(ident.upper, np.uint8), np.array(ident.upper2, np.uint8)
    p = max(2.0, ident.stripe_period * u)
    kind = ident.upper_pattern
    if kind == 1:
        sel = ((yy - y0) // p) % 2 == 1
    elif kind == 2:
        sel = ((xx - cx) // p) % 2 == 1
    elif kind == 3:
        sel = (((yy - y0) // (1.4 * p)) + ((xx - cx) // (1.4 * p))) % 2 == 1
    elif kind == 4 and view == 0:  # chest logo, visible from the front only
        r = 0.045 * u
        sel = (xx - cx) ** 2 + (yy - (y0 + 0.12 * u)) ** 2 < r * r
    elif kind == 5 and view == 0:  # open jacket over a shirt
        sel = np.abs(xx - cx) < 0.035 * u
    elif kind == 5 and view != 1:
        sel = np.abs(xx - cx - (0.02 * u if view == 2 else -0.02 * u)) < 0.012 * u
    else:
        sel = np.zeros(yy.shape, bool)
    return np.where(sel[..., None], b, a)


def _draw_person(
    img: Image.Image,
    ident: _Identity,
    rng: np.random.Generator,
    cx: float,
    feet: float,
    u: float,
    view: int,
) -> None:
    """Draw a walking pedestrian of body height ``u`` pixels with feet at (cx, feet) onto ``img``."""
    draw = ImageDraw.Draw(img)
    side = view >= 2
    facing = -1.0 if view == 2 else 1.0  # walking direction in x for side views
    top = feet - u
    r = 0.062 * u * ident.head
    head_c = (cx + (0.015 * u * facing if side else 0.0), top + r)
    shoulder_y = top + 2 * r + 0.018 * u
    hip_y = feet - ident.leg_ratio * u
    wf = 0.62 if side else 1.0
    sw, hw = 0.145 * u * ident.width * wf, 0.115 * u * ident.width * wf
    leg_len = feet - hip_y - 0.02 * u
    lw = 0.05 * u * min(ident.width, 1.1)
    phase = rng.uniform(-1, 1)
    stride = math.radians(24 if side else 4) * phase
    arm_swing = math.radians(22 if side else 6) * phase

    def box(x: float, y: float, rx: float, ry: float) -> list[float]:
        return [x - rx, y - ry, x + rx, y + ry]

    bag = ident.bag
    bag_c = ident.bag_colour
    # Things behind the body.
    if bag == 1 and side:
        bx = cx - facing * sw * 1.1
        draw.rounded_rectangle(
            [
                min(bx, bx - facing * 0.1 * u),
                shoulder_y + 0.01 * u,
                max(bx, bx - facing * 0.1 * u),
                hip_y - 0.01 * u,
            ],
            radius=max(1, int(0.02 * u)),
            fill=bag_c,
        )
    if ident.hair_style == 1 and view != 0:
        draw.rectangle(
            [head_c[0] - r * 1.05, head_c[1], head_c[0] + r * 1.05, shoulder_y + 0.06 * u], fill=ident.hair
        )
    # Legs: the far leg first.
    hips = [cx] * 2 if side else [cx - 0.45 * hw, cx + 0.45 * hw]
    angles = [stride, -stride] if side else [-abs(stride) - 0.03, abs(stride) + 0.03]
    leg_fill = ident.skin if ident.lower_style else ident.lower
    for hx, ang in zip(hips, angles, strict=True):
        draw.polygon(_limb(hx, hip_y, leg_len, lw, lw * 0.8, ang), fill=leg_fill)
        if ident.lower_style == 1:  # shorts
            draw.polygon(_limb(hx, hip_y - 1, leg_len * 0.45, lw * 1.1, lw * 1.0, ang), fill=ident.lower)
        fx, fy = _rot(hx, hip_y + leg_len, hx, hip_y, ang)
        srx = 0.055 * u if side else 0.035 * u
        draw.ellipse(
            box(fx + (0.02 * u * facing if side else 0.0), fy + 0.01 * u, srx, 0.025 * u), fill=ident.shoes
        )
    if ident.lower_style == 0:  # trousers: cover the crotch
        draw.polygon([(cx - hw, hip_y - 1), (cx + hw, hip_y - 1), (cx, hip_y + 0.08 * u)], fill=ident.lower)
    elif ident.lower_style == 2:  # skirt
        sk = 0.32 * leg_len
        draw.polygon(
            [
                (cx - hw, hip_y - 1),
                (cx + hw, hip_y - 1),
                (cx + hw * 1.35, hip_y + sk),
                (cx - hw * 1.35, hip_y + sk),
            ],
            fill=ident.lower,
        )
    else:
        draw.rectangle([cx - hw, hip_y - 1, cx + hw, hip_y + 0.05 * u], fill=ident.lower)
    # Torso, filled with its pattern through a mask.
    torso = [
        (cx - sw, shoulder_y),
        (cx + sw, shoulder_y),
        (cx + hw, hip_y + 0.01 * u),
        (cx - hw, hip_y + 0.01 * u),
    ]
    bx0, by0 = int(max(0, math.floor(cx - sw - 1))), int(max(0, math.floor(shoulder_y - 1)))
    bx1, by1 = (
        int(min(img.width, math.ceil(cx + sw + 2))),
        int(min(img.height, math.ceil(hip_y + 0.01 * u + 2))),
    )
    if bx1 > bx0 and by1 > by0:
        mask = Image.new("L", (bx1 - bx0, by1 - by0), 0)
        ImageDraw.Draw(mask).polygon([(x - bx0, y - by0) for x, y in torso], fill=255)
        tex = Image.fromarray(_pattern(ident, view, u, (bx0, by0, bx1, by1), cx))
        img.paste(tex, (bx0, by0), mask)
    # Neck and head.
    draw.rectangle([cx - 0.025 * u, head_c[1] + r * 0.6, cx + 0.025 * u, shoulder_y + 1], fill=ident.skin)
    draw.ellipse(box(head_c[0], head_c[1], r * 0.9, r), fill=ident.skin if view != 1 else ident.hair)
    if view != 1:
        if ident.hair_style == 2:  # cap
            draw.chord(box(head_c[0], head_c[1] - 0.1 * r, r * 0.98, r), 180, 360, fill=bag_c)
            if side:
                peak = sorted((head_c[0], head_c[0] + facing * r * 1.5))
                draw.rectangle([peak[0], head_c[1] - 0.2 * r, peak[1], head_c[1]], fill=bag_c)
        else:
            draw.chord(box(head_c[0], head_c[1] - 0.15 * r, r * 0.95, r * 1.02), 175, 365, fill=ident.hair)
            if side:  # hair covers the back of the head
                draw.pieslice(
                    box(head_c[0], head_c[1], r * 0.92, r),
                    90 if facing > 0 else -90,
                    270 if facing > 0 else 90,
                    fill=ident.hair,
                )
            if ident.hair_style == 1 and view == 0:
                for s in (-1, 1):
                    x0, x1 = sorted((head_c[0] + s * r * 0.75, head_c[0] + s * r * 1.05))
                    draw.rectangle([x0, head_c[1] - 0.2 * r, x1, shoulder_y + 0.05 * u], fill=ident.hair)
    elif ident.hair_style == 2:
        draw.chord(box(head_c[0], head_c[1] - 0.1 * r, r * 0.98, r), 180, 360, fill=bag_c)
    # Bags in front of the torso.
    strap_w = max(1, int(round(0.014 * u)))
    if bag == 1 and view == 1:
        draw.rounded_rectangle(
            [cx - sw * 0.8, shoulder_y + 0.02 * u, cx + sw * 0.8, hip_y - 0.02 * u],
            radius=max(1, int(0.025 * u)),
            fill=bag_c,
        )
    elif bag == 1 and view == 0:
        for s in (-1, 1):
            draw.line(
                [(cx + s * sw * 0.55, shoulder_y), (cx + s * sw * 0.6, hip_y - 0.06 * u)],
                fill=bag_c,
                width=strap_w,
            )
    elif bag in (2, 3):
        s = -1 if bag == 2 else 1  # side of the image the bag hangs on when seen from the front
        if view == 1:
            s = -s
        if not side or (s > 0) == (facing > 0):
            draw.line(
                [(cx - s * sw * 0.7, shoulder_y), (cx + s * hw * 1.1, hip_y)], fill=bag_c, width=strap_w
            )
            bxc = cx + s * (hw * 1.1 if not side else 0.0)
            draw.rectangle([bxc - 0.05 * u, hip_y - 0.03 * u, bxc + 0.05 * u, hip_y + 0.06 * u], fill=bag_c)
    # Arms.
    arm_len, aw = 0.36 * u, 0.032 * u * min(ident.width, 1.1)
    arm_xs = [cx] if side else [cx - sw * 0.92, cx + sw * 0.92]
    arm_angles = [-arm_swing] if side else [0.1 + abs(arm_swing) * 0.5, -0.1 - abs(arm_swing) * 0.5]
    for ax, ang in zip(arm_xs, arm_angles, strict=True):
        ay = shoulder_y + 0.015 * u
        draw.polygon(_limb(ax, ay, arm_len, aw, aw * 0.85, ang), fill=ident.skin)
        sleeve = arm_len if ident.long_sleeves else arm_len * 0.35
        draw.polygon(_limb(ax, ay - 1, sleeve, aw * 1.2, aw * 1.05, ang), fill=ident.upper)
        hx, hy = _rot(ax, ay + arm_len, ax, ay, ang)
        draw.ellipse(box(hx, hy, aw * 1.1, aw * 1.2), fill=ident.skin)


def _occlude(img: Image.Image, rng: np.random.Generator) -> None:
    """Partial occlusion: a pole, an object at the bottom, or a passer-by at the side."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    kind = int(rng.integers(3))
    colour = _jitter_colour(rng, _OCCLUDER_COLOURS[int(rng.integers(len(_OCCLUDER_COLOURS)))], sv=0.25)
    if kind == 0:
        x = rng.uniform(0, w)
        half = rng.uniform(0.03, 0.07) * w
        draw.rectangle([x - half, 0, x + half, h], fill=colour)
    elif kind == 1:
        draw.rectangle([0, h * rng.uniform(0.65, 0.85), w, h], fill=colour)
    else:
        edge = w * rng.uniform(0.15, 0.3)
        colour = _jitter_colour(rng, _pick(rng, _UPPER_PALETTE))
        if rng.random() < 0.5:
            draw.rounded_rectangle([-w, h * 0.2, edge, h * 1.1], radius=int(0.1 * w), fill=colour)
        else:
            draw.rounded_rectangle([w - edge, h * 0.2, 2 * w, h * 1.1], radius=int(0.1 * w), fill=colour)


def _camera_response(arr: np.ndarray, cam: _Camera, rng: np.random.Generator) -> np.ndarray:
    """Apply the camera's colour cast, gamma and side lighting plus per-image brightness jitter."""
    h, w = arr.shape[:2]
    x = (np.arange(w, dtype=np.float32) / max(1, w - 1) - 0.5)[None, :, None]
    light = (1.0 + cam.side_light * x) * rng.uniform(0.88, 1.12)
    gain = np.array(cam.gain, np.float32) * rng.uniform(0.96, 1.04, size=3).astype(np.float32)
    out = np.power(np.clip(arr / 255.0 * light, 0, 1), cam.gamma) * gain * 255.0
    return np.clip(out + np.array(cam.bias, np.float32), 0, 255)


def _render(
    ident: _Identity | None,
    cam: _Camera,
    rng: np.random.Generator,
    size: tuple[int, int],
    distractor: bool = False,
) -> Image.Image:
    """One (height, width) image of ``ident`` (or of nobody) seen by ``cam``."""
    h, w = size
    img = _background(rng, cam, h, w)
    if ident is not None:
        scale = cam.zoom * ident.height * rng.uniform(0.93, 1.05)
        u = 0.9 * h * scale
        cx = w / 2 + rng.uniform(-0.07, 0.07) * w
        feet = h * (0.965 + rng.uniform(-0.035, 0.025))
        if distractor:  # bad detections: shifted, cut or oversized boxes
            cx += rng.choice([-1, 1]) * rng.uniform(0.25, 0.5) * w
            feet += rng.uniform(-0.1, 0.45) * h
            u *= rng.uniform(0.8, 1.5)
        view = int(rng.choice(4, p=cam.view_p))
        _draw_person(img, ident, rng, cx, feet, u, view)
    if rng.random() < 0.2:
        _occlude(img, rng)
    arr = _camera_response(np.asarray(img, np.float32), cam, rng)
    img = Image.fromarray(arr.astype(np.uint8))
    radius = cam.blur * (h / 128.0) + rng.uniform(0, 0.3)
    if radius > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    noisy = np.asarray(img, np.float32) + rng.normal(0, cam.noise, size=(h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class _Job:
    split: str
    name: str
    pid: int
    cam: int  # 0-based
    index: int  # image index within (pid, camera), or distractor index


def _plan(
    seed: int,
    num_train_ids: int,
    num_test_ids: int,
    num_cameras: int,
    images_per_id_per_camera: int,
    num_distractors: int,
) -> list[_Job]:
    """Decide every file: which cameras see each identity, splits, frame numbers and names."""
    rng = _rng(seed, _S_LAYOUT)
    frame = rng.integers(0, 2000, size=num_cameras)
    min_cams = min(3, num_cameras)
    jobs: list[_Job] = []

    def name(pid: int, cam: int) -> str:
        frame[cam] += int(rng.integers(25, 400))
        seq = 1 + int(frame[cam]) // 160_000
        return f"{pid:04d}_c{cam + 1}s{seq}_{int(frame[cam]):06d}_{int(rng.integers(1, 4)):02d}.jpg"

    for pid in range(1, num_train_ids + num_test_ids + 1):
        test = pid > num_train_ids
        k = int(rng.integers(min_cams, num_cameras + 1))
        cams = sorted(int(c) for c in rng.choice(num_cameras, size=k, replace=False))
        for pos, cam in enumerate(cams):
            for i in range(images_per_id_per_camera):
                if not test:
                    split = SPLITS[0]
                elif images_per_id_per_camera >= 2:  # one query per camera, the rest in the gallery
                    split = SPLITS[1] if i == 0 else SPLITS[2]
                else:  # one image per camera: alternate cameras between query and gallery
                    split = SPLITS[1] if pos % 2 == 0 else SPLITS[2]
                jobs.append(_Job(split, name(pid, cam), pid, cam, i))
    for j in range(num_distractors):
        cam = int(rng.integers(num_cameras))
        jobs.append(_Job(SPLITS[2], name(0, cam), 0, cam, j))
    return jobs


def _owned(root: Path) -> bool:
    return (root / MARKER_NAME).exists() or (root / _OWNER_NAME).exists()


def generate_synthetic(
    root: str | Path,
    num_train_ids: int = 150,
    num_test_ids: int = 75,
    num_cameras: int = 6,
    images_per_id_per_camera: int = 2,
    image_size: tuple[int, int] = (128, 64),
    num_distractors: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write a synthetic Market-1501-layout dataset under ``root`` and return ``root``.

    Each identity is seen by a random subset of ``min(3, num_cameras)..num_cameras`` cameras, with
    ``images_per_id_per_camera`` images per camera. ``image_size`` is (height, width) of the JPEGs.
    Existing split folders are only overwritten if they were written by this module.
    """
    if num_cameras < 2:
        raise ValueError("num_cameras must be at least 2 (queries need a match from another camera)")
    if min(num_train_ids, num_test_ids, images_per_id_per_camera) < 1 or num_distractors < 0:
        raise ValueError("identity and image counts must be positive (num_distractors >= 0)")
    if num_train_ids + num_test_ids > 9999 or num_cameras > 9:
        raise ValueError("Market-1501 names allow at most 9999 identities and 9 cameras")
    h, w = int(image_size[0]), int(image_size[1])
    if h < 16 or w < 8:
        raise ValueError(f"image_size (height, width) too small: {image_size}")
    root = Path(root)
    dirs = [root / s for s in SPLITS]
    if not _owned(root) and any(d.is_dir() and any(d.iterdir()) for d in dirs):
        raise FileExistsError(
            f"{root} holds a dataset that generate_synthetic did not write; not overwriting"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / _OWNER_NAME).write_text(
        "written by mgn_tf.data.synthetic; the split folders may be regenerated\n"
    )
    (root / MARKER_NAME).unlink(missing_ok=True)
    for d in dirs:
        d.mkdir(exist_ok=True)
        for f in d.glob("*.jpg"):  # stale files of an earlier synthetic dataset
            f.unlink()

    jobs = _plan(seed, num_train_ids, num_test_ids, num_cameras, images_per_id_per_camera, num_distractors)
    cams = [_make_camera(_rng(seed, _S_CAMERA, c)) for c in range(num_cameras)]
    idents: dict[int, _Identity] = {}
    it = jobs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(jobs, desc="synthetic dataset", unit="img")
    for job in it:
        if job.pid == 0:
            rng = _rng(seed, _S_DISTRACTOR, job.index)
            ident = _make_identity(rng) if rng.random() < 0.8 else None
            img = _render(ident, cams[job.cam], rng, (h, w), distractor=True)
        else:
            if job.pid not in idents:
                idents[job.pid] = _make_identity(_rng(seed, _S_IDENTITY, job.pid))
            rng = _rng(seed, _S_IMAGE, job.pid, job.cam, job.index)
            img = _render(idents[job.pid], cams[job.cam], rng, (h, w))
        img.save(root / job.split / job.name, format="JPEG", quality=95)

    counts = {s: sum(j.split == s for j in jobs) for s in SPLITS}
    info = {
        "format_version": _FORMAT_VERSION,
        **_settings(
            root,
            seed,
            num_train_ids=num_train_ids,
            num_test_ids=num_test_ids,
            num_cameras=num_cameras,
            images_per_id_per_camera=images_per_id_per_camera,
            image_size=(h, w),
            num_distractors=num_distractors,
        ),
        "counts": counts,
    }
    tmp = root / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, root / MARKER_NAME)
    return root


def _settings(root: str | Path, seed: int, **kwargs: Any) -> dict[str, Any]:
    """All generate_synthetic settings for these arguments, defaults filled in, as stored in the marker."""
    bound = inspect.signature(generate_synthetic).bind(root, seed=seed, **kwargs)
    bound.apply_defaults()
    out = {k: v for k, v in bound.arguments.items() if k not in ("root", "progress")}
    out["image_size"] = [int(v) for v in out["image_size"]]
    return out


def _complete(root: Path, settings: dict[str, Any]) -> bool:
    """True if ``root`` holds a finished dataset generated with ``settings`` with all its files."""
    try:
        info = json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    if info.get("format_version") != _FORMAT_VERSION or any(info.get(k) != v for k, v in settings.items()):
        return False
    counts = info.get("counts", {})
    return all(
        (root / s).is_dir() and sum(1 for _ in (root / s).glob("*.jpg")) == counts.get(s, -1) for s in SPLITS
    )


def ensure_synthetic(root: str | Path, seed: int = 0, **kwargs: Any) -> Path:
    """Generate the synthetic dataset under ``root`` unless a complete one with the same settings is there.

    ``kwargs`` are further generate_synthetic arguments (defaults otherwise). Returns ``root``.
    """
    root = Path(root)
    settings = _settings(root, seed, **kwargs)
    if not _complete(root, settings):
        generate_synthetic(root, seed=seed, **kwargs)
    return root


def main(argv: list[str] | None = None) -> None:
    """``python -m mgn_tf.data.synthetic ROOT [--seed N] ...``"""
    defaults = inspect.signature(generate_synthetic).parameters
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    for name in (
        "seed",
        "num_train_ids",
        "num_test_ids",
        "num_cameras",
        "images_per_id_per_camera",
        "num_distractors",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=defaults[name].default)
    p.add_argument("--height", type=int, default=defaults["image_size"].default[0])
    p.add_argument("--width", type=int, default=defaults["image_size"].default[1])
    a = vars(p.parse_args(argv))
    root, size = a.pop("root"), (a.pop("height"), a.pop("width"))
    out = generate_synthetic(root, image_size=size, **a)
    print(json.loads((out / MARKER_NAME).read_text())["counts"])


if __name__ == "__main__":
    main()
