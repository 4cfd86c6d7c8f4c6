"""Metrics of streaming stability: seams between chunks, drift over a long stream, Fréchet distance.

A streamed video is generated chunk by chunk (8 frames at 25 fps by default). Three questions:

* Are chunk boundaries visible? `seam_ratio` compares the frame-to-frame change across chunk
  boundaries with the change inside chunks; 1.0 means the seams look like any other frame step.
* Does the stream degrade over time? `windowed` averages a per-frame quantity (identity
  similarity, per-frame features) over fixed windows, and `drift` fits a least-squares line
  through the per-window values and reports its slope per minute.
* How far is a window's distribution of features from the reference? `frechet_distance` is the
  Gaussian Fréchet distance (as in FID/FVD) between two sets of feature vectors.

Frame change is the mean absolute pixel difference (L1, in 0..255 pixel units, averaged over
pixels and channels). L1 rather than L2 because a seam shows up as a small change spread over
the whole frame (a brightness/pose jump) as often as a large local one, and a mean of absolute
differences weighs both linearly; an L2 (RMS) would let a few pixels of fast mouth motion inside
chunks dominate the denominator and hide global jumps. It is also directly interpretable as
"pixels change by this many grey levels on average".

Everything is numpy (float64). The matrix square root uses symmetric eigendecompositions, not
scipy (not a dependency of this project).
"""

from __future__ import annotations

import numpy as np

FPS = 25.0
FRAMES_PER_CHUNK = 8


# ---- seams ------------------------------------------------------------------------------------

def frame_changes(frames: np.ndarray) -> np.ndarray:
    """Mean absolute pixel difference between consecutive frames: float64 [F-1] (pixel units).

    frames: [F, H, W, C] (any numeric dtype; uint8 is not wrapped around) or [F, H, W].
    """
    f = np.asarray(frames)
    if f.ndim < 2 or len(f) < 2:
        raise ValueError(f"frames must be [F, H, W(, C)] with F >= 2; got shape {f.shape}")
    f = f.astype(np.float64, copy=False)
    return np.abs(np.diff(f, axis=0)).reshape(len(f) - 1, -1).mean(axis=1)


def boundary_mask(num_frames: int, frames_per_chunk: int = FRAMES_PER_CHUNK) -> np.ndarray:
    """bool [F-1]: True for the frame pair (i, i+1) that crosses a chunk boundary (i+1 % chunk == 0)."""
    if frames_per_chunk < 2:
        raise ValueError(f"frames_per_chunk must be >= 2 (a chunk needs an inner pair); got {frames_per_chunk}")
    nxt = np.arange(1, num_frames)
    return nxt % frames_per_chunk == 0


def seam_stats(frames: np.ndarray, frames_per_chunk: int = FRAMES_PER_CHUNK) -> dict[str, float]:
    """Mean frame change across chunk boundaries, inside chunks, and their ratio.

    Boundary pairs are (k*n - 1, k*n) for k >= 1; every other consecutive pair is inside a chunk.
    A trailing partial chunk counts (its inner pairs and its leading boundary).
    """
    return pooled_seam_stats([frame_changes(frames)], frames_per_chunk)


def pooled_seam_stats(changes: list[np.ndarray], frames_per_chunk: int = FRAMES_PER_CHUNK) -> dict[str, float]:
    """`seam_stats` over several videos at once, from their `frame_changes`: each video is chunked from its
    own frame 0, and boundary and inner pairs of all of them are averaged together."""
    d = np.concatenate(changes)
    at = np.concatenate([boundary_mask(len(c) + 1, frames_per_chunk) for c in changes])
    if not at.any():
        raise ValueError(f"{len(d) + len(changes)} frames hold no chunk boundary at {frames_per_chunk} frames per chunk")
    if at.all():
        raise ValueError("no frame pair inside a chunk")
    boundary, inner = float(d[at].mean()), float(d[~at].mean())
    if inner == 0.0:
        ratio = 1.0 if boundary == 0.0 else float("inf")
    else:
        ratio = boundary / inner
    return {"boundary": boundary, "inner": inner, "ratio": ratio,
            "boundary_pairs": int(at.sum()), "inner_pairs": int((~at).sum())}


def seam_ratio(frames: np.ndarray, frames_per_chunk: int = FRAMES_PER_CHUNK) -> float:
    """Mean frame change across chunk boundaries / mean frame change inside chunks. 1.0 = seamless.

    Frame change is the mean absolute pixel difference (see module docstring). A static video
    (no change anywhere) is seamless: 1.0. Change only at boundaries gives inf.
    """
    return seam_stats(frames, frames_per_chunk)["ratio"]


# ---- windows and drift ------------------------------------------------------------------------

def windowed(values: np.ndarray, window_frames: int, drop_last: bool = True) -> np.ndarray:
    """Per-window means of a per-frame series: [T] -> [W], or per-frame features [T, D] -> [W, D].

    Windows are consecutive, non-overlapping, `window_frames` long, starting at frame 0. A trailing
    partial window is dropped (default) or averaged over the frames it has (drop_last=False).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 0:
        raise ValueError("values must be a per-frame series, not a scalar")
    if window_frames < 1:
        raise ValueError(f"window_frames must be >= 1; got {window_frames}")
    full = len(v) // window_frames
    out = [v[i * window_frames:(i + 1) * window_frames].mean(axis=0) for i in range(full)]
    if not drop_last and len(v) % window_frames:
        out.append(v[full * window_frames:].mean(axis=0))
    if not out:
        return np.empty((0,) + v.shape[1:])
    return np.stack(out)


def window_slices(num_frames: int, window_frames: int, drop_last: bool = True) -> list[slice]:
    """The frame slices `windowed` averages over: use them to take per-window feature sets
    (e.g. for a Fréchet distance per window)."""
    if window_frames < 1:
        raise ValueError(f"window_frames must be >= 1; got {window_frames}")
    stops = range(window_frames, num_frames + 1, window_frames)
    out = [slice(s - window_frames, s) for s in stops]
    if not drop_last and num_frames % window_frames:
        out.append(slice(num_frames - num_frames % window_frames, num_frames))
    return out


def drift(per_window_values: np.ndarray, window_frames: int, fps: float = FPS) -> float | np.ndarray:
    """Least-squares slope of per-window values against time, in units per minute.

    Window i is placed at time i * window_frames / fps (only spacing matters for a slope).
    [W] gives a float; [W, D] gives a slope per column. Needs at least 2 windows.
    """
    v = np.asarray(per_window_values, dtype=np.float64)
    if v.ndim not in (1, 2):
        raise ValueError(f"per_window_values must be [W] or [W, D]; got shape {v.shape}")
    if len(v) < 2:
        raise ValueError(f"a trend needs at least 2 windows; got {len(v)}")
    if window_frames <= 0 or fps <= 0:
        raise ValueError("window_frames and fps must be positive")
    t = np.arange(len(v)) * (window_frames / fps / 60.0)  # minutes
    tc = t - t.mean()
    slope = (tc @ (v - v.mean(axis=0))) / (tc @ tc)
    return float(slope) if v.ndim == 1 else slope


# ---- Fréchet distance -------------------------------------------------------------------------

def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    m = (m + m.T) / 2.0
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """tr((A B)^(1/2)) for PSD A, B, computed as tr((A^(1/2) B A^(1/2))^(1/2)).

    A^(1/2) B A^(1/2) is similar to A B and symmetric PSD, so its square root comes from a
    symmetric eigendecomposition with real, clipped eigenvalues: no complex round-off as with a
    general sqrtm of the (non-symmetric) product.
    """
    sa = _psd_sqrt(cov_a)
    inner = sa @ cov_b @ sa
    w = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(A) + tr(B) - 2 tr((A B)^(1/2)); clipped at 0 against round-off."""
    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    d = mu_a.shape[0]
    if mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu_a.shape} {mu_b.shape}, cov {cov_a.shape} {cov_b.shape}")
    diff = mu_a - mu_b
    fd = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt_product(cov_a, cov_b)
    return max(float(fd), 0.0)


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D] (N >= 2)."""
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be [N, D] with N >= 2; got shape {x.shape}")
    mu = x.mean(axis=0)
    xc = x - mu
    return mu, (xc.T @ xc) / (len(x) - 1)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Gaussian Fréchet distance between feature sets [N, D] and [M, D] (squared units, as FID).

    Accepts numpy arrays or CPU torch tensors. The covariance of N samples has rank <= N-1, so
    with N <= D the estimate is singular; the eigen-based square root handles that, but the
    number is then dominated by estimation noise: use N well above D.
    """
    a, b = np.asarray(feats_a), np.asarray(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D]; got {a.shape} and {b.shape}")
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))
