"""The time base shared by every component: video frames, audio samples, chunks.

Legend used across the package: B batch, F video frames, N tokens, D width, C channels,
H/W height/width, S audio samples, M mel frames (``mel_per_frame`` per video frame).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TimeBase:
    fps: int = 25
    sample_rate: int = 16_000
    frames_per_chunk: int = 8
    motion_frames: int = 2
    mel_per_frame: int = 4

    def __post_init__(self) -> None:
        if self.sample_rate % self.fps:
            raise ValueError(f"sample_rate {self.sample_rate} is not a multiple of fps {self.fps}")
        if self.samples_per_frame % self.mel_per_frame:
            raise ValueError("samples per frame must be a multiple of mel_per_frame")
        if not 0 < self.motion_frames <= self.frames_per_chunk:
            raise ValueError("motion_frames must be in 1..frames_per_chunk")

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate // self.fps

    @property
    def samples_per_chunk(self) -> int:
        return self.samples_per_frame * self.frames_per_chunk

    @property
    def mel_hop(self) -> int:
        return self.samples_per_frame // self.mel_per_frame

    @property
    def chunk_seconds(self) -> float:
        return self.frames_per_chunk / self.fps

    def chunk_pts_us(self, chunk_index: int) -> int:
        """Presentation time of a chunk's first frame, in microseconds."""
        return chunk_index * self.frames_per_chunk * 1_000_000 // self.fps
