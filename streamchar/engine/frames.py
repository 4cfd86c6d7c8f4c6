"""Frame runs: the frames an LM backend decodes in one request, and the rule every token obeys.

The orchestrator protocol (protocol.py) hands a backend a context and a :class:`FrameRun`: decode up
to ``frames`` frames, each under the protocol's constraints, stopping early where the protocol must
act between frames (text to insert, nothing left to speak). A frame is ``<adv_n>``, then the n
transcript bytes the pointer passes (the *echo*: forced, the LM never chooses them), then a unit
token or ``<wait>``. The echo puts the word being spoken next to the unit decisions, where a small LM
reads it, instead of somewhere back in the text segment at an offset the LM would have to count.

Advances end at word ends (:func:`advance_options`): a frame may stay (``<adv_0>``) or pass the text up to
the end of one of the next words, not stop inside one. So the LM decides *when* the next word starts and
the protocol knows how many bytes that is; counting bytes to the next word was the small LM's commonest
mistake when any count was allowed.

A :class:`FrameDecoder` follows one run token by token: which ids are allowed next (one, when the
next token is forced), when the run is over. The embedded backend asks it at every step; inside a
vLLM server, the logits processor ``services/orchestrator/vllm_constraint.py`` asks it for every row
of the batch, so the constraint is this one piece of code wherever decoding happens.

Byte tokens are ids 0..255 (streamchar/models/vocab.py). Standard library only: the vLLM server
imports this module without the rest of StreamChar.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

RUN_FORMAT = 3  # first element of FrameRun.to_args; bump when fields or rules change (2: echo, 3: word ends)
VLLM_ARG = "streamchar_run"  # the vllm_xargs key a run travels under
NUM_BYTES = 256  # byte token b has id b


@dataclass(frozen=True)
class FrameRun:
    frames: int  # at most this many frames
    refill_below: int  # end after a frame that leaves fewer bytes than this (the protocol inserts text); 0: never
    stall: int  # frames since the pointer last moved, before the run
    max_stall: int  # from this many stalled frames on, advance 0 is not allowed
    max_advance: int
    adv_zero: int  # id of <adv_0>; <adv_n> is adv_zero + n
    unit_first: int  # unit ids are [unit_first, unit_end)
    unit_end: int
    wait_id: int
    eos_id: int  # a vLLM request ends on it once the run is over; never part of a run's tokens
    text: bytes  # the transcript bytes in the context that the pointer has not passed yet: echoed as passed

    def __post_init__(self) -> None:
        if self.frames < 1 or not self.text:
            raise ValueError(f"a frame run needs frames >= 1 and text to speak, got {self.frames} frames, "
                             f"{len(self.text)} bytes")
        if min(self.refill_below, self.stall, self.max_stall - 1, self.max_advance - 1) < 0:
            raise ValueError("refill_below and stall must be >= 0, max_stall and max_advance >= 1")
        if min(self.adv_zero, self.unit_first, self.wait_id, self.eos_id) < NUM_BYTES:
            raise ValueError(f"control, advance and unit ids must be >= {NUM_BYTES} (ids below are bytes)")
        if self.unit_end <= self.unit_first:
            raise ValueError("empty unit id range")
        adv = range(self.adv_zero, self.adv_zero + self.max_advance + 1)
        units = range(self.unit_first, self.unit_end)
        for token in (self.wait_id, self.eos_id):
            if token in adv or token in units:
                raise ValueError(f"token {token} is both a control token and an advance or unit")
        if set(adv) & set(units):
            raise ValueError("advance and unit ids overlap")

    @property
    def remaining(self) -> int:
        return len(self.text)

    def to_args(self) -> list[int]:
        """Flat ints, as vLLM's ``vllm_xargs`` carries them: the format, the int fields, the text's bytes."""
        return [RUN_FORMAT, *(getattr(self, f.name) for f in fields(self) if f.name != "text"), *self.text]

    @classmethod
    def from_args(cls, args: object) -> FrameRun:
        head = len(fields(cls))  # the format and the int fields
        if not isinstance(args, list) or len(args) <= head or not all(type(a) is int for a in args):
            raise ValueError(f"a frame run is a list of more than {head} ints, got {args!r}")
        if args[0] != RUN_FORMAT:
            raise ValueError(f"frame run format {args[0]}, this code reads format {RUN_FORMAT}")
        if not all(0 <= b < NUM_BYTES for b in args[head:]):
            raise ValueError("a frame run's text must be bytes 0..255")
        return cls(*args[1:head], text=bytes(args[head:]))

    def max_tokens(self) -> int:
        """Tokens a request for this run may generate: two per frame plus the echoed bytes (a run that
        ends early ends on eos), so the context plus the run never outgrows the protocol's max_context."""
        return frame_tokens(self.frames, self.remaining, self.max_advance)


def is_word_byte(b: int) -> bool:
    """A byte of a word: an ASCII letter or digit, or any byte of a multi-byte UTF-8 character."""
    return b >= 0x80 or chr(b).isalnum()


def advance_options(text: bytes, lo: int, max_advance: int) -> list[int]:
    """The advances a frame may take over `text` (the bytes in context the pointer has not passed), ascending.

    0 when `lo` is 0 (the frame stays); every n <= min(max_advance, len(text)) where a word ends: byte
    n - 1 belongs to a word and byte n does not or is the end of `text` (the text in context ends at a
    received word's end, or at the transcript's). Where no word ends within reach (a word longer than
    max_advance, or only punctuation and spaces left), the furthest reach: the advance is then cut, and
    the frames after it finish the word.
    """
    hi = min(max_advance, len(text))
    ends = [n for n in range(max(lo, 1), hi + 1)
            if is_word_byte(text[n - 1]) and (n == len(text) or not is_word_byte(text[n]))]
    if not ends and hi >= max(lo, 1):
        ends = [hi]
    return ([0] if lo == 0 else []) + ends


def frame_tokens(frames: int, remaining: int, max_advance: int) -> int:
    """The most tokens `frames` frames can take with `remaining` bytes left to echo."""
    return 2 * frames + min(remaining, frames * max_advance)


class FrameDecoder:
    """One run's state, token by token: ``allowed()`` next, ``feed(token)``, until ``done``."""

    def __init__(self, run: FrameRun) -> None:
        self.run = run
        self.passed = 0  # bytes of run.text the pointer passed in finished frames
        self.stall = run.stall
        self.tokens: list[int] = []
        self.frame_tokens: list[list[int]] = []  # the finished frames: adv, echo bytes, unit
        self._frame: list[int] = []  # the frame being decoded
        self._echo: list[int] = []  # bytes of that frame still to echo

    @property
    def remaining(self) -> int:
        return self.run.remaining - self.passed

    @property
    def frames(self) -> int:
        return len(self.frame_tokens)

    @property
    def forced(self) -> bool:
        """The next token is an echo byte (one allowed id, not the LM's choice)."""
        return bool(self._echo)

    @property
    def done(self) -> bool:
        if self._frame:
            return False
        r = self.run
        return self.frames >= r.frames or self.remaining == 0 or self.remaining < r.refill_below

    def allowed(self) -> list[int]:
        """Ids allowed next, in the order a greedy tie goes to the first (empty once done)."""
        if self.done:
            return []
        r = self.run
        if self._echo:
            return [self._echo[0]]
        if not self._frame:
            lo = 1 if self.stall >= r.max_stall else 0
            return [r.adv_zero + n for n in advance_options(r.text[self.passed:], lo, r.max_advance)]
        return [*range(r.unit_first, r.unit_end), r.wait_id]

    def feed(self, token: int) -> None:
        if token not in self.allowed():
            raise ValueError(f"token {token} breaks the frame run after {len(self.tokens)} tokens "
                             f"(remaining {self.remaining} bytes, stall {self.stall})")
        self.tokens.append(token)
        self._frame.append(token)
        if len(self._frame) == 1:
            advance = token - self.run.adv_zero
            self._echo = list(self.run.text[self.passed:self.passed + advance])
        elif self._echo:
            self._echo.pop(0)
        else:
            advance = len(self._frame) - 2
            self.passed += advance
            self.stall = 0 if advance else self.stall + 1
            self.frame_tokens.append(self._frame)
            self._frame = []

    @classmethod
    def replay(cls, run: FrameRun, tokens: list[int]) -> FrameDecoder:
        decoder = cls(run)
        for token in tokens:
            decoder.feed(token)
        return decoder


__all__ = ["FrameDecoder", "FrameRun", "NUM_BYTES", "RUN_FORMAT", "VLLM_ARG", "advance_options", "frame_tokens",
           "is_word_byte"]
