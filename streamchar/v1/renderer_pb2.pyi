from streamchar.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RenderStart(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("chunk_index",)
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    chunk_index: int
    def __init__(self, chunk_index: _Optional[int] = ...) -> None: ...

class RenderRequest(_message.Message):
    __slots__ = ("start", "text", "end_of_text", "interrupt", "ack")
    START_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    END_OF_TEXT_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    start: RenderStart
    text: _common_pb2.TextSegment
    end_of_text: _common_pb2.EndOfText
    interrupt: _common_pb2.Interrupt
    ack: Ack
    def __init__(self, start: _Optional[_Union[RenderStart, _Mapping]] = ..., text: _Optional[_Union[_common_pb2.TextSegment, _Mapping]] = ..., end_of_text: _Optional[_Union[_common_pb2.EndOfText, _Mapping]] = ..., interrupt: _Optional[_Union[_common_pb2.Interrupt, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class RenderStarted(_message.Message):
    __slots__ = ("session_id", "time_base", "width", "height", "next_chunk_index", "text_received", "trained")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_BASE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    time_base: _common_pb2.TimeBase
    width: int
    height: int
    next_chunk_index: int
    text_received: int
    trained: bool
    def __init__(self, session_id: _Optional[str] = ..., time_base: _Optional[_Union[_common_pb2.TimeBase, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., next_chunk_index: _Optional[int] = ..., text_received: _Optional[int] = ..., trained: _Optional[bool] = ...) -> None: ...

class AVChunk(_message.Message):
    __slots__ = ("session_id", "chunk_index", "pts_us", "duration_us", "num_frames", "width", "height", "frames", "sample_rate", "num_samples", "pcm_s16le", "pointer_start", "pointer_end", "fill", "final", "render_seconds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    PTS_US_FIELD_NUMBER: _ClassVar[int]
    DURATION_US_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PCM_S16LE_FIELD_NUMBER: _ClassVar[int]
    POINTER_START_FIELD_NUMBER: _ClassVar[int]
    POINTER_END_FIELD_NUMBER: _ClassVar[int]
    FILL_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    RENDER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    chunk_index: int
    pts_us: int
    duration_us: int
    num_frames: int
    width: int
    height: int
    frames: bytes
    sample_rate: int
    num_samples: int
    pcm_s16le: bytes
    pointer_start: int
    pointer_end: int
    fill: bool
    final: bool
    render_seconds: float
    def __init__(self, session_id: _Optional[str] = ..., chunk_index: _Optional[int] = ..., pts_us: _Optional[int] = ..., duration_us: _Optional[int] = ..., num_frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., frames: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., num_samples: _Optional[int] = ..., pcm_s16le: _Optional[bytes] = ..., pointer_start: _Optional[int] = ..., pointer_end: _Optional[int] = ..., fill: _Optional[bool] = ..., final: _Optional[bool] = ..., render_seconds: _Optional[float] = ...) -> None: ...

class RenderResponse(_message.Message):
    __slots__ = ("started", "chunk", "end", "interrupted")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    started: RenderStarted
    chunk: AVChunk
    end: _common_pb2.End
    interrupted: _common_pb2.Interrupted
    def __init__(self, started: _Optional[_Union[RenderStarted, _Mapping]] = ..., chunk: _Optional[_Union[AVChunk, _Mapping]] = ..., end: _Optional[_Union[_common_pb2.End, _Mapping]] = ..., interrupted: _Optional[_Union[_common_pb2.Interrupted, _Mapping]] = ...) -> None: ...
