from streamchar.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_FORMAT_UNSPECIFIED: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_FMP4: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_RAW: _ClassVar[OutputFormat]
OUTPUT_FORMAT_UNSPECIFIED: OutputFormat
OUTPUT_FORMAT_FMP4: OutputFormat
OUTPUT_FORMAT_RAW: OutputFormat

class SessionOptions(_message.Message):
    __slots__ = ("format", "realtime", "lead_seconds", "seed")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    REALTIME_FIELD_NUMBER: _ClassVar[int]
    LEAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    format: OutputFormat
    realtime: bool
    lead_seconds: float
    seed: int
    def __init__(self, format: _Optional[_Union[OutputFormat, str]] = ..., realtime: _Optional[bool] = ..., lead_seconds: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class StartSession(_message.Message):
    __slots__ = ("reference_image", "voice", "options")
    REFERENCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    reference_image: bytes
    voice: str
    options: SessionOptions
    def __init__(self, reference_image: _Optional[bytes] = ..., voice: _Optional[str] = ..., options: _Optional[_Union[SessionOptions, _Mapping]] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("utf8",)
    UTF8_FIELD_NUMBER: _ClassVar[int]
    utf8: bytes
    def __init__(self, utf8: _Optional[bytes] = ...) -> None: ...

class ClientEvent(_message.Message):
    __slots__ = ("start", "text", "end_of_text", "interrupt")
    START_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    END_OF_TEXT_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    start: StartSession
    text: TextDelta
    end_of_text: _common_pb2.EndOfText
    interrupt: _common_pb2.Interrupt
    def __init__(self, start: _Optional[_Union[StartSession, _Mapping]] = ..., text: _Optional[_Union[TextDelta, _Mapping]] = ..., end_of_text: _Optional[_Union[_common_pb2.EndOfText, _Mapping]] = ..., interrupt: _Optional[_Union[_common_pb2.Interrupt, _Mapping]] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("session_id", "time_base", "width", "height", "trained")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_BASE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    time_base: _common_pb2.TimeBase
    width: int
    height: int
    trained: bool
    def __init__(self, session_id: _Optional[str] = ..., time_base: _Optional[_Union[_common_pb2.TimeBase, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., trained: _Optional[bool] = ...) -> None: ...

class MediaInit(_message.Message):
    __slots__ = ("mime_type", "data")
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    mime_type: str
    data: bytes
    def __init__(self, mime_type: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class MediaSegment(_message.Message):
    __slots__ = ("chunk_index", "pts_us", "duration_us", "data", "final_flush")
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    PTS_US_FIELD_NUMBER: _ClassVar[int]
    DURATION_US_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FLUSH_FIELD_NUMBER: _ClassVar[int]
    chunk_index: int
    pts_us: int
    duration_us: int
    data: bytes
    final_flush: bool
    def __init__(self, chunk_index: _Optional[int] = ..., pts_us: _Optional[int] = ..., duration_us: _Optional[int] = ..., data: _Optional[bytes] = ..., final_flush: _Optional[bool] = ...) -> None: ...

class RawChunk(_message.Message):
    __slots__ = ("chunk_index", "pts_us", "duration_us", "num_frames", "width", "height", "frames_rgb24", "sample_rate", "pcm_s16le")
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    PTS_US_FIELD_NUMBER: _ClassVar[int]
    DURATION_US_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_RGB24_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    PCM_S16LE_FIELD_NUMBER: _ClassVar[int]
    chunk_index: int
    pts_us: int
    duration_us: int
    num_frames: int
    width: int
    height: int
    frames_rgb24: bytes
    sample_rate: int
    pcm_s16le: bytes
    def __init__(self, chunk_index: _Optional[int] = ..., pts_us: _Optional[int] = ..., duration_us: _Optional[int] = ..., num_frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., frames_rgb24: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., pcm_s16le: _Optional[bytes] = ...) -> None: ...

class TranscriptProgress(_message.Message):
    __slots__ = ("chunk_index", "pointer", "text_received", "latency_seconds", "render_seconds")
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    POINTER_FIELD_NUMBER: _ClassVar[int]
    TEXT_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RENDER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    chunk_index: int
    pointer: int
    text_received: int
    latency_seconds: float
    render_seconds: float
    def __init__(self, chunk_index: _Optional[int] = ..., pointer: _Optional[int] = ..., text_received: _Optional[int] = ..., latency_seconds: _Optional[float] = ..., render_seconds: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ServerEvent(_message.Message):
    __slots__ = ("started", "init", "segment", "raw", "progress", "error", "end", "interrupted")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    started: SessionStarted
    init: MediaInit
    segment: MediaSegment
    raw: RawChunk
    progress: TranscriptProgress
    error: Error
    end: _common_pb2.End
    interrupted: _common_pb2.Interrupted
    def __init__(self, started: _Optional[_Union[SessionStarted, _Mapping]] = ..., init: _Optional[_Union[MediaInit, _Mapping]] = ..., segment: _Optional[_Union[MediaSegment, _Mapping]] = ..., raw: _Optional[_Union[RawChunk, _Mapping]] = ..., progress: _Optional[_Union[TranscriptProgress, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., end: _Optional[_Union[_common_pb2.End, _Mapping]] = ..., interrupted: _Optional[_Union[_common_pb2.Interrupted, _Mapping]] = ...) -> None: ...
