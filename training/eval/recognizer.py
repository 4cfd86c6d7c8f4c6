"""A small CTC phoneme recognizer: the intelligibility judge for generated speech.

Trained on the corpus train split, then frozen and shipped small (``save_module`` /
``load_module``: ``config.json`` + ``model.safetensors``, no pickles). It maps 16 kHz audio to
espeak-ng phoneme mnemonics (the corpus's own labels), and :func:`phoneme_error_rate` scores a
waveform against a reference phoneme sequence with jiwer: ``jiwer.wer`` over space-joined
phoneme tokens is the phoneme error rate (PER).

Model: per-utterance normalised log-mel (``MelAudioCodec(PRESETS["tiny"])``: 64 mels, 100 frames
a second) -> two 1-D convolutions (the first strided by 3: 33 outputs a second, enough for the
corpus's fastest ~18 labels a second with CTC blanks between repeats) -> a bidirectional GRU stack -> a linear
layer over the phoneme inventory plus the CTC blank (index 0).

Targets: espeak's phoneme events with its pauses (``_``, ``_:``, ``_!``) dropped: pauses are
silence, not speech, and their placement is prosody rather than content.

References for output that has no ground-truth phonemes (a generated answer to a transcript):
:func:`reference_phonemes` synthesises the text with :class:`EspeakSynthesizer` for the given
speaker and takes the phonemes espeak reports (pauses dropped). This is exactly how corpus
samples got their labels, so on corpus audio it reproduces :func:`transcript_phonemes`. The
speaker matters: espeak's accents (en-us, en-gb, en-gb-scotland, ...) pronounce words with
different phonemes, so pass the voice the audio is meant to have.

Shipped checkpoint (``checkpoints/recognizer``, 0.97 M parameters, 3.9 MB): ``python -m
training.eval.recognizer data/corpus training/eval/checkpoints/recognizer --steps 1800 --batch-size 8``
(12.3 min on 2 CPU cores).

Acceptance check (the issue's): on ground-truth test audio PER <= 15 %; on audio scored against
a mismatched transcript PER >= 60 % (see :func:`evaluate_recognizer`).
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
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from streamchar.models.units import is_pause
from training.data.schema import Sample

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "recognizer"
HOP = 160  # MelAudioCodec tiny preset: 100 mel frames a second
BLANK = 0


@dataclass(frozen=True)
class PhonemeRecognizerConfig:
    """inventory: the phoneme tokens (espeak mnemonics), token i+1 of the output; 0 is the blank."""

    inventory: tuple[str, ...]
    n_mels: int = 64
    conv_channels: int = 160
    conv_kernel: int = 5
    strides: tuple[int, ...] = (3, 1)  # 33 outputs a second: the corpus peaks at ~18 CTC labels a second
    hidden: int = 160
    layers: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if len(set(self.inventory)) != len(self.inventory):
            raise ValueError("duplicate phonemes in the inventory")
        if any(is_pause(p) or not p or any(ch.isspace() for ch in p) for p in self.inventory):
            raise ValueError("inventory phonemes must be non-pause tokens without whitespace")
        if self.conv_kernel % 2 == 0:
            raise ValueError("conv_kernel must be odd")

    @property
    def vocab_size(self) -> int:
        return len(self.inventory) + 1

    @property
    def total_stride(self) -> int:
        return math.prod(self.strides)


class PhonemeRecognizer(nn.Module):
    """log-mel [B, M, n_mels] -> CTC log-probabilities [B, T, len(inventory) + 1], T ~ M / stride."""

    Config = PhonemeRecognizerConfig

    def __init__(self, config: PhonemeRecognizerConfig) -> None:
        super().__init__()
        self.config = c = config
        convs, channels = [], c.n_mels
        for stride in c.strides:
            convs.append(nn.Conv1d(channels, c.conv_channels, c.conv_kernel, stride=stride, padding=c.conv_kernel // 2))
            channels = c.conv_channels
        self.convs = nn.ModuleList(convs)
        self.norm = nn.LayerNorm(c.conv_channels)
        self.rnn = nn.GRU(c.conv_channels, c.hidden, num_layers=c.layers, batch_first=True, bidirectional=True,
                          dropout=c.dropout if c.layers > 1 else 0.0)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(2 * c.hidden, c.vocab_size)
        self._token = {p: i + 1 for i, p in enumerate(c.inventory)}

    # ---- features ----------------------------------------------------------------------------

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for stride in self.config.strides:  # conv with padding k//2: L' = floor((L - 1) / s) + 1
            lengths = torch.div(lengths - 1, stride, rounding_mode="floor") + 1
        return lengths

    def forward(self, features: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """features [B, M, n_mels] (from :func:`features`), lengths [B] -> (log_probs [B, T, V], T lengths [B])."""
        B, M, _ = features.shape
        if lengths is None:
            lengths = torch.full((B,), M, dtype=torch.long)
        lengths = lengths.cpu()
        x = features.transpose(1, 2)
        for conv, stride in zip(self.convs, self.config.strides):
            # Zero everything past each row's end, so a padded row computes what it would alone.
            valid = torch.arange(x.shape[-1])[None, :] < lengths[:, None]
            x = F.gelu(conv(x * valid[:, None].to(x)))
            lengths = torch.div(lengths - 1, stride, rounding_mode="floor") + 1
        x = self.norm(x.transpose(1, 2))  # [B, T, C]
        out_lengths = lengths.clamp(max=x.shape[1])
        packed = pack_padded_sequence(x, out_lengths, batch_first=True, enforce_sorted=False)
        y, _ = self.rnn(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return self.head(self.drop(y)).log_softmax(-1), out_lengths

    # ---- tokens --------------------------------------------------------------------------------

    def encode_phonemes(self, phonemes: Sequence[str]) -> list[int]:
        """Phonemes -> token ids; pauses and phonemes outside the inventory are skipped."""
        return [self._token[p] for p in phonemes if p in self._token]

    def decode_tokens(self, tokens: Sequence[int]) -> list[str]:
        return [self.config.inventory[t - 1] for t in tokens if t != BLANK]

    @torch.no_grad()
    def recognize(self, waveform: np.ndarray | Tensor) -> list[str]:
        """16 kHz mono waveform [S] -> the phonemes heard (greedy CTC)."""
        was_training = self.training
        self.eval()
        try:
            feats = features(waveform)[None]
            log_probs, lengths = self(feats)
            return self.decode_tokens(greedy_decode(log_probs, lengths)[0])
        finally:
            self.train(was_training)


# ---- features and decoding ---------------------------------------------------------------------

_CODEC: Any = None


def _codec() -> Any:
    global _CODEC
    if _CODEC is None:
        from streamchar.models.audio_codec import PRESETS, MelAudioCodec

        _CODEC = MelAudioCodec(PRESETS["tiny"]).eval()
        assert _CODEC.config.hop_length == HOP and _CODEC.config.n_mels == 64
    return _CODEC


@torch.no_grad()
def features(waveform: np.ndarray | Tensor) -> Tensor:
    """waveform [S] float at 16 kHz -> [ceil(S / 160), 64] log-mel, normalised per utterance
    (each mel channel to zero mean over time, all channels by one standard deviation), so the
    recognizer ignores loudness and channel colouring."""
    wave = torch.as_tensor(np.asarray(waveform, dtype=np.float32) if not isinstance(waveform, Tensor) else waveform)
    wave = wave.float().reshape(-1)
    pad = (-len(wave)) % HOP
    if len(wave) < 2 * HOP:  # reflect padding needs some signal
        pad += 2 * HOP
    wave = F.pad(wave, (0, pad))
    mel = _codec().log_mel(wave[None])[0]  # [M, 64]
    mel = mel - mel.mean(0, keepdim=True)
    return mel / mel.std().clamp(min=1e-3)


def greedy_decode(log_probs: Tensor, lengths: Tensor | None = None) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, collapse repeats, drop blanks (index 0).

    log_probs [B, T, V] (or [T, V]); lengths [B] valid frames per row. Returns token ids per row.
    """
    if log_probs.dim() == 2:
        log_probs = log_probs[None]
    best = log_probs.argmax(-1).cpu()
    out = []
    for b in range(best.shape[0]):
        n = best.shape[1] if lengths is None else int(lengths[b])
        row, prev, tokens = best[b, :n].tolist(), BLANK, []
        for t in row:
            if t != prev and t != BLANK:
                tokens.append(t)
            prev = t
        out.append(tokens)
    return out


# ---- references and scoring ------------------------------------------------------------------

def transcript_phonemes(sample: Sample) -> list[str]:
    """A sample's (or an evaluation item's) phoneme target: its espeak phoneme events, pauses dropped."""
    return [e.phoneme for e in sample.phonemes if not is_pause(e.phoneme)]


_SYNTH: Any = None


def reference_phonemes(text: str, speaker: Any = None) -> list[str]:
    """The reference phonemes of `text` spoken by `speaker`, without any audio of it.

    Synthesises `text` with :class:`training.data.speech.EspeakSynthesizer` (one process-wide
    instance, started on first use) and returns the phonemes espeak reports, pauses dropped:
    the same procedure that labelled the corpus, so for a corpus sample
    ``reference_phonemes(s.transcript, s.speaker) == transcript_phonemes(s)``. `speaker` is a
    ``SpeakerParams``, its dict form (``Sample.speaker``), or None for the default en-us voice;
    only its voice (accent) changes the phonemes, not pitch or rate.
    """
    global _SYNTH
    from training.data.speech import EspeakSynthesizer, SpeakerParams

    if speaker is None:
        speaker = SpeakerParams(speaker_id="reference")
    elif isinstance(speaker, dict):
        speaker = SpeakerParams.from_dict(speaker)
    if _SYNTH is None:
        _SYNTH = EspeakSynthesizer()
    _, events = _SYNTH.synthesize(text, speaker)
    return [e.phoneme for e in events if not is_pause(e.phoneme)]


def pooled_per(references: list[list[str]], hypotheses: list[list[str]]) -> float:
    import jiwer

    if any(not r for r in references):
        raise ValueError("a reference phoneme sequence is empty")
    # jiwer needs non-empty hypothesis strings only when the reference is empty; an empty
    # hypothesis against a non-empty reference is all deletions (PER 1.0).
    refs = [" ".join(r) for r in references]
    hyps = [" ".join(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))


def phoneme_error_rate(recognizer: PhonemeRecognizer, waveform: np.ndarray | Tensor,
                       reference_phonemes: Sequence[str]) -> float:
    """PER of what `recognizer` hears in `waveform` against `reference_phonemes` (pauses are
    dropped from the reference): jiwer.wer over space-joined phoneme tokens. Can exceed 1.0."""
    ref = [p for p in reference_phonemes if not is_pause(p)]
    return pooled_per([ref], [recognizer.recognize(waveform)])


def evaluate_recognizer(recognizer: PhonemeRecognizer, samples: Sequence[Sample]) -> dict[str, float]:
    """Corpus-level PER (jiwer over all utterances) on ground truth and against mismatched
    transcripts (sample i's audio scored against sample i+1's phonemes)."""
    if len(samples) < 2:
        raise ValueError("need at least two samples for the mismatched baseline")
    refs = [transcript_phonemes(s) for s in samples]
    hyps = [recognizer.recognize(s.waveform) for s in samples]
    shifted = refs[1:] + refs[:1]
    return {"per": pooled_per(refs, hyps), "per_mismatched": pooled_per(shifted, hyps), "samples": float(len(samples))}


# ---- training ------------------------------------------------------------------------------------

def build_inventory(samples_or_root: Any) -> tuple[str, ...]:
    """The sorted non-pause phonemes of a list of samples, or of a corpus root's train split."""
    phonemes: set[str] = set()
    if isinstance(samples_or_root, (str, Path)):
        from training.data.corpus import Shard, shard_paths

        for path in shard_paths(Path(samples_or_root), "train"):
            for record in Shard(path).records:
                phonemes.update(p["phoneme"] for p in record["phonemes"])
    else:
        for s in samples_or_root:
            phonemes.update(e.phoneme for e in s.phonemes)
    return tuple(sorted(p for p in phonemes if not is_pause(p)))


def _spec_augment(x: Tensor, lengths: Tensor, gen: torch.Generator, freq_masks: int = 2, freq_width: int = 8,
                  time_masks: int = 2, time_width: int = 10) -> Tensor:
    x = x.clone()
    B, M, C = x.shape
    for b in range(B):
        for _ in range(freq_masks):
            w = int(torch.randint(0, freq_width + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, max(1, C - w), (1,), generator=gen))
            x[b, :, f0:f0 + w] = 0.0
        n = int(lengths[b])
        for _ in range(time_masks):
            w = int(torch.randint(0, min(time_width, max(1, n // 10)) + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, max(1, n - w), (1,), generator=gen))
            x[b, t0:t0 + w] = 0.0
    return x


def train_recognizer(
    source: str | Path | Sequence[Sample],
    steps: int,
    config: PhonemeRecognizerConfig | None = None,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 1e-2,
    spec_augment: bool = True,
    seed: int = 0,
    max_seconds: float | None = None,
    out_dir: str | Path | None = None,
    log_every: int = 50,
    eval_samples: Sequence[Sample] | None = None,
    eval_every: int = 0,
    **config_overrides: Any,
) -> PhonemeRecognizer:
    """Train a recognizer with CTC on a corpus root's train split or a list of samples.

    AdamW with warmup then cosine decay, gradient clipping at 1.0, optional SpecAugment-style
    masking; batches are runs of length-sorted utterances (little padding). Stops after `steps`
    updates or `max_seconds` of wall time; saves to `out_dir` (when given) at each evaluation and
    at the end. Returns the model in eval mode.
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    if isinstance(source, (str, Path)):
        from training.data.corpus import ShardDataset

        dataset = ShardDataset(Path(source), "train")
        samples: Sequence[Sample] = [dataset[i] for i in range(len(dataset))]
    else:
        samples = list(source)
    if config is None:
        config = PhonemeRecognizerConfig(inventory=build_inventory(samples), **config_overrides)
    model = PhonemeRecognizer(config)
    data = []
    for s in samples:
        tokens = model.encode_phonemes(transcript_phonemes(s))
        feats = features(s.waveform)
        if tokens and len(tokens) <= int(model.output_lengths(torch.tensor(len(feats)))):
            data.append((feats, torch.tensor(tokens, dtype=torch.long)))
    if not data:
        raise ValueError("no usable training samples")
    data.sort(key=lambda d: len(d[0]))
    log.info("recognizer: %d params, %d utterances, inventory %d", sum(p.numel() for p in model.parameters()),
             len(data), len(config.inventory))

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, min(200, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, i / max(1, steps)))))
    ctc = nn.CTCLoss(blank=BLANK, zero_infinity=True)
    model.train()
    t0, running = time.perf_counter(), 0.0
    bs = min(batch_size, len(data))
    for step in range(1, steps + 1):
        start = rng.randrange(0, len(data) - bs + 1)
        batch = data[start:start + bs]
        lengths = torch.tensor([len(f) for f, _ in batch])
        x = torch.zeros(bs, int(lengths.max()), config.n_mels)
        for i, (f, _) in enumerate(batch):
            x[i, :len(f)] = f
        if spec_augment:
            x = _spec_augment(x, lengths, gen)
        targets = torch.cat([t for _, t in batch])
        target_lengths = torch.tensor([len(t) for _, t in batch])
        log_probs, out_lengths = model(x, lengths)
        loss = ctc(log_probs.transpose(0, 1), targets, out_lengths, target_lengths)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        elapsed = time.perf_counter() - t0
        if log_every and step % log_every == 0:
            log.info("step %d loss %.3f lr %.2e %.0fs", step, running / log_every, sched.get_last_lr()[0], elapsed)
            running = 0.0
        if eval_samples and eval_every and step % eval_every == 0:
            model.eval()
            log.info("step %d eval %s", step, evaluate_recognizer(model, eval_samples))
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


def load_recognizer(directory: str | Path) -> PhonemeRecognizer:
    """A frozen recognizer from a checkpoint directory (eval mode, no gradients)."""
    from streamchar.models.io import load_module

    model = load_module(PhonemeRecognizer, directory)
    model.requires_grad_(False)
    return model


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Train the CTC phoneme recognizer on a corpus.")
    parser.add_argument("corpus", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hidden", type=int, default=160)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--conv-channels", type=int, default=160)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-samples", type=int, default=40)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from training.data.corpus import ShardDataset

    test = ShardDataset(args.corpus, "test")
    eval_samples = [test[i] for i in range(min(args.eval_samples, len(test)))]
    model = train_recognizer(args.corpus, args.steps, batch_size=args.batch_size, lr=args.lr,
                             max_seconds=args.max_seconds, out_dir=args.out, eval_samples=eval_samples,
                             eval_every=args.eval_every, hidden=args.hidden, layers=args.layers,
                             conv_channels=args.conv_channels)
    print(evaluate_recognizer(model, eval_samples))


if __name__ == "__main__":
    main()
