"""Joint audio-video diffusion transformer that denoises one chunk with clean context.

One sequence holds, per sample: the chunk's noisy video patches and noisy mel-frame audio tokens,
the previous chunk's last ``Fm`` frames (motion), the session's first chunk (sink) and the
reference image. Every token attends to every unmasked token (bidirectional over the local
window), so audio and video of the chunk are denoised together and stay in sync.

Shapes (see ``streamchar.timebase``): B batch, F frames per chunk, Fm motion frames, C/h/w video
latent channels/size, p patch, T = (h/p)*(w/p) patches per frame, m mel frames per video frame,
M = F*m, Mm = Fm*m, Ca audio latent channels (= n_mels), D width, N tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Roles index the role embedding; token order inside each modality follows this order too.
ROLE_NOISY, ROLE_MOTION, ROLE_SINK, ROLE_REF = 0, 1, 2, 3
MODALITY_VIDEO, MODALITY_AUDIO = 0, 1


@dataclass(frozen=True)
class JointDiTConfig:
    video_channels: int = 8  # C, the video codec's latent channels
    video_latent_size: int = 16  # h = w
    patch_size: int = 4
    audio_channels: int = 64  # Ca, the audio codec's n_mels
    frames_per_chunk: int = 8  # F
    motion_frames: int = 2  # Fm
    mel_per_frame: int = 4  # m
    num_units: int = 100  # K; ids K (silence/wait) and K+1 (CFG null) are added on top
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    cond_dropout: float = 0.1
    # Fixed time positions (in video frames) of the sink chunk's first frame and of the
    # reference image: they must not depend on the chunk index, or positions would grow with
    # session length, and they sit far from [-Fm, F) so they never alias motion/noisy frames.
    sink_position: float = -32.0
    ref_position: float = -48.0
    # Audio prior (0: none). With L > 0 layers, a small convolutional network maps the chunk's units to
    # a mean of its audio latents, and the chunk's audio is denoised as the residual over that mean
    # (see AudioPrior).
    prior_layers: int = 0
    prior_kernel: int = 5
    prior_width: int = 0  # the audio prior's channels (0: the DiT's width)
    # Frames of the previous chunk's units the prior reads in front of the chunk's own (0: none). They
    # are known when a chunk is rendered (the session keeps them), unlike the next chunk's.
    prior_context: int = 0
    # Frames of the next chunk's units the audio prior reads after the chunk's own (0: none): the right
    # context of the chunk's last phonemes (coarticulation), known when the orchestrator is a chunk ahead of
    # the renderer, which it usually is; where they are not known yet the prior reads a padding id there.
    prior_lookahead: int = 0
    # Video prior (0: none). With L > 0 blocks, a small convolutional network maps the chunk's units and
    # its image context (the last motion frame, else the reference) to a mean of each frame's video
    # latents, and the chunk's video is denoised as the residual over that mean (see VideoPrior). It
    # reads the previous chunk's units too when prior_context > 0.
    video_prior_layers: int = 0
    video_prior_width: int = 32
    # (top, left, height, width), fractions of the frame: where the video prior works (mouth, lips, jaw, with
    # room for head motion); outside it the mean is the context frame. Rounded outwards onto the latent grid.
    video_prior_box: tuple[float, ...] = (0.375, 0.1875, 0.5, 0.625)

    def __post_init__(self) -> None:
        if self.video_latent_size % self.patch_size:
            raise ValueError("video_latent_size must be a multiple of patch_size")
        if self.width % self.num_heads:
            raise ValueError("width must be a multiple of num_heads")
        if self.width % 2:
            raise ValueError("width must be even for the sinusoidal embeddings")
        if not 0.0 <= self.cond_dropout <= 1.0:
            raise ValueError("cond_dropout must be in [0, 1]")
        if self.prior_layers < 0 or self.prior_kernel < 1 or self.prior_kernel % 2 == 0 or self.prior_width < 0:
            raise ValueError("need prior_layers >= 0, an odd prior_kernel >= 1 and prior_width >= 0")
        if not 0 <= self.prior_context <= self.frames_per_chunk or (self.prior_context and not self.prior_layers):
            raise ValueError(f"prior_context must be in [0, frames_per_chunk = {self.frames_per_chunk}] "
                             "and needs prior_layers > 0")
        if not 0 <= self.prior_lookahead <= self.frames_per_chunk or (self.prior_lookahead and not self.prior_layers):
            raise ValueError(f"prior_lookahead must be in [0, frames_per_chunk = {self.frames_per_chunk}] "
                             "and needs prior_layers > 0")
        if self.video_prior_layers < 0 or self.video_prior_width < 8 or self.video_prior_width % 8:
            raise ValueError("need video_prior_layers >= 0 and video_prior_width a multiple of 8 (>= 8)")
        object.__setattr__(self, "video_prior_box", tuple(float(v) for v in self.video_prior_box))
        top, left, height, width = self.video_prior_box if len(self.video_prior_box) == 4 else (-1, -1, 0, 0)
        if not (0 <= top < 1 and 0 <= left < 1 and 0 < height <= 1 - top + 1e-9 and 0 < width <= 1 - left + 1e-9):
            raise ValueError(f"video_prior_box (top, left, height, width) {self.video_prior_box} is not inside the frame")

    @property
    def video_prior_cells(self) -> tuple[slice, slice]:
        """(rows, columns) of the latent grid the video prior works on: its box, rounded outwards."""
        top, left, height, width = self.video_prior_box
        n = self.video_latent_size
        return (slice(math.floor(top * n), math.ceil((top + height) * n - 1e-9)),
                slice(math.floor(left * n), math.ceil((left + width) * n - 1e-9)))

    @property
    def patches_per_frame(self) -> int:
        return (self.video_latent_size // self.patch_size) ** 2

    @property
    def silence_unit(self) -> int:
        return self.num_units

    @property
    def null_unit(self) -> int:
        return self.num_units + 1


PRESETS: dict[str, JointDiTConfig] = {
    # 2-core CPU real time: 1.3M params, 376 tokens (64x64 frames as 16x16x8 latents in 4x4
    # patches, 64 mels),
    # ~11-13 ms a forward at B=1, so a 4-step chunk fits well inside its 320 ms of playback.
    "tiny": JointDiTConfig(),
    # One H100: 1.2B params. 512x512 frames through a /8 VAE with 16 channels -> 64x64x16
    # latents; patch 4 keeps 256 tokens a frame, 4936 tokens a window, ~12 TFLOP a forward, so 4
    # bf16 steps fit a 320 ms chunk. Patch 2 would be 4x the tokens and ~10x the attention cost.
    "paper": JointDiTConfig(
        video_channels=16,
        video_latent_size=64,
        patch_size=4,
        audio_channels=80,
        num_units=500,
        width=1536,
        depth=28,
        num_heads=24,
    ),
}


def sinusoidal_embedding(positions: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """[...] float positions -> [..., dim] (cos | sin), frequencies from 1 down to 1/max_period."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half
    )
    angles = positions.float()[..., None] * freqs  # [..., half]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Noise level t in [0, 1] -> [B, D] conditioning vector."""

    def __init__(self, width: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        # x1000 puts t on the integer-step scale the sinusoid frequencies were designed for.
        return self.mlp(sinusoidal_embedding(t * 1000.0, self.frequency_dim).to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, attn_mask: Tensor, queries: Tensor | None = None) -> Tensor:
        """x [B, N, D], attn_mask [B, 1, 1, N] bool (True = key may be attended) -> [B, N, D];
        queries [Q] long: only those tokens' outputs ([B, Q, D]), every token still a key and value."""
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, heads, N, D/heads]
        if queries is not None:
            q = q[:, :, queries]  # [B, heads, Q, D/heads]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(B, q.shape[2], D))


class DiTBlock(nn.Module):
    def __init__(self, width: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        # Exact (erf) GELU: the tanh approximation is several times slower on CPU.
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: Tensor, c: Tensor, attn_mask: Tensor, queries: Tensor | None = None) -> Tensor:
        """x [B, N, D], c [B, D] -> [B, N, D] (queries [Q] long: only those tokens, [B, Q, D])."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)  # 6 x [B, 1, D]
        )
        attended = self.attn(modulate(self.norm1(x), shift_msa, scale_msa), attn_mask, queries)
        x = (x if queries is None else x[:, queries]) + gate_msa * attended
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_features)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x [B, N, D], c [B, D] -> [B, N, out_features]."""
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def with_previous_units(units: Tensor, previous_units: Tensor | None, has_previous: Tensor | None,
                        context: int, pad_unit: int) -> Tensor:
    """[B, F] -> [B, P + F]: the previous chunk's last P = `context` units in front of the chunk's own
    (`pad_unit` where there is no previous chunk), as both priors read them; `units` itself when P = 0."""
    if not context:
        return units
    if previous_units is None or has_previous is None:
        raise ValueError("this prior reads the previous chunk's units: pass previous_units and has_previous")
    previous = previous_units[:, -context:]
    previous = torch.where(has_previous.bool()[:, None], previous, torch.full_like(previous, pad_unit))
    return torch.cat([previous, units], dim=1)


def with_next_units(units: Tensor, next_units: Tensor | None, has_next: Tensor | None, lookahead: int,
                    pad_unit: int) -> Tensor:
    """[B, N] -> [B, N + L]: the next chunk's first L = `lookahead` units after `units` (`pad_unit` in the
    rows whose next units are not known: ``has_next`` False, or no ``next_units`` at all); `units` itself
    when L = 0. After a session's last chunk the next units are the silence unit, which is known."""
    if not lookahead:
        return units
    B = units.shape[0]
    if next_units is None or has_next is None:
        return torch.cat([units, torch.full((B, lookahead), pad_unit, dtype=units.dtype, device=units.device)], 1)
    if next_units.shape[1] < lookahead:
        raise ValueError(f"next_units has {next_units.shape[1]} frames, the prior reads {lookahead}")
    ahead = next_units[:, :lookahead].to(units.dtype)
    ahead = torch.where(has_next.bool()[:, None], ahead, torch.full_like(ahead, pad_unit))
    return torch.cat([units, ahead], dim=1)


class AudioPrior(nn.Module):
    """The chunk's units -> a mean of its audio latents: the starting point the DiT's audio refines.

    Like the text-conditioned prior of Grad-TTS (Popov et al. 2021) and PriorGrad (Lee et al. 2022): a
    deterministic network regresses the mel frames from the units (MSE), and the flow then only has to
    generate what the units do not determine (voice, pitch, the fine structure) as a residual over it.
    On the tiny corpus such a prior alone, decoded, is more intelligible than the DiT trained without
    one (docs/eval/teacher/dit.md). Residual 1-D convolutions over the chunk's F frames (zero padding
    at the edges), then one linear map per frame to its m mel frames. With ``prior_context`` P > 0 the
    last P units of the previous chunk run in front of the chunk's own (a padding id where there is no
    previous chunk), so the prior is not blind at the chunk's start. With ``prior_lookahead`` L > 0 the
    next chunk's first L units run after them (the padding id where they are not known yet), so the
    chunk's last phonemes are not blind to what follows. Fitted before the DiT trains and frozen while it
    does (training/trainers/dit.py).
    """

    def __init__(self, config: JointDiTConfig) -> None:
        super().__init__()
        c = config
        self.mel_per_frame, self.audio_channels = c.mel_per_frame, c.audio_channels
        self.context, self.lookahead = c.prior_context, c.prior_lookahead
        # "no previous chunk" / "next units not known": an extra row only when the prior reads either
        self.pad_unit = c.num_units + 2
        W = c.prior_width or c.width
        self.embed = nn.Embedding(c.num_units + 2 + (1 if c.prior_context or c.prior_lookahead else 0), W)
        self.convs = nn.ModuleList([nn.Conv1d(W, W, c.prior_kernel, padding=c.prior_kernel // 2)
                                    for _ in range(c.prior_layers)])
        self.out = nn.Linear(W, c.mel_per_frame * c.audio_channels)
        # 0 until fitted: a trainer that finds 0 (a fresh prior, or a warm start from a DiT without one)
        # fits it first; saved with the weights.
        self.register_buffer("fitted_steps", torch.zeros((), dtype=torch.long))

    def forward(self, units: Tensor, previous_units: Tensor | None = None, has_previous: Tensor | None = None,
                next_units: Tensor | None = None, has_next: Tensor | None = None) -> Tensor:
        """units [B, F] long, previous_units [B, F] (the previous chunk's), has_previous [B] bool, next_units
        [B, >= L] (the next chunk's), has_next [B] bool -> audio latent mean [B, F * m, Ca]. The previous
        units are read only with ``prior_context`` > 0, the next only with ``prior_lookahead`` > 0 (not
        given: not known)."""
        Fc = units.shape[1]
        units = with_previous_units(units, previous_units, has_previous, self.context, self.pad_unit)
        units = with_next_units(units, next_units, has_next, self.lookahead, self.pad_unit)
        x = self.embed(units).transpose(1, 2)  # [B, D, P + F + L]
        for conv in self.convs:
            x = x + F.gelu(conv(x))
        y = self.out(x[:, :, self.context:self.context + Fc].transpose(1, 2))  # [B, F, m * Ca]
        return y.reshape(units.shape[0], Fc * self.mel_per_frame, self.audio_channels)


class VideoPrior(nn.Module):
    """The chunk's units and image context -> a mean of its video latents, frame by frame: the starting
    point the DiT's video refines, as :class:`AudioPrior` is for the audio.

    Given the true units the tiny DiT learns how much the mouth moves but not when (docs/eval/teacher/dit.md):
    a mouth shape is a function of the phonemes around its frame, which a deterministic regression learns
    directly. It works inside ``video_prior_box`` (mouth and jaw) only; outside, the mean is the context frame.
    The units (with the previous chunk's last ``prior_context``, as the audio prior reads them)
    run through residual 1-D convolutions over time to one code per frame; the image context (the last
    motion frame when there is one, else the reference image, plus the reference image) through a 3x3
    convolution to a feature map; each frame's map is then modulated by its code (FiLM, in every block) and
    residual 3x3 convolutions turn it into a change of the context frame, so the mean is
    ``context + change`` and where the units say nothing (pose, blinks) it stays the context. The output
    convolution starts at zero, so an unfitted prior predicts the context frame. Fitted before the DiT
    trains and frozen while it does (training/trainers/dit.py).
    """

    def __init__(self, config: JointDiTConfig) -> None:
        super().__init__()
        c = config
        W = c.video_prior_width
        self.context = c.prior_context
        self.pad_unit = c.num_units + 2
        self.embed = nn.Embedding(c.num_units + 3, W)
        self.unit_convs = nn.ModuleList([nn.Conv1d(W, W, 5, padding=2) for _ in range(2)])
        self.rows, self.cols = c.video_prior_cells
        self.image_in = nn.Conv2d(2 * c.video_channels, W, 3, padding=1)
        self.position = nn.Parameter(torch.zeros(W, self.rows.stop - self.rows.start, self.cols.stop - self.cols.start))
        self.films = nn.ModuleList([nn.Linear(W, 2 * W) for _ in range(c.video_prior_layers)])
        self.convs = nn.ModuleList([nn.Conv2d(W, W, 3, padding=1) for _ in range(c.video_prior_layers)])
        self.norms = nn.ModuleList([nn.GroupNorm(8, W) for _ in range(c.video_prior_layers)])
        self.out = nn.Conv2d(W, c.video_channels, 3, padding=1)
        self.register_buffer("fitted_steps", torch.zeros((), dtype=torch.long))  # as AudioPrior's
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small embeddings; zero FiLM (every frame starts as the context's features) and zero output."""
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        for film in self.films:
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, units: Tensor, previous_units: Tensor | None, has_previous: Tensor | None,
                ref_video: Tensor, motion_video: Tensor, has_motion: Tensor) -> Tensor:
        """units [B, F], previous_units [B, F], has_previous [B] (read with ``prior_context`` > 0),
        ref_video [B, C, h, w], motion_video [B, Fm, C, h, w], has_motion [B] -> video latent mean
        [B, F, C, h, w]."""
        B, Fc = units.shape
        units = with_previous_units(units, previous_units, has_previous, self.context, self.pad_unit)
        z = self.embed(units).transpose(1, 2)  # [B, W, P + F]
        for conv in self.unit_convs:
            z = z + F.gelu(conv(z))
        z = z[:, :, -Fc:].transpose(1, 2).reshape(B * Fc, -1)  # [B*F, W]
        base = torch.where(has_motion.bool().view(-1, 1, 1, 1), motion_video[:, -1], ref_video)  # [B, C, h, w]
        window = torch.cat([base, ref_video], dim=1)[:, :, self.rows, self.cols]  # [B, 2C, h', w'] the box
        image = self.image_in(window) + self.position  # [B, W, h', w']
        x = image.repeat_interleave(Fc, dim=0)  # [B*F, W, h', w']
        for film, conv, norm in zip(self.films, self.convs, self.norms):
            scale, shift = film(z).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
            x = x + conv(F.gelu(modulate_map(norm(x), shift, scale)))
        change = self.out(F.gelu(x)).reshape(B, Fc, base.shape[1], *x.shape[-2:])
        rows, cols = self.rows, self.cols
        full = F.pad(change, (cols.start, base.shape[-1] - cols.stop, rows.start, base.shape[-2] - rows.stop))
        return base[:, None] + full


def modulate_map(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """FiLM on a feature map: x [N, W, h, w], shift/scale [N, W, 1, 1]."""
    return x * (1 + scale) + shift


class JointAudioVideoDiT(nn.Module):
    """Single-stream DiT: both modalities share every block; embeddings tell them apart."""

    Config = JointDiTConfig

    def __init__(self, config: JointDiTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        T, D = c.patches_per_frame, c.width
        self.video_embed = nn.Linear(c.video_channels * c.patch_size**2, D)
        self.audio_embed = nn.Linear(c.audio_channels, D)
        self.video_spatial_embed = nn.Parameter(torch.zeros(T, D))
        self.role_embed = nn.Embedding(4, D)
        self.modality_embed = nn.Embedding(2, D)
        self.unit_embed = nn.Embedding(c.num_units + 2, D)
        self.t_embedder = TimestepEmbedder(D)
        self.blocks = nn.ModuleList([DiTBlock(D, c.num_heads, c.mlp_ratio) for _ in range(c.depth)])
        self.video_final = FinalLayer(D, c.video_channels * c.patch_size**2)
        self.audio_final = FinalLayer(D, c.audio_channels)
        # With a prior, the noisy audio is a residual over the prior mean, which the noisy audio tokens
        # also see (zero-initialised projection: a warm start from a DiT without a prior starts as it).
        self.prior = AudioPrior(c) if c.prior_layers else None
        self.prior_embed = nn.Linear(c.audio_channels, D) if c.prior_layers else None
        # The same for the video: residual over the video prior's mean, which the noisy video tokens see.
        self.video_prior = VideoPrior(c) if c.video_prior_layers else None
        self.video_prior_embed = nn.Linear(c.video_channels * c.patch_size**2, D) if c.video_prior_layers else None

        # Token layout: video [noisy F | motion Fm | sink F | ref 1] frames of T patches each,
        # then audio [noisy M | motion Mm | sink M] mel frames. Derived from the config, so the
        # buffers are not saved.
        Fc, Fm, m = c.frames_per_chunk, c.motion_frames, c.mel_per_frame
        video_frame_time = torch.cat([
            torch.arange(Fc, dtype=torch.float32),
            torch.arange(-Fm, 0, dtype=torch.float32),
            c.sink_position + torch.arange(Fc, dtype=torch.float32),
            torch.tensor([c.ref_position]),
        ])
        audio_time = torch.cat([
            torch.arange(Fc * m, dtype=torch.float32) / m,
            torch.arange(-Fm * m, 0, dtype=torch.float32) / m,
            c.sink_position + torch.arange(Fc * m, dtype=torch.float32) / m,
        ])
        video_roles = torch.tensor([ROLE_NOISY] * Fc + [ROLE_MOTION] * Fm + [ROLE_SINK] * Fc + [ROLE_REF])
        audio_roles = torch.tensor([ROLE_NOISY] * (Fc * m) + [ROLE_MOTION] * (Fm * m) + [ROLE_SINK] * (Fc * m))
        token_time = torch.cat([video_frame_time.repeat_interleave(T), audio_time])  # [N]
        self.num_video_tokens = video_frame_time.numel() * T
        self.num_audio_tokens = audio_time.numel()
        # Time is measured in mel frames so adjacent audio tokens are 1 radian apart at the
        # highest frequency, and audio token k of frame f lands exactly on video frame f + k/m.
        self.register_buffer("token_time_embedding", sinusoidal_embedding(token_time * m, D), persistent=False)
        self.register_buffer("token_role", torch.cat([video_roles.repeat_interleave(T), audio_roles]), persistent=False)
        self.register_buffer("readout_tokens", torch.cat([
            torch.arange(Fc * T), self.num_video_tokens + torch.arange(Fc * m)]), persistent=False)  # noisy tokens
        self.register_buffer(
            "token_modality",
            torch.tensor([MODALITY_VIDEO] * self.num_video_tokens + [MODALITY_AUDIO] * self.num_audio_tokens),
            persistent=False,
        )
        self.initialize_weights()

    @property
    def null_unit(self) -> int:
        return self.config.null_unit

    def initialize_weights(self) -> None:
        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        for embedding in (self.role_embed, self.modality_embed, self.unit_embed):
            nn.init.normal_(embedding.weight, std=0.02)
        nn.init.normal_(self.video_spatial_embed, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: zero gates make every block the identity at init, so the untrained network
        # is a stable residual stream and conditioning is learned as a perturbation of it.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # Zero output layers start the velocity prediction at 0 (the mean of noise - x0 for
        # centred data), which avoids large early losses and gradients.
        for final in (self.video_final, self.audio_final):
            nn.init.zeros_(final.adaLN_modulation[-1].weight)
            nn.init.zeros_(final.adaLN_modulation[-1].bias)
            nn.init.zeros_(final.linear.weight)
            nn.init.zeros_(final.linear.bias)
        if self.prior is not None:
            nn.init.normal_(self.prior.embed.weight, std=0.02)
            nn.init.zeros_(self.prior_embed.weight)
            nn.init.zeros_(self.prior_embed.bias)
        if self.video_prior is not None:
            self.video_prior.reset_parameters()  # after _basic_init, which would undo its zero output
            nn.init.zeros_(self.video_prior_embed.weight)
            nn.init.zeros_(self.video_prior_embed.bias)

    def prior_mean(self, units: Tensor, previous_units: Tensor | None = None, has_previous: Tensor | None = None,
                   next_units: Tensor | None = None, has_next: Tensor | None = None) -> Tensor | None:
        """[B, F] units (and the previous chunk's [B, F], flagged by has_previous [B], the same as
        has_motion; the next chunk's [B, F], flagged by has_next [B], read with ``prior_lookahead`` > 0)
        -> [B, M, Ca] audio prior mean, or None for a DiT without a prior. The caller passes it back to
        :meth:`forward` as ``audio_prior``, with the noisy audio as a residual over it; computed from the
        real units, never the CFG-dropped ones."""
        return None if self.prior is None else self.prior(units, previous_units, has_previous, next_units, has_next)

    def video_prior_mean(self, units: Tensor, previous_units: Tensor | None, has_previous: Tensor | None,
                         ref_video: Tensor, motion_video: Tensor, has_motion: Tensor) -> Tensor | None:
        """[B, F, C, h, w] video prior mean of the real units and the image context (see VideoPrior), or
        None for a DiT without one; passed back to :meth:`forward` as ``video_prior``."""
        if self.video_prior is None:
            return None
        return self.video_prior(units, previous_units, has_previous, ref_video, motion_video, has_motion)

    def drop_units_for_cfg(self, units: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
        """[B, F] -> [B, F]: each sample's units become all-null with probability p (CFG dropout).

        Whole samples are dropped, not single frames, because guidance at sampling time contrasts
        a fully conditioned pass with a fully unconditioned one.
        """
        drop = torch.rand(units.shape[0], generator=generator, device=units.device) < p  # [B]
        return torch.where(drop[:, None], torch.full_like(units, self.null_unit), units)

    def _patchify(self, video: Tensor) -> Tensor:
        """[B, G, C, h, w] -> [B, G*T, C*p*p], patches row-major within a frame."""
        B, G, C, h, w = video.shape
        p = self.config.patch_size
        x = video.reshape(B, G, C, h // p, p, w // p, p)
        x = x.permute(0, 1, 3, 5, 2, 4, 6)  # [B, G, h/p, w/p, C, p, p]
        return x.reshape(B, G * (h // p) * (w // p), C * p * p)

    def _unpatchify(self, tokens: Tensor) -> Tensor:
        """[B, F*T, C*p*p] -> [B, F, C, h, w]."""
        c = self.config
        B, p, s = tokens.shape[0], c.patch_size, c.video_latent_size // c.patch_size
        x = tokens.reshape(B, c.frames_per_chunk, s, s, c.video_channels, p, p)
        x = x.permute(0, 1, 4, 2, 5, 3, 6)  # [B, F, C, h/p, p, w/p, p]
        return x.reshape(B, c.frames_per_chunk, c.video_channels, s * p, s * p)

    def _position_embedding(self) -> Tensor:
        """[N, D]: shared time + spatial (video only) + role + modality embeddings."""
        frames = self.num_video_tokens // self.config.patches_per_frame
        spatial = self.video_spatial_embed.repeat(frames, 1)  # [Gv*T, D]
        spatial = F.pad(spatial, (0, 0, 0, self.num_audio_tokens))  # audio has no spatial axis
        return (
            self.token_time_embedding
            + spatial
            + self.role_embed(self.token_role)
            + self.modality_embed(self.token_modality)
        )

    def forward(
        self,
        video_noisy: Tensor,
        audio_noisy: Tensor,
        t: Tensor,
        units: Tensor,
        ref_video: Tensor,
        sink_video: Tensor,
        sink_audio: Tensor,
        motion_video: Tensor,
        motion_audio: Tensor,
        has_sink: Tensor,
        has_motion: Tensor,
        previous_units: Tensor | None = None,
        audio_prior: Tensor | None = None,
        video_prior: Tensor | None = None,
        next_units: Tensor | None = None,
        has_next: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Predict the flow-matching velocity (noise - x0) of the chunk's video and audio latents.

        video_noisy [B, F, C, h, w], audio_noisy [B, M, Ca], t [B] in [0, 1] (1 = pure noise),
        units [B, F] long in [0, K+1], ref_video [B, C, h, w], sink_video [B, F, C, h, w],
        sink_audio [B, M, Ca], motion_video [B, Fm, C, h, w], motion_audio [B, Mm, Ca],
        has_sink [B] bool, has_motion [B] bool (False: those tokens are hidden from attention and
        their values are ignored).
        previous_units [B, F], next_units [B, F], has_next [B]: the previous and the next chunk's units,
        read only by the priors (accepted here so a chunk's conditions pass as one mapping).
        audio_prior [B, M, Ca]: with a prior (``prior_layers`` > 0, required then), :meth:`prior_mean` of
        the real units; audio_noisy and the audio x0 are then residuals over it (context audio is not).
        video_prior [B, F, C, h, w]: the same for the video (``video_prior_layers`` > 0,
        :meth:`video_prior_mean`); video_noisy and the video x0 are then residuals over it.
        Returns (video_velocity [B, F, C, h, w], audio_velocity [B, M, Ca]).
        """
        c = self.config
        Fc, T, m = c.frames_per_chunk, c.patches_per_frame, c.mel_per_frame
        video_shape = (Fc, c.video_channels, c.video_latent_size, c.video_latent_size)
        if video_noisy.shape[1:] != video_shape:
            raise ValueError(f"video_noisy has shape {tuple(video_noisy.shape)}; expected [B, *{video_shape}]")
        if audio_noisy.shape[1:] != (Fc * m, c.audio_channels):
            raise ValueError(
                f"audio_noisy has shape {tuple(audio_noisy.shape)}; expected [B, {Fc * m}, {c.audio_channels}]"
            )
        if (audio_prior is None) != (self.prior is None):
            raise ValueError("audio_prior is required by a DiT with a prior and refused by one without"
                             if self.prior is not None else "this DiT has no prior: pass no audio_prior")
        if (video_prior is None) != (self.video_prior is None):
            raise ValueError("video_prior is required by a DiT with a video prior and refused by one without"
                             if self.video_prior is not None else "this DiT has no video prior: pass no video_prior")
        if self.training and c.cond_dropout > 0:
            units = self.drop_units_for_cfg(units, c.cond_dropout)

        # 1. Tokenise: one projection per modality shared by all roles (same latent space).
        video = torch.cat([video_noisy, motion_video, sink_video, ref_video[:, None]], dim=1)  # [B, Gv, C, h, w]
        video_tokens = self.video_embed(self._patchify(video))  # [B, Gv*T, D]
        audio = torch.cat([audio_noisy, motion_audio, sink_audio], dim=1)  # [B, 2M+Mm, Ca]
        audio_tokens = self.audio_embed(audio)  # [B, 2M+Mm, D]

        # 2. Speech units condition exactly the noisy tokens of their own frame, in both modalities.
        unit = self.unit_embed(units)  # [B, F, D]
        x = torch.cat(
            [
                video_tokens[:, : Fc * T] + unit.repeat_interleave(T, dim=1)
                + (0 if video_prior is None else self.video_prior_embed(self._patchify(video_prior))),
                video_tokens[:, Fc * T :],
                audio_tokens[:, : Fc * m] + unit.repeat_interleave(m, dim=1)
                + (0 if audio_prior is None else self.prior_embed(audio_prior)),
                audio_tokens[:, Fc * m :],
            ],
            dim=1,
        )  # [B, N, D]
        x = x + self._position_embedding()

        # 3. Key mask: absent context (chunk 0 has no sink/motion) is invisible to every query.
        ones = torch.ones_like(has_sink, dtype=torch.bool)
        available = torch.stack([ones, has_motion.bool(), has_sink.bool(), ones], dim=1)  # [B, 4 roles]
        attn_mask = available[:, self.token_role][:, None, None, :]  # [B, 1, 1, N]

        # 4. Transformer over the whole window, adaLN-conditioned on the noise level.
        # Only the noisy tokens are read out, so the last block computes only theirs (every token
        # stays a key and value): exact, and it skips ~60% of that block's attention and MLP.
        cond = self.t_embedder(t)  # [B, D]
        for block in self.blocks[:-1]:
            x = block(x, cond, attn_mask)
        x = self.blocks[-1](x, cond, attn_mask, self.readout_tokens)  # [B, F*T + M, D]

        # 5. Read out the noisy tokens: video first, then audio.
        video_velocity = self._unpatchify(self.video_final(x[:, : Fc * T], cond))  # [B, F, C, h, w]
        audio_velocity = self.audio_final(x[:, Fc * T :], cond)  # [B, M, Ca]
        return video_velocity, audio_velocity
