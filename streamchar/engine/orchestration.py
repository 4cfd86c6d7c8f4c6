"""Orchestrator engine: transcript text → per-chunk audio conditions, with state in the session store.

Shared by the orchestrator service and the in-process pipeline. The LM runs through a backend that
decodes the protocol's frame runs (`LMBackend.decode`): `EmbeddedLMBackend` here, on one worker
thread of its own so that model work of all sessions is serialised and never blocks the event loop;
the vLLM backend (services/orchestrator/vllm_backend.py) sends each run to a vLLM server as one
streamed request, which vLLM batches with the other sessions' requests.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from streamchar.engine.protocol import (
    BackendBrokeRun,
    ChunkPlan,
    DecodeRequest,
    OrchestratorProtocol,
    OrchState,
    Starved,
    decode_with_step,
)
from streamchar.errors import BackendFailed, FailedPrecondition, InvalidInput, StaleWrite
from streamchar.models.orchestrator_lm import KVCache, OrchestratorLM
from streamchar.models.vocab import StreamCharVocab
from streamchar.session import F_OPTIONS  # the session's options: its voice is the accent the LM speaks
from streamchar.state.store import SessionStore

log = logging.getLogger(__name__)

# Conditions of the last few chunks are kept so a renderer replica taking over a session can pull
# a chunk again; more than the renderer's prefetch depth is never needed.
CONDITION_RING = 8

F_TEXT, F_TEXT_BYTES, F_ENDED = "orch.text", "orch.text_bytes", "orch.ended"
F_NEXT, F_POINTER, F_CONTEXT = "orch.next_chunk", "orch.pointer", "orch.context"
F_CONTEXT_TEXT_END, F_STALL, F_DONE = "orch.context_text_end", "orch.stall", "orch.done"
_STATE_FIELDS = [F_TEXT, F_ENDED, F_NEXT, F_POINTER, F_CONTEXT, F_CONTEXT_TEXT_END, F_STALL, F_DONE, F_OPTIONS]


def _cond_field(chunk_index: int) -> str:
    return f"orch.cond.{chunk_index % CONDITION_RING}"


class LMBackend(Protocol):
    async def decode(self, session_id: str, request: DecodeRequest) -> list[int]:
        """The greedy tokens of `request.run` after `request.context` (whole frames, at least one).

        Raises Unavailable when the LM cannot be reached; cancelling the call stops its work."""

    def forget(self, session_id: str) -> None:
        """Drop per-session caches (the session's context was rewritten or it ended)."""

    async def close(self) -> None: ...


class EmbeddedLMBackend:
    """The LM in-process. Per-session KV caches are only a cache: a miss re-prefills the context."""

    def __init__(self, model: OrchestratorLM, max_cached_sessions: int = 64,
                 logit_bias: dict[int, float] | None = None) -> None:
        """`logit_bias`: token id -> added to its logit before the greedy choice (``model.logit_bias``)."""
        self.model = model.eval()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orchestrator-lm")
        self.max_cached_sessions = max_cached_sessions
        self._bias_ids = torch.tensor(sorted(logit_bias or {}), dtype=torch.long)
        self._bias = torch.tensor([(logit_bias or {})[i] for i in self._bias_ids.tolist()], dtype=torch.float32)
        self._caches: OrderedDict[str, tuple[list[int], KVCache]] = OrderedDict()

    @torch.inference_mode()
    def step(self, session_id: str, context: list[int], allowed: list[int]) -> int:
        tokens, cache = self._caches.pop(session_id, ([], None))
        common = 0
        for a, b in zip(tokens, context):
            if a != b:
                break
            common += 1
        if cache is None or common == 0 or common == len(context):
            # Nothing reusable (or the whole context is cached and the last logits are gone).
            cache, common = self.model.new_cache(), 0
        else:
            cache.crop(common)
        new = torch.tensor([context[common:]], dtype=torch.long)  # [1,N]
        logits = self.model(new, cache=cache)[0, -1].float()  # [V]
        if len(self._bias_ids):
            logits[self._bias_ids] += self._bias
        allowed_t = torch.tensor(allowed, dtype=torch.long)
        choice = int(allowed_t[int(torch.argmax(logits[allowed_t]))])
        self._caches[session_id] = (list(context), cache)
        while len(self._caches) > self.max_cached_sessions:
            self._caches.popitem(last=False)
        return choice

    async def decode(self, session_id: str, request: DecodeRequest) -> list[int]:
        step = functools.partial(self.step, session_id)
        return await asyncio.get_running_loop().run_in_executor(self._executor, decode_with_step, request, step)

    def forget(self, session_id: str) -> None:
        self._caches.pop(session_id, None)

    async def close(self) -> None:
        self._executor.shutdown(wait=False)


@dataclass(frozen=True)
class Conditions:
    chunk_index: int
    plan: ChunkPlan

    def to_json(self) -> bytes:
        p = self.plan
        return json.dumps({"chunk_index": self.chunk_index, "units": p.units, "pointer_start": p.pointer_start,
                           "pointer_end": p.pointer_end, "fill": p.fill, "final": p.final}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Conditions:
        d = json.loads(raw)
        return cls(d["chunk_index"], ChunkPlan(d["units"], d["pointer_start"], d["pointer_end"], d["fill"], d["final"]))


def _int(raw: bytes | None) -> int:
    return int(raw) if raw is not None else 0


class OrchestratorEngine:
    def __init__(self, store: SessionStore, backend: LMBackend, vocab: StreamCharVocab,
                 protocol: OrchestratorProtocol) -> None:
        self.store = store
        self.backend = backend
        self.vocab = vocab
        self.protocol = protocol

    def accent(self, voice: str) -> str:
        """The accent a session's voice selects (OrchestratorProtocol.check_accent); InvalidInput for a
        voice this LM does not speak."""
        try:
            return self.protocol.check_accent(voice)
        except ValueError as e:
            raise InvalidInput(f"voice: {e}") from None

    async def load(self, session_id: str) -> OrchState:
        raw = await self.store.load(session_id, _STATE_FIELDS)
        ctx = np.frombuffer(raw[F_CONTEXT], dtype="<u4").tolist() if raw[F_CONTEXT] else []
        voice = json.loads(raw[F_OPTIONS]).get("voice", "") if raw[F_OPTIONS] else ""
        return OrchState(text=raw[F_TEXT] or b"", text_ended=raw[F_ENDED] == b"1", pointer=_int(raw[F_POINTER]),
                         context=ctx, context_text_end=_int(raw[F_CONTEXT_TEXT_END]), stall=_int(raw[F_STALL]),
                         next_chunk=_int(raw[F_NEXT]), done=raw[F_DONE] == b"1", accent=self.accent(voice))

    async def append_text(self, session_id: str, text: str, offset: int) -> int:
        """Append transcript text at character `offset` (idempotent for resends); returns chars held."""
        while True:
            state = await self.load(session_id)
            have = state.text_chars
            if state.text_ended and offset + len(text) > have:
                raise FailedPrecondition(f"session {session_id}: text received after end of text")
            if offset > have:
                raise FailedPrecondition(f"session {session_id}: text at offset {offset} leaves a gap "
                                         f"(holding {have} characters)")
            new = text[have - offset:]
            if not new:
                return have
            data = state.text + new.encode("utf-8")
            try:
                await self.store.commit(session_id, F_TEXT_BYTES, len(state.text), len(data), {F_TEXT: data})
                return have + len(new)
            except StaleWrite:
                continue  # another writer appended meanwhile; re-read and dedupe against it

    async def end_text(self, session_id: str) -> None:
        state = await self.load(session_id)
        await self.store.commit(session_id, F_TEXT_BYTES, len(state.text), len(state.text), {F_ENDED: b"1"})

    async def interrupt(self, session_id: str, next_chunk: int) -> None:
        """Drop unspoken text and any conditions from `next_chunk` on; the session stays open."""
        state = await self.load(session_id)
        if next_chunk > state.next_chunk:
            raise FailedPrecondition(f"interrupt at chunk {next_chunk} beyond produced {state.next_chunk}")
        fields = {F_POINTER: str(len(state.text)).encode(), F_CONTEXT: b"",
                  F_CONTEXT_TEXT_END: str(len(state.text)).encode(), F_STALL: b"0",
                  F_DONE: b"1" if state.text_ended else b"0"}
        await self.store.commit(session_id, F_NEXT, state.next_chunk, next_chunk, fields)
        self.backend.forget(session_id)

    async def replay(self, session_id: str, chunk_index: int) -> Conditions:
        raw = (await self.store.load(session_id, [_cond_field(chunk_index)]))[_cond_field(chunk_index)]
        cond = Conditions.from_json(raw) if raw else None
        if cond is None or cond.chunk_index != chunk_index:
            raise FailedPrecondition(f"conditions of chunk {chunk_index} are no longer available")
        return cond

    async def try_next(self, session_id: str, chunk_index: int, allow_fill: bool) -> Conditions | None:
        """Conditions for `chunk_index`, or None when the session is complete.

        Raises Starved when the chunk needs text that has not arrived (and filling is not allowed).
        """
        state = await self.load(session_id)
        if chunk_index < state.next_chunk:
            return await self.replay(session_id, chunk_index)
        if chunk_index > state.next_chunk:
            raise FailedPrecondition(f"pull for chunk {chunk_index} but the next chunk is {state.next_chunk}")
        if state.done:
            return None
        decoding = self.protocol.decode_chunk(state, allow_fill)
        try:
            request = next(decoding)
            while True:
                request = decoding.send(await self.backend.decode(session_id, request))
        except StopIteration as done:
            plan, new = done.value
        except BackendBrokeRun as e:
            raise BackendFailed(f"the LM backend broke the decoding protocol: {e}") from None
        cond = Conditions(chunk_index, plan)
        fields = {F_POINTER: str(new.pointer).encode(), F_CONTEXT: np.asarray(new.context, dtype="<u4").tobytes(),
                  F_CONTEXT_TEXT_END: str(new.context_text_end).encode(), F_STALL: str(new.stall).encode(),
                  F_DONE: b"1" if new.done else b"0", _cond_field(chunk_index): cond.to_json()}
        await self.store.commit(session_id, F_NEXT, state.next_chunk, new.next_chunk, fields)
        return cond


__all__ = ["Conditions", "EmbeddedLMBackend", "LMBackend", "OrchestratorEngine", "Starved"]
