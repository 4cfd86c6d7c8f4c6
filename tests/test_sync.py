"""The SyncNet-style sync judge: shapes, shift_audio, the LSE-C / LSE-D / offset definitions on a toy model
whose answer is known without training, the shipped checkpoint on freshly generated test-split clips,
and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from training.data.corpus import CorpusConfig, SampleGenerator
from training.data.schema import Sample
from training.eval.recognizer import features
from training.eval.sync import (
    DEFAULT_CHECKPOINT,
    MAX_OFFSET,
    SAMPLES_PER_FRAME,
    SyncNet,
    SyncNetConfig,
    evaluate_sync,
    fit_waveform,
    load_sync,
    scores_from_embeddings,
    shift_audio,
    sync_scores,
    train_sync,
)

SMALL = SyncNetConfig(video_channels=(8, 16, 16), video_hidden=32, audio_hidden=32, embed_dim=16)


@pytest.fixture(scope="module")
def test_clips() -> list[Sample]:
    """Six fresh test-split samples of 3-10 s (identities and voices never seen in training)."""
    generator = SampleGenerator(CorpusConfig())
    clips, index = [], 0
    while len(clips) < 6:
        sample = generator.generate("test", index)
        if 3.0 <= len(sample.frames) / 25 <= 10.0:
            clips.append(sample)
        index += 1
    return clips


# ---- shapes and shift_audio ------------------------------------------------------------------------

def test_embedding_shapes_and_norms():
    torch.manual_seed(0)
    model = SyncNet(SMALL).eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 5, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        v = model.embed_video(torch.from_numpy(frames))
        assert v.shape == (3, 16)
        assert torch.allclose(v.norm(dim=-1), torch.ones(3), atol=1e-5)
        # float frames on the 0..255 scale give the same embedding; other sizes are resized.
        assert torch.allclose(model.embed_video(frames.astype(np.float32)), v, atol=1e-5)
        assert model.embed_video(rng.integers(0, 256, (2, 5, 96, 80, 3), dtype=np.uint8)).shape == (2, 16)
        a = model.embed_audio(torch.randn(4, 20, 64))
        assert a.shape == (4, 16) and torch.allclose(a.norm(dim=-1), torch.ones(4), atol=1e-5)
        with pytest.raises(ValueError):
            model.embed_video(frames[:, :4])
        with pytest.raises(ValueError):
            model.embed_audio(torch.randn(1, 16, 64))

        # The whole-clip (chunked) embeddings are the per-window embeddings, row i <-> frames i..i+4.
        clip = rng.integers(0, 256, (23, 64, 64, 3), dtype=np.uint8)
        mel = torch.randn(4 * 23, 64)
        vs, as_ = model.video_embeddings(clip, chunk=7), model.audio_embeddings(mel, chunk=6)
        assert vs.shape == as_.shape == (19, 16)
        windows = np.stack([clip[i:i + 5] for i in range(19)])
        assert torch.allclose(vs, model.embed_video(windows), atol=1e-5)
        assert torch.allclose(as_, model.embed_audio(torch.stack([mel[4 * i:4 * i + 20] for i in range(19)])),
                              atol=1e-5)


def test_shift_audio_moves_content_by_whole_frames():
    w = np.arange(1, 10 * SAMPLES_PER_FRAME + 1, dtype=np.float32)
    for k in (3, -2, 0):
        s = shift_audio(w, k)
        assert s.shape == w.shape and s.dtype == w.dtype
        n = abs(k) * SAMPLES_PER_FRAME
        if k > 0:  # delayed: zeros first, then the start of the original
            assert not s[:n].any() and np.array_equal(s[n:], w[:-n])
        elif k < 0:  # advanced: the original from frame |k| on, zeros at the end
            assert np.array_equal(s[:-n], w[n:]) and not s[-n:].any()
        else:
            assert np.array_equal(s, w)
    assert not shift_audio(w, 12).any() and not shift_audio(w, -12).any()
    assert np.array_equal(fit_waveform(w, 12)[:len(w)], w) and len(fit_waveform(w, 7)) == 7 * SAMPLES_PER_FRAME


# ---- the definitions, on a model whose answer is known -------------------------------------------

class CodeNet(SyncNet):
    """A 'perfect' toy judge: frame t shows a bright or dark frame, and its audio is loud or quiet, by
    the same random bit (loud = noise, quiet = silence); a window's embedding is its 5 bits (+-1), normalised. No training involved."""

    def video_embeddings(self, frames, chunk: int = 512) -> Tensor:
        bits = torch.as_tensor(np.asarray(frames)[:, 0, 0, 0] > 127).double() * 2 - 1
        return torch.nn.functional.normalize(bits.unfold(0, 5, 1), dim=-1)

    def audio_embeddings(self, mel: Tensor, chunk: int = 2048) -> Tensor:
        energy = mel.double().mean(-1).reshape(-1, 4)[:, 1:3].mean(-1)  # the frame's inner mel frames
        bits = (energy > (energy.max() + energy.min()) / 2).double() * 2 - 1
        return torch.nn.functional.normalize(bits.unfold(0, 5, 1), dim=-1)


def _code_clip(frames: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, frames)
    bits[:2], bits[2:4] = 0, 1  # both levels present even in tiny clips
    video = np.repeat((bits * 255).astype(np.uint8)[:, None, None, None], 8, 1).repeat(8, 2).repeat(3, 3)
    # Loud frames carry noise in their central half only, so a frame's inner mel frames (4t+1, 4t+2, whose
    # 640-sample STFT windows reach 80 samples past the frame) hear that frame alone; quiet = silence.
    envelope = np.zeros(SAMPLES_PER_FRAME)
    envelope[SAMPLES_PER_FRAME // 4:3 * SAMPLES_PER_FRAME // 4] = 0.5
    amplitude = (bits[:, None] * envelope[None]).reshape(-1)
    wave = (amplitude * rng.standard_normal(len(amplitude))).astype(np.float32)
    return video, wave, bits


def _brute_force(v: np.ndarray, a: np.ndarray, K: int, lo: int, hi: int, pad: int) -> np.ndarray:
    return np.array([np.mean([np.linalg.norm(v[t] - a[t + pad + k]) for t in range(lo, hi)])
                     for k in range(-K, K + 1)])


@pytest.mark.parametrize("frames", [75, 200])
def test_sync_scores_finds_imposed_offsets_and_follows_the_definitions(frames):
    model = CodeNet(SyncNetConfig()).eval()
    video, wave, _ = _code_clip(frames, seed=frames)
    for k in (0, 4, -7, 15):
        r = sync_scores(model, video, shift_audio(wave, k))
        assert r.offset == k
        n = frames - 4
        assert r.windows == n - 2 * MAX_OFFSET  # only windows with audio at every offset
        v = model.video_embeddings(video).numpy()
        a = model.audio_embeddings(features(fit_waveform(shift_audio(wave, k), frames))).numpy()
        expected = _brute_force(v, a, MAX_OFFSET, MAX_OFFSET, n - MAX_OFFSET, 0)
        np.testing.assert_allclose(r.distances, expected, atol=1e-9)
        assert r.distances.shape == (2 * MAX_OFFSET + 1,)
        assert r.lse_d == pytest.approx(expected.min()) and r.lse_d == pytest.approx(0.0, abs=1e-9)
        assert r.lse_c == pytest.approx(np.median(expected) - expected.min())
    # A waveform longer than F * 640 is trimmed, a shorter one zero-padded: same scores.
    longer = np.concatenate([wave, np.ones(1000, np.float32)])
    np.testing.assert_allclose(sync_scores(model, video, longer).distances, sync_scores(model, video, wave).distances)
    r = sync_scores(model, video, wave[:-300], max_offset=6)
    assert r.offset == 0 and r.distances.shape == (13,) and r.windows == frames - 4 - 12


def test_short_clips_score_all_windows_against_silence_padded_audio():
    model = CodeNet(SyncNetConfig()).eval()
    video, wave, _ = _code_clip(30, seed=3)  # < 2 * 15 + 5 frames: no window is valid at every offset
    r = sync_scores(model, video, shift_audio(wave, 2))
    assert r.windows == 26 and r.offset == 2 and r.distances.shape == (31,)
    v, a = torch.randn(10, 4).double(), torch.randn(10, 4).double()
    with pytest.raises(ValueError):
        scores_from_embeddings(v, a, max_offset=5)
    with pytest.raises(ValueError):
        sync_scores(model, video[:4], wave)


# ---- the shipped checkpoint ----------------------------------------------------------------------

def test_shipped_checkpoint_on_fresh_test_clips(test_clips):
    model = load_sync(DEFAULT_CHECKPOINT)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    size = sum(f.stat().st_size for f in DEFAULT_CHECKPOINT.iterdir())
    assert size <= 5 * 2**20
    metrics = evaluate_sync(model, test_clips, shifts=(5, -2))
    assert metrics["clips"] == 6
    assert metrics["offset0_accuracy"] >= 5 / 6
    assert metrics["shift_accuracy[5]"] >= 5 / 6 and metrics["shift_accuracy[-2]"] >= 5 / 6
    assert metrics["lse_c"] > 2 * metrics["lse_c_mismatched"]
    assert metrics["lse_d"] < metrics["lse_d_mismatched"]


def test_train_save_load_round_trip(test_clips, tmp_path):
    model = train_sync(test_clips, steps=3, config=SMALL, batch_size=8, seed=0, out_dir=tmp_path, log_every=0)
    assert not model.training
    loaded = load_sync(tmp_path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    clip = test_clips[0]
    a, b = sync_scores(model, clip.frames, clip.waveform), sync_scores(loaded, clip.frames, clip.waveform)
    np.testing.assert_array_equal(a.distances, b.distances)
    assert (a.offset, a.windows) == (b.offset, b.windows)
    with torch.no_grad():
        window = torch.from_numpy(clip.frames[:5])[None]
        assert torch.equal(model.embed_video(window), loaded.embed_video(window))
