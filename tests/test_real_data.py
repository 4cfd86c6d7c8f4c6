"""The real-data loader reads clips encoded to MP4 from our own renderer into the corpus schema."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamchar.media.mux import FragmentedMP4Muxer, decode_mp4
from streamchar.timebase import TimeBase
from training.data.corpus import CorpusConfig, SampleGenerator
from training.data.real import VideoFolderDataset, load_clip

TB = TimeBase()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255**2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real")
    generator = SampleGenerator(CorpusConfig(seed=5))
    originals = []
    for i in range(2):
        s = generator.generate("val", i)
        muxer = FragmentedMP4Muxer(64, 64, TB.fps, TB.sample_rate)
        data = [muxer.init_segment()]
        for f in range(0, s.num_frames, TB.frames_per_chunk):
            frames = s.frames[f:f + TB.frames_per_chunk]
            data.append(muxer.add_chunk(frames, s.waveform[f * 640:(f + len(frames)) * 640]))
        data.append(muxer.close())
        (folder / f"clip{i}.mp4").write_bytes(b"".join(data))
        (folder / f"clip{i}.txt").write_text(s.transcript + "\n")
        originals.append(s)
    (folder / "notes.md").write_text("not a video")
    return folder, originals


def test_clips_load_with_the_corpus_schema(clips):
    folder, originals = clips
    ds = VideoFolderDataset(folder)
    assert len(ds) == 2
    for i, (loaded, original) in enumerate(zip(ds, originals)):
        assert loaded.transcript == original.transcript and loaded.split == "real"
        assert loaded.num_frames == original.num_frames
        assert loaded.waveform.shape == (loaded.num_frames * TB.samples_per_frame,)
        # exactly the decoder's frames, in order (a one-frame slip would not match)...
        decoded, _, _ = decode_mp4((folder / f"clip{i}.mp4").read_bytes())
        np.testing.assert_array_equal(loaded.frames, decoded)
        # ...which are the rendered frames through H.264
        assert _psnr(loaded.frames, original.frames) > 27
        # audio survives AAC: strongly correlated with what was encoded, and not shifted
        a, b = loaded.waveform, original.waveform
        assert np.corrcoef(a, b)[0, 1] > 0.9


def test_clip_without_transcript_is_a_clear_error(clips, tmp_path):
    folder, _ = clips
    lonely = tmp_path / "lonely.mp4"
    lonely.write_bytes((folder / "clip0.mp4").read_bytes())
    with pytest.raises(FileNotFoundError, match="no transcript"):
        load_clip(lonely)
