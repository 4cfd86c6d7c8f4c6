"""Audio mel codec + Griffin-Lim, and the video autoencoder."""

from __future__ import annotations

import math

import pytest
import torch

from streamchar.models.audio_codec import PRESETS as AUDIO_PRESETS
from streamchar.models.audio_codec import AudioCodecConfig, GriffinLimVocoder, MelAudioCodec, Vocoder, mel_filterbank
from streamchar.models.io import load_module, save_module
from streamchar.models.video_codec import PRESETS as VIDEO_PRESETS
from streamchar.models.video_codec import TinyVideoAutoencoder, VideoCodec
from streamchar.timebase import TimeBase

SR = 16_000


def tone(hz: float, seconds: float = 0.64, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(SR * seconds)) / SR
    return amplitude * torch.sin(2 * math.pi * hz * t)


def chirp(f0: float, f1: float, seconds: float = 0.64) -> torch.Tensor:
    t = torch.arange(int(SR * seconds)) / SR
    return 0.3 * torch.sin(2 * math.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2))


def mel_convergence(codec: MelAudioCodec, reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """[B] ||mel(ref) - mel(est)|| / ||mel(ref)||, away from the (unconstrained) edges."""
    ref, est = codec.log_mel(reference).exp()[:, 4:-4], codec.log_mel(estimate).exp()[:, 4:-4]
    return (ref - est).norm(dim=(1, 2)) / ref.norm(dim=(1, 2))


def test_chunk_gives_exact_mel_frame_count() -> None:
    timebase = TimeBase()
    codec = MelAudioCodec(AUDIO_PRESETS["tiny"])
    assert codec.config.hop_length == timebase.mel_hop
    latents = codec.encode(torch.randn(3, timebase.samples_per_chunk) * 0.1)
    assert latents.shape == (3, 32, codec.config.n_mels)
    with pytest.raises(ValueError, match="multiple of hop"):
        codec.encode(torch.randn(1, timebase.samples_per_chunk + 1))


def test_mel_frames_are_centred_on_their_hop() -> None:
    codec = MelAudioCodec(AUDIO_PRESETS["tiny"])
    pcm = torch.zeros(1, 5120)
    pcm[0, 10 * 160 : 11 * 160] = tone(1000, seconds=0.01)  # energy only in hop 10
    energy = codec.log_mel(pcm).exp().sum(dim=-1)[0]
    assert energy.argmax().item() == 10


def test_filterbank_is_slaney_area_normalised() -> None:
    config = AUDIO_PRESETS["tiny"]
    bank = mel_filterbank(config)
    assert bank.shape == (config.n_mels, config.n_fft // 2 + 1)
    assert bool((bank >= 0).all()) and bool((bank.sum(dim=1) > 0).all())
    areas_hz = bank.sum(dim=1) * config.sample_rate / config.n_fft
    torch.testing.assert_close(areas_hz, torch.ones_like(areas_hz), rtol=0.05, atol=0)


def test_latents_are_roughly_unit_scale() -> None:
    codec = MelAudioCodec(AUDIO_PRESETS["tiny"])
    latents = codec.encode(torch.stack([tone(220), chirp(100, 4000)]))
    assert latents.abs().mean() < 3 and 0.3 < latents.std() < 3


def test_griffin_lim_round_trip_keeps_pitch_and_spectrum() -> None:
    codec = MelAudioCodec(AUDIO_PRESETS["tiny"])
    assert isinstance(codec.vocoder, Vocoder)
    pcm = torch.stack([tone(440), chirp(200, 3000)])
    with torch.inference_mode():
        decoded = codec.decode(codec.encode(pcm))
    assert decoded.shape == pcm.shape and bool((decoded.abs() <= 1).all())

    spectrum = torch.fft.rfft(decoded[0] * torch.hann_window(decoded.shape[1])).abs()
    peak_hz = spectrum.argmax().item() * SR / decoded.shape[1]
    assert abs(peak_hz - 440) < 50  # within one mel band (~46 Hz apart below 1 kHz)
    assert bool((mel_convergence(codec, pcm, decoded) < 0.3).all())

    # The same mel decoded without phase retrieval is far worse: Griffin-Lim is doing work.
    no_iterations = MelAudioCodec(AUDIO_PRESETS["tiny"], vocoder=GriffinLimVocoder(AUDIO_PRESETS["tiny"], n_iter=0))
    with torch.inference_mode():
        zero_phase = no_iterations.decode(codec.encode(pcm))
    assert bool((mel_convergence(codec, pcm, zero_phase) > 2 * mel_convergence(codec, pcm, decoded)).all())


def test_decode_with_context_returns_only_the_chunk() -> None:
    codec = MelAudioCodec(AUDIO_PRESETS["tiny"])
    latents = codec.encode(tone(300, seconds=0.32 + 0.04)[None])  # 36 frames
    context, chunk = latents[:, :4], latents[:, 4:]
    with torch.inference_mode():
        alone, with_context = codec.decode(chunk), codec.decode(chunk, context=context)
    assert alone.shape == with_context.shape == (1, 32 * 160)
    assert not torch.equal(alone, with_context)
    assert torch.equal(codec.decode(chunk), alone)  # deterministic phase initialisation


def test_audio_config_validation() -> None:
    with pytest.raises(ValueError):
        AudioCodecConfig(win_length=1024, n_fft=512)
    with pytest.raises(ValueError):
        AudioCodecConfig(fmax=9000.0)


def test_video_codec_shapes() -> None:
    codec = TinyVideoAutoencoder(VIDEO_PRESETS["tiny"]).eval()
    assert isinstance(codec, VideoCodec)
    assert (codec.image_size, codec.latent_size, codec.latent_channels) == (64, 16, 8)
    frames = torch.rand(5, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = codec.encode(frames)
        decoded = codec.decode(torch.randn(5, 8, 16, 16) * 10)
    assert latents.shape == (5, 8, 16, 16)
    assert decoded.shape == (5, 3, 64, 64) and bool((decoded.abs() <= 1).all())
    with pytest.raises(ValueError):
        codec.encode(torch.zeros(1, 3, 32, 32))
    paper = VIDEO_PRESETS["paper"]
    assert (paper.image_size, paper.latent_size, paper.latent_channels) == (512, 64, 16)


def test_video_codec_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    codec = TinyVideoAutoencoder(VIDEO_PRESETS["tiny"]).eval()
    with torch.no_grad():
        for param in codec.parameters():
            param.add_(0.05 * torch.randn_like(param))
    save_module(codec, codec.config, tmp_path)
    loaded = load_module(TinyVideoAutoencoder, tmp_path)
    assert loaded.config == codec.config and isinstance(loaded.config.channels, tuple)
    frames = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(codec.encode(frames), loaded.encode(frames))
        assert torch.equal(codec(frames), loaded(frames))


def test_audio_codec_save_load_round_trip(tmp_path) -> None:
    codec = MelAudioCodec(AUDIO_PRESETS["paper"])
    save_module(codec, codec.config, tmp_path)
    loaded = load_module(MelAudioCodec, tmp_path)
    assert loaded.config == codec.config
    pcm = tone(500)[None]
    assert torch.equal(codec.encode(pcm), loaded.encode(pcm))
