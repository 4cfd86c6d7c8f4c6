"""The procedural character renderer: identities, mouth, idle motion, anti-aliasing, batching."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from training.data import characters
from training.data.characters import CharacterParams, FaceState, idle_motion, render, render_batch, render_clip

FPS = 25.0


def identities(n: int, base: int = 10_000) -> list[CharacterParams]:
    return [CharacterParams.from_seed(i, base + i) for i in range(n)]


def to_px(coord: float, size: int) -> float:
    """Normalised image coordinate -> continuous pixel coordinate (pixel edges at integers)."""
    return (coord + 1) / 2 * size


def test_params_are_deterministic_and_round_trip() -> None:
    a, b = CharacterParams.from_seed(3, 42), CharacterParams.from_seed(3, 42)
    assert a == b
    assert np.array_equal(render(a, FaceState(), 64), render(b, FaceState(), 64))
    assert CharacterParams.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    many = [CharacterParams.from_seed(0, seed).to_dict() for seed in range(30)]
    assert len({json.dumps(d, sort_keys=True) for d in many}) == 30
    with pytest.raises(ValueError, match="hair_style"):
        dataclasses.replace(a, hair_style="mullet")


def test_idle_motion_is_deterministic_and_seeded() -> None:
    a, b, c = idle_motion(200, FPS, 7), idle_motion(200, FPS, 7), idle_motion(200, FPS, 8)
    assert set(a) == {"eye_open", "head_dx", "head_dy", "head_tilt", "head_nod", "brow", "smile"}
    for name in a:
        assert a[name].dtype == np.float32 and a[name].shape == (200,)
        assert np.array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name])
    # Each track has its own stream: a shorter clip is the start of a longer one.
    short = idle_motion(80, FPS, 7)
    assert all(np.array_equal(short[k], a[k][:80]) for k in a)


def test_identities_are_distinguishable_at_64() -> None:
    """The nearest neutral render identifies every idle frame, and identities differ far more than a
    character's own idle frames do."""
    params = identities(50)
    refs = np.stack([render(p, FaceState(), 64) for p in params]).astype(np.float32)
    between = np.abs(refs[:, None] - refs[None]).mean(axis=(2, 3, 4))
    np.fill_diagonal(between, np.inf)
    within, hits = [], 0
    for i, p in enumerate(params):
        states = {k: v[::25] for k, v in idle_motion(250, FPS, seed=i).items()}  # 10 frames over 10 s
        frames = render_batch(p, states, 64).astype(np.float32)
        dist = np.abs(frames[:, None] - refs[None]).mean(axis=(2, 3, 4))  # [10, 50]
        within.append(dist[:, i].max())
        hits += int((dist.argmin(axis=1) == i).sum())
    assert hits / (10 * len(params)) >= 0.95
    assert between.min() > 2 * max(within), (between.min(), max(within))


def test_mouth_opening_changes_the_mouth_and_little_else() -> None:
    size = 64
    inside = []
    for p in identities(20):
        closed = render(p, FaceState(mouth_open=0.0), size).astype(np.float32)
        opened = render(p, FaceState(mouth_open=1.0), size).astype(np.float32)
        diff = np.abs(opened - closed).mean(axis=-1)
        # The mouth's box at rest (corners to just below the dropped lower lip).
        x0, x1 = int(to_px(-1.3 * p.mouth_width, size)), int(np.ceil(to_px(1.3 * p.mouth_width, size)))
        y0 = int(to_px(p.head_y + p.mouth_y - 0.06, size))
        y1 = int(np.ceil(to_px(p.head_y + p.mouth_y + 0.25, size)))
        inside.append(diff[y0:y1, x0:x1].mean())
        # Outside the lower face (mouth line to below the dropped chin), nothing may move.
        lower_face = np.zeros_like(diff, dtype=bool)
        top, bottom = to_px(p.head_y + p.mouth_y - 0.1, size), to_px(p.head_y + p.face_bottom + 0.1, size)
        left, right = to_px(-p.face_rx - 0.08, size), to_px(p.face_rx + 0.08, size)
        lower_face[int(top):int(np.ceil(bottom)), int(left):int(np.ceil(right))] = True
        assert diff[~lower_face].mean() < 0.05, p.identity_id
        assert diff[y0:y1, x0:x1].sum() > 0.5 * diff.sum(), p.identity_id
    assert min(inside) > 12 and float(np.median(inside)) > 25, inside


def test_mouth_shapes_differ() -> None:
    p = CharacterParams.from_seed(1, 10_001)
    half = render(p, FaceState(mouth_open=0.5), 64).astype(np.float32)
    for other in (FaceState(mouth_open=0.5, mouth_wide=1.0), FaceState(mouth_open=0.5, mouth_round=1.0),
                  FaceState(mouth_open=0.5, smile=1.0)):
        assert np.abs(render(p, other, 64).astype(np.float32) - half).sum() > 500


def test_idle_tracks_blink_move_and_stay_smooth() -> None:
    limits = {"head_dx": 0.002, "head_dy": 0.002, "head_tilt": 0.006, "head_nod": 0.2, "brow": 0.2,
              "smile": 0.03, "eye_open": 0.75}
    for seed in range(30):
        tracks = idle_motion(250, FPS, seed)  # 10 s
        assert tracks["eye_open"].min() < 0.2, seed
        assert tracks["eye_open"].max() == 1.0
        blinks = int(((tracks["eye_open"][1:] < 0.5) & (tracks["eye_open"][:-1] >= 0.5)).sum())
        assert 1 <= blinks <= 6, (seed, blinks)
        for name, limit in limits.items():
            assert np.abs(np.diff(tracks[name])).max() <= limit, (seed, name)
            assert np.abs(np.diff(tracks[name])).max() > 0, (seed, name)
        assert np.abs(tracks["head_dx"]).max() < 0.03 and np.abs(tracks["head_dy"]).max() < 0.03
        assert np.abs(tracks["head_tilt"]).max() < 0.08


def test_idle_clip_is_never_static() -> None:
    for seed, p in enumerate(identities(3)):
        frames = render_batch(p, idle_motion(125, FPS, seed), 64).astype(np.int16)  # 5 s
        change = np.abs(np.diff(frames, axis=0)).reshape(len(frames) - 1, -1).max(axis=1)
        assert (change > 0).all(), seed


def test_render_clip_combines_mouth_with_idle_motion() -> None:
    p = CharacterParams.from_seed(2, 10_002)
    rng = np.random.default_rng(0)
    mouth = rng.uniform(0, 1, (12, 3)).astype(np.float32)
    clip = render_clip(p, mouth, seed=5, size=48)
    assert clip.shape == (12, 48, 48, 3) and clip.dtype == np.uint8
    states = idle_motion(12, FPS, 5)
    states.update(mouth_open=mouth[:, 0], mouth_wide=mouth[:, 1], mouth_round=mouth[:, 2])
    assert np.array_equal(clip, render_batch(p, states, 48))
    with pytest.raises(ValueError, match=r"\[F, 3\]"):
        render_clip(p, mouth[:, :2], seed=5, size=48)
    with pytest.raises(ValueError, match="unknown"):
        render_batch(p, {"jaw": np.zeros(3, np.float32)}, 48)


def test_resolution_independent() -> None:
    """A 256 render area-averaged to 64 matches the 64 render far better than a one-pixel shift does."""
    for p in identities(6):
        low = render(p, FaceState(mouth_open=0.4), 64).astype(np.float32)
        high = render(p, FaceState(mouth_open=0.4), 256).astype(np.float32)
        down = high.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
        shifted = render(p, FaceState(mouth_open=0.4, head_dx=1 / 64), 64).astype(np.float32)
        error, one_pixel = np.abs(down - low).mean(), np.abs(shifted - low).mean()
        assert error < 1.5 and error < 0.4 * one_pixel, (p.identity_id, error, one_pixel)


def test_edges_are_anti_aliased() -> None:
    """Eighth-of-a-pixel steps of the head change edge pixels by small amounts through intermediate
    values; an aliased renderer would flip them between two colours."""
    p = CharacterParams.from_seed(4, 10_004)
    steps = np.arange(8, dtype=np.float32) / 8 / 64  # head_dx is a fraction of the image
    frames = render_batch(p, {"head_dx": steps}, 64).astype(np.int16)
    step_change = np.abs(np.diff(frames, axis=0)).max()
    assert step_change <= 48, step_change
    moving = np.ptp(frames, axis=0).max(axis=-1) > 40  # pixels an edge sweeps across
    assert moving.sum() > 30
    levels = np.array([len(np.unique(frames[:, y, x].sum(-1))) for y, x in zip(*np.nonzero(moving), strict=True)])
    assert np.median(levels) >= 6, np.median(levels)


def test_render_batch_matches_render() -> None:
    p = CharacterParams.from_seed(5, 10_005)
    states = idle_motion(6, FPS, 3)
    states["mouth_open"] = np.linspace(0, 1, 6, dtype=np.float32)
    states["mouth_round"] = np.linspace(1, 0, 6, dtype=np.float32)
    batch = render_batch(p, states, 64)
    for f in range(6):
        single = render(p, FaceState(**{k: float(v[f]) for k, v in states.items()}), 64)
        assert np.array_equal(batch[f], single), f


def test_layer_crops_contain_their_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every layer is drawn on a crop of the image; widening every crop must change nothing, for any
    style and the most extreme states."""
    extremes = {
        "mouth_open": [1, 1, 0, 1], "mouth_wide": [1, 0, 1, 1], "mouth_round": [1, 0, 0, 1],
        "eye_open": [0, 1, 0.5, 1], "head_dx": [0.04, -0.04, 0, 0.02], "head_dy": [-0.04, 0.04, 0, -0.02],
        "head_tilt": [0.3, -0.3, 0.1, 0], "head_nod": [1, -1, 0.5, -0.5], "brow": [1, -1, 0, 1],
        "smile": [1, -1, 1, -1],
    }
    states = {k: np.array(v, np.float32) for k, v in extremes.items()}
    base = CharacterParams.from_seed(0, 123)
    variants = [dataclasses.replace(base, hair_style=h, hat=characters.HATS[i % len(characters.HATS)],
                                    glasses=characters.GLASSES[i % 3], beard=characters.BEARDS[i % 4],
                                    earrings=characters.EARRINGS[i % 3], nose_style=characters.NOSES[i % 4],
                                    moustache=bool(i % 2), freckles=6 * (i % 2), blush=0.3)
                for i, h in enumerate(characters.HAIR_STYLES)]
    # At 160 pixels the default margin is thin in image units, so loose bounds show up as cut shapes.
    tight = [render_batch(p, states, 160) for p in variants]
    monkeypatch.setattr(characters, "_MARGIN_PX", 60)
    for p, expected in zip(variants, tight, strict=True):
        assert np.array_equal(render_batch(p, states, 160), expected), p.hair_style
