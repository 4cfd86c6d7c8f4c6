from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    END_REASON_UNSPECIFIED: _ClassVar[EndReason]
    END_REASON_COMPLETED: _ClassVar[EndReason]
    END_REASON_INTERRUPTED: _ClassVar[EndReason]
END_REASON_UNSPECIFIED: EndReason
END_REASON_COMPLETED: EndReason
END_REASON_INTERRUPTED: EndReason

class TimeBase(_message.Message):
    __slots__ = ("fps", "sample_rate", "frames_per_chunk")
    FPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_PER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    fps: int
    sample_rate: int
    frames_per_chunk: int
    def __init__(self, fps: _Optional[int] = ..., sample_rate: _Optional[int] = ..., frames_per_chunk: _Optional[int] = ...) -> None: ...

class TextSegment(_message.Message):
    __slots__ = ("text", "offset")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    text: str
    offset: int
    def __init__(self, text: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class EndOfText(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Interrupt(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Interrupted(_message.Message):
    __slots__ = ("next_chunk_index",)
    NEXT_CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    next_chunk_index: int
    def __init__(self, next_chunk_index: _Optional[int] = ...) -> None: ...

class End(_message.Message):
    __slots__ = ("reason", "chunks")
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    reason: EndReason
    chunks: int
    def __init__(self, reason: _Optional[_Union[EndReason, str]] = ..., chunks: _Optional[int] = ...) -> None: ...
