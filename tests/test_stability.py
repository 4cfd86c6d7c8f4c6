"""Streaming-stability metrics: seam ratio on ground-truth video vs video with seams, drift, Fréchet distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.eval.stability import (
    boundary_mask,
    drift,
    frame_changes,
    frechet_distance,
    frechet_distance_from_stats,
    seam_ratio,
    seam_stats,
    trace_sqrt_product,
    window_slices,
    windowed,
)

CHUNK = 8


@pytest.fixture(scope="module")
def ground_truth() -> np.ndarray:
    """~40 s of ground-truth talking video (one long utterance, 125 chunks), uint8 [F, 64, 64, 3].

    One utterance rather than concatenated samples: a join between two samples is itself a jump
    in the mouth track, which would land on or off a chunk boundary by chance.
    """
    from training.data.characters import CharacterParams, render_clip
    from training.data.corpus import TB, CorpusConfig, SampleGenerator, stable_hash
    from training.data.speech import SpeakerParams
    from training.data.transcripts import transcript_from_seed
    from training.data.visemes import mouth_track

    gen = SampleGenerator(CorpusConfig())
    text = " ".join(transcript_from_seed(k) for k in range(6))
    waveform, phonemes = gen.synth.synthesize(text, SpeakerParams.from_seed(3, stable_hash("speaker", 3)))
    num_frames = math.ceil(len(waveform) / TB.samples_per_frame)
    mouth = mouth_track(phonemes, num_frames, TB.fps)
    frames = render_clip(CharacterParams.from_seed(0, stable_hash("identity", 0)), mouth, 1234, 64, TB.fps)
    assert frames.shape[1:] == (64, 64, 3) and len(frames) >= 80 * CHUNK
    return frames


def every_other_chunk(frames: np.ndarray, edit) -> np.ndarray:
    out = frames.copy()
    for k in range(1, math.ceil(len(frames) / CHUNK), 2):
        out[k * CHUNK:(k + 1) * CHUNK] = edit(frames[k * CHUNK:(k + 1) * CHUNK])
    return out


# ---- seams ------------------------------------------------------------------------------------

def test_boundary_mask_marks_pairs_across_chunks():
    m = boundary_mask(20, 8)
    assert m.shape == (19,)
    assert np.flatnonzero(m).tolist() == [7, 15]  # pairs (7, 8) and (15, 16)


def test_frame_changes_do_not_wrap_uint8():
    f = np.zeros((2, 4, 4, 3), np.uint8)
    f[0] = 10
    assert frame_changes(f).tolist() == [10.0]


def test_seam_ratio_synthetic_cases():
    ramp = np.broadcast_to(np.arange(40, dtype=np.uint8)[:, None, None, None] * 3, (40, 8, 8, 3))
    assert seam_ratio(ramp) == pytest.approx(1.0)  # uniform change everywhere
    assert seam_ratio(np.zeros((40, 8, 8, 3), np.uint8)) == 1.0  # static: seamless
    steps = np.repeat(np.arange(5, dtype=np.uint8) * 20, CHUNK)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    assert seam_ratio(steps) == math.inf  # change only at boundaries
    with pytest.raises(ValueError):
        seam_ratio(np.zeros((8, 8, 8, 3)))  # a single chunk has no boundary


def test_seam_ratio_ground_truth_is_one(ground_truth):
    # Chunking is arbitrary for ground truth: whatever the phase of the chunk grid, ~1.0.
    ratios = [seam_ratio(ground_truth[offset:], CHUNK) for offset in range(CHUNK)]
    assert all(abs(r - 1.0) <= 0.1 for r in ratios), ratios
    assert abs(np.mean(ratios) - 1.0) <= 0.05, ratios
    stats = seam_stats(ground_truth, CHUNK)
    assert stats["boundary_pairs"] >= 100 and stats["inner"] > 0


def test_seam_ratio_detects_brightness_jumps(ground_truth):
    bright = every_other_chunk(ground_truth, lambda c: np.clip(c.astype(np.int16) + 3, 0, 255).astype(np.uint8))
    assert seam_ratio(bright) > 1.5
    # Measured on a chunk grid shifted by half a chunk, the same jumps fall inside chunks: below 1.
    assert seam_ratio(bright[CHUNK // 2:]) < 1.0


def test_seam_ratio_detects_shifts(ground_truth):
    shifted = every_other_chunk(ground_truth, lambda c: np.roll(c, 1, axis=2))  # 1 px to the right
    assert seam_ratio(shifted) > 1.5


def test_seam_ratio_detects_frames_from_another_moment(ground_truth):
    n = len(ground_truth) // CHUNK * CHUNK
    chunks = ground_truth[:n].reshape(-1, CHUNK, *ground_truth.shape[1:])
    order = np.random.default_rng(0).permutation(len(chunks))  # every chunk intact, in shuffled order
    shuffled = chunks[order].reshape(n, *ground_truth.shape[1:])
    assert seam_ratio(shuffled) > 1.5
    assert abs(seam_ratio(ground_truth[:n]) - 1.0) <= 0.1


# ---- windows and drift ------------------------------------------------------------------------

def test_windowed_means_and_slices():
    v = np.arange(10, dtype=float)
    assert windowed(v, 4).tolist() == [1.5, 5.5]
    assert windowed(v, 4, drop_last=False).tolist() == [1.5, 5.5, 8.5]
    feats = np.stack([v, 2 * v], axis=1)
    assert windowed(feats, 5).tolist() == [[2.0, 4.0], [7.0, 14.0]]
    assert window_slices(10, 4) == [slice(0, 4), slice(4, 8)]
    assert window_slices(10, 4, drop_last=False)[-1] == slice(8, 10)
    assert windowed(v, 20).shape == (0,)


def test_drift_of_constant_is_zero():
    assert drift(np.full(30, 0.87), window_frames=250) == pytest.approx(0.0, abs=1e-12)


def test_drift_of_linear_ramp_is_its_slope():
    fps, window = 25.0, 250  # 10 s windows
    minutes = np.arange(24) * window / fps / 60.0
    assert drift(0.9 - 0.05 * minutes, window, fps) == pytest.approx(-0.05)
    # From per-frame values through windowed(): the window means lie on the same line.
    t_min = np.arange(25 * 60 * 4) / fps / 60.0  # 4 minutes per frame
    per_window = windowed(0.3 + 0.2 * t_min, window)
    assert drift(per_window, window, fps) == pytest.approx(0.2)
    # Noise around a trend: the least-squares slope is close to it.
    rng = np.random.default_rng(0)
    noisy = 1.0 + 0.1 * minutes + rng.normal(0, 0.01, len(minutes))
    assert drift(noisy, window, fps) == pytest.approx(0.1, abs=0.02)
    # Several columns at once.
    both = np.stack([0.1 * minutes, -0.3 * minutes], axis=1)
    np.testing.assert_allclose(drift(both, window, fps), [0.1, -0.3])
    with pytest.raises(ValueError):
        drift([1.0], window, fps)


# ---- Fréchet distance -------------------------------------------------------------------------

def test_frechet_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(torch.from_numpy(x), x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_from_stats_matches_closed_form():
    rng = np.random.default_rng(1)
    d = 12
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    var_a, var_b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    closed = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    got = frechet_distance_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert got == pytest.approx(closed, rel=1e-10)
    # Rotating both Gaussians by the same orthogonal Q leaves the distance unchanged, and makes the
    # covariances full (and the product non-symmetric), which exercises the general square root.
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    rotated = frechet_distance_from_stats(q @ mu_a, q @ np.diag(var_a) @ q.T, q @ mu_b, q @ np.diag(var_b) @ q.T)
    assert rotated == pytest.approx(closed, rel=1e-8)
    # tr((AB)^1/2) for non-commuting A, B: check against the eigenvalues of AB (real, >= 0).
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    a, b = a @ a.T, b @ b.T
    expected = np.sum(np.sqrt(np.clip(np.linalg.eigvals(a @ b).real, 0, None)))
    assert trace_sqrt_product(a, b) == pytest.approx(expected, rel=1e-6)


def test_frechet_singular_covariance_is_finite():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 32))  # N < D: rank-deficient covariances
    y = rng.normal(size=(8, 32)) + 1.0
    fd = frechet_distance(x, y)
    assert np.isfinite(fd) and fd > 0


def test_frechet_of_samples_matches_closed_form_and_grows_with_shift():
    rng = np.random.default_rng(3)
    n, d = 20000, 4
    std_a, std_b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([1.5, 1.0, 0.5, 3.0])
    base = rng.normal(size=(n, d)) * std_a
    closed_var = np.sum((std_a - std_b) ** 2)
    previous = -1.0
    for shift in (0.0, 0.5, 1.0, 2.0):
        other = rng.normal(size=(n, d)) * std_b + shift
        fd = frechet_distance(base, other)
        closed = d * shift**2 + closed_var
        assert fd == pytest.approx(closed, abs=0.05 + 0.02 * closed)
        assert fd > previous
        previous = fd
