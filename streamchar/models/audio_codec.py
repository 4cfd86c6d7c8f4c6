"""PCM <-> normalised log-mel latents, with a pluggable vocoder for synthesis.

Framing: mel frame j summarises samples [j*hop, (j+1)*hop) (its analysis window is centred on
that hop), so S samples give exactly M = S / hop frames and a video frame's 640 samples are its
``mel_per_frame`` = 4 mel frames (hop 160 at 16 kHz). The mel filterbank uses the Slaney mel
scale with Slaney area normalisation (librosa's default, and what most pretrained neural
vocoders were trained on), over STFT magnitudes (power 1) with a natural-log floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class AudioCodecConfig:
    sample_rate: int = 16_000
    hop_length: int = 160  # samples_per_frame / mel_per_frame = 640 / 4
    n_fft: int = 640
    win_length: int = 640  # 4x overlap with the hop: Griffin-Lim converges poorly with less
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 8_000.0
    log_floor: float = 1e-5
    # Latent = (log-mel - mean) / std; defaults fit speech at conversational level, recalibrate
    # on the training corpus so latents are ~unit scale.
    latent_mean: float = -5.0
    latent_std: float = 2.5
    griffin_lim_iters: int = 32

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError("win_length must be <= n_fft")
        if (self.n_fft - self.hop_length) % 2:
            raise ValueError("n_fft - hop_length must be even so frames are centred on their hop")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError("need 0 <= fmin < fmax <= sample_rate / 2")

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def pad(self) -> int:
        """Samples of reflect padding each side so frame j is centred on hop j."""
        return (self.n_fft - self.hop_length) // 2


PRESETS: dict[str, AudioCodecConfig] = {
    "tiny": AudioCodecConfig(),
    "paper": AudioCodecConfig(n_fft=1024, win_length=640, n_mels=80),
}


def _hz_to_mel(hz: Tensor) -> Tensor:
    """Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    linear = hz / f_sp
    log = min_log_mel + torch.log(torch.clamp(hz, min=min_log_hz) / min_log_hz) / logstep
    return torch.where(hz >= min_log_hz, log, linear)


def _mel_to_hz(mel: Tensor) -> Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    linear = mel * f_sp
    log = min_log_hz * torch.exp(logstep * (mel - min_log_mel))
    return torch.where(mel >= min_log_mel, log, linear)


def mel_filterbank(config: AudioCodecConfig) -> Tensor:
    """[n_mels, n_freqs] Slaney-scale triangles, each scaled to unit area (Slaney norm)."""
    fft_hz = torch.linspace(0, config.sample_rate / 2, config.n_freqs, dtype=torch.float64)
    mel_lo, mel_hi = _hz_to_mel(torch.tensor([config.fmin, config.fmax], dtype=torch.float64))
    edges_hz = _mel_to_hz(torch.linspace(mel_lo, mel_hi, config.n_mels + 2, dtype=torch.float64))
    widths = edges_hz.diff()  # [n_mels + 1]
    ramps = edges_hz[:, None] - fft_hz[None, :]  # [n_mels + 2, n_freqs]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.float()


def analysis_window(config: AudioCodecConfig) -> Tensor:
    """[n_fft] periodic Hann of win_length, zero-padded to n_fft around its centre."""
    window = torch.hann_window(config.win_length, periodic=True)
    left = (config.n_fft - config.win_length) // 2
    return F.pad(window, (left, config.n_fft - config.win_length - left))


@runtime_checkable
class Vocoder(Protocol):
    """Log-mel to waveform; a neural vocoder trained on this codec's mels fits here too."""

    def mel_to_pcm(self, log_mel: Tensor) -> Tensor:
        """[B, M, n_mels] natural-log mel magnitudes -> [B, M * hop] float PCM."""
        ...


class GriffinLimVocoder(nn.Module):
    """Least-squares mel inversion + fast Griffin-Lim (Perraudin et al. 2013, momentum 0.99).

    With momentum, 32 iterations reach a lower mel spectral convergence than 100 plain ones on
    tones, chirps and harmonic speech-like signals. Phases start at zero, so synthesis is
    deterministic.
    """

    def __init__(self, config: AudioCodecConfig, n_iter: int = 32, momentum: float = 0.99) -> None:
        super().__init__()
        if n_iter < 0 or not 0 <= momentum < 1:
            raise ValueError("need n_iter >= 0 and 0 <= momentum < 1")
        self.config = config
        self.n_iter = n_iter
        self.momentum = momentum
        self.register_buffer("window", analysis_window(config), persistent=False)
        # Minimum-norm least-squares inverse of the filterbank (more frequencies than mels).
        self.register_buffer("mel_pinv", torch.linalg.pinv(mel_filterbank(config)), persistent=False)

    def _stft(self, signal: Tensor) -> Tensor:
        """[B, L] -> [B, n_freqs, T] with frames at multiples of hop (no padding)."""
        c = self.config
        return torch.stft(signal, c.n_fft, c.hop_length, window=self.window, center=False, return_complex=True)

    def _overlap_add(self, frames: Tensor) -> Tensor:
        """[B, n_fft, T] -> [B, (T-1)*hop + n_fft]."""
        c = self.config
        length = (frames.shape[-1] - 1) * c.hop_length + c.n_fft
        out = F.fold(frames, output_size=(1, length), kernel_size=(1, c.n_fft), stride=(1, c.hop_length))
        return out.reshape(frames.shape[0], length)

    def _istft(self, spec: Tensor, inverse_envelope: Tensor) -> Tensor:
        """[B, n_freqs, T] -> [B, (T-1)*hop + n_fft]: windowed overlap-add least-squares inverse.

        Written out because torch.istft rejects center=False with a window that is zero at the
        ends (its NOLA check), and that framing is what makes M frames map to M * hop samples.
        """
        frames = torch.fft.irfft(spec, n=self.config.n_fft, dim=1) * self.window[:, None]  # [B, n_fft, T]
        return self._overlap_add(frames) * inverse_envelope

    def mel_to_pcm(self, log_mel: Tensor) -> Tensor:
        """[B, M, n_mels] natural-log mel magnitudes -> [B, M * hop]."""
        c = self.config
        M = log_mel.shape[1]
        magnitude = (self.mel_pinv @ log_mel.float().exp().transpose(1, 2)).clamp(min=0.0)  # [B, n_freqs, M]
        envelope = self._overlap_add((self.window**2)[None, :, None].expand(1, c.n_fft, M))  # [1, L]
        # The outermost samples are covered only by window zeros; leave them at 0, not inf.
        inverse_envelope = torch.where(envelope > 1e-11, 1.0 / envelope.clamp(min=1e-11), 0.0)
        spec = magnitude.to(torch.complex64)
        previous = torch.zeros_like(spec)
        for _ in range(self.n_iter):
            rebuilt = self._stft(self._istft(spec, inverse_envelope))
            # sgn(z) = z / |z| in one pass: keep the accelerated phase, impose the target magnitude.
            spec = magnitude * torch.sgn(rebuilt - (self.momentum / (1 + self.momentum)) * previous)
            previous = rebuilt
        return self._istft(spec, inverse_envelope)[:, c.pad : c.pad + M * c.hop_length]


class MelAudioCodec(nn.Module):
    """PCM [B, S] <-> latents [B, M, n_mels] with M = S / hop; no learned weights."""

    Config = AudioCodecConfig

    def __init__(self, config: AudioCodecConfig, vocoder: Vocoder | None = None) -> None:
        super().__init__()
        self.config = config
        self.vocoder = vocoder if vocoder is not None else GriffinLimVocoder(config, config.griffin_lim_iters)
        self.register_buffer("window", analysis_window(config), persistent=False)
        self.register_buffer("mel_basis", mel_filterbank(config), persistent=False)

    @property
    def latent_channels(self) -> int:
        return self.config.n_mels

    def log_mel(self, pcm: Tensor) -> Tensor:
        """[B, S] float PCM, S a multiple of hop -> [B, M, n_mels] natural-log mel magnitudes."""
        c = self.config
        if pcm.shape[-1] % c.hop_length:
            raise ValueError(f"{pcm.shape[-1]} samples is not a multiple of hop {c.hop_length}")
        padded = F.pad(pcm.float()[:, None], (c.pad, c.pad), mode="reflect")[:, 0]  # [B, S + n_fft - hop]
        spec = torch.stft(padded, c.n_fft, c.hop_length, window=self.window, center=False, return_complex=True)
        mel = self.mel_basis @ spec.abs()  # [B, n_mels, M]
        return torch.log(mel.clamp(min=c.log_floor)).transpose(1, 2)

    def encode(self, pcm: Tensor) -> Tensor:
        """[B, S] -> [B, S / hop, n_mels] normalised latents."""
        return (self.log_mel(pcm) - self.config.latent_mean) / self.config.latent_std

    def decode(self, latents: Tensor, context: Tensor | None = None) -> Tensor:
        """latents [B, M, n_mels], context [B, Mc, n_mels] | None -> PCM [B, M * hop] in [-1, 1].

        ``context`` is the previous chunk's last latent frames: synthesising them in front of the
        chunk gives the vocoder real left context (phase and overlap-add) at the seam; their
        samples are dropped.
        """
        c = self.config
        Mc = 0 if context is None else context.shape[1]
        if context is not None:
            latents = torch.cat([context, latents], dim=1)  # [B, Mc + M, n_mels]
        pcm = self.vocoder.mel_to_pcm(latents * c.latent_std + c.latent_mean)  # [B, (Mc + M) * hop]
        return pcm[:, Mc * c.hop_length :].clamp(-1.0, 1.0)
