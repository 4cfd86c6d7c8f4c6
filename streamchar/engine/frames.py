"""Frame runs: the frames an LM backend decodes in one request, and the rule every token obeys.

The orchestrator protocol (protocol.py) hands a backend a context and a :class:`FrameRun`: decode up
to ``frames`` frames of ``<adv_n>`` + unit, each under the protocol's constraints, stopping early
where the protocol must act between frames (text to insert, nothing left to speak). A
:class:`FrameDecoder` follows one run token by token: which ids are allowed next, when the run is
over. The embedded backend asks it at every step; inside a vLLM server, the logits processor
``services/orchestrator/vllm_constraint.py`` asks it for every row of the batch, so the constraint is
this one piece of code wherever decoding happens.

Standard library only: the vLLM server imports this module without the rest of StreamChar.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

RUN_FORMAT = 1  # first element of FrameRun.to_args; bump when the fields change
VLLM_ARG = "streamchar_run"  # the vllm_xargs key a run travels under


@dataclass(frozen=True)
class FrameRun:
    frames: int  # at most this many frames
    remaining: int  # transcript bytes in the context that the pointer has not passed yet
    refill_below: int  # end after a frame that leaves fewer bytes than this (the protocol inserts text); 0: never
    stall: int  # frames since the pointer last moved, before the run
    max_stall: int  # from this many stalled frames on, advance 0 is not allowed
    max_advance: int
    adv_zero: int  # id of <adv_0>; <adv_n> is adv_zero + n
    unit_first: int  # unit ids are [unit_first, unit_end)
    unit_end: int
    wait_id: int
    eos_id: int  # a vLLM request ends on it once the run is over; never part of a run's tokens

    def __post_init__(self) -> None:
        if self.frames < 1 or self.remaining < 1:
            raise ValueError(f"a frame run needs frames >= 1 and remaining >= 1, got {self.frames}, {self.remaining}")
        if min(self.refill_below, self.stall, self.max_stall - 1, self.max_advance - 1) < 0:
            raise ValueError("refill_below and stall must be >= 0, max_stall and max_advance >= 1")
        if min(self.adv_zero, self.unit_first, self.wait_id, self.eos_id) < 0:
            raise ValueError("token ids must be >= 0")
        if self.unit_end <= self.unit_first:
            raise ValueError("empty unit id range")
        adv = range(self.adv_zero, self.adv_zero + self.max_advance + 1)
        units = range(self.unit_first, self.unit_end)
        for token in (self.wait_id, self.eos_id):
            if token in adv or token in units:
                raise ValueError(f"token {token} is both a control token and an advance or unit")
        if set(adv) & set(units):
            raise ValueError("advance and unit ids overlap")

    def to_args(self) -> list[int]:
        """Flat ints, as vLLM's ``vllm_xargs`` carries them."""
        return [RUN_FORMAT, *astuple(self)]

    @classmethod
    def from_args(cls, args: object) -> FrameRun:
        expected = 1 + len(fields(cls))
        if not isinstance(args, list) or len(args) != expected or not all(type(a) is int for a in args):
            raise ValueError(f"a frame run is a list of {expected} ints, got {args!r}")
        if args[0] != RUN_FORMAT:
            raise ValueError(f"frame run format {args[0]}, this code reads format {RUN_FORMAT}")
        return cls(*args[1:])

    def max_tokens(self) -> int:
        """Tokens a request for this run may generate: two per frame (a run that ends early ends on
        eos), so the context plus the run never outgrows the protocol's max_context."""
        return 2 * self.frames


class FrameDecoder:
    """One run's state, token by token: ``allowed()`` next, ``feed(token)``, until ``done``."""

    def __init__(self, run: FrameRun) -> None:
        self.run = run
        self.remaining = run.remaining
        self.stall = run.stall
        self.frames = 0
        self.tokens: list[int] = []
        self._advance: int | None = None  # the advance of a frame whose unit is still to come

    @property
    def done(self) -> bool:
        if self._advance is not None:
            return False
        r = self.run
        return self.frames >= r.frames or self.remaining == 0 or self.remaining < r.refill_below

    def allowed(self) -> list[int]:
        """Ids allowed next, in the order a greedy tie goes to the first (empty once done)."""
        if self.done:
            return []
        r = self.run
        if self._advance is None:
            lo = 1 if self.stall >= r.max_stall else 0
            hi = min(r.max_advance, self.remaining)
            return list(range(r.adv_zero + lo, r.adv_zero + hi + 1))
        return [*range(r.unit_first, r.unit_end), r.wait_id]

    def feed(self, token: int) -> None:
        if token not in self.allowed():
            raise ValueError(f"token {token} breaks the frame run after {len(self.tokens)} tokens "
                             f"(remaining {self.remaining} bytes, stall {self.stall})")
        self.tokens.append(token)
        if self._advance is None:
            self._advance = token - self.run.adv_zero
            return
        advance, self._advance = self._advance, None
        self.remaining -= advance
        self.stall = 0 if advance else self.stall + 1
        self.frames += 1

    @classmethod
    def replay(cls, run: FrameRun, tokens: list[int]) -> FrameDecoder:
        decoder = cls(run)
        for token in tokens:
            decoder.feed(token)
        return decoder


__all__ = ["FrameDecoder", "FrameRun", "RUN_FORMAT", "VLLM_ARG"]
