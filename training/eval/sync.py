"""A SyncNet-style audio-visual sync judge: LSE-C, LSE-D and the AV offset of a talking-character clip.

Trained on the corpus train split, then frozen and shipped small (``save_module`` /
``load_module``: ``config.json`` + ``model.safetensors``, no pickles). Two encoders map a window of
``window`` video frames and the audio of the same span (``4 * window`` log-mel frames) to
L2-normalised embeddings; in sync they are close, out of sync far apart.

Metrics (SyncNet, Chung & Zisserman 2016; Wav2Lip's LSE, Prajwal et al. 2020): for each candidate
offset k in [-max_offset, +max_offset] video frames, the mean over time of the Euclidean distance
between the video embedding at frame t and the audio embedding at frame t + k;

* LSE-D = min over k of that mean distance (lower is better synced),
* offset = the argmin k (k > 0: the audio lags the video by k frames: what the mouth shows at
  frame t is heard at frame t + k; :func:`shift_audio` with k produces exactly that),
* LSE-C = median over k - min over k (higher is more confidently synced).

The embeddings are unit vectors, so distances lie in [0, 2]: the numbers are on this model's own
scale, not the original SyncNet's (whose LSE-D is ~6-8 on real video); compare them with each
other (ground truth vs generated vs mismatched), not with published figures.

Edges (:func:`sync_scores`): a clip of F frames has F - window + 1 video windows. Only windows whose
audio at every offset lies inside the clip are averaged (centre frames t with
``max_offset + window // 2 <= t < F - max_offset - window // 2``), so every offset is scored on the
same video windows against real audio, and nothing is padded. That needs F >= 2 * max_offset +
window (35 frames, 1.4 s, at the defaults; a 3 s clip gives 45 windows). A shorter clip falls back
to scoring all its video windows against audio padded with digital silence (zeros, the same fill as
:func:`shift_audio`) by max_offset frames either side.

Model (both branches are convolutions over time, so a whole clip is embedded in one pass and
``embed_video`` / ``embed_audio`` on a single window are the same computation):

* video: each frame is resized to ``image_size`` if needed, cropped to a fixed, generous
  lower-centre box (``crop``: rows 24-56, columns 16-48 of 64 px, where the mouth and chin move
  for every identity, with room for head motion), and encoded by a small strided 2-D CNN
  (GroupNorm, so per-frame brightness and contrast are normalised away) to a per-frame feature; two
  temporal convolutions of width 3 without padding then combine ``window`` consecutive frames.
* audio: the clip's per-utterance normalised log-mel (:func:`training.eval.recognizer.features`,
  100 frames a second: mel frames 4t..4t+3 belong to video frame t) is cut into per-video-frame
  patches of 4 mel frames (a strided convolution), then two width-3 temporal convolutions, so each
  output sees exactly the ``4 * window`` mel frames of the matching video window.

Training (:func:`train_sync`): a contrastive objective that directly trains offset
discrimination. For a random (clip, centre frame t), the video window at t is scored (temperature-
scaled cosine similarity, learnable temperature) against the audio windows at t + k for every k in
[-max_offset, max_offset] of its own clip, plus the same 31 windows of every other clip in the
batch as extra negatives; cross-entropy with target k = 0 of its own clip. Near offsets (+-1, +-2)
are the hard negatives that make the argmin exact; other clips keep the embedding from collapsing
onto offset-only cues. Augmentation for unseen identities and for generated (imperfect) video:
random crop translation (+-4 px) per window plus +-1 px per-frame jitter, horizontal flip,
brightness / contrast / per-channel colour gain, pixel noise, occasional blur; on the audio side
random gain and offset of the normalised log-mel, feature noise and a frequency mask.
AdamW with warmup then cosine decay.

Acceptance check (the issue's; see :func:`evaluate_sync`, test-split clips of 3-10 s): offset 0
found on >= 90 % of ground-truth clips; after ``shift_audio(w, k)`` for k in {-5, -2, 2, 5}, k found
on >= 90 % of clips for each k; mean LSE-C of ground truth clearly above that of mismatched pairs
(clip i's video with clip i+1's audio).

Shipped checkpoint (``checkpoints/sync``, 1.07 M parameters, 4.3 MB): ``python -m training.eval.sync
data/corpus training/eval/checkpoints/sync --steps 2000 --eval-every 500`` (batch 48, one CPU thread,
~13 min). On the 65 test clips of 3-10 s: offset 0 on 100 % of ground-truth clips, each of the shifts
-5, -2, +2, +5 found on 100 %; LSE-C 0.66 on ground truth vs 0.11 mismatched, LSE-D 0.66 vs 1.22.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.data.schema import Sample
from training.eval.recognizer import features

log = logging.getLogger(__name__)

SAMPLES_PER_FRAME = 640  # 16 kHz audio, 25 fps video
MELS_PER_FRAME = 4  # features(): 100 mel frames a second
MAX_OFFSET = 15
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "sync"


@dataclass(frozen=True)
class SyncNetConfig:
    """image_size: frames of another size are resized to it first. window: video frames per window
    (odd). crop: (top, left, height, width) of the video crop as fractions of image_size."""

    image_size: int = 64
    window: int = 5
    n_mels: int = 64
    crop: tuple[float, float, float, float] = (0.375, 0.25, 0.5, 0.5)
    video_channels: tuple[int, ...] = (32, 64, 128)
    video_hidden: int = 192
    audio_hidden: int = 192
    embed_dim: int = 128
    groups: int = 8

    def __post_init__(self) -> None:
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError("window must be a positive odd number of frames")
        top, left, height, width = self.crop
        if not (0 <= top < 1 and 0 <= left < 1 and 0 < height <= 1 - top + 1e-9 and 0 < width <= 1 - left + 1e-9):
            raise ValueError(f"crop {self.crop} is not inside the frame")
        if any(c % self.groups for c in self.video_channels):
            raise ValueError("video_channels must be multiples of groups")

    @property
    def crop_box(self) -> tuple[int, int, int, int]:
        """(top, left, height, width) in pixels at image_size."""
        top, left, height, width = self.crop
        s = self.image_size
        return round(top * s), round(left * s), round(height * s), round(width * s)

    @property
    def mel_window(self) -> int:
        return MELS_PER_FRAME * self.window


def _temporal_stack(channels: int, window: int) -> nn.Sequential:
    """(window - 1) / 2 width-3 convolutions without padding: T inputs -> T - window + 1 outputs."""
    layers: list[nn.Module] = []
    for _ in range((window - 1) // 2):
        layers += [nn.Conv1d(channels, channels, 3), nn.GELU()]
    return nn.Sequential(*layers)


class SyncNet(nn.Module):
    """Video windows [N, window, H, W, 3] and log-mel windows [N, 4 * window, n_mels] -> unit embeddings [N, D]."""

    Config = SyncNetConfig

    def __init__(self, config: SyncNetConfig) -> None:
        super().__init__()
        self.config = c = config
        convs: list[nn.Module] = []
        channels = 3
        for i, out in enumerate(c.video_channels):
            kernel = 5 if i == 0 else 3
            convs += [nn.Conv2d(channels, out, kernel, stride=2, padding=kernel // 2), nn.GroupNorm(c.groups, out),
                      nn.GELU()]
            channels = out
        self.frame_cnn = nn.Sequential(*convs)
        _, _, ch, cw = c.crop_box
        for _ in c.video_channels:
            ch, cw = (ch + 1) // 2, (cw + 1) // 2
        self.frame_proj = nn.Sequential(nn.Flatten(), nn.Linear(channels * ch * cw, c.video_hidden), nn.GELU())
        self.video_time = _temporal_stack(c.video_hidden, c.window)
        self.video_out = nn.Conv1d(c.video_hidden, c.embed_dim, 1)

        self.audio_patch = nn.Sequential(
            nn.Conv1d(c.n_mels, c.audio_hidden, MELS_PER_FRAME, stride=MELS_PER_FRAME), nn.GELU(),
            nn.Conv1d(c.audio_hidden, c.audio_hidden, 1), nn.GELU())
        self.audio_time = _temporal_stack(c.audio_hidden, c.window)
        self.audio_out = nn.Conv1d(c.audio_hidden, c.embed_dim, 1)

    # ---- frames -------------------------------------------------------------------------------

    def prepare_frames(self, frames: Tensor | np.ndarray) -> Tensor:
        """[..., H, W, 3] uint8, or float on the same 0..255 scale -> [..., 3, h, w] float crops, ~unit range."""
        x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, Tensor) else frames)
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float()
        s = self.config.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        top, left, h, w = self.config.crop_box
        x = x[:, :, top:top + h, left:left + w]
        return ((x - 127.5) / 64.0).reshape(*lead, 3, h, w)

    def frame_features(self, crops: Tensor) -> Tensor:
        """Prepared crops [T, 3, h, w] -> per-frame features [T, video_hidden]."""
        return self.frame_proj(self.frame_cnn(crops))

    def video_from_features(self, feats: Tensor) -> Tensor:
        """Per-frame features [N, T, hidden] -> window embeddings [N, T - window + 1, D], unit length."""
        y = self.video_out(self.video_time(feats.transpose(1, 2))).transpose(1, 2)
        return F.normalize(y, dim=-1)

    # ---- audio --------------------------------------------------------------------------------

    def audio_sequence(self, mel: Tensor) -> Tensor:
        """log-mel [N, 4 * T, n_mels] -> window embeddings [N, T - window + 1, D], unit length: output i covers
        mel frames 4i .. 4(i + window) - 1, i.e. video frames i .. i + window - 1."""
        x = self.audio_patch(mel.float().transpose(1, 2))
        y = self.audio_out(self.audio_time(x)).transpose(1, 2)
        return F.normalize(y, dim=-1)

    # ---- the API ------------------------------------------------------------------------------

    def embed_video(self, frames: Tensor | np.ndarray) -> Tensor:
        """[N, window, H, W, 3] (uint8, or float in 0..255) -> [N, D] L2-normalised."""
        x = self.prepare_frames(frames)
        N, T = x.shape[:2]
        if T != self.config.window:
            raise ValueError(f"expected windows of {self.config.window} frames, got {T}")
        feats = self.frame_features(x.flatten(0, 1)).reshape(N, T, -1)
        return self.video_from_features(feats)[:, 0]

    def embed_audio(self, mel: Tensor) -> Tensor:
        """[N, 4 * window, n_mels] log-mel (from :func:`features`) -> [N, D] L2-normalised."""
        if mel.shape[1] != self.config.mel_window:
            raise ValueError(f"expected {self.config.mel_window} mel frames per window, got {mel.shape[1]}")
        return self.audio_sequence(mel)[:, 0]

    @torch.no_grad()
    def video_embeddings(self, frames: np.ndarray | Tensor, chunk: int = 512) -> Tensor:
        """A whole clip [F, H, W, 3] -> [F - window + 1, D]: row i is the window of frames i .. i + window - 1.
        Frames are encoded once each, in chunks of `chunk` (memory independent of the clip length)."""
        feats = []
        for start in range(0, len(frames), chunk):
            feats.append(self.frame_features(self.prepare_frames(frames[start:start + chunk])))
        per_frame = torch.cat(feats)  # [F, hidden]
        out, w = [], self.config.window
        for start in range(0, len(per_frame) - w + 1, chunk):
            out.append(self.video_from_features(per_frame[start:start + chunk + w - 1][None])[0])
        return torch.cat(out)

    @torch.no_grad()
    def audio_embeddings(self, mel: Tensor, chunk: int = 2048) -> Tensor:
        """A whole clip's log-mel [4F, n_mels] -> [F - window + 1, D], row i matching video_embeddings' row i."""
        w, m = self.config.window, MELS_PER_FRAME
        frames = len(mel) // m
        out = []
        for start in range(0, frames - w + 1, chunk):
            out.append(self.audio_sequence(mel[start * m:(start + chunk + w - 1) * m][None])[0])
        return torch.cat(out)


# ---- scoring -------------------------------------------------------------------------------------

@dataclass
class SyncResult:
    offset: int  # estimated offset in video frames; k: the audio at frame t + k matches video frame t
    lse_d: float
    lse_c: float
    distances: np.ndarray  # [2 * max_offset + 1] mean distance per offset; index i <-> offset i - max_offset
    windows: int  # number of video windows averaged


def shift_audio(waveform: np.ndarray, k: int, samples_per_frame: int = SAMPLES_PER_FRAME) -> np.ndarray:
    """Delay the audio by k video frames (k < 0: advance), zero-padded, same length.

    After ``shift_audio(w, k)`` what was heard at frame t is heard at frame t + k, so
    :func:`sync_scores` finds offset k."""
    w = np.asarray(waveform)
    n = int(k) * samples_per_frame
    out = np.zeros_like(w)
    if n >= 0:
        if n < len(w):
            out[n:] = w[:len(w) - n]
    elif -n < len(w):
        out[:n] = w[-n:]
    return out


def fit_waveform(waveform: np.ndarray, num_frames: int, samples_per_frame: int = SAMPLES_PER_FRAME) -> np.ndarray:
    """Trim or zero-pad a waveform to exactly num_frames * samples_per_frame samples (float32)."""
    w = np.asarray(waveform, dtype=np.float32).reshape(-1)
    n = num_frames * samples_per_frame
    return w[:n] if len(w) >= n else np.pad(w, (0, n - len(w)))


def clip_features(waveform: np.ndarray, num_frames: int, pad_frames: int = 0) -> Tensor:
    """The log-mel of a clip's audio fitted to num_frames video frames (and zero-padded by pad_frames
    either side): [4 * (num_frames + 2 * pad_frames), 64]."""
    w = fit_waveform(waveform, num_frames)
    if pad_frames:
        w = np.pad(w, (pad_frames * SAMPLES_PER_FRAME, pad_frames * SAMPLES_PER_FRAME))
    mel = features(w)
    return mel[:MELS_PER_FRAME * (num_frames + 2 * pad_frames)]


def _audio_for(model: SyncNet, waveform: np.ndarray, num_frames: int, max_offset: int) -> tuple[Tensor, int]:
    """Audio window embeddings for scoring and the padding (in frames) they carry on each side."""
    pad = 0 if num_frames >= 2 * max_offset + model.config.window else max_offset
    return model.audio_embeddings(clip_features(waveform, num_frames, pad)), pad


def scores_from_embeddings(video: Tensor, audio: Tensor, max_offset: int = MAX_OFFSET, pad: int = 0) -> SyncResult:
    """SyncNet's scores from window embeddings: video [n, D]; audio [n + 2 * pad, D], its row i + pad
    aligned with video row i. With pad = 0 only video windows i with max_offset <= i < n - max_offset are
    averaged (their audio exists at every offset); with pad >= max_offset all n are."""
    n, K = len(video), max_offset
    if len(audio) != n + 2 * pad:
        raise ValueError(f"{len(audio)} audio windows for {n} video windows and padding {pad}")
    lo, hi = (K, n - K) if pad == 0 else (0, n)
    if pad and pad < K:
        raise ValueError("padding must cover max_offset")
    if hi <= lo:
        raise ValueError(f"{n} windows is too short for max_offset {K} without padding")
    v = video[lo:hi].double()
    distances = np.empty(2 * K + 1)
    for i, k in enumerate(range(-K, K + 1)):
        a = audio[lo + pad + k:hi + pad + k].double()
        distances[i] = float((v - a).norm(dim=1).mean())
    best = int(np.argmin(distances))
    d_min = float(distances[best])
    return SyncResult(offset=best - K, lse_d=d_min, lse_c=float(np.median(distances)) - d_min, distances=distances,
                      windows=hi - lo)


@torch.no_grad()
def sync_scores(model: SyncNet, frames: np.ndarray, waveform: np.ndarray, max_offset: int = MAX_OFFSET) -> SyncResult:
    """SyncNet offset, LSE-D and LSE-C of a clip.

    frames: uint8 [F, H, W, 3] at 25 fps; waveform: float32 16 kHz, trimmed or zero-padded to F * 640
    samples. Embeddings are computed in chunks (memory linear in F). Windows: see the module
    docstring (clips of >= 2 * max_offset + window frames: only windows valid at every offset;
    shorter: silence-padded audio)."""
    F_ = len(frames)
    if F_ < model.config.window:
        raise ValueError(f"a clip needs at least {model.config.window} frames, got {F_}")
    video = model.video_embeddings(frames)
    audio, pad = _audio_for(model, waveform, F_, max_offset)
    return scores_from_embeddings(video, audio, max_offset, pad)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


@torch.no_grad()
def evaluate_sync(model: SyncNet, samples: Sequence[Sample], shifts: Sequence[int] = (-5, -2, 2, 5),
                  max_offset: int = MAX_OFFSET) -> dict[str, float]:
    """The acceptance figures over `samples` (needs at least two for the mismatched baseline).

    offset0_accuracy: fraction of clips whose ground truth gives offset 0; ``shift_accuracy[k]`` (key
    spelt e.g. ``"shift_accuracy[-5]"``, ``"shift_accuracy[2]"``): fraction finding exactly k after
    ``shift_audio(w, k)``; lse_c / lse_d: means on ground truth; lse_c_mismatched /
    lse_d_mismatched: means over clip i's video with clip i+1's audio (trimmed / zero-padded to
    the video's length); offset_abs_error: mean |offset| on ground truth; clips: how many."""
    if len(samples) < 2:
        raise ValueError("need at least two samples for the mismatched baseline")
    gt_c, gt_d, mm_c, mm_d, offsets = [], [], [], [], []
    hits = {k: 0 for k in shifts}
    for i, s in enumerate(samples):
        frames, n = s.frames, len(s.frames)
        video = model.video_embeddings(frames)

        def score(wave: np.ndarray) -> SyncResult:
            audio, pad = _audio_for(model, wave, n, max_offset)
            return scores_from_embeddings(video, audio, max_offset, pad)

        wave = fit_waveform(s.waveform, n)
        r = score(wave)
        offsets.append(r.offset)
        gt_c.append(r.lse_c)
        gt_d.append(r.lse_d)
        for k in shifts:
            hits[k] += int(score(shift_audio(wave, k)).offset == k)
        other = samples[(i + 1) % len(samples)]
        m = score(fit_waveform(other.waveform, n))
        mm_c.append(m.lse_c)
        mm_d.append(m.lse_d)
    out = {"clips": float(len(samples)), "offset0_accuracy": _mean([float(o == 0) for o in offsets])}
    out.update({f"shift_accuracy[{k}]": hits[k] / len(samples) for k in shifts})
    out.update({"offset_abs_error": _mean([abs(o) for o in offsets]), "lse_c": _mean(gt_c), "lse_d": _mean(gt_d),
                "lse_c_mismatched": _mean(mm_c), "lse_d_mismatched": _mean(mm_d)})
    return out


# ---- training ------------------------------------------------------------------------------------

@dataclass
class _Clip:
    frames: Tensor  # uint8 [F, h + 2m, w + 2m, 3]: the crop box plus a margin for translation
    mel: Tensor  # [4F, n_mels]


def _load_clips(samples: Sequence[Sample], config: SyncNetConfig, margin: int, min_frames: int) -> list[_Clip]:
    top, left, h, w = config.crop_box
    s = config.image_size
    clips = []
    for sample in samples:
        frames = torch.as_tensor(np.asarray(sample.frames))
        if len(frames) < min_frames:
            continue
        if frames.shape[1:3] != (s, s):
            x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(s, s), mode="bilinear",
                              align_corners=False, antialias=True)
            frames = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        # Pad by the margin (edge replicate) so every translation stays inside the image.
        x = F.pad(frames.permute(0, 3, 1, 2).float(), (margin, margin, margin, margin), mode="replicate")
        x = x[:, :, top:top + h + 2 * margin, left:left + w + 2 * margin]
        crop = x.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        clips.append(_Clip(crop, clip_features(sample.waveform, len(frames))))
    return clips


def _augment_video(x: Tensor, margin: int, h: int, w: int, gen: torch.Generator) -> Tensor:
    """uint8 windows [B, T, h + 2m, w + 2m, 3] -> float [B, T, h, w, 3] on the 0..255 scale, augmented."""
    B, T = x.shape[:2]
    x = x.float()
    out = torch.empty(B, T, h, w, 3)
    shifts = torch.randint(-margin, margin + 1, (B, 2), generator=gen)
    jitter = torch.randint(-1, 2, (B, T, 2), generator=gen) * (torch.rand(B, 1, 1, generator=gen) < 0.5)
    for b in range(B):
        for t in range(T):
            dy = int((shifts[b, 0] + jitter[b, t, 0]).clamp(-margin, margin)) + margin
            dx = int((shifts[b, 1] + jitter[b, t, 1]).clamp(-margin, margin)) + margin
            out[b, t] = x[b, t, dy:dy + h, dx:dx + w]
    flip = torch.rand(B, generator=gen) < 0.5
    out[flip] = out[flip].flip(-2)
    mean = out.mean(dim=(1, 2, 3, 4), keepdim=True)
    contrast = 0.7 + 0.6 * torch.rand(B, 1, 1, 1, 1, generator=gen)
    gain = 0.85 + 0.3 * torch.rand(B, 1, 1, 1, 3, generator=gen)
    bright = 30 * (torch.rand(B, 1, 1, 1, 1, generator=gen) - 0.5)
    out = ((out - mean) * contrast + mean) * gain + bright
    blur = torch.rand(B, generator=gen) < 0.25
    if blur.any():
        y = out[blur].permute(0, 1, 4, 2, 3).flatten(0, 2)[:, None]  # [n, 1, h, w]
        k = torch.tensor([0.25, 0.5, 0.25])
        y = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), (k[:, None] * k[None, :])[None, None])
        out[blur] = y[:, 0].reshape(-1, T, 3, h, w).permute(0, 1, 3, 4, 2)
    out = out + torch.randn(out.shape, generator=gen) * (6 * torch.rand(B, 1, 1, 1, 1, generator=gen))
    return out.clamp(0, 255)


def _augment_audio(mel: Tensor, gen: torch.Generator) -> Tensor:
    B, M, C = mel.shape
    gain = 0.8 + 0.4 * torch.rand(B, 1, 1, generator=gen)
    shift = 0.2 * (torch.rand(B, 1, C, generator=gen) - 0.5)
    mel = mel * gain + shift + 0.1 * torch.randn(mel.shape, generator=gen)
    width = torch.randint(0, 9, (B,), generator=gen)
    f0 = torch.randint(0, C - 8, (B,), generator=gen)
    ch = torch.arange(C)[None, :]
    mask = (ch >= f0[:, None]) & (ch < (f0 + width)[:, None])
    return mel.masked_fill(mask[:, None, :], 0.0)


def _samples_of(source: str | Path | Sequence[Sample], split: str = "train") -> list[Sample]:
    if isinstance(source, (str, Path)):
        from training.data.corpus import ShardDataset

        dataset = ShardDataset(Path(source), split)
        return [dataset[i] for i in range(len(dataset))]
    return list(source)


def train_sync(
    source: str | Path | Sequence[Sample],
    steps: int,
    config: SyncNetConfig | None = None,
    batch_size: int = 48,
    lr: float = 2e-3,
    weight_decay: float = 1e-2,
    max_offset: int = MAX_OFFSET,
    margin: int = 4,
    augment: bool = True,
    seed: int = 0,
    max_seconds: float | None = None,
    out_dir: str | Path | None = None,
    log_every: int = 50,
    eval_samples: Sequence[Sample] | None = None,
    eval_every: int = 0,
    **config_overrides: Any,
) -> SyncNet:
    """Train a SyncNet on a corpus root's train split or a list of samples (see the module docstring).

    Stops after `steps` updates or `max_seconds` of wall time; saves to `out_dir` (when given) at each
    evaluation and at the end. Returns the model in eval mode."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    config = config or SyncNetConfig(**config_overrides)
    model = SyncNet(config)
    w, K, m = config.window, max_offset, MELS_PER_FRAME
    span = 2 * max_offset + config.window
    clips = _load_clips(_samples_of(source), config, margin, span)
    if not clips:
        raise ValueError(f"no training clip has the {span} frames a training window needs")
    weights = [len(c.frames) - span + 1 for c in clips]  # uniform over valid (clip, t)
    _, _, h, cw = config.crop_box
    log.info("sync: %d params, %d clips, %d windows", sum(p.numel() for p in model.parameters()), len(clips),
             sum(weights))

    log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
    opt = torch.optim.AdamW([{"params": model.parameters()}, {"params": [log_scale], "weight_decay": 0.0}],
                            lr=lr, weight_decay=weight_decay)
    warmup = max(1, min(200, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, i / max(1, steps)))))
    model.train()
    t0, running, running_acc = time.perf_counter(), 0.0, 0.0
    B = batch_size
    target = torch.arange(B) * (2 * K + 1) + K
    for step in range(1, steps + 1):
        picks = rng.choices(range(len(clips)), weights=weights, k=B)
        video, mel = [], []
        for c in picks:
            start = rng.randrange(0, weights[c])  # the span's first frame; the window's centre is start + K + half
            video.append(clips[c].frames[start + K:start + K + w])
            mel.append(clips[c].mel[start * m:(start + span) * m])
        v_in, a_in = torch.stack(video), torch.stack(mel)
        if augment:
            v_in, a_in = _augment_video(v_in, margin, h, cw, gen), _augment_audio(a_in, gen)
        else:
            v_in = v_in[:, :, margin:margin + h, margin:margin + cw].float()
        crops = ((v_in - 127.5) / 64.0).permute(0, 1, 4, 2, 3)  # as prepare_frames, already cropped
        feats = model.frame_features(crops.flatten(0, 1)).reshape(B, w, -1)
        v = model.video_from_features(feats)[:, 0]  # [B, D]
        a = model.audio_sequence(a_in)  # [B, 2K + 1, D]: offsets -K..K around the window
        logits = log_scale.exp().clamp(max=100.0) * v @ a.flatten(0, 1).T  # [B, B * (2K + 1)]
        loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        running_acc += float((logits.argmax(1) == target).float().mean())
        elapsed = time.perf_counter() - t0
        if log_every and step % log_every == 0:
            log.info("step %d loss %.3f window-acc %.3f scale %.1f lr %.2e %.0fs", step, running / log_every,
                     running_acc / log_every, float(log_scale.detach().exp()), sched.get_last_lr()[0], elapsed)
            running = running_acc = 0.0
        if eval_samples and eval_every and step % eval_every == 0:
            model.eval()
            log.info("step %d eval %s", step, _fmt(evaluate_sync(model, eval_samples)))
            model.train()
            if out_dir is not None:
                from streamchar.models.io import save_module

                save_module(model, config, out_dir)
        if max_seconds is not None and elapsed > max_seconds:
            log.info("time budget reached at step %d", step)
            break
    model.eval()
    if out_dir is not None:
        from streamchar.models.io import save_module

        save_module(model, config, out_dir)
    return model


def load_sync(directory: str | Path = DEFAULT_CHECKPOINT) -> SyncNet:
    """A frozen SyncNet from a checkpoint directory (eval mode, no gradients)."""
    from streamchar.models.io import load_module

    model = load_module(SyncNet, directory)
    model.requires_grad_(False)
    return model


def clips_between(samples: Sequence[Sample], min_seconds: float = 3.0, max_seconds: float = 10.0) -> list[Sample]:
    """The samples whose duration (frames at 25 fps) lies in [min_seconds, max_seconds]."""
    return [s for s in samples if min_seconds <= len(s.frames) / 25 <= max_seconds]


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())


def main() -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Train the SyncNet-style sync judge on a corpus.")
    parser.add_argument("corpus", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    val = clips_between(_samples_of(args.corpus, "val"))
    t0 = time.perf_counter()
    model = train_sync(args.corpus, args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       max_seconds=args.max_seconds, out_dir=args.out, eval_samples=val,
                       eval_every=args.eval_every, embed_dim=args.embed_dim)
    train_s = time.perf_counter() - t0
    test = clips_between(_samples_of(args.corpus, "test"))
    metrics = evaluate_sync(model, test)
    params = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(json.dumps({"train_seconds": round(train_s, 1), "params": params, "checkpoint_bytes": size,
                      "test_split_3_10s": metrics}, indent=2))


if __name__ == "__main__":
    main()
