"""The orchestrator's token protocol and engine: its guarantees hold whatever the LM prefers."""

from __future__ import annotations

import dataclasses
import random

import pytest

from streamchar.engine.orchestration import EmbeddedLMBackend, OrchestratorEngine
from streamchar.engine.protocol import (
    OrchestratorProtocol,
    OrchState,
    ProtocolConfig,
    Starved,
    _last_frames,
    utf8_chars,
)
from streamchar.errors import FailedPrecondition
from streamchar.models.bundle import load_orchestrator
from streamchar.models.vocab import StreamCharVocab
from streamchar.session import SessionMeta
from streamchar.state.store import MemorySessionStore

VOCAB = StreamCharVocab(num_units=16, max_advance=4)
F = 8


def random_step(seed: int):
    rng = random.Random(seed)
    return lambda context, allowed: rng.choice(allowed)


def run(protocol, state, step, allow_fill=False, limit=10_000):
    plans = []
    while not state.done and len(plans) < limit:
        plan, state = protocol.plan_chunk(state, step, allow_fill)
        plans.append(plan)
        assert_echoes(state)
    return plans, state


def assert_echoes(state: OrchState) -> None:
    """Every frame in the context echoes the bytes its advance passed: together, the text just behind
    the pointer."""
    frames = _last_frames(state.context, VOCAB, 10**6, 10**6)
    echoed = bytes(t for t in frames if t < 256)
    assert state.text[state.pointer - len(echoed):state.pointer] == echoed
    assert sum(VOCAB.advance_of(t) for t in frames if VOCAB.is_adv(t)) == len(echoed)


@pytest.mark.parametrize("seed", range(5))
def test_pointer_is_monotonic_and_reaches_the_end(seed):
    text = "Héllo, wörld! Numbers 1, 2, 3 and a question? " * 3
    protocol = OrchestratorProtocol(VOCAB, F, ProtocolConfig(lookahead_bytes=8, max_context=256, keep_frames=16,
                                                             keep_text_behind=8, max_stall_frames=3))
    plans, state = run(protocol, OrchState(text=text.encode(), text_ended=True), random_step(seed))
    ends = [p.pointer_end for p in plans]
    assert ends == sorted(ends)
    assert ends[-1] == len(text) and plans[-1].final
    assert all(p.pointer_start == q.pointer_end for q, p in zip(plans, plans[1:]))
    assert all(len(p.units) == F and all(0 <= u <= VOCAB.num_units for u in p.units) for p in plans)
    # the context slid (the text is far longer than it) and stayed bounded
    assert len(state.context) <= 256 and state.context[:2] == [VOCAB.bos_id, VOCAB.text_id]


def test_pointer_never_passes_text_not_received_and_starves():
    protocol = OrchestratorProtocol(VOCAB, F, ProtocolConfig(lookahead_bytes=4, max_context=256, keep_frames=16,
                                                             keep_text_behind=8))
    state = OrchState(text=b"Hi there", text_ended=False)
    step = random_step(0)
    with pytest.raises(Starved):
        for _ in range(100):
            plan, state = protocol.plan_chunk(state, step, allow_fill=False)
            assert state.pointer <= len(b"Hi there")
    # with filling allowed the chunk speaks what there is, then completes with silence
    plan, filled = protocol.plan_chunk(state, step, allow_fill=True)
    assert plan.fill and filled.pointer == plan.pointer_end == 8
    assert plan.units[-1] == VOCAB.num_units
    # and the next chunk, still without new text, is all filler that does not move the pointer
    plan, after = protocol.plan_chunk(filled, step, allow_fill=True)
    assert plan.units == [VOCAB.num_units] * F and after.pointer == 8


def test_stall_guard_forces_progress():
    protocol = OrchestratorProtocol(VOCAB, F, ProtocolConfig(max_stall_frames=2, max_context=256, keep_frames=16,
                                                             keep_text_behind=8, lookahead_bytes=8))
    always_lowest = lambda context, allowed: min(allowed)  # noqa: E731 — an LM that never wants to advance
    plans, _ = run(protocol, OrchState(text=b"abc", text_ended=True), always_lowest, limit=50)
    assert plans[-1].final and plans[-1].pointer_end == 3


def test_streamed_text_gives_the_same_units_when_it_arrives_ahead_of_speech():
    """Text enters the context lazily, so arrival timing does not change the decode."""
    text = "The same words, whether they come at once or one by one."
    protocol = OrchestratorProtocol(VOCAB, F, ProtocolConfig(lookahead_bytes=8, max_context=256, keep_frames=16,
                                                             keep_text_behind=8))
    whole, _ = run(protocol, OrchState(text=text.encode(), text_ended=True), random_step(3))
    step = random_step(3)
    words = text.split(" ")
    state, plans, received = OrchState(), [], 0
    while not state.done:
        # deliver words just in time: two words ahead of the pointer
        while received < len(words) and len(" ".join(words[:received])) < utf8_chars(state.text[: state.pointer]) + 30:
            received += 1
            state.text = (" ".join(words[:received]) + (" " if received < len(words) else "")).encode()
        state.text_ended = received == len(words)
        plan, state = protocol.plan_chunk(state, step, allow_fill=False)
        plans.append(plan)
    assert [p.units for p in plans] == [p.units for p in whole]


def test_the_accent_follows_bos_in_every_context_slides_included():
    v = StreamCharVocab(num_units=16, max_advance=4, accents=("en-us", "en-gb"))
    protocol = OrchestratorProtocol(v, F, ProtocolConfig(lookahead_bytes=8, max_context=200, keep_frames=16,
                                                         keep_text_behind=8, max_stall_frames=3))
    text = "A long enough text to slide the context several times over. " * 4
    contexts = []

    def step(context, allowed):
        contexts.append(list(context))
        return random.Random(len(context)).choice(allowed)

    plans, state = run(protocol, OrchState(text=text.encode(), text_ended=True, accent="en-gb"), step)
    assert state.pointer == len(text.encode())
    starts = {tuple(c[:2]) for c in contexts}
    assert starts == {(v.bos_id, v.accent_id("en-gb"))}
    # the context was rebuilt (a later context shorter than an earlier one), and kept the accent
    assert any(len(b) < len(a) for a, b in zip(contexts, contexts[1:]))
    # no accent: <bos> then text, as an LM without accents was trained
    contexts.clear()
    run(protocol, OrchState(text=b"Hi there.", text_ended=True), step)
    assert {c[1] for c in contexts} == {v.text_id}
    assert protocol.check_accent("en-us") == "en-us" and protocol.check_accent("") == ""
    with pytest.raises(ValueError, match="unknown accent 'xx'"):
        protocol.check_accent("xx")
    # an LM without accents speaks its one accent whatever voice a session names
    assert OrchestratorProtocol(VOCAB, F, ProtocolConfig()).check_accent("en-us") == ""


@pytest.fixture
def engine():
    model, vocab, _ = load_orchestrator()
    store = MemorySessionStore()
    protocol = OrchestratorProtocol(vocab, F, ProtocolConfig())
    return OrchestratorEngine(store, EmbeddedLMBackend(model), vocab, protocol), store


@pytest.mark.asyncio
async def test_engine_text_append_is_idempotent_and_rejects_gaps(engine):
    import numpy as np

    eng, store = engine
    meta = SessionMeta.new(np.zeros((64, 64, 3), np.uint8))
    await meta.create(store)
    sid = meta.session_id
    assert await eng.append_text(sid, "héllo ", 0) == 6
    assert await eng.append_text(sid, "héllo wor", 0) == 9  # a resend after failover overlaps
    assert await eng.append_text(sid, "ld", 9) == 11
    assert (await eng.load(sid)).text == "héllo world".encode()
    with pytest.raises(FailedPrecondition, match="gap"):
        await eng.append_text(sid, "x", 20)
    await eng.end_text(sid)
    with pytest.raises(FailedPrecondition, match="after end"):
        await eng.append_text(sid, "!", 11)


@pytest.mark.asyncio
async def test_engine_reads_the_accent_from_the_sessions_voice():
    import numpy as np

    from streamchar.errors import InvalidInput
    from streamchar.models.orchestrator_lm import PRESETS, OrchestratorLM

    v = StreamCharVocab(num_units=16, max_advance=4, accents=("en-us", "en-gb"))
    model = OrchestratorLM(dataclasses.replace(PRESETS["tiny"], vocab_size=v.vocab_size)).init_weights(0)
    store = MemorySessionStore()
    eng = OrchestratorEngine(store, EmbeddedLMBackend(model), v, OrchestratorProtocol(v, F, ProtocolConfig()))
    for voice, expected in (("en-gb", "en-gb"), ("", "")):
        meta = SessionMeta.new(np.zeros((64, 64, 3), np.uint8), voice=voice)
        await meta.create(store)
        assert (await eng.load(meta.session_id)).accent == expected
        await eng.append_text(meta.session_id, "Hello.", 0)
        await eng.end_text(meta.session_id)
        cond = await eng.try_next(meta.session_id, 0, False)
        assert cond.plan.units
        context = (await eng.load(meta.session_id)).context
        assert context[:2] == ([v.bos_id, v.accent_id("en-gb")] if voice else [v.bos_id, v.text_id])
    meta = SessionMeta.new(np.zeros((64, 64, 3), np.uint8), voice="en-au")
    await meta.create(store)
    with pytest.raises(InvalidInput, match="voice: unknown accent 'en-au'.*en-us, en-gb"):
        await eng.load(meta.session_id)


@pytest.mark.asyncio
async def test_engine_replays_produced_conditions_for_a_new_replica(engine):
    import numpy as np

    eng, store = engine
    meta = SessionMeta.new(np.zeros((64, 64, 3), np.uint8))
    await meta.create(store)
    await eng.append_text(meta.session_id, "Replay me, please, for the next renderer.", 0)
    await eng.end_text(meta.session_id)
    first = [await eng.try_next(meta.session_id, k, False) for k in range(2)]
    eng.backend.forget(meta.session_id)  # a different replica: no KV cache
    again = await eng.try_next(meta.session_id, 1, False)
    assert again == first[1]
    with pytest.raises(FailedPrecondition, match="next chunk is 2"):
        await eng.try_next(meta.session_id, 5, False)
