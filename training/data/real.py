"""Real data with the corpus schema: a folder of videos with transcripts (for GPU-scale training).

Layout: ``clip.mp4`` (any container/codecs ffmpeg decodes) + ``clip.txt`` (its transcript, UTF-8)
+ optionally ``clip.json`` (a phoneme alignment: a list of PhonemeEvent fields). Video is resampled
to 25 fps by nearest earlier frame, centre-cropped and resized; audio is resampled to 16 kHz mono;
both are cut to the same whole number of frames.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from streamchar.timebase import TimeBase
from training.data.schema import PhonemeEvent, Sample

log = logging.getLogger(__name__)
TB = TimeBase()
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")


def _square(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = Image.fromarray(frame[top:top + side, left:left + side])
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS) if side != size else img)


def load_clip(path: Path, size: int = 64) -> Sample:
    path = Path(path)
    text_path = path.with_suffix(".txt")
    if not text_path.exists():
        raise FileNotFoundError(f"{path.name} has no transcript {text_path.name}")
    transcript = text_path.read_text(encoding="utf-8").strip()
    timed: list[tuple[float, np.ndarray]] = []
    pcm: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.video or not container.streams.audio:
            raise ValueError(f"{path.name} needs one video and one audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=TB.sample_rate)
        for frame in container.decode(container.streams.video[0], container.streams.audio[0]):
            if isinstance(frame, av.VideoFrame):
                timed.append((float(frame.time or 0.0), frame.to_ndarray(format="rgb24")))
            else:
                pcm += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        pcm += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    waveform = np.concatenate(pcm).astype(np.float32) if pcm else np.zeros(0, np.float32)
    if not timed:
        raise ValueError(f"{path.name} has no decodable video frames")
    times = np.array([t for t, _ in timed])
    start = times[0]
    duration = min(times[-1] - start + 1 / TB.fps, len(waveform) / TB.sample_rate)
    num_frames = int(round(duration * TB.fps + 1e-6))
    if num_frames < 1:
        raise ValueError(f"{path.name} is shorter than one frame")
    # nearest earlier source frame for each 25 fps output frame (a small tolerance absorbs pts rounding)
    picks = np.searchsorted(times - start, np.arange(num_frames) / TB.fps + 1e-3, side="right") - 1
    frames = np.stack([_square(timed[max(0, i)][1], size) for i in picks])
    waveform = waveform[: num_frames * TB.samples_per_frame]
    waveform = np.pad(waveform, (0, num_frames * TB.samples_per_frame - len(waveform)))
    alignment = path.with_suffix(".json")
    phonemes = [PhonemeEvent(**p) for p in json.loads(alignment.read_text())] if alignment.exists() else []
    return Sample(sample_id=path.stem, split="real", transcript=transcript, phonemes=phonemes,
                  waveform=np.clip(waveform, -1, 1), frames=frames, character={"source": path.name},
                  speaker={"source": path.name})


class VideoFolderDataset(Dataset):
    """Every video with a transcript in a folder, as corpus samples."""

    def __init__(self, folder: Path, size: int = 64) -> None:
        self.folder, self.size = Path(folder), size
        self.paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not self.paths:
            raise FileNotFoundError(f"no videos in {folder}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Sample:
        return load_clip(self.paths[i], self.size)

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))
