from streamchar.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrchestrateStart(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class Pull(_message.Message):
    __slots__ = ("chunk_index",)
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    chunk_index: int
    def __init__(self, chunk_index: _Optional[int] = ...) -> None: ...

class OrchestrateRequest(_message.Message):
    __slots__ = ("start", "text", "end_of_text", "interrupt", "pull")
    START_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    END_OF_TEXT_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    PULL_FIELD_NUMBER: _ClassVar[int]
    start: OrchestrateStart
    text: _common_pb2.TextSegment
    end_of_text: _common_pb2.EndOfText
    interrupt: _common_pb2.Interrupted
    pull: Pull
    def __init__(self, start: _Optional[_Union[OrchestrateStart, _Mapping]] = ..., text: _Optional[_Union[_common_pb2.TextSegment, _Mapping]] = ..., end_of_text: _Optional[_Union[_common_pb2.EndOfText, _Mapping]] = ..., interrupt: _Optional[_Union[_common_pb2.Interrupted, _Mapping]] = ..., pull: _Optional[_Union[Pull, _Mapping]] = ...) -> None: ...

class OrchestrateStarted(_message.Message):
    __slots__ = ("session_id", "text_received", "next_chunk_index")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    text_received: int
    next_chunk_index: int
    def __init__(self, session_id: _Optional[str] = ..., text_received: _Optional[int] = ..., next_chunk_index: _Optional[int] = ...) -> None: ...

class AudioConditions(_message.Message):
    __slots__ = ("chunk_index", "units", "pointer_start", "pointer_end", "fill", "final")
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    POINTER_START_FIELD_NUMBER: _ClassVar[int]
    POINTER_END_FIELD_NUMBER: _ClassVar[int]
    FILL_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    chunk_index: int
    units: _containers.RepeatedScalarFieldContainer[int]
    pointer_start: int
    pointer_end: int
    fill: bool
    final: bool
    def __init__(self, chunk_index: _Optional[int] = ..., units: _Optional[_Iterable[int]] = ..., pointer_start: _Optional[int] = ..., pointer_end: _Optional[int] = ..., fill: _Optional[bool] = ..., final: _Optional[bool] = ...) -> None: ...

class OrchestrateResponse(_message.Message):
    __slots__ = ("started", "conditions", "end", "interrupted")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    started: OrchestrateStarted
    conditions: AudioConditions
    end: _common_pb2.End
    interrupted: _common_pb2.Interrupted
    def __init__(self, started: _Optional[_Union[OrchestrateStarted, _Mapping]] = ..., conditions: _Optional[_Union[AudioConditions, _Mapping]] = ..., end: _Optional[_Union[_common_pb2.End, _Mapping]] = ..., interrupted: _Optional[_Union[_common_pb2.Interrupted, _Mapping]] = ...) -> None: ...
