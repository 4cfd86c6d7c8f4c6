"""Tests for streamchar.media.mux: live fragmented MP4 with real libx264/AAC encoders (no mocks)."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest

from streamchar.media.mux import FragmentedMP4Muxer, decode_mp4

W = H = 64
FPS = 25
SR = 16_000
F = 8  # frames per chunk
S = F * SR // FPS  # 5120 samples per chunk
N_CHUNKS = 7  # keyframe interval 25: keyframes at frames 0, 25, 50; chunks 1, 2, 4, 5 have none
TONE_HZ = 440.0

_CONTAINERS = {
    b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"moof", b"traf", b"edts", b"dinf"
}


# ------------------------------------------------------------------------ ISO BMFF parsing


def boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """Boxes directly in ``data[start:end]`` as ``(type, offset, size)``; asserts they tile it."""
    end = len(data) if end is None else end
    out, pos = [], start
    while pos < end:
        assert end - pos >= 8, f"truncated box header at {pos}"
        size, box_type = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:
            size = end - pos
        assert size >= 8 and pos + size <= end, f"bad size {size} for {box_type!r} at {pos}"
        out.append((box_type, pos, size))
        pos += size
    assert pos == end
    return out


def find(data: bytes, path: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """``(payload_start, payload_end)`` of every box at ``path``, e.g. ``"moov/trak/tkhd"``."""
    head, _, rest = path.partition("/")
    hits = []
    for box_type, pos, size in boxes(data, start, end):
        if box_type != head.encode():
            continue
        if not rest:
            hits.append((pos + 8, pos + size))
        else:
            assert box_type in _CONTAINERS, box_type
            hits.extend(find(data, rest, pos + 8, pos + size))
    return hits


def full_box_payload(data: bytes, span: tuple[int, int]) -> tuple[int, int, bytes]:
    version_flags = struct.unpack(">I", data[span[0] : span[0] + 4])[0]
    return version_flags >> 24, version_flags & 0xFFFFFF, data[span[0] + 4 : span[1]]


def trafs(fragment: bytes) -> dict[int, dict[str, object]]:
    """Per track id: base decode time, sample count and sample flags of a single-moof fragment."""
    out: dict[int, dict[str, object]] = {}
    for start, end in find(fragment, "moof/traf"):
        _, _, tfhd = full_box_payload(fragment, find(fragment, "tfhd", start, end)[0])
        (track_id,) = struct.unpack(">I", tfhd[:4])
        version, _, tfdt = full_box_payload(fragment, find(fragment, "tfdt", start, end)[0])
        base = struct.unpack(">Q" if version == 1 else ">I", tfdt)[0]
        _, trun_flags, trun = full_box_payload(fragment, find(fragment, "trun", start, end)[0])
        assert trun_flags == 0x701  # data offset + per-sample duration/size/flags
        (count,) = struct.unpack(">I", trun[:4])
        entries = [struct.unpack(">III", trun[8 + 12 * i : 20 + 12 * i]) for i in range(count)]
        out[track_id] = {"base": base, "count": count, "flags": [e[2] for e in entries]}
    return out


# ---------------------------------------------------------------------------------- inputs


def gray_frames(first_index: int, n: int = F, width: int = W, height: int = H) -> np.ndarray:
    """uint8 [n, height, width, 3]: frame i is solid gray at level 16 + 4 * i."""
    levels = 16 + 4 * (first_index + np.arange(n))
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).astype(np.uint8)


def tone(first_sample: int, n: int = S) -> np.ndarray:
    """float32 [n]: continuous 440 Hz sine at amplitude 0.5."""
    t = (first_sample + np.arange(n)) / SR
    return (0.5 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


@pytest.fixture(scope="module")
def session() -> dict[str, object]:
    mux = FragmentedMP4Muxer(W, H, fps=FPS, sample_rate=SR, keyframe_interval_frames=25)
    init = mux.init_segment()
    chunks = [mux.add_chunk(gray_frames(n * F), tone(n * S)) for n in range(N_CHUNKS)]
    tail = mux.close()
    data = init + b"".join(chunks) + tail
    return {"mux": mux, "init": init, "chunks": chunks, "tail": tail, "file": data}


# ----------------------------------------------------------------------------------- tests


def test_init_segment_is_ftyp_moov_without_fragments(session: dict) -> None:
    init = session["init"]
    types = [t for t, _, _ in boxes(init)]
    assert types == [b"ftyp", b"moov"]
    assert b"moof" not in init
    assert len(find(init, "moov/trak")) == 2 and len(find(init, "moov/mvex/trex")) == 2
    # only the audio track has an edit list (it skips the AAC encoder priming)
    (elst,) = find(init, "moov/trak/edts/elst")
    _, _, payload = full_box_payload(init, elst)
    assert struct.unpack(">IIiI", payload) == (1, 0, 1024, 0x00010000)
    # available before any chunk and stable
    assert FragmentedMP4Muxer(W, H).init_segment()[:8] == init[:8]
    assert session["mux"].init_segment() == init


def test_one_fragment_per_chunk_with_exact_frames_and_timing(session: dict) -> None:
    init = session["init"]
    _, _, payload = full_box_payload(init, find(init, "moov/trak/mdia/mdhd")[0])  # track 1 = video
    video_timescale = struct.unpack(">I", payload[8:12])[0]

    sequence_numbers, keyframe_chunks = [], []
    for n, chunk in enumerate(session["chunks"]):
        assert [t for t, _, _ in boxes(chunk)] == [b"moof", b"mdat"], f"chunk {n}"
        _, _, mfhd = full_box_payload(chunk, find(chunk, "moof/mfhd")[0])
        sequence_numbers.append(struct.unpack(">I", mfhd)[0])
        runs = trafs(chunk)
        assert runs[1]["count"] == F
        # chunk n's video starts at n * F / fps exactly
        assert runs[1]["base"] == n * F * video_timescale // FPS
        # sample_is_non_sync_sample (0x10000) clear = keyframe
        keyframe_chunks.append(any(not flags & 0x00010000 for flags in runs[1]["flags"]))
        assert 2 in runs and runs[2]["count"] >= 1  # AAC produced so far travels with the chunk
    assert sequence_numbers == list(range(1, N_CHUNKS + 1))
    # keyframes are frames 0, 25 and 50: in chunks 0, 3 and 6; chunks 1, 2, 4, 5 have none
    assert keyframe_chunks == [True, False, False, True, False, False, True]

    tail = session["tail"]
    assert [t for t, _, _ in boxes(tail)] == [b"moof", b"mdat"]
    assert set(trafs(tail)) == {2}


def test_concatenation_decodes_with_matching_durations(session: dict) -> None:
    data: bytes = session["file"]
    boxes(data)  # the concatenation tiles into whole boxes: nothing duplicated or cut
    video, audio, info = decode_mp4(data)
    assert info["video_streams"] == 1 and info["audio_streams"] == 1
    assert video.shape == (N_CHUNKS * F, H, W, 3) and video.dtype == np.uint8
    assert info["video_frames"] == N_CHUNKS * F
    assert info["video_start_s"] == 0.0
    assert info["video_duration_s"] == pytest.approx(N_CHUNKS * F / FPS)
    assert audio.dtype == np.float32
    assert abs(info["audio_duration_s"] - N_CHUNKS * F / FPS) <= 1 / FPS


def test_content_survives(session: dict) -> None:
    video, audio, _ = decode_mp4(session["file"])
    brightness = video.reshape(video.shape[0], -1).mean(axis=1)
    expected = 16 + 4 * np.arange(N_CHUNKS * F)
    assert np.all(np.diff(brightness) > 0), brightness
    assert np.abs(brightness - expected).max() < 3

    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    peak_hz = np.argmax(spectrum) * SR / audio.size
    assert abs(peak_hz - TONE_HZ) < 2 * SR / audio.size
    # The AAC priming is removed and audio is sample-aligned with the input (no A/V offset).
    reference = tone(0, audio.size)
    middle = slice(SR // 10, audio.size - SR // 10)
    assert np.corrcoef(audio[middle], reference[middle])[0, 1] > 0.95


def test_first_chunk_plays_on_its_own(session: dict) -> None:
    video, _, info = decode_mp4(session["init"] + session["chunks"][0])
    assert video.shape[0] == F == info["video_frames"]
    # a later, keyframe-free chunk still decodes in sequence with its predecessors
    video, _, _ = decode_mp4(session["init"] + b"".join(session["chunks"][:2]))
    assert video.shape[0] == 2 * F


def test_mime_type_matches_avcc(session: dict) -> None:
    mux, init = session["mux"], session["init"]
    match = re.fullmatch(r'video/mp4; codecs="avc1\.([0-9a-f]{6}),mp4a\.40\.2"', mux.mime_type)
    assert match, mux.mime_type
    stsd = find(init, "moov/trak/mdia/minf/stbl/stsd")[0]
    entries = stsd[0] + 8  # full box header + entry_count
    assert init[entries + 4 : entries + 8] == b"avc1"
    avcc_type_at = init.index(b"avcC", entries)
    avcc = init[avcc_type_at + 4 :]
    profile, compat, level = avcc[1], avcc[2], avcc[3]
    assert match.group(1) == f"{profile:02x}{compat:02x}{level:02x}"
    # the record's profile/level bytes are the SPS's own (profile_idc, constraint flags, level_idc)
    assert avcc[4] & 0x03 == 3  # 4-byte NAL lengths, as the samples are written
    assert avcc[5] & 0x1F >= 1
    sps_len = struct.unpack(">H", avcc[6:8])[0]
    sps = avcc[8 : 8 + sps_len]
    assert sps[0] & 0x1F == 7 and tuple(sps[1:4]) == (profile, compat, level)
    assert profile == 100  # High profile from libx264 preset veryfast


def test_other_sizes_and_chunk_lengths() -> None:
    mux = FragmentedMP4Muxer(66, 34, keyframe_interval_frames=4)
    out = [mux.init_segment()]
    for n in range(3):
        out.append(mux.add_chunk(gray_frames(5 * n, 5, 66, 34), tone(5 * n * 640, 5 * 640)))
    out.append(mux.close())
    video, audio, info = decode_mp4(b"".join(out))
    assert video.shape == (15, 34, 66, 3)
    assert abs(info["audio_duration_s"] - 0.6) <= 1 / FPS


@pytest.mark.parametrize(
    ("frames", "pcm", "message"),
    [
        (np.zeros((F, H, W, 3), np.float32), np.zeros(S, np.float32), "uint8"),
        (np.zeros((F, H, W), np.uint8), np.zeros(S, np.float32), "shape"),
        (np.zeros((F, H, W, 4), np.uint8), np.zeros(S, np.float32), "shape"),
        (np.zeros((F, H + 2, W, 3), np.uint8), np.zeros(S, np.float32), "shape"),
        (np.zeros((0, H, W, 3), np.uint8), np.zeros(0, np.float32), "shape"),
        (np.zeros((F, H, W, 3), np.uint8), np.zeros(S, np.float64), "float32"),
        (np.zeros((F, H, W, 3), np.uint8), np.zeros(S - 1, np.float32), "5120"),
        (np.zeros((F, H, W, 3), np.uint8), np.zeros((1, S), np.float32), "5120"),
        (np.zeros((F, H, W, 3), np.uint8), np.full(S, np.nan, np.float32), "NaN"),
        ([[0]], np.zeros(S, np.float32), "numpy"),
    ],
)
def test_bad_chunk_inputs_raise(frames: object, pcm: object, message: str) -> None:
    mux = FragmentedMP4Muxer(W, H)
    with pytest.raises(ValueError, match=message):
        mux.add_chunk(frames, pcm)  # type: ignore[arg-type]
    # a rejected chunk consumes nothing: the session goes on normally
    assert boxes(mux.add_chunk(gray_frames(0), tone(0)))[0][0] == b"moof"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 63, "height": 64},
        {"width": 64, "height": 0},
        {"width": 64, "height": 64, "sample_rate": 16001},
        {"width": 64, "height": 64, "video_crf": 60},
        {"width": 64, "height": 64, "keyframe_interval_frames": 0},
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FragmentedMP4Muxer(**kwargs)


def test_close_is_final() -> None:
    mux = FragmentedMP4Muxer(W, H)
    mux.add_chunk(gray_frames(0), tone(0))
    assert boxes(mux.close())[0][0] == b"moof"  # remaining AAC packets
    assert mux.close() == b""
    with pytest.raises(RuntimeError):
        mux.add_chunk(gray_frames(F), tone(S))
