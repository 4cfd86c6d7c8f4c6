"""Orchestrator-LM training data: ground-truth frame targets, replayed through the real token protocol.

**Frame targets** (:func:`frame_targets`). Each video frame f of a corpus sample gets a speech unit and
a pointer advance, the two tokens the LM decodes per frame (the bytes passed are echoed between them by
the protocol, not decoded).

* Unit: the shipped :class:`UnitTokenizer`'s unit for the frame (``training.units.sample_units``: the
  aligned phoneme, or for k-means units the audio latents), except that a frame whose waveform is
  digital silence (RMS below ``silence_rms``, -60 dBFS; the threshold the DiT's data uses) becomes the
  silence class K = ``num_units``, decoded as ``<wait>``, as pauses already are for phoneme units.
  Why: k-means units split silence into several near-identical clusters the text cannot predict, while K is what the
  protocol itself emits for filler frames and after ``<eos>``; one silence class makes pauses,
  filler and the tail look alike to the LM, and the DiT is trained to read K as a silent frame.
* Pointer (:func:`speech_pointer`): consecutive phonemes with the same character span form a
  segment (a word, a run of words espeak speaks as one, or a pause over punctuation). Segment k owns
  the bytes from the end of segment k-1 to the UTF-8 byte offset of its ``char_end`` (so the
  whitespace/punctuation before a word is spoken with it) and the time from its first phoneme's start
  t0 to its last phoneme's end t1. At the end of frame f, time t = (f + 1) / fps, the pointer is, for
  the last segment with t0 < t, its end b1 (mode ``"onset"``, the default: a word's bytes are taken at
  its first frame) or ``b0 + ceil((b1 - b0) * (t - t0) / (t1 - t0))`` (mode ``"spread"``: its bytes
  spread over its duration, a started segment counting at least one byte). Once the last phoneme has
  ended, and at the last frame in any case, it is the whole transcript's length, so ``<eos>`` follows.
  The running maximum makes it monotonic whatever the alignment says.
  Why onset: the advance is then 0 except at a word's first frame, a decision the LM can take from the
  units it has emitted (this word's phonemes are done: the next word starts), with the word it is
  speaking just behind the pointer. Spread advances are 0, 1 or 2 by rounding, which the text cannot
  predict: greedy decoding takes the commonest, 1, every frame and runs ahead of its own speech. Onset
  leaves long zero-advance stretches inside long words, so the protocol's ``max_stall_frames`` is 40
  (1.6 s), long enough that few frames need a forced advance (the feasible pointer departs from the
  raw one only there).
* Feasibility (:func:`feasible_advances`): the per-frame differences of the pointer, made decodable by
  simulating the protocol on the whole text: an advance ends at a word end (frames.advance_options;
  a pause segment's punctuation goes with the next word), is at most ``max_advance`` and at most the
  bytes in context (the rest carries to the next frames), and is not 0 after ``max_stall_frames``
  zero advances while text remains. The feasible pointer is the one trained on and evaluated against.

**Replay** (:func:`replay`). The targets are decoded by the REAL :meth:`OrchestratorProtocol.plan_chunk`
with an oracle step function that returns the ground-truth token (and fails loudly if the protocol does
not allow it), so training contexts are exactly the contexts inference builds: lazy text insertion,
segment layout, context slides. The text arrives either whole (``text_ended`` from the start) or word by
word as a chat model streams it, the next word only when a chunk starves or the ground-truth advance
needs bytes not received yet (`streamed` replays). Every context rebuilt by a slide starts a
new :class:`TrainingSequence`. A sequence marks the positions the LM decodes (advance and unit/wait
tokens) and the ids the protocol allowed there; the echo of each advance's bytes, ``<eos>`` and
everything else is appended by the protocol without asking the LM, so it carries no loss.

**Accents** (:func:`sample_accent`). With accents in the vocabulary (``model.accents``), a sample is
replayed as a session naming its voice (``speaker["voice"]``), so every context carries that accent's
token after ``<bos>``: its phonemes are that accent's, which the text alone does not say. A fixed share
of the samples (``data.accent_dropout``, by sample id) names none, as a session without a voice does.

**Cache and batches** (:class:`SequenceSet`, :func:`ensure_cache`). The sequences of a split are built
once into ``<cache>/lm-<split>-<key>.pt`` (flat tensors + offsets; ``torch.load(weights_only=True)``),
where the key digests everything they depend on (corpus shards, codec, unit tokenizer, vocabulary,
protocol settings, options), so a stale cache is never read. :meth:`SequenceSet.batch_fn` draws random
whole sequences (each starts at ``<bos>`` and is at most ``max_context`` tokens, as at inference), in
length buckets so that rows are alike, and right-pads them: padding after a causal sequence never
changes its logits.

Legend: F frames, N tokens, B batch, T tokens of a whole split.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from streamchar.engine.frames import advance_options
from streamchar.engine.protocol import ChunkPlan, OrchestratorProtocol, OrchState, Starved
from streamchar.models.audio_codec import AudioCodecConfig, MelAudioCodec
from streamchar.models.io import load_module
from streamchar.models.units import UnitTokenizer
from streamchar.models.vocab import StreamCharVocab
from streamchar.timebase import TimeBase
from training.data.corpus import ShardDataset, shard_paths
from training.data.schema import Sample
from training.trainers.runtime import weights_digest
from training.units import sample_units

log = logging.getLogger(__name__)

TB = TimeBase()
SILENCE_RMS = 1e-3  # -60 dBFS, as training.pipelines.dit_data
CACHE_FORMAT = 3  # 2: frames echo the bytes they pass (streamchar/engine/frames.py); 3: advances end at word ends


class InfeasibleTarget(ValueError):
    """The protocol does not allow a ground-truth token: the targets violate its constraints."""


# ---- frame targets --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrameTargets:
    """Per-frame ground truth: units [F] long in 0..K (K: silence / ``<wait>``), advances [F] long bytes."""

    units: Tensor
    advances: Tensor

    def __post_init__(self) -> None:
        if self.units.shape != self.advances.shape or self.units.dim() != 1:
            raise ValueError("units and advances must both be [F]")

    @property
    def pointer(self) -> Tensor:
        """Pointer (bytes) at the end of each frame, long [F]."""
        return torch.cumsum(self.advances, 0)


@dataclass(frozen=True)
class UnitCodecs:
    """The frozen models the targets come from: the audio codec and the unit tokenizer fitted on it."""

    codec: MelAudioCodec
    tokenizer: UnitTokenizer
    source: Path

    def digest(self) -> str:
        h = hashlib.sha256(json.dumps(dataclasses.asdict(self.codec.config), sort_keys=True).encode())
        h.update(weights_digest(self.tokenizer).encode())
        h.update(json.dumps(dataclasses.asdict(self.tokenizer.config), sort_keys=True).encode())
        return h.hexdigest()[:16]


def load_unit_codecs(bundle: Path) -> UnitCodecs:
    """``audio_codec.json`` and ``units/`` of a bundle directory."""
    codec = MelAudioCodec(AudioCodecConfig(**json.loads((bundle / "audio_codec.json").read_text())))
    tokenizer = load_module(UnitTokenizer, bundle / "units")
    if tokenizer.config.audio_channels != codec.latent_channels:
        raise ValueError(f"{bundle}: the unit tokenizer was fitted on another audio codec")
    return UnitCodecs(codec.eval(), tokenizer, bundle)


def frame_units(sample: Sample, tokenizer: UnitTokenizer, codec: MelAudioCodec,
                silence_rms: float = SILENCE_RMS) -> Tensor:
    """Units [F] long: the tokenizer's, and K (``num_units``) where the frame is digital silence."""
    units = sample_units(tokenizer, codec, sample)  # [F]
    frames = np.asarray(sample.waveform, dtype=np.float64).reshape(len(units), TB.samples_per_frame)  # [F, 640]
    silent = torch.from_numpy(np.sqrt((frames**2).mean(axis=1)) < silence_rms)  # [F]
    return torch.where(silent, tokenizer.config.num_units, units)


POINTER_MODES = ("onset", "spread")


def speech_pointer(sample: Sample, num_frames: int, fps: int = TB.fps, mode: str = "onset") -> list[int]:
    """Bytes of the transcript spoken by the end of each frame (module docstring), monotonic, ending at len.
    ``mode``: "onset" takes a segment's bytes at its first frame, "spread" spreads them over its duration."""
    if mode not in POINTER_MODES:
        raise ValueError(f"pointer mode must be one of {POINTER_MODES}, got {mode!r}")
    text = sample.transcript
    byte_at = [0]  # byte offset of each character boundary
    for ch in text:
        byte_at.append(byte_at[-1] + len(ch.encode("utf-8")))
    total = byte_at[-1]
    segments: list[tuple[int, int, float, float]] = []  # (first byte, end byte, t0, t1)
    span: tuple[int, int] | None = None
    for p in sample.phonemes:
        if (p.char_start, p.char_end) == span:
            b0, b1, t0, _ = segments[-1]
            segments[-1] = (b0, b1, t0, p.end)
            continue
        span = (p.char_start, p.char_end)
        first = segments[-1][1] if segments else 0
        segments.append((first, max(first, byte_at[p.char_end]), p.start, p.end))
    speech_end = max((p.end for p in sample.phonemes), default=0.0)
    pointer: list[int] = []
    for f in range(num_frames):
        t = (f + 1) / fps
        value = 0
        if f == num_frames - 1 or t >= speech_end:
            value = total
        else:
            for b0, b1, t0, t1 in segments:
                if t0 >= t:
                    continue
                progress = min(1.0, (t - t0) / (t1 - t0)) if t1 > t0 and mode == "spread" else 1.0
                value = max(value, b0 + min(b1 - b0, math.ceil((b1 - b0) * progress - 1e-9)))
        pointer.append(max(value, pointer[-1] if pointer else 0))
    return pointer


def feasible_advances(pointer: Sequence[int], text: bytes, protocol: OrchestratorProtocol) -> list[int]:
    """Per-frame advances that track `pointer` as closely as the protocol allows (whole `text` received).

    Mirrors ``plan_chunk``: text enters the context ``2 * lookahead_bytes`` past the pointer once fewer
    than ``lookahead_bytes`` are left in it; an advance is one of :func:`advance_options` over the bytes
    in context (0 or to a word end, at most ``max_advance``; not 0 after ``max_stall_frames`` zero
    advances): the largest that does not pass the target, else (stalled) the smallest. A shortfall
    carries to later frames, past the end of `pointer` if need be (the list is then longer than
    `pointer`); it ends when the text is spoken.
    """
    c, vocab = protocol.config, protocol.vocab
    num_bytes = len(text)
    advances: list[int] = []
    spoken, in_context, stall = 0, 0, 0
    while spoken < num_bytes:
        if in_context < num_bytes and in_context - spoken < c.lookahead_bytes:
            in_context = min(num_bytes, spoken + 2 * c.lookahead_bytes)
        target = pointer[len(advances)] if len(advances) < len(pointer) else num_bytes
        lo = 1 if stall >= c.max_stall_frames else 0
        options = advance_options(text[spoken:in_context], lo, vocab.max_advance)
        advance = max((n for n in options if n <= target - spoken), default=options[0])
        advances.append(advance)
        spoken += advance
        stall = 0 if advance else stall + 1
    return advances + [0] * (len(pointer) - len(advances))


def frame_targets(sample: Sample, tokenizer: UnitTokenizer, codec: MelAudioCodec, protocol: OrchestratorProtocol,
                  silence_rms: float = SILENCE_RMS, pointer: str = "onset") -> FrameTargets:
    """The sample's feasible per-frame targets; frames added by a carry past the clip's end are silent."""
    if tokenizer.config.num_units != protocol.vocab.num_units:
        raise ValueError(f"tokenizer has {tokenizer.config.num_units} units, vocabulary "
                         f"{protocol.vocab.num_units}")
    units = frame_units(sample, tokenizer, codec, silence_rms)
    text = sample.transcript.encode("utf-8")
    advances = feasible_advances(speech_pointer(sample, len(units), mode=pointer), text, protocol)
    extra = len(advances) - len(units)
    units = torch.cat([units, torch.full((extra,), protocol.vocab.num_units, dtype=torch.long)])
    return FrameTargets(units.long(), torch.tensor(advances, dtype=torch.long))


# ---- driving the protocol ------------------------------------------------------------------------

def words_of(text: str) -> list[str]:
    """The transcript as a chat model streams it: words with their trailing whitespace ("".join == text)."""
    pieces = re.findall(r"\s*\S+\s*", text) or [text]
    if "".join(pieces) != text:
        raise AssertionError("word split lost characters")
    return pieces


@dataclass(frozen=True)
class StepCall:
    context: list[int]
    allowed: list[int]
    chosen: int


class RecordingStep:
    """A ``StepFn`` that records every call; the calls of a chunk that starved are dropped with it.

    ``choose(call_index, context, allowed)`` picks the token; call 2f is frame f's advance and 2f + 1 its
    unit (the echo between them is forced, not a call), which holds because :func:`run_protocol` never
    fills, so every frame before ``<eos>`` decodes.
    """

    def __init__(self, choose: Callable[[int, list[int], list[int]], int]) -> None:
        self.choose = choose
        self.calls: list[StepCall] = []
        self.pending: list[StepCall] = []
        self.text_ended = False

    def begin_chunk(self, state: OrchState) -> None:
        self.pending = []
        self.text_ended = state.text_ended

    def end_chunk(self) -> None:
        self.calls += self.pending
        self.pending = []

    def __call__(self, context: list[int], allowed: list[int]) -> int:
        chosen = self.choose(len(self.calls) + len(self.pending), context, allowed)
        self.pending.append(StepCall(list(context), list(allowed), chosen))
        return chosen

    def advances(self, vocab: StreamCharVocab) -> list[int]:
        """Bytes advanced in each decoded frame."""
        return [vocab.advance_of(c.chosen) for c in self.calls[0::2]]


def run_protocol(protocol: OrchestratorProtocol, pieces: Sequence[bytes], step: RecordingStep,
                 max_frames: int, accent: str = "") -> tuple[list[ChunkPlan], OrchState]:
    """Decode chunks until ``<eos>`` (or `max_frames`), text arriving piece by piece.

    A session starts with no text; whenever a chunk starves (``allow_fill=False``), the next piece is
    appended and the chunk decoded again from the same state, as the orchestrator does when text
    arrives; the end of text comes with the last piece. One piece is the whole text at once. `accent`:
    the session's (OrchState.accent).
    """
    state, fed, plans = OrchState(accent=accent), 0, []
    while not state.done and len(plans) * protocol.frames_per_chunk < max_frames:
        step.begin_chunk(state)
        try:
            plan, state = protocol.plan_chunk(state, step, allow_fill=False)
        except Starved:
            if fed == len(pieces):
                raise RuntimeError("the protocol starved after the end of text") from None
            state = dataclasses.replace(state, text=state.text + pieces[fed], text_ended=fed + 1 == len(pieces))
            fed += 1
            continue
        step.end_chunk()
        plans.append(plan)
    return plans, state


# ---- replay ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingSequence:
    """One LM context as inference builds it, with what the LM decodes in it.

    At a predicted position i (``loss_mask[i] == 1``) the LM chose ``input_ids[i]`` from the logits at
    i - 1 among the ids ``allowed_lo[i]..allowed_hi[i]`` but those whose bit ``id - allowed_lo[i]`` is set
    in ``allowed_gaps[i]`` (advances that stop inside a word), plus ``<wait>`` where ``allow_wait[i]``.
    """

    input_ids: list[int]
    loss_mask: list[int]
    allowed_lo: list[int]
    allowed_hi: list[int]
    allowed_gaps: list[int]
    allow_wait: list[int]


def replay(protocol: OrchestratorProtocol, text: bytes, targets: FrameTargets,
           pieces: Sequence[bytes] | None = None, accent: str = "") -> list[TrainingSequence]:
    """The training sequences of decoding `targets` over `text` with the real protocol.

    `pieces` (concatenating to `text`) streams the text in; default: all of it at once. `accent`: the
    session's, whose token every context then carries after ``<bos>``. Raises
    :class:`InfeasibleTarget` if the protocol rejects a ground-truth token, and checks that the decode
    reproduced the targets: every unit, and the pointer ending at ``len(text)`` with ``<eos>``.
    """
    vocab = protocol.vocab
    units, advances = targets.units.tolist(), targets.advances.tolist()
    pieces = [text] if pieces is None else list(pieces)
    if b"".join(pieces) != text:
        raise ValueError("pieces do not make up the text")

    def oracle(index: int, context: list[int], allowed: list[int]) -> int:
        frame = index // 2
        if frame >= len(units):
            raise InfeasibleTarget(f"the protocol decodes frame {frame} past the {len(units)} target frames")
        if index % 2 == 0:
            if not 0 <= advances[frame] <= vocab.max_advance:
                raise InfeasibleTarget(f"frame {frame}: advance {advances[frame]} outside 0..{vocab.max_advance}")
            chosen = vocab.adv_id(advances[frame])
            if chosen not in allowed and not step.text_ended and chosen > max(allowed):
                raise Starved()  # the frame speaks text that has not arrived: wait for the next word
        else:
            chosen = vocab.wait_id if units[frame] == vocab.num_units else vocab.unit_id(units[frame])
        if chosen not in allowed:
            raise InfeasibleTarget(f"frame {frame}: {vocab.token_str(chosen)} not among the allowed "
                                   f"{[vocab.token_str(a) for a in allowed]}")
        return chosen

    step = RecordingStep(oracle)
    plans, state = run_protocol(protocol, pieces, step, max_frames=len(units) + 2 * protocol.frames_per_chunk,
                                accent=accent)
    decoded = [u for plan in plans for u in plan.units][:len(step.calls) // 2]
    if not state.done or state.pointer != len(text) or decoded != units[:len(decoded)]:
        raise AssertionError("the oracle decode did not reproduce the targets")
    return sequences_of(step.calls, vocab)


def sequences_of(calls: Iterable[StepCall], vocab: StreamCharVocab) -> list[TrainingSequence]:
    """Split recorded step calls into contexts: a call whose context does not extend the previous one
    follows a slide, which rebuilt the context, so it starts a new sequence."""
    groups: list[tuple[list[int], dict[int, list[int]]]] = []
    for call in calls:
        if not groups or call.context[:len(groups[-1][0])] != groups[-1][0]:
            groups.append(([], {}))
        tokens, predicted = groups[-1]
        tokens[:] = [*call.context, call.chosen]
        predicted[len(call.context)] = call.allowed
    return [_sequence(tokens, predicted, vocab) for tokens, predicted in groups]


def _sequence(tokens: list[int], predicted: dict[int, list[int]], vocab: StreamCharVocab) -> TrainingSequence:
    n = len(tokens)
    mask, lo, hi, gaps, wait = [0] * n, [0] * n, [0] * n, [0] * n, [0] * n
    for i, allowed in predicted.items():
        mask[i] = 1
        lo[i], hi[i], gaps[i], wait[i] = _allowed_span(tuple(allowed), vocab.wait_id)
    return TrainingSequence(tokens, mask, lo, hi, gaps, wait)


MAX_GAP_BITS = 31  # allowed_gaps is an int32 bitmask


@functools.lru_cache(maxsize=4096)
def _allowed_span(allowed: tuple[int, ...], wait_id: int) -> tuple[int, int, int, int]:
    """(first id, last id, gaps, <wait> allowed) of an allowed set: the ids between first and last that
    are missing as bits of `gaps` (bit k: first + k is not allowed), which must fit in 31 bits."""
    ids = sorted(a for a in allowed if a != wait_id)
    if not ids:
        raise ValueError("an empty allowed set (beyond <wait>) cannot be trained on")
    present = set(ids)
    gaps = sum(1 << k for k in range(ids[-1] - ids[0] + 1) if ids[0] + k not in present)
    if gaps and ids[-1] - ids[0] >= MAX_GAP_BITS:
        raise ValueError(f"allowed ids {allowed} have gaps beyond {MAX_GAP_BITS} ids: the loss cannot encode them")
    return ids[0], ids[-1], gaps, int(wait_id in allowed)


# ---- cache and batches ---------------------------------------------------------------------------

@dataclass
class LMBatch:
    """Right-padded sequences: input_ids [B,N] long, loss_mask [B,N] bool, allowed_lo/hi/gaps [B,N] long,
    allow_wait [B,N] bool (see :class:`TrainingSequence`)."""

    input_ids: Tensor
    loss_mask: Tensor
    allowed_lo: Tensor
    allowed_hi: Tensor
    allowed_gaps: Tensor
    allow_wait: Tensor


@dataclass
class SequenceSet:
    """The sequences of a split, concatenated: each field [T], sequence s at offsets[s]:offsets[s+1]."""

    input_ids: Tensor  # int32 [T]
    loss_mask: Tensor  # bool [T]
    allowed_lo: Tensor  # int32 [T]
    allowed_hi: Tensor  # int32 [T]
    allowed_gaps: Tensor  # int32 [T]
    allow_wait: Tensor  # bool [T]
    offsets: Tensor  # int64 [S+1]
    meta: dict

    FIELDS = ("input_ids", "loss_mask", "allowed_lo", "allowed_hi", "allowed_gaps", "allow_wait")

    @classmethod
    def from_sequences(cls, sequences: Sequence[TrainingSequence], meta: dict) -> SequenceSet:
        lengths = [len(s.input_ids) for s in sequences]
        offsets = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int64)

        def flat(name: str, dtype: torch.dtype) -> Tensor:
            return torch.tensor([v for s in sequences for v in getattr(s, name)], dtype=dtype)

        return cls(flat("input_ids", torch.int32), flat("loss_mask", torch.bool), flat("allowed_lo", torch.int32),
                   flat("allowed_hi", torch.int32), flat("allowed_gaps", torch.int32), flat("allow_wait", torch.bool),
                   offsets, meta)

    @classmethod
    def concat(cls, sets: Sequence[SequenceSet]) -> SequenceSet:
        """One set holding the sequences of `sets`, in order; meta lists theirs under "parts"."""
        if len(sets) == 1:
            return sets[0]
        bases = np.cumsum([0, *(len(s.input_ids) for s in sets[:-1])]).tolist()
        offsets = torch.cat([sets[0].offsets[:1], *(s.offsets[1:] + base for s, base in zip(sets, bases))])
        return cls(**{f: torch.cat([getattr(s, f) for s in sets]) for f in cls.FIELDS}, offsets=offsets,
                   meta={"parts": [s.meta for s in sets]})

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({**{f: getattr(self, f) for f in self.FIELDS}, "offsets": self.offsets, "meta": self.meta}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SequenceSet:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return cls(**{f: d[f] for f in cls.FIELDS}, offsets=d["offsets"], meta=d["meta"])

    def batch(self, indices: Sequence[int], pad_id: int, device: torch.device | str = "cpu") -> LMBatch:
        """Sequences `indices`, right-padded to the longest (pad positions are never predicted)."""
        starts = [int(self.offsets[i]) for i in indices]
        ends = [int(self.offsets[i + 1]) for i in indices]
        N = max(e - s for s, e in zip(starts, ends))
        out = {f: torch.zeros(len(indices), N, dtype=torch.bool if f in ("loss_mask", "allow_wait") else torch.long)
               for f in self.FIELDS}
        out["input_ids"].fill_(pad_id)
        for row, (s, e) in enumerate(zip(starts, ends)):
            for f in self.FIELDS:
                out[f][row, :e - s] = getattr(self, f)[s:e]
        return LMBatch(**{f: t.to(device) for f, t in out.items()})

    def batch_fn(self, batch_size: int, pad_id: int, device: torch.device | str = "cpu", buckets: int = 1
                 ) -> Callable[[int, torch.Generator], LMBatch]:
        """``(step, generator) -> LMBatch`` of `batch_size` sequences, each drawn uniformly (with replacement).

        With `buckets` > 1, ``buckets * batch_size`` sequences are drawn, sorted by length and cut into
        `buckets` batches, and one of them, chosen uniformly, is returned: every drawn sequence is equally
        likely to be kept whatever its length, so a sequence's chance to be in a batch is unchanged, but
        the rows of a batch have similar lengths and padding wastes far less compute. The bucket is drawn
        from the step alone, so all ranks take the same length quantile and none waits for a longer one.
        """
        lengths = self.lengths()

        def draw(step: int, generator: torch.Generator) -> LMBatch:
            pool = torch.randint(len(self), (buckets * batch_size,), generator=generator)
            pool = pool[torch.argsort(lengths[pool], stable=True)]
            bucket = int(torch.randint(buckets, (1,), generator=torch.Generator().manual_seed(step)))
            return self.batch(pool[bucket * batch_size:(bucket + 1) * batch_size].tolist(), pad_id, device)

        return draw


@dataclass(frozen=True)
class CacheSpec:
    """Everything the sequences of a split depend on; its digest names the cache file."""

    corpus: Path
    split: str
    protocol: OrchestratorProtocol
    codecs: UnitCodecs
    streamed: bool
    silence_rms: float
    pointer: str = "onset"
    # With accents in the vocabulary: the share of samples replayed without their accent token, so the LM
    # also learns the session that names no voice (sample_accent).
    accent_dropout: float = 0.0

    def key(self) -> str:
        shards = [(p.name, p.stat().st_size) for p in shard_paths(self.corpus, self.split)]
        manifest = self.corpus / "manifest.json"
        parts = {"format": CACHE_FORMAT, "split": self.split, "shards": shards,
                 "manifest": manifest.read_text() if manifest.exists() else "",
                 "codecs": self.codecs.digest(), "vocab": self.protocol.vocab.to_dict(),
                 "protocol": dataclasses.asdict(self.protocol.config),
                 "frames_per_chunk": self.protocol.frames_per_chunk, "streamed": self.streamed,
                 "silence_rms": self.silence_rms, "pointer": self.pointer}
        if self.protocol.vocab.accents:
            parts["accent_dropout"] = self.accent_dropout
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]

    def path(self, cache_dir: Path) -> Path:
        return Path(cache_dir) / f"lm-{self.split}-{self.key()}.pt"


def sample_accent(sample: Sample, vocab: StreamCharVocab, dropout: float) -> str:
    """The accent a sample is replayed with: its voice's (``speaker["voice"]``, e.g. "en-gb-scotland") when the
    vocabulary has accents, except for a `dropout` share of the samples, fixed by their ids, which get none.
    A voice the vocabulary lacks is an error: the targets' phonemes are that accent's."""
    if not vocab.accents or zlib.crc32(sample.sample_id.encode("utf-8")) % 10_000 < dropout * 10_000:
        return ""
    voice = str(sample.speaker.get("voice", ""))
    vocab.accent_id(voice)  # ValueError naming the vocabulary's accents
    return voice


def sample_sequences(sample: Sample, spec: CacheSpec) -> list[TrainingSequence]:
    """The sample's sequences: text given whole, and (``spec.streamed``) streamed word by word."""
    targets = frame_targets(sample, spec.codecs.tokenizer, spec.codecs.codec, spec.protocol, spec.silence_rms,
                            spec.pointer)
    text = sample.transcript.encode("utf-8")
    accent = sample_accent(sample, spec.protocol.vocab, spec.accent_dropout)
    sequences = replay(spec.protocol, text, targets, accent=accent)
    if spec.streamed:
        sequences += replay(spec.protocol, text, targets, [w.encode("utf-8") for w in words_of(sample.transcript)],
                            accent=accent)
    return sequences


def ensure_cache(spec: CacheSpec, cache_dir: Path, progress: bool = True) -> Path:
    """Build the split's sequence cache unless a cache with the same key exists; returns its path."""
    from tqdm import tqdm

    if not shard_paths(spec.corpus, spec.split):
        raise FileNotFoundError(f"no {spec.split} shards under {spec.corpus}: generate that corpus first "
                                f"(`streamchar corpus --out {spec.corpus}`, with --speech-only for an LM-only one)")
    path = spec.path(cache_dir)
    if path.exists():
        return path
    dataset = ShardDataset(spec.corpus, spec.split)
    sequences: list[TrainingSequence] = []
    with torch.inference_mode():
        for i in tqdm(range(len(dataset)), desc=f"lm cache {spec.split}", unit="sample", disable=not progress):
            sequences += sample_sequences(dataset[i], spec)
    meta = {"split": spec.split, "samples": len(dataset), "key": spec.key(), "streamed": spec.streamed,
            "corpus": str(spec.corpus), "codecs": str(spec.codecs.source)}
    data = SequenceSet.from_sequences(sequences, meta)
    data.save(path)
    log.info("lm cache %s: %d samples -> %d sequences, %d tokens (%d predicted) in %s", spec.split, len(dataset),
             len(data), len(data.input_ids), int(data.loss_mask.sum()), path)
    return path
