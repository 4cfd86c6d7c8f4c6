"""Procedurally drawn talking characters: identities, per-frame face states, idle motion, rendering.

Every part of a character is a signed-distance function (SDF) evaluated at pixel centres in
normalised coordinates: the image spans [-1, 1] on both axes, y points down, so one pixel is
`2 / size` wide and the same parameters draw the same character at any resolution. A shape's
coverage of a pixel is the box-filtered edge `clip(0.5 - d / pixel, 0, 1)`, i.e. a one-pixel
linear ramp, which is what area-averaging a finer render would give for a straight edge; strokes
thinner than a pixel cap that ramp at their width so they fade instead of thickening.

Layers are painted back to front. The head has its own coordinate frame (origin at the centre of
the face, units of the image's half-size) that follows the per-frame pose; the torso follows the
head's translation only partly. `render_batch` draws every frame of a clip at once: each layer is
evaluated on the pixel crop that contains it in any frame, as float32 arrays [F, h, w].
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np

RGB = tuple[int, int, int]

HAIR_STYLES = ("bald", "buzz", "short", "side_part", "fringe", "long", "bun", "afro")
HATS = ("none", "beanie", "headband", "top_hat", "cap")
GLASSES = ("none", "round", "square")
EARRINGS = ("none", "stud", "hoop")
BEARDS = ("none", "stubble", "goatee", "full")
NOSES = ("button", "long", "wide", "round")
NECKLINES = ("round", "v")
BACKGROUNDS = ("solid", "vertical", "diagonal", "radial", "stripes", "dots", "checker")

_F32 = np.float32

# Head pose. Roll pivots at the neck, below the face centre, so the chin stays over the shoulders.
_PIVOT = 0.5
_NOD_SHIFT = 0.05  # vertical travel of eyes/brows/nose/mouth/glasses at |head_nod| = 1
_NOD_SQUASH = 0.06  # vertical foreshortening of the whole head at |head_nod| = 1
_BODY_FOLLOW = 0.6  # fraction of the head's translation the torso follows
_JAW_DROP = 0.05  # the chin moves down this much at mouth_open = 1
_MARGIN_PX = 2  # crop margin beyond a layer's bounds: covers the anti-aliasing ramp


def _rgb(r: float, g: float, b: float) -> RGB:
    return (int(round(np.clip(r, 0, 255))), int(round(np.clip(g, 0, 255))), int(round(np.clip(b, 0, 255))))


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return _rgb(255 * r, 255 * g, 255 * b)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return _rgb(*(x + (y - x) * t for x, y in zip(a, b, strict=True)))


def _scale(c: RGB, k: float) -> RGB:
    return _rgb(*(x * k for x in c))


def _pick_palette(rng: np.random.Generator, anchors: list[RGB], jitter: float) -> RGB:
    """A colour between two neighbouring anchors, with a little per-channel noise."""
    i = int(rng.integers(len(anchors) - 1))
    base = _mix(anchors[i], anchors[i + 1], float(rng.uniform()))
    return _rgb(*(x + rng.normal(0, jitter) for x in base))


_SKIN_TONES: list[RGB] = [(255, 228, 206), (243, 200, 170), (228, 176, 136), (200, 140, 100),
                          (165, 108, 74), (124, 80, 55), (88, 58, 42)]
_HAIR_NATURAL: list[RGB] = [(22, 18, 18), (58, 40, 30), (105, 68, 40), (150, 70, 35), (195, 110, 50),
                            (222, 190, 120), (236, 226, 200), (150, 148, 145), (232, 232, 232)]
_EYE_COLOURS: list[RGB] = [(85, 52, 30), (48, 30, 20), (60, 115, 190), (70, 130, 80), (130, 100, 50),
                           (115, 128, 140), (175, 115, 40)]
_LIPSTICKS: list[RGB] = [(185, 30, 45), (225, 100, 145), (110, 30, 75), (235, 105, 80), (70, 20, 35)]
_METALS: list[RGB] = [(225, 185, 60), (205, 205, 215), (190, 120, 80)]


@dataclass(frozen=True)
class CharacterParams:
    """An identity: everything that stays fixed for a character.

    Lengths are in head-local units (the image spans [-1, 1], the head's origin is the centre of
    the face, y points down); colours are 0..255 RGB triples. The look depends only on the seed
    given to `from_seed`; `identity_id` is the label it is stored under.
    """

    identity_id: int
    # Face: an ellipse whose lower half narrows towards the chin (jaw_taper) and which is blended
    # towards its bounding box (face_square).
    head_y: float  # image y of the face centre
    face_rx: float  # half-width
    face_top: float  # centre to top of the forehead
    face_bottom: float  # centre to chin
    jaw_taper: float  # 0 round jaw .. 0.4 pointed chin
    face_square: float  # 0 oval .. 0.45 squarish
    skin: RGB
    blush: float  # cheek blush opacity, 0..0.35
    freckles: int  # freckles per cheek, 0 = none
    ear_size: float  # ear half-height
    # Hair
    hair_style: str  # one of HAIR_STYLES
    hair_color: RGB
    hair_volume: float  # how far the hair stands off the skull
    hairline: float  # forehead hairline height as a fraction of face_top
    # Eyes and brows
    eye_y: float
    eye_spacing: float  # centre to each eye's centre
    eye_rx: float
    eye_ry: float
    eye_color: RGB
    brow_gap: float  # eye top to brow
    brow_thickness: float  # half-thickness
    brow_arch: float
    brow_color: RGB
    # Nose and mouth
    nose_style: str  # one of NOSES
    nose_size: float  # scale, ~1
    mouth_y: float
    mouth_width: float  # half-width of the closed mouth at mouth_wide = 0.5
    lip_thickness: float
    lip_color: RGB
    # Body
    neck_width: float  # half-width
    shoulder_width: float  # half-width
    shirt_color: RGB
    neckline: str  # one of NECKLINES
    # Accessories
    glasses: str  # one of GLASSES
    glasses_color: RGB
    earrings: str  # one of EARRINGS
    earring_color: RGB
    hat: str  # one of HATS
    hat_color: RGB
    beard: str  # one of BEARDS
    moustache: bool
    beard_color: RGB
    # Background (static): a colour, a two-tone gradient or a two-tone pattern
    background: str  # one of BACKGROUNDS
    bg_color: RGB
    bg_color2: RGB
    bg_scale: float  # pattern frequency, cycles per image half-size
    bg_angle: float  # radians, direction of gradients and stripes

    def __post_init__(self) -> None:
        for name, allowed in (("hair_style", HAIR_STYLES), ("hat", HATS), ("glasses", GLASSES),
                              ("earrings", EARRINGS), ("beard", BEARDS), ("nose_style", NOSES),
                              ("neckline", NECKLINES), ("background", BACKGROUNDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {allowed}")

    @classmethod
    def from_seed(cls, identity_id: int, seed: int) -> CharacterParams:
        """A random identity, deterministic in `seed`."""
        rng = np.random.default_rng(seed)

        def u(lo: float, hi: float) -> float:
            return float(rng.uniform(lo, hi))

        def choose(options: tuple[str, ...], p: list[float] | None = None) -> str:
            return str(rng.choice(options, p=p))

        if rng.uniform() < 0.08:  # cartoon skins (green, blue, purple...) widen the colour space
            skin = _hsv(u(0, 1), u(0.25, 0.55), u(0.55, 0.9))
        else:
            skin = _pick_palette(rng, _SKIN_TONES, 6.0)
        if rng.uniform() < 0.15:
            hair = _hsv(u(0, 1), u(0.55, 0.9), u(0.45, 0.9))
        else:
            hair = _pick_palette(rng, _HAIR_NATURAL, 8.0)
        face_rx = u(0.40, 0.50)
        s = face_rx / 0.45  # inner features scale with the face
        face_top, face_bottom = u(0.48, 0.58), u(0.52, 0.64)
        eye_y = u(-0.07, 0.03)
        eye_rx = u(0.062, 0.09) * s
        mouth_y = face_bottom * u(0.46, 0.54)
        hair_style = choose(HAIR_STYLES, p=[0.08, 0.1, 0.17, 0.13, 0.14, 0.18, 0.1, 0.1])
        if rng.uniform() < 0.75:  # brows of the hair's colour, darkened unless already dark, to show
            brow = _scale(hair, 0.7) if sum(hair) > 200 else hair
        else:
            brow = _pick_palette(rng, _HAIR_NATURAL[:4], 6.0)
        if rng.uniform() < 0.3:
            lips = _mix(skin, _LIPSTICKS[int(rng.integers(len(_LIPSTICKS)))], u(0.6, 0.9))
        else:
            lips = _mix(_scale(skin, 0.72), (175, 55, 65), u(0.35, 0.6))
        beard = choose(BEARDS, p=[0.66, 0.1, 0.1, 0.14])
        bg_h, bg_s, bg_v = u(0, 1), u(0.15, 0.75), u(0.3, 0.95)
        background = choose(BACKGROUNDS, p=[0.2, 0.16, 0.14, 0.12, 0.14, 0.12, 0.12])
        bg2 = _hsv(bg_h + u(-0.15, 0.15), bg_s * u(0.5, 1.2), bg_v + (-1 if bg_v > 0.6 else 1) * u(0.15, 0.35))
        return cls(
            identity_id=int(identity_id),
            head_y=u(-0.13, -0.05), face_rx=face_rx, face_top=face_top, face_bottom=face_bottom,
            jaw_taper=u(0.0, 0.4), face_square=u(0.0, 0.45), skin=skin,
            blush=u(0.0, 0.35) if rng.uniform() < 0.5 else 0.0,
            freckles=int(rng.integers(4, 11)) if rng.uniform() < 0.15 else 0,
            ear_size=u(0.09, 0.13) * s,
            hair_style=hair_style, hair_color=hair, hair_volume=u(0.03, 0.1), hairline=u(0.45, 0.7),
            eye_y=eye_y, eye_spacing=u(0.16, 0.22) * s, eye_rx=eye_rx, eye_ry=eye_rx * u(0.5, 0.8),
            eye_color=_pick_palette(rng, _EYE_COLOURS, 8.0),
            brow_gap=u(0.035, 0.075), brow_thickness=u(0.012, 0.03) * s, brow_arch=u(0.0, 0.04),
            brow_color=brow,
            nose_style=choose(NOSES, p=[0.35, 0.25, 0.25, 0.15]), nose_size=u(0.8, 1.25) * s,
            mouth_y=mouth_y, mouth_width=face_rx * u(0.3, 0.38), lip_thickness=u(0.022, 0.038) * s,
            lip_color=lips,
            neck_width=face_rx * u(0.45, 0.62), shoulder_width=u(0.8, 1.1),
            shirt_color=_hsv(u(0, 1), u(0.1, 0.9), u(0.25, 0.95)), neckline=choose(NECKLINES),
            glasses=choose(GLASSES, p=[0.7, 0.15, 0.15]),
            glasses_color=_hsv(u(0, 1), u(0, 0.8), u(0.05, 0.7)),
            earrings=choose(EARRINGS, p=[0.75, 0.12, 0.13]),
            earring_color=_METALS[int(rng.integers(len(_METALS)))],
            hat=choose(HATS, p=[0.72, 0.08, 0.08, 0.05, 0.07]),
            hat_color=_hsv(u(0, 1), u(0.2, 0.9), u(0.2, 0.9)),
            beard=beard, moustache=bool(rng.uniform() < (0.6 if beard != "none" else 0.08)),
            beard_color=_scale(hair, u(0.75, 0.95)),
            background=background, bg_color=_hsv(bg_h, bg_s, bg_v), bg_color2=bg2,
            bg_scale=u(1.2, 3.0), bg_angle=u(0, math.pi),
        )

    def to_dict(self) -> dict:
        """JSON-friendly: colours become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> CharacterParams:
        return cls(**{f.name: tuple(d[f.name]) if isinstance(d[f.name], list) else d[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class FaceState:
    """What moves, per frame. Ranges documented; defaults = neutral.

    Rendering clips the bounded fields (all but head_dx, head_dy, head_tilt) to their ranges.
    """

    mouth_open: float = 0.0  # 0 closed .. 1 wide open (jaw drop)
    mouth_wide: float = 0.5  # 0 narrow .. 1 wide (spread lips, e.g. "ee")
    mouth_round: float = 0.0  # 0 .. 1 rounded/protruded lips (e.g. "oo")
    eye_open: float = 1.0  # 0 closed (blink) .. 1 open
    head_dx: float = 0.0  # head translation, fraction of image size (positive = right)
    head_dy: float = 0.0  # (positive = down)
    head_tilt: float = 0.0  # radians, roll about the neck (positive = clockwise on screen)
    head_nod: float = 0.0  # -1..1 pitch proxy (positive = looking down: features move down)
    brow: float = 0.0  # -1 frown .. 1 raised
    smile: float = 0.0  # -1 .. 1 mouth corners


_STATE_DEFAULTS = {f.name: f.default for f in fields(FaceState)}
_STATE_RANGES = {"mouth_open": (0, 1), "mouth_wide": (0, 1), "mouth_round": (0, 1), "eye_open": (0, 1),
                 "head_nod": (-1, 1), "brow": (-1, 1), "smile": (-1, 1)}


# --- signed distances (negative inside) and coverage -------------------------------------------


def _ellipse(x: np.ndarray, y: np.ndarray, rx, ry) -> np.ndarray:
    """Distance to an origin-centred ellipse, first-order: (k - 1) / |grad k| with k = |(x/rx, y/ry)|.

    Exact on the boundary, which is all anti-aliasing needs. rx, ry may be arrays (per pixel or per
    frame); the 1e-4 terms keep the centre pixel at -min(rx, ry) rather than 0/0.
    """
    # In-place arithmetic: this is the renderer's most evaluated function.
    nx, ny = x / rx, y / ry
    gx, gy = nx / rx, ny / ry
    nx *= nx
    ny *= ny
    nx += ny
    k0 = np.sqrt(nx, out=nx)
    gx *= gx
    gy *= gy
    gx += gy
    k1 = np.sqrt(gx, out=gx)
    k1 += 1e-4 / np.minimum(rx, ry)
    d = k0 - 1
    k0 += 1e-4
    d *= k0
    d /= k1
    return d


def _circle(x: np.ndarray, y: np.ndarray, r) -> np.ndarray:
    return np.sqrt(x * x + y * y) - r


def _rbox(x: np.ndarray, y: np.ndarray, hx, hy, r) -> np.ndarray:
    """Rounded rectangle, half-sizes hx, hy, corner radius r."""
    qx = np.abs(x) - (hx - r)
    qy = np.abs(y) - (hy - r)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


def _bumps(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Periodic parabolic arches in [0, 1], period 1, and their slope: a curly edge without trigonometry."""
    t = x - np.floor(x)
    return 4 * t * (1 - t), 4 - 8 * t


def _below(v: np.ndarray, line, slope) -> np.ndarray:
    """Signed distance to the curve v = line(u), negative below it (larger v); slope = line'(u).

    Dividing by the gradient's length keeps steep stretches of the curve anti-aliased like flat ones.
    """
    return (line - v) / np.sqrt(1 + slope * slope)


# --- the painter ---------------------------------------------------------------------------------


_Box = tuple[int, int, int, int]  # y0, y1, x0, x1 pixel crop
_Region = tuple[_Box, np.ndarray, np.ndarray] | None  # crop, u, v [F, h, w]; None when off-image


class _Painter:
    """One batch of frames: per-frame pose, the float canvas [F, H, W, 3] in 0..255, and crops.

    Per-frame values are [F, 1, 1] arrays so they broadcast over a crop [F, h, w].
    """

    def __init__(self, size: int, head_y: float, st: dict[str, np.ndarray]) -> None:
        self.size = size
        self.pw = 2.0 / size
        self.inv_pw = size / 2.0
        self.grid = ((np.arange(size, dtype=np.float64) + 0.5) * self.pw - 1).astype(_F32)
        self.st = {k: v.reshape(-1, 1, 1) for k, v in st.items()}
        self.frames = len(st["head_tilt"])
        # math.cos per frame, not np.cos: keeps a frame's pixels bit-identical whether it is rendered
        # alone or in a batch (vectorised transcendental kernels may differ in the last ulp).
        self.cos = np.array([math.cos(a) for a in st["head_tilt"].tolist()], _F32).reshape(-1, 1, 1)
        self.sin = np.array([math.sin(a) for a in st["head_tilt"].tolist()], _F32).reshape(-1, 1, 1)
        self.fs = (1 - _NOD_SQUASH * np.abs(self.st["head_nod"])).astype(_F32)
        self.pivot_x = 2 * self.st["head_dx"]
        self.pivot_y = head_y + _PIVOT + 2 * self.st["head_dy"]
        self.body_x = _BODY_FOLLOW * 2 * self.st["head_dx"]
        self.body_y = head_y + _BODY_FOLLOW * 2 * self.st["head_dy"]
        self.nod = _NOD_SHIFT * self.st["head_nod"]
        self.max_nod = float(np.abs(self.nod).max())
        self.canvas = np.empty((self.frames, size, size, 3), _F32)

    def _crop(self, xs: np.ndarray, ys: np.ndarray) -> _Box | None:
        """Pixel crop holding image points xs, ys (any shape) plus the margin; None if off-image."""
        def span(a: np.ndarray) -> tuple[int, int]:  # pixel i has its centre at (i + 0.5) * pw - 1
            first = math.floor((float(a.min()) + 1) * self.inv_pw - 0.5) - _MARGIN_PX
            last = math.ceil((float(a.max()) + 1) * self.inv_pw - 0.5) + _MARGIN_PX
            return max(0, first), min(self.size, last + 1)

        (y0, y1), (x0, x1) = span(ys), span(xs)
        return (y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None

    def head(self, umin: float, umax: float, vmin: float, vmax: float, inner: bool = False) -> _Region:
        """Crop and head-local coordinates u, v [F, h, w] of a head layer within those bounds.

        inner layers (eyes, brows, nose, mouth, glasses) also slide with the nod; their v is returned
        in the slid frame.
        """
        if inner:
            vmin, vmax = vmin - self.max_nod, vmax + self.max_nod
        cu = np.array([umin, umax, umin, umax], _F32).reshape(1, 4)
        cv = np.array([vmin, vmin, vmax, vmax], _F32).reshape(1, 4)
        qy = cv * self.fs[:, :, 0] - _PIVOT
        c, s = self.cos[:, :, 0], self.sin[:, :, 0]
        box = self._crop(self.pivot_x[:, :, 0] + c * cu - s * qy, self.pivot_y[:, :, 0] + s * cu + c * qy)
        if box is None:
            return None
        y0, y1, x0, x1 = box
        gx = self.grid[None, None, x0:x1] - self.pivot_x
        gy = self.grid[None, y0:y1, None] - self.pivot_y
        u = self.cos * gx + self.sin * gy
        v = (self.cos / self.fs) * gy - (self.sin / self.fs) * gx + _PIVOT / self.fs
        if inner:
            v -= self.nod
        return box, u, v

    def body(self, umin: float, umax: float, vmin: float, vmax: float) -> _Region:
        """Crop and torso coordinates [F, h, w] (image coordinates minus the torso's offset)."""
        xs = np.array([umin, umax], _F32)[None] + self.body_x[:, :, 0]
        ys = np.array([vmin, vmax], _F32)[None] + self.body_y[:, :, 0]
        box = self._crop(xs, ys)
        if box is None:
            return None
        y0, y1, x0, x1 = box
        u = np.broadcast_to(self.grid[None, None, x0:x1] - self.body_x, (self.frames, y1 - y0, x1 - x0))
        v = np.broadcast_to(self.grid[None, y0:y1, None] - self.body_y, (self.frames, y1 - y0, x1 - x0))
        return box, u, v

    def cov(self, d: np.ndarray, thickness=None, soft: float | None = None) -> np.ndarray:
        """Pixel coverage of the region d < 0.

        thickness: the shape's half-width when it may be thinner than a pixel (scalar or per-frame);
        caps the ramp so a thin stroke covers its true fraction of a pixel. soft: a wider ramp
        (in local units) for blurry shapes such as blush; never narrower than a pixel.
        """
        a = d * (-min(1.0 / soft, self.inv_pw) if soft else -self.inv_pw)
        a += 0.5
        upper = 1.0 if thickness is None else np.minimum(2 * self.inv_pw * thickness, 1.0).astype(_F32)
        return np.clip(a, 0, upper, out=a)

    def dot_cov(self, d: np.ndarray, radius: float) -> np.ndarray:
        """Coverage of a small disc: capped at its area in pixels (sqrt(pi) r / pixel)^2."""
        return self.cov(d, thickness=0.5 * min(1.0, (1.772 * radius * self.inv_pw) ** 2) / self.inv_pw)

    def paint(self, box: _Box, cov: np.ndarray, color: RGB, alpha: float = 1.0) -> None:
        """Blend color over the crop, weighted by coverage [F, h, w] times alpha."""
        y0, y1, x0, x1 = box
        target = self.canvas[:, y0:y1, x0:x1]
        if alpha != 1.0:
            cov = cov * alpha
        delta = np.subtract(np.asarray(color, _F32), target)
        delta *= cov[..., None]
        target += delta


# --- layers, back to front -------------------------------------------------------------------------


def _background(p: CharacterParams, size: int) -> np.ndarray:
    """[H, W, 3] static backdrop."""
    g = ((np.arange(size, dtype=np.float64) + 0.5) * (2.0 / size) - 1).astype(_F32)
    x, y = g[None, :], g[:, None]
    c1, c2 = np.asarray(p.bg_color, _F32), np.asarray(p.bg_color2, _F32)
    ca, sa = math.cos(p.bg_angle), math.sin(p.bg_angle)
    inv_pw = size / 2.0
    along = ca * x + sa * y  # coordinate along the gradient / across the stripes
    if p.background == "solid":
        t = np.zeros((size, size), _F32)
    elif p.background == "vertical":
        t = np.broadcast_to((y + 1) / 2, (size, size))
    elif p.background == "diagonal":
        t = (along + 1.42) / 2.84
    elif p.background == "radial":
        t = np.minimum(np.sqrt(x * x + y * y) / 1.42, 1.0)
    elif p.background == "stripes":
        f = p.bg_scale
        d = (np.abs(along * f - np.floor(along * f) - 0.5) - 0.25) / f  # half of each period is colour 2
        t = np.clip(0.5 - d * inv_pw, 0, 1)
    elif p.background == "dots":
        f = p.bg_scale
        cx, cy = x * f - np.floor(x * f) - 0.5, y * f - np.floor(y * f) - 0.5
        t = np.clip(0.5 - (np.sqrt(cx * cx + cy * cy) - 0.3) / f * inv_pw, 0, 1)
    else:  # checker: product of two anti-aliased square waves
        f = p.bg_scale / 2
        sx = np.clip((np.abs(x * f - np.floor(x * f) - 0.5) - 0.25) / f * inv_pw, -0.5, 0.5)
        sy = np.clip((np.abs(y * f - np.floor(y * f) - 0.5) - 0.25) / f * inv_pw, -0.5, 0.5)
        t = 0.5 + 2 * sx * sy
    return c1 + np.asarray(t, _F32)[..., None] * (c2 - c1)


def _hairline(p: CharacterParams, u: np.ndarray, nod: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forehead hairline v(u) and its slope: high in the middle, down to eye level at the temples.

    The drop n^4 (3 - 2 n^2) flattens out at the temples (|n| = 1), so the line has no kink there.
    """
    top = -p.face_top * p.hairline + 0.7 * nod
    n = np.clip(u * (1 / p.face_rx), -1, 1)  # beyond the temples the hair ends at eye level
    n2 = n * n
    line = top + (p.eye_y - top) * n2 * n2 * (3 - 2 * n2)
    slope = (12 / p.face_rx) * (p.eye_y - top) * n2 * n * (1 - n2)
    if p.hair_style == "side_part":
        line = line + 0.06 * n - 0.03
        slope = slope + (0.06 / p.face_rx) * (n2 < 1)
    return line, slope


def _hair_outer(p: CharacterParams, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Silhouette of the hair mass (behind and in front of the face alike)."""
    vol = p.hair_volume
    rx, top = p.face_rx + vol, p.face_top + vol + 0.02
    style = p.hair_style
    if style == "buzz":
        return _ellipse(u, v + 0.01, p.face_rx + 0.015, p.face_top + 0.03)
    if style == "side_part":
        return _ellipse(u + 0.03, v + 0.02, rx + 0.02, top + 0.02)
    if style == "fringe":  # bob: cut straight at mouth level
        return np.maximum(_ellipse(u, v, rx + 0.05, top + 0.1), v - p.mouth_y - 0.05)
    if style == "long":
        cap = _ellipse(u, v + 0.02, rx + 0.02, top)
        return np.minimum(cap, _rbox(u, v - 0.45, rx + 0.06, 0.5, 0.15))
    if style == "afro":
        d = _ellipse(u, v + 0.22, rx + 0.2, top)
        (bu, su), (bv, sv) = _bumps(u * 7), _bumps(v * 7)
        return (d - 0.025 * bu * bv) / np.sqrt(1 + (0.175 * su * bv) ** 2 + (0.175 * bu * sv) ** 2)
    return _ellipse(u, v + 0.02, rx, top)  # short, bun


def _hair_bounds(p: CharacterParams) -> tuple[float, float, float]:
    """(max |u|, -min v, max v) of the hair behind the face; the part in front ends higher or equal."""
    vol = p.hair_volume
    rx, top = p.face_rx + vol, p.face_top + vol + 0.04
    below_eyes = p.eye_y + 0.05
    return {
        "buzz": (p.face_rx + 0.02, p.face_top + 0.04, below_eyes),
        "side_part": (rx + 0.05, top + 0.02, below_eyes),
        "fringe": (rx + 0.05, top + 0.08, p.mouth_y + 0.05),
        "long": (rx + 0.06, top, 0.95),
        "afro": (rx + 0.23, top + 0.23, top - 0.19),
        "bun": (rx, max(top, p.face_top + 0.08 + 0.17 * p.face_rx / 0.45), below_eyes),
    }.get(p.hair_style, (rx, top, below_eyes))


def _draw_hair_back(pt: _Painter, p: CharacterParams) -> None:
    style = p.hair_style
    if style in ("bald", "buzz"):
        return
    umax, vtop, vbottom = _hair_bounds(p)
    region = pt.head(-umax, umax, -vtop, vbottom)
    if region is None:
        return
    box, u, v = region
    d = _hair_outer(p, u, v)
    if style in ("short", "side_part", "bun"):
        # Ends above the ears, curving up at the sides so the bottom corners are round.
        n = u * (1 / p.face_rx)
        d = np.maximum(d, -_below(v, p.eye_y + 0.05 - 0.3 * n * n, (-0.6 / p.face_rx) * n))
    if style == "bun":
        bun_r = 0.15 * p.face_rx / 0.45
        d = np.minimum(d, _circle(u, v + p.face_top + 0.06, bun_r))
    pt.paint(box, pt.cov(d), _scale(p.hair_color, 0.8))  # the back of the hair is in shadow


def _draw_body(pt: _Painter, p: CharacterParams) -> None:
    chin = p.face_bottom
    # Neck: from under the face down past the shirt, with the chin's shadow falling on it.
    region = pt.body(-p.neck_width, p.neck_width, chin * 0.4, 2.0)
    if region is not None:
        box, u, v = region
        d_neck = _rbox(u, v - chin * 0.4 - 0.6, p.neck_width, 0.6, 0.05)
        pt.paint(box, pt.cov(d_neck), _scale(p.skin, 0.9))
    region = pt.head(-p.neck_width, p.neck_width, chin * 0.6, chin + 0.2)
    if region is not None:
        box, u, v = region
        d = np.maximum(_ellipse(u, v - chin - 0.02, p.neck_width, 0.12), np.abs(u) - 0.95 * p.neck_width)
        pt.paint(box, pt.cov(d, soft=0.05), _scale(p.skin, 0.65), alpha=0.6)
    # Shirt: a wide ellipse of shoulders with the neckline cut out.
    sw, top = p.shoulder_width, chin + 0.22
    region = pt.body(-sw, sw, top, 2.0)
    if region is None:
        return
    box, u, v = region
    d = _ellipse(u, v - top - 0.55, sw, 0.55)
    if p.neckline == "round":
        cut = _ellipse(u, v - top, p.neck_width * 1.1, 0.12)
    else:
        cut = (2.2 * np.abs(u) + v - top - 0.22) / 2.4
    d = np.maximum(d, -cut)
    pt.paint(box, pt.cov(d), p.shirt_color)
    # Collar edge: a darker band just outside the neckline.
    edge = np.maximum(d, np.abs(cut - 0.015) - 0.015)
    pt.paint(box, pt.cov(edge, thickness=0.015), _scale(p.shirt_color, 0.7))


def _ear_anchor(p: CharacterParams) -> tuple[float, float]:
    """(|u|, v) of the ear centres: just outside the face outline, between eyes and nose."""
    ey = p.eye_y + 0.06
    t = min(max(ey / p.face_bottom, 0.0), 1.0)
    ry = p.face_top if ey < 0 else p.face_bottom
    half_width = p.face_rx * (1 - p.jaw_taper * t * t) * math.sqrt(max(0.0, 1 - (ey / ry) ** 2))
    return half_width + 0.15 * p.ear_size, ey


def _draw_ears(pt: _Painter, p: CharacterParams) -> None:
    ex, ey = _ear_anchor(p)
    erx, ery = 0.6 * p.ear_size, p.ear_size
    region = pt.head(-ex - erx, ex + erx, ey - ery, ey + ery)
    if region is None:
        return
    box, u, v = region
    au = np.abs(u)
    pt.paint(box, pt.cov(_ellipse(au - ex, v - ey, erx, ery)), p.skin)
    pt.paint(box, pt.cov(_ellipse(au - ex - 0.2 * erx, v - ey, 0.5 * erx, 0.65 * ery)), _scale(p.skin, 0.78))


def _jaw(p: CharacterParams, pt: _Painter, v: np.ndarray) -> np.ndarray:
    """v with the jaw dropped: below the mouth line the face stretches to move the chin by the drop."""
    drop = _JAW_DROP * pt.st["mouth_open"]
    below = p.face_bottom - p.mouth_y
    squeeze = (below / (below + drop)).astype(_F32)
    return np.where(v > p.mouth_y, p.mouth_y + (v - p.mouth_y) * squeeze, v)


def _face_sdf(p: CharacterParams, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The face outline (v from _jaw)."""
    t = np.clip(v * (1.0 / p.face_bottom), 0, 1)
    rx = p.face_rx * (1 - p.jaw_taper * t * t)
    ry = np.where(v < 0, _F32(p.face_top), _F32(p.face_bottom))
    d_ell = _ellipse(u, v, rx, ry)
    d_box = np.maximum(np.abs(u) - rx, np.abs(v) - ry)
    return d_ell + p.face_square * (d_box - d_ell)


def _draw_face(pt: _Painter, p: CharacterParams) -> None:
    region = pt.head(-p.face_rx, p.face_rx, -p.face_top, p.face_bottom + _JAW_DROP)
    if region is None:
        return
    box, u, v = region
    d = _face_sdf(p, u, _jaw(p, pt, v))
    inside = pt.cov(d)
    pt.paint(box, inside, p.skin)
    # A soft darker rim rounds the face and separates it from a background of similar colour.
    rim = np.clip(1 + d * (1 / 0.07), 0, 1)
    rim *= inside
    pt.paint(box, rim, _scale(p.skin, 0.8), alpha=0.45)
    if p.hair_style == "bald" and p.hat == "none":
        shine = _ellipse(u + 0.12 * p.face_rx, v + 0.75 * p.face_top, 0.14, 0.07)
        pt.paint(box, pt.cov(shine, soft=0.06), (255, 255, 255), alpha=0.25)


def _draw_earrings(pt: _Painter, p: CharacterParams) -> None:
    if p.earrings == "none":
        return
    ex, ey = _ear_anchor(p)
    lobe_y = ey + 0.85 * p.ear_size
    r = 0.02 if p.earrings == "stud" else 0.04
    cy = lobe_y + (0.0 if p.earrings == "stud" else 0.035)
    region = pt.head(-ex - r - 0.02, ex + r + 0.02, cy - r - 0.02, cy + r + 0.02)
    if region is None:
        return
    box, u, v = region
    d = _circle(np.abs(u) - ex, v - cy, r)
    if p.earrings == "stud":
        pt.paint(box, pt.dot_cov(d, r), p.earring_color)
    else:
        pt.paint(box, pt.cov(np.abs(d) - 0.008, thickness=0.008), p.earring_color)


def _draw_cheeks(pt: _Painter, p: CharacterParams) -> None:
    cx, cy = p.eye_spacing + 0.02, p.eye_y + p.eye_ry + 0.09
    if p.blush > 0:
        region = pt.head(-cx - 0.15, cx + 0.15, cy - 0.12, cy + 0.12, inner=True)
        if region is not None:
            box, u, v = region
            d = _ellipse(np.abs(u) - cx, v - cy, 0.075, 0.05)
            pt.paint(box, pt.cov(d, soft=0.06), (235, 95, 110), alpha=p.blush)
    if p.freckles:
        region = pt.head(-cx - 0.08, cx + 0.08, cy - 0.08, cy + 0.08, inner=True)
        if region is None:
            return
        box, u, v = region
        au = np.abs(u)
        r = 0.009
        d = None
        for k in range(p.freckles):  # a sunflower spiral: evenly spread with no random state
            rho, theta = 0.06 * math.sqrt((k + 0.5) / p.freckles), 2.39996 * k
            dk = _circle(au - cx - rho * math.cos(theta), v - cy - rho * math.sin(theta), r)
            d = dk if d is None else np.minimum(d, dk)
        pt.paint(box, pt.dot_cov(d, r), _scale(p.skin, 0.62), alpha=0.8)


def _draw_eyes(pt: _Painter, p: CharacterParams) -> None:
    ex, ey, erx, ery = p.eye_spacing, p.eye_y, p.eye_rx, p.eye_ry
    region = pt.head(-ex - erx - 0.02, ex + erx + 0.02, ey - ery - 0.03, ey + ery + 0.03, inner=True)
    if region is None:
        return
    box, u, v = region
    du, dv = np.abs(u) - ex, v - ey
    d_eye = _ellipse(du, dv, erx, ery)
    # The lid's edge is the upper arc of an ellipse through the eye's corners: a little above the
    # eye when open, nearly flat at half-closed, then the lower arc, down to the eye's bottom when
    # shut. Its height stays above 8% of the eye's: the ellipse distance degrades as it flattens.
    travel = 1 - 2.08 * pt.st["eye_open"]
    opening = travel < 0
    d_lid = _ellipse(du, dv, erx, (np.maximum(np.abs(travel), 0.08) * ery).astype(_F32))
    below_lid = np.where(opening, np.minimum(d_lid, -dv), np.maximum(-dv, -d_lid))
    d_open = np.maximum(d_eye, below_lid)
    pt.paint(box, pt.cov(d_open), (246, 244, 238))
    iris_r = 0.62 * min(erx, 1.3 * ery)
    d_iris = _circle(du, dv, iris_r)
    pt.paint(box, pt.cov(np.maximum(d_iris, d_open)), p.eye_color)
    pt.paint(box, pt.cov(np.maximum(d_iris + 0.5 * iris_r, d_open)), (15, 12, 12))
    glint_r = 0.2 * iris_r
    d_glint = _circle(du + 0.35 * iris_r, dv + 0.35 * iris_r, glint_r)
    pt.paint(box, pt.dot_cov(np.maximum(d_glint, d_open), glint_r), (255, 255, 255), alpha=0.9)
    # Lash line along the lid, the darkest thing around the eye, visible open or shut.
    lash = 0.011 * p.eye_rx / 0.075
    n = du * (1 / erx)
    taper = lash * (1 - 0.5 * n * n)  # thinner towards the corners
    d_lash = np.maximum(np.maximum(np.abs(d_lid) - taper, np.where(opening, dv, -dv)), np.abs(du) - erx)
    pt.paint(box, pt.cov(d_lash, thickness=lash), (28, 20, 20))


def _draw_brows(pt: _Painter, p: CharacterParams) -> None:
    ex, half_len = p.eye_spacing, 1.2 * p.eye_rx
    by = p.eye_y - p.eye_ry - p.brow_gap
    region = pt.head(-ex - half_len - 0.03, ex + half_len + 0.03, by - 0.14, by + 0.1, inner=True)
    if region is None:
        return
    box, u, v = region
    brow = pt.st["brow"]
    raise_, frown = np.maximum(brow, 0), np.maximum(-brow, 0)
    t = (np.abs(u) - ex) * (1 / half_len)  # -1 at the inner end, 1 at the outer
    inner = np.clip(0.5 - 0.5 * t, 0, 1)
    centre = by - p.brow_arch * (1 - t * t) - 0.05 * raise_ + frown * (0.012 + 0.045 * inner)
    slope = (2 * p.brow_arch * t - 0.0225 * frown) * (1 / half_len)
    thick = p.brow_thickness * (1.1 - 0.35 * np.clip(t, 0, 1))
    d = np.maximum(np.abs(_below(v, centre, slope)) - thick, np.abs(t) * half_len - half_len)
    pt.paint(box, pt.cov(d, thickness=p.brow_thickness * 1.1), p.brow_color)


def _draw_nose(pt: _Painter, p: CharacterParams) -> None:
    k = p.nose_size
    tip = p.eye_y + 0.62 * (p.mouth_y - p.eye_y)
    region = pt.head(-0.1 * k, 0.1 * k, p.eye_y, tip + 0.07 * k, inner=True)
    if region is None:
        return
    box, u, v = region
    shade = _scale(p.skin, 0.8)
    nostril_x, nostril_r = 0.024 * k, 0.011 * k
    if p.nose_style == "button":
        pt.paint(box, pt.cov(_ellipse(u, v - tip, 0.045 * k, 0.03 * k), soft=0.02), shade, alpha=0.7)
    elif p.nose_style == "long":
        side = np.abs(u - 0.03 * k + 0.02 * (tip - v)) - 0.008 * k  # a shadow line down one side
        ridge = np.maximum(side, np.abs(v - (p.eye_y + tip) / 2) - (tip - p.eye_y) / 2 + 0.03)
        pt.paint(box, pt.cov(ridge, thickness=0.008 * k), shade)
        pt.paint(box, pt.cov(_ellipse(u, v - tip, 0.04 * k, 0.028 * k), soft=0.02), shade, alpha=0.6)
    elif p.nose_style == "wide":
        nostril_x = 0.04 * k
        pt.paint(box, pt.cov(_ellipse(u, v - tip, 0.07 * k, 0.032 * k), soft=0.02), shade, alpha=0.7)
    else:  # round: a bulb with a highlight
        pt.paint(box, pt.cov(_circle(u, v - tip + 0.01 * k, 0.05 * k)), _scale(p.skin, 0.88))
        pt.paint(box, pt.cov(_circle(u + 0.015 * k, v - tip + 0.03 * k, 0.015 * k), soft=0.015),
                 (255, 255, 255), alpha=0.5)
    d = _ellipse(np.abs(u) - nostril_x, v - tip - 0.015 * k, nostril_r, 0.7 * nostril_r)
    pt.paint(box, pt.dot_cov(d, nostril_r), _scale(p.skin, 0.5))


def _mouth_geometry(p: CharacterParams, st: dict[str, np.ndarray]):
    """Per-frame (half-width, half-height, centre offset, lip thickness) of the mouth opening.

    The opening's centre sits half its height below the mouth line: the jaw drops, the upper lip stays.
    """
    opened, wide, rnd = st["mouth_open"], st["mouth_wide"], st["mouth_round"]
    half_w = p.mouth_width * (0.8 + 0.4 * wide) * (1 - 0.45 * rnd)
    half_h = 0.007 + 0.12 * (p.face_bottom / 0.58) * opened * (1 + 0.25 * rnd)
    lip = p.lip_thickness * (1 + 0.6 * rnd)
    return half_w.astype(_F32), half_h.astype(_F32), (0.5 * half_h).astype(_F32), lip.astype(_F32)


def _mouth_v(p: CharacterParams, pt: _Painter, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """v relative to the mouth line, which the smile bends (corners up for smile > 0)."""
    n = u * (1 / p.mouth_width)
    return v - p.mouth_y + (0.045 * pt.st["smile"]) * (n * n)


def _mouth_bounds(p: CharacterParams) -> tuple[float, float, float, float]:
    """Head-local box holding lips, opening and moustache for any mouth state and smile."""
    extreme = {"mouth_open": np.ones(1), "mouth_wide": np.ones(1), "mouth_round": np.ones(1)}
    _, half_h, _, lip = (float(x[0]) for x in _mouth_geometry(p, extreme))
    w = 1.2 * p.mouth_width + 0.35 * lip
    bend = 0.045 * (w / p.mouth_width) ** 2
    return -w, w, p.mouth_y - 1.1 * lip - 0.06 - bend, p.mouth_y + 1.5 * half_h + 1.3 * lip + bend


def _draw_beard(pt: _Painter, p: CharacterParams) -> None:
    if p.beard == "none":
        return
    top, bottom = p.eye_y - _NOD_SHIFT - 0.02, p.face_bottom + _JAW_DROP + 0.06
    region = pt.head(-p.face_rx - 0.06, p.face_rx + 0.06, top, bottom)
    if region is None:
        return
    box, u, v = region
    d = _face_sdf(p, u, _jaw(p, pt, v)) - 0.03  # the beard stands off the skin a little
    vm = v - pt.nod - p.mouth_y
    if p.beard == "goatee":
        d = np.maximum(d, _ellipse(u, vm - 0.08, 1.1 * p.mouth_width, 0.17))
    else:  # full and stubble cover the jaw, rising (like the hairline) to sideburns at eye level
        n = np.clip(u * (1 / p.face_rx), -1, 1)
        n2 = n * n
        rise = p.mouth_y - p.eye_y - 0.05
        top = -0.05 - rise * n2 * n2 * (3 - 2 * n2)
        d = np.maximum(d, _below(vm, top, (-12 / p.face_rx) * rise * n2 * n * (1 - n2)))
    if p.beard != "stubble":
        tufts, slope = _bumps(u * 18)
        d = (d - 0.01 * tufts) / np.sqrt(1 + (0.18 * slope) ** 2)
    alpha = 0.35 if p.beard == "stubble" else 1.0
    pt.paint(box, pt.cov(d), p.beard_color, alpha=alpha)


def _draw_mouth(pt: _Painter, p: CharacterParams) -> None:
    region = pt.head(*_mouth_bounds(p), inner=True)
    if region is None:
        return
    box, u, v = region
    half_w, half_h, centre, lip = _mouth_geometry(p, pt.st)
    vm = _mouth_v(p, pt, u, v) - centre
    d_lips = _ellipse(u, vm - 0.2 * lip, half_w + 0.35 * lip, half_h + 1.1 * lip)
    pt.paint(box, pt.cov(d_lips), p.lip_color)
    d_in = _ellipse(u, vm, half_w, half_h)
    pt.paint(box, pt.cov(d_in, thickness=half_h), (38, 10, 18))
    teeth = np.maximum(d_in, vm + half_h - np.minimum(0.45 * half_h, 0.035))
    pt.paint(box, pt.cov(teeth, thickness=np.minimum(0.225 * half_h, 0.0175)), (242, 238, 228))
    tongue = np.maximum(d_in, _ellipse(u, vm - half_h, 0.6 * half_w, 0.5 * half_h))
    pt.paint(box, pt.cov(tongue), (175, 70, 85))


def _draw_moustache(pt: _Painter, p: CharacterParams) -> None:
    if not p.moustache:
        return
    region = pt.head(*_mouth_bounds(p), inner=True)
    if region is None:
        return
    box, u, v = region
    _, _, _, lip = _mouth_geometry(p, pt.st)
    vm = _mouth_v(p, pt, u, v)
    n = u * (1 / p.mouth_width)
    d = _ellipse(u, vm + lip + 0.028 - 0.02 * n * n, 1.1 * p.mouth_width, 0.03)
    pt.paint(box, pt.cov(d), p.beard_color)


def _draw_glasses(pt: _Painter, p: CharacterParams) -> None:
    if p.glasses == "none":
        return
    ex, ey = p.eye_spacing, p.eye_y
    rad = max(1.45 * p.eye_rx, 0.5 * ex + 0.02)
    t = 0.009 + 0.004 * (sum(p.glasses_color) < 200)  # dark frames read as thicker
    side = p.face_rx + 0.02  # the temples reach the face's edge
    reach = max(side, ex + 1.05 * rad + t)
    region = pt.head(-reach, reach, ey - rad - 0.02, ey + rad + 0.02, inner=True)
    if region is None:
        return
    box, u, v = region
    au, dv = np.abs(u), v - ey
    if p.glasses == "round":
        lens = _circle(au - ex, dv, rad)
    else:
        lens = _rbox(au - ex, dv, rad * 1.05, rad * 0.8, 0.03)
    pt.paint(box, pt.cov(lens), (200, 225, 255), alpha=0.15)
    bridge = np.maximum(np.abs(dv + 0.3 * rad) - t, au - ex + 0.9 * rad)
    temple = np.maximum(np.maximum(np.abs(dv + 0.3 * rad) - t, ex + 0.9 * rad - au), au - side)
    frame = np.minimum(np.minimum(np.abs(lens) - t, bridge), temple)
    pt.paint(box, pt.cov(frame, thickness=t), p.glasses_color)


def _draw_hair_front(pt: _Painter, p: CharacterParams) -> None:
    style = p.hair_style
    if style == "bald":
        return
    umax, vtop, vbottom = _hair_bounds(p)
    region = pt.head(-umax, umax, -vtop, min(vbottom, 0.95 if style == "long" else p.mouth_y + 0.05))
    if region is None:
        return
    box, u, v = region
    d = _hair_outer(p, u, v)
    nod = 0.7 * pt.nod
    if style == "long":  # curtains down both sides, the face and neck seen through a window
        n = u * (1 / p.face_rx)
        parting = _below(v, -p.face_top * p.hairline + nod + 0.3 * n * n, (0.6 / p.face_rx) * n)
        d = np.maximum(d, -np.maximum(parting, np.abs(u) - 0.8 * p.face_rx))
    elif style == "fringe":
        tufts, slope = _bumps(u * 12)
        fringe = p.eye_y - p.eye_ry - p.brow_gap - 0.035 + nod + 0.015 * tufts
        d = np.maximum(d, -np.maximum(_below(v, fringe, 0.18 * slope), np.abs(u) - 0.82 * p.face_rx))
    else:
        line, slope = _hairline(p, u, nod)
        if style == "afro":  # the mass is behind; in front only a cap like short hair's, curly edged
            d = _ellipse(u, v + 0.02, p.face_rx + p.hair_volume, p.face_top + p.hair_volume + 0.02)
            tufts, tuft_slope = _bumps(u * 10)
            line, slope = line - 0.02 * tufts, slope - 0.2 * tuft_slope
        d = np.maximum(d, -_below(v, line, slope))
    pt.paint(box, pt.cov(d), p.hair_color, alpha=0.75 if style == "buzz" else 1.0)


def _draw_hat(pt: _Painter, p: CharacterParams) -> None:
    if p.hat == "none":
        return
    rx, top = p.face_rx, p.face_top
    brim = -top * 0.55
    region = pt.head(-rx - 0.25, rx + 0.25, -top - 0.8, brim + 0.25)
    if region is None:
        return
    box, u, v = region
    dark = _scale(p.hat_color, 0.7)
    if p.hat == "beanie":
        crown = np.maximum(_ellipse(u, v + 0.06, rx + 0.06, top + 0.14), v - brim)
        pt.paint(box, pt.cov(crown), p.hat_color)
        band = np.maximum(crown, brim - 0.08 - v)
        pt.paint(box, pt.cov(band), dark)
        pt.paint(box, pt.cov(_circle(u, v + top + 0.2, 0.08)), dark)
    elif p.hat == "headband":
        n = u * (1 / rx)
        band = np.abs(_below(v, brim + 0.05 + 0.12 * n * n, (0.24 / rx) * n)) - 0.035
        d = np.maximum(band, _ellipse(u, v + 0.02, rx + 0.03, top + 0.08))
        pt.paint(box, pt.cov(d), p.hat_color)
    elif p.hat == "top_hat":
        crown_y = -top - 0.22
        pt.paint(box, pt.cov(_rbox(u, v - crown_y, 0.7 * rx, 0.34, 0.03)), p.hat_color)
        band = _rbox(u, v - (-top * 0.75 - 0.08), 0.7 * rx, 0.04, 0.0)
        pt.paint(box, pt.cov(band), _mix(p.hat_color, (250, 250, 250), 0.5))
        pt.paint(box, pt.cov(_ellipse(u, v + top * 0.72, rx + 0.2, 0.05)), dark)
    else:  # cap: a dome with a peak seen from the front
        crown = np.maximum(_ellipse(u, v + 0.03, rx + 0.05, top + 0.1), v - brim)
        pt.paint(box, pt.cov(crown), p.hat_color)
        pt.paint(box, pt.cov(_ellipse(u, v - brim, 0.85 * rx, 0.07)), dark)


_LAYERS: tuple[Callable[[_Painter, CharacterParams], None], ...] = (
    _draw_hair_back, _draw_body, _draw_ears, _draw_face, _draw_earrings, _draw_cheeks, _draw_eyes,
    _draw_brows, _draw_nose, _draw_beard, _draw_mouth, _draw_moustache, _draw_glasses,
    _draw_hair_front, _draw_hat,
)
"""Paint order. Ears come before the face so its outline overlaps them; the beard before the
mouth so the lips lie on it; the moustache after, above the upper lip."""


# --- public rendering API ---------------------------------------------------------------------------

_FRAME_BUDGET_PX = 1 << 19  # pixels per chunk: keeps each layer's temporaries within the CPU caches


def render_batch(params: CharacterParams, states: Mapping[str, np.ndarray], size: int) -> np.ndarray:
    """Render F frames. states: FaceState field -> float [F] (missing fields take the neutral default).

    Returns uint8 [F, size, size, 3] RGB.
    """
    if size < 8:
        raise ValueError(f"size={size}: need at least 8 pixels")
    unknown = set(states) - set(_STATE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown FaceState fields {sorted(unknown)}")
    if not states:
        raise ValueError("states needs at least one [F] track to give the frame count")
    tracks = {k: np.asarray(v, _F32) for k, v in states.items()}
    lengths = {v.shape for v in tracks.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError(f"every state track must be [F], with the same F; got shapes {sorted(lengths)}")
    frames = next(iter(lengths))[0]
    full = {}
    for name, default in _STATE_DEFAULTS.items():
        track = tracks.get(name, np.full(frames, default, _F32))
        lo_hi = _STATE_RANGES.get(name)
        full[name] = np.clip(track, *lo_hi).astype(_F32) if lo_hi else track
    background = _background(params, size)
    out = np.empty((frames, size, size, 3), np.uint8)
    step = max(1, _FRAME_BUDGET_PX // (size * size))
    for start in range(0, frames, step):
        chunk = {k: v[start:start + step] for k, v in full.items()}
        pt = _Painter(size, params.head_y, chunk)
        pt.canvas[:] = background
        for layer in _LAYERS:
            layer(pt, params)
        pt.canvas += 0.5  # round to nearest; every paint is a convex blend so values stay in 0..255
        out[start:start + step] = pt.canvas
    return out


def render(params: CharacterParams, state: FaceState, size: int) -> np.ndarray:
    """One frame, uint8 [size, size, 3] RGB; identical to the same frame of `render_batch`."""
    return render_batch(params, {k: np.array([v], _F32) for k, v in asdict(state).items()}, size)[0]


def _bump_events(rng: np.random.Generator, t: np.ndarray, first: tuple[float, float], gap: tuple[float, float],
                 duration: tuple[float, float], amplitude: tuple[float, float]) -> np.ndarray:
    """Occasional smooth sin^2 bumps; amplitude may be negative (e.g. frowns)."""
    out = np.zeros_like(t)
    start, end = rng.uniform(*first), t[-1] if len(t) else 0.0
    while start <= end:
        dur, amp = rng.uniform(*duration), rng.uniform(*amplitude)
        phase = np.clip((t - start) / dur, 0, 1)
        out += amp * np.sin(np.pi * phase) ** 2
        start += dur + rng.uniform(*gap)
    return out


def _blinks(rng: np.random.Generator, t: np.ndarray, fps: float) -> np.ndarray:
    """eye_open: 1, with blinks every 2-6 s lasting 150-250 ms (a fast close, a slower reopen)."""
    eye = np.ones_like(t)
    start, end = rng.uniform(0.3, 2.5), t[-1] if len(t) else 0.0
    while start <= end:
        dur, depth = rng.uniform(0.15, 0.25), rng.uniform(0.92, 1.0)
        # Shut at a frame time: a blink shorter than a frame interval must still show closed.
        shut = round((start + 0.4 * dur) * fps) / fps
        closing = np.clip((t - (shut - 0.4 * dur)) / (0.4 * dur), 0, 1)
        opening = np.clip((t - shut) / (0.6 * dur), 0, 1)
        eye -= depth * np.where(t <= shut, closing, 1 - opening)
        start += dur + rng.uniform(2.0, 6.0)
    return np.clip(eye, 0, 1)


def idle_motion(num_frames: int, fps: float, seed: int) -> dict[str, np.ndarray]:
    """Idle behaviour: float32 [F] tracks for eye_open, head_dx, head_dy, head_tilt, head_nod, brow, smile.

    Blinks every 2-6 s (150-250 ms each, the first within 2.5 s), slow sway of the head (sums of
    0.05-0.35 Hz sinusoids, a couple of % of the image), occasional nods and brow raises, and a slowly
    drifting smile. Deterministic in seed; each track has its own random stream, so a longer clip
    starts with the same motion as a shorter one.
    """
    if fps <= 0:
        raise ValueError(f"fps={fps}")
    t = np.arange(num_frames, dtype=np.float64) / fps
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)]

    def sway(rng: np.random.Generator, amplitude: float) -> np.ndarray:
        freq, phase = rng.uniform(0.05, 0.35, 3), rng.uniform(0, 2 * np.pi, 3)
        weight = rng.uniform(0.5, 1.0, 3)
        weight *= amplitude / weight.sum()
        return (weight[:, None] * np.sin(2 * np.pi * freq[:, None] * t + phase[:, None])).sum(0)

    nod = sway(rngs[4], 0.1) + _bump_events(rngs[4], t, (0.5, 4.0), (2.5, 7.0), (0.5, 0.9), (0.2, 0.55))
    brow = (sway(rngs[5], 0.1) + rngs[5].uniform(-0.1, 0.15)
            + _bump_events(rngs[5], t, (1.0, 6.0), (3.0, 9.0), (0.6, 1.5), (-0.3, 0.7)))
    smile = sway(rngs[6], 0.15) + rngs[6].uniform(-0.05, 0.35)
    tracks = {
        "eye_open": _blinks(rngs[0], t, fps),
        "head_dx": sway(rngs[1], 0.015),
        "head_dy": sway(rngs[2], 0.01),
        "head_tilt": sway(rngs[3], 0.04),
        "head_nod": np.clip(nod, -1, 1),
        "brow": np.clip(brow, -1, 1),
        "smile": np.clip(smile, -1, 1),
    }
    return {k: v.astype(_F32) for k, v in tracks.items()}


def reference_image(character: CharacterParams | Mapping, size: int = 64) -> np.ndarray:
    """The character's neutral render, uint8 [size, size, 3]: the image a user uploads as the reference
    (the renderer's conditioning, and what identity similarity is measured against)."""
    params = character if isinstance(character, CharacterParams) else CharacterParams.from_dict(character)
    return render(params, FaceState(), size)


def render_clip(params: CharacterParams, mouth: np.ndarray, seed: int, size: int, fps: float = 25.0) -> np.ndarray:
    """A talking clip: mouth float [F, 3] (open, wide, round) with idle_motion(F, fps, seed) on top.

    Returns uint8 [F, size, size, 3].
    """
    mouth = np.asarray(mouth, _F32)
    if mouth.ndim != 2 or mouth.shape[1] != 3:
        raise ValueError(f"mouth must be [F, 3] (open, wide, round); got {mouth.shape}")
    states = idle_motion(len(mouth), fps, seed)
    states.update(mouth_open=mouth[:, 0], mouth_wide=mouth[:, 1], mouth_round=mouth[:, 2])
    return render_batch(params, states, size)
