"""Live fragmented-MP4 muxing of one streaming session (H.264 + AAC), chunk by chunk.

A session produces audio and video one *chunk* at a time (e.g. 8 frames at 25 fps = 320 ms,
with 5120 mono samples at 16 kHz). :class:`FragmentedMP4Muxer` keeps one H.264 encoder and one
AAC encoder for the whole session and turns every chunk into exactly one ``moof``+``mdat``
fragment the moment the chunk is added, so a browser (Media Source Extensions) can play a
chunk as soon as it leaves. ``init_segment()`` + every ``add_chunk()`` output + ``close()``,
concatenated, is a valid fragmented MP4 file.

Why the boxes are written here rather than by libavformat's ``mp4`` muxer: PyAV 18 only muxes
through ``av_interleaved_write_frame``. With ``movflags=frag_custom`` movenc cuts a fragment
only on ``av_write_frame(ctx, NULL)`` (not exposed by PyAV) or at the trailer, so nothing comes
out while the session runs; every other mode (``frag_keyframe``, ``frag_duration``,
``frag_size``, ``frag_every_frame``) cuts the fragment when the *next* packet arrives, and the
interleaving queue additionally holds packets back until every stream has a later one. Either
way a chunk's fragment would wait for the next chunk. PyAV is therefore used for the codecs
only; the ISO BMFF boxes (ISO/IEC 14496-12 / -15, ``avcC``; 14496-1/-3 ``esds``) are small
and fully determined by the encoder extradata, and writing them gives exact control over
fragment boundaries and timestamps.

Timing: video uses a 90 kHz timescale (``fps * 1000`` when 90000 is not a multiple of fps);
frame ``i`` is presented at ``i / fps`` exactly (pts == dts, no B-frames). Audio uses
``sample_rate`` as its timescale. The AAC encoder's first packet starts 1024 samples before t=0
(encoder priming); the audio track's edit list (``elst`` media_time = 1024) maps that back, so
audio sample ``k`` is presented at ``k / sample_rate`` and stays in sync with the video.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
from av.codec.context import Flags as CodecFlags
from av.video.reformatter import ColorRange, Colorspace, VideoReformatter

__all__ = ["FragmentedMP4Muxer", "decode_mp4"]

logger = logging.getLogger(__name__)

# ffmpeg's native AAC encoder always reports initial_padding = 1024 (one MDCT frame of
# look-behind); PyAV does not expose initial_padding, and the edit list that compensates for it
# must be in the init segment before any audio is encoded, so it is fixed here and checked
# against the first packet's pts.
_AAC_PRIMING_SAMPLES = 1024

# AVColorPrimaries / AVColorTransferCharacteristic / AVColorSpace value for BT.709, and
# AVColorRange "MPEG" (limited range). RGB is converted with the BT.709 matrix and the VUI says
# so, so browsers and decode_mp4 invert the same matrix.
_AVCOL_BT709 = 1
_AVCOL_RANGE_MPEG = 1

# ``veryfast`` keeps High profile (CABAC, 8x8 transform) at real-time cost; ``ultrafast`` would
# drop to constrained baseline for little gain at the frame sizes used here.
_X264_PRESET = "veryfast"

_SAMPLE_FLAGS_SYNC = 0x02000000  # sample_depends_on = 2 (independent)
_SAMPLE_FLAGS_NON_SYNC = 0x01010000  # sample_depends_on = 1, sample_is_non_sync_sample = 1

_TRACK_VIDEO = 1
_TRACK_AUDIO = 2
_MOVIE_TIMESCALE = 1000


# --------------------------------------------------------------------------- ISO BMFF boxes


def _box(box_type: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), box_type) + body


def _full_box(box_type: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(box_type, struct.pack(">I", (version << 24) | flags), *payload)


def _annexb_nal_units(data: bytes) -> list[bytes]:
    """Split an Annex-B byte stream (``00 00 01`` / ``00 00 00 01`` start codes) into NAL units."""
    starts: list[int] = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = data.find(b"\x00\x00\x01", i + 3)
    nals: list[bytes] = []
    for k, start in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else len(data)
        # A NAL unit never ends in 0x00 (rbsp trailing bits), so trailing zeros belong to the
        # next 4-byte start code or are trailing_zero_8bits.
        nal = data[start:end].rstrip(b"\x00")
        if nal:
            nals.append(nal)
    return nals


def _length_prefixed(data: bytes) -> bytes:
    """Annex-B access unit -> MP4 sample (4-byte big-endian NAL lengths, lengthSizeMinusOne=3)."""
    nals = _annexb_nal_units(data)
    if not nals:
        raise RuntimeError(f"H.264 packet of {len(data)} bytes has no Annex-B start code")
    return b"".join(struct.pack(">I", len(nal)) + nal for nal in nals)


def _avcc(extradata: bytes) -> bytes:
    """Build an ``AVCDecoderConfigurationRecord`` from libx264's Annex-B SPS/PPS extradata."""
    nals = _annexb_nal_units(extradata)
    sps = [n for n in nals if n[0] & 0x1F == 7]
    pps = [n for n in nals if n[0] & 0x1F == 8]
    if not sps or not pps:
        types = [n[0] & 0x1F for n in nals]
        raise RuntimeError(f"H.264 extradata lacks SPS/PPS (NAL unit types {types})")
    profile, compat, level = sps[0][1], sps[0][2], sps[0][3]
    record = bytearray([1, profile, compat, level, 0xFC | 3, 0xE0 | len(sps)])
    for nal in sps:
        record += struct.pack(">H", len(nal)) + nal
    record.append(len(pps))
    for nal in pps:
        record += struct.pack(">H", len(nal)) + nal
    if profile in (100, 110, 122, 144):
        # High-profile extension (ISO/IEC 14496-15 5.3.3.1.2). The encoder is always opened
        # with yuv420p 8-bit, so chroma_format_idc = 1 and both bit depths are 8.
        record += bytes([0xFC | 1, 0xF8 | 0, 0xF8 | 0, 0])
    return _box(b"avcC", bytes(record))


def _descriptor(tag: int, payload: bytes) -> bytes:
    # 4-byte expandable size, as ffmpeg writes it; always valid and keeps sizes fixed.
    n = len(payload)
    size = bytes([0x80 | ((n >> shift) & 0x7F) for shift in (21, 14, 7)] + [n & 0x7F])
    return bytes([tag]) + size + payload


def _esds(audio_specific_config: bytes, track_id: int, bitrate: int) -> bytes:
    decoder_config = _descriptor(
        0x04,
        struct.pack(">BB", 0x40, (0x05 << 2) | 1)  # MPEG-4 audio, AudioStream
        + (6144 // 8).to_bytes(3, "big")  # bufferSizeDB: one AAC frame per channel
        + struct.pack(">II", bitrate, bitrate)
        + _descriptor(0x05, audio_specific_config),
    )
    sl_config = _descriptor(0x06, b"\x02")  # predefined: MP4 file
    es = _descriptor(0x03, struct.pack(">HB", track_id, 0) + decoder_config + sl_config)
    return _full_box(b"esds", 0, 0, es)


_UNITY_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)


def _tkhd(track_id: int, width: int, height: int, is_audio: bool) -> bytes:
    return _full_box(
        b"tkhd",
        0,
        0x3,  # enabled | in_movie
        struct.pack(">IIIII", 0, 0, track_id, 0, 0),  # times, id, reserved, duration (unknown)
        struct.pack(">IIhhhH", 0, 0, 0, 0, 0x0100 if is_audio else 0, 0),
        _UNITY_MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )


def _mdhd(timescale: int) -> bytes:
    language_und = ((ord("u") - 0x60) << 10) | ((ord("n") - 0x60) << 5) | (ord("d") - 0x60)
    return _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, language_und, 0))


def _hdlr(handler: bytes, name: bytes) -> bytes:
    return _full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, handler), name + b"\x00")


def _stbl(sample_entry: bytes) -> bytes:
    # Sample tables stay empty in a fragmented file; samples are described by trun boxes.
    return _box(
        b"stbl",
        _full_box(b"stsd", 0, 0, struct.pack(">I", 1), sample_entry),
        _full_box(b"stts", 0, 0, struct.pack(">I", 0)),
        _full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
        _full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        _full_box(b"stco", 0, 0, struct.pack(">I", 0)),
    )


def _dinf() -> bytes:
    return _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))


# ----------------------------------------------------------------------------------- muxer


@dataclass
class _Sample:
    data: bytes
    duration: int  # in the track timescale
    flags: int


@dataclass
class _TrackRun:
    """Samples of one track waiting to go into the next fragment."""

    track_id: int
    base_decode_time: int = 0  # track-timescale decode time of samples[0]
    samples: list[_Sample] = field(default_factory=list)


def _video_timescale(fps: int) -> int:
    return 90_000 if 90_000 % fps == 0 else fps * 1000


class FragmentedMP4Muxer:
    """Encode a live audio+video session into fragmented MP4, one fragment per chunk.

    Shapes: ``frames`` uint8 ``[F, H, W, 3]`` RGB, ``pcm`` float32 ``[S]`` mono in ``[-1, 1]`` with
    ``S = F * sample_rate / fps``. Video frame ``i`` (counted over the session) has pts ``i``
    in ``1/fps``; audio sample ``k`` has pts ``k`` in ``1/sample_rate``.

    Usage::

        mux = FragmentedMP4Muxer(64, 64)
        send(mux.init_segment())          # ftyp + moov, once
        for frames, pcm in chunks:
            send(mux.add_chunk(frames, pcm))  # moof + mdat, immediately
        send(mux.close())                 # remaining audio

    Latency: each chunk's video leaves complete with its chunk; the AAC encoder holds back about
    two AAC frames (priming + lookahead, ~128 ms at 16 kHz), which arrive with the next chunk or
    ``close()``. A viewer joining mid-session needs the init segment and then fragments from one
    containing a keyframe; choose ``keyframe_interval_frames`` as a multiple of the chunk length
    for keyframes to open fragments. Not thread-safe: one session, one caller.
    """

    def __init__(
        self,
        width: int,
        height: int,
        fps: int = 25,
        sample_rate: int = 16000,
        keyframe_interval_frames: int = 25,
        video_crf: int = 23,
        audio_bitrate: int = 64000,
    ) -> None:
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, (int, np.integer)) or value <= 0 or value % 2:
                raise ValueError(f"{name} must be a positive even integer (yuv420p), got {value!r}")
        if not isinstance(fps, (int, np.integer)) or fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps!r}")
        if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0 or sample_rate % fps:
            raise ValueError(
                f"sample_rate must be a positive multiple of fps={fps}, got {sample_rate!r}"
            )
        if keyframe_interval_frames < 1:
            raise ValueError(
                f"keyframe_interval_frames must be >= 1, got {keyframe_interval_frames}"
            )
        if not 0 <= video_crf <= 51:
            raise ValueError(f"video_crf must be in 0..51, got {video_crf}")
        if audio_bitrate <= 0:
            raise ValueError(f"audio_bitrate must be positive, got {audio_bitrate}")

        width, height, fps, sample_rate = int(width), int(height), int(fps), int(sample_rate)
        self.width = width
        self.height = height
        self.fps = fps
        self.sample_rate = sample_rate
        self.samples_per_frame = sample_rate // fps
        self.audio_bitrate = audio_bitrate
        self._video_timescale = _video_timescale(fps)
        self._frame_duration = self._video_timescale // fps

        self._video = av.CodecContext.create("libx264", "w")
        self._video.width = width
        self._video.height = height
        self._video.pix_fmt = "yuv420p"
        self._video.time_base = Fraction(1, fps)
        self._video.framerate = Fraction(fps, 1)
        self._video.gop_size = keyframe_interval_frames
        self._video.max_b_frames = 0
        self._video.color_primaries = _AVCOL_BT709
        self._video.color_trc = _AVCOL_BT709
        self._video.colorspace = _AVCOL_BT709
        self._video.color_range = _AVCOL_RANGE_MPEG
        # SPS/PPS go to extradata (-> avcC in the init segment) instead of every keyframe.
        self._video.flags |= CodecFlags.global_header
        self._video.options = {
            "preset": _X264_PRESET,
            # zerolatency = no B-frames, no rc/sync lookahead, no frame threading: each
            # encode(frame) call returns that frame's packet, which is what lets a chunk's
            # fragment leave without waiting for later frames.
            "tune": "zerolatency",
            "crf": str(video_crf),
            "keyint_min": str(keyframe_interval_frames),
            # Fixed GOP: keyframes land where the interval says, so stream joins/seeks are
            # predictable regardless of content.
            "sc_threshold": "0",
        }
        self._video.open()
        # One reformatter for the session so the RGB->YUV scaler context is built once.
        self._to_yuv = VideoReformatter()

        self._audio = av.CodecContext.create("aac", "w")
        self._audio.sample_rate = sample_rate
        self._audio.layout = "mono"
        self._audio.format = "fltp"
        self._audio.bit_rate = audio_bitrate
        self._audio.time_base = Fraction(1, sample_rate)
        self._audio.flags |= CodecFlags.global_header
        self._audio.open()

        video_extradata = self._video.extradata
        audio_extradata = self._audio.extradata
        if not video_extradata or not audio_extradata:
            raise RuntimeError("encoders produced no extradata despite the global_header flag")
        self._avcc = _avcc(video_extradata)
        self._audio_specific_config = audio_extradata
        self._init_segment = self._build_init_segment()

        self._frames_done = 0  # video frames encoded so far (= pts of the next frame)
        self._samples_done = 0  # audio samples fed so far (= pts of the next sample)
        self._next_audio_dts: int | None = None  # track decode time expected for next packet
        self._sequence_number = 0
        self._closed = False
        logger.info(
            "fMP4 muxer %dx%d@%d fps, %d Hz, keyint %d, crf %d -> %s",
            width, height, fps, sample_rate, keyframe_interval_frames, video_crf, self.mime_type,
        )

    # ------------------------------------------------------------------------- public API

    @property
    def mime_type(self) -> str:
        """MSE type, e.g. ``video/mp4; codecs="avc1.64000a,mp4a.40.2"``, from the avcC and ASC."""
        # avcC = 8-byte box header + record; record bytes 1..3 are the SPS profile/flags/level.
        profile, compat, level = self._avcc[9], self._avcc[10], self._avcc[11]
        audio_object_type = self._audio_specific_config[0] >> 3
        if audio_object_type == 31:  # escape: 6 more bits follow
            asc = int.from_bytes(self._audio_specific_config[:2], "big")
            audio_object_type = 32 + ((asc >> 5) & 0x3F)
        avc1 = f"avc1.{profile:02x}{compat:02x}{level:02x}"
        return f'video/mp4; codecs="{avc1},mp4a.40.{audio_object_type}"'

    def init_segment(self) -> bytes:
        """Return the initialization segment (``ftyp`` + ``moov``). Same bytes on every call."""
        return self._init_segment

    def add_chunk(self, frames: np.ndarray, pcm: np.ndarray) -> bytes:
        """Encode one chunk and return its fragment (``moof`` + ``mdat``) right away.

        Args:
            frames: uint8 ``[F, H, W, 3]`` RGB, ``F >= 1``.
            pcm: float32 ``[S]`` mono in ``[-1, 1]``, ``S = F * sample_rate // fps``.

        Returns:
            One fragment holding exactly these ``F`` video frames plus every AAC packet the audio
            encoder has emitted so far (the AAC encoder runs about two AAC frames behind the input).
        """
        if self._closed:
            raise RuntimeError("add_chunk() after close()")
        self._validate_chunk(frames, pcm)
        n_frames = frames.shape[0]

        video = _TrackRun(_TRACK_VIDEO, base_decode_time=self._frames_done * self._frame_duration)
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame = self._to_yuv.reformat(
                frame,
                format="yuv420p",
                dst_colorspace=Colorspace.ITU709,
                dst_color_range=ColorRange.MPEG,
            )
            frame.pts = self._frames_done + i
            frame.time_base = Fraction(1, self.fps)
            for packet in self._video.encode(frame):
                video.samples.append(self._video_sample(packet))
        if len(video.samples) != n_frames:
            raise RuntimeError(
                f"H.264 encoder returned {len(video.samples)} packets for {n_frames} frames; "
                "it must not delay frames (tune=zerolatency, bf=0)"
            )
        self._frames_done += n_frames

        audio_frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm).reshape(1, -1), format="fltp", layout="mono"
        )
        audio_frame.sample_rate = self.sample_rate
        audio_frame.pts = self._samples_done
        audio_frame.time_base = Fraction(1, self.sample_rate)
        self._samples_done += pcm.shape[0]
        audio = self._audio_run(self._audio.encode(audio_frame))

        fragment = self._fragment([video, audio])
        logger.debug(
            "chunk %d: %d video frames (keyframe: %s), %d AAC packets, %d bytes",
            self._sequence_number - 1,
            n_frames,
            any(s.flags == _SAMPLE_FLAGS_SYNC for s in video.samples),
            len(audio.samples),
            len(fragment),
        )
        return fragment

    def close(self) -> bytes:
        """Flush both encoders and return the final fragment (remaining audio), or ``b""`` if empty.

        No ``mfra`` trailer is written: it is optional and only helps seeking in files.
        Calling ``close()`` again returns ``b""``.
        """
        if self._closed:
            return b""
        self._closed = True
        leftover_video = self._video.encode(None)
        if leftover_video:
            # Every frame's packet was already emitted by add_chunk(); anything here would have
            # no frame slot in the timeline.
            raise RuntimeError(
                f"H.264 encoder flushed {len(leftover_video)} unexpected delayed packets"
            )
        audio = self._audio_run(self._audio.encode(None))
        fragment = self._fragment([audio])
        logger.info(
            "fMP4 muxer closed: %d video frames, %d audio samples, %d fragments",
            self._frames_done, self._samples_done, self._sequence_number,
        )
        return fragment

    # ------------------------------------------------------------------------------ encoding

    def _validate_chunk(self, frames: np.ndarray, pcm: np.ndarray) -> None:
        if not isinstance(frames, np.ndarray):
            raise ValueError(f"frames must be a numpy array, got {type(frames).__name__}")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}")
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3) or not len(frames):
            raise ValueError(
                f"frames must have shape [F>=1, {self.height}, {self.width}, 3] (RGB), "
                f"got {list(frames.shape)}"
            )
        if not isinstance(pcm, np.ndarray):
            raise ValueError(f"pcm must be a numpy array, got {type(pcm).__name__}")
        if pcm.dtype != np.float32:
            raise ValueError(f"pcm must be float32, got {pcm.dtype}")
        expected = frames.shape[0] * self.samples_per_frame
        if pcm.ndim != 1 or pcm.shape[0] != expected:
            raise ValueError(
                f"pcm must have shape [{expected}] ({frames.shape[0]} frames x "
                f"{self.samples_per_frame} samples), got {list(pcm.shape)}"
            )
        if not np.isfinite(pcm).all():
            raise ValueError("pcm contains NaN or infinite values")

    def _video_sample(self, packet: av.Packet) -> _Sample:
        flags = _SAMPLE_FLAGS_SYNC if packet.is_keyframe else _SAMPLE_FLAGS_NON_SYNC
        return _Sample(_length_prefixed(bytes(packet)), self._frame_duration, flags)

    def _audio_run(self, packets: list[av.Packet]) -> _TrackRun:
        """AAC packets -> track run; decode time = pts + priming (the elst maps it back)."""
        run = _TrackRun(_TRACK_AUDIO)
        for packet in packets:
            assert packet.pts is not None
            dts = packet.pts + _AAC_PRIMING_SAMPLES
            if self._next_audio_dts is None:
                if dts != 0:
                    raise RuntimeError(
                        f"first AAC packet pts {packet.pts} != -{_AAC_PRIMING_SAMPLES}; the init "
                        "segment's edit list assumes that priming delay"
                    )
            elif dts != self._next_audio_dts:
                raise RuntimeError(
                    f"AAC packet timestamps not contiguous: {dts} != {self._next_audio_dts}"
                )
            if not run.samples:
                run.base_decode_time = dts
            duration = packet.duration or self._audio.frame_size
            run.samples.append(_Sample(bytes(packet), duration, _SAMPLE_FLAGS_SYNC))
            self._next_audio_dts = dts + duration
        return run

    # ------------------------------------------------------------------------------- boxes

    def _build_init_segment(self) -> bytes:
        ftyp = _box(b"ftyp", b"iso5", struct.pack(">I", 512), b"iso5", b"iso6", b"avc1", b"mp41")
        mvhd = _full_box(
            b"mvhd",
            0,
            0,
            struct.pack(">IIII", 0, 0, _MOVIE_TIMESCALE, 0),
            struct.pack(">IH10x", 0x00010000, 0x0100),  # rate 1.0, volume 1.0, reserved
            _UNITY_MATRIX,
            bytes(24),  # pre_defined
            struct.pack(">I", _TRACK_AUDIO + 1),  # next_track_ID
        )
        avc1 = _box(
            b"avc1",
            bytes(6),
            struct.pack(">H", 1),  # data_reference_index
            bytes(16),
            struct.pack(">HH", self.width, self.height),
            struct.pack(">II", 0x00480000, 0x00480000),  # 72 dpi
            struct.pack(">IH", 0, 1),  # reserved, frame_count
            bytes(32),  # compressorname
            struct.pack(">Hh", 0x0018, -1),
            self._avcc,
        )
        video_trak = _box(
            b"trak",
            _tkhd(_TRACK_VIDEO, self.width, self.height, is_audio=False),
            _box(
                b"mdia",
                _mdhd(self._video_timescale),
                _hdlr(b"vide", b"VideoHandler"),
                _box(b"minf", _full_box(b"vmhd", 0, 1, bytes(8)), _dinf(), _stbl(avc1)),
            ),
        )
        mp4a = _box(
            b"mp4a",
            bytes(6),
            struct.pack(">H", 1),
            bytes(8),
            struct.pack(">HHHH", 1, 16, 0, 0),  # channelcount, samplesize, pre_defined, reserved
            # 16.16 field; rates above 65535 are written as 0 (the ASC carries the real rate).
            struct.pack(">I", self.sample_rate << 16 if self.sample_rate <= 0xFFFF else 0),
            _esds(self._audio_specific_config, _TRACK_AUDIO, self.audio_bitrate),
        )
        # One edit that skips the encoder priming. segment_duration 0: the duration of a live
        # fragmented track is unknown when the moov is written.
        edts = _box(
            b"edts",
            _full_box(b"elst", 0, 0, struct.pack(">IIiI", 1, 0, _AAC_PRIMING_SAMPLES, 0x00010000)),
        )
        audio_trak = _box(
            b"trak",
            _tkhd(_TRACK_AUDIO, 0, 0, is_audio=True),
            edts,
            _box(
                b"mdia",
                _mdhd(self.sample_rate),
                _hdlr(b"soun", b"SoundHandler"),
                _box(b"minf", _full_box(b"smhd", 0, 0, bytes(4)), _dinf(), _stbl(mp4a)),
            ),
        )
        # Defaults are unused: every trun carries its own sample durations, sizes and flags.
        trex = [
            _full_box(b"trex", 0, 0, struct.pack(">IIIII", track_id, 1, 0, 0, 0))
            for track_id in (_TRACK_VIDEO, _TRACK_AUDIO)
        ]
        mvex = _box(b"mvex", *trex)
        return ftyp + _box(b"moov", mvhd, video_trak, audio_trak, mvex)

    def _fragment(self, runs: list[_TrackRun]) -> bytes:
        """One ``moof`` (a ``traf`` per non-empty run) + one ``mdat`` holding the runs in order."""
        runs = [r for r in runs if r.samples]
        if not runs:
            return b""
        self._sequence_number += 1

        def moof(data_offsets: list[int]) -> bytes:
            trafs = []
            for run, offset in zip(runs, data_offsets):
                entries = b"".join(
                    struct.pack(">III", s.duration, len(s.data), s.flags) for s in run.samples
                )
                trun_header = struct.pack(">Ii", len(run.samples), offset)
                trafs.append(
                    _box(
                        b"traf",
                        # 0x020000 = default-base-is-moof: data offsets count from this moof
                        _full_box(b"tfhd", 0, 0x020000, struct.pack(">I", run.track_id)),
                        _full_box(b"tfdt", 1, 0, struct.pack(">Q", run.base_decode_time)),
                        # 0x701 = data-offset | sample-duration | sample-size | sample-flags
                        _full_box(b"trun", 0, 0x000701, trun_header, entries),
                    )
                )
            mfhd = _full_box(b"mfhd", 0, 0, struct.pack(">I", self._sequence_number))
            return _box(b"moof", mfhd, *trafs)

        # Offsets are relative to the moof start (default-base-is-moof) and the moof's size does
        # not depend on their values, so size it once with placeholders.
        moof_size = len(moof([0] * len(runs)))
        offsets, position = [], moof_size + 8  # + mdat header
        for run in runs:
            offsets.append(position)
            position += sum(len(s.data) for s in run.samples)
        payload = b"".join(s.data for run in runs for s in run.samples)
        return moof(offsets) + _box(b"mdat", payload)


# ---------------------------------------------------------------------------------- decoding


def decode_mp4(data: bytes) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Decode an MP4 (fragmented or not) held in memory with PyAV.

    Returns:
        video: uint8 ``[F, H, W, 3]`` RGB in presentation order (``[0, 0, 0, 3]`` if no video).
        audio: float32 ``[S]`` mono (channels averaged), sample 0 at t=0. Samples timestamped
            before 0 (encoder priming, placed there by the edit list) or after the last packet's
            end (padding of the final AAC frame) are dropped, as a player would.
        info: ``video_streams``, ``audio_streams``, ``video_frames``, ``video_duration_s``
            (frames / fps), ``video_start_s``, ``audio_samples``, ``audio_duration_s``, ``fps``,
            ``sample_rate``, ``width``, ``height``, ``video_codec``, ``audio_codec``.

    Raises:
        av.error.FFmpegError: the data is not a decodable MP4.
    """
    with av.open(io.BytesIO(data), mode="r") as container:
        video_streams = list(container.streams.video)
        audio_streams = list(container.streams.audio)
        vstream = video_streams[0] if video_streams else None
        astream = audio_streams[0] if audio_streams else None
        selected = [s for s in (vstream, astream) if s is not None]

        # The container's declared rate, read before decoding: libav re-estimates average_rate from the
        # decoded timestamps, and with B-frame reordering that estimate can come out absurd (seen: -49467).
        rate = (vstream.average_rate or vstream.guessed_rate) if vstream is not None else None
        frames: list[np.ndarray] = []
        video_pts: list[int] = []
        chunks: list[tuple[int | None, np.ndarray]] = []  # (pts in 1/sample_rate, [n] samples)
        audio_end: int | None = None
        sample_rate = astream.codec_context.sample_rate if astream is not None else 0

        def take_audio(decoded: list[av.AudioFrame]) -> None:
            for frame in decoded:
                samples = frame.to_ndarray().astype(np.float32)
                if not frame.format.is_planar:
                    samples = samples.reshape(-1, frame.layout.nb_channels).T
                pts = frame.pts
                if pts is not None:
                    pts = round(pts * frame.time_base * sample_rate)
                chunks.append((pts, samples.mean(axis=0)))

        for packet in container.demux(*selected):
            stream = packet.stream
            if stream is vstream:
                for frame in packet.decode():
                    frames.append(frame.to_ndarray(format="rgb24"))
                    video_pts.append(frame.pts if frame.pts is not None else len(video_pts))
            elif stream is astream:
                if packet.pts is not None and packet.duration:
                    end = int((packet.pts + packet.duration) * packet.time_base * sample_rate)
                    audio_end = end if audio_end is None else max(audio_end, end)
                take_audio(packet.decode())  # the final flush packet (size 0) lands here too

    audio = _assemble_audio(chunks, audio_end)
    if frames:
        order = np.argsort(np.asarray(video_pts), kind="stable")
        video = np.stack([frames[i] for i in order])
    else:
        video = np.zeros((0, 0, 0, 3), np.uint8)

    fps = float(rate) if rate else 0.0
    start = 0.0
    if vstream is not None and video_pts and vstream.time_base:
        start = float(min(video_pts) * vstream.time_base)
    info: dict[str, object] = {
        "video_streams": len(video_streams),
        "audio_streams": len(audio_streams),
        "video_frames": int(video.shape[0]),
        "video_duration_s": video.shape[0] / fps if fps else 0.0,
        "video_start_s": start,
        "audio_samples": int(audio.shape[0]),
        "audio_duration_s": audio.shape[0] / sample_rate if sample_rate else 0.0,
        "fps": fps,
        "sample_rate": sample_rate,
        "width": int(video.shape[2]) if frames else 0,
        "height": int(video.shape[1]) if frames else 0,
        "video_codec": vstream.codec_context.name if vstream is not None else None,
        "audio_codec": astream.codec_context.name if astream is not None else None,
    }
    return video, audio, info


def _assemble_audio(chunks: list[tuple[int | None, np.ndarray]], end: int | None) -> np.ndarray:
    """Lay decoded ``(pts, [n])`` frames on the sample timeline; keep ``[0, end)``. -> ``[S]``."""
    pieces: list[np.ndarray] = []
    cursor = 0  # next sample position on the timeline
    for pts, samples in chunks:
        start = cursor if pts is None else pts
        if start < cursor:  # overlap (or priming before t=0): keep only the new part
            samples = samples[cursor - start :]
            start = cursor
        elif start > cursor:  # gap in the stream: keep the timeline aligned with silence
            pieces.append(np.zeros(start - cursor, np.float32))
        pieces.append(samples)
        cursor = start + samples.shape[0]
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if end is not None:
        audio = audio[: max(end, 0)]
    return audio.astype(np.float32, copy=False)
