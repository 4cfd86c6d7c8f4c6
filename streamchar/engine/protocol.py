"""The orchestrator's token protocol: how transcript text and speech units share one LM context.

The context is a sequence of segments::

    <bos> [<accent_X>] <text> t e x t ... <speak> <adv_2> t e u <adv_0> u ... <text> m o r e ... <speak> ...

The accent token, when the session names one (its voice) and the LM has accents, follows ``<bos>``
and is kept by every slide: it says how the text is pronounced, for the whole session.

Each video frame is ``<adv_n>`` (the progress pointer advances n transcript bytes during the frame,
0 or up to the end of a word: frames.advance_options), then those n bytes again (the *echo*, forced:
the LM never chooses them, see frames.py), then a unit token (or ``<wait>`` for silence). Text enters
the context lazily,
only while the pointer is within `lookahead_bytes` of the end of the text already in context, in
pieces of up to ``2 * lookahead_bytes`` past the pointer. A piece ends where the received text ends,
so a transcript streamed word by word can be cut into different pieces than the same transcript
sent at once; the contexts (and so the LM's choices) agree when text arrives well ahead of speech.
Training replays both (training/pipelines/lm_data.py), and the LM evaluation reports how often
streamed and whole-text units match. Decoding is constrained, which makes the protocol's promises
hard guarantees rather than hopes:

- the pointer never passes text that has not been received (advances are capped by the text in
  context); with no text to speak the frame is *starved* and the caller waits or fills;
- the pointer is monotonic and reaches the end: after `max_stall_frames` frames without an
  advance while text is available, advance 0 is disallowed; ``<eos>`` is not the LM's choice: the
  protocol appends it as soon as the pointer reaches the end of the transcript after EndOfText;
- the context is bounded: past `max_context` tokens it is rebuilt from the text around the
  pointer and the last `keep_frames` frames (at most ``3 * keep_frames`` tokens of them).

Everything here is deterministic given the state and the LM, so any replica that reloads the state
from the store continues the session identically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from streamchar.engine.frames import NUM_BYTES, FrameDecoder, FrameRun, frame_tokens
from streamchar.models.vocab import StreamCharVocab


@dataclass(frozen=True)
class ProtocolConfig:
    lookahead_bytes: int = 24
    max_context: int = 1024
    # Frames a slide keeps (0.64 s). Fewer carry less of the LM's own pace into the rebuilt context: at 96, a
    # long stream slowed down slide after slide (docs/eval/teacher/orchestrator.md, "keep_frames").
    keep_frames: int = 16
    keep_text_behind: int = 32
    max_stall_frames: int = 40  # 1.6 s: a long word's frames after its onset advance (training/pipelines/lm_data.py)

    def __post_init__(self) -> None:
        if self.lookahead_bytes < 1 or self.max_stall_frames < 1:
            raise ValueError("lookahead_bytes and max_stall_frames must be >= 1")
        reserve = 5 + self.keep_text_behind + 2 * self.lookahead_bytes + self.kept_frame_tokens
        if reserve + 64 > self.max_context:
            raise ValueError(f"max_context {self.max_context} too small for the kept history ({reserve})")

    @property
    def kept_frame_tokens(self) -> int:
        """Tokens of frames a slide keeps at most: `keep_frames` frames with 1 echo byte each on average."""
        return 3 * self.keep_frames


@dataclass
class OrchState:
    """Per-session orchestrator state; persisted in the session store after every chunk."""

    text: bytes = b""
    text_ended: bool = False
    pointer: int = 0
    context: list[int] = field(default_factory=list)
    context_text_end: int = 0
    stall: int = 0
    next_chunk: int = 0
    done: bool = False
    accent: str = ""  # the session's voice: one of the vocabulary's accents, or "" for the LM's default

    @property
    def pointer_chars(self) -> int:
        return utf8_chars(self.text[: self.pointer])

    @property
    def text_chars(self) -> int:
        return utf8_chars(self.text)


def utf8_chars(data: bytes) -> int:
    """Characters in a UTF-8 byte string (a trailing partial character does not count)."""
    return sum(1 for b in data if b & 0xC0 != 0x80) - _partial_tail(data)


def _partial_tail(data: bytes) -> int:
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 != 0x80:
            need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4
            return 1 if need > back else 0
    return 0


@dataclass(frozen=True)
class ChunkPlan:
    """The outcome of one chunk: units (one per frame; num_units = silence) and pointer range."""

    units: list[int]
    pointer_start: int
    pointer_end: int
    fill: bool
    final: bool


class Starved(Exception):
    """The chunk needs transcript text that has not arrived yet."""


# step(context, allowed_ids) -> chosen id: the LM's constrained greedy choice of one token.
StepFn = Callable[[list[int], list[int]], int]


@dataclass(frozen=True)
class DecodeRequest:
    """Decode `run` after `context`: the backend returns the run's tokens (at least one whole frame)."""

    context: list[int]
    run: FrameRun


# Yields DecodeRequests, is sent each one's tokens, returns the chunk's plan and next state.
ChunkDecoding = Generator[DecodeRequest, list[int], tuple[ChunkPlan, OrchState]]


class BackendBrokeRun(Exception):
    """A backend returned tokens that the frame run does not allow (a misconfigured server)."""


def decode_with_step(request: DecodeRequest, step: StepFn) -> list[int]:
    """A run decoded one `step` call per token the LM chooses (the embedded backend, training replays);
    echo bytes are appended without asking it."""
    decoder = FrameDecoder(request.run)
    context = list(request.context)
    while not decoder.done:
        token = decoder.allowed()[0] if decoder.forced else step(context, decoder.allowed())
        decoder.feed(token)
        context.append(token)
    return decoder.tokens


class OrchestratorProtocol:
    def __init__(self, vocab: StreamCharVocab, frames_per_chunk: int, config: ProtocolConfig) -> None:
        self.vocab = vocab
        self.frames_per_chunk = frames_per_chunk
        self.config = config

    def start_context(self, accent: str = "") -> list[int]:
        """``<bos>``, then the accent's token when there is one (ValueError for an accent the vocabulary
        lacks; :meth:`check_accent`)."""
        return [self.vocab.bos_id, self.vocab.accent_id(accent)] if accent else [self.vocab.bos_id]

    def check_accent(self, accent: str) -> str:
        """The accent a session's `voice` selects: "" stays the LM's default; a name must be one of the
        vocabulary's accents (ValueError naming them otherwise). An LM without accents (older
        checkpoints) speaks its one accent whatever the voice, so any voice selects ""."""
        if not accent or not self.vocab.accents:
            return ""
        self.vocab.accent_id(accent)
        return accent

    def plan_chunk(self, state: OrchState, step: StepFn, allow_fill: bool) -> tuple[ChunkPlan, OrchState]:
        """:meth:`decode_chunk` driven by `step`, one call per token."""
        decoding = self.decode_chunk(state, allow_fill)
        try:
            request = next(decoding)
            while True:
                request = decoding.send(decode_with_step(request, step))
        except StopIteration as done:
            return done.value

    def decode_chunk(self, state: OrchState, allow_fill: bool) -> ChunkDecoding:
        """Decode one chunk from `state`; returns the plan and the next state (`state` is untouched).

        The LM's frames are asked of the caller as :class:`DecodeRequest` runs, so a backend can
        decode a run in one request (vLLM) or token by token (:meth:`plan_chunk`); the chunk comes
        out the same. Raises Starved when a frame has no text to speak and `allow_fill` is False;
        with `allow_fill` such frames become silent filler frames that do not move the pointer.
        """
        s = dataclasses.replace(state, context=list(state.context))
        if not s.context:
            s.context = self.start_context(state.accent)
        start = s.pointer_chars
        units: list[int] = []
        fill = False
        while len(units) < self.frames_per_chunk:
            if s.done:
                units.append(self.vocab.num_units)
                continue
            self._insert_text(s)
            remaining = s.context_text_end - s.pointer
            if remaining == 0 and s.text_ended and s.context_text_end == len(s.text):
                self._slide(s, 1)
                s.context.append(self.vocab.eos_id)
                s.done = True
                units.append(self.vocab.num_units)
                continue
            if remaining == 0:
                if not allow_fill:
                    raise Starved()
                fill = True
                self._slide(s, 2)
                s.context += [self.vocab.adv_id(0), self.vocab.wait_id]
                units.append(self.vocab.num_units)
                continue
            self._slide(s, frame_tokens(1, remaining, self.vocab.max_advance))
            run = self._run(s, self.frames_per_chunk - len(units))
            tokens = yield DecodeRequest(list(s.context), run)
            try:
                decoder = FrameDecoder.replay(run, tokens)
            except ValueError as e:
                raise BackendBrokeRun(str(e)) from None
            if not decoder.frames or sum(map(len, decoder.frame_tokens)) != len(tokens):
                raise BackendBrokeRun(f"a backend returned {len(tokens)} tokens, not whole frames")
            for frame in decoder.frame_tokens:
                s.context += frame
                s.pointer += self.vocab.advance_of(frame[0])
                units.append(self.vocab.num_units if frame[-1] == self.vocab.wait_id
                             else self.vocab.unit_of(frame[-1]))
            s.stall = decoder.stall
        s.next_chunk += 1
        plan = ChunkPlan(units, start, s.pointer_chars, fill, s.done)
        return plan, s

    def _run(self, s: OrchState, frames_left: int) -> FrameRun:
        """The frames that follow without the protocol acting between them: no text to insert, no
        slide (the context has room for the frames and their echo), none past the chunk."""
        v, c = self.vocab, self.config
        text = s.text[s.pointer:s.context_text_end]
        room = c.max_context - len(s.context)
        frames = frames_left
        while frames > 1 and frame_tokens(frames, len(text), v.max_advance) > room:
            frames -= 1
        return FrameRun(
            frames=frames, refill_below=c.lookahead_bytes if s.context_text_end < len(s.text) else 0,
            stall=s.stall, max_stall=c.max_stall_frames, max_advance=v.max_advance, adv_zero=v.adv_id(0),
            unit_first=v.unit_ids().start, unit_end=v.unit_ids().stop, wait_id=v.wait_id, eos_id=v.eos_id,
            text=text)

    def _insert_text(self, s: OrchState) -> None:
        if s.context_text_end >= len(s.text) or s.context_text_end - s.pointer >= self.config.lookahead_bytes:
            return
        end = min(len(s.text), s.pointer + 2 * self.config.lookahead_bytes)
        piece = s.text[s.context_text_end:end]
        self._slide(s, len(piece) + 2)
        s.context += [self.vocab.text_id, *piece, self.vocab.speak_id]
        s.context_text_end = end

    def _slide(self, s: OrchState, extra: int) -> None:
        """Rebuild the context around the pointer when `extra` more tokens would not fit."""
        if len(s.context) + extra <= self.config.max_context:
            return
        frames = _last_frames(s.context, self.vocab, self.config.keep_frames, self.config.kept_frame_tokens)
        behind = max(0, s.pointer - self.config.keep_text_behind)
        s.context = [*self.start_context(s.accent), self.vocab.text_id,
                     *s.text[behind:s.context_text_end],
                     self.vocab.speak_id, *frames]


def _last_frames(context: list[int], vocab: StreamCharVocab, n: int, max_tokens: int) -> list[int]:
    """The last frames of the context (adv, echo bytes, unit|wait), in order: at most n frames and
    `max_tokens` tokens."""
    out: list[int] = []
    frames, i = 0, len(context) - 1
    while i > 0 and frames < n:
        start = _frame_start(context, vocab, i)
        if start is None:
            i -= 1
            continue
        if len(out) + i + 1 - start > max_tokens:
            break
        out[:0] = context[start:i + 1]
        frames += 1
        i = start - 1
    return out


def _frame_start(context: list[int], vocab: StreamCharVocab, end: int) -> int | None:
    """Where the frame that ends at `end` starts, or None if no frame ends there."""
    if not (vocab.is_unit(context[end]) or context[end] == vocab.wait_id):
        return None
    j = end - 1
    while j >= 0 and context[j] < NUM_BYTES and end - 1 - j < vocab.max_advance:
        j -= 1
    if j >= 0 and vocab.is_adv(context[j]) and vocab.advance_of(context[j]) == end - 1 - j:
        return j
    return None
