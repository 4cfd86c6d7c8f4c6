"""One corpus sample, whatever its source (the synthetic generator or a folder of real videos)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PhonemeEvent:
    """A phoneme with its time span in the waveform and the transcript characters it speaks.

    `phoneme` is espeak-ng's mnemonic (e.g. "h", "@", "oU", "_:" for a pause); times are seconds
    from the start of the waveform; [char_start, char_end) are character offsets into the
    transcript (the word or letters the phoneme belongs to; several phonemes share a word's span).
    """

    phoneme: str
    start: float
    end: float
    char_start: int
    char_end: int


@dataclass
class Sample:
    sample_id: str
    split: str  # "train" | "val" | "test" | "real"
    transcript: str
    phonemes: list[PhonemeEvent]
    waveform: np.ndarray  # float32 [S] at 16 kHz, in [-1, 1]
    frames: np.ndarray  # uint8 [F,H,W,3] at 25 fps; S == F * 640
    character: dict[str, Any] = field(default_factory=dict)  # identity parameters (incl. "identity_id")
    speaker: dict[str, Any] = field(default_factory=dict)  # voice parameters (incl. "speaker_id")
    mouth: np.ndarray | None = None  # float32 [F,3] ground-truth mouth (open, wide, round) when known

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])
