"""Drawing the synthetic dataset's images: identities, cameras, backgrounds and walking pedestrians.

`make_identity` draws an `Identity` (clothing colours and patterns, body proportions, hair, bags) and
`make_camera` a `Camera` (colour cast, gamma, background, blur, noise, typical viewpoint and zoom), each
from its own random generator. `render` draws one image of an identity seen by a camera from a third
generator, which gives every image its own jitter (position, scale, walking pose, viewpoint, clutter,
occlusion, brightness). The functions consume their generator in a fixed order, so the same generators
give the same pixels; which generator seeds what is decided in `mgn_tf.data.synthetic.layout`.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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
class Identity:
    """What makes a person recognisable across cameras: colours, clothing, hair, bags, proportions."""

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


def make_identity(rng: np.random.Generator) -> Identity:
    upper = _jitter_colour(rng, _pick(rng, _UPPER_PALETTE))
    upper2 = _jitter_colour(rng, _pick(rng, _UPPER_PALETTE))
    for _ in range(4):  # a pattern needs contrast to be visible
        if sum(abs(a - b) for a, b in zip(upper, upper2, strict=True)) > 120:
            break
        upper2 = _jitter_colour(rng, _pick(rng, _UPPER_PALETTE))
    lower_style = int(rng.choice(3, p=[0.68, 0.2, 0.12]))
    return Identity(
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
class Camera:
    """What a camera adds to every image it takes: colour response, scene, optics, viewpoints."""

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


def make_camera(rng: np.random.Generator) -> Camera:
    gain = rng.uniform(0.78, 1.24, size=3)
    gain = gain / gain.mean() * rng.uniform(0.85, 1.12)
    view_p = rng.dirichlet([1.2, 1.2, 0.7, 0.7])
    return Camera(
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


def _background(rng: np.random.Generator, cam: Camera, h: int, w: int) -> Image.Image:
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


def _pattern(ident: Identity, view: int, u: float, box: tuple[int, int, int, int], cx: float) -> np.ndarray:
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


@dataclass(frozen=True)
class _Body:
    """Where the parts of one pedestrian go, in pixels; computed once, shared by every drawing step."""

    cx: float  # centre line
    u: float  # body height
    view: int  # 0 front, 1 back, 2 facing left, 3 facing right
    side: bool  # a side view (2 or 3)
    facing: float  # walking direction in x for side views: -1 left, +1 right
    r: float  # head radius
    head_c: tuple[float, float]
    shoulder_y: float
    hip_y: float
    sw: float  # half the shoulder width
    hw: float  # half the hip width
    leg_len: float
    lw: float  # half the leg width at the hip
    stride: float  # leg angle (radians) of the walking pose
    arm_swing: float  # arm angle (radians) of the walking pose


def _body(ident: Identity, rng: np.random.Generator, cx: float, feet: float, u: float, view: int) -> _Body:
    """The body geometry for feet at (cx, feet); draws the walking phase, the person's only random number."""
    side = view >= 2
    facing = -1.0 if view == 2 else 1.0
    top = feet - u
    r = 0.062 * u * ident.head
    hip_y = feet - ident.leg_ratio * u
    wf = 0.62 if side else 1.0
    phase = rng.uniform(-1, 1)
    return _Body(
        cx=cx,
        u=u,
        view=view,
        side=side,
        facing=facing,
        r=r,
        head_c=(cx + (0.015 * u * facing if side else 0.0), top + r),
        shoulder_y=top + 2 * r + 0.018 * u,
        hip_y=hip_y,
        sw=0.145 * u * ident.width * wf,
        hw=0.115 * u * ident.width * wf,
        leg_len=feet - hip_y - 0.02 * u,
        lw=0.05 * u * min(ident.width, 1.1),
        stride=math.radians(24 if side else 4) * phase,
        arm_swing=math.radians(22 if side else 6) * phase,
    )


def _box(x: float, y: float, rx: float, ry: float) -> list[float]:
    """The bounding box of an ellipse centred on (x, y) with radii rx, ry."""
    return [x - rx, y - ry, x + rx, y + ry]


def _draw_person(
    img: Image.Image,
    ident: Identity,
    rng: np.random.Generator,
    cx: float,
    feet: float,
    u: float,
    view: int,
) -> None:
    """Draw a walking pedestrian of body height ``u`` pixels with feet at (cx, feet) onto ``img``.

    Painter's order, back to front: what the body hides, legs, lower clothing, torso, head and hair, bags
    in front, arms.
    """
    body = _body(ident, rng, cx, feet, u, view)
    draw = ImageDraw.Draw(img)
    _draw_behind_body(draw, ident, body)
    _draw_legs(draw, ident, body)
    _draw_lower_clothing(draw, ident, body)
    _draw_torso(img, ident, body)
    _draw_head(draw, ident, body)
    _draw_bags_in_front(draw, ident, body)
    _draw_arms(draw, ident, body)


def _draw_behind_body(draw: ImageDraw.ImageDraw, ident: Identity, b: _Body) -> None:
    """A backpack seen from the side, and long hair seen from behind or the side."""
    if ident.bag == 1 and b.side:
        bx = b.cx - b.facing * b.sw * 1.1
        draw.rounded_rectangle(
            [
                min(bx, bx - b.facing * 0.1 * b.u),
                b.shoulder_y + 0.01 * b.u,
                max(bx, bx - b.facing * 0.1 * b.u),
                b.hip_y - 0.01 * b.u,
            ],
            radius=max(1, int(0.02 * b.u)),
            fill=ident.bag_colour,
        )
    if ident.hair_style == 1 and b.view != 0:
        hx, hy = b.head_c
        draw.rectangle([hx - b.r * 1.05, hy, hx + b.r * 1.05, b.shoulder_y + 0.06 * b.u], fill=ident.hair)


def _draw_legs(draw: ImageDraw.ImageDraw, ident: Identity, b: _Body) -> None:
    """Both legs, the far one first, with shorts over them and a shoe at each foot."""
    u = b.u
    hips = [b.cx] * 2 if b.side else [b.cx - 0.45 * b.hw, b.cx + 0.45 * b.hw]
    angles = [b.stride, -b.stride] if b.side else [-abs(b.stride) - 0.03, abs(b.stride) + 0.03]
    leg_fill = ident.skin if ident.lower_style else ident.lower
    for hx, ang in zip(hips, angles, strict=True):
        draw.polygon(_limb(hx, b.hip_y, b.leg_len, b.lw, b.lw * 0.8, ang), fill=leg_fill)
        if ident.lower_style == 1:  # shorts
            draw.polygon(
                _limb(hx, b.hip_y - 1, b.leg_len * 0.45, b.lw * 1.1, b.lw * 1.0, ang), fill=ident.lower
            )
        fx, fy = _rot(hx, b.hip_y + b.leg_len, hx, b.hip_y, ang)
        srx = 0.055 * u if b.side else 0.035 * u
        draw.ellipse(
            _box(fx + (0.02 * u * b.facing if b.side else 0.0), fy + 0.01 * u, srx, 0.025 * u),
            fill=ident.shoes,
        )


def _draw_lower_clothing(draw: ImageDraw.ImageDraw, ident: Identity, b: _Body) -> None:
    """Trousers cover the crotch, a skirt flares over the thighs, shorts get a waistband."""
    cx, hw, hip_y = b.cx, b.hw, b.hip_y
    if ident.lower_style == 0:  # trousers
        draw.polygon([(cx - hw, hip_y - 1), (cx + hw, hip_y - 1), (cx, hip_y + 0.08 * b.u)], fill=ident.lower)
    elif ident.lower_style == 2:  # skirt
        sk = 0.32 * b.leg_len
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
        draw.rectangle([cx - hw, hip_y - 1, cx + hw, hip_y + 0.05 * b.u], fill=ident.lower)


def _draw_torso(img: Image.Image, ident: Identity, b: _Body) -> None:
    """The torso, a trapezoid from shoulders to hips, filled with the upper-clothing pattern via a mask."""
    cx, sw, hw, u = b.cx, b.sw, b.hw, b.u
    torso = [
        (cx - sw, b.shoulder_y),
        (cx + sw, b.shoulder_y),
        (cx + hw, b.hip_y + 0.01 * u),
        (cx - hw, b.hip_y + 0.01 * u),
    ]
    bx0, by0 = int(max(0, math.floor(cx - sw - 1))), int(max(0, math.floor(b.shoulder_y - 1)))
    bx1, by1 = (
        int(min(img.width, math.ceil(cx + sw + 2))),
        int(min(img.height, math.ceil(b.hip_y + 0.01 * u + 2))),
    )
    if bx1 > bx0 and by1 > by0:
        mask = Image.new("L", (bx1 - bx0, by1 - by0), 0)
        ImageDraw.Draw(mask).polygon([(x - bx0, y - by0) for x, y in torso], fill=255)
        tex = Image.fromarray(_pattern(ident, b.view, u, (bx0, by0, bx1, by1), cx))
        img.paste(tex, (bx0, by0), mask)


def _draw_head(draw: ImageDraw.ImageDraw, ident: Identity, b: _Body) -> None:
    """Neck and head (all hair from behind), then a cap, or hair unless seen from behind."""
    hx, hy = b.head_c
    draw.rectangle(
        [b.cx - 0.025 * b.u, hy + b.r * 0.6, b.cx + 0.025 * b.u, b.shoulder_y + 1], fill=ident.skin
    )
    draw.ellipse(_box(hx, hy, b.r * 0.9, b.r), fill=ident.skin if b.view != 1 else ident.hair)
    if ident.hair_style == 2:
        _draw_cap(draw, ident, b)
    elif b.view != 1:
        _draw_hair(draw, ident, b)


def _draw_cap(draw: ImageDraw.ImageDraw, ident: Identity, b: _Body) -> None:
    """A cap in the bag colour, its peak showing in side views."""
    hx, hy = b.head_c
    draw.chord(_box(hx, hy - 0.1 * b.r, b.r * 0.98, b.r), 180, 360, fill=ident.bag_colour)
    if b.side:
        peak = sorted((hx, hx + b.facing * b.r * 1.5))
        draw.rectangle([peak[0], hy - 0.2 * b.r, peak[1], hy], fill=ident.bag_colour)


def _draw_hair(draw: ImageDraw.ImageDraw, ident: Identity, b: _Body) -> None:
    """Hair on top of the head, over the back of it in side views, and long hair beside a front face."""
    hx, hy, r = b.head_c[0], b.head_c[1], b.r
    draw.chord(_box(hx, hy - 0.15 * r, r * 0.95, r * 1.02), 175, 365, fill=ident.hair)
    if b.side:  # hair covers the back of the head
        draw.pieslice(
            _box(hx, hy, r * 0.92, r),
            90 if b.facing > 0 else -90,
            270 if b.facing > 0 else 90,
            fill=ident.hair,
        )
    if ident.hair_style == 1 and b.view == 0:
        for s in (-1, 1):
            x0, x1 = sorted((hx + s * r * 0.75, hx + s * r * 1.05))
            draw.rectangle([x0, hy - 0.2 * r, x1, b.shoulder_y + 0.05 * b.u], fill=ident.hair)


def _draw_bags_in_front(draw: ImageDraw.ImageDraw, ident: Identity, b: _Body) -> None:
    """A backpack from behind, its straps from the front, or a shoulder bag with its strap across."""
    cx, sw, hw, u, shoulder_y, hip_y = b.cx, b.sw, b.hw, b.u, b.shoulder_y, b.hip_y
    bag, bag_c = ident.bag, ident.bag_colour
    strap_w = max(1, int(round(0.014 * u)))
    if bag == 1 and b.view == 1:
        draw.rounded_rectangle(
            [cx - sw * 0.8, shoulder_y + 0.02 * u, cx + sw * 0.8, hip_y - 0.02 * u],
            radius=max(1, int(0.025 * u)),
            fill=bag_c,
        )
    elif bag == 1 and b.view == 0:
        for s in (-1, 1):
            draw.line(
                [(cx + s * sw * 0.55, shoulder_y), (cx + s * sw * 0.6, hip_y - 0.06 * u)],
                fill=bag_c,
                width=strap_w,
            )
    elif bag in (2, 3):
        s = -1 if bag == 2 else 1  # side of the image the bag hangs on when seen from the front
        if b.view == 1:
            s = -s
        if not b.side or (s > 0) == (b.facing > 0):
            draw.line(
                [(cx - s * sw * 0.7, shoulder_y), (cx + s * hw * 1.1, hip_y)], fill=bag_c, width=strap_w
            )
            bxc = cx + s * (hw * 1.1 if not b.side else 0.0)
            draw.rectangle([bxc - 0.05 * u, hip_y - 0.03 * u, bxc + 0.05 * u, hip_y + 0.06 * u], fill=bag_c)


def _draw_arms(draw: ImageDraw.ImageDraw, ident: Identity, b: _Body) -> None:
    """Arms swinging with the stride (one arm in side views), sleeves over them and a hand at each end."""
    u = b.u
    arm_len, aw = 0.36 * u, 0.032 * u * min(ident.width, 1.1)
    arm_xs = [b.cx] if b.side else [b.cx - b.sw * 0.92, b.cx + b.sw * 0.92]
    arm_angles = [-b.arm_swing] if b.side else [0.1 + abs(b.arm_swing) * 0.5, -0.1 - abs(b.arm_swing) * 0.5]
    for ax, ang in zip(arm_xs, arm_angles, strict=True):
        ay = b.shoulder_y + 0.015 * u
        draw.polygon(_limb(ax, ay, arm_len, aw, aw * 0.85, ang), fill=ident.skin)
        sleeve = arm_len if ident.long_sleeves else arm_len * 0.35
        draw.polygon(_limb(ax, ay - 1, sleeve, aw * 1.2, aw * 1.05, ang), fill=ident.upper)
        hx, hy = _rot(ax, ay + arm_len, ax, ay, ang)
        draw.ellipse(_box(hx, hy, aw * 1.1, aw * 1.2), fill=ident.skin)


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


def _camera_response(arr: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Apply the camera's colour cast, gamma and side lighting plus per-image brightness jitter."""
    h, w = arr.shape[:2]
    x = (np.arange(w, dtype=np.float32) / max(1, w - 1) - 0.5)[None, :, None]
    light = (1.0 + cam.side_light * x) * rng.uniform(0.88, 1.12)
    gain = np.array(cam.gain, np.float32) * rng.uniform(0.96, 1.04, size=3).astype(np.float32)
    out = np.power(np.clip(arr / 255.0 * light, 0, 1), cam.gamma) * gain * 255.0
    return np.clip(out + np.array(cam.bias, np.float32), 0, 255)


def render(
    ident: Identity | None,
    cam: Camera,
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
