"""A small visual feature encoder: identity similarity and Fréchet features for generated video.

Trained on the corpus train split, then frozen and shipped small (``save_module`` /
``load_module``: ``config.json`` + ``model.safetensors``, no pickles, under 2 MB). It serves two
metrics of the evaluation harness:

* **Identity similarity** (:func:`identity_similarity`): the cosine between the L2-normalised
  identity embedding of each generated frame and that of the character's reference image (the
  neutral render a user uploads). Test identities never appear in training, so the embedding has
  to generalise to new characters, not recognise known ones.
* **Fréchet distance** (:func:`frechet_features` + ``training.eval.stability.frechet_distance``):
  one 89-d feature vector per frame, for a FID-like Gaussian distance between a set of generated
  frames and a set of ground-truth frames.

Model: frames uint8 [N, H, W, 3] (or floats in the same 0..255 pixel units; other sizes are
resized to 64 px, bilinear with antialiasing) -> ``x / 127.5 - 1`` -> four CNN stages (32, 48,
96, 128 channels), each a stride-2 3x3 conv and a 3x3 conv, both with BatchNorm + ReLU (64 -> 4
px) -> global average pool -> linear + BatchNorm1d: the 48-d pre-normalisation embedding ->
L2 normalisation: the identity embedding.

Identity training: classification over the train identities with a CosFace (additive cosine
margin) head, logits ``s * (cos(theta) - m [target])`` with s = 30, m = 0.35, on the normalised
embedding and normalised class weights. The margin pulls each identity's frames into a tight
cone and pushes classes apart by angle, which is what a cosine threshold on unseen identities
needs; the head's class weights are kept in the checkpoint (their count is ``num_classes``) but
are unused at inference. Batches are class-balanced (an identity uniformly, then one of its
frames), so identities with several long clips do not dominate, and one image in eight is the
identity's neutral reference render (rendered once per identity), so frames and references embed
alike. Augmentation makes the embedding ignore pose, mouth and mild rendering defects: random
affine (scale 0.9-1.1, rotation +-0.08 rad, shift +-8 % of the image, border padding), mild
brightness/contrast (+-5 %), Gaussian blur (sigma 0.4-1.5 px) and additive noise (sigma 1-12
grey levels). No hue shifts and no flips: colours and the background's orientation are part of
an identity. AdamW, warmup then cosine decay; the schedule's progress is the larger of
step / steps and elapsed / max_seconds, so a run cut by its time budget still ends annealed.

Fréchet features (``feature_dim`` = 32 + 9 + 48 = 89), three blocks:

* the global average pool of stage 1 (after its ReLU, 32 px): colour and local-edge statistics;
* fixed multi-scale band energies (no weights): per colour channel at 64, 32 and 16 px,
  ``log(1 + mean squared residual of a sigma = 1 px Gaussian blur)``. Blur removes this
  high-frequency energy, noise adds to it, while content barely moves it;
* the 48-d pre-normalisation embedding: what the character is (wrong or implausible identities).

Why not only learned activations: the network is trained to be invariant to blur, noise and
small tone drift (that is what makes identity similarity robust), and it is: in a trial its
stage pools and embedding moved FD by only 0-25 % of the clean floor for blur sigma = 1 px or
noise sigma = 10, while the band energies moved it 15-130 fold. The learned blocks carry
colour shifts and identity; the fixed block carries sharpness and noise. 89 dimensions keep the
covariance estimable from a few hundred frames. After training each dimension is centred and
scaled over clean train frames (buffers ``feature_mean`` / ``feature_std``) so that each block
has unit total variance (a dimension's std times sqrt(block width)): every block weighs the same
in the distance whatever its width, rather than the 48-d embedding's identity spread drowning
the 9 band energies.

Acceptance (held-out test split): :func:`evaluate_identity` ROC-AUCs (frame vs frame, frame vs
reference) >= 0.95, and in :func:`frechet_sanity` the distance grows with blur and noise strength
and for wrong identities, clearly above the floor of two sets of clean frames. The shipped
checkpoint (``python -m training.eval.visual data/corpus training/eval/checkpoints/visual --steps
1200 --max-seconds 720``, one CPU thread, 1064 steps of 128) scores 1.000 / 1.000 (mean cosine
0.996 to its own reference, 0.000 to others'), still 1.000 with frames blurred (sigma 2) and
noised (sigma 25); its FD is 28x / 83x the floor for blur sigma 1 / 2, 3.9x / 23x for noise
sigma 10 / 25 and 7.5x for the identity swap.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.data.characters import reference_image
from training.data.schema import Sample

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "visual"
FPS = 25
MAX_FEATURE_DIM = 128


@dataclass(frozen=True)
class VisualEncoderConfig:
    """num_classes: train identities (rows of the training-only CosFace head).

    image_size: the resolution the network runs at (other inputs are resized). channels: one CNN
    stage per entry, each halving the resolution. frechet_stages: the stages whose pooled
    activations join the pre-normalisation embedding in the Fréchet features.
    """

    num_classes: int
    image_size: int = 64
    channels: tuple[int, ...] = (32, 48, 96, 128)
    embed_dim: int = 48
    frechet_stages: tuple[int, ...] = (0,)
    band_scales: int = 3
    cosface_scale: float = 30.0
    cosface_margin: float = 0.35

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {self.num_classes}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be positive; got {self.channels}")
        if self.image_size < 2 ** max(len(self.channels), self.band_scales):
            raise ValueError(f"image_size {self.image_size} is too small for {len(self.channels)} stride-2 stages "
                             f"and {self.band_scales} band scales")
        if len(set(self.frechet_stages)) != len(self.frechet_stages) or any(
                not 0 <= s < len(self.channels) for s in self.frechet_stages):
            raise ValueError(f"frechet_stages {self.frechet_stages} must be distinct stage indices")
        if self.band_scales < 0 or self.embed_dim < 1:
            raise ValueError("band_scales must be >= 0 and embed_dim >= 1")
        if self.feature_dim > MAX_FEATURE_DIM:
            raise ValueError(f"feature_dim {self.feature_dim} > {MAX_FEATURE_DIM}: too many for a covariance "
                             "estimated from a few hundred frames")

    @property
    def feature_blocks(self) -> tuple[int, ...]:
        """Widths of the Fréchet feature blocks, in order: each chosen stage's pool, the band energies
        (3 colour channels per scale, when band_scales > 0), the pre-normalisation embedding."""
        bands = (3 * self.band_scales,) if self.band_scales else ()
        return tuple(self.channels[s] for s in self.frechet_stages) + bands + (self.embed_dim,)

    @property
    def feature_dim(self) -> int:
        """Dimensions of the Fréchet features."""
        return sum(self.feature_blocks)


def _gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur_tensor(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [N, C, H, W] floats, reflect padding."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel(sigma).to(x)
    r, c = len(k) // 2, x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _conv_bn(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VisualEncoder(nn.Module):
    """images [N, H, W, 3] (uint8, or float in 0..255) -> (identity embedding [N, E], Fréchet features [N, D])."""

    Config = VisualEncoderConfig

    def __init__(self, config: VisualEncoderConfig) -> None:
        super().__init__()
        self.config = c = config
        stages, cin = [], 3
        for cout in c.channels:
            stages.append(nn.Sequential(*_conv_bn(cin, cout, 2), *_conv_bn(cout, cout, 1)))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.embed = nn.Sequential(nn.Linear(cin, c.embed_dim, bias=False), nn.BatchNorm1d(c.embed_dim))
        # CosFace class weights: training only, kept so num_classes and the checkpoint agree.
        self.head = nn.Parameter(torch.randn(c.num_classes, c.embed_dim) / math.sqrt(c.embed_dim))
        self.register_buffer("feature_mean", torch.zeros(c.feature_dim))
        self.register_buffer("feature_std", torch.ones(c.feature_dim))

    def prepare(self, images: Tensor | np.ndarray) -> Tensor:
        """[N, H, W, 3] uint8 or float (0..255) -> [N, 3, S, S] float in [-1, 1] at image_size S."""
        x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"images must be [N, H, W, 3]; got shape {tuple(x.shape)}")
        x = x.to(self.feature_mean.device).permute(0, 3, 1, 2).float()
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x / 127.5 - 1.0

    def band_energies(self, x: Tensor) -> Tensor:
        """Prepared images [N, 3, S, S] -> log high-frequency energy [N, 3 * band_scales] (fixed, no weights).

        At each scale (S, S/2, S/4 px) and per colour channel: log(1 + mean squared residual of a
        Gaussian blur with sigma 1 px), in grey levels squared; the blurred image, halved, is the
        next scale. Blur removes this energy, noise adds to it, content barely moves it.
        """
        cur, out = (x + 1.0) * 127.5, []
        for _ in range(self.config.band_scales):
            low = _blur_tensor(cur, 1.0)
            out.append(torch.log1p((cur - low).square().mean(dim=(2, 3))))
            cur = F.avg_pool2d(low, 2)
        return torch.cat(out, dim=1)

    def trunk(self, x: Tensor, frechet: bool = True) -> tuple[Tensor, Tensor | None]:
        """Prepared images [N, 3, S, S] -> (pre-normalisation embedding [N, E], raw Fréchet features [N, D]
        or None when `frechet` is False)."""
        images, pooled = x, []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if frechet and i in self.config.frechet_stages:
                pooled.append(x.mean(dim=(2, 3)))
        pre = self.embed(x.mean(dim=(2, 3)))
        if not frechet:
            return pre, None
        bands = [self.band_energies(images)] if self.config.band_scales else []
        return pre, torch.cat(pooled + bands + [pre], dim=1)

    def forward(self, images: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        pre, raw = self.trunk(self.prepare(images))
        return F.normalize(pre, dim=1), (raw - self.feature_mean) / self.feature_std

    def cosface_logits(self, embedding: Tensor, labels: Tensor | None = None) -> Tensor:
        """CosFace logits s * (cos - m [target]) of normalised embeddings [N, E] against the class weights."""
        cos = F.normalize(embedding, dim=1) @ F.normalize(self.head, dim=1).T
        if labels is not None:
            cos = cos - self.config.cosface_margin * F.one_hot(labels, self.config.num_classes).to(cos)
        return self.config.cosface_scale * cos


# ---- inference -----------------------------------------------------------------------------------

@torch.no_grad()
def _encode(model: VisualEncoder, frames: np.ndarray | Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    frames = np.asarray(frames) if not isinstance(frames, Tensor) else frames
    if frames.ndim == 3:
        frames = frames[None]
    was_training = model.training
    model.eval()
    try:
        embs, feats = [], []
        for start in range(0, len(frames), batch_size):
            e, f = model(frames[start:start + batch_size])  # prepare() takes numpy views too
            embs.append(e.cpu().numpy())
            feats.append(f.cpu().numpy())
    finally:
        model.train(was_training)
    if not embs:
        d = model.config
        return np.zeros((0, d.embed_dim), np.float32), np.zeros((0, d.feature_dim), np.float64)
    return np.concatenate(embs).astype(np.float32), np.concatenate(feats).astype(np.float64)


def identity_embeddings(model: VisualEncoder, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 [N, H, W, 3] -> L2-normalised identity embeddings float32 [N, E]."""
    return _encode(model, frames, batch_size)[0]


def frechet_features(model: VisualEncoder, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 [N, H, W, 3] -> standardised Fréchet features float64 [N, D] (see the module docstring)."""
    return _encode(model, frames, batch_size)[1]


def identity_similarity(model: VisualEncoder, frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of each frame [N, H, W, 3] to a reference image [H, W, 3]: float64 [N] in [-1, 1]."""
    reference = np.asarray(reference)
    if reference.ndim != 3:
        raise ValueError(f"reference must be one image [H, W, 3]; got shape {reference.shape}")
    emb = identity_embeddings(model, frames).astype(np.float64)
    ref = identity_embeddings(model, reference[None])[0].astype(np.float64)
    return emb @ ref


# ---- ROC-AUC and identity evaluation -----------------------------------------------------------

def roc_auc(positive_scores: Sequence[float] | np.ndarray, negative_scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve: P(positive > negative) + P(tie) / 2 (the Mann-Whitney U statistic).

    Computed from average ranks of the pooled scores (ties share their mean rank), O(n log n).
    """
    pos = np.asarray(positive_scores, dtype=np.float64).ravel()
    neg = np.asarray(negative_scores, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("roc_auc needs at least one positive and one negative score")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores must be finite")
    scores = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # 1-based rank of each distinct value's first occurrence
    mean_rank = first_rank + (counts - 1) / 2.0
    rank_sum = mean_rank[inverse[:len(pos)]].sum()
    u = rank_sum - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def _pick_frames(num_frames: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct frame indices spread over a clip: one uniformly random frame per equal stretch."""
    count = min(count, num_frames)
    edges = np.linspace(0, num_frames, count + 1)
    return np.array([int(rng.integers(int(edges[i]), max(int(edges[i]) + 1, int(edges[i + 1]))))
                     for i in range(count)])


def evaluate_identity(model: VisualEncoder, samples: Sequence[Sample], frames_per_sample: int = 8,
                      seed: int = 0) -> dict[str, float]:
    """Identity separation on `samples` (e.g. the test split), from `frames_per_sample` frames of each.

    * frames: frame-vs-frame cosines. Positives pair frames of one identity: from different
      samples where the identity has several, else frames at least 2 s apart in its one sample.
      Negatives pair frames of different identities.
    * reference: frame-vs-reference cosines (how the harness uses it). A positive is a frame
      against its own identity's neutral reference render, the negatives the same frame against
      every other identity's reference.

    Returns roc_auc_frames, roc_auc_reference, the mean cosine of positives (mean_same_*) and of
    negatives (mean_different_*) for each, and the pair counts (*_pairs).
    """
    rng = np.random.default_rng(seed)
    frames, ident, sample_of, time_of = [], [], [], []
    for k, s in enumerate(samples):
        idx = _pick_frames(s.num_frames, frames_per_sample, rng)
        frames.append(np.asarray(s.frames)[idx])
        ident += [int(s.character["identity_id"])] * len(idx)
        sample_of += [k] * len(idx)
        time_of += idx.tolist()
    if len(set(ident)) < 2:
        raise ValueError("need samples of at least two identities")
    x = np.concatenate(frames)
    ident_a, sample_a, time_a = np.array(ident), np.array(sample_of), np.array(time_of)
    emb = identity_embeddings(model, x).astype(np.float64)

    # Frame vs frame.
    sim = emb @ emb.T
    upper = np.triu(np.ones_like(sim, dtype=bool), k=1)
    same_id = ident_a[:, None] == ident_a[None, :]
    same_sample = sample_a[:, None] == sample_a[None, :]
    samples_per_id: dict[int, set[int]] = {}
    for i, k in zip(ident, sample_of):
        samples_per_id.setdefault(i, set()).add(k)
    several = np.array([len(samples_per_id[i]) > 1 for i in ident])
    far_apart = np.abs(time_a[:, None] - time_a[None, :]) >= 2 * FPS
    positive = upper & same_id & np.where(several[:, None], ~same_sample, same_sample & far_apart)
    negative = upper & ~same_id
    out: dict[str, float] = {}
    if positive.any():
        out["roc_auc_frames"] = roc_auc(sim[positive], sim[negative])
        out["mean_same_frames"] = float(sim[positive].mean())
    else:
        out["roc_auc_frames"], out["mean_same_frames"] = float("nan"), float("nan")
    out["mean_different_frames"] = float(sim[negative].mean())
    out["frames_positive_pairs"] = float(positive.sum())
    out["frames_negative_pairs"] = float(negative.sum())

    # Frame vs reference.
    ids = sorted(set(ident))
    characters = {int(s.character["identity_id"]): s.character for s in samples}
    size = x.shape[1]
    refs = np.stack([reference_image(characters[i], size) for i in ids])
    ref_emb = identity_embeddings(model, refs).astype(np.float64)
    ref_sim = emb @ ref_emb.T  # [frames, identities]
    own = ident_a[:, None] == np.array(ids)[None, :]
    out["roc_auc_reference"] = roc_auc(ref_sim[own], ref_sim[~own])
    out["mean_same_reference"] = float(ref_sim[own].mean())
    out["mean_different_reference"] = float(ref_sim[~own].mean())
    out["reference_positive_pairs"] = float(own.sum())
    out["reference_negative_pairs"] = float((~own).sum())
    out["identities"] = float(len(ids))
    out["frames"] = float(len(x))
    return out


# ---- corruptions and the Fréchet sanity check ---------------------------------------------------

def gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 [N, H, W, 3] blurred with a Gaussian of `sigma` pixels (reflect padding), uint8."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    y = _blur_tensor(x, sigma).round().clamp(0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1).numpy()


def add_noise(frames: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """uint8 [N, H, W, 3] plus i.i.d. Gaussian noise of `sigma` grey levels, rounded and clipped."""
    rng = np.random.default_rng(seed)
    noisy = frames.astype(np.float32) + rng.normal(0.0, sigma, frames.shape).astype(np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def colour_shift(frames: np.ndarray, strength: float) -> np.ndarray:
    """uint8 [N, H, W, 3] with red gained by (1 + strength) and blue by (1 - strength): a colour cast."""
    gains = np.array([1.0 + strength, 1.0, 1.0 - strength], np.float32)
    return np.clip(np.round(frames.astype(np.float32) * gains), 0, 255).astype(np.uint8)


def frechet_sanity(model: VisualEncoder, samples: Sequence[Sample], frames_per_set: int = 2000,
                   seed: int = 0) -> dict[str, float]:
    """Fréchet distances of corrupted frame sets against clean ground truth, with the clean floor.

    Identities with several samples give the halves: their samples go alternately to half A and
    half B (same characters, different clips: what a perfect generator of the test prompts would
    score against the ground truth). `frames_per_set` frames are drawn from each half. Rows:
    floor FD(A, B); blur_1 / blur_2 FD(blur_sigma(A), B); noise_10 / noise_25 FD(A + noise, B);
    colour_5 / colour_15 FD(colour_shift(A), B); identity_swap FD(S, B) where S is the same number
    of frames drawn (shuffled) from the identities with a single sample, which are in neither
    half: the right kind of frames, of the wrong characters.
    """
    from training.eval.stability import frechet_distance

    rng = np.random.default_rng(seed)
    by_id: dict[int, list[Sample]] = {}
    for s in samples:
        by_id.setdefault(int(s.character["identity_id"]), []).append(s)
    half_a, half_b, swap = [], [], []
    for i in sorted(by_id):
        group = sorted(by_id[i], key=lambda s: s.sample_id)
        if len(group) == 1:
            swap.append(group[0].frames)
        else:
            for j, s in enumerate(group):
                (half_a if j % 2 == 0 else half_b).append(s.frames)
    if not half_a or not half_b or not swap:
        raise ValueError("need identities with several samples (the halves) and with one (the identity swap)")

    def draw(parts: list[np.ndarray]) -> np.ndarray:
        pool = np.concatenate(parts)
        return pool[rng.choice(len(pool), size=min(frames_per_set, len(pool)), replace=False)]

    a, b, s = draw(half_a), draw(half_b), draw(swap)
    fb = frechet_features(model, b)

    def fd(frames: np.ndarray) -> float:
        return frechet_distance(frechet_features(model, frames), fb)

    return {
        "floor": fd(a),
        "blur_1": fd(gaussian_blur(a, 1.0)),
        "blur_2": fd(gaussian_blur(a, 2.0)),
        "noise_10": fd(add_noise(a, 10.0, seed)),
        "noise_25": fd(add_noise(a, 25.0, seed)),
        "colour_5": fd(colour_shift(a, 0.05)),
        "colour_15": fd(colour_shift(a, 0.15)),
        "identity_swap": fd(s),
        "frames_a": float(len(a)), "frames_b": float(len(b)), "frames_swap": float(len(s)),
    }


# ---- training --------------------------------------------------------------------------------------

@dataclass
class _TrainingData:
    frames: Tensor  # uint8 [M, H, W, 3], sorted by class
    start: Tensor  # [K] first frame of each class
    count: Tensor  # [K] frames of each class
    references: Tensor  # uint8 [K, H, W, 3]: each class's neutral render
    identity_ids: list[int]


def _load_training_data(source: str | Path | Sequence[Sample], frame_stride: int) -> _TrainingData:
    per_id: dict[int, list[np.ndarray]] = {}
    characters: dict[int, dict[str, Any]] = {}
    if isinstance(source, (str, Path)):
        from training.data.corpus import Shard, shard_paths

        paths = shard_paths(Path(source), "train")
        if not paths:
            raise FileNotFoundError(f"no train shards under {source}")
        for path in paths:
            shard = Shard(path)
            all_frames = shard.all_frames()
            for r in shard.records:
                i = int(r["character"]["identity_id"])
                characters[i] = r["character"]
                per_id.setdefault(i, []).append(all_frames[r["frame_offset"]:r["frame_offset"] + r["num_frames"]]
                                                [::frame_stride].copy())
            del all_frames
    else:
        for s in source:
            i = int(s.character["identity_id"])
            characters[i] = s.character
            per_id.setdefault(i, []).append(np.asarray(s.frames)[::frame_stride])
    if len(per_id) < 2:
        raise ValueError("training needs at least two identities")
    ids = sorted(per_id)
    chunks = [np.concatenate(per_id[i]) for i in ids]
    count = torch.tensor([len(c) for c in chunks])
    start = torch.cumsum(count, 0) - count
    frames = torch.from_numpy(np.concatenate(chunks))
    size = frames.shape[1]
    references = torch.from_numpy(np.stack([reference_image(characters[i], size) for i in ids]))
    return _TrainingData(frames, start, count, references, ids)


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Float images [B, 3, H, W] in 0..255 -> randomly moved, scaled, rotated, toned, blurred and noised."""
    B, C, H, W = x.shape

    def u(lo: float, hi: float, n: int = B) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    # Affine (output -> input sampling grid): scale, rotation, shift; the border pixels extend.
    scale, angle = u(0.9, 1.1), u(-0.08, 0.08)
    shift = torch.stack([u(-0.16, 0.16), u(-0.16, 0.16)], 1)  # +-8 % of the image (grid spans 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    keep = torch.rand(B, generator=gen) < 0.2  # some images untouched (exact geometry)
    theta[keep] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # Mild brightness / contrast (never hue: colours are identity).
    tone = torch.rand(B, generator=gen) < 0.3
    gain, offset = torch.where(tone, u(0.95, 1.05), 1.0), torch.where(tone, u(-8.0, 8.0), 0.0)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * gain.view(B, 1, 1, 1) + mean + offset.view(B, 1, 1, 1)

    # Gaussian blur on a random subset, a sigma per image (grouped conv over the batch).
    blur = torch.nonzero(torch.rand(B, generator=gen) < 0.3).flatten()
    if len(blur):
        sigmas, radius = u(0.4, 1.5, len(blur)), 5
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t[None] / sigmas[:, None]) ** 2)
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)  # [n*C, K]
        y = x[blur].reshape(1, len(blur) * C, H, W)
        y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=len(k))
        y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=len(k))
        x = x.clone()
        x[blur] = y.reshape(len(blur), C, H, W)

    # Additive noise.
    noisy = (torch.rand(B, generator=gen) < 0.3).float() * u(1.0, 12.0)
    x = x + noisy.view(B, 1, 1, 1) * torch.randn(x.shape, generator=gen)
    return x.clamp(0.0, 255.0)


@torch.no_grad()
def _fit_feature_stats(model: VisualEncoder, frames: Tensor, max_frames: int, gen: torch.Generator) -> None:
    """Fit the Fréchet feature standardisation on clean frames: each dimension to mean 0 and each
    block (see ``feature_blocks``) to unit total variance (dimension std times sqrt(block width)),
    so every block weighs the same in the distance, whatever its width."""
    model.eval()
    idx = torch.randperm(len(frames), generator=gen)[:max_frames]
    raw = []
    for start in range(0, len(idx), 256):
        raw.append(model.trunk(model.prepare(frames[idx[start:start + 256]]))[1])
    raw_t = torch.cat(raw).double()
    widths = torch.tensor(model.config.feature_blocks, dtype=torch.float64)
    block_scale = torch.repeat_interleave(widths.sqrt(), widths.long())
    model.feature_mean.copy_(raw_t.mean(0).float())
    model.feature_std.copy_((raw_t.std(0).clamp(min=1e-6) * block_scale).float())


def train_visual(
    source: str | Path | Sequence[Sample],
    steps: int,
    config: VisualEncoderConfig | None = None,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    reference_fraction: float = 0.125,
    frame_stride: int = 2,
    augment: bool = True,
    seed: int = 0,
    max_seconds: float | None = None,
    out_dir: str | Path | None = None,
    log_every: int = 50,
    eval_samples: Sequence[Sample] | None = None,
    eval_every: int = 0,
    stats_frames: int = 16384,
    **config_overrides: Any,
) -> VisualEncoder:
    """Train the encoder by CosFace identity classification on a corpus root's train split or on samples.

    Every `frame_stride`-th frame of each clip is kept (neighbouring frames at 25 fps are near
    duplicates). Batches are class-balanced, with `reference_fraction` of them neutral reference
    renders. Stops after `steps` updates or `max_seconds` of wall time, whichever first (the
    cosine schedule follows the larger fraction of either). Then fits the Fréchet feature
    standardisation on up to `stats_frames` clean training frames and saves to `out_dir` when
    given. Returns the model in eval mode.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t_load = time.perf_counter()
    data = _load_training_data(source, frame_stride)
    num_classes = len(data.identity_ids)
    if config is None:
        config = VisualEncoderConfig(num_classes=num_classes, **config_overrides)
    elif config.num_classes != num_classes:
        raise ValueError(f"config.num_classes {config.num_classes} != {num_classes} training identities")
    model = VisualEncoder(config)
    log.info("visual: %d params, %d identities, %d frames (loaded in %.0fs)",
             sum(p.numel() for p in model.parameters()), num_classes, len(data.frames), time.perf_counter() - t_load)

    decay = [p for n, p in model.named_parameters() if p.dim() > 1 and n != "head"]
    other = [p for n, p in model.named_parameters() if p.dim() <= 1 or n == "head"]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=lr)
    warmup = max(1, min(100, steps // 10))
    n_ref = int(round(batch_size * reference_fraction)) if len(data.references) else 0
    n_frames = batch_size - n_ref
    model.train()
    t0, running, running_acc, done = time.perf_counter(), 0.0, 0.0, 0
    for step in range(1, steps + 1):
        elapsed = time.perf_counter() - t0
        progress = step / steps if max_seconds is None else max(step / steps, elapsed / max_seconds)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        cls = torch.randint(0, num_classes, (n_frames,), generator=gen)
        pick = data.start[cls] + (torch.rand(n_frames, generator=gen) * data.count[cls]).long()
        ref_cls = torch.randint(0, num_classes, (n_ref,), generator=gen)
        images = torch.cat([data.frames[pick], data.references[ref_cls]]).permute(0, 3, 1, 2).float()
        labels = torch.cat([cls, ref_cls])
        if augment:
            images = _augment(images, gen)
        images = images.permute(0, 2, 3, 1)  # the model takes [N, H, W, 3]
        pre, _ = model.trunk(model.prepare(images), frechet=False)
        logits = model.cosface_logits(pre, labels)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        done = step
        running += loss.item()
        running_acc += (logits.argmax(1) == labels).float().mean().item()
        elapsed = time.perf_counter() - t0
        if log_every and step % log_every == 0:
            log.info("step %d loss %.3f acc %.3f lr %.2e %.0fs", step, running / log_every, running_acc / log_every,
                     opt.param_groups[0]["lr"], elapsed)
            running, running_acc = 0.0, 0.0
        if eval_samples and eval_every and step % eval_every == 0:
            model.eval()
            r = evaluate_identity(model, eval_samples, frames_per_sample=4)
            log.info("step %d eval auc frames %.4f reference %.4f", step, r["roc_auc_frames"], r["roc_auc_reference"])
            model.train()
        if max_seconds is not None and elapsed > max_seconds:
            log.info("time budget reached at step %d", step)
            break
    log.info("trained %d steps in %.0fs", done, time.perf_counter() - t0)
    _fit_feature_stats(model, data.frames, stats_frames, gen)
    model.eval()
    if out_dir is not None:
        from streamchar.models.io import save_module

        save_module(model, config, out_dir)
    return model


def load_visual(directory: str | Path = DEFAULT_CHECKPOINT) -> VisualEncoder:
    """A frozen encoder from a checkpoint directory (eval mode, no gradients)."""
    from streamchar.models.io import load_module

    model = load_module(VisualEncoder, directory)
    model.requires_grad_(False)
    return model


def main() -> None:
    import argparse
    import dataclasses

    parser = argparse.ArgumentParser(description="Train the visual identity / Fréchet feature encoder on a corpus.")
    parser.add_argument("corpus", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--frame-stride", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    from training.data.corpus import ShardDataset

    val = ShardDataset(args.corpus, "val")
    val_samples = [val[i] for i in range(len(val))]
    t0 = time.perf_counter()
    model = train_visual(args.corpus, args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         frame_stride=args.frame_stride, max_seconds=args.max_seconds, out_dir=args.out,
                         eval_samples=val_samples, eval_every=args.eval_every)
    wall = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in Path(args.out).iterdir() if f.is_file())
    print(f"trained in {wall:.0f}s; {params} params ({params - model.head.numel()} without the training head); "
          f"checkpoint {size / 1e6:.2f} MB at {args.out}")

    test = ShardDataset(args.corpus, "test")
    test_samples = [test[i] for i in range(len(test))]
    result = evaluate_identity(model, test_samples)
    print("identity (test split):")
    for key, value in result.items():
        print(f"  {key:26s} {int(value)}" if key.endswith("pairs") or key in ("identities", "frames") else
              f"  {key:26s} {value:.4f}")
    print("identity on corrupted test frames (clean references):")
    corruptions = {"blur sigma 1": lambda f: gaussian_blur(f, 1.0), "noise sigma 10": lambda f: add_noise(f, 10.0),
                   "blur 2 + noise 25": lambda f: add_noise(gaussian_blur(f, 2.0), 25.0)}
    for name, corrupt in corruptions.items():
        r = evaluate_identity(model, [dataclasses.replace(s, frames=corrupt(s.frames)) for s in test_samples])
        print(f"  {name:18s} roc_auc_frames {r['roc_auc_frames']:.4f} roc_auc_reference {r['roc_auc_reference']:.4f} "
              f"mean_same_reference {r['mean_same_reference']:.3f} mean_different_reference "
              f"{r['mean_different_reference']:.3f}")
    table = frechet_sanity(model, test_samples)
    floor = table["floor"]
    print("Fréchet sanity (test split, FD to half B):")
    for key, value in table.items():
        if key.startswith("frames_"):
            print(f"  {key:16s} {int(value)}")
        else:
            print(f"  {key:16s} {value:10.3f}  x{value / floor:6.2f} floor")


if __name__ == "__main__":
    main()
